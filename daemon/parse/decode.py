"""Decode raw message bytes into one ``DecodedMessage``; never raises.

Every later stage reads the ``DecodedMessage`` only, so all MIME and charset trouble is
handled here, once. The stdlib parser with ``compat32`` is used directly: it is ~9x faster
than ``policy.default`` and never raises on malformed headers; mail-parser would add a
second decode of the same tree (and has leaked message/rfc822 parts into bodies).
Anything wrong but survivable becomes a line in ``defects``, not an exception.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from email import message_from_bytes
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr, parsedate_to_datetime

from daemon.parse.htmltext import html_to_text
from daemon.parse.model import DecodedMessage, Part

log = logging.getLogger(__name__)

MAX_RAW_BYTES = 32 * 1024 * 1024  # aiosmtpd's default data_size_limit
MAX_DEPTH = 50  # multipart nesting; deeper parts are dropped with a defect
MAX_BOUNDARIES = 200  # more boundary= than this: the parser's cost grows as depth x lines
MAX_ATTACHED_DEPTH = 3  # message/rfc822 inside message/rfc822 ...
MAX_ATTACHED = 20
MAX_HEADER_CHARS = 8192
MAX_HEADERS = 1000
MAX_HTML_CHARS = 2_000_000

_ADDRESS_HEADERS = ("to", "cc", "delivered-to", "x-original-to")
_TEXT_APP_TYPES = frozenset(
    {
        "application/xml",
        "application/json",
        "application/csv",
        "application/x-csv",
        "application/javascript",
        "application/x-www-form-urlencoded",
    }
)
_TEXT_EXTENSIONS = (".xml", ".json", ".csv", ".txt", ".adf", ".htm", ".html", ".eml")
_SINGLE_BYTE_LABELS = frozenset(
    {"iso-8859-1", "latin-1", "latin1", "iso8859-1", "l1", "windows-1252", "cp1252", "us-ascii"}
)
_FOLD_RE = re.compile(r"\r?\n[ \t]*|\r")
_SURROGATE_RE = re.compile("[\udc80-\udcff]")


def decode_message(raw: bytes) -> DecodedMessage:
    """Decode ``raw``; on any internal failure return an empty message with a defect."""
    try:
        return _decode_bytes(bytes(raw), depth=0)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        log.warning("decode failed: %s", type(exc).__name__)
        return _empty(f"undecodable message: {type(exc).__name__}")


def _empty(defect: str) -> DecodedMessage:
    return DecodedMessage(None, "", None, None, (), (), None, {}, "", None, (), (), (defect,))


def decode_text(data: bytes, declared: str | None) -> tuple[str, str | None]:
    """Bytes to str: the declared charset, then utf-8, cp1252, latin-1; plus a defect note.

    Labels lie: ``iso-8859-1`` is read as cp1252 (its superset, as browsers do) and
    ``us-ascii`` with 8-bit bytes falls through to utf-8.
    """
    label = (declared or "").strip().strip('"').lower()
    defect = None
    if label in _SINGLE_BYTE_LABELS:
        if not data.isascii() and _is_utf8(data):  # UTF-8 sent under a legacy label
            return data.decode("utf-8"), f"declared {label[:40]!r} but the bytes are UTF-8"
        label = "cp1252" if label != "us-ascii" else label
    if label:
        try:
            return data.decode(label), None
        except LookupError:
            defect = f"unknown charset {label[:40]!r}"
        except UnicodeDecodeError:
            defect = f"bytes not valid in declared charset {label[:40]!r}"
    for fallback in ("utf-8", "cp1252"):
        try:
            return data.decode(fallback), defect
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), defect


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode_bytes(raw: bytes, depth: int) -> DecodedMessage:
    defects: list[str] = []
    if len(raw) > MAX_RAW_BYTES:
        raw = raw[:MAX_RAW_BYTES]
        defects.append("message truncated at 32 MiB")
    if b"\x00" in raw:
        raw = raw.replace(b"\x00", b"")
        defects.append("NUL bytes removed")
    headers_only = raw.count(b"oundary") > MAX_BOUNDARIES
    if headers_only:
        defects.append(f"more than {MAX_BOUNDARIES} multipart boundaries: body kept as text")
    try:
        if headers_only:
            msg = BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
        else:
            msg = message_from_bytes(raw, policy=compat32)
    except RecursionError:
        defects.append("multipart nesting too deep for the parser: body kept as text")
        msg = BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
    return _from_message(msg, defects, depth)


def _from_message(msg: Message, defects: list[str], depth: int) -> DecodedMessage:
    raw = _raw_headers(msg)
    headers = _decode_headers(raw, defects)
    walker = _Walker(depth, defects)
    walker.walk(msg, 0)
    text, html = walker.body()
    from_name, from_addr = _first_address(raw)
    return DecodedMessage(
        message_id=_message_id(headers),
        subject=(headers.get("subject") or [""])[0],
        from_addr=from_addr,
        from_name=from_name,
        reply_to=_addresses(raw, ("reply-to",)),
        to=_addresses(raw, _ADDRESS_HEADERS),
        date=_date(headers),
        headers=headers,
        text=text,
        html=html,
        parts=tuple(walker.parts),
        attached_messages=tuple(walker.attached),
        defects=tuple(dict.fromkeys(defects)),
    )


def header_text(value: object) -> str:
    """One header value as clean text: 8-bit repaired, encoded words decoded, no CR/LF."""
    text = value if isinstance(value, str) else str(value)
    if _SURROGATE_RE.search(text):  # raw 8-bit bytes smuggled through surrogateescape
        text = decode_text(text.encode("ascii", "surrogateescape"), None)[0]
    if "=?" in text:
        text = _decode_words(text)
    if "\n" in text or "\r" in text:
        text = _FOLD_RE.sub(" ", text)
    return text.replace("\x00", "").strip()


def _decode_words(value: str) -> str:
    try:
        chunks = decode_header(value)
    except Exception:  # noqa: BLE001 - malformed encoded words stay as written
        return value
    out = []
    for chunk, charset in chunks:
        out.append(chunk if isinstance(chunk, str) else decode_text(chunk, charset)[0])
    return "".join(out)


def _raw_headers(msg: Message) -> dict[str, list[str]]:
    """Header name (lower case) -> raw values as parsed (8-bit kept as surrogates)."""
    raw: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        raw.setdefault(str(name).lower()[:200], []).append(str(value))
    return raw


def _decode_headers(raw: dict[str, list[str]], defects: list[str]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    count = 0
    for name, values in raw.items():
        key = header_text(name)
        for value in values:
            count += 1
            if count > MAX_HEADERS:
                defects.append(f"more than {MAX_HEADERS} headers: the rest ignored")
                return headers
            text = header_text(value)
            if len(text) > MAX_HEADER_CHARS:
                defects.append(f"header {key[:40]} truncated at {MAX_HEADER_CHARS} characters")
                text = text[:MAX_HEADER_CHARS]
            headers.setdefault(key, []).append(text)
    return headers


def _clean_values(raw: dict[str, list[str]], names: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for name in names:
        for value in raw.get(name, ()):
            text = value[:MAX_HEADER_CHARS]
            if _SURROGATE_RE.search(text):
                text = decode_text(text.encode("ascii", "surrogateescape"), None)[0]
            values.append(_FOLD_RE.sub(" ", text).replace("\x00", ""))
    return values


def _addresses(raw: dict[str, list[str]], names: tuple[str, ...]) -> tuple[str, ...]:
    try:
        pairs = getaddresses(_clean_values(raw, names))
    except Exception:  # noqa: BLE001 - one bad header must not sink the message
        return ()
    found = (addr.strip().lower() for _, addr in pairs)
    return tuple(dict.fromkeys(a for a in found if "@" in a and " " not in a))


def _first_address(raw: dict[str, list[str]]) -> tuple[str | None, str | None]:
    values = _clean_values(raw, ("from",))
    if not values:
        return None, None
    try:
        name, addr = parseaddr(values[0])
    except Exception:  # noqa: BLE001
        return None, None
    addr = header_text(addr).lower()
    name = header_text(name)
    return (name or None), (addr if "@" in addr and " " not in addr else None)


def _message_id(headers: dict[str, list[str]]) -> str | None:
    value = (headers.get("message-id") or [""])[0].strip()
    if not value:
        return None
    value = value.split()[0] if value.startswith("<") else value
    return value.strip("<>").strip() or None


def _date(headers: dict[str, list[str]]) -> datetime | None:
    value = (headers.get("date") or [""])[0]
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except Exception:  # noqa: BLE001 - a bad Date is just no date
        return None


def _is_attachment(node: Message, filename: str | None) -> bool:
    disposition = str(node.get("content-disposition", "")).lower()
    return disposition.startswith("attachment") or filename is not None


def _is_texty(ctype: str, filename: str | None) -> bool:
    if ctype.startswith("text/") or ctype in _TEXT_APP_TYPES:
        return True
    if ctype.endswith(("+xml", "+json")):
        return True
    return filename is not None and filename.lower().endswith(_TEXT_EXTENSIONS)


class _Walker:
    """Collects leaf parts, body candidates and attached messages from a MIME tree."""

    def __init__(self, depth: int, defects: list[str]) -> None:
        self.depth = depth
        self.defects = defects
        self.parts: list[Part] = []
        self.attached: list[DecodedMessage] = []
        self.plain: list[str] = []
        self.html: list[str] = []
        self.other_text: list[str] = []

    def walk(self, node: Message, level: int) -> None:
        if level > MAX_DEPTH:
            self.defects.append(f"multipart nesting deeper than {MAX_DEPTH}: inner parts dropped")
            return
        for defect in node.defects:
            self.defects.append(type(defect).__name__)
        ctype = node.get_content_type().lower()
        payload = node.get_payload()
        if isinstance(payload, list):
            if ctype in ("message/rfc822", "message/global") and payload:
                first = payload[0]
                self._attach(first if isinstance(first, Message) else None, None)
            elif ctype.startswith("message/"):  # delivery-status: blocks of headers
                blocks = "\n\n".join(
                    "\n".join(f"{k}: {header_text(v)}" for k, v in b.items())
                    for b in payload
                    if isinstance(b, Message)
                )
                self.parts.append(Part(ctype, None, blocks.encode("utf-8", "replace"), blocks))
            else:
                for child in payload:
                    if isinstance(child, Message):
                        self.walk(child, level + 1)
            return
        self._leaf(node, ctype)

    def _attach(self, sub: Message | None, data: bytes | None) -> None:
        if self.depth >= MAX_ATTACHED_DEPTH or len(self.attached) >= MAX_ATTACHED:
            self.defects.append("attached messages nested too deep or too many: skipped")
            return
        if sub is not None:
            self.attached.append(_from_message(sub, [], self.depth + 1))
        elif data is not None:
            self.attached.append(_decode_bytes(data, self.depth + 1))

    def _leaf(self, node: Message, ctype: str) -> None:
        try:
            data = node.get_payload(decode=True)
        except Exception:  # noqa: BLE001 - broken transfer encoding: keep the raw text
            self.defects.append("undecodable transfer encoding")
            data = None
        if not isinstance(data, bytes):
            raw = node.get_payload()
            data = raw.encode("ascii", "surrogateescape") if isinstance(raw, str) else b""
        if ctype in ("message/rfc822", "message/global"):
            self._attach(None, data)
            return
        if node.get_content_maintype() == "multipart":
            ctype = "text/plain"  # unparsed multipart body (headers-only fallback)
        try:
            filename = node.get_filename()
        except Exception:  # noqa: BLE001
            filename = None
        filename = header_text(filename)[:255] if filename else None
        text = None
        if _is_texty(ctype, filename):
            text, defect = decode_text(data, node.get_content_charset(None))
            if defect:
                self.defects.append(defect)
        self.parts.append(Part(ctype, filename, data, text))
        if text is None or _is_attachment(node, filename):
            return
        bucket = {"text/plain": self.plain, "text/html": self.html}.get(ctype, self.other_text)
        bucket.append(text)

    def body(self) -> tuple[str, str | None]:
        """The best plain text and the HTML: text/plain, else text made from the HTML."""
        html = self.html[0] if self.html else None
        text = "\n\n".join(t for t in self.plain if t.strip())
        if not text.strip() and html is not None:
            if len(html) > MAX_HTML_CHARS:
                self.defects.append("HTML body over 2,000,000 characters: text cut short")
            text = html_to_text(html[:MAX_HTML_CHARS])
        if not text.strip() and self.other_text:
            text = self.other_text[0]
        return text.replace("\r\n", "\n").replace("\r", "\n"), html
