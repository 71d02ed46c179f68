"""Lead extraction: find the lead data in a decoded message and give the flat lead fields.

``extract_lead`` runs a provider rule (rules/*.yaml) when one matches, else the generic
parsers in the order of ``PARSERS``. Structured formats (ADF, JSON, CSV) are the whole
lead when found; the text and HTML readers complement each other (a form's HTML table may
hold what its text part lacks). The raw values are then normalised field by field.

Returns None when the message holds no lead data: no labelled or structured contact
details, a delivery report, or contact details that are the recipient's own (a supplier's
order confirmation addressed to the business). No exception escapes: a failing parser is
one line in ``problems``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.errors import ConfigError
from daemon.parse import adf, labels, normalise, structured, tables
from daemon.parse.labels import Found
from daemon.parse.model import LEAD_FIELDS, DecodedMessage, ParseContext
from daemon.parse.rules import RuleSet, default_rules_dir, load_rules

log = logging.getLogger(__name__)

Parser = Callable[..., Found | None]

#: The generic parsers, in the order they are tried.
PARSERS: tuple[tuple[str, Parser], ...] = (
    ("adf", adf.parse),
    ("json", structured.parse_json),
    ("csv", structured.parse_csv),
    ("labels", labels.parse),
    ("html_table", tables.parse),
)
#: Their data is the whole lead: nothing is merged into it from the text.
STRUCTURED = frozenset({"adf", "json", "csv"})
MAX_ATTACHED_DEPTH = 2
_NOT_A_LEAD_SUBJECT_RE = re.compile(
    r"\b(?:order confirmation|your order|invoice|receipt|shipping confirmation|has shipped|"
    r"newsletter)\b",
    re.I,
)
_PHONE_SPLIT_RE = re.compile(r"\s*(?:/|;|,|\||\bor\b|\band\b)\s*", re.I)
_BRACKETED_RE = re.compile(r"\s*[<(\[][^>)\]]{0,200}[>)\]]")
_PERSON = frozenset({"name", "first_name", "last_name", "email"})
_FORM_DATA = frozenset({"phone", "phone_alt", "comments", "interest", "postal_code", "address"})
_DAEMONS = frozenset({"mailer-daemon", "mailerdaemon", "postmaster"})
#: Mailbox providers whose users share a domain with strangers.
# fmt: off
FREEMAIL = frozenset(
    {"gmail.com", "googlemail.com", "yahoo.com", "hotmail.com", "outlook.com", "live.com",
     "msn.com", "aol.com", "icloud.com", "me.com", "mac.com", "proton.me", "protonmail.com",
     "gmx.com", "gmx.net", "mail.com", "yandex.com", "zoho.com", "comcast.net", "att.net",
     "verizon.net", "sbcglobal.net", "btinternet.com", "sky.com", "yahoo.co.uk",
     "hotmail.co.uk", "rogers.com", "shaw.ca", "sympatico.ca"}
)
# fmt: on


@dataclass(frozen=True)
class LeadExtraction:
    rule: str  # rules/ file stem, or the generic parser that found the lead
    lead: dict[str, Any]  # every key of LEAD_FIELDS, normalised, None when absent
    problems: tuple[str, ...]


@functools.cache
def shipped_rules() -> RuleSet:
    """The repository's rules/, loaded once: what ``rules=None`` means."""
    try:
        return load_rules(default_rules_dir())
    except ConfigError as exc:
        log.error("shipped rules not loaded: %s", "; ".join(exc.problems)[:500])
        return RuleSet()


def extract_lead(
    msg: DecodedMessage, *, ctx: ParseContext, rules: RuleSet | None = None
) -> LeadExtraction | None:
    """The lead in ``msg`` (already unwrapped from any forward), or None; never raises.

    ``rules=None`` uses the shipped rules/; pass ``RuleSet()`` for the generic parsers only.
    """
    try:
        return _extract(msg, ctx, rules if rules is not None else shipped_rules(), depth=0)
    except Exception as exc:  # noqa: BLE001 - one hostile message must not stop the pipeline
        log.warning(
            "lead extraction failed: %s (message_id=%s)", type(exc).__name__, msg.message_id
        )
        return None


def _is_report(msg: DecodedMessage) -> bool:
    """Bounces quote the lead they bounce; classify sorts them out, this guards its back."""
    ctype = (msg.header("content-type") or "").lower()
    local = (msg.from_addr or "").partition("@")[0]
    return ctype.startswith("multipart/report") or local in _DAEMONS


def _extract(
    msg: DecodedMessage, ctx: ParseContext, rules: RuleSet, depth: int
) -> LeadExtraction | None:
    if _is_report(msg) or _NOT_A_LEAD_SUBJECT_RE.search(msg.subject[:300]):
        return None
    rule = rules.match(msg)
    problems: list[str] = []
    extra = rule.labels if rule else None
    name, found = _run_parsers(msg, rule.parser if rule else "auto", extra, problems)
    if found is None and rule is not None and rule.parser != "auto":
        name, found = _run_parsers(msg, "auto", extra, problems)
        if found is not None:
            problems.append(
                f"rule {rule.name}: parser {rule.parser} found nothing; {name} was used"
            )
    if found is None:
        for attached in msg.attached_messages if depth < MAX_ATTACHED_DEPTH else ():
            inner = _extract(attached, ctx, rules, depth + 1)
            if inner is not None:
                return inner
        if any(p.startswith("ADF ") for p in problems):
            # An ADF document is a lead by definition: one we could not read is a lead
            # that failed to parse (kept and reported), not "not a lead" (dropped).
            return LeadExtraction("adf", _empty_lead(ctx), tuple(dict.fromkeys(problems)))
        return None
    strict = name not in STRUCTURED
    if rule is not None:
        found = rule.apply(found)
        name = rule.name
    lead = build_lead(found, msg, ctx, strict=strict, problems=problems)
    if lead is None:
        return None
    return LeadExtraction(name, lead, tuple(dict.fromkeys([*found.problems, *problems])))


def _empty_lead(ctx: ParseContext) -> dict[str, Any]:
    lead: dict[str, Any] = dict.fromkeys(LEAD_FIELDS)
    lead["appointment_requested"] = False
    lead["account"] = ctx.account
    return lead


def _run_parsers(
    msg: DecodedMessage, only: str, extra: Mapping[str, str] | None, problems: list[str]
) -> tuple[str, Found | None]:
    """The first structured lead, else the text/HTML readers merged (first found wins)."""
    merged: Found | None = None
    chosen = ""
    for name, parser in PARSERS:
        if only != "auto" and name != only:
            continue
        try:
            found = parser(msg) if name == "adf" else parser(msg, labels=extra)
        except Exception as exc:  # noqa: BLE001 - per parser: the others still get a chance
            log.warning(
                "%s parser failed: %s (message_id=%s)", name, type(exc).__name__, msg.message_id
            )
            problems.append(f"{name} parser failed: {type(exc).__name__}")
            continue
        if found is None:
            continue
        if not found.pairs:
            problems.extend(found.problems)
            continue
        if name in STRUCTURED:
            return name, found
        if merged is None or (not _has_contact(merged) and _has_contact(found)):
            merged, found, chosen = found, merged or Found(), name
        _fill(merged, found)
        if _complete(merged):
            break
    return chosen, merged


def _has_contact(found: Found) -> bool:
    return any(k in ("email", "phone", "phone_alt") for k, _ in found.pairs)


def _complete(found: Found) -> bool:
    keys = {k for k, _ in found.pairs}
    named = "name" in keys or "last_name" in keys
    placed = bool(keys & {"postal_code", "address", "locality"})
    return named and placed and {"email", "phone"} <= keys


def _fill(target: Found, other: Found) -> None:
    """Add the fields ``target`` lacks from ``other`` (the same form as text and as HTML)."""
    have = {k for k, _ in target.pairs}
    if have & {"name", "first_name", "last_name"}:
        have |= {"name", "first_name", "last_name"}
    target.pairs.extend((k, v) for k, v in other.pairs if k not in have)
    target.problems.extend(other.problems)


def _values(found: Found) -> dict[str, list[str]]:
    """Values per field. A body's "From: Ann Lee <ann@...>" line stands for the name and
    email only when nothing else names the person and other form fields are present: in
    a quoted Outlook header block (From/Sent/To/Subject) it is nobody's lead."""
    grouped: dict[str, list[str]] = {}
    for key, value in found.pairs:
        grouped.setdefault(key, []).append(value)
    sender = grouped.pop("sender", [])
    if sender and not grouped.keys() & _PERSON and grouped.keys() & _FORM_DATA:
        grouped["name"] = sender
    return grouped


def build_lead(
    found: Found, msg: DecodedMessage, ctx: ParseContext, *, strict: bool, problems: list[str]
) -> dict[str, Any] | None:
    """Normalise raw pairs into the flat lead; None when they are not a customer's.

    ``strict`` (text and HTML): some contact detail is needed, a phone or an email, or a
    name with a street or postal code. Structured formats need a name, email or phone.
    """
    values = _values(found)
    lead: dict[str, Any] = dict.fromkeys(LEAD_FIELDS)
    _names(values, lead)
    _place(values, lead, problems)
    regions = tuple(
        dict.fromkeys(
            r
            for r in (
                lead["country"],
                normalise.postal_region(lead["postal_code"]),
                ctx.default_region.upper(),
                "US",
            )
            if r
        )
    )
    _phones(values, lead, regions, problems)
    if not _email(values, lead, msg, problems):
        return None
    for key in ("interest", "source", "external_id", "visitor_id", "location"):
        lead[key] = next((v for v in map(normalise.clean, values.get(key, ())) if v), None)
    lead["comments"] = normalise.clean(
        "\n".join(values.get("comments", ())), normalise.MAX_COMMENTS
    )
    _appointment(values, lead, msg, problems)
    lead["account"] = ctx.account
    named = lead["first_name"] or lead["last_name"]
    contact = lead["email"] or lead["phone"]
    if not contact and not (named and (lead["street"] or lead["postal_code"] or not strict)):
        return None
    if not contact:
        problems.append("no email and no phone")
    return lead


def _names(values: dict[str, list[str]], lead: dict[str, Any]) -> None:
    first = next(filter(None, map(normalise.first_name, values.get("first_name", ()))), None)
    last = next(filter(None, map(normalise.last_name, values.get("last_name", ()))), None)
    if not (first and last):
        for full in values.get("name", ()):
            # "Ann Lee <ann@example.com>", "Robert (Bob) Smith"
            given, family = normalise.split_name(_BRACKETED_RE.sub("", full))
            if given or family:
                first = first or given
                last = last or family
                break
    lead["first_name"], lead["last_name"] = first, last


def _place(values: dict[str, list[str]], lead: dict[str, Any], problems: list[str]) -> None:
    """Explicit street/city/region/postal fields first, then what an address line adds."""
    parts: dict[str, str] = {}
    for key in ("street", "city", "region", "postal_code", "country"):
        if value := next(filter(None, map(normalise.clean, values.get(key, ()))), None):
            parts[key] = value
    for key in ("address", "locality"):
        for value in values.get(key, ()):
            split = labels.split_address(value)
            if key == "locality":
                split.pop("street", None)
            for field, text in split.items():
                parts.setdefault(field, text)
    country = normalise.country(parts["country"]) if "country" in parts else None
    if "country" in parts and country is None:
        problems.append(f"unknown country {parts['country'][:40]!r}")
    street = parts.get("street")
    if street and (
        extra := next(filter(None, map(normalise.clean, values.get("street2", ()))), None)
    ):
        street = f"{street}, {extra}"
    lead["country"] = country
    lead["street"] = normalise.clean(street) if street else None
    lead["city"] = normalise.clean(parts["city"]) if "city" in parts else None
    lead["region"] = normalise.region(parts["region"], country) if "region" in parts else None
    lead["postal_code"] = (
        normalise.postal_code(parts["postal_code"], country) if "postal_code" in parts else None
    )


def _phones(
    values: dict[str, list[str]],
    lead: dict[str, Any],
    regions: tuple[str, ...],
    problems: list[str],
) -> None:
    numbers: list[str] = []
    for raw in [*values.get("phone", ()), *values.get("phone_alt", ())]:
        # "614-555-0100 / 614-555-0101" holds two; "614/555-0100" is one
        pieces = [p for p in _PHONE_SPLIT_RE.split(raw[:200]) if _digits(p)]
        if len(pieces) < 2 or min(map(_digits, pieces)) < 7:
            pieces = [raw]
        for piece in pieces:
            number = normalise.phone(piece, regions)
            if number is None:
                if (shown := normalise.clean(piece, 40)) is not None:
                    problems.append(f"unparseable phone {shown!r}")
            elif number not in numbers:
                numbers.append(number)
    lead["phone"] = numbers[0] if numbers else None
    lead["phone_alt"] = numbers[1] if len(numbers) > 1 else None


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _domain(address: str | None) -> str:
    return (address or "").rpartition("@")[2]


def _email(
    values: dict[str, list[str]], lead: dict[str, Any], msg: DecodedMessage, problems: list[str]
) -> bool:
    """The customer's email; False when the labelled contact is the recipient itself.

    Never the customer: a recipient address, another address of a recipient's (non-
    freemail) domain, or another address of the sender's domain (a provider's support
    desk). A Reply-To from outside the sender's domain stands in when no email is labelled.
    """
    recipients = set(msg.to)
    own = {_domain(a) for a in recipients} - FREEMAIL
    sender = msg.from_addr or ""
    sender_domain = _domain(sender) if _domain(sender) not in FREEMAIL else ""
    recipient_hit = False
    # a labelled email, else one written with the name ("Ann Lee <ann@example.com>")
    candidates = values.get("email") or [v for v in values.get("name", ()) if "@" in v]
    for raw in candidates:
        address = normalise.email(raw)
        if address is None:
            if (shown := normalise.clean(raw, 60)) is not None:
                problems.append(f"invalid email {shown!r}")
            continue
        domain = _domain(address)
        if address in recipients or domain in own:
            recipient_hit = True
        elif not (domain == sender_domain and address != sender):
            lead["email"] = address
            return True
    if recipient_hit:
        return False
    if "email" not in values:
        for address in msg.reply_to:
            if address not in recipients and _domain(address) not in (sender_domain, *own):
                lead["email"] = normalise.email(address)
                return True
        if _sent_by_customer(msg, lead) and sender not in recipients:
            lead["email"] = normalise.email(sender)
    return True


def _sent_by_customer(msg: DecodedMessage, lead: dict[str, Any]) -> bool:
    """The sender's display name is the lead's name: the customer wrote the email."""
    shown = normalise.fold(msg.from_name or "")
    first, last = lead["first_name"], lead["last_name"]
    return bool(first and last and msg.from_addr) and all(
        normalise.fold(part) in shown for part in (first, last)
    )


def _appointment(
    values: dict[str, list[str]],
    lead: dict[str, Any],
    msg: DecodedMessage,
    problems: list[str],
) -> None:
    """A labelled yes/no decides; else a preferred date, else the customer's own words."""
    answers = [normalise.answer(v) for v in values.get("appointment", ())]
    date = next(iter(values.get("appointment_date", ())), "")
    time = next(iter(values.get("appointment_time", ())), "")
    if True in answers:
        requested = True
    elif False in answers:
        requested = False
    else:
        requested = normalise.has_date(date) or normalise.asks_for_visit(lead["comments"] or "")
    lead["appointment_requested"] = requested
    if not requested:
        return
    dayfirst = (lead["country"] or "US") not in ("US", "CA")
    for text in [*values.get("appointment", ()), f"{date} {time}".strip()]:
        when, problem = normalise.appointment_at(text, dayfirst=dayfirst, after=msg.date)
        if problem:
            problems.append(problem)
        if when is not None:
            lead["appointment_at"] = when.isoformat()
            return
