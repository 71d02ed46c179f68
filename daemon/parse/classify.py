"""What kind of message is this: bounce, auto-reply, reply command, lead or unknown.

Order is data (``RULES``, like Mailman's chains), and the order matters:

1. bounces first: a DSN or a MAILER-DAEMON notice also carries ``Auto-Submitted``;
2. auto-replies: an out-of-office sent to our ``+r-<token>`` address must never be read
   as a command (mail loops). ``Auto-Submitted: auto-generated``, ``Precedence: bulk`` and
   similar are *weak* signs: web forms and newsletters carry them too, so they make an
   auto-reply only on a message the reply rules would otherwise read as a command;
3. replies to a Conversion Issue email: the ``+r-<token>`` recipient, else In-Reply-To or
   References naming one of our Conversion Issue Message-IDs, else an eLead id such as
   ``E-1042`` in a subject starting with ``Re:``;
4. a lead: the caller's ``lead_test`` (the lead parsers found lead data);
5. otherwise unknown.

Each test is a small pure function of the ``DecodedMessage``; ``classify`` returns a value
and never raises on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from daemon.parse.model import DecodedMessage, Kind

#: ``leads+r-<token>@...``: the token is lower-case base32 (Crockford), so ``[0-9a-z]+``.
REPLY_TOKEN_RE = re.compile(r"\+r-([0-9a-z]+)@")
#: Message-ID local part of our Conversion Issue emails: ``ci.<elead id>.<stamp>@<domain>``.
CONVERSION_ISSUE_ID_RE = re.compile(r"(?:^|[<\s,])ci\.(E-\d+)\.[^@\s>]*@", re.IGNORECASE)
ELEAD_ID_RE = re.compile(r"\bE-(\d{1,12})\b")
REPLY_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|aw|sv|antw|vs|ref|rif|odp|r)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE
)

_DAEMON_LOCALS = frozenset({"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster"})
_FAILURE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered mail|delivery status notification|delivery (?:has )?fail|"
    r"mail delivery (?:failed|system|subsystem)|returned mail|failure notice|"
    r"non[- ]?delivery|unzustellbar|nicht zugestellt|non remis|no se puede entregar",
    re.IGNORECASE,
)
_FAILURE_TEXT_RE = re.compile(
    r"could not be delivered|couldn't be delivered|delivery (?:to .{1,200}? )?(?:has )?failed|"
    r"failed permanently|permanent (?:error|failure)|no such (?:user|mailbox)|user unknown|"
    r"mailbox (?:is )?(?:full|unavailable|not found)|message (?:was )?(?:refused|rejected)|"
    r"\b5\.\d{1,3}\.\d{1,3}\b|\b55\d[ -]",
    re.IGNORECASE,
)
_AUTO_SUBJECT_RE = re.compile(
    r"^\s*(?:automatic reply|auto[- ]?reply|auto[- ]?response|autosvar|out of (?:the )?office|"
    r"abwesenheit|automatische antwort|r[ée]ponse automatique|absence|respuesta autom[áa]tica|"
    r"risposta automatica|automatisch antwoord|afwezig|fraværsmelding|frånvaro|"
    r"vacation (?:reply|response)|on vacation)\b",
    re.IGNORECASE,
)
_REPORT_RE = re.compile(r"report-type\s*=\s*\"?([a-z-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Classification:
    kind: Kind
    rule: str  # which test decided, e.g. "bounce:dsn"; "unknown" when none did


def _header(msg: DecodedMessage, name: str) -> str:
    return (msg.header(name) or "").strip().lower()


def _report_type(msg: DecodedMessage) -> str | None:
    ctype = _header(msg, "content-type")
    if not ctype.startswith("multipart/report"):
        return None
    found = _REPORT_RE.search(ctype)
    return found.group(1).lower() if found else ""


def is_dsn(msg: DecodedMessage) -> bool:
    """RFC 3464 delivery status report, at the top or nested (Exchange wraps it)."""
    if _report_type(msg) == "delivery-status":
        return True
    return any(p.content_type.endswith("delivery-status") for p in msg.parts)


def is_mailer_daemon(msg: DecodedMessage) -> bool:
    local = (msg.from_addr or "").partition("@")[0]
    if local in ("mailer-daemon", "mailerdaemon", "mail-daemon"):
        return True
    return local in _DAEMON_LOCALS and bool(_FAILURE_TEXT_RE.search(msg.text[:5000]))


def is_failure_notice(msg: DecodedMessage) -> bool:
    """A non-DSN bounce: failure subject plus failure text, or X-Failed-Recipients."""
    if msg.header("x-failed-recipients"):
        return True
    if not _FAILURE_SUBJECT_RE.search(msg.subject[:300]):
        return False
    return bool(_FAILURE_TEXT_RE.search(msg.text[:5000]))


def _auto_submitted(msg: DecodedMessage) -> str:
    return _header(msg, "auto-submitted").split(";")[0].strip()


def has_strong_auto_header(msg: DecodedMessage) -> bool:
    """RFC 3834 and the de-facto autoresponder headers (not ``auto-generated``)."""
    value = _auto_submitted(msg)
    if value and value not in ("no", "auto-generated"):
        return True
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder", "x-auto-reply"):
        if msg.header(name) is not None and _header(msg, name) not in ("no", "false", "0"):
            return True
    return _header(msg, "precedence") == "auto_reply" or _report_type(msg) == (
        "disposition-notification"  # read receipt (MDN)
    )


def has_auto_subject(msg: DecodedMessage) -> bool:
    return bool(_AUTO_SUBJECT_RE.search(REPLY_PREFIX_RE.sub("", msg.subject[:300])))


def has_weak_auto_sign(msg: DecodedMessage) -> bool:
    return (
        _auto_submitted(msg) == "auto-generated"
        or _header(msg, "precedence") in ("bulk", "junk", "list")
        or msg.header("x-auto-response-suppress") is not None
        or _header(msg, "return-path") == "<>"
    )


def reply_token(msg: DecodedMessage) -> str | None:
    """The token of our ``+r-<token>`` reply address among the recipients, if any."""
    for address in msg.to:
        found = REPLY_TOKEN_RE.search(address)
        if found:
            return found.group(1)
    return None


def referenced_elead(msg: DecodedMessage) -> str | None:
    """The eLead id of a Conversion Issue email named in In-Reply-To/References."""
    refs = " ".join((msg.header("in-reply-to") or "", msg.header("references") or ""))
    found = CONVERSION_ISSUE_ID_RE.search(refs[-8000:])
    return found.group(1).upper() if found else None


def subject_elead(msg: DecodedMessage) -> str | None:
    """``E-1042`` in a subject that starts with a reply prefix (Re:, AW:, SV: ...)."""
    if not REPLY_PREFIX_RE.match(msg.subject):
        return None
    found = ELEAD_ID_RE.search(msg.subject[:500])
    return f"E-{found.group(1)}" if found else None


def answers_us(msg: DecodedMessage) -> bool:
    """Would the reply rules below take this message as an answer to a Conversion Issue?"""
    return bool(reply_token(msg) or referenced_elead(msg) or subject_elead(msg))


def weak_auto_reply(msg: DecodedMessage) -> bool:
    """Weak signs count only where a command could be read: a web form's auto-generated
    lead, a newsletter and a forwarded lead go on to the lead parsers."""
    return has_weak_auto_sign(msg) and answers_us(msg)


Test = Callable[[DecodedMessage], bool]

#: (kind, rule name, test) in the order they are tried; the first test that holds decides.
RULES: tuple[tuple[Kind, str, Test], ...] = (
    ("bounce", "bounce:dsn", is_dsn),
    ("bounce", "bounce:mailer-daemon", is_mailer_daemon),
    ("bounce", "bounce:failure-notice", is_failure_notice),
    ("auto_reply", "auto_reply:headers", has_strong_auto_header),
    ("auto_reply", "auto_reply:subject", has_auto_subject),
    ("auto_reply", "auto_reply:weak-signs-on-reply", weak_auto_reply),
    ("reply", "reply:token", lambda m: reply_token(m) is not None),
    ("reply", "reply:in-reply-to", lambda m: referenced_elead(m) is not None),
    ("reply", "reply:subject-elead", lambda m: subject_elead(m) is not None),
)


def classify(msg: DecodedMessage, *, lead_test: Test | None = None) -> Classification:
    """First matching rule of ``RULES``, then ``lead_test``, else unknown."""
    for kind, rule, test in RULES:
        if test(msg):
            return Classification(kind, rule)
    if lead_test is not None and lead_test(msg):
        return Classification("lead", "lead")
    return Classification("unknown", "unknown")
