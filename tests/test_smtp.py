"""The SMTP listener, over real TCP with smtplib: routing, limits, durability, TLS, AUTH."""

from __future__ import annotations

import smtplib
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from daemon.db.models import ELead, InboundMessage
from daemon.pipeline import Pipeline
from daemon.spool import Spool, SpoolStore
from daemon.spool.database import DatabaseSpool, read_archived

from .conftest import make_certificate
from .mail import FIXTURES, counts, lead_bytes, processed, wait_for

#: Both spool stores: the one the test database selects (files on SQLite, the database
#: on PostgreSQL) is the one patched in effect.
STORES: tuple[type[SpoolStore], ...] = (Spool, DatabaseSpool)

LEAD = (FIXTURES / "smtp" / "lead_simple.eml").read_bytes()


def send(
    port: int,
    raw: bytes,
    *,
    rcpt: str = "leads@demo.example",
    sender: str = "forms@acme-roofing.example",
    **kw: Any,
) -> str:
    """Send one message; return the spool id from the 250 reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("test.example")
        code, reply = client.mail(sender, kw.get("mail_options", []))
        assert code == 250, reply
        code, reply = client.rcpt(rcpt)
        if code != 250:
            raise smtplib.SMTPRecipientsRefused({rcpt: (code, reply)})
        code, reply = client.data(raw)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
    text = reply.decode()
    assert "queued as" in text, text
    return text.rsplit(" ", 1)[-1]


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_accepted_lead_is_spooled_then_stored(
    make_config: Any, run_daemon: Any, worker: str
) -> None:
    daemon = run_daemon(make_config({"spool": {"worker": worker}}))
    spool_id = send(daemon.smtp_port, LEAD)
    wait_for(lambda: processed(spool_id), what="processing")
    row = InboundMessage.get(InboundMessage.spool_id == spool_id)
    assert row.listener == "smtp" and row.rcpt_tos == ["leads@demo.example"]
    assert row.mail_from == "forms@acme-roofing.example"
    # The raw bytes are kept exactly as received, outside the spool.
    assert read_archived(row.raw_path) == LEAD
    elead = ELead.get(ELead.message == row)
    assert elead.account_id == "demo" and elead.state == "converted"
    assert elead.prospect is not None  # a new prospect: nobody to match yet
    assert elead.message_id == "form-0001@acme-roofing.example"
    assert daemon.daemon.runtime.spool.queued_ids() == []


def test_unknown_recipient_is_refused_550_never_relayed(make_config: Any, run_daemon: Any) -> None:
    config = make_config(
        {
            "accounts": [
                {"id": "roof", "inbound_addresses": ["leads@roof.example"]},
                {"id": "cars", "inbound_addresses": ["@cars.example"]},
            ]
        }
    )
    daemon = run_daemon(config)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send(daemon.smtp_port, LEAD, rcpt="victim@elsewhere.example")
    code, _ = info.value.recipients["victim@elsewhere.example"]
    assert code == 550
    assert send(daemon.smtp_port, LEAD, rcpt="leads@roof.example")
    assert send(daemon.smtp_port, lead_bytes(2), rcpt="sales@cars.example")


def test_oversize_message_is_refused_552(make_config: Any, run_daemon: Any) -> None:
    daemon = run_daemon(make_config({"smtp": {"max_message_size": 4096}}))
    big = LEAD + b"x" * 70 + (b"y" * 76 + b"\r\n") * 100
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo("t")
        assert client.has_extn("size") and client.esmtp_features["size"] == "4096"
        code, _ = client.mail("a@example.org")  # no SIZE= given: checked at end of DATA
        client.rcpt("leads@demo.example")
        code, _ = client.data(big)
    assert code == 552
    with (
        pytest.raises(smtplib.SMTPSenderRefused) as info,
        smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client,
    ):
        client.sendmail("a@example.org", ["leads@demo.example"], big)  # sends SIZE=
    assert info.value.smtp_code == 552
    assert daemon.daemon.runtime.spool.queued_ids() == []


def test_250_is_only_sent_after_the_spool_write(
    make_config: Any, run_daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    for store in STORES:
        real_store = store._store_batch

        def slow_store(self: SpoolStore, items: Any, real: Any = real_store) -> Any:
            release.wait(10)
            return real(self, items)

        monkeypatch.setattr(store, "_store_batch", slow_store)
    daemon = run_daemon(make_config())
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(id=send(daemon.smtp_port, LEAD)))
    thread.start()
    thread.join(0.8)
    assert thread.is_alive() and not result, "250 came before the message was on disk"
    release.set()
    thread.join(10)
    spool_id = result["id"]
    wait_for(lambda: processed(spool_id))


def test_spool_failure_answers_451_not_5xx(
    make_config: Any, run_daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: SpoolStore, items: Any) -> Any:
        raise OSError(28, "No space left on device")

    for store in STORES:
        monkeypatch.setattr(store, "_store_batch", broken)
    daemon = run_daemon(make_config())
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(daemon.smtp_port, LEAD)
    assert info.value.smtp_code == 451


def test_crash_while_processing_keeps_the_message(
    make_config: Any, run_daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception after the 250 leaves the message retryable, then in failed/, never lost."""
    real_record = Pipeline._record

    def broken_record(self: Pipeline, item: Any) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(Pipeline, "_record", broken_record)
    daemon = run_daemon(make_config())
    spool = daemon.daemon.runtime.spool
    spool_id = send(daemon.smtp_port, LEAD)
    wait_for(lambda: any(f["id"] == spool_id for f in spool.failed()), what="failed area")
    failed = next(f for f in spool.failed() if f["id"] == spool_id)
    assert failed["attempts"] == 3 and "injected" in failed["reason"]
    assert not processed(spool_id)
    # Fixed: re-queue, and it goes through.
    monkeypatch.setattr(Pipeline, "_record", real_record)
    spool.requeue(spool_id)
    daemon.daemon.runner.wake()
    wait_for(lambda: processed(spool_id), what="processing after requeue")


def test_runner_outlives_a_database_outage(
    make_config: Any, run_daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims failing for a while (the database away) delay processing; they do not stop it."""
    failures = {"left": 2}
    for store in STORES:
        real_claim = store.claim_due

        def flaky(self: SpoolStore, limit: int = 100, real: Any = real_claim) -> Any:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise OSError("server closed the connection unexpectedly")
            return real(self, limit)

        monkeypatch.setattr(store, "claim_due", flaky)
    daemon = run_daemon(make_config())
    spool_id = send(daemon.smtp_port, LEAD)
    wait_for(lambda: processed(spool_id), timeout=30, what="processing after the outage")
    assert failures["left"] == 0


def test_duplicate_delivery_gives_one_elead(make_config: Any, run_daemon: Any) -> None:
    daemon = run_daemon(make_config())
    first = send(daemon.smtp_port, LEAD)
    # Redelivered by another MTA hop: new Received header, same Message-ID and body.
    again = b"Received: from mx2.example.net by eleads; Mon, 23 Nov 2026 10:20:00 -0500\r\n" + LEAD
    second = send(daemon.smtp_port, again)
    assert first != second
    wait_for(lambda: processed(first))
    spool = daemon.daemon.runtime.spool
    wait_for(lambda: spool.counts()["queue"] + spool.counts()["active"] == 0)
    assert counts() == (1, 1)


def test_smtputf8_and_8bit_bodies(make_config: Any, run_daemon: Any) -> None:
    daemon = run_daemon(make_config())
    raw = (
        "From: José Muñoz <josé@example.org>\r\nTo: leads@demo.example\r\n"
        "Subject: Presupuesto\r\nMessage-ID: <utf8-1@example.org>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Nombre: José Muñoz\r\nTeléfono: (614) 555-0190\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo("t")
        assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
        client.sendmail(
            "josé@example.org",
            ["leads@demo.example"],
            raw,
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )
    wait_for(lambda: counts()[0] == 1)
    row = InboundMessage.get()
    assert row.mail_from == "josé@example.org"
    assert read_archived(row.raw_path) == raw


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path)


def test_starttls_and_auth(make_config: Any, run_daemon: Any, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    daemon = run_daemon(
        make_config(
            {
                "smtp": {
                    "tls": {"cert_file": str(cert), "key_file": str(key), "require_starttls": True},
                    "auth": {
                        "required": True,
                        "users": [{"username": "mta", "password": "s3cret"}],
                    },
                }
            }
        )
    )
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo("t")
        code, _ = client.mail("a@example.org")
        assert code == 530  # STARTTLS first
        client.starttls(context=context)
        client.ehlo("t")
        code, _ = client.mail("a@example.org")
        assert code == 530  # then AUTH
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("mta", "wrong")
        client.login("mta", "s3cret")
        client.sendmail("a@example.org", ["leads@demo.example"], LEAD)
    wait_for(lambda: counts()[0] == 1)
