"""Reply-to-confirm end to end: real SMTP in, real SQLite, the real outbox Maildir out.

Every test runs a real Daemon (``run_daemon``: its own event loop in a thread, a real TCP
port, ``spool.worker: thread``) over prospects imported beforehand, sends a lead that
matches fuzzily, waits for the Conversion Issue email in ``data_dir/outbox`` (read with
``mailbox.Maildir``), takes its Reply-To token and answers it over SMTP as a mail client
would. Only the mail loop test runs a second daemon, as ``eleads serve`` in a child
process (the models are bound to one database per process).

Tokens are single use and an answer changes the prospects (NEW creates one, USE fills
empty fields), so each case gets its own daemon and data dir: a few hundred milliseconds.

Two scenarios: the shared corpus (prospects.csv, the HomeProMatch lead, the reply files;
skipped when the corpus is absent, a failure under CI=true) and a small invented one, so
the whole flow is covered without the corpus.
"""

from __future__ import annotations

import json
import mailbox
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parseaddr
from pathlib import Path
from typing import Any, cast

import pytest

from daemon.config import load_settings
from daemon.convert import convert_manual
from daemon.db.models import (
    ELead,
    InboundMessage,
    Notification,
    Prospect,
    ReplyToken,
    database_proxy,
)
from daemon.pipeline import Pipeline
from daemon.prospects_import import import_prospects
from daemon.runtime import open_runtime

from .conftest import BASE_CONFIG, DaemonThread, free_port
from .pg import query

CORPUS = Path(
    os.environ.get(
        "ELEADS_CORPUS", Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
    )
)
IN_CI = os.environ.get("CI") == "true"
ELEADS = [sys.executable, "-m", "daemon.cli"]  # the `eleads` console script

CORPUS_TOKEN = b"7k3qz5mxa2b4c6d8e9f0"
CORPUS_ELEAD = b"E-1042"
CORPUS_LEAD = "leads/marketplace_homepromatch_appointment.eml"
AUTHORISED = ["sales@demo.example", "north@demo.example", "south@demo.example"]
OUR_DOMAIN = "eleads.example"

CI_MESSAGE_ID_RE = re.compile(r"^<ci\.(E-\d+)\.[^<>@\s]+@(\S+)>$")
CANDIDATE_LINE_RE = re.compile(r"^\s*(\d+)\.\s+([A-Za-z0-9]+)\s+(.*)$", re.MULTILINE)
WAIT = 15.0  # seconds; every wait is bounded

Configure = Callable[..., Path]
Start = Callable[[Path], DaemonThread]


def corpus() -> Path:
    """The shared corpus, or a skip (a failure under CI=true)."""
    if not CORPUS.is_dir():
        if IN_CI:
            pytest.fail(f"corpus missing at {CORPUS} (CI=true: no skipping)")
        pytest.skip(f"shared corpus not found at {CORPUS}")
    return CORPUS


# --- the invented scenario (no corpus needed) ---------------------------------------

INVENTED_CSV = """\
id,first_name,last_name,email,phone,street,city,region,postal_code,country
C501,Marguerite,Thornbury,m.thornbury@example.org,(614) 555-0111,14 Juniper Ct,Dublin,OH,43017,US
C502,Martin,Thornberry,mthornberry@example.com,740-555-0122,9 Elm St,Delaware,OH,43015,US
C503,Priya,Raman,priya.raman@example.net,(614) 555-0133,77 Birch Ave,Columbus,OH,43215,US
C504,Oskar,Lindqvist,oskar.l@example.org,(614) 555-0144,3 Cedar Ln,Worthington,OH,43085,US
C505,M,Thornbury,,,,Dublin,OH,43017,US
"""


def invented_lead(n: int, *, first: str = "Martin", comments: str = "Gutters and fascia.") -> bytes:
    """A web-form lead for Martin Thornbury: fuzzy, Marguerite (C501: same phone and street)
    first, then "M Thornbury" (C505: an initial and the same postal code)."""
    return (
        "From: Website <forms@juniper-gutters.example>\r\n"
        "To: leads@eleads.example\r\n"
        f"Subject: New quote request #{n}\r\n"
        "Date: Mon, 23 Nov 2026 10:15:00 -0500\r\n"
        f"Message-ID: <quote-{n}@juniper-gutters.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"First Name: {first}\r\n"
        "Last Name: Thornbury\r\n"
        "Email: martin.thornbury@example.net\r\n"
        "Phone: (614) 555-0111\r\n"
        "Street: 14 Juniper Ct\r\n"
        "City: Dublin\r\n"
        "State: OH\r\n"
        "Zip: 43017\r\n"
        f"Comments: {comments}\r\n"
    ).encode()


# --- mail and database helpers ------------------------------------------------------


def smtp_send(port: int, raw: bytes, *, rcpt: str, sender: str) -> str:
    """One message over real SMTP; the spool id from the 250 answer."""
    raw = re.sub(rb"\r?\n", b"\r\n", raw)  # SMTP wants CRLF (Maildir files have LF)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        code, answer = client.mail(sender)
        assert code == 250, answer
        code, answer = client.rcpt(rcpt)
        assert code == 250, answer
        code, answer = client.data(raw)
        assert code == 250, answer
    text = answer.decode()
    assert "queued as" in text, text
    return text.rsplit(" ", 1)[-1]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def db() -> None:
    """This (test) thread's own connection to the daemon's database."""
    database_proxy.connect(reuse_if_open=True)


def prospect_count() -> int:
    db()
    return int(Prospect.select().count())


@dataclass(frozen=True)
class OutMail:
    """One file of an outbox Maildir."""

    path: Path
    raw: bytes
    message: EmailMessage

    @property
    def kind(self) -> str:
        return str(self.message["X-Eleads-Kind"] or "")

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part in {self.path}"
        return cast(str, cast(EmailMessage, body).get_content())


def read_maildir(folder: Path) -> list[OutMail]:
    if not (folder / "new").is_dir():
        return []
    box = mailbox.Maildir(folder, factory=None, create=False)
    out = []
    for key in box.iterkeys():
        raw = box.get_bytes(key)
        sub = "new" if (folder / "new" / key).exists() else "cur"
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        out.append(OutMail(folder / sub / key, raw, msg))
    return sorted(out, key=lambda m: m.path.stat().st_mtime_ns)


@dataclass(frozen=True)
class Issue:
    """What a reader of the Conversion Issue email knows."""

    elead_id: int
    public: str
    token: str
    reply_to: str
    message_id: str
    subject: str
    candidates: list[str]  # prospect ids in the order the email lists them
    names: dict[str, str]  # prospect id -> the name the email shows for it
    mail: OutMail


def parse_issue(mail: OutMail, *, domain: str = OUR_DOMAIN) -> Issue:
    msg = mail.message
    reply_to = parseaddr(str(msg["Reply-To"] or ""))[1]
    found = re.fullmatch(rf"leads\+r-([0-9a-z]+)@{re.escape(domain)}", reply_to)
    assert found, f"Reply-To {reply_to!r} is not leads+r-<token>@{domain}"
    token = found.group(1)
    assert len(token) >= 20, f"token {token!r}: fewer than 100 bits"  # >= 5 bits a character
    message_id = str(msg["Message-ID"] or "").strip()
    ident = CI_MESSAGE_ID_RE.match(message_id)
    assert ident and ident.group(2) == domain, f"Message-ID {message_id!r}: not <ci.E-<n>.…>"
    public = ident.group(1)
    subject = str(msg["Subject"] or "")
    assert re.search(rf"\b{public}\b", subject), subject
    assert str(msg["Auto-Submitted"]) == "auto-generated"
    text = mail.part("plain")
    assert public in text
    listing = text.split("Possible matches", 1)[1].split("To decide", 1)[0]
    rows = [
        (int(n), pid, rest.split("  - score")[0].strip())
        for n, pid, rest in CANDIDATE_LINE_RE.findall(listing)
    ]
    assert [n for n, _, _ in rows] == list(range(1, len(rows) + 1)), rows
    return Issue(
        elead_id=int(public.removeprefix("E-")),
        public=public,
        token=token,
        reply_to=reply_to,
        message_id=message_id,
        subject=subject,
        candidates=[pid for _, pid, _ in rows],
        names={pid: name for _, pid, name in rows},
        mail=mail,
    )


_SEQ = iter(range(1, 1_000_000))


def reply_bytes(
    issue: Issue,
    first_line: str,
    *,
    sender: str = "sales@demo.example",
    rcpt: str | None = None,
    extra_headers: str = "",
) -> tuple[str, bytes]:
    """A reply as a mail client writes it: command on top, the original quoted below."""
    message_id = f"<reply-{next(_SEQ)}.{time.time_ns()}@mail.demo.example>"
    quoted = "\r\n".join(f"> {line}" for line in issue.mail.part("plain").splitlines())
    raw = (
        f"From: Dana Whitfield <{sender}>\r\n"
        f"To: {rcpt or issue.reply_to}\r\n"
        f"Subject: Re: {issue.subject}\r\n"
        "Date: Mon, 23 Nov 2026 11:02:00 -0500\r\n"
        f"Message-ID: {message_id}\r\n"
        f"In-Reply-To: {issue.message_id}\r\n"
        f"References: {issue.message_id}\r\n"
        f"{extra_headers}"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{first_line}\r\n\r\nOn Mon, Nov 23, 2026 at 10:16 AM eLeads wrote:\r\n{quoted}\r\n"
    ).encode()
    return message_id, raw


class Harness:
    """One running daemon, and the test's view of it: SMTP in, Maildir and DB out."""

    def __init__(self, daemon: DaemonThread, config: Path) -> None:
        self.daemon = daemon
        self.config = config
        self.port = daemon.smtp_port
        self.outbox = daemon.settings.outbox_dir

    def send(self, raw: bytes, *, rcpt: str, sender: str) -> str:
        return smtp_send(self.port, raw, rcpt=rcpt, sender=sender)

    def wait_processed(self, spool_ids: list[str]) -> list[InboundMessage]:
        """Every message processed, and every email it caused written to the Maildir."""

        def rows() -> list[InboundMessage] | None:
            db()
            found = list(InboundMessage.select().where(InboundMessage.spool_id.in_(spool_ids)))
            return found if len(found) == len(spool_ids) else None

        found = cast(list[InboundMessage], wait_until(rows, f"processing of {spool_ids}"))

        def settled() -> bool:
            db()
            return not Notification.select().where(Notification.status == "queued").exists()

        wait_until(settled, "the outbox sender")
        by_id = {row.spool_id: row for row in found}
        return [by_id[s] for s in spool_ids]

    def deliver(self, raw: bytes, *, rcpt: str, sender: str) -> InboundMessage:
        return self.wait_processed([self.send(raw, rcpt=rcpt, sender=sender)])[0]

    def mails(self, kind: str | None = None, to: str | None = None) -> list[OutMail]:
        return [
            m
            for m in read_maildir(self.outbox)
            if (kind is None or m.kind == kind)
            and (to is None or parseaddr(str(m.message["To"]))[1].lower() == to)
        ]

    def answers(self, to: str | None = None) -> list[OutMail]:
        return self.mails("command_result", to)

    def lead(self, raw: bytes) -> Issue:
        """Send a lead that should match fuzzily; the Conversion Issue it causes."""
        row = self.deliver(raw, rcpt="leads@eleads.example", sender="forms@provider.example")
        db()
        elead = ELead.get(ELead.message == row)
        assert (row.outcome, elead.state) == ("fuzzy", "unconverted"), row.detail
        found = wait_until(
            lambda: [
                m
                for m in self.mails("conversion_issue")
                if str(m.message["X-Eleads-ELead"]) == elead.public_id
            ],
            f"the Conversion Issue email of {elead.public_id}",
        )
        assert len(found) == 1, [m.path for m in found]
        assert parseaddr(str(found[0].message["To"]))[1] == "sales@demo.example"
        return parse_issue(found[0])

    def reply(self, issue: Issue, first_line: str, **kw: Any) -> tuple[str, InboundMessage]:
        """Send a reply to the address it names; its Message-ID and inbound row."""
        message_id, raw = reply_bytes(issue, first_line, **kw)
        sender = kw.get("sender", "sales@demo.example")
        return message_id, self.deliver(raw, rcpt=kw.get("rcpt") or issue.reply_to, sender=sender)

    def elead(self, issue: Issue) -> ELead:
        db()
        return ELead.get_by_id(issue.elead_id)

    def token_row(self, issue: Issue) -> ReplyToken:
        db()
        return ReplyToken.get(ReplyToken.elead == issue.elead_id)

    def pid(self, issue: Issue) -> str | None:
        elead = self.elead(issue)
        return None if elead.prospect is None else str(elead.prospect.pid)


def account_overrides(**extra: Any) -> dict[str, Any]:
    return {
        "accounts": [
            {
                **BASE_CONFIG["accounts"][0],
                "notifications": {
                    "received": ["sales@demo.example"],
                    "conversion_issue": ["sales@demo.example"],
                },
                "authorised_senders": AUTHORISED,
            }
        ],
        **extra,
    }


def import_before_start(config: Path, csv_file: Path) -> None:
    """Import prospects into the data dir, as an admin does before ``eleads serve``."""
    settings = load_settings(config)
    runtime = open_runtime(settings)
    try:
        report = import_prospects(csv_file, account="demo", default_region="US")
        assert report.imported > 0 and not report.problems, report
    finally:
        runtime.close()


def csv_ids(text: str) -> set[str]:
    return {line.split(",", 1)[0] for line in text.splitlines()[1:] if line.strip()}


@pytest.fixture(autouse=True)
def _close_test_connection() -> Iterator[None]:
    yield
    if database_proxy.obj is not None and not database_proxy.is_closed():
        database_proxy.close()


@pytest.fixture
def invented(make_config: Configure, run_daemon: Start, tmp_path: Path) -> Callable[..., Harness]:
    """A daemon over the invented prospects (no corpus needed)."""

    def _start(**extra: Any) -> Harness:
        config = make_config(account_overrides(**extra))
        csv_file = tmp_path / "invented.csv"
        csv_file.write_text(INVENTED_CSV, encoding="utf-8")
        import_before_start(config, csv_file)
        return Harness(run_daemon(config), config)

    return _start


@pytest.fixture
def with_corpus(make_config: Configure, run_daemon: Start) -> Callable[[], Harness]:
    """A daemon over the corpus's prospects.csv."""

    def _start() -> Harness:
        root = corpus()
        config = make_config(account_overrides())
        import_before_start(config, root / "prospects.csv")
        return Harness(run_daemon(config), config)

    return _start


def assert_answer(mail: OutMail, *, to: str, in_reply_to: str) -> None:
    """A command_result email: to the sender, threaded under the reply, auto-generated."""
    msg = mail.message
    assert mail.kind == "command_result"
    assert parseaddr(str(msg["To"]))[1].lower() == to
    assert b"\nAuto-Submitted: auto-generated\n" in mail.raw, mail.path
    assert str(msg["In-Reply-To"]).strip() == in_reply_to, (msg["In-Reply-To"], in_reply_to)
    assert in_reply_to in str(msg["References"] or "")
    assert str(msg["Subject"]).lower().startswith("re:")


def check_command(
    harness: Harness,
    issue: Issue,
    command: dict[str, Any],
    *,
    sender: str,
    reply_id: str,
    known: set[str],
    before: set[Path],
    prospects_before: int,
) -> None:
    """The effect of one processed reply: state, prospect, token, and its one answer."""
    elead = harness.elead(issue)
    new = [m for m in harness.mails() if m.path not in before]
    assert all(m.kind == "command_result" for m in new), [m.kind for m in new]
    if sender not in AUTHORISED:
        assert (elead.state, elead.prospect) == ("unconverted", None)
        assert len(new) <= 1, "an unauthorised sender gets one short answer at most"
        assert all(parseaddr(str(m.message["To"]))[1] == sender for m in new)
        assert harness.token_row(issue).used_at is None
        assert prospect_count() == prospects_before
        return
    assert len(new) == 1, [m.path for m in new]
    answer = new[0]
    assert_answer(answer, to=sender, in_reply_to=reply_id)
    text = answer.part("plain")
    action = command["action"]
    spent = harness.token_row(issue).used_at is not None
    if action == "use":
        number, wanted = command["candidate"], command["prospect"]
        target = issue.candidates[number - 1] if number is not None else wanted
        if target.upper() in known:
            assert (elead.state, harness.pid(issue)) == ("converted", target.upper()), text
            assert target.upper() in text and spent
        else:  # no such prospect: answered, nothing applied, the address stays usable
            assert (elead.state, elead.prospect) == ("unconverted", None), text
            assert target in text and not spent
    elif action == "new":
        pid = harness.pid(issue)
        assert elead.state == "converted" and pid is not None, text
        assert pid not in known and pid in text and spent
        assert prospect_count() == prospects_before + 1
    elif action == "ignore":
        assert (elead.state, elead.prospect) == ("ignored", None), text
        assert spent
    else:  # help, invalid: nothing changes, the instructions again, the address stays usable
        assert action in ("help", "invalid"), action
        assert (elead.state, elead.prospect) == ("unconverted", None), text
        assert "USE" in text and "NEW" in text and "IGNORE" in text
        assert not spent
    if action != "new":
        assert prospect_count() == prospects_before


# --- the corpus flow ----------------------------------------------------------------


def test_corpus_lead_is_fuzzy_with_the_three_kaminskis(with_corpus: Callable[[], Harness]) -> None:
    harness = with_corpus()
    issue = harness.lead((CORPUS / CORPUS_LEAD).read_bytes())
    assert sorted(issue.candidates) == ["P1095", "P1187", "P1240"], issue.candidates
    assert issue.candidates[0] == "P1187"
    # One received and one conversion_issue email, nothing else yet.
    assert sorted(m.kind for m in harness.mails()) == ["conversion_issue", "received"]


def test_corpus_conversion_issue_names_each_candidate(with_corpus: Callable[[], Harness]) -> None:
    """The reader must see who each candidate is (as in _conversion_issue_original.txt)."""
    harness = with_corpus()
    issue = harness.lead((CORPUS / CORPUS_LEAD).read_bytes())
    expected = {"P1187": "Roberta Kaminski", "P1240": "Robert Kaminsky", "P1095": "R Kaminski"}
    assert issue.names == expected, issue.names
    html = issue.mail.part("html")
    assert all(name in html for name in expected.values())


REPLY_FILES = sorted((CORPUS / "replies").glob("*.eml")) if CORPUS.is_dir() else []


@pytest.mark.parametrize(
    "eml",
    [pytest.param(p, id=p.stem) for p in REPLY_FILES] or [pytest.param(None, id="no-corpus")],
)
def test_corpus_reply(with_corpus: Callable[[], Harness], eml: Path | None) -> None:
    harness = with_corpus()
    assert eml is not None
    command = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))["command"]
    issue = harness.lead((CORPUS / CORPUS_LEAD).read_bytes())
    raw = eml.read_bytes()
    assert CORPUS_TOKEN in raw
    raw = raw.replace(CORPUS_TOKEN, issue.token.encode())
    raw = raw.replace(CORPUS_ELEAD, issue.public.encode())
    head = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    sender = parseaddr(str(head["From"]))[1].lower()
    before, prospects_before = {m.path for m in harness.mails()}, prospect_count()

    row = harness.deliver(raw, rcpt=issue.reply_to, sender=sender)

    assert row.kind == "reply", (row.kind, row.detail)
    check_command(
        harness,
        issue,
        command,
        sender=sender,
        reply_id=str(head["Message-ID"]).strip(),
        known=csv_ids((CORPUS / "prospects.csv").read_text(encoding="utf-8")),
        before=before,
        prospects_before=prospects_before,
    )


@pytest.mark.parametrize("name", ["ooo_outlook_to_reply_address", "ooo_german_latin1_qp"])
def test_corpus_auto_reply_to_the_reply_address_is_dropped(
    with_corpus: Callable[[], Harness], name: str
) -> None:
    harness = with_corpus()
    issue = harness.lead((CORPUS / CORPUS_LEAD).read_bytes())
    raw = (CORPUS / "noise" / f"{name}.eml").read_bytes()
    raw = raw.replace(CORPUS_TOKEN, issue.token.encode()).replace(
        CORPUS_ELEAD, issue.public.encode()
    )
    row = harness.deliver(raw, rcpt=issue.reply_to, sender="")
    assert (row.kind, row.outcome) == ("auto_reply", "dropped"), row.detail
    assert harness.answers() == []
    assert (harness.elead(issue).state, harness.token_row(issue).used_at) == ("unconverted", None)


# --- the same flow without the corpus -------------------------------------------------


def test_invented_lead_is_fuzzy(invented: Callable[..., Harness]) -> None:
    harness = invented()
    issue = harness.lead(invented_lead(1))
    assert issue.candidates[0] == "C501"
    assert issue.names["C501"] == "Marguerite Thornbury", issue.names


INVENTED_REPLIES = [
    ("USE 1", "use", 1, None),
    ("use 2", "use", 2, None),
    ("USE C503", "use", None, "C503"),
    ("USE C999", "use", None, "C999"),
    ("NEW", "new", None, None),
    ("Ignore - spam", "ignore", None, None),
    ("HELP", "help", None, None),
    ("1", "invalid", None, None),
]


@pytest.mark.parametrize(
    ("sender", "first_line", "action", "candidate", "prospect"),
    [("north@demo.example", *case) for case in INVENTED_REPLIES]
    + [("intruder@elsewhere.example", "USE 1", "use", 1, None)],
    ids=lambda v: str(v),
)
def test_invented_reply(
    invented: Callable[..., Harness],
    sender: str,
    first_line: str,
    action: str,
    candidate: int | None,
    prospect: str | None,
) -> None:
    harness = invented()
    issue = harness.lead(invented_lead(1))
    if candidate is not None:
        assert len(issue.candidates) >= candidate, issue.candidates
    before, prospects_before = {m.path for m in harness.mails()}, prospect_count()
    reply_id, row = harness.reply(issue, first_line, sender=sender)
    assert row.kind == "reply"
    check_command(
        harness,
        issue,
        {"action": action, "candidate": candidate, "prospect": prospect},
        sender=sender,
        reply_id=reply_id,
        known=csv_ids(INVENTED_CSV),
        before=before,
        prospects_before=prospects_before,
    )


# --- refusals -----------------------------------------------------------------------


def only_answer(harness: Harness, before: set[Path], *, to: str, reply_id: str) -> str:
    new = [m for m in harness.mails() if m.path not in before]
    assert len(new) == 1, [(m.kind, m.path) for m in new]
    assert_answer(new[0], to=to, in_reply_to=reply_id)
    return new[0].part("plain")


def test_wrong_sender_changes_nothing_and_the_right_one_still_can(
    invented: Callable[..., Harness],
) -> None:
    harness = invented()
    issue = harness.lead(invented_lead(1))
    _, row = harness.reply(issue, "USE 1", sender="intruder@elsewhere.example")
    assert row.kind == "reply"
    assert len(harness.answers("intruder@elsewhere.example")) <= 1
    assert harness.answers("sales@demo.example") == []
    assert (harness.elead(issue).state, harness.token_row(issue).used_at) == ("unconverted", None)
    harness.reply(issue, "USE 1")
    assert (harness.elead(issue).state, harness.pid(issue)) == ("converted", "C501")


def test_reused_token_is_answered_already_used(invented: Callable[..., Harness]) -> None:
    harness = invented()
    issue = harness.lead(invented_lead(1))
    harness.reply(issue, "USE 1")
    assert harness.pid(issue) == "C501"
    used_at = harness.token_row(issue).used_at
    before, prospects_before = {m.path for m in harness.mails()}, prospect_count()
    reply_id, _ = harness.reply(issue, "NEW", sender="south@demo.example")
    text = only_answer(harness, before, to="south@demo.example", reply_id=reply_id)
    assert "already used" in text, text
    assert (harness.elead(issue).state, harness.pid(issue)) == ("converted", "C501")
    assert prospect_count() == prospects_before
    assert harness.token_row(issue).used_at == used_at


def test_expired_token_is_refused(invented: Callable[..., Harness]) -> None:
    harness = invented()
    issue = harness.lead(invented_lead(1))
    db()
    ReplyToken.update(expires_at=datetime(2020, 1, 1)).where(
        ReplyToken.elead == issue.elead_id
    ).execute()
    before = {m.path for m in harness.mails()}
    reply_id, _ = harness.reply(issue, "USE 1")
    text = only_answer(harness, before, to="sales@demo.example", reply_id=reply_id)
    assert "expired" in text, text
    assert (harness.elead(issue).state, harness.elead(issue).prospect) == ("unconverted", None)
    assert harness.token_row(issue).used_at is None


def test_tampered_token_is_unknown(invented: Callable[..., Harness]) -> None:
    harness = invented()
    issue = harness.lead(invented_lead(1))
    i = len(issue.token) // 2
    swapped = "a" if issue.token[i] != "a" else "b"
    tampered = issue.token[:i] + swapped + issue.token[i + 1 :]
    before = {m.path for m in harness.mails()}
    reply_id, row = harness.reply(issue, "USE 1", rcpt=f"leads+r-{tampered}@{OUR_DOMAIN}")
    assert row.kind == "reply"
    text = only_answer(harness, before, to="sales@demo.example", reply_id=reply_id)
    assert "not known" in text, text
    assert (harness.elead(issue).state, harness.token_row(issue).used_at) == ("unconverted", None)
    # The real address still works.
    harness.reply(issue, "USE 1")
    assert harness.pid(issue) == "C501"


def test_reply_after_cli_convert_is_answered_already_converted(
    invented: Callable[..., Harness],
) -> None:
    harness = invented()
    issue = harness.lead(invented_lead(1))
    done = subprocess.run(
        [*ELEADS, "convert", issue.public, "--use", "C503", "--config", str(harness.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert harness.pid(issue) == "C503"
    before, prospects_before = {m.path for m in harness.mails()}, prospect_count()
    reply_id, _ = harness.reply(issue, "USE 1")
    text = only_answer(harness, before, to="sales@demo.example", reply_id=reply_id)
    assert "already converted" in text, text
    assert (harness.elead(issue).state, harness.pid(issue)) == ("converted", "C503")
    assert prospect_count() == prospects_before


def test_auto_reply_to_the_reply_address_is_dropped(invented: Callable[..., Harness]) -> None:
    harness = invented()
    issue = harness.lead(invented_lead(1))
    raw = (
        "Return-Path: <>\r\n"
        "From: Dana Whitfield <sales@demo.example>\r\n"
        f"To: <{issue.reply_to}>\r\n"
        f"Subject: Automatic reply: {issue.subject}\r\n"
        "Date: Mon, 23 Nov 2026 11:00:00 -0500\r\n"
        "Message-ID: <ooo-1@ex01.demo.example>\r\n"
        f"In-Reply-To: {issue.message_id}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "NEW\r\nI am out of the office until Monday. USE 1\r\n"
    ).encode()
    row = harness.deliver(raw, rcpt=issue.reply_to, sender="")
    assert (row.kind, row.outcome) == ("auto_reply", "dropped"), row.detail
    assert harness.answers() == []
    assert (harness.elead(issue).state, harness.token_row(issue).used_at) == ("unconverted", None)


def test_rate_limit_on_answers_to_one_sender(invented: Callable[..., Harness]) -> None:
    harness = invented()  # replies.answers_per_sender: 20 (the default)
    issue = harness.lead(invented_lead(1))
    spammer = "spammer@elsewhere.example"
    raws = []
    for n in range(21):
        rcpt = issue.reply_to if n % 3 else f"leads+r-{'x' * 20}{n:06d}@{OUR_DOMAIN}"
        raws.append((rcpt, reply_bytes(issue, f"garbage {n}", sender=spammer, rcpt=rcpt)[1]))
    ids = [harness.send(raw, rcpt=rcpt, sender=spammer) for rcpt, raw in raws]
    rows = harness.wait_processed(ids)
    assert {r.kind for r in rows} == {"reply"}
    assert len(harness.answers(spammer)) == 20
    assert (harness.elead(issue).state, harness.token_row(issue).used_at) == ("unconverted", None)
    # The limit is per sender: the account's own people are still answered.
    reply_id, _ = harness.reply(issue, "USE 1")
    assert [str(m.message["In-Reply-To"]) for m in harness.answers("sales@demo.example")] == [
        reply_id
    ]
    assert harness.pid(issue) == "C501"


# --- two instances answering each other ---------------------------------------------


@dataclass
class ChildDaemon:
    """``eleads serve`` in a child process (its own database binding)."""

    config: Path
    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes]

    def outbox_rows(self) -> list[dict[str, Any]]:
        done = subprocess.run(
            [*ELEADS, "outbox", "--json", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return cast(list[dict[str, Any]], json.loads(done.stdout))

    def inbound(self, spool_id: str) -> tuple[str, str] | None:
        url = load_settings(self.config).database_url
        sql = "SELECT kind, outcome FROM inbound_message WHERE spool_id = ?"
        rows = query(url, sql, (spool_id,))
        return None if not rows else (str(rows[0][0]), str(rows[0][1]))

    def queued(self) -> int:
        url = load_settings(self.config).database_url
        return int(query(url, "SELECT COUNT(*) FROM notification WHERE status = 'queued'")[0][0])

    def deliver(self, raw: bytes, *, rcpt: str, sender: str) -> tuple[str, str]:
        spool_id = smtp_send(self.port, raw, rcpt=rcpt, sender=sender)
        found = wait_until(lambda: self.inbound(spool_id), f"processing of {spool_id}")
        wait_until(lambda: self.queued() == 0, "the child's outbox sender")
        return cast(tuple[str, str], found)


@pytest.fixture
def child_daemon(make_config: Configure, tmp_path: Path) -> Iterator[Callable[..., ChildDaemon]]:
    started: list[ChildDaemon] = []

    def _start(**extra: Any) -> ChildDaemon:
        port = free_port()
        data_dir = tmp_path / "var-child"
        config = make_config(
            account_overrides(
                data_dir=str(data_dir), smtp={"host": "127.0.0.1", "port": port}, **extra
            ),
            name="child.yaml",
        )
        csv_file = tmp_path / "child.csv"
        csv_file.write_text(INVENTED_CSV, encoding="utf-8")
        command = ["prospects", "import", str(csv_file), "--account", "demo"]
        imported = subprocess.run(
            [*ELEADS, *command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert imported.returncode == 0, imported.stderr
        log = (tmp_path / "child.log").open("wb")
        proc = subprocess.Popen([*ELEADS, "serve", "--config", str(config)], stdout=log, stderr=log)
        child = ChildDaemon(config, data_dir, port, proc)
        started.append(child)

        def listening() -> bool:
            assert proc.poll() is None, (tmp_path / "child.log").read_text()
            try:
                socket_ok = smtplib.SMTP("127.0.0.1", port, timeout=2)
            except OSError:
                return False
            socket_ok.quit()
            return True

        wait_until(listening, "the child daemon's SMTP port", timeout=30)
        return child

    yield _start
    for child in started:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=10)


def redirected(mail: OutMail, to: str) -> bytes:
    """An email redirected (e.g. by a mailbox rule) to ``to``: the MTA adds Delivered-To."""
    return f"Delivered-To: {to}\r\n".encode() + mail.raw


def test_two_instances_never_answer_each_other(
    invented: Callable[..., Harness], child_daemon: Callable[..., ChildDaemon]
) -> None:
    other = "b-instance.example"
    b = child_daemon(outbound={"from_address": f"leads@{other}", "reply_domain": other})
    a = invented()
    # A: a Conversion Issue, and a command_result for a HELP reply.
    issue_a = a.lead(invented_lead(1))
    a.reply(issue_a, "HELP")
    (result_a,) = a.answers("sales@demo.example")
    assert b"\nAuto-Submitted: auto-generated\n" in result_a.raw
    # B: the same.
    smtp_send(b.port, invented_lead(1), rcpt="leads@eleads.example", sender="forms@x.example")
    b_box = b.data_dir / "outbox"
    issue_b = parse_issue(
        wait_until(
            lambda: [m for m in read_maildir(b_box) if m.kind == "conversion_issue"],
            "B's Conversion Issue",
        )[0],
        domain=other,
    )
    _, raw = reply_bytes(issue_b, "HELP")
    b.deliver(raw, rcpt=issue_b.reply_to, sender="sales@demo.example")
    (result_b,) = [m for m in read_maildir(b_box) if m.kind == "command_result"]
    rows_a, rows_b = len(a.mails()), b.outbox_rows()
    assert len(rows_b) == len(read_maildir(b_box)) == 3  # received, conversion_issue, result

    # Each instance's answer lands at the other one's reply address: both drop it.
    kind_b = b.deliver(
        redirected(result_a, issue_b.reply_to), rcpt=issue_b.reply_to, sender="sales@demo.example"
    )
    row_a = a.deliver(
        redirected(result_b, issue_a.reply_to), rcpt=issue_a.reply_to, sender="sales@demo.example"
    )
    assert kind_b == ("auto_reply", "dropped")
    assert (row_a.kind, row_a.outcome) == ("auto_reply", "dropped"), row_a.detail
    assert b.outbox_rows() == rows_b
    assert len(a.mails()) == rows_a
    db()
    assert Notification.select().count() == rows_a
    assert a.elead(issue_a).state == "unconverted"


# --- hostile lead fields ------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


def hostile_html_lead() -> bytes:
    cells = [
        ("First Name", f"Martin {SCRIPT}"),
        ("Last Name", "Thornbury"),
        ("Email", "martin.thornbury@example.net"),
        ("Phone", "(614) 555-0111"),
        ("Comments", f"{SCRIPT} {IMG}"),
    ]
    escape = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
    rows = "".join(
        f"<tr><td>{k}</td><td>{''.join(escape.get(c, c) for c in v)}</td></tr>" for k, v in cells
    )
    return (
        "From: Website <forms@juniper-gutters.example>\r\nTo: leads@eleads.example\r\n"
        "Subject: New quote request (HTML)\r\nMessage-ID: <quote-html@juniper-gutters.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f"<html><body><table>{rows}</table></body></html>\r\n"
    ).encode()


def hostile_unparseable_lead() -> bytes:
    """No usable email or phone: failed_parse, and the problems quote the hostile phone."""
    return (
        "From: Website <forms@juniper-gutters.example>\r\nTo: leads@eleads.example\r\n"
        "Subject: New quote request (broken)\r\n"
        "Message-ID: <quote-broken@juniper-gutters.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"First Name: Martin {SCRIPT}\r\nLast Name: Thornbury\r\nStreet: 14 Juniper Ct\r\n"
        f"City: Dublin\r\nZip: 43017\r\nPhone: call me {IMG}\r\nComments: {SCRIPT} {IMG}\r\n"
    ).encode()


def test_hostile_lead_fields_reach_the_html_escaped(invented: Callable[..., Harness]) -> None:
    harness = invented()
    leads = [
        invented_lead(7, first=f"Martin{SCRIPT}", comments=f"{SCRIPT} {IMG}"),
        hostile_html_lead(),
        hostile_unparseable_lead(),
    ]
    ids = [harness.send(raw, rcpt="leads@eleads.example", sender="f@x.example") for raw in leads]
    rows = harness.wait_processed(ids)
    db()
    states = [ELead.get(ELead.message == row).state for row in rows]
    assert states[2] == "failed_parse", states
    mails = harness.mails()
    kinds = {m.kind for m in mails}
    assert {"received", "conversion_issue"} <= kinds, kinds
    shown = 0
    for mail in mails:
        html = mail.part("html")
        lowered = html.lower()
        assert "<script" not in lowered and "<img" not in lowered, (mail.kind, mail.path)
        shown += "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        # The text part carries the text as it is; headers stay one line each.
        assert "\n" not in str(mail.message["Subject"])
    assert shown >= 2, "the hostile comments should be shown, escaped"


# --- a bug: CLI writes next to a busy daemon ----------------------------------------


@pytest.mark.parametrize("operation", ["convert", "import"])
def test_cli_write_waits_while_the_daemon_holds_the_write_lock(
    invented: Callable[..., Harness],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    operation: str,
) -> None:
    """`eleads convert` / `eleads prospects import` while the daemon commits a batch.

    The daemon holds SQLite's write lock for the length of a batch. A CLI transaction
    that reads first and writes later (BEGIN DEFERRED) then gets "database is locked"
    at once: SQLite cannot wait (busy_timeout) to upgrade a read transaction. It must
    take the write lock up front (BEGIN IMMEDIATE) and wait its turn instead.
    """
    harness = invented()
    issue = harness.lead(invented_lead(1))
    inside, release = threading.Event(), threading.Event()
    real_record = Pipeline._record

    def slow_record(self: Pipeline, item: Any) -> Any:
        outcome = real_record(self, item)  # the write lock is held from here to the commit
        inside.set()
        release.wait(1.0)
        return outcome

    monkeypatch.setattr(Pipeline, "_record", slow_record)
    spool_id = harness.send(
        invented_lead(2, first="Oskar"), rcpt="leads@x.example", sender="f@x.example"
    )
    assert inside.wait(WAIT), "the daemon never started its transaction"
    csv_file = tmp_path / "more.csv"
    csv_file.write_text("id,first_name,last_name,email\nC601,Ada,Birch,ada@example.org\n")
    db()
    try:
        if operation == "convert":  # what `eleads convert E-n --use C503` runs
            convert_manual(issue.elead_id, use="C503", actor="cli:test")
        else:  # what `eleads prospects import more.csv --account demo` runs
            import_prospects(csv_file, account="demo", default_region="US")
    finally:
        release.set()
    harness.wait_processed([spool_id])
    if operation == "convert":
        assert harness.pid(issue) == "C503"
    else:
        assert Prospect.select().where(Prospect.pid == "C601").exists()
