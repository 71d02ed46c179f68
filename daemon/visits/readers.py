"""Visit-log line readers: nginx/Apache ``combined`` + cookie, and JSON lines.

Both turn a list of decoded lines into plain tuples, fast (the target is >= 100,000
lines/s on one core): one compiled regex (or ``json.loads``) per line, the cheap tests
first (no visitor id is the common case), and per-string caches for the expensive ones
(timestamps, bot detection). Nothing here touches the database.

A *hit* is ``(epoch seconds, visitor id, page or None, referrer or None, user agent)``:
``page`` is the path+query of a GET page view; None marks activity that is not a page
view (a POST, a ``form_submit``), which still keeps a session alive. A *form* is
``(epoch seconds, visitor id, email or None, location or None)``.

Filtered out: no visitor id (``"-"``, null), bots and crawlers (the crawler-user-agents
list plus ``visits.bot_patterns``), static assets, health checks, HEAD and other methods,
responses outside 2xx/3xx. Lines that do not parse are counted and their line numbers
kept, never their text.
"""

from __future__ import annotations

import calendar
import importlib.resources
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import urlsplit

Hit = tuple[float, str, str | None, str | None, str]
Form = tuple[float, str, str | None, str | None]

#: ``$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
#: "$http_referer" "$http_user_agent" "$cookie_eleads_vid"``; quoted fields may hold
#: Apache's ``\"`` escapes (nginx writes ``\x22``).
_Q = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
COMBINED_COOKIE = re.compile(
    r"(\S+) \S+ \S+ \[([^\]]+)\] " + _Q + r" (\d{3}) \S+ " + _Q + " " + _Q + " " + _Q + r"\s*$"
)
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}
_STATIC_EXT = (
    frozenset(
        ("css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "webp", "avif", "svg", "ico"),
    )
    | frozenset(
        ("bmp", "tif", "tiff", "woff", "woff2", "ttf", "otf", "eot", "mp4", "webm", "mp3", "ogg"),
    )
    | frozenset(("wav", "json", "xml", "txt", "zip", "gz"))
)
_DEFAULT_IGNORED = (
    r"/wp-content/",
    r"/wp-includes/",
    r"/wp-json/",
    r"/wp-admin/",
    r"/static/",
    r"/assets/",
    r"/_next/",
    r"/favicon",
    r"/robots\.txt",
    r"/sitemap",
    r"/\.well-known/",
    r"/(?:healthz?|livez|readyz|ping|status|server-status|nginx_status)(?:[/?]|$)",
)
#: Monitors and tools the crawler list does not know by name.
_DEFAULT_BOTS = (
    r"(?i)uptime|monitor|pingdom|statuscake|healthcheck|probe\b|\bscan|zgrab|masscan",
    r"(?i)^(?:curl|wget|python-|go-http-client|java/|okhttp|libwww|httpie|axios|node-fetch)",
    r"^-?$",
)
_MAX_VISITOR = 128


@lru_cache(maxsize=1)
def _crawler_patterns() -> tuple[str, ...]:
    """Patterns of the maintained crawler-user-agents list (its JSON data file)."""
    data = importlib.resources.files("crawleruseragents").joinpath("crawler-user-agents.json")
    return tuple(str(item["pattern"]) for item in json.loads(data.read_text(encoding="utf-8")))


@lru_cache(maxsize=8)
def filters_for(bot_patterns: tuple[str, ...], ignore_paths: tuple[str, ...]) -> Filters:
    """The compiled filters of a configuration, kept across runs (with their caches)."""
    return Filters.build(bot_patterns, ignore_paths)


@dataclass
class Filters:
    """Compiled filters of one configuration, with per-string caches."""

    bots: tuple[re.Pattern[str], ...]
    ignored_paths: tuple[re.Pattern[str], ...]
    _bots: dict[str, bool] = field(default_factory=dict)
    _pages: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def build(cls, bot_patterns: Sequence[str] = (), ignore_paths: Sequence[str] = ()) -> Filters:
        # Separate regexes: a pattern may carry its own global flags, e.g. ``(?i)``.
        crawlers = re.compile("|".join(f"(?:{p})" for p in _crawler_patterns()))
        return cls(
            bots=(crawlers, *(re.compile(p) for p in (*_DEFAULT_BOTS, *bot_patterns))),
            ignored_paths=tuple(re.compile(p) for p in (*_DEFAULT_IGNORED, *ignore_paths)),
        )

    def is_bot(self, user_agent: str) -> bool:
        known = self._bots.get(user_agent)
        if known is None:
            if len(self._bots) > 50_000:
                self._bots.clear()
            known = any(p.search(user_agent) for p in self.bots)
            self._bots[user_agent] = known
        return known

    def is_page(self, target: str) -> bool:
        """Not a static asset, health check or configured ignored path (cached: a site
        has far fewer distinct URLs than log lines)."""
        known = self._pages.get(target)
        if known is None:
            if len(self._pages) > 200_000:
                self._pages.clear()
            known = self._pages[target] = self._is_page(target)
        return known

    def _is_page(self, target: str) -> bool:
        path = target.split("?", 1)[0]
        dot = path.rfind(".")
        if dot > path.rfind("/") and path[dot + 1 :].lower() in _STATIC_EXT:
            return False
        return not any(p.match(path) for p in self.ignored_paths)


@dataclass
class ReadResult:
    """What the lines of one file gave."""

    hits: list[Hit] = field(default_factory=list)
    forms: list[Form] = field(default_factory=list)
    lines: int = 0
    filtered: int = 0
    bad_lines: list[int] = field(default_factory=list)
    bad: int = 0

    def bad_line(self, number: int) -> None:
        self.bad += 1
        if len(self.bad_lines) < 10:
            self.bad_lines.append(number)


def clf_time(value: str) -> float:
    """``10/Nov/2026:14:21:58 -0500`` -> epoch seconds (fixed layout, no strptime)."""
    if len(value) != 26 or value[2] != "/" or value[6] != "/" or value[11] != ":":
        raise ValueError(value)
    seconds = calendar.timegm(
        (
            int(value[7:11]),
            _MONTHS[value[3:6]],
            int(value[0:2]),
            int(value[12:14]),
            int(value[15:17]),
            int(value[18:20]),
        )
    )
    offset = int(value[22:24]) * 3600 + int(value[24:26]) * 60
    return float(seconds - offset if value[21] == "+" else seconds + offset)


def iso_time(value: str) -> float:
    """ISO 8601 (``Z`` or an offset; naive counts as UTC) -> epoch seconds."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _visitor(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or value == "-" or len(value) > _MAX_VISITOR or not value.isprintable():
        return None
    return value


def _none_dash(value: str | None) -> str | None:
    return None if not value or value == "-" else value


def read_combined(lines: Sequence[str], first_line: int, filters: Filters, out: ReadResult) -> None:
    """Parse ``combined`` + cookie lines into ``out`` (``first_line``: number of lines[0])."""
    match = COMBINED_COOKIE.match
    times: dict[str, float] = {}
    is_bot, is_page = filters.is_bot, filters.is_page
    hits = out.hits
    for number, line in enumerate(lines, first_line):
        # Fast path: nginx never writes a bare quote inside a field (it writes \x22), so
        # splitting on quotes gives the fields; anything else goes through the regex.
        parts = line.split('"')
        head = parts[0]
        left, right = head.find("["), head.find("]")
        tail = parts[2].split() if len(parts) == 9 else ()
        if (
            len(tail) == 2
            and 0 < left < right
            and parts[4] == " "
            and parts[6] == " "
            and not parts[8].strip()
            and len(status := tail[0]) == 3
        ):
            stamp, request, referrer, agent, cookie = (
                head[left + 1 : right],
                parts[1],
                parts[3],
                parts[5],
                parts[7],
            )
        else:
            m = match(line)
            if m is None:
                if line.strip():
                    out.bad_line(number)
                else:
                    out.filtered += 1
                continue
            _ip, stamp, request, status, referrer, agent, cookie = m.groups()
        if cookie == "-" or not cookie or not ("200" <= status < "400"):
            out.filtered += 1
            continue
        method, _, rest = request.partition(" ")
        target = rest.rpartition(" ")[0] if rest.count(" ") else rest
        if method not in ("GET", "POST") or not target.startswith("/"):
            out.filtered += 1
            continue
        if is_bot(agent):
            out.filtered += 1
            continue
        page = target if method == "GET" else None
        if page is not None and not is_page(page):
            out.filtered += 1
            continue
        visitor = _visitor(cookie)
        if visitor is None:
            out.filtered += 1
            continue
        when = times.get(stamp)
        if when is None:
            try:
                when = times[stamp] = clf_time(stamp)
            except (ValueError, KeyError):
                out.bad_line(number)
                continue
        hits.append((when, visitor, page, _none_dash(referrer), agent))
    out.lines += len(lines)


def read_jsonl(lines: Sequence[str], first_line: int, filters: Filters, out: ReadResult) -> None:
    """Parse JSON-lines visit events into ``out``."""
    loads = json.loads
    is_bot, is_page = filters.is_bot, filters.is_page
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            out.filtered += 1
            continue
        try:
            event = loads(line)
            if not isinstance(event, dict):
                raise ValueError("not an object")
            visitor = _visitor(event.get("visitor_id"))
            if visitor is None:
                out.filtered += 1
                continue
            kind = event.get("event")
            agent = event.get("user_agent")
            agent = agent if isinstance(agent, str) else ""
            when = iso_time(str(event["ts"]))
            if is_bot(agent):
                out.filtered += 1
                continue
            referrer = event.get("referrer")
            referrer = _none_dash(referrer) if isinstance(referrer, str) else None
            if kind == "form_submit":
                email = event.get("email")
                email = email.strip().lower() if isinstance(email, str) and email.strip() else None
                location = event.get("location")
                location = location if isinstance(location, str) and location else None
                out.forms.append((when, visitor, email, location))
                out.hits.append((when, visitor, None, referrer, agent))
                continue
            if kind != "pageview":
                out.filtered += 1
                continue
            page = _page_of(str(event.get("url") or ""))
            if page is None or not is_page(page):
                out.filtered += 1
                continue
            out.hits.append((when, visitor, page, referrer, agent))
        except (ValueError, KeyError, TypeError, OverflowError):
            out.bad_line(number)
    out.lines += len(lines)


def _page_of(url: str) -> str | None:
    """``https://site/path?q`` or ``/path?q`` -> ``/path?q`` (no fragment)."""
    if not url:
        return None
    parts = urlsplit(url)
    path = parts.path or "/"
    if not path.startswith("/"):
        return None
    return f"{path}?{parts.query}" if parts.query else path


READERS: dict[str, Callable[[Sequence[str], int, Filters, ReadResult], None]] = {
    "combined_cookie": read_combined,
    "jsonl": read_jsonl,
}
