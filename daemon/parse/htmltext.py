"""HTML to text, on libxml2 (lxml) for linear time on any input.

Both the body decoder (``html_to_text``: readable lines, label cells followed by their
values) and the table parser (``html_events``) walk the same lxml tree.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import Any

#: lxml ships no type stubs; imported as Any so mypy --strict needs no per-module override.
etree: Any = importlib.import_module("lxml.etree")

_BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "tr",
        "li",
        "ul",
        "ol",
        "table",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "pre",
        "hr",
        "dl",
        "dt",
        "dd",
        "section",
        "article",
        "header",
        "footer",
        "address",
        "center",
        "form",
        "fieldset",
        "caption",
        "tbody",
        "thead",
        "tfoot",
        "blockquote",
    }
)
_SKIP_TAGS = frozenset({"script", "style", "title", "noscript", "template", "head"})
_SPACE_RE = re.compile(r"[ \t\r\n\f\v\xa0\u200b]+")
_MAX_QUOTE_PREFIX = 5


class _HtmlText:
    """HTML events to lines of text: block tags and <br> end lines, cells stay on their row.

    A cell follows its label cell as ``Label: value`` (a <th>, or a label ending in ":")
    or after a tab, so label parsers see the same shape as in a plain-text email.
    Lines inside <blockquote> get a "> " prefix, like a quoted plain-text reply.
    """

    def __init__(self) -> None:
        self.out: list[str] = []
        self.line: list[str] = []
        self.skip = self.pre = self.quote = self.row_cells = 0
        self.label_cell = False

    def _last_char(self) -> str:
        """Last non-blank character of the line so far ("" if none); drops trailing blanks."""
        while self.line and not self.line[-1].strip():
            self.line.pop()
        if self.line:
            self.line[-1] = self.line[-1].rstrip()
            return self.line[-1][-1]
        return ""

    def flush(self) -> None:
        text = "".join(self.line)
        text = text.rstrip() if self.pre else text.strip(" ")
        prefix = "> " * min(self.quote, _MAX_QUOTE_PREFIX)
        self.out.append((prefix + text).rstrip() if text or self.quote else "")
        self.line = []

    def _end_line(self) -> None:
        if any(piece.strip() for piece in self.line):
            self.flush()
        self.line = []

    def start(self, tag: str) -> None:
        if tag in _SKIP_TAGS or self.skip:
            self.skip += tag in _SKIP_TAGS
        elif tag == "br":
            self.flush()
        elif tag in ("td", "th"):
            last = self._last_char()
            if self.row_cells and last:
                sep = " " if last == ":" else ": " if self.label_cell else "\t"
                self.line.append(sep)
            self.row_cells += 1
            self.label_cell = tag == "th"
        elif tag in _BLOCK_TAGS:
            self._end_line()
            self.pre += tag == "pre"
            self.quote += tag == "blockquote"
            self.row_cells = 0 if tag == "tr" else self.row_cells

    def end(self, tag: str) -> None:
        if self.skip:
            self.skip -= tag in _SKIP_TAGS
        elif tag in _BLOCK_TAGS:
            self._end_line()
            self.pre -= tag == "pre" and self.pre > 0
            self.quote -= tag == "blockquote" and self.quote > 0

    def data(self, data: str | None) -> None:
        if not data or self.skip:
            return
        if self.pre:
            for i, piece in enumerate(data.replace("\r\n", "\n").split("\n")):
                if i:
                    self.flush()
                self.line.append(piece.replace("\xa0", " "))
            return
        text = _SPACE_RE.sub(" ", data)
        if text.startswith(" ") and (not self.line or self.line[-1].endswith((" ", "\t"))):
            text = text.lstrip(" ")
        if text:
            self.line.append(text)


def html_events(html: str) -> Iterator[tuple[str, str, str | None]]:
    """("start"|"end", tag, text) events of an HTML document, parsed by libxml2.

    Linear time, unlike html.parser's quadratic worst cases on malformed markup (60 KB of
    unclosed tags took 28 s); comments, processing instructions and the network never
    show. "start" carries the element's text, "end" the text after it (its tail).
    """
    parser = etree.HTMLParser(
        encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True
    )
    try:
        root = etree.fromstring(html.encode("utf-8", "replace"), parser)
    except (etree.LxmlError, ValueError):
        return
    if root is None:
        return
    for event, element in etree.iterwalk(root, events=("start", "end")):
        tag = element.tag.lower() if isinstance(element.tag, str) else ""
        yield event, tag, element.text if event == "start" else element.tail


def html_to_text(html: str) -> str:
    """Readable text from HTML; comments and scripts never show."""
    builder = _HtmlText()
    for event, tag, text in html_events(html):
        if event == "start":
            builder.start(tag)
        else:
            builder.end(tag)
        builder.data(text)
    if builder.line:
        builder.flush()
    lines: list[str] = []
    for line in builder.out:
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip("\n")
