"""Unwrap a forwarded lead: return the ORIGINAL message, never the forwarder's.

Someone at the business often forwards a lead that reached their own inbox. The forwarder's
note, signature and phone number must not become the customer, so the original is rebuilt
as its own ``DecodedMessage``: From/Subject/Date/To from the forwarded header block, the
text after that block, the forwarder's preamble dropped. Handled: message/rfc822
attachments, Gmail "---------- Forwarded message ---------", Outlook "-----Original
Message-----", Outlook's From:/Sent:/To:/Subject: block (also from Word HTML), Apple Mail
"Begin forwarded message:", Thunderbird "-------- Forwarded Message --------", and a
forward of a forward (unwrapped again, a bounded number of times).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import datetime
from email.utils import getaddresses, parseaddr, parsedate_to_datetime

from dateutil import parser as dateparser

from daemon.parse.model import DecodedMessage

log = logging.getLogger(__name__)

MAX_UNWRAP = 4
#: Zone abbreviations seen in forwarded header blocks ("7:45 AM EST"), as UTC offsets.
_TZINFOS = {
    name: hours * 3600
    for name, hours in (
        ("UTC", 0),
        ("GMT", 0),
        ("BST", 1),
        ("CET", 1),
        ("CEST", 2),
        ("EST", -5),
        ("EDT", -4),
        ("CST", -6),
        ("CDT", -5),
        ("MST", -7),
        ("MDT", -6),
        ("PST", -8),
        ("PDT", -7),
        ("AKST", -9),
        ("AKDT", -8),
        ("HST", -10),
        ("AST", -4),
        ("ADT", -3),
    )
}
FORWARD_SUBJECT_RE = re.compile(r"^\s*(?:fwd?|fw|wg|tr|rv|vs|doorst|i)\s*:", re.IGNORECASE)
#: A line that opens a forwarded block; the header block follows it.
MARKER_RES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^-{3,}\s*(?:forwarded message|weitergeleitete nachricht|message transféré|"
        r"mensaje reenviado|videresendt meddelelse|doorgestuurd bericht)\s*-{3,}\s*$",
        r"^-{3,}\s*(?:original message|ursprüngliche nachricht|message d'origine|"
        r"mensaje original|oprindelig meddelelse)\s*-{3,}\s*$",
        r"^begin forwarded message\s*:\s*$",
        r"^_{10,}\s*$",
    )
)
_KEYS = {
    "from": "from",
    "von": "from",
    "de": "from",
    "fra": "from",
    "van": "from",
    "sent": "date",
    "date": "date",
    "gesendet": "date",
    "datum": "date",
    "envoyé": "date",
    "sendt": "date",
    "enviado": "date",
    "verzonden": "date",
    "to": "to",
    "an": "to",
    "à": "to",
    "til": "to",
    "para": "to",
    "aan": "to",
    "cc": "cc",
    "subject": "subject",
    "betreff": "subject",
    "objet": "subject",
    "emne": "subject",
    "asunto": "subject",
    "onderwerp": "subject",
    "reply-to": "reply-to",
}
_HEADER_LINE_RE = re.compile(r"^\s*\*?([A-Za-zÀ-ÿ-]{2,10})\s*:\*?\s*(.*)$")
_HTML_MARKER_RE = re.compile(
    r"forwarded message|original message|begin forwarded message|divRplyFwdMsg|"
    r"<b>\s*From:\s*</b>|>\s*From:\s",
    re.IGNORECASE,
)
_HTML_KEY_RE = re.compile(r"(?:^|>)\s*(?:from|sent|date|to|cc|subject)\s*:", re.IGNORECASE)
_HTML_LINE_END_RE = re.compile(r"<br\s*/?>|</p>|</div>", re.IGNORECASE)


def unwrap_forward(msg: DecodedMessage) -> DecodedMessage:
    """The forwarded original inside ``msg`` (recursively), or ``msg`` unchanged."""
    current = msg
    for _ in range(MAX_UNWRAP):
        inner = _unwrap_once(current)
        if inner is None:
            break
        current = inner
    return current


def _unwrap_once(msg: DecodedMessage) -> DecodedMessage | None:
    if msg.attached_messages and _forwards_attachment(msg):
        return msg.attached_messages[0]
    lines = msg.text.splitlines()
    found = _find_block(lines)
    if found is None:
        return None
    fields, body_start = found
    body = _unquote(lines[body_start:])
    return _original(msg, fields, "\n".join(body).strip("\n"), _html_after_block(msg.html))


def _forwards_attachment(msg: DecodedMessage) -> bool:
    """An attached message is the original when the outer mail says little else."""
    if FORWARD_SUBJECT_RE.match(msg.subject):
        return True
    return len(msg.text.strip()) < 2000


def _find_block(lines: list[str]) -> tuple[dict[str, str], int] | None:
    """(header fields, first body line) of the first forwarded block."""
    for index, raw in enumerate(lines[:5000]):
        line = raw.strip().lstrip("> ").strip()
        if not line:
            continue
        if any(rx.match(line) for rx in MARKER_RES):
            header_at = index + 1
            while header_at < len(lines) and not lines[header_at].strip(" >\t"):
                header_at += 1
            block = _header_block(lines, header_at)
            if block is not None:
                return block
        elif line.lower().startswith(("from:", "*from:*", "von:", "de:", "fra:")):
            block = _header_block(lines, index)
            if block is not None and "date" in block[0] and "subject" in block[0]:
                return block
    return None


def _header_block(lines: list[str], start: int) -> tuple[dict[str, str], int] | None:
    """Parse ``Key: value`` lines from ``start`` to the first blank line."""
    fields: dict[str, str] = {}
    last: str | None = None
    index = start
    while index < len(lines) and index - start < 20:
        line = lines[index].strip().lstrip(">").strip()
        if not line:
            break
        found = _HEADER_LINE_RE.match(line)
        key = _KEYS.get(found.group(1).lower()) if found else None
        if found and key:
            fields.setdefault(key, found.group(2).strip())
            last = key
        elif last in ("to", "cc") and fields:
            fields[last] += " " + line  # a long recipient list wrapped
        else:
            break
        index += 1
    if "from" not in fields or len(fields) < 2:
        return None
    return fields, index


def _unquote(lines: list[str]) -> list[str]:
    """Drop one level of "> " quoting when the forwarded body is quoted throughout."""
    filled = [ln for ln in lines if ln.strip()]
    if filled and sum(ln.lstrip().startswith(">") for ln in filled) >= 0.8 * len(filled):
        return [re.sub(r"^\s*> ?", "", ln) for ln in lines]
    return lines


def _html_after_block(html: str | None) -> str | None:
    """The HTML after the forwarded header block (the original's HTML), or None."""
    if not html:
        return None
    marker = _HTML_MARKER_RE.search(html)
    if marker is None:
        return None
    pos, cut = marker.start(), None
    for _ in range(12):  # one header line after another, each within a short gap
        key = _HTML_KEY_RE.search(html, pos, pos + 800)
        end = _HTML_LINE_END_RE.search(html, key.end(), key.end() + 3000) if key else None
        if key is None or end is None:
            break
        cut = end.end()
        pos = cut - 1  # keep the ">" so the next key can match after it
    return html[cut:] if cut is not None else None


def _parse_date(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        pass
    try:
        return dateparser.parse(value.replace(" at ", " "), fuzzy=True, tzinfos=_TZINFOS)
    except (ValueError, OverflowError, TypeError):
        return None


def _address(value: str) -> tuple[str | None, str | None]:
    value = re.sub(r"\[mailto:([^\]]+)\]", r"<\1>", value)  # Outlook: Name [mailto:a@b]
    name, addr = parseaddr(value)
    addr = addr.strip().lower()
    return (name.strip() or None), (addr if "@" in addr and " " not in addr else None)


def _original(
    msg: DecodedMessage, fields: dict[str, str], body: str, html: str | None
) -> DecodedMessage:
    from_name, from_addr = _address(fields.get("from", ""))
    recipients = getaddresses([fields.get("to", ""), fields.get("cc", "")])
    headers = {key: [value] for key, value in fields.items()}
    attachments = tuple(p for p in msg.parts if p.filename)
    return replace(
        msg,
        message_id=None,
        subject=fields.get("subject", ""),
        from_addr=from_addr,
        from_name=from_name,
        reply_to=(),
        to=tuple(a.lower() for _, a in recipients if "@" in a),
        date=_parse_date(fields.get("date", "")),
        headers=headers,
        text=body,
        html=html,
        parts=attachments,
    )
