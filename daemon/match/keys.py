"""Blocking keys: the short strings under which a prospect is indexed in ``ProspectKey``.

Candidate retrieval looks keys up on the ``(account, key, prospect)`` index and never
scans the prospect table, so a lead is compared with a few dozen prospects whatever the
size of the account. The same :func:`blocking_keys` serves prospects (stored) and leads
(looked up); :func:`query_keys` adds the look-ups that only make sense from the lead's
side.

Key kinds, strongest first (the order of ``KEY_KINDS`` is the order of the look-ups):

    e:<email>                 folded: lower case, Gmail dots, +tags where the provider folds
    p:<E.164>                 phone and phone_alt
    a:<number>|<street>       house number + street name (USPS suffix/directional forms)
    n:<last>|<postal>         phonetic surname (Metaphone) + postal code
    f:<first>|<l>|<postal>    first-name group + the surname's initial + postal code (a
                              slip that changes the sound: Nowak/Novak)
    c:<last>|<first>|<city>   phonetic surname + first-name group + city
    g:<last>|<first>          phonetic surname + first-name group, anywhere (display only)

The first-name group of "Bill" and "William" is "william" (see names.py), so nicknames
share keys; an initial is its own group and is looked up from the full name's side.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jellyfish
import phonenumbers

from daemon.match.names import CACHE_SIZE, first_name_keys, given_name, surname_parts
from daemon.parse import normalise
from daemon.parse.normalise import fold

KEY_KINDS: tuple[str, ...] = ("e", "p", "a", "n", "f", "c", "g")
MAX_KEY = 255

#: Providers that deliver ``local+tag@`` to ``local@``; Gmail also ignores dots.
_PLUS_PROVIDERS = frozenset(
    {
        "gmail.com",
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "fastmail.com",
        "fastmail.fm",
        "protonmail.com",
        "proton.me",
        "pm.me",
    }
)
_DOMAIN_ALIASES = {"googlemail.com": "gmail.com"}

# USPS Publication 28 forms for the words that vary between writers of one address.
# fmt: off
_STREET_WORDS = {
    "street": "st", "str": "st", "avenue": "ave", "av": "ave", "road": "rd", "drive": "dr",
    "drv": "dr", "court": "ct", "crt": "ct", "lane": "ln", "place": "pl", "boulevard": "blvd",
    "parkway": "pkwy", "pky": "pkwy", "circle": "cir", "terrace": "ter", "trail": "trl",
    "highway": "hwy", "square": "sq", "crescent": "cres", "commons": "cmns", "heights": "hts",
    "point": "pt", "ridge": "rdg", "hollow": "holw", "glen": "gln", "creek": "crk",
    "meadow": "mdw", "meadows": "mdws", "mount": "mt", "mountain": "mtn", "fort": "ft",
    "north": "n", "south": "s", "east": "e", "west": "w", "northeast": "ne",
    "northwest": "nw", "southeast": "se", "southwest": "sw", "first": "1st", "second": "2nd",
    "third": "3rd", "fourth": "4th", "fifth": "5th", "sixth": "6th", "seventh": "7th",
    "eighth": "8th", "ninth": "9th", "tenth": "10th",
}
_SUFFIXES = frozenset(
    {"st", "ave", "rd", "dr", "ct", "ln", "pl", "blvd", "pkwy", "way", "cir", "ter", "trl",
     "hwy", "sq", "cres", "row", "mews", "close", "run", "pike", "loop", "path", "walk",
     "xing", "aly", "plz", "cv", "bnd", "pass"}
)
_UNITS = frozenset(
    {"apt", "apartment", "unit", "suite", "ste", "#", "no", "flat", "fl", "floor", "bldg",
     "building", "rm", "room", "lot", "spc", "space"}
)
# fmt: on
_TOKEN_RE = re.compile(r"#|[^\W_]+", re.UNICODE)
_US_ZIP_RE = re.compile(r"^(\d{5})(?:-?\d{4})?$")


@dataclass(frozen=True, slots=True)
class Street:
    """A street address taken apart: "77 Oak Hollow Dr #3" -> 77 / oak holw / dr / 3."""

    number: str
    name: str
    suffix: str | None
    unit: str | None


def fold_email(value: object) -> str | None:
    """The mailbox an address delivers to: lower case, Gmail dots and known +tags folded."""
    if not isinstance(value, str) or "@" not in value:
        return None
    local, _, domain = value.strip().lower().rpartition("@")
    if not local or not domain:
        return None
    domain = _DOMAIN_ALIASES.get(domain, domain)
    if domain in _PLUS_PROVIDERS:
        local = local.split("+", 1)[0]
    if domain == "gmail.com":
        local = local.replace(".", "")
    return f"{local}@{domain}" if local else None


# --- identifier values at bulk speed ------------------------------------------------------

_NANP_SHAPE = re.compile(r"^(?:\+?1[\s.\-]?)?\(?\d{3}\)?[\s.\-]?\d{3}[\s.\-]?\d{4}$")
_PLAIN_EMAIL = re.compile(
    r"^[A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*@([A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)$"
)


_NON_DIGITS = re.compile(r"\D")
_NANP_LEAD = frozenset("23456789")


#: Area code + exchange prefixes remembered: a state's worth of numbers has more than
#: CACHE_SIZE of them (13 area codes x 790 exchanges in benchmarks/match.py), and each one
#: forgotten costs a full libphonenumber check (~45 us) when it comes back. 65,536 entries
#: are about 10 MB, in the importing processes only.
_EXCHANGES_CACHED = 1 << 16


@functools.lru_cache(maxsize=_EXCHANGES_CACHED)
def _nanp_exchange_valid(prefix: str) -> bool:
    """Whether +1 numbers starting with this area code + exchange are valid.

    libphonenumber's NANP patterns decide on the first six digits and end in ``\\d{4}``,
    so one full check per exchange stands for all its numbers. From 2-9, "+1<prefix>0100"
    parses to exactly this number (no national prefix to strip, no leading zero), so the
    parse is skipped; and a number valid for the US (the first of +1's regions, the one
    is_valid_number tries first) is valid. A sixth of the full cost, paid for most rows
    of a 10k import.
    """
    if prefix[:1] in _NANP_LEAD:
        number = phonenumbers.PhoneNumber(country_code=1, national_number=int(f"{prefix}0100"))
        return bool(
            phonenumbers.is_valid_number_for_region(number, "US")
            or phonenumbers.is_valid_number(number)
        )
    return normalise.phone(f"+1{prefix}0100", ("US",)) is not None


@functools.lru_cache(maxsize=4096)
def _domain_valid(domain: str) -> bool:
    return normalise.email(f"x@{domain}") is not None


def e164(value: str, regions: tuple[str, ...]) -> str | None:
    """normalise.phone (E.164), with a fast path for the common NANP spellings.

    For bulk work (the prospect import): a number is checked in full once per exchange.
    """
    if _NANP_SHAPE.match(value) and (value.startswith("+1") or regions[0] in ("US", "CA")):
        digits = _NON_DIGITS.sub("", value)[-10:]
        if _nanp_exchange_valid(digits[:6]):
            return f"+1{digits}"
    return normalise.phone(value, regions)


def email_address(value: str) -> str | None:
    """normalise.email (lower case), with a fast path for plain ASCII addresses.

    The domain is checked in full once; a plain local part needs no more than the regex.
    """
    found = _PLAIN_EMAIL.match(value)
    if (
        found
        and len(value) <= 254
        and value.index("@") <= 64
        and _domain_valid(found.group(1).lower())
    ):
        return value.lower()
    return normalise.email(value)


# --- streets and places -------------------------------------------------------------------


def _street_tokens(text: str) -> list[str]:
    tokens = _TOKEN_RE.findall(text.lower() if text.isascii() else fold(text))
    return [_STREET_WORDS.get(t, t) for t in tokens]


def _take_unit(words: list[str]) -> tuple[list[str], str | None]:
    """Remove "apt 3" / "#3" / "suite B" (anywhere) and return the unit's value."""
    for i, word in enumerate(words):
        if word in _UNITS and i + 1 < len(words) and (word != "no" or words[i + 1].isdigit()):
            return words[:i] + words[i + 2 :], words[i + 1]
    return words, None


@functools.lru_cache(maxsize=CACHE_SIZE)
def parse_street(value: str) -> Street | None:
    """Number, name, suffix and unit of a one-line street address, or None without a number.

    "St" right after the number and before more words is "Saint" ("5 St. Andrews Ct");
    elsewhere it is "Street".
    """
    words, unit = _take_unit(_street_tokens(value))
    at = next((i for i, w in enumerate(words) if w[0].isdigit()), None)
    if at is None:
        return None
    number, rest = words[at], words[at + 1 :]
    if len(rest) > 1 and rest[0] == "st":
        rest = ["saint", *rest[1:]]
    suffix = rest[-1] if len(rest) > 1 and rest[-1] in _SUFFIXES else None
    name = " ".join(rest[:-1] if suffix else rest)
    if not name:
        return None
    return Street(number=number, name=name, suffix=suffix, unit=unit)


def postal_key(value: object) -> str | None:
    """A postal code as compared: ZIP+4 cut to ZIP5, other codes upper case without spaces."""
    if not isinstance(value, str):
        return None
    text = value.strip().upper().replace(" ", "")
    if not text:
        return None
    found = _US_ZIP_RE.match(text)
    return found.group(1) if found else text


@functools.lru_cache(maxsize=CACHE_SIZE)
def _city_key(text: str) -> str | None:
    words = [_STREET_WORDS.get(w, w) for w in _TOKEN_RE.findall(fold(text))]
    if words and words[0] == "st":
        words[0] = "saint"
    return " ".join(words) or None


def city_key(value: object) -> str | None:
    """A city as compared: folded, "St."/"Saint" and "Mt."/"Mount" alike."""
    return _city_key(value) if isinstance(value, str) else None


@functools.lru_cache(maxsize=CACHE_SIZE)
def _surname_codes(last: str) -> tuple[str, ...]:
    parts = surname_parts(last)
    if not parts:
        return ()
    names = ["".join(parts), *(parts if len(parts) > 1 else ())]
    return tuple(dict.fromkeys(jellyfish.metaphone(n) if n.isascii() else n for n in names))


def surname_codes(value: object) -> tuple[str, ...]:
    """Metaphone codes of a surname: the whole, and each part of a double surname."""
    return _surname_codes(value) if isinstance(value, str) and value else ()


def _name_keys(first: object, last: object, postal: str | None, city: str | None) -> set[str]:
    keys: set[str] = set()
    firsts = first_name_keys(first) if isinstance(first, str) else frozenset()
    parts = surname_parts(last) if isinstance(last, str) else ()
    if postal and parts:
        keys.update(f"f:{group}|{parts[0][0]}|{postal}" for group in firsts)
    for code in surname_codes(last):
        if postal:
            keys.add(f"n:{code}|{postal}")
        for group in firsts:
            keys.add(f"g:{code}|{group}")
            if city:
                keys.add(f"c:{code}|{group}|{city}")
    return keys


def blocking_keys(fields: Mapping[str, Any]) -> set[str]:
    """Every key of a prospect (or lead) record; each at most 255 characters."""
    keys: set[str] = set()
    email = fold_email(fields.get("email"))
    if email:
        keys.add(f"e:{email}")
    for name in ("phone", "phone_alt"):
        phone = fields.get(name)
        if isinstance(phone, str) and phone:
            keys.add(f"p:{phone}")
    street = fields.get("street")
    parsed = parse_street(street) if isinstance(street, str) and street else None
    if parsed:
        keys.add(f"a:{parsed.number}|{parsed.name}")
    postal, city = postal_key(fields.get("postal_code")), city_key(fields.get("city"))
    keys |= _name_keys(fields.get("first_name"), fields.get("last_name"), postal, city)
    if keys and max(map(len, keys)) > MAX_KEY:
        return {k[:MAX_KEY] for k in keys}
    return keys


def query_keys(lead: Mapping[str, Any]) -> list[str]:
    """The keys to look a lead up by, strongest kind first.

    Beyond :func:`blocking_keys`: the initial of the lead's first name (finds "R Kaminski"
    for "Robert Kaminski") and the name read the other way round (transposed fields).
    """
    keys = blocking_keys(lead)
    first, last = lead.get("first_name"), lead.get("last_name")
    postal, city = postal_key(lead.get("postal_code")), city_key(lead.get("city"))
    if isinstance(first, str) and len(initial := given_name(first)) > 1:
        keys |= _name_keys(initial[0], last, None, city)
    keys |= _name_keys(last, first, postal, city)
    order = {kind: i for i, kind in enumerate(KEY_KINDS)}
    return sorted((k[:MAX_KEY] for k in keys), key=lambda k: (order.get(k[0], 99), k))
