"""Matching, piece by piece, on invented data: each comparison and each decision branch.

No database here (see test_match_corpus.py and test_prospects_import.py for that):
names.py, keys.py, score.py and decide.py are pure functions.
"""

from __future__ import annotations

import random
import unicodedata
from typing import Any

import phonenumbers
import pytest

from daemon.config import MatchSettings
from daemon.match import Candidate, decide, evaluate
from daemon.match.keys import (
    _nanp_exchange_valid,
    blocking_keys,
    e164,
    email_address,
    fold_email,
    parse_street,
    query_keys,
)
from daemon.match.names import compare_first, compare_last, generation, split_generation
from daemon.match.score import compare, raw_score
from daemon.parse import normalise

S = MatchSettings()


def person(pid: str = "P1", **fields: Any) -> dict[str, Any]:
    """A prospect row as retrieve.py returns it."""
    row: dict[str, Any] = {"id": int(pid[1:]) if pid[1:].isdigit() else 1, "pid": pid}
    row.update({"conflicting_leads": 0, **fields})
    return row


ROBERT = person(
    first_name="Robert",
    last_name="Haskins",
    email="roberth65@inbox.example",
    phone="+16145550186",
    street="136 Willow Bend Drive",
    city="Hilliard",
    postal_code="43026",
)


def judge(lead: dict[str, Any], row: dict[str, Any] = ROBERT, **kw: Any) -> Candidate:
    return evaluate(lead, row, settings=S, **kw)[0]


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Bob", "Robert"),
        ("Liz", "Elizabeth"),
        ("Bill", "William"),
        ("Jim", "James"),
        ("Kathy", "Katherine"),
        ("Peggy", "Margaret"),
        ("Rick", "Richard"),
        ("Jimmy", "Jim"),
        ("Cathy", "Katherine"),
        ("Steven", "Stephen"),
        ("Chris", "Christina"),
    ],
)
def test_nicknames_and_spellings(a: str, b: str) -> None:
    assert compare_first(a, b)[0] == "nickname"
    assert compare_first(b, a)[0] == "nickname"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Robert", "Roberta"),  # a couple, not a typo
        ("Francis", "Frances"),
        ("Mary", "Mark"),
        ("Jean", "Joan"),
        ("Bob", "Bert"),  # two nicknames of Robert, but Bert is also Albert's
        ("Christopher", "Christina"),
        ("Andrew", "Andrea"),
    ],
)
def test_different_first_names(a: str, b: str) -> None:
    assert compare_first(a, b)[0] == "different"


def test_initials() -> None:
    assert compare_first("R", "Robert")[0] == "initial"
    assert compare_first("R.", "robert")[0] == "initial"
    assert compare_first("J", "Robert")[0] == "different"
    assert compare_first(None, "Robert")[0] == "missing"


def test_first_name_typos_only_for_unknown_spellings() -> None:
    assert compare_first("Jonh", "John")[0] == "typo"
    assert compare_first("Micheal", "Michael")[0] == "typo"
    assert compare_first("Dan", "Don")[0] == "different"  # too short to call a typo


@pytest.mark.parametrize(
    ("a", "b", "relation"),
    [
        ("Fitzgerlad", "Fitzgerald", "typo"),  # swapped letters
        ("Baumgardner", "Baumgartner", "typo"),
        ("McAlister", "McAllister", "typo"),
        ("Kowalcyzk", "Kowalczyk", "typo"),
        ("Sehneider", "Schneider", "typo"),  # an early slip counts as much as a late one
        ("Nowak", "Novak", "typo"),
        ("Hall", "Hill", "different"),  # one letter of four: two names
        ("Lee", "Li", "different"),  # short names must be exact
        ("Smith", "Jones", "different"),
        ("O'Connell", "OCONNELL", "same"),
        ("Ibáñez", "IBANEZ", "same"),
        ("García López", "Garcia", "part"),
        ("Smith-Jones", "Jones", "part"),
        ("de la Cruz", "Cruz", "same"),  # particles do not count
        ("Platt Sr.", "Platt", "same"),  # the suffix is compared apart
    ],
)
def test_last_names(a: str, b: str, relation: str) -> None:
    assert compare_last(a, b)[0] == relation


def test_edit_distance_comes_from_settings() -> None:
    assert compare_last("Fitzgerlad", "Fitzgerald", max_edits=0)[0] == "different"
    assert compare_last("Baumgardnre", "Baumgartner", max_edits=2)[0] == "typo"


def test_generation_suffixes() -> None:
    assert split_generation("Platt Sr.") == ("Platt", "sr")
    assert split_generation("Hayes III") == ("Hayes", "iii")
    assert split_generation("Junior") == ("Junior", None)
    assert generation("Platt Jr.", "Platt Sr.") == "conflict"
    assert generation("Hayes Jr.", "Hayes") == "one_sided"
    assert generation("Hayes", "HAYES") == "same"


# --- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "folded"),
    [
        ("Peggy.Okafor@Gmail.com", "peggyokafor@gmail.com"),
        ("peggy.okafor+quotes@googlemail.com", "peggyokafor@gmail.com"),
        ("rob.ellison+x@outlook.com", "rob.ellison@outlook.com"),
        ("first.last+tag@example.com", "first.last+tag@example.com"),  # not a folding domain
        ("T.BROWN@example.net", "t.brown@example.net"),
        ("not an address", None),
    ],
)
def test_email_folding(address: str, folded: str | None) -> None:
    assert fold_email(address) == folded


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1420 N High St", "1420 North High Street"),
        ("5 St. Andrews Ct", "5 Saint Andrews Court"),
        ("77 Oak Hollow Dr #3", "77 Oak Hollow Drive Apt 3"),
        ("12 FIFTH AVE", "12 5th Avenue"),
    ],
)
def test_street_forms(a: str, b: str) -> None:
    assert parse_street(a) == parse_street(b) is not None


def test_street_parts() -> None:
    street = parse_street("77 Oak Hollow Dr #3")
    assert street is not None
    assert (street.number, street.suffix, street.unit) == ("77", "dr", "3")
    assert parse_street("PO Box") is None


def test_same_person_written_differently_shares_keys() -> None:
    prospect = {
        "first_name": "William",
        "last_name": "Turner",
        "email": "bill.turner@gmail.com",
        "street": "670 Coventry Road",
        "postal_code": "43064",
        "city": "Plain City",
    }
    lead = {
        "first_name": "Bill",
        "last_name": "TURNER",
        "email": "billturner+x@googlemail.com",
        "street": "670 Coventry Rd",
        "postal_code": "43064-1234",
        "city": "plain city",
    }
    shared = blocking_keys(prospect) & blocking_keys(lead)
    assert {k[0] for k in shared} >= {"e", "a", "n", "f", "c", "g"}


def test_query_keys_strongest_first_with_initial_and_transposed() -> None:
    keys = query_keys({"first_name": "Robert", "last_name": "Kaminski", "phone": "+16145550148",
                       "city": "Westerville", "postal_code": "43081"})  # fmt: skip
    assert keys[0] == "p:+16145550148"
    assert "c:KMNSK|r|westerville" in keys  # finds "R Kaminski"
    assert any(k.startswith("n:RBRT|") for k in keys)  # the name read the other way
    assert all(len(k) <= 255 for k in keys)


def test_bulk_normalisers_agree_with_normalise() -> None:
    rng = random.Random(5)
    numbers = [
        f"{rng.randint(200, 999)}{rng.randint(0, 999):03d}{rng.randint(0, 9999):04d}"
        for _ in range(3000)
    ]
    formats = [
        "{}",
        "({0[0]}{0[1]}{0[2]}) {0[3]}{0[4]}{0[5]}-{0[6]}{0[7]}{0[8]}{0[9]}",
        "1-{}",
        "+1{}",
    ]
    for number in numbers:
        value = rng.choice(formats).format(number)
        assert e164(value, ("US",)) == normalise.phone(value, ("US",)), value
    for value in ("(614) 555-0143 ext 2", "020 7946 0311", "+44 113 496 0872", "555-12"):
        assert e164(value, ("US", "GB")) == normalise.phone(value, ("US", "GB"))
    for value in ("Gary.Cruz84@EXAMPLE.NET", "a..b@example.com", "x@localhost", "<a@b.example>"):
        assert email_address(value) == normalise.email(value)


def test_nanp_exchange_check_agrees_with_a_full_parse() -> None:
    """The import's per-exchange check skips the parse for area codes from 2-9, and tries
    the US first as libphonenumber does."""
    assert phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1][0] == "US"
    rng = random.Random(11)
    prefixes = {f"{rng.randint(0, 999999):06d}" for _ in range(1500)}
    prefixes |= {"212555", "268464", "416555", "800555", "900555", "011234", "123456"}
    for prefix in sorted(prefixes):
        full = normalise.phone(f"+1{prefix}0100", ("US",)) is not None
        assert _nanp_exchange_valid.__wrapped__(prefix) == full, prefix


def test_clean_and_fold_fast_paths_agree_with_the_full_path() -> None:
    """normalise.clean/fold skip their regexes and Unicode work for plain ASCII."""
    rng = random.Random(7)
    alphabet = "aZ09 .-@'/\t\n\r\x00\x1f\x7f\x85\u00a0\u00e9e\u0301\u200b\u2028\uff37\ufeff"
    samples = ["", " ", "n/a", "N/A", "None", " x", "x  y", "x ", "a" * 250, "é", "ﬁ", "Ⅻ"]
    samples += ["".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(5000)]
    samples += ["".join(rng.choices("ab N/", k=rng.randint(0, 8))) for _ in range(2000)]
    for text in samples:
        for limit in (3, 64, 200):
            assert normalise.clean(text, limit) == normalise._clean(text, limit), (text, limit)
        decomposed = unicodedata.normalize("NFKD", text.lower())
        slow = "".join(c for c in decomposed if not unicodedata.combining(c))
        assert normalise.fold(text) == slow, text


# --- scores and verdicts ------------------------------------------------------------------


def test_clear_match_same_email_and_nickname() -> None:
    c = judge({"first_name": "Bob", "last_name": "Haskins", "email": "roberth65@inbox.example"})
    assert (c.verdict, c.conflict) == ("same", False)
    assert "first name Bob is a nickname of Robert" in c.reasons
    assert c.score >= S.clear_score


def test_transposed_name_with_phone() -> None:
    c = judge({"first_name": "Haskins", "last_name": "Robert", "phone": "+16145550186"})
    assert c.verdict == "same"
    assert "first and last name transposed" in c.reasons


def test_same_email_other_name_is_a_conflict() -> None:
    c = judge(
        {"first_name": "Dennis", "last_name": "Radcliffe", "email": "roberth65@inbox.example"}
    )
    assert (c.verdict, c.conflict) == ("maybe", True)
    assert S.fuzzy_score <= c.score < S.clear_score


def test_household_same_address_other_first_name() -> None:
    c = judge({"first_name": "Dana", "last_name": "Haskins", "street": "136 Willow Bend Dr",
               "city": "Hilliard", "postal_code": "43026"})  # fmt: skip
    assert (c.verdict, c.conflict) == ("maybe", False)
    assert any("another member of the household" in r for r in c.reasons)


def test_another_household_at_the_address_is_not_a_candidate() -> None:
    c = judge({"first_name": "Priya", "last_name": "Shah", "street": "136 Willow Bend Dr",
               "postal_code": "43026"})  # fmt: skip
    assert c.verdict == "different"


def test_generation_suffix_at_same_address_is_fuzzy() -> None:
    row = person(
        first_name="Gerald", last_name="Platt Sr.", street="22 Hickory Glen Ct", postal_code="45208"
    )
    c = judge({"first_name": "Gerald", "last_name": "Platt Jr.", "street": "22 Hickory Glen Ct",
               "postal_code": "45208"}, row)  # fmt: skip
    assert c.verdict == "maybe"


def test_name_and_place_only_is_fuzzy_name_elsewhere_is_nothing() -> None:
    near = judge(
        {"first_name": "Robert", "last_name": "Haskins", "city": "Hilliard", "postal_code": "43026"}
    )
    far = judge(
        {"first_name": "Robert", "last_name": "Haskins", "city": "Toledo", "postal_code": "43604"}
    )
    assert near.verdict == "maybe"
    assert far.verdict == "different"
    assert "a name match in another place is not evidence" in far.reasons


def test_initial_needs_a_personal_identifier_and_enough_evidence() -> None:
    row = person(first_name="R", last_name="Haskins", email="rh@example.com", phone="+16145550111",
                 street="1 Elm St", postal_code="43026")  # fmt: skip
    assert (
        judge(
            {"first_name": "Robert", "last_name": "Haskins", "email": "rh@example.com"}, row
        ).verdict
        == "same"
    )
    # an initial and a misspelt surname with one identifier: below clear_score
    thin = judge({"first_name": "Robert", "last_name": "Haskens", "phone": "+16145550111"}, row)
    assert thin.verdict == "maybe"
    assert any("evidence too thin" in r for r in thin.reasons)
    more = {
        "first_name": "Robert",
        "last_name": "Haskens",
        "phone": "+16145550111",
        "email": "rh@example.com",
    }
    assert judge(more, row).verdict == "same"
    house = judge(
        {
            "first_name": "Robert",
            "last_name": "Haskins",
            "street": "1 Elm St",
            "postal_code": "43026",
        },
        row,
    )
    assert house.verdict == "maybe"  # an initial at an address could be anyone of the household


def test_shared_contact_needs_more_than_a_compatible_name() -> None:
    lead = {"first_name": "Bob", "last_name": "Haskins", "email": "roberth65@inbox.example"}
    assert judge(lead, shared=frozenset({"email"})).verdict == "maybe"
    exact = {
        **lead,
        "first_name": "Robert",
        "street": "136 Willow Bend Drive",
        "postal_code": "43026",
    }
    assert judge(exact, shared=frozenset({"email"})).verdict == "same"


def test_score_ranks_evidence() -> None:
    lead = {"first_name": "Robert", "last_name": "Haskins"}
    alone = raw_score(compare(lead, ROBERT, S))
    with_email = raw_score(compare({**lead, "email": "roberth65@inbox.example"}, ROBERT, S))
    with_all = raw_score(
        compare({**lead, "email": "roberth65@inbox.example", "phone": "+16145550186"}, ROBERT, S)
    )
    assert alone < with_email < with_all <= 1.0


# --- the decision -------------------------------------------------------------------------


def cand(pid: str, verdict: str, score: float, conflict: bool = False) -> Candidate:
    return Candidate(int(pid[1:]), pid, score, verdict, (), {}, conflict)  # type: ignore[arg-type]


LEAD = {"first_name": "Ann", "last_name": "Lee", "email": "ann@example.com"}


def test_decide_matched() -> None:
    d = decide(LEAD, [cand("P2", "maybe", 0.7), cand("P1", "same", 0.97)], settings=S)
    assert (d.outcome, d.prospect_id, d.pid) == ("matched", 1, "P1")
    assert [c.pid for c in d.candidates] == ["P1", "P2"]


def test_decide_competing_candidates_are_fuzzy() -> None:
    d = decide(LEAD, [cand("P1", "same", 0.97), cand("P2", "same", 0.93)], settings=S)
    assert (d.outcome, d.prospect_id) == ("fuzzy", None)
    assert "several prospects fit equally well" in d.reasons[0]


def test_decide_clear_winner_beats_a_distant_second() -> None:
    d = decide(LEAD, [cand("P1", "same", 0.99), cand("P2", "same", 0.85)], settings=S)
    assert d.outcome == "matched"


def test_decide_fuzzy_and_created() -> None:
    assert decide(LEAD, [cand("P3", "maybe", 0.6, True)], settings=S).outcome == "fuzzy"
    created = decide(LEAD, [cand("P4", "different", 0.45)], settings=S)
    assert (created.outcome, created.prospect_id) == ("created", None)
    assert [c.pid for c in created.candidates] == ["P4"]  # shown, not used
    assert decide({}, [], settings=S).reasons == ("no name, email, phone or street to match on",)


def test_decide_keeps_max_shown() -> None:
    many = [cand(f"P{i}", "maybe", 0.5 + i / 100) for i in range(1, 12)]
    d = decide(LEAD, many, settings=MatchSettings(max_shown=3))
    assert [c.pid for c in d.candidates] == ["P11", "P10", "P9"]


def test_thresholds_come_from_settings() -> None:
    lead = {"first_name": "Robert", "last_name": "Haskins", "email": "roberth65@inbox.example"}
    assert judge(lead).verdict == "same"
    strict = MatchSettings(clear_score=0.99)
    assert evaluate(lead, ROBERT, settings=strict)[0].verdict == "maybe"
