"""TLS contexts for the servers eleads connects to (the outgoing relay, IMAP mailboxes)."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(*, ca_file: Path | None = None, verify: bool = True) -> ssl.SSLContext:
    """Certificate and host name verified against ``ca_file`` (PEM: a private CA) instead
    of the system's CAs when given; ``verify=False`` only for a test server.

    Raises ``ssl.SSLError`` or ``OSError`` for a file that is not a readable PEM."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
