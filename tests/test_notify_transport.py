"""Transports against real peers: an aiosmtpd relay on 127.0.0.1, and a real Maildir."""

from __future__ import annotations

import asyncio
import mailbox
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from daemon.errors import PermanentError, TransientError
from daemon.notify.transport import (
    MaildirTransport,
    RelayTransport,
    SendResult,
    make_transport,
)
from tests.conftest import make_certificate
from tests.test_notify_support import Relay, free_port, make_settings, parse_mail

SENDER = "leads@eleads.example"


def message(n: int = 1, text: str = "Hello there") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"eLeads <{SENDER}>"
    msg["To"] = "sales@demo.example"
    msg["Subject"] = f"Test {n}"
    msg["Message-ID"] = f"<rx.E-{n}.1@eleads.example>"
    msg.set_content(text)
    return msg


@pytest.fixture
def relay() -> Iterator[Relay]:
    server = Relay().start()
    yield server
    server.stop()


async def send_all(
    transport: RelayTransport, *messages: EmailMessage, recipients: list[str] | None = None
) -> list[SendResult]:
    try:
        return [
            await transport.send(m, sender=SENDER, recipients=recipients or ["sales@demo.example"])
            for m in messages
        ]
    finally:
        await transport.aclose()


def test_relay_delivers(relay: Relay) -> None:
    (result,) = asyncio.run(send_all(RelayTransport(relay.settings), message()))
    assert relay.received[0].mail_from == SENDER
    assert relay.received[0].rcpt_tos == ["sales@demo.example"]
    got = relay.received[0].message
    assert got["Message-ID"] == "<rx.E-1.1@eleads.example>"
    assert got.get_content().strip() == "Hello there"
    assert result.response == "2.0.0 queued"  # the relay's answer to DATA


def test_relay_reuses_one_session_for_a_burst(relay: Relay) -> None:
    asyncio.run(send_all(RelayTransport(relay.settings), *(message(n) for n in range(5))))
    assert len(relay.received) == 5
    assert relay.handler.sessions == 1


def test_relay_verified_with_a_private_ca(tmp_path: Path) -> None:
    """STARTTLS to a relay whose certificate only ``ca_file`` vouches for."""
    cert, key = make_certificate(tmp_path, "relay")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    relay = Relay(tls=context).start()
    try:
        system_cas = relay.settings.model_copy(update={"security": "starttls"})
        with pytest.raises(TransientError, match=r"(?i)certificate verify failed"):
            asyncio.run(send_all(RelayTransport(system_cas), message(1)))
        assert relay.received == []
        pinned = system_cas.model_copy(update={"ca_file": cert})
        asyncio.run(send_all(RelayTransport(pinned), message(2)))
        assert [r.message["Subject"] for r in relay.received] == ["Test 2"]
    finally:
        relay.stop()


def test_relay_down_is_transient() -> None:
    down = Relay(port=free_port())  # never started: connection refused
    with pytest.raises(TransientError, match="relay"):
        asyncio.run(send_all(RelayTransport(down.settings), message()))


def test_relay_4xx_is_transient_with_the_answer(relay: Relay) -> None:
    relay.handler.data_answers.append("451 4.3.0 Try again later")
    with pytest.raises(TransientError, match=r"451 4\.3\.0 Try again later"):
        asyncio.run(send_all(RelayTransport(relay.settings), message()))
    assert relay.received == []


def test_relay_5xx_is_permanent_with_the_answer(relay: Relay) -> None:
    relay.handler.data_answers.append("554 5.7.1 Message rejected as spam")
    with pytest.raises(PermanentError, match=r"554 5\.7\.1 Message rejected as spam"):
        asyncio.run(send_all(RelayTransport(relay.settings), message()))


def test_all_recipients_refused_is_permanent(relay: Relay) -> None:
    relay.handler.refuse_rcpt["gone@demo.example"] = "550 5.1.1 No such user"
    with pytest.raises(PermanentError, match=r"gone@demo\.example: 550 5\.1\.1 No such user"):
        asyncio.run(
            send_all(RelayTransport(relay.settings), message(), recipients=["gone@demo.example"])
        )


def test_some_recipients_refused_is_reported_not_retried(relay: Relay) -> None:
    relay.handler.refuse_rcpt["gone@demo.example"] = "550 5.1.1 No such user"
    (result,) = asyncio.run(
        send_all(
            RelayTransport(relay.settings),
            message(),
            recipients=["sales@demo.example", "gone@demo.example"],
        )
    )
    assert relay.received[0].rcpt_tos == ["sales@demo.example"]
    assert result.refused == {"gone@demo.example": "550 5.1.1 No such user"}


def test_relay_restarted_between_messages(relay: Relay) -> None:
    """A session the relay dropped is replaced transparently (no error, no duplicate)."""

    async def scenario() -> None:
        transport = RelayTransport(relay.settings)
        try:
            await transport.send(message(1), sender=SENDER, recipients=["sales@demo.example"])
            relay.stop()
            relay.start()
            await transport.send(message(2), sender=SENDER, recipients=["sales@demo.example"])
        finally:
            await transport.aclose()

    asyncio.run(scenario())
    assert [r.message["Subject"] for r in relay.received] == ["Test 1", "Test 2"]


def test_maildir_writes_a_parseable_message(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path / "outbox")
    msg = message(7, text="Grüße aus Köln\r\n" + "x" * 2000)
    result = asyncio.run(transport.send(msg, sender=SENDER, recipients=["sales@demo.example"]))
    assert result.path is not None
    path = Path(result.path)
    assert path.parent == tmp_path / "outbox" / "new" and path.is_file()
    got = parse_mail(path.read_bytes())
    assert got["Message-ID"] == "<rx.E-7.1@eleads.example>"
    assert got.get_content().startswith("Grüße aus Köln")
    assert b"\r\n" not in path.read_bytes()  # Maildir files use local line ends
    assert len(mailbox.Maildir(tmp_path / "outbox")) == 1


def test_maildir_failure_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the Maildir should be")
    with pytest.raises(TransientError, match="maildir"):
        asyncio.run(
            MaildirTransport(blocker).send(
                message(), sender=SENDER, recipients=["sales@demo.example"]
            )
        )


def test_make_transport_follows_the_config(tmp_path: Path) -> None:
    assert isinstance(make_transport(make_settings(tmp_path)), MaildirTransport)
    relayed = make_settings(tmp_path, relay={"host": "127.0.0.1", "port": 2526})
    assert isinstance(make_transport(relayed), RelayTransport)
