"""Helpers to build and send test messages over real SMTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from daemon.db.models import ELead, InboundMessage, database_proxy

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def lead_bytes(n: int, *, first: str = "Harriet", domain: str = "acme-roofing.example") -> bytes:
    """A small form lead with a unique Message-ID and person."""
    return (
        f"From: Website <forms@{domain}>\r\n"
        f"To: leads@demo.example\r\n"
        f"Subject: New contact form submission #{n}\r\n"
        f"Date: Mon, 23 Nov 2026 10:15:00 -0500\r\n"
        f"Message-ID: <form-{n:06d}@{domain}>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"First Name: {first}\r\nLast Name: Tester{n}\r\n"
        f"Email: person{n}@example.org\r\nPhone: (614) 555-01{n % 100:02d}\r\n"
        f"Comments: Lead number {n}.\r\n"
    ).encode()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def processed(spool_id: str) -> bool:
    database_proxy.connect(reuse_if_open=True)
    return InboundMessage.select().where(InboundMessage.spool_id == spool_id).exists()


def counts() -> tuple[int, int]:
    database_proxy.connect(reuse_if_open=True)
    return InboundMessage.select().count(), ELead.select().count()
