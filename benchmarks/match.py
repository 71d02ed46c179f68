"""Benchmark: prospect import speed, match latency, and match quality against a baseline.

Run ``.venv/bin/python benchmarks/match.py`` (``--sizes 10000,100000`` for a quick run).
For each size it generates SEEDED synthetic prospects (US name frequencies with a tail
of rare surnames, two-person households sharing surname + address and often the
landline, a few family mailboxes), writes them as an untidy CRM export (six phone
formats, mixed-case emails, gaps), imports them (target >= 20k prospects/s), checks with
EXPLAIN QUERY PLAN that look-ups read the (account, key, prospect) index alone, then
matches a LABELLED set of leads (target p99 < 5 ms at 1M; the median of 3 passes):
true duplicates with realistic variations, weak duplicates (name + place only),
spouses, canvasser-shared emails, reassigned numbers, Jr./Sr., namesakes elsewhere and
new people. The same candidates are also decided by
the BASELINE scorer of the product eleads replaces (points for equal fields: email 16,
phone 11, last name 3.6, first name 2.8, street 1.3, postcode 1.1; >= 15 match, < 7 new).
Labels follow the corpus README's rule; precision and recall use the ground truth.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _names import (  # noqa: E402
    AREA,
    CITIES,
    DOMAIN_W,
    DOMAINS,
    FEMALE,
    LEAD,
    MALE,
    NICKNAMES,
    PLACE,
    SAME_NAME,
    STREETS,
    SUFFIXES,
    SURNAMES,
    SYLLABLES,
)
from _support import machine  # noqa: E402

from daemon.config import MatchSettings  # noqa: E402 - after the sys.path line above
from daemon.db import open_database  # noqa: E402
from daemon.db.models import Account, Prospect  # noqa: E402
from daemon.match import Decision, match_lead  # noqa: E402
from daemon.match.retrieve import explain, fetch_candidates  # noqa: E402
from daemon.prospects import IMPORT_BATCH_ROWS  # noqa: E402
from daemon.prospects_import import import_prospects  # noqa: E402

KINDS = [
    ("dup_strong", 33, "matched"),
    ("dup_weak", 7, "fuzzy"),
    ("household", 10, "fuzzy"),
    ("canvasser", 8, "fuzzy"),
    ("phone_reused", 3, "fuzzy"),
    ("generation", 2, "fuzzy"),
    ("namesake", 12, "created"),
    ("new", 25, "created"),
]
# fmt: on


def _weighted(text: str) -> tuple[list[str], list[int]]:
    words = text.split()
    return words[::2], [int(w) for w in words[1::2]]


def _cities() -> tuple[list[tuple[str, str, list[str]]], list[int]]:
    out, weights = [], []
    for item in CITIES.split("|"):
        *name, region, zips, weight = item.split()
        lo, _, hi = zips.partition("-")
        out.append((" ".join(name), region, [str(z) for z in range(int(lo), int(hi or lo) + 1)]))
        weights.append(int(weight))
    return out, weights


Lead = tuple[dict[str, Any], str | None]  # (lead fields, the prospect it truly is, or None)
Labelled = tuple[dict[str, Any], str | None, str]  # ... and its label by the README's rule
Miss = tuple[dict[str, Any], str, str, list[str]]  # (lead, its prospect, outcome, shown)


class World:
    """Seeded generator of people, prospects and labelled leads."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.names = {False: _weighted(MALE), True: _weighted(FEMALE)}
        self.last, self.last_w = _weighted(SURNAMES)
        self.cities, self.city_w = _cities()
        self.nicks = {k: v.split(",") for k, _, v in (p.partition(":") for p in NICKNAMES.split())}
        self.canon: dict[str, set[str]] = {}
        for k, _, v in (p.partition(":") for p in f"{NICKNAMES} {SAME_NAME}".split()):
            for name in (k, *v.split(",")):
                self.canon.setdefault(name, {name}).add(k)
        self.phones: set[str] = set()
        self.emails: set[str] = set()
        self.index: set[tuple[str, str, str]] = set()  # (last, first group, postal|city)
        self.canvassers: list[str] = []

    def surname(self) -> str:
        if self.rng.random() < 0.35:  # the long tail: rare surnames
            return "".join(self.rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        return self.rng.choices(self.last, self.last_w)[0]

    def phone(self) -> str:
        rng = self.rng
        p = ""
        while not p or p in self.phones:
            p = f"+1{rng.choice(AREA)}{rng.randint(200, 989)}{rng.randint(0, 9999):04d}"
        self.phones.add(p)
        return p

    def email(self, first: str, last: str) -> str:
        domain = self.rng.choices(DOMAINS, DOMAIN_W)[0]
        forms = (f"{first}.{last}", f"{first[0]}{last}", f"{first}{last[0]}", f"{last}.{first}")
        local = self.rng.choice(forms).lower().replace("'", "")
        while (e := f"{local}{self.rng.randint(1, 9999)}@{domain}") in self.emails:
            pass
        self.emails.add(e)
        return e

    def address(self) -> dict[str, str]:
        name, region, zips = self.rng.choices(self.cities, self.city_w)[0]
        number, suffix = self.rng.randint(1, 9999), self.rng.choice(SUFFIXES)[0]
        street = f"{number} {self.rng.choice(STREETS)} {suffix}"
        return dict(zip(PLACE, (street, name, region, self.rng.choice(zips), "US"), strict=True))

    def groups(self, first: str) -> set[str]:
        return self.canon.get(first.capitalize(), {first.capitalize()})

    def person(self, female: bool | None = None, last: str | None = None) -> dict[str, Any]:
        female = self.rng.random() < 0.5 if female is None else female
        first = self.rng.choices(*self.names[female])[0]
        last = last or self.surname()
        contacts = {"email": self.email(first, last), "phone": self.phone()}
        return {
            "first_name": first,
            "last_name": last,
            **contacts,
            "female": female,
        } | self.address()

    def prospects(self, n: int) -> list[dict[str, Any]]:
        """n prospects; a quarter of them in two-person households."""
        people: list[dict[str, Any]] = []
        while len(people) < n:
            base = self.person() | {"partner": False}
            people.append(base)
            if self.rng.random() < 0.25 and len(people) < n:
                people.append(self.spouse(base))
        for i, p in enumerate(people, 1):
            p["pid"] = f"P{i}"
            for field, chance in (("email", 0.08), ("phone", 0.08), ("street", 0.05)):
                if self.rng.random() < chance:
                    p[field] = None
            for place in (p["postal_code"], p["city"]):
                for group in self.groups(p["first_name"]):
                    self.index.add((p["last_name"].lower(), group, place))
        return people

    def spouse(self, base: dict[str, Any]) -> dict[str, Any]:
        """Same address; same surname 90%, the landline 60%, a family mailbox 10%."""
        same_name = self.rng.random() < 0.9
        other = self.person(not base["female"], base["last_name"] if same_name else None)
        other |= {k: base[k] for k in PLACE} | {"partner": True}
        base["partner"] = True
        if self.rng.random() < 0.6:
            other["phone"] = base["phone"]
        if self.rng.random() < 0.1:
            base["email"] = other["email"] = self.email("the", base["last_name"] + "family")
        return other

    # --- leads ----------------------------------------------------------------------------

    def typo(self, word: str) -> str:
        i, letter = self.rng.randint(1, len(word) - 2), self.rng.choice("aeioulnrst")
        return self.rng.choice(
            (word[:i] + letter + word[i + 1 :], word[:i] + word[i + 1 :],
             word[:i] + word[i + 1] + word[i] + word[i + 2 :], word[:i] + letter + word[i:])
        )  # fmt: skip

    def vary_name(self, lead: dict[str, Any], typo: float) -> None:
        """A nickname (35%), a slip in the surname, or ALL CAPS."""
        nicks, roll = self.nicks.get(lead["first_name"]), self.rng.random()
        if nicks and roll < 0.35:
            lead["first_name"] = self.rng.choice(nicks)
        elif roll < 0.35 + typo and len(lead["last_name"]) >= 5:
            lead["last_name"] = self.typo(lead["last_name"])
        elif roll < 0.55:
            lead |= {k: lead[k].upper() for k in ("first_name", "last_name")}

    def vary_contacts(self, lead: dict[str, Any]) -> None:
        """Keep one strong identifier; change or drop others, move house, reformat."""
        kept = [f for f in ("email", "phone", "street") if lead.get(f)]
        keep = self.rng.choice(kept)
        for field in kept:
            if field != keep and self.rng.random() < 0.35:
                lead[field] = None if self.rng.random() < 0.5 else self.fresh(field, lead)
        if keep != "street" and self.rng.random() < 0.1:
            lead.update(self.address())
        if (lead.get("email") or "").endswith("@gmail.com") and self.rng.random() < 0.3:
            local, _, domain = lead["email"].partition("@")
            lead["email"] = f"{local[:2]}.{local[2:]}+leads@{domain}"
        if lead.get("street") and self.rng.random() < 0.3:
            for long, short in SUFFIXES:
                lead["street"] = lead["street"].replace(f" {long}", f" {short}")

    def fresh(self, field: str, lead: Mapping[str, Any]) -> str:
        if field == "email":
            return self.email(lead["first_name"], lead["last_name"])
        return self.phone() if field == "phone" else self.address()["street"]

    def lead(self, kind: str, p: dict[str, Any]) -> Lead | None:
        """One lead of ``kind`` built around prospect ``p`` (None: p does not fit)."""
        base = {k: p[k] for k in LEAD}
        if kind in ("dup_strong", "dup_weak"):
            self.vary_name(base, 0.15 if kind == "dup_strong" else 0.2)
            if kind == "dup_weak":
                base |= {"email": self.fresh("email", p), "phone": self.phone(), "street": None}
            elif p["email"] or p["phone"] or p["street"]:
                self.vary_contacts(base)
            else:
                return None
            return base, p["pid"]
        if kind == "household" and not p["partner"] and p["street"]:
            lead = self.person(not p["female"], p["last_name"]) | {k: p[k] for k in PLACE}
            landline = {"phone": p["phone"]} if self.rng.random() < 0.5 and p["phone"] else {}
            return lead | landline, None
        if kind == "generation" and p["street"] and not p["female"]:
            jr = {"last_name": f"{p['last_name']} Jr.", "email": self.email(p["first_name"], "jr")}
            return base | jr | {"phone": self.phone()}, None
        if kind == "namesake" and (other := self.address())["city"] != p["city"]:
            contacts = {"email": self.email(p["first_name"], p["last_name"]), "phone": self.phone()}
            return base | other | contacts, None
        strangers = {
            "canvasser": {"email": self.rng.choice(self.canvassers)},
            "phone_reused": {"phone": p["phone"]} if p["phone"] else None,
            "new": {},
        }
        extra = strangers.get(kind)
        return (self.person() | extra, None) if extra is not None else None

    def leads(self, people: list[dict[str, Any]], count: int) -> list[Labelled]:
        """(lead, true prospect id or None, label by the README's rule)."""
        self.canvassers = [p["email"] for p in self.rng.sample(people, 6) if p["email"]]
        kinds, weights = [k for k, _, _ in KINDS], [w for _, w, _ in KINDS]
        labels = {k: label for k, _, label in KINDS}
        out: list[Labelled] = []
        while len(out) < count:
            kind = self.rng.choices(kinds, weights)[0]
            if (made := self.lead(kind, self.rng.choice(people))) is None:
                continue
            lead = {k: v for k, v in made[0].items() if k in LEAD and v}
            label = labels[kind]
            if label == "created" and self.namesake_nearby(lead):
                label = "fuzzy"  # the rule: a compatible name in the same place is fuzzy
            out.append((lead, made[1], label))
        return out

    def namesake_nearby(self, lead: Mapping[str, Any]) -> bool:
        last, places = lead["last_name"].lower(), (lead.get("postal_code"), lead.get("city"))
        return any(
            (last, g, p) in self.index for g in self.groups(lead["first_name"]) for p in places
        )


def write_csv(path: Path, people: list[dict[str, Any]], rng: random.Random) -> None:
    """A CRM export as it comes: six phone formats, mixed-case emails, some ALL CAPS."""
    columns = ["id", *LEAD]
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(columns)
        for p in people:
            row = {**p, "id": p["pid"]}
            if phone := row["phone"]:
                a, b, c = phone[2:5], phone[5:8], phone[8:]
                row["phone"] = rng.choice((phone, f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}",
                                           f"{a}{b}{c}", f"1-{a}-{b}-{c}"))  # fmt: skip
            if row["email"] and rng.random() < 0.1:
                row["email"] = row["email"].capitalize().replace("@gmail", "@GMail")
            if rng.random() < 0.03:
                row |= {k: row[k].upper() for k in ("first_name", "last_name")}
            out.writerow([row.get(c) or "" for c in columns])


BASELINE = (("email", 16.0), ("last_name", 3.6), ("first_name", 2.8), ("street", 1.3),
            ("postal_code", 1.1))  # fmt: skip


def baseline(
    lead: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], shown: int
) -> tuple[str, str | None, list[str]]:
    """The replaced product: points for equal fields (+ phone 11); >= 15 match, < 7 new."""

    def same(field: str, row: Mapping[str, Any]) -> bool:
        a, b = lead.get(field), row.get(field)
        return bool(a and b and str(a).strip().casefold() == str(b).strip().casefold())

    def points(row: Mapping[str, Any]) -> float:
        phone = bool(lead.get("phone")) and lead.get("phone") in (
            row.get("phone"),
            row.get("phone_alt"),
        )
        return 11.0 * phone + sum(w for f, w in BASELINE if same(f, row))

    ranked = sorted(((points(r), str(r["pid"])) for r in rows), reverse=True)
    best, pids = (ranked[0] if ranked else (0.0, None)), [pid for _, pid in ranked[:shown]]
    if best[0] >= 15:
        return "matched", best[1], pids
    return ("created" if best[0] < 7 else "fuzzy"), None, pids


@dataclass
class Score:
    """Quality counters of one scorer over the labelled set."""

    matched: int = 0
    right: int = 0
    dups: int = 0
    found: int = 0
    agree: int = 0
    fuzzy: int = 0
    #: True duplicates neither matched nor shown.
    misses: list[Miss] = dataclasses.field(default_factory=list)

    def add(
        self, outcome: str, chosen: str | None, shown: list[str], truth: str | None, label: str
    ) -> None:
        right = outcome == "matched" and truth is not None and chosen == truth
        self.matched += outcome == "matched"
        self.right += right
        self.fuzzy += outcome == "fuzzy"
        if truth is not None:
            self.dups += 1
            self.found += right or (outcome == "fuzzy" and truth in shown)
        self.agree += outcome == label and (label != "matched" or right)

    def line(self, name: str, total: int) -> str:
        precision = self.right / self.matched if self.matched else 1.0
        recall, agree, fuzzy = (
            self.found / max(self.dups, 1),
            self.agree / total,
            self.fuzzy / total,
        )
        return (f"  {name:<9} match precision {precision:7.2%} ({self.right}/{self.matched})  "
                f"duplicate recall {recall:7.2%} ({self.found}/{self.dups})  "
                f"agreement {agree:7.2%}  left to a human {self.fuzzy} ({fuzzy:.1%})")  # fmt: skip


Latency = tuple[list[float], list[float]]


def evaluate(leads: list[Labelled], settings: MatchSettings) -> tuple[Score, Score, Latency]:
    """Ours and the baseline on the same retrieved candidates; our latency per lead (ms):
    wall clock, and CPU time of this thread (what a busy machine does not inflate)."""
    ours, base, latency, cpu = Score(), Score(), [], []
    for lead, truth, label in leads:
        started, used = time.perf_counter(), time.thread_time()
        decision: Decision = match_lead(lead, account="bench", settings=settings)
        latency.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - used) * 1000)
        chosen = decision.pid if decision.outcome == "matched" else None
        shown = [c.pid for c in decision.candidates]
        ours.add(decision.outcome, chosen, shown, truth, label)
        if truth is not None and chosen != truth and truth not in shown:
            ours.misses.append((lead, truth, decision.outcome, shown))
        rows = fetch_candidates(lead, account="bench", settings=settings).prospects
        base.add(*baseline(lead, rows, settings.max_shown), truth, label)
    return ours, base, (latency, cpu)


def latencies(leads: list[Labelled], settings: MatchSettings) -> Latency:
    """Another pass over ``leads``: latency only (ms; wall clock, thread CPU)."""
    wall, cpu = [], []
    for lead, _, _ in leads:
        started, used = time.perf_counter(), time.thread_time()
        match_lead(lead, account="bench", settings=settings)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - used) * 1000)
    return wall, cpu


def cpu_seconds() -> tuple[float, float]:
    """CPU time of this process and of its finished children (the import's workers)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(), time.perf_counter() - started


def run_size(n: int, args: argparse.Namespace, work: Path) -> None:
    world = World(args.seed + n)
    people, gen_s = timed(lambda: world.prospects(n))
    csv_path = work / f"prospects-{n}.csv"
    write_csv(csv_path, people, world.rng)
    rates, cpu = [], []
    for attempt in range(args.import_repeats):  # each into a new database; the last stays
        db_path = work / f"bench-{n}-{attempt}.db"
        database = open_database(f"sqlite:///{db_path}")
        Account.create(id="bench")
        used = cpu_seconds()
        report, import_s = timed(
            lambda: import_prospects(
                csv_path,
                account="bench",
                default_region="US",
                batch_size=args.batch,
                workers=args.workers,
            )
        )
        rates.append(n / import_s)
        cpu.append(tuple(b - a for a, b in zip(used, cpu_seconds(), strict=True)))
        if attempt + 1 < args.import_repeats:
            database.close()
            for leftover in work.glob(f"{db_path.name}*"):
                leftover.unlink()
    size_mb, workers = csv_path.stat().st_size / 1e6, args.workers
    print(f"\n== {n:,} prospects (generated in {gen_s:.1f}s; CSV {size_mb:.0f} MB)")
    print(f"  import: {report.imported:,} imported, {report.skipped} skipped; "
          f"median {statistics.median(rates):,.0f}/s of {len(rates)} "
          f"({', '.join(f'{r:,.0f}' for r in rates)}; target >= 20,000/s; "
          f"batch {args.batch:,}; workers {'auto' if workers is None else workers})")  # fmt: skip
    main_us, workers_us = (statistics.median(c[i] for c in cpu) / n * 1e6 for i in (0, 1))
    print(f"  import CPU per prospect (medians; what counts on a busy machine): {main_us:.0f} us "
          f"reading and writing, {workers_us:.0f} us validating (workers)")  # fmt: skip
    plan = " / ".join(explain("bench", "e:x@example.com"))
    covering = "USING COVERING INDEX" in plan and "SCAN" not in plan
    print(f"  plan of a key look-up: {plan}" + ("" if covering else "  ** NOT COVERING **"))
    leads = world.leads(people, args.leads)
    settings = MatchSettings()
    evaluate(leads[:50], settings)  # warm caches
    ours, base, first = evaluate(leads, settings)
    passes = [first, *(latencies(leads, settings) for _ in range(args.match_repeats - 1))]
    wall = [statistics.quantiles(p[0], n=100) for p in passes]
    thread = [statistics.quantiles(p[1], n=100) for p in passes]
    p50, p99, cpu99 = (
        statistics.median(q[i] for q in qs) for qs, i in ((wall, 49), (wall, 98), (thread, 98))
    )
    print(f"  match latency over {len(leads):,} leads, median of {len(passes)} passes: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (target p99 < 5 ms; passes "
          f"{', '.join(f'{q[98]:.2f}' for q in wall)}); CPU per lead p99 {cpu99:.2f} ms; "
          f"max {max(max(p[0]) for p in passes):.2f} ms")  # fmt: skip
    counts = {k: sum(1 for *_, lab in leads if lab == k) for k in ("matched", "fuzzy", "created")}
    print(f"  labelled set: {len(leads):,} leads, labels {counts}, true duplicates {ours.dups:,}")
    print(ours.line("eleads", len(leads)))
    print(base.line("baseline", len(leads)))
    if args.show_misses:
        for lead, truth, outcome, shown in ours.misses:
            row = Prospect.get((Prospect.account == "bench") & (Prospect.pid == truth))
            print(f"  missed {truth} {[getattr(row, f) for f in LEAD]}\n"
                  f"    lead {lead} -> {outcome} {shown}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="prospect counts")
    parser.add_argument("--leads", type=int, default=6000, help="labelled leads per size (>= 5000)")
    parser.add_argument(
        "--batch", type=int, default=IMPORT_BATCH_ROWS, help="import batch size (rows)"
    )
    parser.add_argument(
        "--import-repeats", type=int, default=3, help="imports per size (the median is shown)"
    )
    parser.add_argument(
        "--match-repeats", type=int, default=3, help="latency passes over the leads (median)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="validation processes (default: automatic)"
    )
    parser.add_argument(
        "--show-misses", action="store_true", help="print the true duplicates eleads missed"
    )
    parser.add_argument("--seed", type=int, default=20261117)
    parser.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: temporary)"
    )
    args = parser.parse_args()
    print(machine())
    print(f"seed {args.seed}; sizes {args.sizes}; SQLite WAL synchronous=FULL")
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            run_size(size, args, Path(tmp))


if __name__ == "__main__":
    main()
