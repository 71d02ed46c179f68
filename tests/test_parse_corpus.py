"""The whole shared corpus through parse_message, compared as the corpus README says."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.parse import parse_message

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
CORPUS = Path(os.environ.get("ELEADS_CORPUS", DEFAULT_CORPUS))
CASES = sorted(p for d in ("leads", "replies", "noise") for p in (CORPUS / d).glob("*.eml"))


def test_corpus_present() -> None:
    """Without the corpus the cases skip, except under CI=true where that is a failure."""
    if CASES:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"corpus missing at {CORPUS} (CI=true: no skipping)")
    pytest.skip(f"shared corpus not found at {CORPUS}")


def same(field: str, want: Any, got: Any) -> bool:
    if field in ("first_name", "last_name") and want is not None and got is not None:
        return bool(want.casefold() == got.casefold())
    if field == "appointment_at" and want and got:
        return datetime.fromisoformat(want) == datetime.fromisoformat(got)
    return bool(want == got)


@pytest.mark.parametrize("eml", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_parse(eml: Path) -> None:
    want = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
    got = json.loads(json.dumps(parse_message(eml.read_bytes()).as_json()))
    assert got["kind"] == want["kind"], got["problems"]
    for key in ("lead", "command"):
        for field, value in (want.get(key) or {}).items():
            assert same(field, value, (got.get(key) or {}).get(field)), (field, value, got.get(key))
