"""Helpers for the notify tests: settings, a real database, eLead rows, a real SMTP relay.

No tests here. Everything is plain functions/classes (not conftest fixtures) so the
notify tests stand on their own. The relay is a real aiosmtpd ``Controller`` on a free
127.0.0.1 port whose answers can be scripted per test.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import peewee as pw
from aiosmtpd.controller import Controller

from daemon.config import RelaySettings, Settings, parse_settings
from daemon.db import open_database
from daemon.db.models import Account, ELead, InboundMessage
from daemon.notify.transport import SendResult
from tests.pg import database_url_for

NOW = datetime(2026, 11, 17, 12, 46, 2)
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(document.cookie)>'

LEAD: dict[str, Any] = {
    "first_name": "Robert",
    "last_name": "Kaminski",
    "email": "rkaminski@example.net",
    "phone": "+16145550148",
    "street": "2231 Alder Ridge Rd",
    "city": "Westerville",
    "region": "OH",
    "postal_code": "43081",
    "country": "US",
    "interest": "Roof Replacement",
    "source": "HomeProMatch",
    "external_id": "HPM-4471920",
    "appointment_requested": False,
}

CANDIDATES: list[dict[str, Any]] = [
    # Stored out of order on purpose: emails list them by rank.
    {
        "rank": 2,
        "prospect": "P1240",
        "score": 0.66,
        "verdict": "fuzzy",
        "reasons": ["similar name", "same city"],
        "conflict": False,
        "summary": {
            "first_name": "Robert",
            "last_name": "Kaminsky",
            "street": "87 Quail Run",
            "city": "Galena",
            "region": "OH",
            "postal_code": "43021",
            "email": "rob.kaminsky@example.com",
        },
    },
    {
        "rank": 1,
        "prospect": "P1187",
        "score": 0.81,
        "verdict": "fuzzy",
        "reasons": ["same phone", "same street"],
        "conflict": True,
        "summary": {
            "first_name": "Roberta",
            "last_name": "Kaminski",
            "street": "2231 Alder Ridge Rd",
            "city": "Westerville",
            "region": "OH",
            "postal_code": "43081",
            "email": "rkaminski.home@example.net",
            "phone": "+16145550148",
        },
        "warning": "this prospect has 2 conflicting leads",
    },
]

ORIGINAL = (
    b"From: HomeProMatch <leads@homepromatch.example>\r\n"
    b"To: leads@demo.example\r\n"
    b"Subject: New lead\r\n"
    b"Message-ID: <hpm-4471920@homepromatch.example>\r\n"
    b"\r\n"
    b"Customer: (unreadable)\r\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(tmp_path: Path, **outbound: Any) -> Settings:
    addresses = ["sales@demo.example"]
    data = {
        "data_dir": str(tmp_path / "var"),
        "outbound": outbound,
        "accounts": [
            {
                "id": "demo",
                "name": "Demo Home Improvement",
                "notifications": {
                    "received": addresses,
                    "appointment": ["appointments@demo.example"],
                    "conversion_issue": addresses,
                },
                "authorised_senders": addresses,
            },
            {"id": "quiet", "notifications": {}},
        ],
    }
    return parse_settings(data, source=tmp_path / "config.yaml")


def open_db(tmp_path: Path) -> pw.Database:
    db = open_database(database_url_for(tmp_path))
    for account in ("demo", "quiet"):
        Account.get_or_create(id=account)
    return db


def spool_file(tmp_path: Path, raw: bytes, name: str = "orig") -> Path:
    """An archived message in the spool format the pipeline keeps (messages/...)."""
    path = tmp_path / "messages" / f"{name}.msg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'ELEADS-SPOOL 1 {"listener": "smtp"}\n' + raw)
    return path


def make_elead(
    tmp_path: Path,
    *,
    lead: dict[str, Any] | None = None,
    state: str = "unconverted",
    candidates: list[dict[str, Any]] | None = None,
    problems: list[str] | None = None,
    raw: bytes = ORIGINAL,
    account: str = "demo",
    message_id: str = "hpm-4471920@homepromatch.example",
) -> ELead:
    raw_path = spool_file(tmp_path, raw, name=f"m{InboundMessage.select().count()}")
    message = InboundMessage.create(
        dedupe_key=f"key-{raw_path.name}",
        spool_id=raw_path.stem,
        message_id=message_id,
        listener="smtp",
        account=account,
        raw_path=str(raw_path),
        kind="lead",
        outcome="received",
    )
    return ELead.create(
        account=account,
        message=message,
        message_id=message_id,
        state=state,
        rule="test",
        parse={"kind": "lead", "lead": dict(LEAD if lead is None else lead)},
        problems=list(problems or []),
        candidates=list(candidates or []),
        received_at=NOW,
    )


def parse_mail(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


def bodies(msg: EmailMessage) -> tuple[str, str]:
    """The text and HTML parts, decoded, with LF line ends."""
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return (
        str(text.get_content()).replace("\r\n", "\n"),
        str(html.get_content()).replace("\r\n", "\n"),
    )


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return parse_mail(self.data)


@dataclass
class RelayHandler:
    """Scripted answers: each DATA takes the next one from ``data_answers`` (default 250)."""

    data_answers: list[str] = field(default_factory=list)
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    sessions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            answer = self.data_answers.pop(0) if self.data_answers else "250 2.0.0 queued"
            if answer.startswith("250"):
                self.received.append(
                    Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
                )
        return answer


class Relay:
    """A real aiosmtpd relay on 127.0.0.1 (start/stop; restartable on the same port)."""

    def __init__(self, port: int | None = None, *, tls: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port()
        self.handler = RelayHandler()
        self._controller: Controller | None = None
        #: With a server context: STARTTLS offered and required before MAIL.
        self.tls = tls

    def start(self) -> Relay:
        starttls: dict[str, Any] = (
            {"tls_context": self.tls, "require_starttls": True} if self.tls else {}
        )
        self._controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10, **starttls
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def settings(self) -> RelaySettings:
        return RelaySettings(host="127.0.0.1", port=self.port, security="none", timeout=5)

    @property
    def received(self) -> list[Received]:
        return self.handler.received


class MemoryTransport:
    """Keeps what it is given (tests of the sender's bookkeeping, no network)."""

    def __init__(self) -> None:
        self.sent: list[tuple[EmailMessage, str, list[str]]] = []

    async def send(
        self, message: EmailMessage, *, sender: str, recipients: list[str]
    ) -> SendResult:
        self.sent.append((message, sender, list(recipients)))
        return SendResult(response="250 memory")


class Clock:
    """A settable clock for the sender (naive UTC, like the database)."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
