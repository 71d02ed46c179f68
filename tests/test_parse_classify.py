"""classify: the order of RULES, weak vs strong auto-reply signs, noise fixtures and corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from daemon.parse.classify import RULES, classify, reply_token
from daemon.parse.decode import decode_message

HERE = Path(__file__).resolve().parent
CORPUS = Path(os.environ.get("ELEADS_CORPUS", HERE.parents[0].parent / "shared" / "corpus"))
NOISE = sorted((HERE / "fixtures" / "noise").glob("*.eml")) + sorted(
    (CORPUS / "noise").glob("*.eml")
)


def msg(headers: str, body: str = "hello") -> bytes:
    return (headers.strip("\n") + "\n\n" + body).replace("\n", "\r\n").encode("utf-8")


TOKEN_TO = "To: leads+r-7k3qz5mxa2b4c6d8e9f0@intake.example\n"


def test_rule_order_is_bounce_then_auto_reply_then_reply() -> None:
    kinds = [kind for kind, _, _ in RULES]
    assert kinds == sorted(kinds, key=["bounce", "auto_reply", "reply"].index)


@pytest.mark.parametrize("eml", NOISE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_noise_kinds(eml: Path) -> None:
    want = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
    assert classify(decode_message(eml.read_bytes())).kind == want["kind"]


def test_auto_generated_lead_stays_a_lead() -> None:
    decoded = decode_message(
        msg(
            "From: forms@site.example\nTo: leads@intake.example\n"
            "Subject: New submission\nAuto-Submitted: auto-generated\n"
        )
    )
    assert classify(decoded, lead_test=lambda m: True).kind == "lead"
    assert classify(decoded).kind == "unknown"


def test_out_of_office_to_reply_address_is_never_a_command() -> None:
    decoded = decode_message(
        msg(
            "From: sales@demo.example\n"
            + TOKEN_TO
            + "Subject: Automatic reply: Conversion issue\n",
            "USE 1",
        )
    )
    assert reply_token(decoded) == "7k3qz5mxa2b4c6d8e9f0"
    assert classify(decoded).kind == "auto_reply"


def test_bounce_wins_over_auto_submitted() -> None:
    decoded = decode_message(
        msg(
            "From: MAILER-DAEMON@mx.example\nTo: n@intake.example\n"
            "Subject: Undelivered Mail\nAuto-Submitted: auto-replied\n"
        )
    )
    assert classify(decoded).kind == "bounce"


def test_postmaster_needs_failure_text() -> None:
    chat = decode_message(
        msg(
            "From: postmaster@site.example\nTo: n@intake.example\nSubject: Hello\n",
            "Lunch on Friday?",
        )
    )
    assert classify(chat).kind == "unknown"
    bounce = decode_message(
        msg(
            "From: postmaster@site.example\nTo: n@intake.example\nSubject: Hello\n",
            "550 5.1.1 no such user",
        )
    )
    assert classify(bounce).kind == "bounce"


def test_undeliverable_subject_needs_failure_text() -> None:
    lead = decode_message(
        msg(
            "From: a@site.example\nTo: n@intake.example\nSubject: Undeliverable package question\n",
            "Name: Pat",
        )
    )
    assert classify(lead, lead_test=lambda m: True).kind == "lead"


def test_weak_signs_only_on_replies() -> None:
    form = decode_message(
        msg("From: a@site.example\nTo: n@intake.example\nSubject: Quote\nPrecedence: bulk\n")
    )
    assert classify(form, lead_test=lambda m: True).kind == "lead"
    reply = decode_message(
        msg("From: a@site.example\n" + TOKEN_TO + "Subject: Quote\nPrecedence: bulk\n")
    )
    assert classify(reply).kind == "auto_reply"


def test_reply_by_in_reply_to_and_by_subject_elead() -> None:
    by_ref = decode_message(
        msg(
            "From: a@demo.example\nTo: leads@intake.example\nSubject: x\n"
            "In-Reply-To: <ci.E-77.20261117@intake.example>\n"
        )
    )
    assert classify(by_ref).rule == "reply:in-reply-to"
    by_subject = decode_message(
        msg(
            "From: a@demo.example\nTo: leads@intake.example\n"
            "Subject: RE: Conversion issue: eLead E-77 needs a decision\n"
        )
    )
    assert classify(by_subject).rule == "reply:subject-elead"
    not_reply = decode_message(
        msg("From: a@demo.example\nTo: leads@intake.example\nSubject: About E-77\n")
    )
    assert classify(not_reply).kind == "unknown"


def test_token_must_be_lowercase_base32() -> None:
    decoded = decode_message(
        msg("From: a@demo.example\nTo: leads+r-ABC!@intake.example\nSubject: x\n")
    )
    assert reply_token(decoded) is None


def test_forwarded_lead_with_references_and_weak_signs_stays_a_lead() -> None:
    decoded = decode_message(
        msg(
            "From: owner@biz.example\nTo: leads@intake.example\n"
            "Subject: FW: New lead\nReferences: <abc@provider.example>\n"
            "X-Auto-Response-Suppress: All\n"
        )
    )
    assert classify(decoded, lead_test=lambda m: True).kind == "lead"


def test_only_our_conversion_issue_ids_count() -> None:
    other = decode_message(
        msg(
            "From: a@demo.example\nTo: leads@intake.example\nSubject: x\n"
            "In-Reply-To: <xci.E-77.1@intake.example>\n"
        )
    )
    assert classify(other).kind == "unknown"
    listed = decode_message(
        msg(
            "From: a@demo.example\nTo: leads@intake.example\nSubject: x\n"
            "References: <a@b.example> <ci.E-77.1@intake.example>\n"
        )
    )
    assert classify(listed).rule == "reply:in-reply-to"
