"""Label/value text: the shape of nearly every web-form and marketplace lead email.

Reads lines such as ``First Name: Zoë``, ``E-mail - x@example.com``, ``Name ........
Nguyen, Thanh``, ``fullname = Björn``, ``Lead ID      SP-118274``, a label alone on its
line with the value below it, and multi-line comments. Only labels found in the synonym
table (English and Spanish) become lead fields: prose is never scraped, so a newsletter or
a signature cannot become a customer. The table is shared with the HTML, JSON and CSV
parsers, and a provider rule can add labels of its own. ``split_address`` reads the
parts of an "Address:" or "City/State/Zip:" value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from daemon.parse.model import DecodedMessage
from daemon.parse.text import fold

MAX_TEXT = 200_000  # characters of a body that are read for labels
MAX_LINES = 3000

#: Field -> labels, written as ``label_key`` gives them (lower case, no accents or
#: punctuation, "#" read as "number"). Besides the lead fields: name (full name),
#: address (street plus maybe city/region/postal code), locality ("City, ST ZIP"),
#: street2, appointment (a yes/no or free text), appointment_date, appointment_time.
# fmt: off
SYNONYMS: dict[str, tuple[str, ...]] = {
    "first_name": ("first name", "first", "fname", "firstname", "given name", "forename",
                   "name first", "primer nombre", "nombre de pila"),
    "last_name": ("last name", "last", "lname", "lastname", "surname", "family name",
                  "name last", "apellido", "apellidos", "primer apellido"),
    "name": ("name", "full name", "fullname", "contact", "contact name", "customer",
             "customer name", "client", "client name", "homeowner", "homeowner name",
             "name full", "requester", "requested by", "submitted by", "nombre",
             "first last name", "first and last name", "name first last", "your full name",
             "nombre completo", "nombre y apellido", "nombre y apellidos", "cliente"),
    "email": ("email", "e mail", "email address", "e mail address", "mail", "emails",
              "email id", "correo", "correo electronico", "e mail id", "direccion de correo"),
    "phone": ("phone", "phone number", "telephone", "tel", "telephone number", "tel no",
              "phone no", "phones", "contact number", "mobile", "mobile phone",
              "mobile number", "cell", "cell phone", "cellphone", "cell number", "home phone",
              "daytime phone", "day phone", "phone 1", "telefono", "numero de telefono",
              "celular", "movil", "telefono movil", "telefono celular", "whatsapp"),
    "phone_alt": ("alt phone", "alternate phone", "alternative phone", "other phone",
                  "secondary phone", "work phone", "evening phone", "phone 2", "second phone",
                  "business phone", "office phone", "telefono alternativo", "otro telefono"),
    "street": ("street", "street address", "address 1", "address line 1", "address1",
               "line1", "line 1", "street1", "street 1", "address line1", "calle"),
    "street2": ("address 2", "address line 2", "address2", "line2", "line 2", "street2",
                "street address line 2",
                "apt", "apartment", "suite", "unit", "address line2"),
    "address": ("address", "home address", "property address", "mailing address",
                "job address", "project address", "service address", "site address",
                "job site", "direccion", "domicilio", "direccion postal"),
    "city": ("city", "town", "town city", "city town", "ciudad", "municipio", "locality",
             "city or town", "town or city",
             "suburb", "localidad"),
    "region": ("state", "province", "region", "state province", "province state", "st",
               "estado", "provincia", "state code", "state region", "region state"),
    "postal_code": ("zip", "zip code", "zipcode", "postal code", "postcode", "post code",
                    "zip postal", "zip postal code", "postal zip", "postal", "postal zip code",
                    "codigo postal", "cp", "zip number", "zip postcode", "post zip code",
                    "postcode zip", "eircode"),
    "country": ("country", "pais", "country code", "nation", "country region"),
    "locality": ("city state zip", "city state", "city state postal code", "location",
                 "city province postal code", "ciudad estado"),
    "comments": ("comments", "comment", "message", "notes", "note", "details",
                 "description", "job description", "project description", "customer notes",
                 "additional information", "additional comments", "additional details",
                 "questions", "question", "inquiry", "enquiry", "tell us about your project",
                 "what would you like to discuss", "customer s words", "request details",
                 "project details", "comentarios", "comentario", "mensaje", "notas",
                 "descripcion", "detalles", "consulta", "your message", "message body",
                 "comments questions", "questions comments", "additional notes",
                 "describe your project", "how can we help", "what can we help you with",
                 "project notes", "special instructions", "comentarios adicionales"),
    "interest": ("service", "services", "project", "project type", "interested in",
                 "interest", "product", "products", "vehicle", "vehicle of interest",
                 "service requested", "service needed", "type of service", "service type",
                 "job type", "category", "job", "servicio", "producto", "interesado en",
                 "vehiculo", "tipo de servicio", "proyecto", "services interested in",
                 "product interest", "type of project", "vehicle interested in",
                 "year make model", "interested vehicle", "area of interest", "task"),
    "source": ("lead source", "source", "provider", "lead provider", "fuente", "origen"),
    "external_id": ("lead id", "lead number", "lead no", "job number", "job id",
                    "request id", "request number", "reference", "reference number", "ref",
                    "lead ref", "ticket", "ticket number", "submission id", "entry id",
                    "confirmation number", "lead reference", "referencia", "inquiry id",
                    "enquiry id", "ref number", "submission number", "request reference",
                    "lead identifier", "reference id"),
    "location": ("location key", "location id", "store id", "branch id", "dealer location id"),
    # "From: Ann Lee <ann@example.com>" in a form's body (Contact Form 7's default)
    "sender": ("from", "sender"),
    "visitor_id": ("visitor id", "eleads vid", "vid", "visitor", "cookie id", "visitor cookie"),
    "appointment": ("appointment", "preferred appointment", "appointment requested",
                    "request consultation", "consultation", "test drive", "site visit",
                    "home visit", "cita", "visita", "estimate requested",
                    "preferred date time", "preferred date and time", "appointment date time",
                    "appointment date and time", "requested date and time",
                    "requested appointment", "fecha y hora"),
    "appointment_date": ("preferred date", "appointment date", "requested date",
                         "date requested", "visit date", "test drive date", "preferred day",
                         "fecha", "fecha preferida", "fecha de la cita"),
    "appointment_time": ("preferred time", "appointment time", "requested time",
                         "time requested", "visit time", "test drive time", "hora",
                         "hora preferida", "hora de la cita"),
}
# fmt: on
LABELS: dict[str, str] = {label: key for key, labels in SYNONYMS.items() for label in labels}
#: Words in front of a label that do not change its meaning ("Your Email", "Customer notes").
_PREFIX_RE = re.compile(
    r"^(?:your|customer s|customer|contact|client|homeowner|lead|buyer|primary|best|su|tu|"
    r"the|preferred)\s+"
)
_SUFFIX_RE = re.compile(r"\s+(?:optional|required|opcional|obligatorio)$")
#: Labels that ask about a visit without being in the table ("Would you like a free
#: in-home design consultation?", "Survey requested"); "Best time to call" never is one.
_APPOINTMENT_LABEL_RE = re.compile(
    r"\b(?:appointment|consultation|consult|survey|test drive|site visit|home visit|"
    r"in home|on site|estimate visit|assessment|visit|inspection|cita|visita)\b"
)
_NOT_APPOINTMENT_RE = re.compile(r"\b(?:time to call|call time|contact time|best time)\b")
_CAMEL_RE = re.compile(r"(?<=[a-z])(?=[A-Z])")
_PAREN_RE = re.compile(r"\([^)]{0,40}\)")
_NON_WORD_RE = re.compile(r"[\W_]+")


@dataclass
class Found:
    """Raw (field, value) pairs one parser read, in document order, and its doubts."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, value: str) -> None:
        if value.strip():
            self.pairs.append((key, value))

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)


@functools.lru_cache(maxsize=1024)
def label_key(label: str) -> str:
    """Comparable form of a label: "E-Mail Address:" -> "e mail address", "firstName" ->
    "first name", "Job #" -> "job number"."""
    text = _CAMEL_RE.sub(" ", label[:100]).replace("#", " number ")
    return " ".join(_NON_WORD_RE.sub(" ", fold(text)).split())


def field_for(label: str, extra: Mapping[str, str] | None = None) -> str | None:
    """The lead field a label names, or None; ``extra`` (from a rule) is asked first."""
    if extra:
        for candidate in _candidates(label):
            if candidate in extra:
                return None if extra[candidate] == "ignore" else extra[candidate]
    return _table_field(label)


def _candidates(label: str) -> tuple[str, ...]:
    key = label_key(label)
    if not key or len(key) > 90:
        return ()
    # "Phone (mobile)" is a phone; "Name (First)" was tried whole first
    bare = label_key(_PAREN_RE.sub(" ", label)) if "(" in label else key
    return tuple(dict.fromkeys((key, _SUFFIX_RE.sub("", key), bare)))


@functools.lru_cache(maxsize=1024)
def _table_field(label: str) -> str | None:
    candidates = _candidates(label)
    for candidate in candidates:
        if candidate in LABELS:
            return LABELS[candidate]
        stripped = _PREFIX_RE.sub("", _PREFIX_RE.sub("", candidate))
        if stripped != candidate and stripped in LABELS:
            return LABELS[stripped]
    key = candidates[0] if candidates else ""
    if _APPOINTMENT_LABEL_RE.search(key) and not _NOT_APPOINTMENT_RE.search(key):
        return "appointment"
    return None


# --- text lines ---------------------------------------------------------------------------

#: Label then separator. Strong separators (":", "=", dot leaders) mark a label line even
#: for unknown labels; weak ones (tab, " - ", two spaces) count only for known labels.
_LINE_RE = re.compile(
    r"(?P<label>[^\W\d_][^:=\t\n]{0,59}?)[ \xa0]*(?:(?P<strong>[:=]|\.{2,})|"
    r"(?P<weak>\t+|\s[-–—]\s|[ \xa0]{2,}|\?[ \xa0]+))[ \t\xa0]*"
)
_QUOTE_RE = re.compile(r"^(?:\s*>)+ ?|^\s*[*•·]\s+")
_MULTILINE = frozenset({"comments", "address"})
_COLUMN_RE = re.compile(r"\S(?:\t|[ \xa0]{3,})\S")
_LEAD_REF_RE = re.compile(
    r"\b(?:lead|job|request|ref|reference|ticket|enquiry|inquiry)\s*(?:#|no\.|number|id)\s*:?\s*"
    r"(?P<id>[A-Z0-9][A-Z0-9-]{2,40}\d[A-Z0-9-]*)",
    re.I,
)


@dataclass(frozen=True)
class _Line:
    label: str | None  # the label text, when the line starts with one
    key: str | None  # its field, when the label is known
    value: str
    text: str  # the whole line


def _read(raw: str, extra: Mapping[str, str] | None) -> _Line:
    text = _QUOTE_RE.sub("", raw).strip()
    if not text:
        return _BLANK
    found = _LINE_RE.match(text[:300])
    if found and not text.startswith("//", found.end()):
        key = field_for(found["label"], extra)
        unknown_ok = found["strong"] and not any(c.isdigit() for c in found["label"])
        if key is not None or unknown_ok or (extra and label_key(found["label"]) in extra):
            return _Line(found["label"], key, text[found.end() :].strip(), text)
    bare = text.rstrip(":?* ").strip()
    key = field_for(bare, extra) if bare and len(bare) <= 80 else None
    # a question-like label alone ("Would you like a consultation?") needs its "?" or ":"
    if key is not None and (
        key != "appointment" or label_key(bare) in LABELS or text.endswith(("?", ":"))
    ):
        return _Line(bare, key, "", text)
    return _Line(None, None, text, text)


_BLANK = _Line(None, None, "", "")


def _more(rows: list[_Line], i: int, value: list[str], key: str) -> int:
    """Continuation lines of a multi-line value: up to a blank line or the next label.

    An address has at most three more lines, none in a column layout ("Avg bill   $210").
    """
    limit = i + 3 if key == "address" else len(rows)
    while i < min(limit, len(rows)) and rows[i].text and rows[i].label is None:
        if key == "address" and _COLUMN_RE.search(rows[i].text):
            break
        value.append(rows[i].text)
        i += 1
    return i


def pairs_from_lines(lines: Iterable[str], extra: Mapping[str, str] | None = None) -> Found:
    """Label/value pairs from text lines; a value may also stand below its label."""
    rows = [_read(line, extra) for _, line in zip(range(MAX_LINES), lines, strict=False)]
    found = Found()
    i = 0
    while i < len(rows):
        row = rows[i]
        i += 1
        if row.key is None:
            continue
        value = [row.value]
        if not row.value:  # "Name\nJosé Muñoz", "Comments:\n\nThe north side..."
            j = i
            while j < len(rows) and not rows[j].text and j - i < 2:
                j += 1
            if j >= len(rows) or rows[j].key is not None or not rows[j].text:
                continue
            value, i = [rows[j].text], j + 1
        if row.key in _MULTILINE:
            i = _more(rows, i, value, row.key)
        found.add(row.key, "\n".join(value))
    if not found.has("external_id"):
        _lead_reference(rows, found)
    return found


def _lead_reference(rows: list[_Line], found: Found) -> None:
    """ "ProjectPair Lead #PP-20871145": an id in a heading line rather than a label."""
    for row in rows[:60]:
        if row.label is None and (ref := _LEAD_REF_RE.search(row.text[:200])):
            found.add("external_id", ref["id"])
            return


# --- address values -----------------------------------------------------------------

_TAIL_RE = re.compile(
    r"^(?:(?P<head>.*?)[\s,]+)?(?P<postal>\d{5}(?:-\d{4})?|[A-Za-z]\d[A-Za-z] ?\d[A-Za-z]\d|"
    r"[A-Za-z]{1,2}\d[A-Za-z\d]? ?\d[A-Za-z]{2})$"
)
_REGION_RE = re.compile(r"^(?:(?P<city>.*?)[\s,]+)?(?P<region>[A-Za-z]{2})\.?$")


def split_address(value: str) -> dict[str, str]:
    """Street / city / region / postal code / country from a one- or multi-line address.

    Reads from the end, the way addresses are written in the US, Canada and the UK:
    "2231 Alder Ridge Rd, Westerville, OH 43081", "Grove City, OH 43123\\nUnited States",
    "Toronto, ON M4C 1B5", "14 Alderbrook Mews, Leeds LS6 2QT". Parts it cannot place stay
    in the street, so nothing is invented.
    """
    from daemon.parse import normalise  # here: the daemon process imports this module

    segments = [s.strip() for s in re.split(r"[,\n]", value[:500]) if s.strip()]
    out: dict[str, str] = {}
    if (
        len(segments) > 1
        and (code := normalise.country(segments[-1]))
        and not segments[-1].isdigit()
    ):
        out["country"] = code
        segments.pop()
    if not segments:
        return out
    tail = _TAIL_RE.match(segments[-1])
    if tail:
        out["postal_code"] = tail.group("postal")
        rest = (tail.group("head") or "").strip()
        segments[-1:] = [rest] if rest else []
    _take_region(segments, out, after_postal=bool(tail))
    placed = tail or "region" in out
    if (
        placed
        and segments
        and not segments[-1][:1].isdigit()
        and (len(segments) > 1 or not any(c.isdigit() for c in segments[-1]))
    ):
        out["city"] = segments.pop()
    if segments:
        out["street"] = ", ".join(segments)
    return out


def _take_region(segments: list[str], out: dict[str, str], *, after_postal: bool) -> None:
    """A state/province name as the last segment, or a code at the end of it ("Columbus OH")."""
    from daemon.parse import normalise

    last = segments[-1] if segments else ""
    if (after_postal or len(segments) > 1) and len(last) > 2 and normalise.known_region(last):
        out["region"] = segments.pop()
    elif (found := _REGION_RE.match(last)) and normalise.known_region(found["region"]):
        out["region"] = found.group("region")
        rest = (found.group("city") or "").strip()
        segments[-1:] = [rest] if rest else []


def plain_text(msg: DecodedMessage) -> str | None:
    """The text body when it is the sender's own (a text/plain part, or no HTML at all)."""
    if msg.html is not None and not any(
        p.content_type == "text/plain" and p.filename is None for p in msg.parts
    ):
        return None
    return msg.text[:MAX_TEXT] if msg.text.strip() else None


def parse(msg: DecodedMessage, *, labels: Mapping[str, str] | None = None) -> Found | None:
    """Label/value pairs from the plain-text body."""
    text = plain_text(msg)
    if text is None:
        return None
    found = pairs_from_lines(text.splitlines(), labels)
    return found if found.pairs else None
