"""Visit logs: readers, sessions, cursors (rotation, copytruncate, gzip, partial lines),
linking, return-lead alerts and their recipients, with this project's own fixtures."""

from __future__ import annotations

import gzip
import json
import random
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings, load_settings
from daemon.db import open_database
from daemon.db.models import (
    ELead,
    Notification,
    ReturnAlert,
    VisitCursor,
    VisitorLink,
    VisitSession,
    database_proxy,
)
from daemon.services import ingest_messages
from daemon.visits import read_visits
from daemon.visits.alerts import describe_device
from daemon.visits.readers import Filters, ReadResult, clf_time, read_combined, read_jsonl
from daemon.visits.sessions import Stored, merge

from .conftest import FIXTURES

VISITS = FIXTURES / "visits"
WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)
ACCOUNTS = [
    {
        "id": "demo",
        "name": "Demo",
        "country": "US",
        "locations": [
            {"key": "north", "return_lead_alerts": ["north@demo.example"]},
            {"key": "south", "return_lead_alerts": ["south@demo.example", "sales@demo.example"]},
        ],
        "notifications": {"return_lead": ["sales@demo.example"]},
    }
]


def line(
    when: str, page: str, visitor: str = "v-fix0001", *, ua: str = WIN, status: int = 200
) -> str:
    """One combined+cookie line; ``when`` is UTC ``YYYY-MM-DDTHH:MM:SS``."""
    moment = datetime.fromisoformat(when).replace(tzinfo=UTC)
    stamp = f"{moment:%d/%b/%Y:%H:%M:%S} +0000"
    return f'203.0.113.9 - - [{stamp}] "GET {page} HTTP/1.1" {status} 100 "-" "{ua}" "{visitor}"\n'


class Env:
    """A data dir with a config, the database, and helpers to ingest and read."""

    def __init__(self, make_config: Callable[..., Path], overrides: dict[str, Any]) -> None:
        self.config = make_config(overrides)
        self.settings: Settings = load_settings(self.config)
        self.visits = self.settings.data_dir / "visits"
        self.visits.mkdir(parents=True, exist_ok=True)

    def ingest(self, *names: str, folder: Path = VISITS) -> list[dict[str, Any]]:
        messages = [(n, (folder / n).read_bytes()) for n in names]
        return [o.as_json() for o in ingest_messages(self.settings, messages)]

    def read(self) -> dict[str, Any]:
        return read_visits(self.settings)

    def db(self) -> None:
        open_database(self.settings.database_url)

    def pages(self) -> int:
        self.db()
        return sum(s.pages for s in VisitSession.select())

    def alerts(self) -> list[ReturnAlert]:
        self.db()
        return list(ReturnAlert.select().order_by(ReturnAlert.session_start))


@pytest.fixture
def env(make_config: Callable[..., Path]) -> Iterator[Callable[..., Env]]:
    def _make(sources: list[dict[str, Any]] | None = None, **visits: Any) -> Env:
        overrides = {
            "accounts": ACCOUNTS,
            "visits": {
                "sources": sources
                or [
                    {"path": "visits/*.log", "format": "combined_cookie"},
                    {"path": "visits/*.jsonl", "format": "jsonl"},
                ],
                **visits,
            },
        }
        return Env(make_config, overrides)

    yield _make
    if not database_proxy.is_closed():
        database_proxy.close()


def starts(report: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((a["session_start"], a["visitor_id"]) for a in report["alerts"])


# --- readers ---------------------------------------------------------------------------


def test_combined_reader_filters_and_counts_bad_lines() -> None:
    lines = (VISITS / "site.log").read_text().splitlines()
    out = ReadResult()
    read_combined(lines, 1, Filters.build(), out)
    assert out.lines == 15 and out.bad == 1 and out.bad_lines == [9]
    visitors = {h[1] for h in out.hits}
    assert visitors == {"v-fix0001", "v-someone-else"}
    pages = [h[2] for h in out.hits if h[1] == "v-fix0001"]
    # static asset, Googlebot carrying the cookie, the 404, HEAD, curl: all gone;
    # the POST stays as activity (None), not as a page.
    assert pages == [
        "/",
        "/quote/",
        None,
        "/thank-you/",
        "/gutters/",
        "/gutters/leaf-guards/",
        "/financing/",
        "/contact/",
    ]
    first = out.hits[0]
    assert first[0] == datetime(2026, 11, 23, 14, 30, tzinfo=UTC).timestamp()
    assert first[3] == "https://search.example/?q=gutters"


def test_combined_reader_apache_escapes_and_extra_patterns() -> None:
    apache = (
        '192.0.2.1 - - [01/Dec/2026:10:00:00 +0100] "GET /a?q=\\"x\\" HTTP/1.1" 200 1 '
        '"-" "Mozilla/5.0 AcmeBrowser \\"v2\\"" "v-1"\n'
    )
    out = ReadResult()
    read_combined([apache.rstrip("\n")], 1, Filters.build(), out)
    assert out.bad == 0 and len(out.hits) == 1 and out.hits[0][2] == '/a?q=\\"x\\"'
    out = ReadResult()
    filters = Filters.build(bot_patterns=["AcmeBrowser"], ignore_paths=[r"/a\b"])
    read_combined([apache.rstrip("\n")], 1, filters, out)
    assert out.hits == [] and out.filtered == 1


def test_jsonl_reader() -> None:
    lines = (VISITS / "two_locations.jsonl").read_text().splitlines()
    out = ReadResult()
    read_jsonl(lines, 1, Filters.build(), out)
    assert out.bad_lines == [6]
    assert [f[2:] for f in out.forms] == [
        ("sam.okafor@example.org", "north"),
        ("sam.okafor@example.org", "south"),
    ]
    pages = [h[2] for h in out.hits]
    assert pages[:4] == ["/inventory/", None, None, "/eprice/thank-you"]
    assert "/inventory/hatchback" in pages


def test_clf_time_offsets() -> None:
    assert clf_time("10/Nov/2026:14:21:58 -0500") == clf_time("10/Nov/2026:19:21:58 +0000")
    with pytest.raises(ValueError):
        clf_time("10/Nov/2026:14:21")


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (IPHONE, "iPhone (Safari)"),
        (WIN, "Windows desktop (Chrome)"),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, "
            "like Gecko) Version/18.1 Safari/605.1.15",
            "Mac (Safari)",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Mobile Safari/537.36",
            "Android phone (Chrome)",
        ),
    ],
)
def test_device_description(agent: str, expected: str) -> None:
    assert describe_device(agent) == expected


# --- sessions --------------------------------------------------------------------------


def test_sessions_split_extend_and_bridge() -> None:
    hits = [(0.0, "/a", "r", "ua"), (600.0, "/b", None, "ua"), (5000.0, "/c", None, "ua")]
    out = merge([], hits, timeout=1800)
    assert [(m.start, m.end, m.pages) for m in out] == [(0.0, 600.0, 2), (5000.0, 5000.0, 1)]
    assert out[0].referrer == "r"
    stored = [
        Stored(1, 0.0, 600.0, [[0.0, "/a"], [600.0, "/b"]], 2, "r", "ua", "x", "alerted"),
        Stored(2, 5000.0, 5000.0, [[5000.0, "/c"]], 1, None, "ua", "x", None),
    ]
    # A hit in the gap joins both: the earlier row is kept, with its alert state.
    gap = [(2300.0, "/gap", None, "ua"), (3300.0, "/gap2", None, "ua")]
    bridged = merge(stored, gap, timeout=1800)
    assert len(bridged) == 1
    assert (bridged[0].id, bridged[0].absorbed, bridged[0].pages) == (1, [2], 5)
    assert bridged[0].alert_state == "alerted"
    # Untouched stored sessions are not returned; out-of-order hits sort first.
    late = merge(stored, [(9000.0, "/z", None, "ua"), (8000.0, "/y", "q", "ua")], timeout=1800)
    assert [(m.id, m.start, m.referrer) for m in late] == [(None, 8000.0, "q")]


# --- the job with the database ---------------------------------------------------------


def test_fixture_logs_alert_once_per_return_session(env: Callable[..., Env]) -> None:
    e = env()
    outcomes = e.ingest("lead_visitor.eml", "lead_two_locations.eml")
    assert {o["outcome"] for o in outcomes} == {"created"}
    shutil.copy(VISITS / "site.log", e.visits / "site.log")
    shutil.copy(VISITS / "two_locations.jsonl", e.visits / "two_locations.jsonl")
    report = e.read()
    assert report["bad_lines"] == 2
    assert starts(report) == [
        ("2026-11-22T18:00:00Z", "v-fix0002"),
        ("2026-11-24T13:00:00Z", "v-fix0001"),
        ("2026-11-25T17:00:00Z", "v-fix0001"),
    ]
    by_start = {a["session_start"]: a for a in report["alerts"]}
    two = by_start["2026-11-22T18:00:00Z"]
    # Enquired at two locations (form_submit events): both are told, sales@ once.
    assert two["locations"] == ["north", "south"]
    assert two["recipients"] == ["sales@demo.example", "north@demo.example", "south@demo.example"]
    assert two["email"] == "sam.okafor@example.org" and two["log"] == "two_locations.jsonl"
    kim = by_start["2026-11-24T13:00:00Z"]
    assert kim["email"] == "kim.tran@example.com" and kim["recipients"] == ["sales@demo.example"]
    # A second run reads nothing new and alerts nothing.
    again = e.read()
    assert again["lines"] == 0 and again["alerts"] == []
    e.db()
    note = Notification.get(Notification.id == kim["notification"])
    assert note.kind == "return_lead" and note.to == ["sales@demo.example"]
    context = note.payload["context"]
    assert [p["page"] for p in context["visit"]["pages"]] == [
        "/gutters/",
        "/gutters/leaf-guards/",
        "/financing/",
    ]
    assert context["visit"]["device"] == "iPhone (Safari)"
    assert context["visit"]["referrer"] == "https://mail.example/"
    assert context["totals"]["visits"] == 2
    assert context["earlier"][0]["first_pages"] == ["/", "/quote/", "/thank-you/"]
    links = {(link.visitor_id, link.via) for link in VisitorLink.select()}
    assert links == {("v-fix0001", "lead_field"), ("v-fix0002", "form_submit")}


def test_form_submit_read_before_the_lead_arrives_links_at_ingestion(
    env: Callable[..., Env],
) -> None:
    e = env()
    text = (VISITS / "two_locations.jsonl").read_text().splitlines(keepends=True)
    (e.visits / "t.jsonl").write_text("".join(text[:4]))
    assert e.read()["alerts"] == []  # no lead yet: nothing to link to
    e.ingest("lead_two_locations.eml")
    e.db()
    assert [link.via for link in VisitorLink.select()] == ["form_submit"]
    with (e.visits / "t.jsonl").open("a") as fh:
        fh.writelines(text[4:])
    assert starts(e.read()) == [("2026-11-22T18:00:00Z", "v-fix0002")]


def test_bots_and_visits_before_the_lead_do_not_alert(env: Callable[..., Env]) -> None:
    e = env()
    e.ingest("lead_visitor.eml")
    bot = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
    (e.visits / "a.log").write_text(
        line("2026-11-22T10:00:00", "/early/")  # a visit days before the lead
        + line("2026-11-23T14:50:00", "/enquiry/")  # the enquiry session...
        + line("2026-11-23T15:10:00", "/thank-you/")  # ...goes on after the lead
        + line("2026-11-24T10:00:00", "/gutters/", ua=bot)
        + line("2026-11-24T11:00:00", "/gutters/", ua="curl/8.5.0")
        + line("2026-11-24T12:00:00", "/style.css")
        + line("2026-11-24T12:30:00", "/gone", status=500)
    )
    report = e.read()
    assert report["alerts"] == [] and report["hits"] == 3


def test_rotation_by_rename_reads_every_line_once(env: Callable[..., Env]) -> None:
    e = env()
    e.ingest("lead_visitor.eml")
    live = e.visits / "access.log"
    live.write_text(line("2026-11-24T10:00:00", "/p1") + line("2026-11-24T10:01:00", "/p2"))
    assert starts(e.read()) == [("2026-11-24T10:00:00Z", "v-fix0001")]
    # nginx still writes to the renamed file until it reopens, then to a new one.
    live.rename(e.visits / "access.log.1")
    with (e.visits / "access.log.1").open("a") as fh:
        fh.write(line("2026-11-24T10:02:00", "/p3"))
    live.write_text(line("2026-11-24T10:03:00", "/p4") + line("2026-11-24T12:00:00", "/p5"))
    report = e.read()
    assert report["lines"] == 3
    assert starts(report) == [("2026-11-24T12:00:00Z", "v-fix0001")]
    assert e.pages() == 5
    assert e.read()["lines"] == 0


def test_copytruncate_and_gzip(env: Callable[..., Env]) -> None:
    e = env()
    e.ingest("lead_visitor.eml")
    live = e.visits / "access.log"
    live.write_text(line("2026-11-24T10:00:00", "/p1"))
    e.read()
    # copytruncate: a line lands just before the copy; the original is emptied in place.
    with live.open("a") as fh:
        fh.write(line("2026-11-24T10:01:00", "/p2"))
    shutil.copy(live, e.visits / "access.log.1")
    with live.open("r+") as fh:
        fh.truncate(0)
    with live.open("a") as fh:
        fh.write(line("2026-11-24T10:02:00", "/p3"))
    assert e.read()["lines"] == 2
    assert e.pages() == 3
    # Later the copy is compressed, with one more line it got (never read before).
    with (e.visits / "access.log.1").open("a") as fh:
        fh.write(line("2026-11-24T10:01:30", "/p2b"))
    data = (e.visits / "access.log.1").read_bytes()
    (e.visits / "access.log.1").unlink()
    with gzip.open(e.visits / "access.log.2.gz", "wb") as gz:
        gz.write(data)
    report = e.read()
    assert report["lines"] == 1 and e.pages() == 4
    assert e.read()["lines"] == 0
    # The cursor knows the gzip file now: later runs skip it without decompressing it.
    gz = (e.visits / "access.log.2.gz").stat()
    e.db()
    assert (gz.st_ino, gz.st_size) in {(c.inode, c.size) for c in VisitCursor.select()}
    # Truncated in place and rewritten: read again from the start of the new content.
    live.write_text(line("2026-11-24T18:00:00", "/p6"))
    assert starts(e.read()) == [("2026-11-24T18:00:00Z", "v-fix0001")]
    assert e.pages() == 5


def test_partial_last_line_waits_for_its_end(env: Callable[..., Env]) -> None:
    e = env()
    e.ingest("lead_visitor.eml")
    text = line("2026-11-24T10:00:00", "/p1") + line("2026-11-24T10:05:00", "/p2")
    cut = len(line("2026-11-24T10:00:00", "/p1")) + 40
    path = e.visits / "access.log"
    path.write_text(text[:cut])
    first = e.read()
    assert first["lines"] == 1 and first["bad_lines"] == 0
    with path.open("a") as fh:
        fh.write(text[cut:])
    second = e.read()
    assert second["lines"] == 1 and second["bad_lines"] == 0
    assert e.pages() == 2
    e.db()
    cursor = VisitCursor.get()
    assert cursor.offset == len(text.encode()) and cursor.lines == 2


def test_session_across_two_runs_alerts_once(env: Callable[..., Env]) -> None:
    e = env()
    e.ingest("lead_visitor.eml")
    path = e.visits / "access.log"
    path.write_text(line("2026-11-24T10:00:00", "/p1"))
    assert len(e.read()["alerts"]) == 1
    with path.open("a") as fh:
        fh.write(line("2026-11-24T10:25:00", "/p2") + line("2026-11-24T10:50:00", "/p3"))
    assert e.read()["alerts"] == []
    e.db()
    (session,) = [s for s in VisitSession.select() if s.start_at.day == 24]
    assert session.pages == 3 and session.alert_state == "alerted"


def test_clock_order_within_a_file(env: Callable[..., Env]) -> None:
    ordered = [
        line("2026-11-24T10:00:00", "/a"),
        line("2026-11-24T10:10:00", "/b"),
        line("2026-11-24T10:20:00", "/c"),
        line("2026-11-24T13:00:00", "/d"),
        line("2026-11-24T13:05:00", "/e"),
    ]
    shuffled = ordered[:]
    random.Random(7).shuffle(shuffled)
    results = []
    for lines in (ordered, shuffled):
        e = env()
        e.ingest("lead_visitor.eml")
        (e.visits / "access.log").write_text("".join(lines))
        report = e.read()
        e.db()
        pages = {
            s.start_at.isoformat(): [h[1] for h in s.hits]
            for s in VisitSession.select().where(VisitSession.visitor_id == "v-fix0001")
        }
        results.append((starts(report), pages))
        database_proxy.close()
        shutil.rmtree(e.settings.data_dir)
    assert results[0] == results[1]
    assert results[0][0] == [
        ("2026-11-24T10:00:00Z", "v-fix0001"),
        ("2026-11-24T13:00:00Z", "v-fix0001"),
    ]


def test_cooldown_and_no_recipients(env: Callable[..., Env], make_config: Any) -> None:
    e = env(cooldown_minutes=240)
    e.ingest("lead_visitor.eml")
    (e.visits / "access.log").write_text(
        line("2026-11-24T10:00:00", "/a")
        + line("2026-11-24T12:00:00", "/b")  # 2 h later: within the cool-down
        + line("2026-11-24T16:30:00", "/c")  # 6.5 h after the alerted one
    )
    assert [a[0] for a in starts(e.read())] == ["2026-11-24T10:00:00Z", "2026-11-24T16:30:00Z"]
    e.db()
    states = sorted(str(s.alert_state) for s in VisitSession.select())
    assert states.count("cooldown") == 1 and states.count("alerted") == 2


def test_without_recipients_the_alert_is_recorded_not_queued(make_config: Any) -> None:
    accounts = [{"id": "solo", "locations": [{"key": "north"}]}]
    sources = [{"path": "logs/*.log", "format": "combined_cookie", "account": "solo"}]
    e = Env(make_config, {"accounts": accounts, "visits": {"sources": sources}})
    e.ingest("lead_visitor.eml")
    (e.settings.data_dir / "logs").mkdir()
    (e.settings.data_dir / "logs" / "x.log").write_text(line("2026-11-24T10:00:00", "/a"))
    report = e.read()
    assert len(report["alerts"]) == 1 and report["queued"] == 0
    assert report["alerts"][0]["recipients"] == [] and report["alerts"][0]["notification"] is None
    e.db()
    assert Notification.select().where(Notification.kind == "return_lead").count() == 0
    database_proxy.close()


def test_each_source_goes_to_its_account(make_config: Any) -> None:
    accounts = [
        {"id": "one", "inbound_addresses": ["leads@demo.example"]},
        {"id": "two", "inbound_addresses": ["two@other.example"]},
    ]
    sources = [
        {"path": "one/*.log", "format": "combined_cookie", "account": "one"},
        {"path": "two/*.log", "format": "combined_cookie", "account": "two"},
        {"path": "none/*.log", "format": "combined_cookie"},  # ambiguous: skipped
    ]
    e = Env(make_config, {"accounts": accounts, "visits": {"sources": sources}})
    assert e.ingest("lead_visitor.eml")[0]["outcome"] == "created"
    for name in ("one", "two", "none"):
        (e.settings.data_dir / name).mkdir()
        (e.settings.data_dir / name / "x.log").write_text(line("2026-11-24T10:00:00", "/a"))
    report = e.read()
    assert [a["account"] for a in report["alerts"]] == ["one"]
    assert report["files"] == 2
    e.db()
    assert sorted(s.account for s in VisitSession.select()) == ["one", "two"]
    database_proxy.close()


def test_a_broken_file_does_not_stop_the_reader(env: Callable[..., Env]) -> None:
    e = env()
    e.ingest("lead_visitor.eml")
    (e.visits / "junk.log").write_bytes(b"\x00\xff\xfe garbage\n" * 5 + b"\n")
    (e.visits / "broken.log.1.gz").write_bytes(b"\x1f\x8b not really gzip")
    (e.visits / "broken.log").write_text(line("2026-11-24T10:00:00", "/a"))
    report = e.read()
    assert report["bad_lines"] == 5 and len(report["alerts"]) == 1


def test_eleads_before_the_upgrade_are_linked_by_the_migration(env: Callable[..., Env]) -> None:
    from daemon.visits.links import index_existing_eleads

    e = env()
    e.ingest("lead_visitor.eml")
    e.db()
    VisitorLink.delete().execute()
    assert index_existing_eleads() == 1
    assert [(link.visitor_id, link.elead_id) for link in VisitorLink.select()] == [
        ("v-fix0001", ELead.get().id)
    ]


def test_cli_visits_read_json(env: Callable[..., Env]) -> None:
    import subprocess
    import sys

    e = env()
    e.ingest("lead_visitor.eml")
    shutil.copy(VISITS / "site.log", e.visits / "site.log")
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "visits", "read", "--json", "--config", str(e.config)],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    assert len(data["alerts"]) == 2 and data["bad_lines"] == 1
    text = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "visits", "read", "--config", str(e.config)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "0 alert(s)" in text.stdout


def test_version_3_database_is_upgraded_and_indexed(env: Callable[..., Env]) -> None:
    """m0004 adds the visit tables and indexes the eLeads received before it."""
    from daemon.db.migrations.m0004_visits import up
    from daemon.db.models import VISIT_MODELS, LeadEmail

    e = env()
    e.ingest("lead_visitor.eml", "lead_two_locations.eml")
    e.db()
    db = database_proxy.obj
    db.drop_tables(list(VISIT_MODELS))
    up(db, None)
    assert {(link.visitor_id, link.via) for link in VisitorLink.select()} == {
        ("v-fix0001", "lead_field")
    }
    assert sorted(row.email for row in LeadEmail.select()) == [
        "kim.tran@example.com",
        "sam.okafor@example.org",
    ]


def test_purge_keeps_linked_visitors_visits(env: Callable[..., Env]) -> None:
    from daemon.visits.job import purge_sessions

    e = env(retention_days=30)
    e.ingest("lead_visitor.eml")
    (e.visits / "a.log").write_text(
        line("2026-11-24T10:00:00", "/a") + line("2026-11-24T10:00:00", "/a", "v-anon")
    )
    e.read()
    e.db()
    assert purge_sessions(e.settings, now=datetime(2026, 12, 1)) == 0  # not old yet
    assert purge_sessions(e.settings, now=datetime(2027, 2, 1)) == 1
    assert [s.visitor_id for s in VisitSession.select()] == ["v-fix0001"]
