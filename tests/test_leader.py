"""One scheduler among instances: the leader lock, one run per tick, migrations in turn."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from daemon.db import hold_leader_lock, open_database
from daemon.db.models import JobRun, database_proxy, utcnow
from daemon.visits.scheduler import claim_tick, finish_tick, purge_job_runs

from .pg import PostgresCluster, database_url_for, query


def test_a_tick_runs_once_whoever_asks(tmp_path: Path) -> None:
    db = open_database(database_url_for(tmp_path))
    try:
        assert claim_tick("visits", 100, "host-a:/var/a") is True
        assert claim_tick("visits", 100, "host-b:/var/b") is False  # already run
        assert claim_tick("visits", 101, "host-b:/var/b") is True
        assert claim_tick("purge", 100, "host-b:/var/b") is True  # another job
        finish_tick("visits", 100, "ok")
        JobRun.update(started_at=utcnow() - timedelta(days=8)).where(JobRun.tick == 101).execute()
        assert purge_job_runs(now=utcnow()) == 1
        rows = {(r.job, r.tick): (r.instance, r.outcome) for r in JobRun.select()}
        assert rows == {
            ("visits", 100): ("host-a:/var/a", "ok"),
            ("purge", 100): ("host-b:/var/b", None),
        }
    finally:
        db.close()


def _in_thread(fn: object) -> object:
    """Run ``fn`` on a thread of its own (peewee: its own connection); return its result."""
    box: list[object] = []
    thread = threading.Thread(target=lambda: box.append(fn()))  # type: ignore[operator]
    thread.start()
    thread.join(30)
    return box[0]


def test_one_leader_until_its_connection_ends(pg_cluster: PostgresCluster) -> None:
    db = open_database(pg_cluster.new_database())
    try:
        assert hold_leader_lock() is True
        assert hold_leader_lock() is True  # still ours, not taken twice
        assert _in_thread(lambda: (hold_leader_lock(), database_proxy.close())[0]) is False
        # The next tick of the follower also loses while the leader lives ...
        assert _in_thread(lambda: (hold_leader_lock(), database_proxy.close())[0]) is False
        db.close()  # ... and wins once the leader's connection is gone (it died; the
        # server releases the lock when that backend has exited, a moment later).
        deadline = time.monotonic() + 10
        while not _in_thread(lambda: (hold_leader_lock(), database_proxy.close())[0]):
            assert time.monotonic() < deadline, "the lock of a closed connection stayed"
            time.sleep(0.05)
    finally:
        if not db.is_closed():
            db.close()


def test_sqlite_daemon_always_leads(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'eleads.db'}")
    try:
        assert hold_leader_lock() is True
    finally:
        db.close()


def test_instances_starting_together_migrate_in_turn(pg_cluster: PostgresCluster) -> None:
    """Four processes open (and so migrate) one empty database at the same moment."""
    url = pg_cluster.new_database(migrated=False)
    script = (
        "import sys, time; from daemon.db import open_database; "
        "time.sleep(float(sys.argv[2]) - time.time()); open_database(sys.argv[1])"
    )
    at = str(time.time() + 1.5)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, url, at], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    results = [(proc.wait(60), proc.stderr.read() if proc.stderr else b"") for proc in procs]
    assert all(code == 0 for code, _ in results), results
    versions = [row[0] for row in query(url, "SELECT version FROM schema_migrations")]
    assert sorted(versions) == list(range(1, max(versions) + 1))
