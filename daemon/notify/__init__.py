"""Outgoing mail: the durable outbox, its templates, transports and the sender task.

- ``outbox.py``     queue notifications inside the caller's DB transaction; list them;
- ``render.py``     Jinja2 templates -> ``EmailMessage`` (autoescaped HTML, safe headers);
- ``transport.py``  where mail goes: SMTP relay (aiosmtplib) or a Maildir;
- ``sender.py``     the daemon task that sends due rows, with retries and backoff.

docs/notifications.md describes kinds, addresses, templates and the retry policy.
"""
