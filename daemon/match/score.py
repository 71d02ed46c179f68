"""Compare one lead with one prospect: field relations and a score for ranking.

:func:`compare` says how each field relates (same email? nickname? same house?), the
facts the decision rules in decide.py read. :func:`raw_score` folds them into one number
in [0, 1]: the weight of the evidence (email, phone, address, place) plus name
similarity (rapidfuzz + the nickname table). It ranks candidates and is the test of
``clear_score``: a compatible name with thin evidence (an initial and one identifier)
scores below it and is left to a human.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from daemon.config import MatchSettings
from daemon.match.keys import city_key, fold_email, parse_street, postal_key
from daemon.match.names import (
    FirstRelation,
    LastRelation,
    compare_first,
    compare_last,
    generation,
)

NameFit = Literal["exact", "compatible", "initial", "partial", "conflict", "unknown"]
Place = Literal["postal", "city", "other"]
Address = Literal["same", "street", "other"]

_COMPATIBLE_LAST = ("same", "part", "typo")
_COMPATIBLE_FIRST = ("same", "nickname", "typo")


@dataclass(frozen=True, slots=True)
class Comparison:
    """How a lead relates to a prospect, field by field (None: missing on a side)."""

    first: FirstRelation
    first_sim: float
    last: LastRelation
    last_sim: float
    transposed: bool
    generation: Literal["same", "conflict", "one_sided"]
    email: bool | None
    phone: bool | None
    address: Address | None
    place: Place | None

    @property
    def name(self) -> NameFit:
        """The two names taken together (the README's "compatible name")."""
        if self.transposed:
            return "compatible"
        first, last = self.first, self.last
        if first == "missing" and last == "missing":
            return "unknown"
        if first == "same" and last == "same":
            return "exact"
        if last in _COMPATIBLE_LAST and first in _COMPATIBLE_FIRST:
            return "compatible"
        if last in _COMPATIBLE_LAST and first == "initial":
            return "initial"
        if (first == "missing" and last in _COMPATIBLE_LAST) or (
            last == "missing" and first in ("same", "nickname", "initial")
        ):
            return "partial"
        return "conflict"

    @property
    def name_score(self) -> float:
        score = 0.95 if self.transposed else (self.first_sim + self.last_sim) / 2
        return score * (0.9 if self.generation != "same" else 1.0)

    @property
    def contact(self) -> bool:
        """Shares an email address or a phone number."""
        return bool(self.email or self.phone)


def _place(lead: Mapping[str, Any], other: Mapping[str, Any]) -> Place | None:
    la, lb = lead.get("country"), other.get("country")
    if la and lb and la != lb:
        return "other"
    pa, pb = postal_key(lead.get("postal_code")), postal_key(other.get("postal_code"))
    if pa and pa == pb:
        return "postal"
    ca, cb = city_key(lead.get("city")), city_key(other.get("city"))
    ra, rb = lead.get("region"), other.get("region")
    if ca and ca == cb and not (ra and rb and str(ra).upper() != str(rb).upper()):
        return "city"
    return "other" if (pa and pb) or (ca and cb) else None


def _address(
    lead: Mapping[str, Any], other: Mapping[str, Any], place: Place | None
) -> Address | None:
    sa, sb = lead.get("street"), other.get("street")
    a = parse_street(sa) if isinstance(sa, str) and sa else None
    b = parse_street(sb) if isinstance(sb, str) and sb else None
    if a is None or b is None:
        return None
    if place not in ("postal", "city") or a.name != b.name:
        return "other"
    if a.suffix and b.suffix and a.suffix != b.suffix:
        return "other"
    if a.number != b.number or (a.unit and b.unit and a.unit != b.unit):
        return "street"
    return "same"


def _phones(fields: Mapping[str, Any]) -> set[str]:
    return {p for p in (fields.get("phone"), fields.get("phone_alt")) if isinstance(p, str) and p}


def _transposed(lead: Mapping[str, Any], other: Mapping[str, Any], s: MatchSettings) -> bool:
    """First and last name swapped ("Nguyen Thanh" for "Thanh Nguyen")."""
    first, _ = compare_first(
        lead.get("last_name"),
        other.get("first_name"),
        max_edits=s.name_max_edits,
        min_similarity=s.name_min_similarity,
    )
    if first not in ("same", "nickname", "typo"):
        return False
    last, _ = compare_last(
        lead.get("first_name"),
        other.get("last_name"),
        max_edits=s.name_max_edits,
        min_similarity=s.name_min_similarity,
    )
    return last in ("same", "typo")


def compare(
    lead: Mapping[str, Any], other: Mapping[str, Any], settings: MatchSettings
) -> Comparison:
    """Relate ``lead`` to ``other`` (a prospect's fields); symmetric except for names' order."""
    edits, similarity = settings.name_max_edits, settings.name_min_similarity
    first, first_sim = compare_first(
        lead.get("first_name"), other.get("first_name"), max_edits=edits, min_similarity=similarity
    )
    last, last_sim = compare_last(
        lead.get("last_name"), other.get("last_name"), max_edits=edits, min_similarity=similarity
    )
    straight = last in _COMPATIBLE_LAST and first in (*_COMPATIBLE_FIRST, "initial")
    transposed = not straight and _transposed(lead, other, settings)
    ea, eb = fold_email(lead.get("email")), fold_email(other.get("email"))
    pa, pb = _phones(lead), _phones(other)
    place = _place(lead, other)
    return Comparison(
        first=first,
        first_sim=first_sim,
        last=last,
        last_sim=last_sim,
        transposed=transposed,
        generation=generation(lead.get("last_name"), other.get("last_name")),
        email=(ea == eb) if ea and eb else None,
        phone=bool(pa & pb) if pa and pb else None,
        address=_address(lead, other, place),
        place=place,
    )


def raw_score(cmp: Comparison, *, shared: frozenset[str] = frozenset()) -> float:
    """0.55 x evidence + 0.45 x name similarity, in [0, 1].

    Evidence is a noisy-or of what agrees (how unlikely all of it agrees by chance):
    email 0.95, phone 0.9, street address 0.9, a mailbox or number several people use
    only 0.6, the postal code 0.5 or else the city 0.4. So the same name with one
    identifier scores ~0.97, a compatible name with only the place ~0.7, a spouse at the
    same address ~0.75, the same name in another town 0.45; ``shared`` lists the lead's
    contacts that several people use.
    """
    miss = 1.0
    if cmp.email:
        miss *= 0.4 if "email" in shared else 0.05
    if cmp.phone:
        miss *= 0.4 if "phone" in shared else 0.1
    if cmp.address == "same":
        miss *= 0.1
    if cmp.place == "postal":
        miss *= 0.5
    elif cmp.place == "city":
        miss *= 0.6
    return 0.55 * (1.0 - miss) + 0.45 * cmp.name_score
