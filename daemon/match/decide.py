"""The decision: one lead, its scored candidates -> matched, created or fuzzy.

The rule (corpus README, issue 5) — never create a duplicate silently, never merge two
different people:

* A candidate is **same** when a strong identifier agrees (the same email, folded where
  the provider folds; the same phone; the same street address) AND the name is
  compatible (same, nickname, typo, accents/case, double surname, transposed; an
  initial only with an email or phone) AND its score reaches ``clear_score``.
* It is **maybe** when a strong identifier agrees but the name conflicts (a spouse at
  the same address, a family mailbox, a shared or reassigned number), when Sr./Jr.
  differ, when the only identifier is a mailbox several people use, or when a
  compatible name has only the postal code or city in common.
* Otherwise it is **different**: a bare name match elsewhere is not evidence, and two
  households at one address with wholly different names are two households.

The lead is **matched** to the best "same" candidate unless another "same" one scores
within ``competing_margin`` of it; it is **fuzzy** (a human decides) when any candidate
is "same" or "maybe" but nothing is clear; it is **created** otherwise. A candidate
sharing an email or phone under a clearly different name is flagged ``conflict``:
convert.py counts it in ``Prospect.conflicting_leads``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from daemon.config import MatchSettings
from daemon.match.score import Comparison

Verdict = Literal["same", "maybe", "different"]
Outcome = Literal["matched", "created", "fuzzy"]


@dataclass(frozen=True)
class Candidate:
    """One prospect as a possible match, with why (reasons are shown to humans)."""

    prospect_id: int
    pid: str
    score: float
    verdict: Verdict
    reasons: tuple[str, ...]
    summary: dict[str, Any]
    conflict: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "prospect_id": self.prospect_id,
            "pid": self.pid,
            "score": self.score,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "summary": self.summary,
            "conflict": self.conflict,
        }


@dataclass(frozen=True)
class Decision:
    """What to do with a lead; ``candidates`` are ranked best first."""

    outcome: Outcome
    prospect_id: int | None
    candidates: tuple[Candidate, ...]
    reasons: tuple[str, ...]

    @property
    def pid(self) -> str | None:
        return next((c.pid for c in self.candidates if c.prospect_id == self.prospect_id), None)


def _ceiling(cmp: Comparison, shared: frozenset[str]) -> tuple[Verdict, str | None]:
    """The best verdict the rules allow for this comparison, and why it is not better."""
    name, gen_ok = cmp.name, cmp.generation == "same"
    personal = bool((cmp.email and "email" not in shared) or (cmp.phone and "phone" not in shared))
    house = cmp.address == "same"
    if not (cmp.contact or house):
        if cmp.place in ("postal", "city") and name in ("exact", "compatible", "initial"):
            return "maybe", "compatible name with only the place in common"
        if cmp.place == "other" and name in ("exact", "compatible"):
            return "different", "a name match in another place is not evidence"
        return "different", None
    if not gen_ok and name not in ("conflict", "unknown"):
        return "maybe", "father and son at one address, or the same man?"
    if name in ("exact", "compatible"):
        if personal or house or name == "exact":
            return "same", None
        return "maybe", "the shared email/phone is used by several people"
    if name == "initial":
        if personal:
            return "same", None
        return "maybe", "only an initial, and no email or phone in common"
    if name in ("partial", "unknown"):
        return "maybe", "no full name to confirm the identifier"
    if cmp.last in ("same", "part", "typo") and cmp.first == "different":
        where = "at the same address" if house else f"with the same {_contact(cmp)}"
        return "maybe", f"different first name {where}: another member of the household?"
    if cmp.contact:
        return "maybe", "shares an email or phone but the name clearly differs"
    if cmp.first in ("same", "nickname", "typo", "initial"):
        return "maybe", "same first name at the same address under another surname"
    return "different", "another name at the same address"


def _contact(cmp: Comparison) -> str:
    return " and ".join(k for k, v in (("email", cmp.email), ("phone", cmp.phone)) if v)


def judge(
    cmp: Comparison,
    raw: float,
    *,
    shared: frozenset[str] = frozenset(),
    settings: MatchSettings,
) -> tuple[Verdict, float, str | None, bool]:
    """(verdict, score, reason it is not better, conflict) of one candidate.

    The score is placed in its verdict's band ("same" >= clear_score > "maybe" >=
    fuzzy_score > "different"), so ranking by score ranks by verdict first.
    """
    verdict, why = _ceiling(cmp, shared)
    clear, fuzzy = settings.clear_score, settings.fuzzy_score
    if verdict == "same" and raw < clear:
        verdict, why = (
            "maybe",
            f"evidence too thin for an automatic match ({raw:.2f} < {clear:.2f})",
        )
    if verdict == "maybe":
        score = min(max(raw, fuzzy), max(clear - 0.01, fuzzy))
    elif verdict == "different":
        score = min(raw, max(fuzzy - 0.01, 0.0))
    else:
        score = raw
    conflict = cmp.contact and cmp.name == "conflict"
    return verdict, round(score, 3), why, conflict


def _has_identity(lead: Mapping[str, Any]) -> bool:
    return any(lead.get(f) for f in ("first_name", "last_name", "email", "phone", "street"))


def decide(
    lead: Mapping[str, Any],
    candidates: tuple[Candidate, ...] | list[Candidate],
    *,
    settings: MatchSettings,
) -> Decision:
    """Apply the thresholds to judged candidates (pure: no database)."""
    ranked = tuple(sorted(candidates, key=lambda c: (-c.score, c.pid)))
    same = [c for c in ranked if c.verdict == "same"]
    shown = ranked[: settings.max_shown]
    if same:
        best = same[0]
        rivals = [c for c in same[1:] if best.score - c.score < settings.competing_margin]
        if not rivals:
            return Decision(
                "matched", best.prospect_id, shown, (f"{best.pid}: clear match", *best.reasons)
            )
        pids = ", ".join(c.pid for c in (best, *rivals))
        return Decision("fuzzy", None, shown, (f"several prospects fit equally well: {pids}",))
    maybe = [c for c in ranked if c.verdict == "maybe"]
    if maybe:
        best = maybe[0]
        return Decision(
            "fuzzy", None, shown, (f"{best.pid}: possible match, a human decides", *best.reasons)
        )
    if not _has_identity(lead):
        return Decision("created", None, shown, ("no name, email, phone or street to match on",))
    why = "no prospect shares a strong identifier with a compatible name"
    return Decision("created", None, shown, (why,))
