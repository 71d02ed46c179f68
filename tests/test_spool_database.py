"""DatabaseSpool: the spool as ``spool_message`` rows, on SQLite or PostgreSQL (whichever
backend the run selects): group commit, claims and leases, backoff, failed area, recovery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from daemon.db import open_database
from daemon.db.models import SpoolMessage, database_proxy
from daemon.errors import TransientError, UsageError
from daemon.spool import Envelope, Spool
from daemon.spool.database import DatabaseSpool, read_archived
from tests.pg import BACKEND_ENV, query

MakeSpool = Callable[..., DatabaseSpool]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(database_url: str) -> Iterator[pw.Database]:
    database = open_database(database_url)
    yield database
    database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_spool(db: pw.Database, clock: FakeClock) -> Iterator[MakeSpool]:
    """DatabaseSpools on the test's database and clock (instance "alpha" unless told)."""
    made: list[DatabaseSpool] = []

    def _make(**kwargs: Any) -> DatabaseSpool:
        kwargs.setdefault("instance", "alpha")
        kwargs.setdefault("clock", clock)
        spool = DatabaseSpool(**kwargs)
        made.append(spool)
        return spool

    yield _make
    for spool in made:
        spool.close()


def env(i: int = 0) -> Envelope:
    return Envelope(listener="smtp", mail_from=f"s{i}@x.example", rcpt_tos=("in@demo.example",))


def row(spool_id: str) -> SpoolMessage:
    found: SpoolMessage = SpoolMessage.get_by_id(spool_id)
    return found


def put_n(spool: DatabaseSpool, count: int) -> list[str]:
    return [spool.put_sync(f"lead {i}".encode(), env(i)).id for i in range(count)]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_put_group_commit_acknowledges_after_the_commit(
    make_spool: MakeSpool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(group_commit_ms=20)
    batches: list[int] = []
    gate = threading.Event()
    real = spool._store_batch

    def held(items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        batches.append(len(items))
        gate.wait(10)
        real(items)

    monkeypatch.setattr(spool, "_store_batch", held)
    woken: list[int] = []
    spool.on_new_message(lambda: woken.append(1))

    async def main() -> list[str]:
        tasks = [asyncio.create_task(spool.put(f"m{i}".encode(), env(i))) for i in range(10)]
        await asyncio.sleep(0.2)
        assert batches and not any(t.done() for t in tasks)  # writing, not yet committed
        assert spool.counts()["queue"] == 0
        gate.set()
        return [e.id for e in await asyncio.gather(*tasks)]

    ids = asyncio.run(main())
    assert len(set(ids)) == 10 and sum(batches) == 10 and len(batches) <= 2
    assert woken and len(woken) == len(batches)
    # Committed: another connection sees every row, queued, with its bytes.
    seen = query(database_url, "SELECT id, state, content FROM spool_message ORDER BY id")
    assert [r[0] for r in seen] == sorted(ids)
    assert {r[1] for r in seen} == {"queued"}
    assert sorted(bytes(r[2]) for r in seen) == sorted(f"m{i}".encode() for i in range(10))


def test_put_failing_write_raises_transient_error_to_every_waiter(
    make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(group_commit_ms=20)

    def broken(items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        raise pw.OperationalError("disk on fire")

    monkeypatch.setattr(spool, "_store_batch", broken)

    async def main() -> list[BaseException | Any]:
        puts = (spool.put(f"m{i}".encode(), env(i)) for i in range(5))
        return await asyncio.gather(*puts, return_exceptions=True)

    results = asyncio.run(main())
    assert len(results) == 5
    assert all(isinstance(r, TransientError) and "disk on fire" in str(r) for r in results)
    assert SpoolMessage.select().count() == 0


def test_put_sync_claim_complete_keeps_the_row_as_archive(make_spool: MakeSpool) -> None:
    spool = make_spool()
    raw = b"Subject: x\r\n\r\nbody \x00\xff\r\n"
    put = spool.put_sync(raw, env())
    assert spool.queued_ids() == [put.id] and spool.counts()["queue"] == 1
    entry = spool.claim(put.id)
    assert entry is not None and spool.read_raw(entry) == raw
    assert entry.envelope.mail_from == "s0@x.example"
    assert entry.envelope.rcpt_tos == ("in@demo.example",)
    assert spool.claim(put.id) is None  # not queued any more
    assert row(put.id).claimed_by == f"alpha/{os.getpid()}"
    raw_path = spool.archive(entry, Path("/nonexistent"))
    assert raw_path == f"db:spool_message/{put.id}"
    spool.complete(entry)
    done = row(put.id)
    assert done.state == "done" and bytes(done.content) == raw and done.size == len(raw)
    assert done.claimed_by is None and done.finished_at is not None
    assert read_archived(raw_path) == raw
    assert spool.counts() == {"queue": 0, "active": 0, "failed": 0}
    with pytest.raises(FileNotFoundError):
        read_archived("db:spool_message/nope")


def test_claim_due_oldest_first_with_limit(make_spool: MakeSpool) -> None:
    spool = make_spool()
    ids = put_n(spool, 5)
    assert spool.queued_ids() == ids
    first = spool.claim_due(limit=2)
    assert [e.id for e in first] == ids[:2]
    assert [e.raw for e in first] == [b"lead 0", b"lead 1"]
    assert spool.counts() == {"queue": 3, "active": 2, "failed": 0}
    assert [e.id for e in spool.claim_due(limit=10)] == ids[2:]
    assert spool.claim_due() == [] and spool.queued_ids() == []


def test_defer_backoff_then_failed(make_spool: MakeSpool, clock: FakeClock) -> None:
    spool = make_spool(max_attempts=4, retry_base=30, retry_max=100)
    (spool_id,) = put_n(spool, 1)
    for attempts, delay in ((1, 30), (2, 60), (3, 100)):
        (entry,) = spool.claim_due()
        assert entry.attempts == attempts - 1
        assert spool.defer(entry, f"smtp down {attempts}") is True
        deferred = row(spool_id)
        assert deferred.state == "queued" and deferred.attempts == attempts
        assert deferred.next_attempt_at == clock.now + delay
        assert deferred.last_error == f"smtp down {attempts}" and deferred.claimed_by is None
        assert spool.claim_due() == []  # not due yet
        clock.now += delay - 1
        assert spool.claim_due() == []
        clock.now += 1
    (entry,) = spool.claim_due()
    assert spool.defer(entry, "still down") is False
    failed = row(spool_id)
    assert (failed.state, failed.attempts, failed.last_error) == ("failed", 4, "still down")
    assert spool.counts() == {"queue": 0, "active": 0, "failed": 1}


def test_fail_failed_listing_and_requeue(make_spool: MakeSpool) -> None:
    spool = make_spool()
    a, b = put_n(spool, 2)
    (entry,) = spool.claim_due(limit=1)
    spool.fail(entry, "permanent: not a lead")
    (listed,) = spool.failed()
    assert listed["id"] == a and listed["reason"] == "permanent: not a lead"
    assert listed["attempts"] == 1 and listed["listener"] == "smtp"
    assert listed["mail_from"] == "s0@x.example" and listed["failed_at"]
    assert spool.counts() == {"queue": 1, "active": 0, "failed": 1}
    with pytest.raises(UsageError):
        spool.requeue(b)  # queued, not failed
    with pytest.raises(UsageError):
        spool.requeue("no-such-id")
    spool.requeue(a)
    again = row(a)
    assert (again.state, again.attempts, again.last_error) == ("queued", 0, None)
    assert list(spool.failed()) == [] and spool.queued_ids() == [a, b]
    assert [e.attempts for e in spool.claim_due()] == [0, 0]


def test_expired_lease_is_claimed_by_another_instance(
    make_spool: MakeSpool, clock: FakeClock
) -> None:
    alpha = make_spool(instance="alpha", lease_seconds=60)
    beta = make_spool(instance="beta", lease_seconds=60)
    (spool_id,) = put_n(alpha, 1)
    assert [e.id for e in alpha.claim_due()] == [spool_id]
    clock.now += 59
    assert beta.claim_due() == []  # alpha's lease still holds
    assert row(spool_id).claimed_by == f"alpha/{os.getpid()}"
    clock.now += 2
    (entry,) = beta.claim_due()
    assert entry.id == spool_id and entry.attempts == 1 and entry.raw == b"lead 0"
    taken = row(spool_id)
    assert taken.claimed_by == f"beta/{os.getpid()}" and taken.attempts == 1
    assert taken.lease_until == clock.now + 60


def test_expired_leases_up_to_max_attempts_end_in_failed(
    make_spool: MakeSpool, clock: FakeClock
) -> None:
    spools = [make_spool(instance=n, lease_seconds=10, max_attempts=3) for n in ("a", "b")]
    (spool_id,) = put_n(spools[0], 1)
    assert len(spools[0].claim_due()) == 1
    for attempts in (1, 2):
        clock.now += 11
        (entry,) = spools[attempts % 2].claim_due()
        assert entry.attempts == attempts
    clock.now += 11
    assert spools[1].claim_due() == []
    failed = row(spool_id)
    assert (failed.state, failed.attempts) == ("failed", 3)
    assert failed.last_error == "worker died while processing it" and failed.claimed_by is None


def test_recover_claims_only_of_this_instance_dead_pids(make_spool: MakeSpool) -> None:
    alpha = make_spool(instance="alpha")
    ids = put_n(alpha, 4)
    dead = dead_pid()
    owners = [f"alpha/{dead}", f"alpha/{os.getpid()}", f"beta/{dead}", f"alphabet/{dead}"]
    for spool_id, owner in zip(ids, owners, strict=True):
        SpoolMessage.update(state="active", claimed_by=owner, lease_until=2e6).where(
            SpoolMessage.id == spool_id
        ).execute()
    assert alpha.recover_claims() == 1
    assert alpha.queued_ids() == [ids[0]] and row(ids[0]).claimed_by is None
    assert [row(i).state for i in ids[1:]] == ["active"] * 3
    assert alpha.recover_claims() == 0


def test_recover_moves_a_leftover_file_spool_into_the_database(
    make_spool: MakeSpool, tmp_path: Path
) -> None:
    root = tmp_path / "spool"
    files = Spool(root)
    queued = files.put_sync(b"queued lead", Envelope(listener="ingest", mail_from="q@x.example"))
    gone = files.put_sync(b"bad lead", Envelope(listener="smtp", mail_from="f@x.example"))
    claimed = files.claim(gone.id)
    assert claimed is not None
    files.fail(claimed, "unparseable")
    files.close()
    spool = make_spool(files_root=root)
    assert spool.recover() == 2
    assert spool.queued_ids() == [queued.id]
    (entry,) = spool.claim_due()
    assert entry.raw == b"queued lead" and entry.envelope.listener == "ingest"
    (failed,) = spool.failed()
    assert failed["id"] == gone.id and failed["reason"] == "unparseable"
    assert failed["attempts"] == 1 and failed["mail_from"] == "f@x.example"
    assert bytes(row(gone.id).content) == b"bad lead"
    assert [p.name for p in root.rglob("*") if p.suffix in (".msg", ".json")] == []
    assert spool.recover() == 0


def test_counts_and_queued_ids(make_spool: MakeSpool) -> None:
    spool = make_spool()
    assert spool.counts() == {"queue": 0, "active": 0, "failed": 0}
    assert spool.queued_ids() == []
    ids = put_n(spool, 4)
    first, second = spool.claim_due(limit=2)
    spool.fail(second, "no")
    assert spool.counts() == {"queue": 2, "active": 1, "failed": 1}
    assert spool.queued_ids() == ids[2:]
    spool.complete(first)  # done rows count nowhere
    assert spool.counts() == {"queue": 2, "active": 0, "failed": 1}


def test_next_due_in_is_the_earliest_retry_or_lease_end(
    make_spool: MakeSpool, clock: FakeClock
) -> None:
    spool = make_spool(lease_seconds=20, retry_base=30)
    assert spool.next_due_in() is None
    put_n(spool, 2)
    assert spool.next_due_in() == 0.0  # new rows are due now
    a, b = spool.claim_due()
    assert spool.defer(b, "later")
    assert spool.next_due_in() == 20.0  # a's lease ends before b's retry
    clock.now += 5
    assert spool.next_due_in() == 15.0
    spool.complete(a)
    assert spool.next_due_in() == 25.0  # only b's retry is left
    clock.now += 40
    assert spool.next_due_in() == 0.0  # overdue is "now", never negative
    (b,) = spool.claim_due()
    spool.complete(b)
    assert spool.next_due_in() is None


@pytest.mark.skipif(
    os.environ.get(BACKEND_ENV) != "postgresql", reason="SKIP LOCKED: PostgreSQL only"
)
def test_concurrent_claimers_take_each_row_exactly_once(make_spool: MakeSpool) -> None:
    ids = put_n(make_spool(), 200)
    claimed: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(name: str) -> None:
        spool = DatabaseSpool(instance=name)  # real clock; its own connection per thread
        try:
            start.wait(10)
            while batch := spool.claim_due(limit=5):
                claimed[name] += [e.id for e in batch]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            database_proxy.obj.close()
            spool.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    together = claimed["a"] + claimed["b"]
    assert len(together) == 200 and sorted(together) == ids
    assert SpoolMessage.select().where(SpoolMessage.state == "active").count() == 200
