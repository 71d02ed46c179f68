"""Turn raw label values into the DESIGN.md lead field formats.

One module knows every value format, so the parsers only have to find values. Each
function takes one raw string and returns the normalised value or None (never raises):
phones go through phonenumbers (E.164, extensions dropped), emails through email-validator
(syntax only, lower case), full names through nameparser, countries and region names
through pycountry. Every value is stripped of CR/LF and control characters and capped,
so a hostile 50,000-character field costs little and cannot reach a header or a log line.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from datetime import datetime

import phonenumbers
import pycountry
from dateutil import parser as dateparser
from email_validator import EmailNotValidError, validate_email
from nameparser import HumanName

from daemon.parse.text import fold as fold  # re-exported: part of this module's API

MAX_LEN = 200  # names, cities, ids: longer is garbage, not data
MAX_COMMENTS = 4000
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060\ufeff]+")
_SPACE_RE = re.compile(r"\s+")
# fmt: off
_PLACEHOLDERS = frozenset(
    {"", "-", "--", ".", "n/a", "na", "n.a.", "none", "null", "nil", "unknown", "not provided",
     "not given", "no aplica", "ninguno", "ninguna", "---", "tbd", "(none)", "(blank)"}
)
# fmt: on


def clean(value: object, limit: int = MAX_LEN) -> str | None:
    """One-line NFC text without control characters, capped; None for blanks/placeholders."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value)
    if (
        len(text) <= limit
        and text.isascii()
        and text.isprintable()
        and "  " not in text
        and text[:1] != " "
        and text[-1:] != " "
    ):
        # Already clean, as most values are (a prospect import cleans five a row): printable
        # ASCII has no control characters, no whitespace but single inner spaces, is NFC.
        return None if text.lower() in _PLACEHOLDERS else text
    return _clean(text, limit)


def _clean(text: str, limit: int) -> str | None:
    text = text[: limit * 2 + 64]  # bound the work before any regex
    text = _SPACE_RE.sub(" ", _CONTROL_RE.sub(" ", text)).strip()
    text = unicodedata.normalize("NFC", text)
    if text.lower() in _PLACEHOLDERS:
        return None
    return text[:limit].rstrip() if len(text) > limit else text


# --- phones -----------------------------------------------------------------------------

_E164 = phonenumbers.PhoneNumberFormat.E164


def phone(value: str, regions: tuple[str, ...]) -> str | None:
    """E.164 for the first region (in order) where the number is valid; extension dropped.

    Several regions are tried because a UK form feeds an account whose default is US:
    "0113 496 0321" read as US even parses (011 is the US exit code), but is not valid.
    """
    text = clean(value, 64)
    if not text or sum(c.isdigit() for c in text) < 6:
        return None
    for region in regions:
        for number in _phone_candidates(text, region):
            if phonenumbers.is_valid_number(number):
                number.extension = None
                return phonenumbers.format_number(number, _E164)
    return None


def _phone_candidates(text: str, region: str) -> Iterator[phonenumbers.PhoneNumber]:
    """The whole value, then the first number found inside it ("859.555.0116 (home)":
    parse alone reads "home" as keypad digits)."""
    try:
        whole = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        whole = None
    if whole is not None:
        yield whole
    for match in phonenumbers.PhoneNumberMatcher(text, region, max_tries=3):
        yield match.number
        return


# --- emails -----------------------------------------------------------------------------

_EMAIL_RE = re.compile(r"[^\s<>()\[\],;:\"'@]{1,64}@[^\s<>()\[\],;:\"'@]{1,253}")


def email(value: str) -> str | None:
    """The first syntactically valid address in ``value`` ("<A@B.C>", "mailto:"), lower case."""
    if "@" not in value:
        return None
    found = _EMAIL_RE.search(value[:1000])
    if not found:
        return None
    candidate = found.group(0).strip(".")
    try:
        # test_environment: the reserved *.test domains are real in our corpus and holdout.
        checked = validate_email(candidate, check_deliverability=False, test_environment=True)
    except EmailNotValidError:
        return None
    return checked.normalized.lower()


# --- names ------------------------------------------------------------------------------

# fmt: off
_TITLES = frozenset(
    {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "rev", "sir", "madam", "dame", "fr", "sr",
     "sra", "srta", "don", "dona", "doña", "lady", "lord", "capt", "col", "sgt", "hon"}
)
# fmt: on
_GENERATIONS = frozenset({"jr", "sr", "ii", "iii", "iv", "v", "2nd", "3rd"})
_NAME_OK_RE = re.compile(r"^[^\W\d_][^\d@<>{}=|\\/:;]*$")


def _token(word: str) -> str:
    return word.lower().strip(".,")


def is_name(value: str) -> bool:
    """A plausible person name: letters first, no digits or '@', not a yes/no answer."""
    return bool(_NAME_OK_RE.match(value)) and _token(value) not in _ANSWERS and len(value) <= 80


def split_name(value: str) -> tuple[str | None, str | None]:
    """(first, last) of a full name: "Last, First" reversed, titles and middle names dropped.

    A generation suffix (Jr., Sr., III) stays in the last name: matching needs it to tell
    a father from his son. Two plain words skip nameparser, which costs ~0.1 ms a call.
    """
    text = clean(value)
    if not text or not is_name(text):
        return None, None
    words = text.split()
    if len(words) == 1:
        return words[0], None
    if (
        len(words) == 2
        and "," not in text
        and "." not in text
        and not (_token(words[0]) in _TITLES or _token(words[1]) in _GENERATIONS)
    ):
        return words[0], words[1]
    parsed = HumanName(text)
    first, last = parsed.first or None, parsed.last or None
    generations = [s for s in parsed.suffix_list if _token(s) in _GENERATIONS]
    if last and generations:
        last = f"{last} {generations[0].strip(',')}"
    return first, last


def first_name(value: str) -> str | None:
    """A separately labelled first name, without a title or a trailing middle initial."""
    text = clean(value)
    if not text or not is_name(text):
        return None
    words = text.split()
    if len(words) > 1 and _token(words[0]) in _TITLES:
        words = words[1:]
    if len(words) > 1 and len(_token(words[-1])) == 1:
        words = words[:-1]
    return " ".join(words)


def last_name(value: str) -> str | None:
    text = clean(value)
    return text if text and is_name(text) else None


# --- places -----------------------------------------------------------------------------

_UK_RE = re.compile(r"^([A-Z]{1,2}\d[A-Z\d]?) ?(\d[A-Z]{2})$")
_CA_RE = re.compile(r"^([ABCEGHJ-NPRSTVXY]\d[A-Z]) ?-?(\d[A-Z]\d)$")
_US_RE = re.compile(r"^\d{5}(?:-\d{4})?$")
# fmt: off
_COUNTRY_ALIASES = {
    "usa": "US", "u s a": "US", "u s": "US", "us": "US", "america": "US",
    "united states of america": "US", "estados unidos": "US", "eeuu": "US", "ee uu": "US",
    "uk": "GB", "u k": "GB", "great britain": "GB", "britain": "GB", "england": "GB",
    "scotland": "GB", "wales": "GB", "northern ireland": "GB", "reino unido": "GB",
    "canada": "CA", "mexico": "MX", "espana": "ES", "alemania": "DE", "francia": "FR",
}
# fmt: on


def postal_code(value: str, country: str | None = None) -> str | None:
    """As written, except UK and Canadian codes: upper case with their single space."""
    text = clean(value, 16)
    if not text:
        return None
    upper = text.upper()
    if country in (None, "CA") and (found := _CA_RE.match(upper)):
        return f"{found.group(1)} {found.group(2)}"
    if country in (None, "GB", "IE", "IM", "JE", "GG") and (found := _UK_RE.match(upper)):
        return f"{found.group(1)} {found.group(2)}"
    return text


def postal_region(code: str | None) -> str | None:
    """Which country's phone plan a postal code points to (a hint, never the country field)."""
    if not code:
        return None
    if _US_RE.match(code):
        return "US"
    if _CA_RE.match(code):
        return "CA"
    return "GB" if _UK_RE.match(code) else None


def _key(text: str) -> str:
    return _SPACE_RE.sub(" ", re.sub(r"[^\w ]", " ", fold(text))).strip()


@functools.cache
def _country_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for entry in pycountry.countries:
        code = entry.alpha_2
        for attr in ("alpha_2", "alpha_3", "name", "official_name", "common_name"):
            if hasattr(entry, attr):
                names[_key(getattr(entry, attr))] = code
    names.update(_COUNTRY_ALIASES)
    return names


def country(value: str) -> str | None:
    """ISO 3166 alpha-2 for a country name or code ("United Kingdom", "USA", "ca")."""
    text = clean(value, 80)
    return _country_names().get(_key(text)) if text else None


@functools.cache
def _subdivisions(code: str) -> dict[str, str]:
    found = (s for s in pycountry.subdivisions if s.country_code == code)
    return {_key(s.name): s.code.partition("-")[2] for s in found}


def region(value: str, country_code: str | None = None) -> str | None:
    """A region code upper-cased; a US/Canadian state or province name turned into its code."""
    text = clean(value, 80)
    if not text:
        return None
    if len(text) <= 3 and text.replace(".", "").isalpha():
        return text.replace(".", "").upper()
    key = _key(text)
    for code in (country_code,) if country_code else ("US", "CA"):
        if (found := _subdivisions(code).get(key)) is not None:
            return found
    return text


def known_region(text: str) -> bool:
    """A US state or Canadian province, by its name or its code."""
    key, code = _key(text), text.upper()
    return any(key in s or code in s.values() for s in (_subdivisions("US"), _subdivisions("CA")))


# --- appointments -----------------------------------------------------------------------

# fmt: off
_ANSWERS = frozenset(
    {"yes", "no", "y", "n", "true", "false", "si", "sí", "ok", "x", "on", "off", "checked",
     "requested", "none", "unknown"}
)
# fmt: on
_NO_RE = re.compile(r"\s*(?:no|n|false|0|none|not|nope|declined|non|negative)\b", re.I)
_YES_RE = re.compile(
    r"\s*(?:yes|y|true|1|requested|request|please|sure|s[ií]|x|checked|on|ok|definitely)\b",
    re.I,
)
#: What a customer writes when they want someone to come, or to come in (README: an
#: appointment, a consultation, an estimate or survey visit, a test drive).
_VISIT_RE = re.compile(
    r"\btest[- ]?drive|\bprueba de manejo|"
    r"\b(?:come|coming|stop|swing|pop|drop)\s+(?:out|by|over|round|around)\b|"
    r"\b(?:site|home|in[- ]home|house|on[- ]site|property)\s+(?:survey|visit|assessment|"
    r"consultation|estimate|appointment|inspection)|"
    r"\b(?:estimate|survey|measuring|measure|design)\s+(?:visit|appointment)|"
    r"\b(?:book|schedule|set up|arrange)\s+(?:a|an|the)?\s*(?:free\s+)?(?:estimate|survey|"
    r"visit|inspection|assessment|measure)|"
    r"\b(?:appointment|consultation|surveyor|cita|visita|consulta)\b",
    re.I,
)
_NEGATION_RE = re.compile(
    r"\b(?:not|no|never|without|cannot|don['’]?t|doesn['’]?t|isn['’]?t|aren['’]?t|won['’]?t|"
    r"can['’]t|nada|ninguna?)\b|n['’]t\b",
    re.I,
)
_CLAUSE_END_RE = re.compile(r"[.!?;,\n]|\bbut\b|\bpero\b", re.I)
_MONTHS_RE = (
    r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?|enero|febrero|marzo|abril|"
    r"mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre"
)
_DATE_RE = re.compile(
    rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+(?:de\s+)?(?:{_MONTHS_RE})\b|(?:{_MONTHS_RE})\.?\s+"
    r"\d{1,2}\b|\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}(?:/\d{2,4})?\b|\d{1,2}\.\d{1,2}\.\d{2,4})",
    re.I,
)
_TIME_RE = re.compile(
    r"\b(?:[01]?\d|2[0-3])[:h][0-5]\d\b|\b(?:1[0-2]|0?[1-9])\s*[ap]\.?\s?m\b|\bnoon\b|"
    r"\bmediod[ií]a\b",
    re.I,
)
_YEAR_RE = re.compile(r"\b\d{4}\b")


def asks_for_visit(text: str) -> bool:
    """True when the text asks for a visit/appointment in a clause without a negation.

    "Can someone come out and measure?" is a request; "we're not ready for anyone to come
    out yet" is not; "Best time to call: evenings" never matches.
    """
    return any(
        _VISIT_RE.search(clause) and not _NEGATION_RE.search(clause)
        for clause in _CLAUSE_END_RE.split(text[:MAX_COMMENTS])
    )


def answer(value: str) -> bool | None:
    """The yes/no of an appointment-like field; a date or a visit request in it is a yes."""
    text = value[:300]
    if _NO_RE.match(text):
        return False
    if _YES_RE.match(text) or _DATE_RE.search(text) or asks_for_visit(text):
        return True
    return None


def has_date(text: str) -> bool:
    return bool(_DATE_RE.search(text[:300]))


# fmt: off
_SPANISH = {
    "enero": "January", "febrero": "February", "marzo": "March", "abril": "April",
    "mayo": "May", "junio": "June", "julio": "July", "agosto": "August",
    "septiembre": "September", "setiembre": "September", "octubre": "October",
    "noviembre": "November", "diciembre": "December",
}
# fmt: on
_SPANISH_RE = re.compile(
    rf"\b(?:{'|'.join(_SPANISH)}|de|del|a las|a la|las|lunes|martes|mi[ée]rcoles|jueves|"
    r"viernes|s[áa]bado|domingo)\b",
    re.I,
)


def _english(found: re.Match[str]) -> str:
    """dateutil knows English month names only: Spanish ones are swapped, fillers dropped."""
    return _SPANISH.get(found.group(0).lower(), " ")


def appointment_at(
    text: str, *, dayfirst: bool, after: datetime | None
) -> tuple[datetime | None, str | None]:
    """(local datetime, problem) when ``text`` states both a date and a clock time.

    A date without a year takes the year that puts it on or after ``after`` (the message
    date). The result is naive: the local time as the customer wrote it.
    """
    text = text[:200]
    if not (_DATE_RE.search(text) and _TIME_RE.search(text)):
        return None, None
    base = (after or datetime.now()).replace(tzinfo=None)  # local time by design
    default = base.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        value = dateparser.parse(
            _SPANISH_RE.sub(_english, text), fuzzy=True, dayfirst=dayfirst, default=default
        ).replace(tzinfo=None)
        if not _YEAR_RE.search(text) and value < default:
            value = value.replace(year=value.year + 1)
    except (ValueError, OverflowError):
        return None, f"unparseable appointment date {clean(text, 80)!r}"
    return value, None
