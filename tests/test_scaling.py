"""Several ``eleads serve`` instances sharing one PostgreSQL database (issue 9).

Three real daemons (each a listener process and a spool worker process) on three loopback
ports, one database, the database spool. 3,000 leads are spread over them, among them pairs
of leads for the same new person sent at the same moment to two different instances; the
instance leading the scheduler is SIGKILLed (with its worker) mid-run and restarted. At the
end every accepted message is exactly one eLead, each person one Prospect, every
notification sent, and each scheduler tick ran on one instance.

This needs the PostgreSQL server binaries (tests/pg.py starts a throw-away cluster); it runs
in the main (SQLite) pass of the suite only, since it brings its own PostgreSQL database.
"""

from __future__ import annotations

import email
import itertools
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from .conftest import BASE_CONFIG, REPO, deep_merge, free_port
from .mail import lead_bytes, wait_for
from .pg import PostgresCluster, query, selected_backend

TOTAL = 3000
PAIRS = 100  # same-person leads sent to two instances at once
INSTANCES = 3


def pair_lead(n: int, copy: int) -> bytes:
    """Two different emails (Message-IDs) from the same new person."""
    return (
        f"From: Website <forms@acme-roofing.example>\r\nTo: leads@demo.example\r\n"
        f"Subject: Quote request\r\nDate: Mon, 23 Nov 2026 10:15:00 -0500\r\n"
        f"Message-ID: <pair-{n:04d}-{copy}@acme-roofing.example>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"First Name: Rosalind\r\nLast Name: Pairwise{n}\r\n"
        f"Email: rosalind.pair{n}@example.org\r\nPhone: (503) 555-{n:04d}\r\n"
        f"Comments: copy {copy}.\r\n"
    ).encode()


class Instance:
    def __init__(self, root: Path, index: int, url: str, visit_log: Path) -> None:
        self.index = index
        self.port = free_port()
        self.data_dir = root / f"var{index}"
        self.log = root / f"serve{index}.log"
        self.config = root / f"config{index}.yaml"
        data = deep_merge(
            BASE_CONFIG,
            {
                "data_dir": str(self.data_dir),
                "rules_dir": str(REPO / "rules"),
                "database": {"url": url},
                "smtp": {"port": self.port},
                "spool": {
                    "worker": "process",
                    "store": "database",
                    "lease_seconds": 3,
                    "poll_interval": 0.2,
                    "retry_base": 0.5,
                    "max_attempts": 5,
                },
                "visits": {
                    "interval_seconds": 0.5,
                    "sources": [{"path": str(visit_log), "format": "jsonl", "account": "demo"}],
                },
            },
        )
        self.config.write_text(yaml.safe_dump(data))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Its own session: SIGKILL reaches the listener and its worker together.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            start_new_session=True,
        )
        proc = self.proc

        def listening() -> bool:
            assert proc.poll() is None, self.log.read_text()[-3000:]
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, timeout=60, what=f"instance {self.index} to listen")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def outbox_message_ids(self) -> list[str]:
        found = []
        for path in (self.data_dir / "outbox").rglob("*"):
            if path.is_file() and path.parent.name in ("new", "cur"):
                found.append(str(email.message_from_bytes(path.read_bytes())["Message-ID"]))
        return found


def send(port: int, raw: bytes) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            client.sendmail("forms@acme-roofing.example", ["leads@demo.example"], raw)
    except (OSError, smtplib.SMTPException):
        return False  # no 250: a real MTA retries later (the instance may be dead)
    return True


def test_three_instances_one_database_with_a_sigkill(
    pg_cluster: PostgresCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if selected_backend(request.config) == "postgresql":
        pytest.skip("runs once, in the main pass (it brings its own PostgreSQL database)")
    url = pg_cluster.new_database()
    visit_log = tmp_path / "visits.jsonl"
    visit_log.write_text("")
    instances = [Instance(tmp_path, i, url, visit_log) for i in range(INSTANCES)]
    for inst in instances:
        inst.start()

    acked: set[str] = set()
    lock = threading.Lock()
    work = [(f"form-{n:06d}@acme-roofing.example", lead_bytes(n)) for n in range(TOTAL - 2 * PAIRS)]
    cursor = iter(range(len(work)))

    def sender(offset: int) -> None:
        while (n := next(cursor, None)) is not None:
            message_id, raw = work[n]
            # Round robin over the instances; a dead one is skipped as an MTA would.
            for k in range(INSTANCES):
                if send(instances[(n + offset + k) % INSTANCES].port, raw):
                    with lock:
                        acked.add(message_id)
                    break

    def pair_sender() -> None:
        for n in range(PAIRS):
            a, b = instances[n % INSTANCES], instances[(n + 1) % INSTANCES]
            results: dict[int, bool] = {}
            go = threading.Barrier(2)

            def one(
                copy: int, port: int, n: int, go: threading.Barrier, results: dict[int, bool]
            ) -> None:
                go.wait()
                results[copy] = send(port, pair_lead(n, copy))

            threads = [
                threading.Thread(target=one, args=(c, i.port, n, go, results))
                for c, i in ((1, a), (2, b))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            with lock:
                acked.update(
                    f"pair-{n:04d}-{c}@acme-roofing.example" for c, ok in results.items() if ok
                )

    def visitor() -> None:
        for k in range(40):
            line = json.dumps(
                {
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                    "event": "pageview",
                    "visitor_id": f"v-anon-{k % 5}",
                    "url": f"https://demo.example/page/{k}",
                    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
                }
            )
            line += "\n"
            with visit_log.open("a") as fh:
                fh.write(line)
            time.sleep(0.2)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=pair_sender), threading.Thread(target=visitor)]
    for thread in threads:
        thread.start()

    # Kill the scheduler's leader (and its worker) once a third of the load is in.
    wait_for(lambda: len(acked) >= TOTAL // 3, timeout=300, what="a third of the load")
    leader_rows = query(url, "SELECT instance FROM job_run WHERE job = 'visits' ORDER BY id DESC")
    assert leader_rows, "the scheduler ran nowhere"
    leader_name = leader_rows[0][0]
    victim = next(i for i in instances if leader_name.endswith(str(i.data_dir)))
    killed_at = time.time()
    victim.kill()
    time.sleep(1.5)
    victim.start()
    for thread in threads:
        thread.join(600)
    assert len(acked) > TOTAL * 0.95, f"only {len(acked)} of {TOTAL} accepted"

    def drained() -> bool:
        rows = query(url, "SELECT count(*) FROM spool_message WHERE state IN ('queued', 'active')")
        outbox = query(url, "SELECT count(*) FROM notification WHERE status = 'queued'")
        return rows[0][0] == 0 and outbox[0][0] == 0

    wait_for(drained, timeout=600, what="spool and outbox drained on all instances")
    time.sleep(1.0)  # a tick or two more after the kill
    codes = [inst.stop() for inst in instances]
    assert codes == [0] * INSTANCES

    # Every accepted message is exactly one received message and one eLead.
    stored = Counter(r[0] for r in query(url, "SELECT message_id FROM inbound_message"))
    assert not [m for m, c in stored.items() if c > 1], "a message was processed twice"
    missing = acked - set(stored)
    assert not missing, f"accepted with 250 but lost: {sorted(missing)[:5]}"
    eleads = query(url, "SELECT count(*), count(DISTINCT message_id) FROM elead")[0]
    assert eleads[0] == eleads[1] == len(stored)
    assert query(url, "SELECT count(*) FROM spool_message WHERE state = 'failed'")[0][0] == 0

    # The same person sent to two instances at once is one Prospect, never two.
    people = query(
        url,
        "SELECT email, count(*) FROM prospect WHERE email LIKE %s GROUP BY email",
        ("rosalind.pair%",),
    )
    assert len(people) == PAIRS and all(count == 1 for _, count in people), people
    everyone = query(url, "SELECT email, count(*) FROM prospect GROUP BY email HAVING count(*) > 1")
    assert not everyone, f"duplicate prospects: {everyone[:5]}"

    # Every notification is sent; a copy twice only if the killed instance had written it
    # and died before recording it (at-least-once delivery, same Message-ID).
    notes = query(url, "SELECT status, count(*) FROM notification GROUP BY status")
    assert dict(notes) == {"sent": len(stored)}, notes
    delivered = Counter(m for inst in instances for m in inst.outbox_message_ids())
    expected = {r[0] for r in query(url, "SELECT message_id FROM notification")}
    assert {m.strip("<>") for m in delivered} == {m.strip("<>") for m in expected}
    twice = [m for m, c in delivered.items() if c > 1]
    assert len(twice) <= 16, f"{len(twice)} notifications delivered twice"
    written_by_victim = set(victim.outbox_message_ids())
    assert all(m in written_by_victim for m in twice)

    # The scheduler: one instance per tick, no overlapping runs, and a new leader after the
    # kill (the killed one's lock went with its connection).
    runs = query(
        url,
        "SELECT tick, instance, extract(epoch FROM started_at), extract(epoch FROM finished_at)"
        " FROM job_run WHERE job = 'visits' ORDER BY started_at",
    )
    ticks = [r[0] for r in runs]
    assert len(ticks) == len(set(ticks)) and len(runs) >= 10
    for (_, inst_a, _, end_a), (_, inst_b, start_b, _) in itertools.pairwise(runs):
        if inst_a != inst_b and end_a is not None:
            assert start_b >= end_a, "two instances ran the visit job at the same time"
    after = {inst for _, inst, start, _ in runs if float(start) > killed_at + 0.1}
    assert after and leader_name not in after, "no other instance took over the scheduler"
    for inst in instances:
        assert "Traceback" not in inst.log.read_text(), inst.log.read_text()[-3000:]
