"""Reply commands: one module per command, registered by name in ``registry.py``
(Mailman style).

Each module defines ``NAME``, ``SUMMARY`` and ``run(ctx) -> CommandResult``. The reply
handler (``handle.py``) checks the sender and the token first; ``tokens.py`` issues and
spends the ``+r-<token>`` reply addresses.

This package imports nothing itself: the daemon process imports ``tokens`` for its daily
purge and must not load the commands with it (and with them the matcher and conversion).
"""
