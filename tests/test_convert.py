"""Matching wired into ingest, and the human paths: unconverted, show, convert, import.

Everything through the `eleads` CLI as a subprocess (exit codes, JSON), plus one
in-process crash test of the conversion transaction.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon import convert
from daemon.config import load_settings
from daemon.db.models import (
    AuditEvent,
    ELead,
    InboundMessage,
    LeadSource,
    Prospect,
    SpoolMessage,
)
from daemon.runner import process_or_defer
from daemon.runtime import open_runtime
from daemon.spool import Envelope
from daemon.spool.database import DatabaseSpool

ELEADS = [sys.executable, "-m", "daemon.cli"]

PROSPECTS_CSV = "\n".join(
    [
        "id,first_name,last_name,email,phone,street,city,region,postal_code,country",
        "P501,Roberta,Kaminski,rkaminski.home@example.net,(614) 555-0148,2231 Alder Ridge Rd,"
        "Westerville,OH,43081,US",
        "P502,Olive,Trent,olive.trent@example.org,614.555.0160,18 Elm St,Columbus,OH,43215,US",
        "P503,Dana,Whitlock,dana.canvass@example.com,,9 Birch Ln,Dublin,OH,43017,US",
        "P504,Bad,Phone,bad.phone@example.org,555-12,1 Main St,Columbus,OH,43215,US",
        "P502,Dup,Id,dup@example.org,,,,,,",
        "",
    ]
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ELEADS, *args], capture_output=True, text=True, timeout=120)


def lead(
    n: int,
    *,
    first: str,
    last: str,
    email: str | None = None,
    phone: str | None = None,
    street: str | None = None,
    zip_code: str = "43081",
) -> bytes:
    lines = [f"First Name: {first}", f"Last Name: {last}"]
    if email:
        lines.append(f"Email: {email}")
    if phone:
        lines.append(f"Phone: {phone}")
    if street:
        lines.append(f"Address: {street}")
    lines.append(f"Zip Code: {zip_code}")
    body = "\r\n".join(lines)
    return (
        f"From: Website <forms@acme-roofing.example>\r\nTo: leads@demo.example\r\n"
        f"Subject: Contact form {n}\r\nMessage-ID: <conv-{n}@acme-roofing.example>\r\n"
        f"Date: Mon, 23 Nov 2026 10:15:00 -0500\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"\r\n{body}\r\n"
    ).encode()


@pytest.fixture
def setup(make_config: Any, tmp_path: Path) -> tuple[Path, Path]:
    config = make_config()
    csv = tmp_path / "prospects.csv"
    csv.write_text(PROSPECTS_CSV)
    return config, tmp_path


def import_csv(config: Path, tmp_path: Path) -> None:
    out = cli(
        "prospects",
        "import",
        str(tmp_path / "prospects.csv"),
        "--account",
        "demo",
        "--config",
        str(config),
    )
    assert out.returncode == 0, out.stderr


def ingest_one(config: Path, tmp_path: Path, raw: bytes, name: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.eml"
    path.write_bytes(raw)
    out = cli("ingest", str(path), "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    (line,) = [json.loads(x) for x in out.stdout.splitlines()]
    return line


def test_prospects_import_reports_bad_rows_by_line(setup: tuple[Path, Path]) -> None:
    config, tmp_path = setup
    out = cli(
        "prospects",
        "import",
        str(tmp_path / "prospects.csv"),
        "--account",
        "demo",
        "--config",
        str(config),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["imported"] == 3 and report["skipped"] == 2
    assert any(p.startswith("line 5:") and "phone" in p for p in report["problems"])
    assert any(p.startswith("line 6:") and "P502" in p for p in report["problems"])
    listed = json.loads(cli("prospects", "list", "--config", str(config), "--json").stdout)
    assert {p["id"] for p in listed} == {"P501", "P502", "P503"}
    olive = next(p for p in listed if p["id"] == "P502")
    assert olive["phone"] == "+16145550160" and olive["email"] == "olive.trent@example.org"
    out = cli(
        "prospects",
        "import",
        str(tmp_path / "nope.csv"),
        "--account",
        "demo",
        "--config",
        str(config),
    )
    assert out.returncode == 2 and "no such file" in out.stderr
    out = cli(
        "prospects",
        "import",
        str(tmp_path / "prospects.csv"),
        "--account",
        "zzz",
        "--config",
        str(config),
    )
    assert out.returncode == 2 and "unknown account" in out.stderr


def test_created_then_matched_then_duplicate(setup: tuple[Path, Path]) -> None:
    config, tmp_path = setup
    import_csv(config, tmp_path)
    first = ingest_one(
        config,
        tmp_path,
        lead(
            1,
            first="Katherine",
            last="Farrow",
            email="kate.farrow@example.org",
            phone="(614) 555-0171",
        ),
        "a",
    )
    assert first["outcome"] == "created"
    # New prospects continue after the highest P-number the import saw (P504's row was
    # rejected; its id stays free for the corrected row).
    assert first["prospect"].startswith("P") and int(first["prospect"][1:]) > 503
    again = ingest_one(
        config,
        tmp_path,
        lead(2, first="Kathy", last="Farrow", email="Kate.Farrow@example.org"),
        "b",
    )
    assert again["outcome"] == "matched" and again["prospect"] == first["prospect"]
    dup = ingest_one(
        config,
        tmp_path,
        lead(2, first="Kathy", last="Farrow", email="Kate.Farrow@example.org"),
        "c",
    )
    assert dup["outcome"] == "duplicate"
    listed = json.loads(cli("prospects", "list", "--config", str(config), "--json").stdout)
    kate = next(p for p in listed if p["id"] == first["prospect"])
    assert kate["lead_sources"] == 2  # the duplicate did not add a third
    assert kate["phone"] == "+16145550171" and kate["first_name"] == "Katherine"


def test_fuzzy_household_then_manual_convert(setup: tuple[Path, Path]) -> None:
    config, tmp_path = setup
    import_csv(config, tmp_path)
    # Same phone and address as Roberta Kaminski (P501), another first name: a spouse?
    line = ingest_one(
        config,
        tmp_path,
        lead(
            3,
            first="Robert",
            last="Kaminski",
            email="rkaminski@example.net",
            phone="614-555-0148",
            street="2231 Alder Ridge Rd",
        ),
        "h",
    )
    assert line["outcome"] == "fuzzy" and line["prospect"] == "P501"
    waiting = json.loads(cli("unconverted", "--config", str(config), "--json").stdout)
    assert [w["id"] for w in waiting] == [line["elead"]]
    shown = json.loads(cli("show", line["elead"], "--config", str(config), "--json").stdout)
    assert shown["state"] == "unconverted"
    top = shown["candidates"][0]
    assert top["prospect"] == "P501" and top["rank"] == 1 and top["reasons"]
    assert 0 < top["score"] <= 1
    assert [h["action"] for h in shown["history"]][-1] == "elead_fuzzy"
    out = cli("convert", line["elead"], "--use", "P501", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "elead": line["elead"],
        "outcome": "matched",
        "prospect": "P501",
        "detail": "added to P501",
    }
    out = cli("convert", line["elead"], "--new", "--config", str(config))
    assert out.returncode == 2 and "already converted to P501" in out.stderr
    assert "Traceback" not in out.stderr
    out = cli("convert", line["elead"], "--config", str(config))
    assert out.returncode == 2 and "exactly one" in out.stderr
    assert json.loads(cli("unconverted", "--config", str(config), "--json").stdout) == []


def test_canvasser_email_is_never_a_clear_match(setup: tuple[Path, Path]) -> None:
    """The failure of the product we replace: one email typed into everybody's lead."""
    config, tmp_path = setup
    import_csv(config, tmp_path)
    names = [("Harold", "Becker"), ("Lucia", "Moreno"), ("Tobias", "Lindqvist")]
    outcomes = [
        ingest_one(
            config,
            tmp_path,
            lead(10 + i, first=f, last=l_, email="dana.canvass@example.com", zip_code="43017"),
            f"c{i}",
        )
        for i, (f, l_) in enumerate(names)
    ]
    assert {o["outcome"] for o in outcomes} == {"fuzzy"}
    shown = json.loads(cli("show", outcomes[-1]["elead"], "--config", str(config), "--json").stdout)
    top = shown["candidates"][0]
    assert top["prospect"] == "P503" and top["conflict"] is True
    assert "warning" in top and "3 leads under other names" in top["warning"]
    # A human decides each: a new prospect for one of them.
    out = cli("convert", outcomes[0]["elead"], "--new", "--config", str(config), "--json")
    assert json.loads(out.stdout)["outcome"] == "created"


def test_conversion_is_one_transaction(
    setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the prospect was made, before its lead source: nothing half-made."""
    config, _ = setup
    runtime = open_runtime(load_settings(config))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(5, "disk went away")

    monkeypatch.setattr(convert, "_lead_source", broken)
    entry = runtime.spool.put_sync(
        lead(20, first="Nadia", last="Ferreira", email="nadia@example.org"),
        Envelope(listener="test"),
    )
    outcome = process_or_defer(runtime.pipeline, runtime.spool, runtime.spool.claim(entry.id))
    assert outcome.outcome == "failed" and "queued for retry" in outcome.detail
    assert Prospect.select().count() == 0 and ELead.select().count() == 0
    assert runtime.spool.queued_ids() == [entry.id]
    monkeypatch.undo()
    runtime.spool.clock = lambda: 10**12  # the retry is due
    (entry,) = runtime.spool.claim_due()
    outcome = process_or_defer(runtime.pipeline, runtime.spool, entry)
    assert outcome.outcome == "created"
    assert Prospect.select().count() == 1 and LeadSource.select().count() == 1
    actions = [a.action for a in AuditEvent.select().order_by(AuditEvent.id)]
    assert actions == ["elead_received", "elead_created"]
    runtime.close()


def test_retry_after_a_crash_past_the_commit_reports_the_real_outcome(
    setup: tuple[Path, Path],
) -> None:
    """The spool file survived a crash after the commit: the retry reports what happened."""
    config, _ = setup
    runtime = open_runtime(load_settings(config))
    entry = runtime.spool.put_sync(
        lead(30, first="Ingrid", last="Holm", email="ingrid.holm@example.org"),
        Envelope(listener="test"),
    )
    claimed = runtime.spool.claim(entry.id)
    assert claimed is not None
    first = process_or_defer(runtime.pipeline, runtime.spool, claimed)
    assert first.outcome == "created" and first.prospect is not None
    # As if the process died between the commit and taking the message off the queue:
    if isinstance(runtime.spool, DatabaseSpool):
        SpoolMessage.update(state="queued").where(SpoolMessage.id == entry.id).execute()
    else:
        archived = next(load_settings(config).messages_dir.rglob(f"{entry.id}.msg"))
        (runtime.spool.dir("queue") / archived.name).write_bytes(archived.read_bytes())
    again = process_or_defer(runtime.pipeline, runtime.spool, runtime.spool.claim(entry.id))
    assert (again.outcome, again.elead, again.prospect) == ("created", first.elead, first.prospect)
    assert Prospect.select().count() == 1 and LeadSource.select().count() == 1
    runtime.close()


def test_envelope_with_nul_bytes_is_stored(setup: tuple[Path, Path]) -> None:
    """PostgreSQL text refuses NUL: an envelope carrying one must not fail the message."""
    config, _ = setup
    runtime = open_runtime(load_settings(config))
    envelope = Envelope(
        listener="smtp", mail_from="forms\x00@site.example", rcpt_tos=("leads\x00@demo.example",)
    )
    entry = runtime.spool.put_sync(
        lead(30, first="Ines", last="Duarte", email="ines@example.org"), envelope
    )
    outcome = process_or_defer(runtime.pipeline, runtime.spool, runtime.spool.claim(entry.id))
    assert outcome.outcome == "created", outcome
    stored = InboundMessage.get(InboundMessage.spool_id == entry.id)
    assert (stored.mail_from, stored.rcpt_tos) == ("forms@site.example", ["leads@demo.example"])
