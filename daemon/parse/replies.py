"""The command in a reply to a Conversion Issue email.

The command is the first non-blank line that is not quoted text. Quote stripping libraries
(talon, email_reply_parser) miss Outlook's From:/Sent:/To:/Subject: block, the OWA
``divRplyFwdMsg``/``appendonsend`` markers, Gmail's "On ... wrote:" wrapped over two lines
and non-English attribution lines, so the markers are listed here as data and tested with
every corpus reply. The Subject is read only when the body holds nothing unquoted.
"""

from __future__ import annotations

import re
from typing import Any

from daemon.parse.classify import REPLY_PREFIX_RE, reply_token
from daemon.parse.htmltext import html_to_text
from daemon.parse.model import DecodedMessage

ACTIONS = ("use", "new", "ignore", "help")

#: A line that starts quoted text (everything from it on is the message being answered).
QUOTE_START_RES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^-{2,}\s*(?:original message|ursprüngliche nachricht|message d'origine|"
        r"mensaje original|oprindelig meddelelse|opprinnelig melding|originalmeddelande|"
        r"oorspronkelijk bericht|messaggio originale)\s*-{2,}",
        r"^-{2,}\s*(?:forwarded message|weitergeleitete nachricht|message transféré|"
        r"mensaje reenviado|videresendt meddelelse)\s*-{2,}",
        r"^_{10,}\s*$",
        r"^begin forwarded message:",
        r"^\*?(?:from|von|de|fra|van|da|från|od|от)\s*:\*?\s+\S",
        r"^on\b.{0,300}\bwrote:?\s*$",
        r"^am\b.{0,300}\bschrieb\b.{0,200}:\s*$",
        r"^le\b.{0,300}\ba écrit\s*:\s*$",
        r"^el\b.{0,300}\bescribió\s*:\s*$",
        r"^(?:den|d\.)\b.{0,300}\bskrev\b.{0,200}:\s*$",
        r"^op\b.{0,300}\bschreef\b.{0,200}:\s*$",
        r"^il\b.{0,300}\bha scritto\s*:\s*$",
        r"^em\b.{0,300}\bescreveu\s*:\s*$",
        r"^--\s*$",  # signature separator ("-- ", often sent as "--")
    )
)
#: Attribution lines that mail clients wrap: the first half on its own line.
WRAPPED_START_RE = re.compile(r"^(?:on|am|le|el|den|op|il|em)\s", re.IGNORECASE)
WRAPPED_END_RE = re.compile(
    r"(?:wrote|schrieb|a écrit|escribió|skrev|schreef|ha scritto|escreveu)\b.{0,200}:?\s*$",
    re.IGNORECASE,
)
#: Where quoted text starts in HTML (Gmail, Outlook on the web, Thunderbird, Apple, Yahoo).
HTML_QUOTE_RE = re.compile(
    r"<blockquote|class=\"?gmail_quote|id=\"?(?:divRplyFwdMsg|appendonsend)|"
    r"class=\"?moz-cite-prefix|yahoo_quoted|id=\"?OLK_SRC_BODY_SECTION",
    re.IGNORECASE,
)
_INVISIBLE = str.maketrans("", "", "\ufeff\u200b\u200c\u200d\u2060")
_USE_ARG_RE = re.compile(r"^#?(\d{1,6}|[A-Za-z][A-Za-z0-9_-]{0,63})$")


def _is_quote_start(line: str, following: list[str]) -> bool:
    if any(rx.search(line) for rx in QUOTE_START_RES):
        return True
    if WRAPPED_START_RE.match(line):  # "On Tue, ... <addr" / "wrote:" on the next line
        rest = " ".join(following[:2])
        return bool(WRAPPED_END_RE.search(line + " " + rest[:400]))
    return False


def first_fresh_line(text: str) -> str | None:
    """The first non-blank line before any quoted text; None when there is none."""
    lines = text.translate(_INVISIBLE).replace("\xa0", " ").splitlines()
    for index, raw in enumerate(lines[:2000]):
        line = raw.strip()
        if not line or line.startswith(">"):
            continue
        if _is_quote_start(line, [s.strip() for s in lines[index + 1 : index + 3]]):
            return None
        return line
    return None


def _body_text(msg: DecodedMessage) -> str:
    """Plain text, or for HTML-only mail the HTML cut where the quoted part starts."""
    has_plain = any(p.content_type == "text/plain" and p.filename is None for p in msg.parts)
    if has_plain or not msg.html:
        return msg.text
    cut = HTML_QUOTE_RE.search(msg.html)
    return html_to_text(msg.html[: cut.start()] if cut else msg.html)


def parse_command(line: str) -> tuple[str, int | None, str | None]:
    """``(action, candidate, prospect)`` for one line; trailing words are ignored."""
    words = line.split()
    if not words:
        return "invalid", None, None
    word = words[0].strip(".,;:!?*()[]\"'").lower()
    if word in ("new", "ignore", "help"):
        return word, None, None
    if word != "use" or len(words) < 2:
        return "invalid", None, None
    found = _USE_ARG_RE.match(words[1].strip(".,;:!?*()[]\"'"))
    if not found:
        return "invalid", None, None
    arg = found.group(1)
    if arg.isdigit():
        number = int(arg)
        return ("use", number, None) if number >= 1 else ("invalid", None, None)
    if not any(ch.isdigit() for ch in arg):  # "USE the first one" is not an id
        return "invalid", None, None
    if re.fullmatch(r"[pP]\d+", arg):
        arg = arg.upper()  # our own ids are "P" + number
    return "use", None, arg


def extract_command(msg: DecodedMessage) -> dict[str, Any]:
    """The DESIGN.md command dict: action, candidate, prospect, token."""
    line = first_fresh_line(_body_text(msg))
    if line is None:
        line = REPLY_PREFIX_RE.sub("", msg.subject).strip()
    action, candidate, prospect = parse_command(line)
    return {
        "action": action,
        "candidate": candidate,
        "prospect": prospect,
        "token": reply_token(msg),
    }
