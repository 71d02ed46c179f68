"""The IMAP poller against a real Dovecot (tests/dovecot.py): no protocol mocks.

Each test logs in as its own user (Dovecot accepts any name), so tests never share mail.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from daemon.config import IMAPMailbox, parse_settings
from daemon.errors import TransientError
from daemon.inbound.imap import KEYWORD, ConnectionLost, IMAPPoller, load_state
from daemon.pipeline import header_message_id
from daemon.spool import Envelope, Spool, SpoolEntry

try:  # tests/ is not a package today; keep working if it becomes one
    from tests.dovecot import DovecotServer, dovecot, make_message
except ImportError:
    from dovecot import DovecotServer, dovecot, make_message  # type: ignore[no-redef,import-not-found]

__all__ = ["dovecot"]  # the fixture, re-exported for pytest

SEEN = b"\\Seen"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "leads"
pytestmark = pytest.mark.timeout(60)


def queued(spool: Spool) -> list[str]:
    """Queue files, after the worker's step that turns journal records into them."""
    spool.absorb_journal()
    return spool.queued_ids()


class RecordingSpool(Spool):
    """A real Spool that also records what was put, can fail on demand, and runs a check."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, group_commit_ms=0, **kwargs)
        self.puts: list[tuple[int, str | None]] = []  # (IMAP uid, Message-ID)
        self.fail_next = 0
        self.before_put: Callable[[Envelope], None] | None = None

    async def put(self, raw: bytes, envelope: Envelope) -> SpoolEntry:
        if self.before_put is not None:
            self.before_put(envelope)
        if self.fail_next:
            self.fail_next -= 1
            raise TransientError("spool write failed: injected")
        entry = await super().put(raw, envelope)
        self.puts.append((int(envelope.extra["uid"]), header_message_id(raw)))
        return entry

    def message_ids(self) -> list[str | None]:
        return [mid for _, mid in self.puts]


@pytest.fixture
def user(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"{name[5:45]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[RecordingSpool]:
    spool = RecordingSpool(tmp_path / "spool")
    yield spool
    spool.close()


def mailbox(server: DovecotServer, user: str, **overrides: Any) -> IMAPMailbox:
    values: dict[str, Any] = {
        "name": "leads",
        "host": server.host,
        "port": server.port,
        "security": "none",
        "username": user,
        "password": server.password,
        "timeout": 5.0,
        "idle_timeout": 30.0,
        "poll_interval": 0.3,
    }
    return IMAPMailbox(**(values | overrides))


def poller(box: IMAPMailbox, spool: Spool, state_dir: Path, **kwargs: Any) -> IMAPPoller:
    kwargs.setdefault("reconnect_min", 0.05)
    kwargs.setdefault("reconnect_max", 0.5)
    return IMAPPoller(mailbox=box, spool=spool, state_dir=state_dir, **kwargs)


def messages(prefix: str, count: int) -> list[bytes]:
    return [make_message(f"{prefix} {i}") for i in range(count)]


def mids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}@test.example".replace(" ", "-").lower() for i in range(count)]


async def poll(p: IMAPPoller) -> int:
    try:
        return await p.poll_once()
    finally:
        await p.close()


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds it took for ``check()`` to hold; fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def running(p: IMAPPoller, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``p`` in a task around ``body()``; stop() must end it promptly."""
    task = asyncio.create_task(p.run())
    try:
        await body()
    finally:
        p.stop()
        started = time.monotonic()
        await asyncio.wait_for(task, timeout=5)
    assert time.monotonic() - started < 2.5
    assert not p.status.connected


# -- one round at a time -------------------------------------------------------------


def test_spools_each_once_in_uid_order_and_flags_only_after(
    dovecot: DovecotServer, user: str, spool: RecordingSpool, tmp_path: Path
) -> None:
    dovecot.append(user, [make_message("read before first run")], flags=(SEEN,))
    dovecot.append(user, messages("first", 4))
    flags_at_put: dict[int, set[bytes]] = {}

    def check(envelope: Envelope) -> None:
        uid = int(envelope.extra["uid"])
        flags_at_put[uid] = dovecot.flags(user)[uid]
        assert envelope.listener == "imap:leads" and envelope.peer == dovecot.host
        assert envelope.rcpt_tos == () and envelope.account is None

    spool.before_put = check
    p = poller(mailbox(dovecot, user), spool, tmp_path / "state")
    assert asyncio.run(poll(p)) == 4
    # The first scan skips mail already \Seen (mark_seen is on); the rest, once, in order.
    assert [uid for uid, _ in spool.puts] == [2, 3, 4, 5]
    assert spool.message_ids() == mids("first", 4)
    assert all(SEEN not in flags and KEYWORD not in flags for flags in flags_at_put.values())
    server_flags = dovecot.flags(user)
    assert all({SEEN, KEYWORD} <= server_flags[uid] for uid in (2, 3, 4, 5))
    assert KEYWORD not in server_flags[1]
    state = json.loads((tmp_path / "state" / "leads.json").read_text())
    assert state == {
        "uidvalidity": dovecot.uidvalidity(user),
        "last_uid": 5,
        "folder": "INBOX",
        "rescan": False,
    }
    assert len(queued(spool)) == 4

    assert asyncio.run(poll(p)) == 0
    # After the first scan a message a person already read is still a new lead.
    dovecot.append(user, [make_message("read by a person")], flags=(SEEN,))
    assert asyncio.run(poll(p)) == 1
    assert spool.puts[-1][0] == 6 and len(queued(spool)) == 5


def test_restart_resumes_from_state_file(
    dovecot: DovecotServer, user: str, spool: RecordingSpool, tmp_path: Path
) -> None:
    box = mailbox(dovecot, user, mark_seen=False)
    dovecot.append(user, messages("before", 3))
    assert asyncio.run(poll(poller(box, spool, tmp_path / "state"))) == 3
    dovecot.append(user, messages("after", 2))
    second = poller(box, spool, tmp_path / "state")
    assert asyncio.run(poll(second)) == 2
    assert spool.message_ids() == mids("before", 3) + mids("after", 2)
    assert second.status.last_uid == 5
    # mark_seen off: nothing became \Seen, yet the keyword records what was spooled.
    assert all(flags == {KEYWORD} for flags in dovecot.flags(user).values())


def test_move_to_creates_the_folder_and_moves(
    dovecot: DovecotServer, user: str, spool: RecordingSpool, tmp_path: Path
) -> None:
    dovecot.append(user, messages("move", 3))
    p = poller(mailbox(dovecot, user, move_to="Processed"), spool, tmp_path / "state")
    assert asyncio.run(poll(p)) == 3
    assert dovecot.flags(user) == {}
    moved = dovecot.flags(user, "Processed")
    assert len(moved) == 3 and all({SEEN, KEYWORD} <= flags for flags in moved.values())
    assert asyncio.run(poll(p)) == 0
    assert spool.message_ids() == mids("move", 3)


def test_spool_failure_leaves_message_unflagged_and_retries_it(
    dovecot: DovecotServer, user: str, spool: RecordingSpool, tmp_path: Path
) -> None:
    dovecot.append(user, messages("flaky", 3))
    p = poller(mailbox(dovecot, user), spool, tmp_path / "state")
    spool.before_put = lambda env: setattr(spool, "fail_next", int(env.extra["uid"] == 2))
    assert asyncio.run(poll(p)) == 1
    assert p.status.retry_pending and "injected" in (p.status.last_error or "")
    flags = dovecot.flags(user)
    assert SEEN in flags[1] and flags[2] == set() and flags[3] == set()
    assert load_state(tmp_path / "state" / "leads.json").last_uid == 1

    spool.before_put = None
    assert asyncio.run(poll(p)) == 2
    assert spool.message_ids() == mids("flaky", 3)
    assert not p.status.retry_pending and p.status.last_error is None
    assert all(SEEN in f for f in dovecot.flags(user).values())


def test_unfetchable_message_is_retried_never_skipped(
    dovecot: DovecotServer, user: str, spool: RecordingSpool, tmp_path: Path
) -> None:
    dovecot.append(user, messages("broken", 3))
    victim = dovecot.message_file(user, b"broken-1@")
    victim.chmod(0)  # Dovecot cannot read it: FETCH fails (and Dovecot hangs up)
    p = poller(mailbox(dovecot, user), spool, tmp_path / "state")
    with pytest.raises(ConnectionLost):
        asyncio.run(poll(p))
    assert spool.message_ids() == mids("broken", 1)
    assert load_state(tmp_path / "state" / "leads.json").last_uid == 1
    with pytest.raises(ConnectionLost):  # still unreadable: tried again, not passed over
        asyncio.run(poll(p))
    assert p.status.last_uid == 1 and len(spool.puts) == 1
    dovecot.message_file(user, b"broken-1@").chmod(0o600)  # (Dovecot moved it new/ -> cur/)
    assert asyncio.run(poll(p)) == 2
    assert spool.message_ids() == mids("broken", 3)


# -- the long-running loop ------------------------------------------------------------


def test_idle_picks_up_new_mail_within_seconds_and_is_reissued(
    dovecot: DovecotServer,
    user: str,
    spool: RecordingSpool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.inbound.imap")
    p = poller(mailbox(dovecot, user, idle_timeout=0.8), spool, tmp_path / "state")

    async def body() -> None:
        await wait_until(lambda: p.status.idling)
        dovecot.append(user, messages("idle", 1))
        assert await wait_until(lambda: len(spool.puts) == 1, timeout=5) < 3
        await asyncio.sleep(2)  # IDLE times out and is re-issued twice or more
        dovecot.append(user, messages("idle again", 2))
        assert await wait_until(lambda: len(spool.puts) == 3, timeout=5) < 3

    asyncio.run(running(p, body))
    assert spool.message_ids() == mids("idle", 1) + mids("idle again", 2)
    assert caplog.text.count("event=imap_idle ") >= 4
    assert p.status.reconnects == 0


def test_polling_path_when_idle_is_off(
    dovecot: DovecotServer, user: str, spool: RecordingSpool, tmp_path: Path
) -> None:
    p = poller(mailbox(dovecot, user, idle=False, poll_interval=0.3), spool, tmp_path / "state")
    idled: list[bool] = []

    async def body() -> None:
        await wait_until(lambda: p.status.last_poll_at is not None)
        dovecot.append(user, messages("poll", 2))
        for _ in range(50):
            idled.append(p.status.idling)
            if len(spool.puts) == 2:
                break
            await asyncio.sleep(0.05)

    asyncio.run(running(p, body))
    assert spool.message_ids() == mids("poll", 2)
    assert not any(idled)


def test_reconnects_after_the_server_drops_the_connection(
    dovecot: DovecotServer, user: str, spool: RecordingSpool, tmp_path: Path
) -> None:
    p = poller(mailbox(dovecot, user), spool, tmp_path / "state")

    async def body() -> None:
        dovecot.append(user, messages("before kick", 1))
        await wait_until(lambda: len(spool.puts) == 1 and p.status.idling)
        dovecot.kick(user)  # "* BYE" + EOF while idling
        await wait_until(lambda: p.status.reconnects >= 1)
        dovecot.append(user, messages("after kick", 1))
        await wait_until(lambda: len(spool.puts) == 2)

    asyncio.run(running(p, body))
    assert spool.message_ids() == mids("before kick", 1) + mids("after kick", 1)


def test_silent_server_times_out_and_backs_off(
    spool: RecordingSpool, tmp_path: Path, dovecot: DovecotServer
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never says a word
        box = mailbox(dovecot, "nobody", port=silent.getsockname()[1], timeout=0.3)
        p = poller(box, spool, tmp_path / "state", reconnect_min=0.05, reconnect_max=0.2)
        with pytest.raises(ConnectionLost, match="timed out"):
            asyncio.run(poll(p))

        async def body() -> None:
            await wait_until(lambda: p.status.reconnects >= 3, timeout=5)

        asyncio.run(running(p, body))
    assert "timed out" in (p.status.last_error or "")
    assert spool.puts == []


class NoKeywordClient(IMAPClient):  # type: ignore[misc]
    """Dovecot posing as a server that refuses custom keywords (no ``\\*`` flag)."""

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]:
        selected: dict[bytes, Any] = super().select_folder(folder, readonly)
        flags = selected.get(b"PERMANENTFLAGS", ())
        selected[b"PERMANENTFLAGS"] = tuple(f for f in flags if f != b"\\*")
        return selected


@pytest.mark.parametrize(
    ("keyword", "mark_seen", "respooled"),
    [(True, True, 0), (False, True, 0), (False, False, 3)],
    ids=["keyword", "unseen-fallback", "no-marker-dedupe"],
)
def test_uidvalidity_change_loses_nothing_and_duplicates_nothing(
    dovecot: DovecotServer,
    user: str,
    spool: RecordingSpool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    keyword: bool,
    mark_seen: bool,
    respooled: int,
) -> None:
    from daemon.db import open_database
    from daemon.db.models import ELead, InboundMessage
    from daemon.pipeline import Pipeline
    from daemon.runtime import sync_accounts
    from tests.pg import database_url_for

    corpus = sorted(CORPUS.glob("*.eml"))[:4]
    if len(corpus) < 4:
        pytest.skip(f"corpus not found at {CORPUS}")
    settings = parse_settings(
        {"data_dir": str(tmp_path), "accounts": [{"id": "demo"}]}, source=tmp_path / "config.yaml"
    )
    db = open_database(database_url_for(tmp_path))
    sync_accounts(settings)
    pipeline = Pipeline(settings=settings, spool=spool)
    factory = None if keyword else NoKeywordClient
    p = poller(
        mailbox(dovecot, user, mark_seen=mark_seen),
        spool,
        tmp_path / "state",
        client_factory=factory,
    )
    caplog.set_level(logging.INFO, logger="daemon.inbound.imap")

    async def body() -> None:
        dovecot.append(user, [path.read_bytes() for path in corpus[:3]])
        await wait_until(lambda: len(spool.puts) == 3)
        await asyncio.to_thread(dovecot.reset_uidvalidity, user)  # stops and starts Dovecot
        dovecot.append(user, [corpus[3].read_bytes()])
        await wait_until(lambda: len(spool.puts) == 4 + respooled, timeout=10)
        await asyncio.sleep(0.5)  # and nothing more arrives

    try:
        asyncio.run(running(p, body))
        outcomes = [pipeline.process(entry).outcome for entry in spool.claim_due()]
        assert len(spool.puts) == 4 + respooled and outcomes.count("duplicate") == respooled
        assert {mid for _, mid in spool.puts} == {header_message_id(f.read_bytes()) for f in corpus}
        assert InboundMessage.select().count() == 4
        leads = InboundMessage.select().where(InboundMessage.kind == "lead").count()
        assert ELead.select().count() == leads  # one eLead per lead message, none twice
        assert p.status.uidvalidity == dovecot.uidvalidity(user)
        assert "event=imap_uidvalidity_changed" in caplog.text
    finally:
        db.close()


# -- transport security -----------------------------------------------------------------


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_modes_and_certificate_check(
    dovecot: DovecotServer, user: str, spool: RecordingSpool, tmp_path: Path, security: str
) -> None:
    if dovecot.tls_port is None:
        pytest.skip("openssl is not installed: the test Dovecot has no certificate")
    port = dovecot.tls_port if security == "ssl" else dovecot.port
    dovecot.append(user, messages(security, 1))
    strict = poller(mailbox(dovecot, user, security=security, port=port), spool, tmp_path / "state")
    with pytest.raises(ConnectionLost, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(poll(strict))  # self-signed: refused when verify_tls is on
    lax = poller(
        mailbox(dovecot, user, security=security, port=port, verify_tls=False),
        spool,
        tmp_path / "state",
    )
    assert asyncio.run(poll(lax)) == 1
    assert spool.message_ids() == mids(security, 1)
    # Verified against the server's own certificate as a private CA (ca_file).
    dovecot.append(user, messages(f"{security} pinned", 1))
    pinned = poller(
        mailbox(dovecot, user, security=security, port=port, ca_file=dovecot.root / "cert.pem"),
        spool,
        tmp_path / "state",
    )
    assert asyncio.run(poll(pinned)) == 1
    assert spool.message_ids() == mids(security, 1) + mids(f"{security} pinned", 1)


def test_log_lines_never_carry_the_password(
    dovecot: DovecotServer,
    user: str,
    spool: RecordingSpool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dovecot.append(user, messages("quiet", 1))
    p = poller(mailbox(dovecot, user), spool, tmp_path / "state")
    assert asyncio.run(poll(p)) == 1
    wrong = poller(
        mailbox(dovecot, user, password="not-the-password-xyz"), spool, tmp_path / "state2"
    )
    with pytest.raises(TransientError):
        asyncio.run(poll(wrong))
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("daemon")]
    assert any("event=imap_spooled" in line and "uid=1" in line for line in ours)
    assert not any(dovecot.password in line or "xyz" in line for line in ours)
