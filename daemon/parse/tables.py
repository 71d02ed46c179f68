"""HTML lead emails: label/value tables, label rows over value rows, <dl>, <b>Label:</b> lines.

libxml2 (``htmltext.html_events``) tokenises in linear time; no regex over markup. The
document becomes text lines that keep its structure: a table cell or an inline label
element (<b>, <strong>, <span>, <label>) ends with a tab, a block element ends with a
blank line, <br> ends a line. ``labels.pairs_from_lines`` then reads "Label<TAB>value",
"Label:<TAB>value" and a label row above its value row the same way as in plain text. A
header row of labels over a row of values (a horizontal table) is paired here by column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import pairwise

from daemon.parse.htmltext import html_events
from daemon.parse.labels import Found, field_for, pairs_from_lines
from daemon.parse.model import DecodedMessage

MAX_HTML = 300_000  # lead emails are far smaller
# fmt: off
_BLOCK = frozenset(
    {"p", "div", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
     "hr", "dl", "dt", "dd", "section", "article", "header", "footer", "address", "center",
     "form", "fieldset", "caption", "tbody", "thead", "tfoot", "blockquote", "body", "html"}
)
# fmt: on
_INLINE_LABEL = frozenset({"b", "strong", "span", "label", "th", "td", "dt"})
_SKIP = frozenset({"script", "style", "title", "head", "noscript", "template"})
_SPACE_RE = re.compile(r"[ \t\r\n\f\v\xa0\u200b]+")
_VOID = frozenset({"br", "hr"})


class _Lines:
    """Collects text with the separators described in the module docstring, plus table rows."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.rows: list[list[str]] = []
        self._open_rows: list[list[str]] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif tag == "br":
            self.chunks.append("\n")
        elif tag in ("td", "th"):
            self.chunks.append("\t")
            if self._open_rows:
                self._open_rows[-1].append("")
        elif tag == "tr":
            self._open_rows.append([])
        elif tag in _BLOCK:
            self.chunks.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.chunks.append("\n")
        elif tag == "hr":
            self.chunks.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if tag == "tr" and self._open_rows:
            self.rows.append([" ".join(cell.split()) for cell in self._open_rows.pop()])
        if tag in _BLOCK:
            self.chunks.append("\n\n")
        elif tag in _INLINE_LABEL:
            self.chunks.append("\t")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        text = _SPACE_RE.sub(" ", data)  # HTML whitespace collapses to one space
        self.chunks.append(text)
        if self._open_rows and self._open_rows[-1]:
            self._open_rows[-1][-1] += text


def html_lines(html: str) -> tuple[list[str], list[list[str]]]:
    """(text lines, table rows as cell texts) of an HTML document."""
    parser = _Lines()
    for event, tag, text in html_events(html[:MAX_HTML]):
        if event == "start":
            if tag in _VOID:
                parser.handle_startendtag(tag, [])
            else:
                parser.handle_starttag(tag, [])
        elif tag not in _VOID:
            parser.handle_endtag(tag)
        if text:
            parser.handle_data(text)
    lines = [line.strip(" \t") for line in "".join(parser.chunks).split("\n")]
    compact: list[str] = []
    for line in lines:  # one blank line between blocks is enough
        if line or (compact and compact[-1]):
            compact.append(line)
    return compact, parser.rows


def _header_rows(rows: list[list[str]], extra: Mapping[str, str] | None, found: Found) -> None:
    """A row whose every cell is a known label, followed by a row of as many values."""
    for header, values in pairwise(rows):
        if len(header) < 2 or len(header) != len(values):
            continue
        keys = [field_for(cell, extra) if cell else None for cell in header]
        if all(keys) and not all(field_for(v, extra) for v in values if v):
            for key, value in zip(keys, values, strict=True):
                if key and value:
                    found.add(key, value)


def parse(msg: DecodedMessage, *, labels: Mapping[str, str] | None = None) -> Found | None:
    """Label/value pairs from the HTML body."""
    if not msg.html or not msg.html.strip():
        return None
    lines, rows = html_lines(msg.html)
    found = Found()
    _header_rows(rows, labels, found)
    from_lines = pairs_from_lines(lines, labels)
    found.pairs.extend(from_lines.pairs)
    return found if found.pairs else None
