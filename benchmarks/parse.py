"""Benchmark: full ``parse_message`` against a raw ``mailparser.parse_from_bytes`` decode.

Run ``.venv/bin/python benchmarks/parse.py`` (``--profile`` adds a cProfile summary).
Both are timed on the same messages, in the same run, pinned to one core, over several
rounds; medians are reported. Targets: full parse <= 3x the raw decode, >= 1000 msg/s.
Messages: the shared corpus (leads, replies, noise), else tests/fixtures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mailparser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _support import machine  # noqa: E402

from daemon.parse import parse_message  # noqa: E402 - after the sys.path line above

CORPUS = Path(os.environ.get("ELEADS_CORPUS", ROOT.parent / "shared" / "corpus"))


def messages() -> tuple[str, list[bytes]]:
    found = sorted(p for d in ("leads", "replies", "noise") for p in (CORPUS / d).glob("*.eml"))
    if found:
        return str(CORPUS), [p.read_bytes() for p in found]
    fixtures = sorted((ROOT / "tests" / "fixtures").glob("**/*.eml"))
    return str(ROOT / "tests" / "fixtures"), [p.read_bytes() for p in fixtures]


def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def time_round(func: Callable[[bytes], object], raws: list[bytes]) -> list[float]:
    """Seconds per message for one pass over all messages."""
    out = []
    for raw in raws:
        start = time.perf_counter()
        func(raw)
        out.append(time.perf_counter() - start)
    return out


def summary(rounds: list[list[float]]) -> dict[str, float]:
    per_round = []
    for times in rounds:
        ordered = sorted(times)
        per_round.append(
            {
                "rate": len(times) / sum(times),
                "p50": ordered[len(ordered) // 2],
                "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                "total": sum(times),
            }
        )
    return {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}


def profile(raws: list[bytes]) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        for raw in raws:
            parse_message(raw)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
    print(out.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    source, raws = messages()
    print(machine())
    print(f"{pin_one_core()}; {len(raws)} messages from {source}; {args.rounds} rounds, medians")
    for raw in raws:  # warm-up: imports, rules, regex caches
        parse_message(raw)
        mailparser.parse_from_bytes(raw)
    full, raw_decode = [], []
    for _ in range(args.rounds):
        full.append(time_round(parse_message, raws))
        raw_decode.append(time_round(mailparser.parse_from_bytes, raws))
    ours, base = summary(full), summary(raw_decode)
    for name, s in (("parse_message (full)", ours), ("mailparser decode", base)):
        print(
            f"{name:22s} {s['rate']:9.0f} msg/s   p50 {s['p50'] * 1e3:7.3f} ms"
            f"   p99 {s['p99'] * 1e3:7.3f} ms"
        )
    ratio = ours["total"] / base["total"]
    print(
        f"ratio full/raw decode: {ratio:.2f}x (target <= 3x); "
        f"throughput {ours['rate']:.0f} msg/s (target >= 1000)"
    )
    if args.profile:
        profile(raws)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
