"""Plain data passed between the parse stages.

decode -> classify -> forwards (unwrap) -> rules / lead parsers -> normalise.
Every stage is a pure function over these frozen dataclasses: no I/O, no database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Kind = Literal["lead", "reply", "auto_reply", "bounce", "unknown"]

#: The flat lead fields of DESIGN.md, in output order.
LEAD_FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "phone_alt",
    "street",
    "city",
    "region",
    "postal_code",
    "country",
    "comments",
    "interest",
    "appointment_requested",
    "appointment_at",
    "source",
    "external_id",
    "visitor_id",
    "location",
    "account",
)


@dataclass(frozen=True)
class ParseContext:
    """What parsing needs to know about the receiving side (never the database)."""

    #: ISO 3166 alpha-2 region used for phone numbers written without a country code.
    default_region: str = "US"
    #: Account id to put in ``lead["account"]`` (None: left for routing to fill in).
    account: str | None = None


@dataclass(frozen=True)
class Part:
    """One leaf MIME part, decoded."""

    content_type: str  # lower case, e.g. "text/plain", "application/xml"
    filename: str | None
    data: bytes  # transfer-decoded payload
    text: str | None  # charset-decoded text for text-like parts, else None


@dataclass(frozen=True)
class DecodedMessage:
    """A message decoded once, so that later stages never touch MIME again."""

    message_id: str | None  # without angle brackets
    subject: str
    from_addr: str | None  # address only, lower case
    from_name: str | None
    reply_to: tuple[str, ...]  # addresses, lower case
    to: tuple[str, ...]  # addresses (To, Cc, Delivered-To, X-Original-To), lower case
    date: datetime | None
    #: Header name (lower case) -> list of decoded values; CR/LF already removed.
    headers: dict[str, list[str]]
    text: str  # best plain-text body (text/plain, or text made from the HTML part)
    html: str | None  # the HTML body, if any
    parts: tuple[Part, ...]  # every leaf part, body parts and attachments alike
    attached_messages: tuple[DecodedMessage, ...] = ()  # message/rfc822 parts
    defects: tuple[str, ...] = ()  # decoding problems worth reporting

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@dataclass(frozen=True)
class ParseResult:
    """The outcome of ``parse_message``; ``as_json()`` is the DESIGN.md shape."""

    kind: Kind
    rule: str  # rules/ file name, or the generic parser/classifier that decided
    lead: dict[str, Any] | None = None
    command: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()
    message_id: str | None = None
    subject: str = ""
    sender: str | None = None
    date: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rule": self.rule,
            "lead": self.lead,
            "command": self.command,
            "problems": list(self.problems),
        }
