"""The outbox sender with a real DB thread and a real aiosmtpd relay (or a Maildir).

Covers: success; relay down -> retried later; 4xx then 250 -> sent exactly once;
5xx -> failed with the server's answer; giving up after max_attempts; the claim lease
(a crash mid-send resends the same bytes later, a sent row never again); a broken
template failing only its row; the run loop woken by wake() from another thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import peewee as pw
import pytest

from daemon.config import Settings
from daemon.db.models import Notification
from daemon.db.thread import DBThread
from daemon.notify import sender as sender_module
from daemon.notify.outbox import list_outbox, queue_for_elead
from daemon.notify.render import Renderer, build_message
from daemon.notify.sender import (
    OutboxSender,
    backoff,
    claim_due,
    sender_from_settings,
)
from daemon.notify.transport import MaildirTransport, RelayTransport, Transport
from tests.test_notify_support import (
    CANDIDATES,
    NOW,
    Clock,
    MemoryTransport,
    Relay,
    make_elead,
    make_settings,
    open_db,
    parse_mail,
)

T = TypeVar("T")
OUTBOUND = {"retry_base": 10, "retry_max": 40, "max_attempts": 4, "poll_interval": 30}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[pw.Database]:
    database = open_db(tmp_path)
    yield database
    database.close()


@pytest.fixture
def relay() -> Iterator[Relay]:
    server = Relay().start()
    yield server
    server.stop()


def queue_lead(tmp_path: Path, settings: Settings, outcome: str = "created") -> list[int]:
    elead = make_elead(tmp_path, candidates=CANDIDATES, state="converted")
    rows = queue_for_elead(elead, settings=settings, outcome=outcome, prospect_pid="P1", now=NOW)
    return [row.id for row in rows]


def run_sender(
    db: pw.Database,
    settings: Settings,
    transport: Transport,
    clock: Clock,
    body: Callable[[OutboxSender], Awaitable[T]],
) -> T:
    """Run ``body(sender)`` on a fresh loop with a real DB thread."""

    async def main() -> T:
        thread = DBThread(db)
        sender = OutboxSender(db_thread=thread, transport=transport, settings=settings, clock=clock)
        try:
            return await body(sender)
        finally:
            closer = getattr(transport, "aclose", None)
            if closer is not None:
                await closer()
            thread.close()

    return asyncio.run(main())


def send_due(db: pw.Database, settings: Settings, transport: Transport, clock: Clock) -> int:
    return run_sender(db, settings, transport, clock, lambda s: s.send_due())


def row(notification_id: int) -> Notification:
    return Notification.get_by_id(notification_id)


def test_sent_through_the_relay(db: pw.Database, tmp_path: Path, relay: Relay) -> None:
    settings = make_settings(tmp_path, relay=relay.settings.model_dump(), **OUTBOUND)
    ids = queue_lead(tmp_path, settings, "fuzzy")
    clock = Clock(NOW + timedelta(seconds=1))
    assert send_due(db, settings, RelayTransport(relay.settings), clock) == 2
    assert len(relay.received) == 2
    by_id = {r.message["Message-ID"]: r for r in relay.received}
    for notification_id in ids:
        sent = row(notification_id)
        assert (sent.status, sent.attempts, sent.sent_at) == ("sent", 1, clock.now)
        assert sent.message_id in by_id
        assert by_id[sent.message_id].mail_from == "leads@eleads.example"
        assert by_id[sent.message_id].rcpt_tos == ["sales@demo.example"]
    # Sent rows are never sent again.
    assert send_due(db, settings, RelayTransport(relay.settings), clock) == 0
    assert len(relay.received) == 2


def test_relay_down_then_back(db: pw.Database, tmp_path: Path) -> None:
    relay = Relay()  # not started yet: connection refused
    settings = make_settings(tmp_path, relay=relay.settings.model_dump(), **OUTBOUND)
    (nid,) = queue_lead(tmp_path, settings)
    clock = Clock(NOW)
    assert send_due(db, settings, RelayTransport(relay.settings), clock) == 0
    waiting = row(nid)
    assert (waiting.status, waiting.attempts) == ("queued", 1)
    assert waiting.next_attempt_at == NOW + timedelta(seconds=10)
    assert "relay" in (waiting.last_error or "")
    relay.start()
    try:
        clock.now = NOW + timedelta(seconds=5)  # not due yet
        assert send_due(db, settings, RelayTransport(relay.settings), clock) == 0
        clock.now = NOW + timedelta(seconds=10)
        assert send_due(db, settings, RelayTransport(relay.settings), clock) == 1
    finally:
        relay.stop()
    assert (row(nid).status, row(nid).attempts) == ("sent", 2)
    assert len(relay.received) == 1


def test_4xx_then_250_is_sent_once(db: pw.Database, tmp_path: Path, relay: Relay) -> None:
    settings = make_settings(tmp_path, relay=relay.settings.model_dump(), **OUTBOUND)
    (nid,) = queue_lead(tmp_path, settings)
    relay.handler.data_answers.append("451 4.7.1 Greylisted, try again")
    clock = Clock(NOW)
    assert send_due(db, settings, RelayTransport(relay.settings), clock) == 0
    assert row(nid).last_error == "451 4.7.1 Greylisted, try again"
    clock.now = NOW + timedelta(seconds=10)
    assert send_due(db, settings, RelayTransport(relay.settings), clock) == 1
    assert len(relay.received) == 1
    assert relay.received[0].message["Message-ID"] == row(nid).message_id
    assert (row(nid).status, row(nid).attempts) == ("sent", 2)


def test_5xx_fails_with_the_reason(db: pw.Database, tmp_path: Path, relay: Relay) -> None:
    settings = make_settings(tmp_path, relay=relay.settings.model_dump(), **OUTBOUND)
    (nid,) = queue_lead(tmp_path, settings)
    relay.handler.data_answers.append("550 5.7.1 Relaying denied")
    assert send_due(db, settings, RelayTransport(relay.settings), Clock()) == 0
    failed = row(nid)
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert failed.last_error == "550 5.7.1 Relaying denied"
    assert send_due(db, settings, RelayTransport(relay.settings), Clock(NOW + timedelta(1))) == 0
    (listed,) = list_outbox()
    assert listed["status"] == "failed" and listed["last_error"] == "550 5.7.1 Relaying denied"


def test_gives_up_after_max_attempts_with_capped_backoff(db: pw.Database, tmp_path: Path) -> None:
    down = Relay()
    settings = make_settings(tmp_path, relay=down.settings.model_dump(), **OUTBOUND)
    (nid,) = queue_lead(tmp_path, settings)
    clock = Clock(NOW)
    waits = []
    for _ in range(4):
        send_due(db, settings, RelayTransport(down.settings), clock)
        current = row(nid)
        if current.status == "queued":
            waits.append((current.next_attempt_at - clock.now).total_seconds())
            clock.now = current.next_attempt_at
    assert waits == [10, 20, 40]
    final = row(nid)
    assert (final.status, final.attempts) == ("failed", 4)
    assert final.last_error.startswith("gave up after 4 attempts: relay")
    assert [backoff(n, base=30, cap=3600) for n in (1, 2, 3, 8, 20)] == [30, 60, 120, 3600, 3600]


def test_a_crash_mid_send_resends_the_same_message_later(
    db: pw.Database, tmp_path: Path, relay: Relay
) -> None:
    settings = make_settings(tmp_path, relay=relay.settings.model_dump(), **OUTBOUND)
    (nid,) = queue_lead(tmp_path, settings)
    lease = timedelta(minutes=2)
    (claimed,) = claim_due(now=NOW, limit=10, lease=lease)  # ... and then the process died
    first = build_message(claimed, outbound=settings.outbound, renderer=Renderer())
    assert claim_due(now=NOW + timedelta(seconds=30), limit=10, lease=lease) == []
    transport = RelayTransport(relay.settings)
    assert send_due(db, settings, transport, Clock(NOW + lease)) == 1
    resent = relay.received[0].data.replace(b"\r\n", b"\n")
    assert resent == first.as_bytes().replace(b"\r\n", b"\n")
    assert row(nid).status == "sent"


def test_a_broken_template_fails_only_its_row(db: pw.Database, tmp_path: Path) -> None:
    custom = tmp_path / "tpl"
    custom.mkdir()
    (custom / "conversion_issue.txt").write_text("{{ broken( }}")
    settings = make_settings(tmp_path, templates_dir=str(custom), **OUTBOUND)
    ids = queue_lead(tmp_path, settings, "fuzzy")
    memory = MemoryTransport()
    assert send_due(db, settings, memory, Clock()) == 1
    statuses = {row(i).kind: (row(i).status, row(i).last_error or "") for i in ids}
    assert statuses["received"][0] == "sent"
    assert statuses["conversion_issue"][0] == "failed"
    assert statuses["conversion_issue"][1].startswith("render: TemplateSyntaxError")


def test_database_trouble_reading_the_original_is_retried_not_failed(
    db: pw.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive (database spool) unreadable for a moment: a retry, not a failed row."""
    settings = make_settings(tmp_path, **OUTBOUND)
    ids = queue_lead(tmp_path, settings, "fuzzy")

    def gone(item: Any) -> Any:
        raise pw.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(sender_module, "archived_originals", gone)
    memory = MemoryTransport()
    assert send_due(db, settings, memory, Clock()) == 0
    for i in ids:
        assert (row(i).status, row(i).attempts) == ("queued", 1)
        assert "reading the original" in (row(i).last_error or "")
    monkeypatch.undo()
    assert send_due(db, settings, memory, Clock(NOW + timedelta(hours=1))) == len(ids)


def test_maildir_path_is_recorded(db: pw.Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **OUTBOUND)
    (nid,) = queue_lead(tmp_path, settings)
    transport = MaildirTransport(settings.outbox_dir)
    assert send_due(db, settings, transport, Clock()) == 1
    (listed,) = list_outbox()
    assert listed["status"] == "sent" and listed["path"]
    msg = parse_mail(Path(listed["path"]).read_bytes())
    assert msg["Message-ID"] == row(nid).message_id


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError("timed out")


def run_loop_scenario(
    db: pw.Database,
    settings: Settings,
    memory: MemoryTransport,
    poke: Callable[[OutboxSender], None],
    tmp_path: Path,
) -> float:
    """Start run(); queue a lead from another thread; poke; time until it is sent."""
    result: dict[str, Any] = {}

    async def main() -> None:
        thread = DBThread(db)
        sender = OutboxSender(db_thread=thread, transport=memory, settings=settings)
        task = asyncio.create_task(sender.run())
        await asyncio.sleep(0.2)  # idle now, with a 30 s poll interval

        def producer() -> None:
            queue_lead(tmp_path, settings)
            poke(sender)
            result["elapsed"] = wait_until(lambda: len(memory.sent) == 1)

        await asyncio.to_thread(producer)
        sender.stop()
        await asyncio.wait_for(task, timeout=5)
        thread.close()

    asyncio.run(main())
    return float(result["elapsed"])


def test_wake_sends_at_once(db: pw.Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **OUTBOUND)
    memory = MemoryTransport()
    elapsed = run_loop_scenario(db, settings, memory, lambda s: s.wake(), tmp_path)
    assert elapsed < 1.0


def test_sender_from_settings_uses_the_configured_transport(
    db: pw.Database, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    thread = DBThread(db)
    try:
        sender = sender_from_settings(settings, db_thread=thread)
        assert isinstance(sender.transport, MaildirTransport)
        assert sender.lease >= timedelta(seconds=30)
    finally:
        thread.close()


def test_stop_gives_claimed_rows_back(db: pw.Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **OUTBOUND)
    ids = queue_lead(tmp_path, settings, "fuzzy")
    memory = MemoryTransport()

    async def stopped(sender: OutboxSender) -> int:
        sender.stop()
        return await sender.send_due()

    clock = Clock(NOW + timedelta(seconds=3))
    assert run_sender(db, settings, memory, clock, stopped) == 0
    assert memory.sent == []
    for notification_id in ids:
        current = row(notification_id)
        assert (current.status, current.attempts) == ("queued", 0)
        assert current.next_attempt_at == clock.now  # due again at once, not after the lease
