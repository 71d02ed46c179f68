"""`eleads ingest`, `list`, `show`, `spool` as a user runs them: exit codes and JSON."""

from __future__ import annotations

import json
import mailbox
import subprocess
import sys
from pathlib import Path
from typing import Any

from daemon.config import load_settings
from daemon.db.models import InboundMessage
from daemon.runtime import open_runtime
from daemon.spool.database import read_archived

from .mail import lead_bytes

ELEADS = [sys.executable, "-m", "daemon.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ELEADS, *args], capture_output=True, text=True, timeout=120)


def ingest(config: Path, *paths: Path, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    out = cli("ingest", *map(str, paths), "--config", str(config), "--json", *extra)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_ingest_files_folders_mbox_and_maildir(make_config: Any, tmp_path: Path) -> None:
    config = make_config()
    single = tmp_path / "one.eml"
    single.write_bytes(lead_bytes(1))
    folder = tmp_path / "folder"
    folder.mkdir()
    for n in (2, 3):
        (folder / f"lead{n}.eml").write_bytes(lead_bytes(n))
    box = mailbox.mbox(str(tmp_path / "leads.mbox"))
    for n in (4, 5):
        box.add(lead_bytes(n))
    box.close()
    maildir = mailbox.Maildir(str(tmp_path / "Maildir"))
    maildir.add(lead_bytes(6))
    lines = ingest(config, single, folder, tmp_path / "leads.mbox", tmp_path / "Maildir")
    assert len(lines) == 6
    for line in lines:
        assert set(line) == {"message_id", "outcome", "elead", "prospect", "detail"}
        # Six different people, no prospects yet: each becomes a new prospect.
        assert line["outcome"] == "created" and line["elead"].startswith("E-")
        assert line["prospect"].startswith("P")
    assert sorted(line["message_id"] for line in lines) == [
        f"form-{n:06d}@acme-roofing.example" for n in range(1, 7)
    ]
    # Delivered again: every one is a duplicate, pointing at the same eLead.
    again = ingest(config, single)
    assert again[0]["outcome"] == "duplicate" and again[0]["elead"] == lines[0]["elead"]
    listed = json.loads(cli("list", "--config", str(config), "--json").stdout)
    assert len(listed) == 6
    assert set(listed[0]) == {"id", "state", "message_id", "account", "prospect", "received_at"}
    assert {row["state"] for row in listed} == {"converted"}
    shown = json.loads(cli("show", lines[0]["elead"], "--config", str(config), "--json").stdout)
    assert shown["lead"]["email"] == "person1@example.org"
    assert shown["account"] == "demo"


def archived_raws(config: Path) -> list[bytes]:
    """The raw bytes kept of every received message (archive files or database rows)."""
    runtime = open_runtime(load_settings(config))
    try:
        return [read_archived(row.raw_path) for row in InboundMessage.select()]
    finally:
        runtime.close()


def test_ingest_non_leads_are_dropped_but_kept(make_config: Any, tmp_path: Path) -> None:
    config = make_config()
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: leads@demo.example\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <b1@mx.example.net>\r\n"
        b"Auto-Submitted: auto-replied\r\n\r\nThis is the mail system. I'm sorry...\r\n"
    )
    (tmp_path / "bounce.eml").write_bytes(raw)
    (line,) = ingest(config, tmp_path / "bounce.eml")
    assert line["outcome"] == "dropped" and line["elead"] is None
    assert archived_raws(config) == [raw]


def test_ingest_force_account_and_errors(make_config: Any, tmp_path: Path) -> None:
    config = make_config(
        {
            "accounts": [
                {"id": "roof", "inbound_addresses": ["a@roof.example"]},
                {"id": "cars", "inbound_addresses": ["b@cars.example"]},
            ]
        }
    )
    (tmp_path / "x.eml").write_bytes(lead_bytes(9))  # To: leads@demo.example routes nowhere
    (line,) = ingest(config, tmp_path / "x.eml")
    assert line["outcome"] == "failed" and "no configured account" in line["detail"]
    (tmp_path / "y.eml").write_bytes(lead_bytes(10))
    (line,) = ingest(config, tmp_path / "y.eml", extra=("--account", "cars"))
    assert line["outcome"] == "created"
    shown = json.loads(cli("show", line["elead"], "--config", str(config), "--json").stdout)
    assert shown["account"] == "cars"
    out = cli("ingest", str(tmp_path / "y.eml"), "--config", str(config), "--account", "nope")
    assert out.returncode == 2 and "unknown account" in out.stderr
    out = cli("ingest", str(tmp_path / "missing.eml"), "--config", str(config))
    assert out.returncode == 2 and "no such file" in out.stderr and "Traceback" not in out.stderr
    out = cli("show", "E-999", "--config", str(config))
    assert out.returncode == 2 and "no eLead E-999" in out.stderr
    out = cli("show", "banana", "--config", str(config))
    assert out.returncode == 2 and "not an eLead id" in out.stderr


def test_spool_commands(make_config: Any) -> None:
    config = make_config()
    out = cli("spool", "status", "--config", str(config), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == {"queue": 0, "active": 0, "failed": 0}
    out = cli("spool", "requeue", "nope", "--config", str(config))
    assert out.returncode == 2 and "no failed message" in out.stderr
    out = cli("spool", "requeue", "--config", str(config))
    assert out.returncode == 2 and "--all" in out.stderr


def test_unparseable_lead_is_kept_as_failed_parse(make_config: Any, tmp_path: Path) -> None:
    """A hostile ADF is refused, and the lead is kept (state failed_parse) with the reason."""
    raw = (
        b"From: leads@provider.example\r\nTo: leads@demo.example\r\nSubject: ADF lead\r\n"
        b"Message-ID: <adf-bad-1@provider.example>\r\nContent-Type: text/xml\r\n\r\n"
        b'<?xml version="1.0"?><!DOCTYPE adf [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<adf><prospect><customer><contact><name part="full">&x;</name>'
        b"</contact></customer></prospect></adf>\r\n"
    )
    (tmp_path / "bad.eml").write_bytes(raw)
    config = make_config()
    (line,) = ingest(config, tmp_path / "bad.eml")
    assert line["outcome"] == "failed" and "ADF refused" in line["detail"]
    shown = json.loads(cli("show", line["elead"], "--config", str(config), "--json").stdout)
    assert shown["state"] == "failed_parse"
    assert any("ADF refused" in p for p in shown["problems"])
    assert archived_raws(config) == [raw] and shown["raw_path"]


def test_output_cut_short_by_a_pipe_is_quiet(make_config: Any, tmp_path: Path) -> None:
    """`eleads list | head -1` must not end with an I/O error message."""
    config = make_config()
    for n in range(40):
        (tmp_path / f"m{n}.eml").write_bytes(lead_bytes(100 + n))
    ingest(config, *[tmp_path / f"m{n}.eml" for n in range(40)])
    out = subprocess.run(
        f"{sys.executable} -m daemon.cli list --config {config} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(out.stdout.splitlines()) == 1
    assert "Broken pipe" not in out.stderr and "Traceback" not in out.stderr
    shown = subprocess.run(
        f"{sys.executable} -m daemon.cli show E-1 --config {config} | head -2",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(shown.stdout.splitlines()) == 2
    assert "Broken pipe" not in shown.stderr and "Traceback" not in shown.stderr
