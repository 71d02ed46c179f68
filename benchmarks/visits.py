"""Benchmark: visit-log reading speed and return-lead alert latency.

Run ``.venv/bin/python benchmarks/visits.py`` (``--lines 200000`` for a quick run).

1. Throughput: a SEEDED synthetic nginx combined+cookie log of ``--lines`` lines (default
   1M: one busy day of 100k visitors, 10k of them linked to eLeads whose lead time is in
   the middle of the day; static assets, bots, health checks, 404s, cookie-less hits) is
   read by the visit job (``run_once``: parse, filter, sessions, links, alerts and their
   outbox rows, cursors) into a fresh database, on one pinned core. Reported: lines/s
   (target >= 100,000) with the split between reading+parsing and the database commit,
   the median of ``--rounds`` rounds.
2. Latency: the daemon's ``VisitScheduler`` at the default interval (``--interval``,
   60 s) on its own loop and DB thread; a line of a linked visitor's new session is
   appended at a random moment; measured until its alert row is committed (queued).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _support import machine, percentile  # noqa: E402

from daemon.config import Settings, parse_settings  # noqa: E402
from daemon.db import open_database  # noqa: E402
from daemon.db.models import (  # noqa: E402
    Account,
    ELead,
    InboundMessage,
    ReturnAlert,
    VisitorLink,
    database_proxy,
)
from daemon.db.thread import DBThread  # noqa: E402
from daemon.visits import job  # noqa: E402
from daemon.visits.scheduler import VisitScheduler  # noqa: E402

DAY0 = datetime(2026, 11, 24, tzinfo=UTC)
AGENTS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
]
BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
]
PAGES = [f"/{a}/{b}/" for a in ("siding", "windows", "roofing", "gutters") for b in range(40)]


def visitor(n: int) -> str:
    return f"v-{n:08x}"


def stamp(ts: float) -> str:
    return f"{datetime.fromtimestamp(ts, UTC):%d/%b/%Y:%H:%M:%S} +0000"


def make_log(path: Path, lines: int, visitors: int, seed: int = 7) -> None:
    """Sessions of random visitors over one day, each page followed by assets."""
    rng = random.Random(seed)
    events: list[tuple[float, str]] = []
    start0 = DAY0.timestamp()
    while len(events) < lines:
        v = rng.randrange(visitors)
        ua = AGENTS[v % len(AGENTS)]
        cookie = visitor(v) if rng.random() > 0.05 else "-"
        ts = start0 + rng.uniform(0, 86_000)
        referrer = "https://search.example/?q=siding"
        for _ in range(rng.randint(2, 8)):
            page = rng.choice(PAGES)
            ip = f"203.0.113.{v % 250}"
            status = 200 if rng.random() > 0.03 else 404
            events.append(
                (
                    ts,
                    f'{ip} - - [{stamp(ts)}] "GET {page} HTTP/1.1" {status} 5120 '
                    f'"{referrer}" "{ua}" "{cookie}"',
                )
            )
            for asset in ("/wp-content/themes/x/style.css", "/wp-content/uploads/hero.png"):
                events.append(
                    (
                        ts + 1,
                        f'{ip} - - [{stamp(ts + 1)}] "GET {asset} HTTP/1.1" 304 0 '
                        f'"https://site.example{page}" "{ua}" "{cookie}"',
                    )
                )
            referrer = f"https://site.example{page}"
            ts += rng.uniform(20, 400)
        if rng.random() < 0.15:
            bot_ts = start0 + rng.uniform(0, 86_000)
            events.append(
                (
                    bot_ts,
                    f'66.249.66.1 - - [{stamp(bot_ts)}] "GET {rng.choice(PAGES)} HTTP/1.1" 200 '
                    f'9000 "-" "{rng.choice(BOTS)}" "-"',
                )
            )
            events.append(
                (
                    bot_ts,
                    f'127.0.0.1 - - [{stamp(bot_ts)}] "GET /healthz HTTP/1.1" 200 2 "-" '
                    '"curl/8.5.0" "-"',
                )
            )
    events.sort(key=lambda e: e[0])
    with path.open("w") as fh:
        fh.writelines(text + "\n" for _, text in events[:lines])


def settings_for(data_dir: Path, interval: float = 60.0) -> Settings:
    data = {
        "data_dir": str(data_dir),
        "rules_dir": str(ROOT / "rules"),
        "visits": {
            "interval_seconds": interval,
            "sources": [{"path": "visits/*.log", "format": "combined_cookie"}],
        },
        "accounts": [{"id": "bench", "notifications": {"return_lead": ["sales@bench.example"]}}],
    }
    config = data_dir / "config.yaml"
    config.write_text(json.dumps(data))  # JSON is YAML: the job re-reads it every run
    return parse_settings(data, source=config)


def seed_leads(linked: int, lead_time: datetime) -> None:
    """``linked`` eLeads with a visitor id each (bulk, as ingestion would leave them)."""
    Account.insert(id="bench").on_conflict_ignore().execute()
    with database_proxy.atomic():
        messages = [
            {
                "dedupe_key": f"bench-{n}",
                "spool_id": f"s{n}",
                "listener": "bench",
                "raw_path": "-",
                "outcome": "created",
                "account": "bench",
            }
            for n in range(linked)
        ]
        for i in range(0, linked, 500):
            InboundMessage.insert_many(messages[i : i + 500]).execute()
        ids = [m.id for m in InboundMessage.select(InboundMessage.id).order_by(InboundMessage.id)]
        eleads = [
            {
                "account": "bench",
                "message": mid,
                "state": "converted",
                "parse": {"lead": {"first_name": "Lead", "last_name": str(n), "visitor_id": ""}},
                "header_date": lead_time.replace(tzinfo=None),
                "received_at": lead_time.replace(tzinfo=None),
            }
            for n, mid in enumerate(ids)
        ]
        for i in range(0, linked, 500):
            ELead.insert_many(eleads[i : i + 500]).execute()
        elead_ids = [e.id for e in ELead.select(ELead.id).order_by(ELead.id)]
        links = [
            {"account": "bench", "visitor_id": visitor(n), "elead": eid, "via": "lead_field"}
            for n, eid in enumerate(elead_ids)
        ]
        for i in range(0, linked, 500):
            VisitorLink.insert_many(links[i : i + 500]).execute()


def throughput(lines: int, visitors: int, linked: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="eleads-visits-") as tmp:
        log = Path(tmp) / "access.log"
        started = time.perf_counter()
        make_log(log, lines, visitors)
        size = log.stat().st_size
        print(
            f"log: {lines:,} lines, {size / 1e6:.0f} MB, {visitors:,} visitors, "
            f"{linked:,} linked (generated in {time.perf_counter() - started:.1f} s)"
        )
        figures: list[tuple[float, float, float, int, float]] = []
        for r in range(rounds):
            data_dir = Path(tmp) / f"round{r}"
            (data_dir / "visits").mkdir(parents=True)
            os.link(log, data_dir / "visits" / "access.log")
            settings = settings_for(data_dir)
            db = open_database(settings.database_url)
            seed_leads(linked, DAY0 + timedelta(hours=12))
            # What run_once does, with the two steps timed apart.
            # CPU time is what one core spends (the shared machine's other load does not
            # count); wall time includes waiting for fsync and for the CPU.
            read_s, commit_s = 0.0, 0.0
            report = job.RunReport()
            t0, w0 = time.process_time(), time.perf_counter()
            while True:
                t = time.process_time()
                batch = job.read_batch(settings, job.load_cursors())
                read_s += time.process_time() - t
                if not batch.chunks:
                    break
                t = time.process_time()
                job.merge_reports(report, job.commit_batch(settings, batch))
                commit_s += time.process_time() - t
                if not batch.more:
                    break
            total = time.process_time() - t0
            wall = time.perf_counter() - w0
            assert report.lines == lines, (report.lines, lines)
            figures.append((total, read_s, commit_s, report.alerts, wall))
            print(
                f"  round {r + 1}: {lines / total:,.0f} lines per CPU second ({total:.2f} s CPU: "
                f"read+parse {read_s:.2f} s, commit {commit_s:.2f} s; {wall:.2f} s wall, "
                f"{lines / wall:,.0f} lines/s); {report.hits:,} hits, "
                f"{report.sessions:,} sessions, {report.alerts:,} alerts"
            )
            db.close()
        total = statistics.median(f[0] for f in figures)
        wall = statistics.median(f[4] for f in figures)
        print(
            f"throughput: median {lines / total:,.0f} lines per CPU second, "
            f"{lines / wall:,.0f} lines/s wall, over {rounds} rounds "
            f"(read+parse {statistics.median(f[1] for f in figures):.2f} s, "
            f"commit {statistics.median(f[2] for f in figures):.2f} s, "
            f"{figures[0][3]:,} alerts per round)"
        )


def _alerted(vid: str) -> bool:
    return bool(ReturnAlert.select().where(ReturnAlert.visitor_id == vid).exists())


async def _latency(samples: int, interval: float) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="eleads-visits-lat-") as tmp:
        data_dir = Path(tmp)
        (data_dir / "visits").mkdir()
        log = data_dir / "visits" / "access.log"
        log.write_text("")
        settings = settings_for(data_dir, interval)
        db = open_database(settings.database_url)
        seed_leads(samples, DAY0)
        db.close()
        db_thread = DBThread(db)
        scheduler = VisitScheduler(settings=settings, db_thread=db_thread, wake=lambda: None)
        await scheduler.start()
        rng = random.Random(3)
        out: list[float] = []
        try:
            for n in range(samples):
                await asyncio.sleep(rng.uniform(0, interval))
                now = time.time()
                with log.open("a") as fh:
                    fh.write(
                        f'203.0.113.5 - - [{stamp(now)}] "GET /siding/ HTTP/1.1" 200 100 "-" '
                        f'"{AGENTS[0]}" "{visitor(n)}"\n'
                    )
                written = time.perf_counter()
                while not await db_thread.run(_alerted, visitor(n)):
                    await asyncio.sleep(0.02)
                out.append(time.perf_counter() - written)
                print(f"  sample {n + 1}: {out[-1]:.2f} s")
        finally:
            await scheduler.shutdown()
            db_thread.close()
        return out


def latency(samples: int, interval: float) -> None:
    values = asyncio.run(_latency(samples, interval))
    print(
        f"latency (interval {interval:g} s, {samples} samples): median "
        f"{statistics.median(values):.2f} s, max {max(values):.2f} s, "
        f"p90 {percentile(values, 0.9):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--visitors", type=int, default=100_000)
    parser.add_argument("--linked", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"machine: {machine()}")
    if not args.skip_throughput:
        throughput(args.lines, args.visitors, args.linked, args.rounds)
    if not args.skip_latency:
        latency(args.samples, args.interval)


if __name__ == "__main__":
    main()
