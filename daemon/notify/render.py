"""Turning a stored notification into an email: Jinja2 templates and ``EmailMessage``.

What is stored (``Notification.payload``, see outbox.py) is the template name, its
context as plain JSON, the fixed headers (Date, Message-ID lives in its own column) and
references to attachments. Rendering that again gives the same message, so a resend
after a crash carries the same Message-ID and Date; only an edited template between the
two attempts could change the body.

Safety lives here:

- HTML templates are autoescaped (``select_autoescape`` for ``.html``): lead fields are
  attacker-controlled, and ``<script>`` in a name must reach the reader as text;
- text templates are not escaped (a ``<`` stays a ``<``);
- headers are set through ``EmailMessage`` with ``policy.SMTP``, which refuses CR/LF in
  any header value; user values that go into headers (subject, names) are also cleaned
  of control characters first, so a hostile lead cannot even make the build fail;
- the whole message is 7-bit (quoted-printable/base64 bodies), so any relay takes it.

Templates: ``<name>.txt`` and ``<name>.html`` in ``daemon/notify/templates/``; a file of
the same name in ``outbound.templates_dir`` replaces the packaged one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import phonenumbers
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from daemon.config import OutboundSettings, Settings
from daemon.db.models import naive_utc

PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "templates"
#: 7-bit output: bodies become quoted-printable/base64 when they are not plain ASCII.
POLICY = policy.SMTP.clone(cte_type="7bit")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
#: Fixed headers the payload may carry; anything else in it is ignored.
STORED_HEADERS = (
    "Date",
    "In-Reply-To",
    "References",
    "X-Eleads-Kind",
    "X-Eleads-ELead",
    "X-Eleads-Source-Message-ID",
)


@dataclass(frozen=True)
class Outgoing:
    """A claimed notification as plain data (safe to hand from the DB thread to the loop)."""

    id: int
    kind: str
    to: tuple[str, ...]
    subject: str
    reply_to: str | None
    message_id: str
    payload: dict[str, Any]
    elead_id: int | None = None
    attempts: int = 0
    created_at: datetime | None = None


def clean_header(value: object, *, limit: int = 250) -> str:
    """One line of text for a header: control characters (CR, LF, ...) become spaces."""
    text = " ".join(_CONTROL.sub(" ", str(value)).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def templates_dir_for(settings: Settings) -> Path | None:
    """``outbound.templates_dir``, relative paths resolved against the config file."""
    folder = settings.outbound.templates_dir
    if folder is None or folder.is_absolute():
        return folder
    base = settings.source.resolve().parent if settings.source is not None else Path.cwd()
    return base / folder


# --- presentation helpers (used to build template contexts) ---------------------


def display_time(value: datetime | None) -> str | None:
    """``Tue 17 Nov 2026 12:44 UTC`` (the database keeps UTC)."""
    if value is None:
        return None
    return f"{naive_utc(value):%a %d %b %Y %H:%M} UTC"


def format_phone(value: Any, region: str) -> str | None:
    """E.164 as the reader dials it: national for the account's country, else international."""
    if not value:
        return None
    try:
        number = phonenumbers.parse(str(value), region)
    except phonenumbers.NumberParseException:
        return str(value)
    same = phonenumbers.region_code_for_number(number) == region
    style = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if same
        else (phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    )
    return str(phonenumbers.format_number(number, style))


def format_address(data: Mapping[str, Any]) -> str | None:
    place = " ".join(str(data[k]) for k in ("region", "postal_code") if data.get(k))
    parts = [str(data[k]) for k in ("street", "city") if data.get(k)]
    text = ", ".join([*parts, place] if place else parts)
    return text or None


def format_name(data: Mapping[str, Any]) -> str | None:
    return " ".join(str(data[k]) for k in ("first_name", "last_name") if data.get(k)) or None


def appointment_info(lead: Mapping[str, Any]) -> dict[str, Any] | None:
    if not lead.get("appointment_requested"):
        return None
    raw = lead.get("appointment_at")
    when = None
    if raw:
        try:
            at = datetime.fromisoformat(str(raw))
            zone = f" ({at.tzname()})" if at.tzinfo is not None else ""
            when = f"{at:%a %d %b %Y %H:%M}{zone}"
        except ValueError:
            when = str(raw)
    return {"at": when, "raw": raw}


def mailto(address: str, subject: str, body: str) -> str:
    return f"mailto:{address}?subject={quote(subject, safe='')}&body={quote(body, safe='')}"


class Renderer:
    """Jinja2 environment over the override folder (if any) and the packaged templates."""

    def __init__(self, templates_dir: Path | None = None) -> None:
        loaders = [FileSystemLoader(str(templates_dir))] if templates_dir else []
        loaders.append(FileSystemLoader(str(PACKAGED_TEMPLATES)))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(
                enabled_extensions=("html", "htm", "xml"), default_for_string=True, default=False
            ),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )

    def render(self, template: str, context: dict[str, Any]) -> tuple[str, str]:
        """The text and HTML bodies of ``template`` for ``context``."""
        text = self.env.get_template(f"{template}.txt").render(context)
        html = self.env.get_template(f"{template}.html").render(context)
        return text, html


def _mail_address(display: str, addr: str) -> Address:
    local, _, domain = addr.rpartition("@")
    return Address(display_name=clean_header(display, limit=80), username=local, domain=domain)


def _set_headers(msg: EmailMessage, item: Outgoing, outbound: OutboundSettings) -> None:
    headers = item.payload.get("headers") or {}
    msg["From"] = _mail_address(outbound.from_name, outbound.from_address)
    msg["To"] = ", ".join(item.to)
    msg["Subject"] = clean_header(item.subject)
    if headers.get("Date"):
        msg["Date"] = clean_header(headers["Date"])
    msg["Message-ID"] = clean_header(item.message_id)
    if item.reply_to:
        msg["Reply-To"] = item.reply_to
    for name in STORED_HEADERS[1:]:
        value = headers.get(name)
        if value:
            msg[name] = clean_header(value, limit=900)
    msg["Auto-Submitted"] = "auto-generated"
    # Exchange/Outlook: no out-of-office or read receipts back to a robot.
    msg["X-Auto-Response-Suppress"] = "All"


def _original(path: str, originals: Mapping[str, bytes | None]) -> bytes | None:
    """The archived original: preloaded by the caller (database archive) or its file."""
    if path in originals:
        return originals[path]
    from daemon.spool.database import read_archived

    try:
        return read_archived(path)
    except (OSError, ValueError):
        return None


def _attach_original(msg: EmailMessage, raw: bytes) -> None:
    """Attach the eLead's original message.

    A 7-bit clean original goes in as ``message/rfc822`` (shown inline by mail readers);
    anything else (8-bit bytes, overlong lines, typical of broken leads) as an opaque
    ``original.eml`` in base64, so it arrives byte for byte.
    """
    clean = raw.isascii() and all(len(line) <= 998 for line in raw.splitlines())
    if clean:
        inner = BytesParser(policy=policy.compat32).parsebytes(raw)
        msg.add_attachment(inner, cte="7bit", disposition="attachment", filename="original.eml")
    else:
        msg.add_attachment(
            raw, maintype="application", subtype="octet-stream", filename="original.eml"
        )


def original_paths(item: Outgoing) -> list[str]:
    """Where the originals to attach are archived (``InboundMessage.raw_path`` values)."""
    attachments = list(item.payload.get("attachments") or [])
    return [str(a["path"]) for a in attachments if a.get("type") == "original" and a.get("path")]


def build_message(
    item: Outgoing,
    *,
    outbound: OutboundSettings,
    renderer: Renderer,
    originals: Mapping[str, bytes | None] | None = None,
) -> EmailMessage:
    """The complete email of one notification.

    ``originals``: the archived originals by path, when the caller read them already (the
    database archive is read on the DB thread); others are read here, from their files.
    """
    payload = item.payload
    context = dict(payload.get("context") or {})
    raws = [_original(path, originals or {}) for path in original_paths(item)]
    found = [raw for raw in raws if raw is not None]
    attached = bool(found)
    context["attached"] = attached
    text, html = renderer.render(str(payload.get("template") or item.kind), context)
    msg = EmailMessage(policy=POLICY)
    _set_headers(msg, item, outbound)
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    for raw in found:
        _attach_original(msg, raw)
    _drop_inner_mime_version(msg)
    _fix_boundaries(msg, item.message_id)
    return msg


def _fix_boundaries(msg: EmailMessage, message_id: str) -> None:
    """Boundaries derived from the Message-ID: a resend is the same bytes, not just the
    same Message-ID. The digest is unguessable before the email exists, so no body can
    contain it by accident or design; ``=_`` never occurs in quoted-printable or base64."""
    seed = hashlib.sha256(message_id.encode()).hexdigest()[:32]
    pending, index = [msg], 0
    while pending:
        part = pending.pop(0)
        if part.get_content_maintype() != "multipart":
            continue  # leaves, and the attached original (message/rfc822) untouched
        part.set_boundary(f"=_eleads_{seed}_{index}")
        index += 1
        pending.extend(part.iter_parts())  # type: ignore[arg-type]


def _drop_inner_mime_version(msg: EmailMessage) -> None:
    """email adds MIME-Version to alternatives; only the top needs it (the attached
    original is left exactly as it was)."""
    for part in msg.iter_parts():
        if part.get_content_maintype() == "message":
            continue
        del part["MIME-Version"]
        if part.is_multipart():
            _drop_inner_mime_version(part)  # type: ignore[arg-type]
