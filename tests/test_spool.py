"""The durable spool: group commit, claims, backoff, the failed area, crash recovery."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from daemon import spool as spool_module
from daemon.errors import TransientError, UsageError
from daemon.spool import MAGIC, Envelope, Spool, read_spool_file


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_put_sync_is_durable_and_readable(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.put_sync(b"Subject: x\r\n\r\nbody\r\n", Envelope(listener="test", mail_from="a@b.c"))
    assert entry.path.parent == tmp_path / "queue"
    envelope, raw = read_spool_file(entry.path)
    assert raw == b"Subject: x\r\n\r\nbody\r\n"
    assert envelope.mail_from == "a@b.c" and envelope.listener == "test"
    assert entry.path.read_bytes().startswith(MAGIC)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_group_commit_shares_directory_fsyncs(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """50 concurrent writers: every file fsynced, but far fewer directory fsyncs."""
    dir_syncs: list[Path] = []
    real = spool_module._fsync_dir
    monkeypatch.setattr(spool_module, "_fsync_dir", lambda p: (dir_syncs.append(p), real(p)))
    spool = Spool(tmp_path, group_commit_ms=20)

    async def main() -> list[str]:
        entries = await asyncio.gather(*(spool.put(f"m{i}".encode(), Envelope(listener="t"))
                                         for i in range(50)))
        return [e.id for e in entries]

    ids = asyncio.run(main())
    assert len(set(ids)) == 50
    assert sorted(ids) == spool.queued_ids()
    assert 1 <= len(dir_syncs) < 10


def test_put_failure_is_reported_to_every_writer(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    os.chmod(tmp_path / "tmp", 0o500)
    if os.access(tmp_path / "tmp", os.W_OK):  # root ignores modes: use a missing dir instead
        os.chmod(tmp_path / "tmp", 0o700)
        (tmp_path / "tmp").rmdir()

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
