"""The durable spool: group commit, claims, backoff, the failed area, crash recovery."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from daemon import journal
from daemon.errors import TransientError, UsageError
from daemon.journal import JournalReader, JournalWriter
from daemon.spool import MAGIC, Envelope, Spool, read_spool_file


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_put_sync_is_durable_and_readable(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.put_sync(
        b"Subject: x\r\n\r\nbody\r\n", Envelope(listener="test", mail_from="a@b.c")
    )
    assert entry.path.parent == tmp_path / "queue"
    envelope, raw = read_spool_file(entry.path)
    assert raw == b"Subject: x\r\n\r\nbody\r\n"
    assert envelope.mail_from == "a@b.c" and envelope.listener == "test"
    assert entry.path.read_bytes().startswith(MAGIC)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_group_commit_one_journal_append_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 concurrent writers share a handful of journal appends (one fdatasync each)."""
    appends: list[int] = []
    real = JournalWriter.append
    monkeypatch.setattr(
        JournalWriter,
        "append",
        lambda self, bodies: (appends.append(len(bodies)), real(self, bodies))[1],
    )
    spool = Spool(tmp_path, group_commit_ms=20)

    async def main() -> list[str]:
        entries = await asyncio.gather(
            *(spool.put(f"m{i}".encode(), Envelope(listener="t")) for i in range(50))
        )
        return [e.id for e in entries]

    ids = asyncio.run(main())
    assert len(set(ids)) == 50
    assert sum(appends) == 50 and len(appends) < 10
    assert spool.queued_ids() == []  # acknowledged = in the journal; files come later
    assert spool.absorb_journal() == 50  # the worker's side
    assert spool.absorb_journal() == 0  # and only once
    assert sorted(ids) == spool.queued_ids()
    for spool_id in ids:
        entry = spool.claim(spool_id)
        assert entry is not None and spool.read_raw(entry).startswith(b"m")


def _put_all(spool: Spool, count: int) -> list[str]:
    async def main() -> list[str]:
        entries = await asyncio.gather(
            *(
                spool.put(f"lead {i}".encode(), Envelope(listener="smtp", mail_from=f"s{i}@x.y"))
                for i in range(count)
            )
        )
        return [e.id for e in entries]

    return asyncio.run(main())


def test_journal_replay_after_a_crash_before_the_queue_files(tmp_path: Path) -> None:
    """Acknowledged = in the journal: a crash before the queue files exist loses nothing."""
    ids = _put_all(Spool(tmp_path), 5)  # ... and the process dies here
    restarted = Spool(tmp_path)
    assert restarted.recover() == 5
    assert restarted.queued_ids() == sorted(ids)
    assert journal.segments(tmp_path / "journal") == []
    assert Spool(tmp_path).recover() == 0  # replay is idempotent
    entry = restarted.claim(ids[3])
    assert entry is not None and restarted.read_raw(entry) == b"lead 3"
    assert entry.envelope.mail_from == "s3@x.y"


def test_replay_repairs_queue_files_cut_short_by_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ids = _put_all(spool, 3)
    assert spool.absorb_journal() == 3  # written without fsync ...
    victim = tmp_path / "queue" / f"{ids[1]}.msg"
    victim.write_bytes(victim.read_bytes()[:10])  # ... and the power went out
    assert Spool(tmp_path).recover() == 1
    entry = spool.claim(ids[1])
    assert entry is not None and spool.read_raw(entry) == b"lead 1"


def test_clean_stop_checkpoints_so_nothing_is_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ids = _put_all(spool, 4)
    spool.absorb_journal()
    for entry in spool.claim_due():
        spool.complete(entry)  # processed and gone
    spool.close()  # clean stop: os.sync + durable checkpoint
    assert Spool(tmp_path).recover() == 0
    assert not any((tmp_path / "queue" / f"{i}.msg").exists() for i in ids)


def test_journal_torn_tail_is_dropped_not_fatal(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path)
    writer.append([b"first", b"second"])
    writer.close()
    (segment,) = journal.segments(tmp_path)
    with segment.open("ab") as fh:
        fh.write(b"ELJR\x00\x00\x01\x00partial")  # a write that was never acknowledged
    assert list(journal.replay(tmp_path)) == [b"first", b"second"]
    reader = JournalReader(tmp_path)
    assert reader.read(10) == [b"first", b"second"]


def test_reader_follows_rotation_and_deletes_finished_segments(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, rotate_bytes=50)
    reader = JournalReader(tmp_path)
    assert reader.acquire()
    assert not JournalReader(tmp_path).acquire()  # one reader per journal
    writer.append([b"x" * 60])
    assert reader.read(10) == [b"x" * 60]
    assert reader.read(10) == [b"x" * 60]  # not consumed until advance()
    reader.advance()
    writer.append([b"y" * 60])  # rotated: a second segment
    writer.append([b"z" * 60])  # and a third
    assert reader.read(1) == [b"y" * 60]
    reader.advance()
    assert len(journal.segments(tmp_path)) == 2  # the first one is done and gone
    assert reader.read(10) == [b"z" * 60]
    reader.advance()
    assert len(journal.segments(tmp_path)) == 1  # the writer's current one stays
    assert JournalReader(tmp_path).read(10) == []  # the cursor survives a restart


def test_put_failure_is_reported_to_every_writer(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "journal").rmdir()  # root ignores file modes: a file in the way fails for sure
    (tmp_path / "journal").write_text("not a directory")

    async def main() -> None:
        await spool.put(b"x", Envelope(listener="t"))

    with pytest.raises(TransientError):
        asyncio.run(main())
    assert spool.queued_ids() == []


def test_claim_complete_and_claim_is_exclusive(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.put_sync(b"x", Envelope(listener="t"))
    claimed = spool.claim(entry.id)
    assert claimed is not None and claimed.path.parent.name == "active"
    assert spool.claim(entry.id) is None
    spool.complete(claimed)
    assert not claimed.path.exists() and spool.queued_ids() == []


def test_defer_backs_off_then_fails_then_requeue(tmp_path: Path) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path, max_attempts=3, retry_base=10, retry_max=15, clock=clock)
    entry = spool.put_sync(b"x", Envelope(listener="t"))
    first = spool.claim_due()[0]
    assert spool.defer(first, "boom 1") is True
    assert spool.claim_due() == []  # not due yet
    assert spool.next_due_in() == pytest.approx(10)
    clock.now += 10
    second = spool.claim_due()[0]
    assert second.attempts == 1
    assert spool.defer(second, "boom 2") is True
    assert spool.next_due_in() == pytest.approx(15)  # capped at retry_max
    clock.now += 15
    third = spool.claim_due()[0]
    assert spool.defer(third, "boom 3") is False  # third strike: failed area
    failed = list(spool.failed())
    assert [f["id"] for f in failed] == [entry.id]
    assert failed[0]["reason"] == "boom 3" and failed[0]["attempts"] == 3
    assert spool.queued_ids() == []
    spool.requeue(entry.id)
    assert spool.queued_ids() == [entry.id]
    again = spool.claim_due()[0]
    assert again.attempts == 0  # a fresh set of attempts
    with pytest.raises(UsageError):
        spool.requeue("no-such-id")


def test_recover_returns_claimed_messages_and_clears_tmp(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.put_sync(b"x", Envelope(listener="t"))
    assert spool.claim(entry.id) is not None
    (tmp_path / "tmp" / "half-written.msg").write_bytes(b"partial")
    # A new process (after a crash) recovers:
    restarted = Spool(tmp_path)
    assert restarted.recover() == 1
    assert restarted.queued_ids() == [entry.id]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_unreadable_spool_file_goes_to_failed_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "queue" / "0000-bad.msg").write_bytes(b"garbage without header")
    assert spool.claim_due() == []
    failed = list(spool.failed())
    assert failed[0]["id"] == "0000-bad" and "unreadable" in failed[0]["reason"]
    assert (tmp_path / "failed" / "0000-bad.msg").read_bytes() == b"garbage without header"
    assert json.loads((tmp_path / "failed" / "0000-bad.json").read_text())["attempts"] == 0


def test_recover_waits_for_a_live_worker_to_finish(tmp_path: Path) -> None:
    """A worker orphaned by a crashed daemon keeps its claim until it lets go."""
    spool = Spool(tmp_path)
    entry = spool.put_sync(b"x", Envelope(listener="t"))
    released = threading.Event()
    holding = threading.Event()

    def orphan_worker() -> None:
        with spool.worker_lock():
            claimed = spool.claim(entry.id)
            holding.set()
            released.wait(5)
            assert claimed is not None
            spool.complete(claimed)  # it finished the message

    thread = threading.Thread(target=orphan_worker)
    thread.start()
    holding.wait(5)
    timer = threading.Timer(0.3, released.set)
    timer.start()
    started = time.monotonic()
    assert Spool(tmp_path).recover() == 0  # waited, and nothing was left to hand back
    assert time.monotonic() - started >= 0.25
    thread.join()
    assert spool.queued_ids() == []
