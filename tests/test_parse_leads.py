"""Lead extraction, table-driven: the shared corpus and our own fixtures, one test per file.

Each .eml is decoded (``decode_message``), unwrapped when it is a forward
(``unwrap_forward``, as the orchestrator does) and given to ``extract_lead``. The
comparison follows the corpus README: a field absent from the expected lead is not
checked, names compare case-insensitively after NFC, ``appointment_at`` as a datetime
value, everything else exactly. Our fixtures (tests/fixtures/leads/) also state the rule
(parser or rules/ file) that must have read them; ``"lead": null`` means "not a lead".
"""

from __future__ import annotations

import json
import os
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.parse.decode import decode_message
from daemon.parse.forwards import unwrap_forward
from daemon.parse.leads import LeadExtraction, extract_lead
from daemon.parse.model import LEAD_FIELDS, ParseContext

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
CORPUS = Path(os.environ.get("ELEADS_CORPUS", DEFAULT_CORPUS))
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "leads"
CORPUS_LEADS = sorted((CORPUS / "leads").glob("*.eml"))
CORPUS_NOISE = sorted((CORPUS / "noise").glob("*.eml"))
OWN = sorted(FIXTURES.glob("*.eml"))
CTX = ParseContext(default_region="US", account="demo")


def _corpus_or_skip() -> None:
    if CORPUS_LEADS:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"corpus missing at {CORPUS} (CI=true: no skipping)")
    pytest.skip(f"shared corpus not found at {CORPUS}")


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def same(field: str, want: Any, got: Any) -> bool:
    if field in ("first_name", "last_name") and want is not None and got is not None:
        return _nfc(want) == _nfc(got)
    if field == "appointment_at" and want and got:
        return datetime.fromisoformat(want) == datetime.fromisoformat(got)
    return bool(want == got)


def extract(eml: Path) -> LeadExtraction | None:
    return extract_lead(unwrap_forward(decode_message(eml.read_bytes())), ctx=CTX)


def check(want: dict[str, Any], result: LeadExtraction | None) -> None:
    assert result is not None, "no lead found"
    assert set(result.lead) == set(LEAD_FIELDS)
    wrong = {
        field: (value, result.lead.get(field))
        for field, value in want.items()
        if not same(field, value, result.lead.get(field))
    }
    assert not wrong, (wrong, result.rule, result.problems)


def test_corpus_present() -> None:
    _corpus_or_skip()
    assert len(CORPUS_LEADS) >= 31
    assert len(CORPUS_NOISE) >= 11


@pytest.mark.parametrize("eml", CORPUS_LEADS, ids=lambda p: p.stem)
def test_corpus_lead(eml: Path) -> None:
    want = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
    result = extract(eml)
    check(want["lead"], result)
    assert result is not None and result.lead["account"] == "demo"


@pytest.mark.parametrize("eml", CORPUS_NOISE, ids=lambda p: p.stem)
def test_corpus_noise_is_not_a_lead(eml: Path) -> None:
    assert extract_lead(decode_message(eml.read_bytes()), ctx=CTX) is None


@pytest.mark.parametrize("eml", OWN, ids=lambda p: p.stem)
def test_own_fixture(eml: Path) -> None:
    want = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
    result = extract(eml)
    if want["lead"] is None:
        assert result is None, result
        return
    check(want["lead"], result)
    assert result is not None and result.rule == want["rule"], result.problems


def test_own_fixtures_cover_every_parser_and_rule() -> None:
    """One fixture at least per generic parser and per shipped rules/ file."""
    from daemon.parse.leads import PARSERS
    from daemon.parse.rules import default_rules_dir

    rules_seen = {
        json.loads(p.with_suffix(".json").read_text(encoding="utf-8")).get("rule") for p in OWN
    }
    wanted = {name for name, _ in PARSERS} | {p.stem for p in default_rules_dir().glob("*.yaml")}
    assert wanted <= rules_seen, wanted - rules_seen
