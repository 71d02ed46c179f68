"""ADF 1.0 (Auto-lead Data Format) XML, the car-dealer lead standard.

ADF may be the text/plain or text/xml body, or any attachment (application/xml, .xml,
.adf). It is parsed with defusedxml: a DTD that declares entities (billion laughs) or
points outside is refused and recorded as a problem, never expanded. Only
``prospect/customer`` describes the customer; ``vendor`` (the dealer) and ``provider`` (the
lead seller) carry contact details of their own that are never taken for the customer's.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as StdET  # types and ParseError only: parsing is defusedxml's
from collections.abc import Iterator

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from daemon.parse.labels import Found
from daemon.parse.model import DecodedMessage

log = logging.getLogger(__name__)

MAX_XML = 2_000_000
_START_RE = re.compile(r"<\?xml|<!DOCTYPE|<adf\b", re.I)
_ROOT_RE = re.compile(r"<adf\b", re.I)
_END_RE = re.compile(r"</adf\s*>", re.I)
_XML_TYPES = ("xml", "adf")


def _candidates(msg: DecodedMessage) -> Iterator[str | bytes]:
    """Texts that may hold ADF: every part (body or attachment), then the body text."""
    for part in msg.parts:
        xmlish = any(t in part.content_type for t in _XML_TYPES) or (
            part.filename is not None and part.filename.lower().endswith((".xml", ".adf"))
        )
        if part.text is not None:
            if _ROOT_RE.search(part.text, 0, MAX_XML):
                # a charset the MIME header got wrong: let the XML declaration decide
                yield part.data if "\ufffd" in part.text and xmlish else part.text
        elif xmlish and _ROOT_RE.search(part.data[:MAX_XML].decode("latin-1")):
            yield part.data
    if _ROOT_RE.search(msg.text, 0, MAX_XML):  # e.g. ADF shown as text in an HTML body
        yield msg.text


def _document(source: str | bytes) -> str | bytes | None:
    """The XML from its declaration (or DOCTYPE, or <adf>) to the last </adf>."""
    text = source.decode("latin-1") if isinstance(source, bytes) else source
    root = _ROOT_RE.search(text, 0, MAX_XML)
    if root is None:
        return None
    start_match = _START_RE.search(text, 0, root.start() + 1)
    start = start_match.start() if start_match else root.start()
    ends = [m.end() for m in _END_RE.finditer(text, root.start(), MAX_XML)]
    stop = ends[-1] if ends else min(len(text), MAX_XML)
    # latin-1 maps byte i to character i, so the offsets hold for the bytes too
    return source[start:stop] if isinstance(source, bytes) else text[start:stop]


def _tag(element: StdET.Element) -> str:
    """Lower-case local name: "{urn:adf}Prospect" -> "prospect"."""
    return element.tag.rpartition("}")[2].lower() if isinstance(element.tag, str) else ""


def _children(element: StdET.Element | None, name: str) -> list[StdET.Element]:
    return [] if element is None else [c for c in element if _tag(c) == name]


def _child(element: StdET.Element | None, name: str) -> StdET.Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _text(element: StdET.Element | None) -> str:
    return " ".join((element.text or "").split()) if element is not None else ""


def _attr(element: StdET.Element, name: str) -> str:
    return next((v for k, v in element.attrib.items() if k.lower() == name), "").strip().lower()


def _vehicle(prospect: StdET.Element, found: Found) -> None:
    """ "year make model" of the first vehicle the customer wants to buy (not a trade-in)."""
    for vehicle in _children(prospect, "vehicle"):
        if _attr(vehicle, "interest") not in ("", "buy", "lease"):
            continue
        words = [_text(_child(vehicle, name)) for name in ("year", "make", "model")]
        found.add("interest", " ".join(w for w in words if w))
        return


def _contact(contact: StdET.Element, found: Found) -> None:
    for name in _children(contact, "name"):
        part = _attr(name, "part")
        key = {"first": "first_name", "last": "last_name", "full": "name"}.get(part, "")
        if key:
            found.add(key, _text(name))
    for email in _children(contact, "email"):
        found.add("email", _text(email))
    phones = [p for p in _children(contact, "phone") if _attr(p, "type") not in ("fax", "pager")]
    phones.sort(key=lambda p: _attr(p, "type") not in ("", "voice"))  # voice first, stable
    for phone in phones:
        found.add("phone", _text(phone))
    address = _child(contact, "address")
    lines = [_text(s) for s in _children(address, "street")] + [
        _text(a) for a in _children(address, "apartment")
    ]
    found.add("street", ", ".join(line for line in lines if line))
    for tag, key in (
        ("city", "city"),
        ("regioncode", "region"),
        ("postalcode", "postal_code"),
        ("country", "country"),
    ):
        found.add(key, _text(_child(address, tag)))


def _read(root: StdET.Element) -> Found:
    found = Found()
    prospects = [root] if _tag(root) == "prospect" else _children(root, "prospect")
    if not prospects:
        found.problems.append("ADF without a <prospect>")
        return found
    if len(prospects) > 1:
        found.problems.append(f"ADF holds {len(prospects)} prospects; the first was taken")
    prospect = prospects[0]
    provider = _child(prospect, "provider")
    source = _text(_child(provider, "name"))
    ids = _children(prospect, "id")
    own = [i for i in ids if source and _attr(i, "source") == source.lower()]
    if own or ids:
        chosen = (own or ids)[0]
        found.add("external_id", _text(chosen))
        source = source or (chosen.get("source") or "").strip()
    found.add("source", source)
    _vehicle(prospect, found)
    customer = _child(prospect, "customer")
    contact = _child(customer, "contact")
    if contact is None:
        found.problems.append("ADF without a customer contact")
    else:
        _contact(contact, found)
    for comments in _children(customer, "comments"):
        found.add("comments", (comments.text or "").strip())
    return found


def parse(msg: DecodedMessage) -> Found | None:
    """The first ADF document in the message, or None when there is none."""
    problems: list[str] = []
    for source in _candidates(msg):
        document = _document(source)
        if document is None:
            continue
        try:
            root = SafeET.fromstring(document, forbid_dtd=False)
        except DefusedXmlException as exc:
            problems.append(f"ADF refused: {type(exc).__name__} (entities or external DTD)")
            continue
        except (StdET.ParseError, ValueError) as exc:
            problems.append(f"ADF is not well-formed XML: {str(exc)[:80]}")
            continue
        found = _read(root)
        found.problems[:0] = problems
        return found
    if problems:
        return Found(problems=problems)
    return None
