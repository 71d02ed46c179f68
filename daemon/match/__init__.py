"""Matching a lead against the prospects of its account (issue 5).

    lead fields -> keys.query_keys -> retrieve.fetch_candidates (indexed, read only)
      -> score.compare + score.raw_score per candidate -> decide.judge (verdict)
      -> decide.decide (matched | created | fuzzy) -> Decision for convert.py

:func:`match_lead` only reads the database; convert.py applies the Decision in one
transaction. decide.py states the rules; names.py and keys.py hold the data they use.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from daemon.config import MatchSettings
from daemon.match.decide import Candidate, Decision, Verdict, decide, judge
from daemon.match.keys import blocking_keys, fold_email, query_keys
from daemon.match.names import compare_last, given_name, is_formal
from daemon.match.retrieve import fetch_candidates
from daemon.match.score import Comparison, compare, raw_score

__all__ = [
    "Candidate",
    "Decision",
    "blocking_keys",
    "decide",
    "evaluate",
    "match_lead",
    "query_keys",
]

log = logging.getLogger(__name__)

_SUMMARY = ("email", "phone", "street", "city", "region", "postal_code")
_PLACE_REASONS = {"postal": "same postal code", "city": "same city", "other": "another place"}


def _name(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    return str(value) if value else "?"


def _first_reason(cmp: Comparison, lead: Mapping[str, Any], row: Mapping[str, Any]) -> str | None:
    a, b = _name(lead, "first_name"), _name(row, "first_name")
    if cmp.first == "nickname":
        nick, full = (a, b) if is_formal(given_name(b)) else (b, a)
        return f"first name {nick} is a nickname of {full}"
    if cmp.first == "typo":
        return f"first name {a} looks like a typo of {b}"
    if cmp.first == "initial" and a != b:
        return f"initial fits: {a} / {b}"
    if cmp.first == "different":
        return f"different first name ({a}, not {b})"
    if cmp.first == "same" and a != b:
        return "same first name once case and accents are folded"
    return None


def _last_reason(cmp: Comparison, lead: Mapping[str, Any], row: Mapping[str, Any]) -> str | None:
    a, b = _name(lead, "last_name"), _name(row, "last_name")
    if cmp.last == "typo":
        return f"last name {a} looks like a typo of {b}"
    if cmp.last == "part":
        return f"double surname: {a} / {b}"
    if cmp.last == "different":
        return f"different last name ({a}, not {b})"
    if cmp.last == "same" and a != b and cmp.generation == "same":
        return "same last name once case and accents are folded"
    return None


def _reasons(cmp: Comparison, lead: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    """Human-readable facts behind a verdict, identifiers first."""
    out = [
        text
        for flag, text in (
            (cmp.email, "same email"),
            (cmp.phone, "same phone"),
            (cmp.address == "same", "same street address"),
            (cmp.address == "street", "same street, other house number"),
        )
        if flag
    ]
    if cmp.address != "same" and cmp.place:
        out.append(_PLACE_REASONS[cmp.place])
    if cmp.transposed:
        out.append("first and last name transposed")
    elif cmp.name == "exact" and cmp.generation == "same":
        out.append("same name")
    else:
        out += [r for r in (_first_reason(cmp, lead, row), _last_reason(cmp, lead, row)) if r]
    if cmp.generation != "same":
        out.append(
            f"generation suffix differs ({_name(lead, 'last_name')} / {_name(row, 'last_name')})"
        )
    return out


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    name = " ".join(str(row[k]) for k in ("first_name", "last_name") if row.get(k))
    return {"name": name or None, **{k: row.get(k) for k in _SUMMARY}}


def _families(rows: list[dict[str, Any]]) -> int:
    """How many surnames (one household each, typos allowed) the rows hold between them."""
    heads: list[Any] = []
    for row in rows:
        last = row.get("last_name")
        if all(compare_last(last, head)[0] == "different" for head in heads):
            heads.append(last)
    return len(heads)


def _shared(
    pairs: list[tuple[dict[str, Any], Comparison]],
    crowded: frozenset[str],
    lead: Mapping[str, Any],
    settings: MatchSettings,
) -> dict[int, frozenset[str]]:
    """Per prospect, the lead's contacts (email/phone) that several people use.

    A contact is shared when its key was crowded, when ``shared_contact_conflicts``
    families (surnames) hold it, or when the prospect already drew that many conflicting
    leads: the canvasser pattern. A household's landline or family mailbox is not (a
    couple may keep two surnames): the first name tells its members apart.
    """
    email = fold_email(lead.get("email"))
    phones = {lead.get("phone"), lead.get("phone_alt")} - {None, ""}
    busy = {
        "email": f"e:{email}" in crowded,
        "phone": any(f"p:{p}" in crowded for p in phones),
    }
    out: dict[int, set[str]] = {}
    for kind in ("email", "phone"):
        holders = [row for row, cmp in pairs if getattr(cmp, kind)]
        crowd = busy[kind] or _families(holders) >= settings.shared_contact_conflicts
        for row in holders:
            if crowd or int(row.get("conflicting_leads") or 0) >= settings.shared_contact_conflicts:
                out.setdefault(row["id"], set()).add(kind)
    return {k: frozenset(v) for k, v in out.items()}


def _candidate(lead: Mapping[str, Any], row: Mapping[str, Any], cmp: Comparison,
               judged: tuple[Verdict, float, str | None, bool]) -> Candidate:  # fmt: skip
    verdict, score, why, conflict = judged
    reasons = _reasons(cmp, lead, row) + ([why] if why else [])
    return Candidate(
        prospect_id=int(row["id"]),
        pid=str(row["pid"]),
        score=score,
        verdict=verdict,
        reasons=tuple(reasons),
        summary=_summary(row),
        conflict=conflict,
    )


def evaluate(
    lead: Mapping[str, Any],
    row: Mapping[str, Any],
    *,
    settings: MatchSettings,
    shared: frozenset[str] = frozenset(),
) -> tuple[Candidate, Comparison]:
    """Judge one prospect row (``PROSPECT_FIELDS``) as a candidate for ``lead``."""
    cmp = compare(lead, row, settings)
    judged = judge(cmp, raw_score(cmp, shared=shared), shared=shared, settings=settings)
    return _candidate(lead, row, cmp, judged), cmp


def _worth_showing(verdict: Verdict, cmp: Comparison) -> bool:
    """Not evidence, but useful to a human: a contact, the address, or the name in common."""
    if verdict != "different":
        return True
    return cmp.contact or cmp.address == "same" or cmp.name in ("exact", "compatible", "initial")


def match_lead(lead: Mapping[str, Any], *, account: str, settings: MatchSettings) -> Decision:
    """Decide what to do with ``lead`` in ``account`` (reads the database, writes nothing)."""
    found = fetch_candidates(lead, account=account, settings=settings)
    pairs = [(row, compare(lead, row, settings)) for row in found.prospects]
    shared = _shared(pairs, found.crowded, lead, settings)
    shown: list[Candidate] = []
    for row, cmp in pairs:
        ids = shared.get(row["id"], frozenset())
        judged = judge(cmp, raw_score(cmp, shared=ids), shared=ids, settings=settings)
        if _worth_showing(judged[0], cmp):  # reasons are built for these only
            shown.append(_candidate(lead, row, cmp, judged))
    decision = decide(lead, shown, settings=settings)
    log.info(
        "event=match_decided account=%s outcome=%s prospect=%s candidates=%d retrieved=%d",
        account,
        decision.outcome,
        decision.pid or "-",
        len(decision.candidates),
        len(found.prospects),
    )
    return decision
