"""The shared corpus's visit logs against its expected.json, with the shipped config.

The corpus lead emails are ingested first (the lead times are their Date headers), then
the logs are read by ``eleads visits read --json``, at once or in two parts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import load_settings
from daemon.db import open_database
from daemon.db.models import ELead, Notification, database_proxy
from daemon.services import ingest_messages

from .conftest import REPO, require_corpus
from .pg import database_url_for


@pytest.fixture
def corpus() -> Path:
    return require_corpus()


@pytest.fixture
def shipped(tmp_path: Path, corpus: Path) -> Path:
    """config.yaml as shipped, in a temp data dir, with the corpus leads ingested."""
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["data_dir"] = str(tmp_path / "var")
    data["rules_dir"] = str(REPO / "rules")
    data["database"] = {"url": database_url_for(tmp_path / "var")}  # the selected backend
    data.setdefault("spool", {})["worker"] = "thread"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    settings = load_settings(config)
    leads = sorted((corpus / "leads").glob("*.eml"))
    outcomes = list(ingest_messages(settings, [(p.name, p.read_bytes()) for p in leads]))
    assert len(outcomes) == len(leads)
    (tmp_path / "var" / "visits").mkdir(parents=True)
    return config


def read(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "visits", "read", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def message_id(eml: Path) -> str:
    match = re.search(rb"(?im)^message-id:\s*<([^>]+)>", eml.read_bytes())
    assert match
    return match.group(1).decode()


def test_corpus_alerts(shipped: Path, corpus: Path) -> None:
    expected = json.loads((corpus / "visits" / "expected.json").read_text())
    visits = shipped.parent / "var" / "visits"
    for name in ("access.log", "visits.jsonl"):
        (visits / name).write_bytes((corpus / "visits" / name).read_bytes())
    report = read(shipped)
    assert report["files"] == 2
    alerts = report["alerts"]
    assert len(alerts) == expected["expected_alert_count"]
    got = {(a["session_start"], a["visitor_id"]): a for a in alerts}
    settings = load_settings(shipped)
    open_database(settings.database_url)
    try:
        for want in expected["alerts"]:
            alert = got[(want["session_start"], want["visitor_id"])]
            lead = ELead.get(ELead.message_id == message_id(corpus / want["lead"]))
            assert alert["elead"] == lead.public_id, want
            assert alert["log"] == want["log"]
            assert alert["email"] == want["email"]
            assert alert["locations"] == want["locations"]
            assert sorted(alert["recipients"]) == sorted(want["recipients_with_shipped_config"])
            note = Notification.get(Notification.id == alert["notification"])
            assert note.kind == "return_lead"
            context = note.payload["context"]
            assert [p["page"] for p in context["visit"]["pages"]] == want["pages"]
            assert context["visit"]["device"] == want["device"]
            assert (context["visit"]["referrer"] or "-") == want["referrer"]
            assert context["totals"]["visits"] == want["visit_number"]
            assert context["name"].casefold() == want["name"].casefold()
            earlier = [p for v in reversed(context["earlier"]) for p in v["first_pages"]]
            assert set(earlier) <= set(want["pages_before"])
    finally:
        database_proxy.close()
    # Read again: nothing new, nothing alerted twice.
    again = read(shipped)
    assert again["lines"] == 0 and again["alerts"] == []


def test_corpus_incremental_read(shipped: Path, corpus: Path) -> None:
    expected = json.loads((corpus / "visits" / "expected.json").read_text())["incremental_read"]
    lines = (corpus / "visits" / "access.log").read_bytes().splitlines(keepends=True)
    first = expected["first_read_lines"]
    target = shipped.parent / "var" / "visits" / "access.log"
    target.write_bytes(b"".join(lines[:first]))
    report = read(shipped)
    assert [f"{a['session_start']} {a['visitor_id']}" for a in report["alerts"]] == expected[
        "alerts_after_first_read"
    ]
    with target.open("ab") as fh:
        fh.write(b"".join(lines[first:]))
    report = read(shipped)
    added = sorted(f"{a['session_start']} {a['visitor_id']}" for a in report["alerts"])
    assert added == sorted(expected["alerts_after_second_read_added"])
