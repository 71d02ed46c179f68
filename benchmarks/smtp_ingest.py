"""SMTP ingest: eleads (durable spool + runner) against a null aiosmtpd handler.

    .venv/bin/python benchmarks/smtp_ingest.py [--messages 3000] [--connections 32] [--rounds 3]

Both servers run as separate processes on 127.0.0.1 and get the same load from one
asyncio client (persistent connections, one transaction after another on each). Rounds
alternate null/eleads so that machine noise hits both; the medians are reported with
their ratio. eleads runs its real daemon: every 250 is sent after the message is fsynced,
and the spool worker process parses and stores each message meanwhile. After each eleads
round the benchmark waits until every message is stored exactly once (or exits with an
error) and reports that end-to-end rate too.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _support import (
    NULL_SMTP_SERVER,
    free_port,
    machine,
    percentile,
    smtp_load,
    wait_listening,
    wait_stored,
)

REPO = Path(__file__).resolve().parents[1]


def message(n: int) -> bytes:
    body = (
        f"From: Website <forms@bench.example>\r\nTo: leads@demo.example\r\n"
        f"Subject: New contact form submission {n}\r\n"
        f"Message-ID: <bench-{n}-{time.time_ns()}@bench.example>\r\n"
        f"Date: Mon, 23 Nov 2026 10:15:00 -0500\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"First Name: Bench\r\nLast Name: Person{n}\r\nEmail: bench{n}@example.org\r\n"
        f"Phone: (614) 555-01{n % 100:02d}\r\nComments: {'lorem ipsum dolor sit amet ' * 3}\r\n"
        + "consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore\r\n"
        * 30
    )
    return body.encode()


def start_null() -> tuple[subprocess.Popen[bytes], int, Path | None]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", NULL_SMTP_SERVER, str(port)])
    wait_listening(port, proc)
    return proc, port, None


def start_eleads() -> tuple[subprocess.Popen[bytes], int, Path | None]:
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="eleads-bench-"))
    config = tmp / "config.yaml"
    config.write_text(
        f"data_dir: {tmp / 'var'}\nrules_dir: {REPO / 'rules'}\nlogging: {{level: warning}}\n"
        f"smtp: {{host: 127.0.0.1, port: {port}}}\naccounts:\n  - id: demo\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "serve", "--config", str(config)], cwd=REPO
    )
    wait_listening(port, proc)
    return proc, port, tmp


def wait_processed(db_path: Path, messages: int, started: float) -> float:
    """Seconds from the first send until every message is stored; exits if one is missing
    or doubled (the benchmark must not look good by dropping work)."""
    count, distinct = wait_stored(db_path, messages, timeout=300)
    if count != messages or distinct != messages:
        raise SystemExit(f"eleads stored {count} rows ({distinct} distinct) for {messages}")
    return time.perf_counter() - started


def run_round(kind: str, messages: int, connections: int) -> tuple[float, float, float, float]:
    proc, port, tmp = start_null() if kind == "null" else start_eleads()
    end_to_end = 0.0
    try:
        started = time.perf_counter()
        elapsed, accepted = asyncio.run(smtp_load(port, messages, connections, message))
        latencies = [latency for _, latency in accepted.values()]
        if tmp is not None:
            end_to_end = messages / wait_processed(tmp / "var" / "eleads.db", messages, started)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    return messages / elapsed, p50, p99, end_to_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(
        f"load: {args.messages} messages of {len(message(0))} bytes over "
        f"{args.connections} connections, {args.rounds} rounds each, alternating"
    )
    results: dict[str, list[tuple[float, float, float, float]]] = {"null": [], "eleads": []}
    for round_no in range(args.rounds):
        for kind in ("null", "eleads"):
            row = run_round(kind, args.messages, args.connections)
            results[kind].append(row)
            rate, p50, p99, e2e = row
            stored = f"  all stored once, end to end {e2e:6.0f} msg/s" if e2e else ""
            print(
                f"  round {round_no + 1} {kind:7} {rate:8.0f} msg/s  p50 {p50:6.1f} ms  "
                f"p99 {p99:6.1f} ms{stored}"
            )
    medians = {
        k: tuple(statistics.median(r[i] for r in v) for i in range(4)) for k, v in results.items()
    }
    for kind, (rate, p50, p99, e2e) in medians.items():
        stored = f"  end to end {e2e:6.0f} msg/s" if e2e else ""
        print(f"median {kind:7} {rate:8.0f} msg/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms{stored}")
    ratio = medians["eleads"][0] / medians["null"][0]
    print(f"eleads / null accepted rate: {ratio:.0%} (target >= 50%)")


if __name__ == "__main__":
    main()
