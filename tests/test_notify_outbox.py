"""Queueing and rendering: what each notification says, to whom, and that it is safe.

Rows are created directly in a real SQLite database; messages are built exactly as the
sender builds them (claim, then render) and parsed back with the stdlib parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from daemon.commands.tokens import TokenGrant, check_token
from daemon.config import Settings
from daemon.db.models import ELead, LeadSource, Notification, Prospect, database_proxy
from daemon.notify.outbox import list_outbox, queue_for_elead, queue_message
from daemon.notify.render import Outgoing, Renderer, build_message, templates_dir_for
from daemon.notify.sender import claim_due
from daemon.parse.classify import CONVERSION_ISSUE_ID_RE, REPLY_TOKEN_RE
from tests.test_notify_support import (
    CANDIDATES,
    LEAD,
    NOW,
    XSS_IMG,
    XSS_SCRIPT,
    bodies,
    make_elead,
    make_settings,
    open_db,
    parse_mail,
)

REPLY_TO_RE = re.compile(r"^leads\+r-([0-9a-z]+)@eleads\.example$")


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    db: pw.Database = open_db(tmp_path)
    yield make_settings(tmp_path)
    db.close()


def built(settings: Settings, kind: str | None = None) -> dict[str, EmailMessage]:
    """Claim every due row and build it as the sender would; by kind."""
    items = claim_due(now=NOW + timedelta(minutes=1), limit=100, lease=timedelta(minutes=5))
    renderer = Renderer(templates_dir_for(settings))
    out = {}
    for item in items:
        msg = build_message(item, outbound=settings.outbound, renderer=renderer)
        out[item.kind] = parse_mail(msg.as_bytes())
    return out if kind is None else {kind: out[kind]}


def queue(elead: ELead, settings: Settings, outcome: str, pid: str | None = None) -> list[str]:
    return [
        n.kind
        for n in queue_for_elead(
            elead, settings=settings, outcome=outcome, prospect_pid=pid, now=NOW
        )
    ]


def test_received_for_a_new_prospect(settings: Settings, tmp_path: Path) -> None:
    elead = make_elead(tmp_path, state="converted")
    assert queue(elead, settings, "created", "P1301") == ["received"]
    msg = built(settings)["received"]
    assert msg["To"] == "sales@demo.example"
    assert msg["From"] == "eLeads <leads@eleads.example>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Eleads-ELead"] == f"E-{elead.id}"
    assert msg["X-Eleads-Source-Message-ID"] == "<hpm-4471920@homepromatch.example>"
    assert msg["Date"] == "Tue, 17 Nov 2026 12:46:02 +0000"
    assert re.fullmatch(
        rf"<rx\.E-{elead.id}\.\d{{14}}\.[0-9a-f]{{8}}@eleads\.example>", msg["Message-ID"]
    )
    assert msg["Reply-To"] is None
    assert f"E-{elead.id}" in msg["Subject"] and "new prospect P1301" in msg["Subject"]
    text, html = bodies(msg)
    for needle in (
        "Robert Kaminski",
        "HomeProMatch",
        "new prospect P1301",
        "rkaminski@example.net",
        "(614) 555-0148",
        "Roof Replacement",
    ):
        assert needle in text and needle in html


@pytest.mark.parametrize(
    "outcome,pid,expected",
    [
        ("matched", "P1187", "added to prospect P1187"),
        ("fuzzy", None, "needs a decision"),
    ],
)
def test_received_says_what_happened(
    settings: Settings, tmp_path: Path, outcome: str, pid: str | None, expected: str
) -> None:
    elead = make_elead(tmp_path, candidates=CANDIDATES)
    queue(elead, settings, outcome, pid)
    assert expected in built(settings)["received"]["Subject"]


def test_empty_address_list_queues_nothing(settings: Settings, tmp_path: Path) -> None:
    elead = make_elead(tmp_path, account="quiet", candidates=CANDIDATES)
    assert queue(elead, settings, "fuzzy") == []
    assert Notification.select().count() == 0


def test_appointment_goes_to_its_own_list_with_the_time_up_front(
    settings: Settings, tmp_path: Path
) -> None:
    lead = {**LEAD, "appointment_requested": True, "appointment_at": "2026-11-24T10:00:00-05:00"}
    elead = make_elead(tmp_path, lead=lead, state="converted")
    assert queue(elead, settings, "created", "P9") == ["received", "appointment"]
    msg = built(settings)["appointment"]
    assert msg["To"] == "appointments@demo.example"
    assert "Tue 24 Nov 2026 10:00" in msg["Subject"]
    text, html = bodies(msg)
    assert text.splitlines()[0].startswith("APPOINTMENT REQUESTED: Tue 24 Nov 2026 10:00")
    assert "<strong>Tue 24 Nov 2026 10:00" in html


def conversion_issue(settings: Settings, tmp_path: Path) -> tuple[ELead, EmailMessage]:
    elead = make_elead(tmp_path, candidates=CANDIDATES)
    prospect = Prospect.create(account="demo", pid="P1187", first_name="Roberta")
    older = make_elead(tmp_path, state="converted", message_id="old@x.example")
    LeadSource.create(
        prospect=prospect, elead=older, source="AngiLeads", received_at=NOW - timedelta(days=30)
    )
    assert queue(elead, settings, "fuzzy") == ["received", "conversion_issue"]
    return elead, built(settings)["conversion_issue"]


def test_conversion_issue_reply_address_and_ids(settings: Settings, tmp_path: Path) -> None:
    elead, msg = conversion_issue(settings, tmp_path)
    found = REPLY_TO_RE.match(msg["Reply-To"])
    assert found, msg["Reply-To"]
    token = found.group(1)
    assert len(token) * 5 >= 100  # base32: 5 bits per character
    grant = check_token(token, now=NOW)
    assert isinstance(grant, TokenGrant) and grant.elead_id == elead.id
    assert grant.expires_at == NOW + timedelta(days=14)
    assert REPLY_TOKEN_RE.search(msg["Reply-To"])
    assert f"E-{elead.id}" in msg["Subject"]
    classified = CONVERSION_ISSUE_ID_RE.search(msg["Message-ID"])
    assert classified and classified.group(1) == f"E-{elead.id}"
    assert msg["Message-ID"].startswith(f"<ci.E-{elead.id}.")
    assert Notification.get(Notification.kind == "conversion_issue").reply_to == msg["Reply-To"]
    text, html = bodies(msg)
    assert f"E-{elead.id}" in text and f"E-{elead.id}" in html


def test_conversion_issue_lists_candidates_in_rank_order(
    settings: Settings, tmp_path: Path
) -> None:
    _, msg = conversion_issue(settings, tmp_path)
    text, html = bodies(msg)
    for body in (text, html):
        assert body.index("P1187") < body.index("P1240")
        for needle in (
            "Roberta Kaminski",
            "(614) 555-0148",
            "rkaminski.home@example.net",
            "2231 Alder Ridge Rd, Westerville, OH 43081",
            "same phone",
            "same street",
            "similar name",
            "87 Quail Run",
            "0.81",
            "AngiLeads, 18 Oct 2026",
            "this prospect has 2 conflicting leads",
        ):
            assert needle in body, needle
    assert re.search(r"1\. P1187 .*\n(?:.*\n)*?\s+Why:\s+same phone; same street", text)


def test_conversion_issue_says_how_to_answer(settings: Settings, tmp_path: Path) -> None:
    _, msg = conversion_issue(settings, tmp_path)
    text, html = bodies(msg)
    for command in ("USE 1", "USE 2", "USE P1234", "NEW", "IGNORE", "HELP"):
        assert re.search(rf"^  {command}\s+\S", text, re.MULTILINE), command
    links = re.findall(r'href="(mailto:[^"]+)"', html)
    reply = msg["Reply-To"]
    assert links and all(link.startswith(f"mailto:{reply}?subject=Re%3A%20") for link in links)
    bodies_in_links = {link.split("&amp;body=")[1] for link in links}
    assert {
        "USE%201",
        "USE%202",
        "USE%20P1187",
        "USE%20P1240",
        "USE%20P",
        "NEW",
        "IGNORE",
        "HELP",
    } <= bodies_in_links


def test_failed_parse_attaches_the_original(settings: Settings, tmp_path: Path) -> None:
    elead = make_elead(
        tmp_path, lead={}, state="failed_parse", problems=["no email or phone", "no name"]
    )
    assert queue(elead, settings, "failed") == ["received", "conversion_issue"]
    messages = built(settings)
    assert "could not be parsed" in messages["received"]["Subject"]
    msg = messages["conversion_issue"]
    assert msg["Subject"] == f"Conversion issue: eLead E-{elead.id} could not be parsed"
    assert msg.get_content_type() == "multipart/mixed"
    text, html = bodies(msg)
    for body in (text, html):
        assert "no email or phone" in body and "no name" in body
        assert "original message is attached" in body
        assert "NEW" in body and "IGNORE" in body
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_content_type() == "message/rfc822"
    assert attachment.get_filename() == "original.eml"
    inner = attachment.get_content()
    assert inner["Message-ID"] == "<hpm-4471920@homepromatch.example>"
    assert "Customer: (unreadable)" in inner.get_content()


def test_failed_parse_with_8bit_original_attaches_its_exact_bytes(
    settings: Settings, tmp_path: Path
) -> None:
    raw = b"From: x@y.example\r\nSubject: \xe9t\xe9\r\n\r\n" + b"\xff\xfe broken " * 200 + b"\r\n"
    elead = make_elead(tmp_path, lead={}, state="failed_parse", raw=raw)
    queue(elead, settings, "failed")
    msg = built(settings)["conversion_issue"]
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_content_type() == "application/octet-stream"
    assert attachment.get_content() == raw


def test_failed_parse_without_the_file_still_goes_out(settings: Settings, tmp_path: Path) -> None:
    elead = make_elead(tmp_path, lead={}, state="failed_parse")
    Path(elead.message.raw_path).unlink()
    queue(elead, settings, "failed")
    msg = built(settings)["conversion_issue"]
    assert list(msg.iter_attachments()) == []
    assert "no longer available" in bodies(msg)[0]


def test_html_is_escaped_and_text_is_literal(settings: Settings, tmp_path: Path) -> None:
    lead = {
        **LEAD,
        "first_name": XSS_SCRIPT,
        "last_name": XSS_IMG,
        "comments": XSS_IMG,
        "source": XSS_SCRIPT,
        "interest": f"{XSS_IMG}{XSS_SCRIPT}",
    }
    candidates = [
        {
            **CANDIDATES[1],
            "reasons": [XSS_SCRIPT],
            "summary": {"first_name": XSS_IMG, "city": XSS_SCRIPT},
        }
    ]
    elead = make_elead(tmp_path, lead=lead, candidates=candidates, problems=[XSS_IMG])
    queue(elead, settings, "fuzzy")
    for kind, msg in built(settings).items():
        text, html = bodies(msg)
        assert "<script" not in html.lower() and "<img" not in html.lower(), kind
        assert "onerror=alert" not in html.replace("&#34;&gt;&lt;img src=x onerror=", ""), kind
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, kind
        assert "&#34;&gt;&lt;img src=x onerror=alert(document.cookie)&gt;" in html, kind
        assert XSS_SCRIPT in text and XSS_IMG in text, kind


def test_header_injection_cannot_add_headers(tmp_path: Path) -> None:
    open_db(tmp_path)
    settings = make_settings(tmp_path, from_name="eLeads\r\nBcc: spy@evil.example")
    evil = "Eve\r\nBcc: victim@evil.example\r\nX-Injected: yes"
    lead = {
        **LEAD,
        "first_name": evil,
        "source": "Src\nX-Injected: 2",
        "appointment_requested": True,
        "appointment_at": "2026-11-24T10:00\r\nX-Injected: 3",
    }
    elead = make_elead(
        tmp_path, lead=lead, candidates=CANDIDATES, message_id="a@b\r\nX-Injected: 4"
    )
    queue(elead, settings, "fuzzy")
    queue_message(
        kind="command_result",
        to=["sales@demo.example"],
        subject=evil,
        template="command_result",
        context={"title": evil, "body": evil},
        settings=settings,
        now=NOW,
        in_reply_to="<r1@x>\r\nX-Injected: 5",
        references=["<r0@x>", "junk\r\nBcc: a@b.c"],
    )
    messages = built(settings)
    assert set(messages) == {"received", "appointment", "conversion_issue", "command_result"}
    for kind, msg in messages.items():
        names = {name.lower() for name in msg}
        assert "bcc" not in names and "x-injected" not in names, (kind, names)
        assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    result = messages["command_result"]
    assert result["In-Reply-To"] == "<r1@x>"
    assert result["References"] == "<r0@x> <r1@x>"


def test_rebuilding_gives_the_same_bytes(settings: Settings, tmp_path: Path) -> None:
    elead = make_elead(tmp_path, lead={}, state="failed_parse")
    queue(elead, settings, "failed")
    row = Notification.get(Notification.kind == "conversion_issue")
    item = Outgoing(
        id=row.id,
        kind=row.kind,
        to=tuple(row.to),
        subject=row.subject,
        reply_to=row.reply_to,
        message_id=row.message_id,
        payload=row.payload,
    )
    first = build_message(item, outbound=settings.outbound, renderer=Renderer())
    again = build_message(item, outbound=settings.outbound, renderer=Renderer())
    assert first.as_bytes() == again.as_bytes()
    assert first["Message-ID"] == row.message_id


def test_queued_only_if_the_transaction_commits(settings: Settings, tmp_path: Path) -> None:
    elead = make_elead(tmp_path, candidates=CANDIDATES)
    with database_proxy.atomic() as txn:
        queue(elead, settings, "fuzzy")
        txn.rollback()
    assert Notification.select().count() == 0


def test_list_outbox_shape(settings: Settings, tmp_path: Path) -> None:
    elead = make_elead(tmp_path, candidates=CANDIDATES)
    queue(elead, settings, "fuzzy")
    queue_message(
        kind="command_result",
        to=["sales@demo.example"],
        subject="Done",
        template="command_result",
        context={"title": "Done", "body": "ok"},
        settings=settings,
        now=NOW,
    )
    rows = list_outbox()
    assert [r["kind"] for r in rows] == ["received", "conversion_issue", "command_result"]
    for row in rows:
        assert {"id", "kind", "to", "subject", "reply_to", "status", "elead", "path"} <= set(row)
        assert row["status"] == "queued" and row["path"] is None
        assert isinstance(row["to"], list)
    assert rows[0]["elead"] == f"E-{elead.id}" and rows[2]["elead"] is None
    assert REPLY_TO_RE.match(rows[1]["reply_to"])
    assert list_outbox(status="sent") == []


def test_templates_dir_overrides_by_file_name(tmp_path: Path) -> None:
    open_db(tmp_path)
    custom = tmp_path / "my-templates"
    custom.mkdir()
    (custom / "received.txt").write_text("Custom {{ elead }} for {{ name }}\n")
    settings = make_settings(tmp_path, templates_dir="my-templates")
    assert templates_dir_for(settings) == tmp_path / "my-templates"
    elead = make_elead(tmp_path, state="converted")
    queue(elead, settings, "created", "P1")
    text, html = bodies(built(settings)["received"])
    assert text == f"Custom E-{elead.id} for Robert Kaminski\n"
    assert "<html" in html and "Robert Kaminski" in html  # the packaged HTML still serves


def test_command_result_threads_under_the_reply(settings: Settings) -> None:
    row = queue_message(
        kind="command_result",
        to=["Sales@Demo.example"],
        subject="Re: Conversion issue: eLead E-7 - done",
        template="command_result",
        context={"title": "E-7 added to P1187", "body": "Done.\n\nThanks."},
        settings=settings,
        now=NOW,
        elead=None,
        in_reply_to="<reply-1@mail.example>",
        references="<ci.E-7.1.ab@eleads.example> <reply-1@mail.example>",
    )
    assert row is not None and row.to == ["sales@demo.example"]
    msg = built(settings)["command_result"]
    assert msg["In-Reply-To"] == "<reply-1@mail.example>"
    assert msg["References"] == "<ci.E-7.1.ab@eleads.example> <reply-1@mail.example>"
    assert msg["Message-ID"].startswith("<cr.")
    text, html = bodies(msg)
    assert "E-7 added to P1187" in text and "Thanks." in html


def test_queue_message_with_nobody_to_tell(settings: Settings) -> None:
    kwargs: dict[str, Any] = {
        "kind": "return_lead",
        "subject": "x",
        "template": "received",
        "context": {},
        "settings": settings,
        "now": NOW,
    }
    assert queue_message(to=[], **kwargs) is None
    assert queue_message(to=["", "  "], **kwargs) is None
    assert Notification.select().count() == 0


def test_command_result_with_summary_details_and_help(settings: Settings) -> None:
    context = {
        "summary": "Added to Prospect P1187 Roberta Kaminski",
        "details": ["eLead E-7 is now converted.", f"Note: {XSS_SCRIPT}"],
        "help": ["USE 1", "NEW", "IGNORE", "HELP"],
    }
    queue_message(
        kind="command_result",
        to=["sales@demo.example"],
        subject="Re: Conversion issue: eLead E-7 needs a decision",
        template="command_result",
        context=context,
        settings=settings,
        now=NOW,
    )
    text, html = bodies(built(settings)["command_result"])
    assert text.startswith("Added to Prospect P1187 Roberta Kaminski\n")
    assert "eLead E-7 is now converted." in text and XSS_SCRIPT in text
    assert "USE 1\nNEW\nIGNORE\nHELP" in text
    assert "<script" not in html and "eLead E-7 is now converted." in html
