"""Self-signed certificates for the test servers (SMTP listener, relay, Dovecot)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def write_self_signed(cert: Path, key: Path) -> bool:
    """A certificate for localhost and 127.0.0.1 and its key, as PEM files; given to a
    client as its CA file it verifies. False when openssl is not installed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return True
