"""JSON and CSV leads, as the body or as an attachment.

Keys are read through the same synonym table as text labels, so ``{"contact":
{"firstName": ...}}``, ``"first_name"`` and a CSV header ``First Name`` mean the same. A
nested key is tried as "parent key" first ("appointment date", "project type"), then as
its own name. Objects named like the seller (provider, vendor, dealer, ...) are never the
customer: only their name is kept, as the lead source. Nesting, size and row counts are
bounded, and ``json`` itself refuses absurd depth (RecursionError, caught by the caller).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from typing import Any

from daemon.parse.labels import Found, field_for, label_key
from daemon.parse.model import DecodedMessage

MAX_JSON = 1_000_000
MAX_DEPTH = 12
MAX_LEAVES = 500
MAX_CSV = 200_000
# fmt: off
_SELLER = frozenset(
    {"provider", "vendor", "dealer", "dealership", "seller", "company", "business", "agent",
     "support", "account", "affiliate", "publisher", "partner", "pro", "contractor", "store",
     "recipient", "sender", "meta", "metadata", "tracking"}
)
# fmt: on
_SELLER_NAME = frozenset({"name", "company", "company name", "display name", "provider name"})
_VALUE_KEYS = frozenset({"value", "number", "text", "address", "val"})
_JSON_TYPES = ("json",)
_CSV_TYPES = ("csv", "comma-separated")


def _bodies(msg: DecodedMessage, kinds: tuple[str, ...], suffix: str, limit: int) -> Iterator[str]:
    """Attachments of that kind first, then a text body that starts the right way."""
    for part in msg.parts:
        named = part.filename is not None and part.filename.lower().endswith(suffix)
        if part.text is not None and (named or any(k in part.content_type for k in kinds)):
            yield part.text[:limit]
    body = msg.text.lstrip("\ufeff \t\r\n")
    if body:
        yield body[:limit]


# --- JSON -------------------------------------------------------------------------------


def _leaves(node: Any, path: tuple[str, ...], out: list[tuple[tuple[str, ...], Any]]) -> None:
    if len(path) > MAX_DEPTH or len(out) >= MAX_LEAVES:
        return
    if isinstance(node, dict):
        if len(node) <= 50:
            _vehicle(node, path, out)
        for key, value in node.items():
            if len(out) >= MAX_LEAVES:
                return
            _leaves(value, (*path, str(key)), out)
    elif isinstance(node, list):
        dicts = [item for item in node[:50] if isinstance(item, dict)]
        # a list of phones or emails counts whole; of other records, the first is the lead
        many = bool(path) and field_for(path[-1]) in ("phone", "email")
        for item in dicts[: 5 if many else 1]:
            _leaves(item, path, out)
        if dicts:
            return
        for item in node[:10]:
            _leaves(item, path, out)
    elif node is not None:
        out.append((path, node))


def _vehicle(node: dict[Any, Any], path: tuple[str, ...], out: list[Any]) -> None:
    """{"year", "make", "model"} is a vehicle of interest, unless it is a trade-in."""
    keys = {label_key(str(k)): v for k, v in node.items()}
    if "make" in keys and "model" in keys and not any("trade" in label_key(p) for p in path):
        words = [str(keys[k]) for k in ("year", "make", "model") if keys.get(k) is not None]
        out.append(((*path, "vehicle of interest"), " ".join(words)))


def _json_field(path: tuple[str, ...], extra: Mapping[str, str] | None) -> str | None:
    keys = [label_key(p) for p in path]
    if any(k in _SELLER for k in keys[:-1]):
        return (
            "source"
            if keys[-1] in _SELLER_NAME and keys[0] in ("provider", "affiliate", "publisher")
            else None
        )
    if len(keys) == 1 and keys[0] == "id":
        return "external_id"
    tries = [" ".join(keys[-2:]), keys[-1]] if len(keys) > 1 else [keys[-1]]
    if keys[-1] in _VALUE_KEYS and len(keys) > 1:
        tries.append(keys[-2])
    for label in tries:
        if (key := field_for(label, extra)) is not None:
            return key
    return None


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def parse_json(msg: DecodedMessage, *, labels: Mapping[str, str] | None = None) -> Found | None:
    """The first JSON object in a .json attachment or a body that is JSON."""
    for text in _bodies(msg, _JSON_TYPES, ".json", MAX_JSON):
        text = text.strip()
        if not text.startswith(("{", "[")):
            continue
        try:
            data = json.loads(text)
        except ValueError:
            continue
        leaves: list[tuple[tuple[str, ...], Any]] = []
        _leaves(data, (), leaves)
        found = Found()
        for path, value in leaves:
            if path and (key := _json_field(path, labels)) is not None:
                found.add(key, _scalar(value))
        if found.pairs:
            return found
    return None


# --- CSV --------------------------------------------------------------------------------


def _dialect(header: str) -> str:
    return max(",;\t|", key=header.count)


def parse_csv(msg: DecodedMessage, *, labels: Mapping[str, str] | None = None) -> Found | None:
    """A header row of known labels over one row of values (.csv attachment or body)."""
    for text in _bodies(msg, _CSV_TYPES, ".csv", MAX_CSV):
        lines = [line for line in text.splitlines()[:1000] if line.strip()]
        if len(lines) < 2:
            continue
        delimiter = _dialect(lines[0])
        header = next(csv.reader([lines[0]], delimiter=delimiter))
        keys = [field_for(cell, labels) for cell in header]
        if len(header) < 2 or sum(k is not None for k in keys) < 2:
            continue  # cheap refusal first: most text bodies are not CSV
        rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
        first = rows[1]
        if len(first) != len(header):
            continue
        found = Found()
        for key, value in zip(keys, first, strict=True):
            if key is not None:
                found.add(key, value)
        if len(rows) > 2:
            found.problems.append(f"CSV holds {len(rows) - 1} rows; the first was taken")
        return found
    return None
