"""Sessions: a visitor's hits with no gap longer than the timeout (30 minutes default).

Pure functions on plain data. New hits are merged with the visitor's stored sessions
that they could touch; since stored sessions are already separated by more than the
timeout, new hits can only extend sessions or bridge two of them, never split one. A
merged session keeps the row (and so the alert state) of its earliest stored part.
Hits are sorted by time first, so lines out of clock order (nginx logs a request when
it ends; two servers' files) give the same sessions as sorted ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Hits kept per session (a runaway visitor must not grow a row without bound); the
#: page count and the end time stay exact.
MAX_HITS = 500

StoredHit = list[float | str | None]  # [epoch seconds, page or None]


@dataclass
class Stored:
    """A session row as the merge needs it."""

    id: int
    start: float
    end: float
    hits: list[StoredHit]
    pages: int
    referrer: str | None
    user_agent: str | None
    log: str | None
    alert_state: str | None


@dataclass
class Merged:
    """One session after the merge: a new row (``id`` None) or an update of ``id``."""

    id: int | None
    start: float
    end: float
    hits: list[StoredHit]
    pages: int
    referrer: str | None
    user_agent: str | None
    log: str | None
    alert_state: str | None
    absorbed: list[int] = field(default_factory=list)
    #: Page views among the new hits (sessions the new hits did not touch are not
    #: returned at all).
    new_pages: int = 0


@dataclass
class _Event:
    ts: float
    page: str | None
    referrer: str | None
    user_agent: str | None
    owner: Stored | None


def merge(
    stored: list[Stored],
    hits: list[tuple[float, str | None, str | None, str]],
    *,
    timeout: float,
    log: str | None = None,
) -> list[Merged]:
    """Merge one visitor's new ``hits`` ``(ts, page, referrer, user_agent)`` into
    ``stored`` (that visitor's sessions near them); return the changed sessions."""
    if not stored:
        return _fresh(hits, timeout=timeout, log=log)
    events: list[_Event] = [_Event(ts, page, ref, ua, None) for ts, page, ref, ua in hits]
    for row in stored:
        # Every stored hit carries the session's referrer and agent: only the earliest
        # event of a group is asked for them, and that is its earliest session's first hit.
        for hit in row.hits:
            ts, page = hit[0], hit[1]
            events.append(
                _Event(
                    float(ts or 0.0),
                    page if isinstance(page, str) else None,
                    row.referrer,
                    row.user_agent,
                    row,
                )
            )
        if row.hits and float(row.hits[-1][0] or 0.0) < row.end:
            # Hits beyond MAX_HITS were dropped: keep the end as an activity marker.
            events.append(_Event(row.end, None, None, None, row))
    events.sort(key=lambda e: (e.ts, e.owner is None))
    groups: list[list[_Event]] = []
    for event in events:
        if groups and event.ts - groups[-1][-1].ts <= timeout:
            groups[-1].append(event)
        else:
            groups.append([event])
    out: list[Merged] = []
    for group in groups:
        owners = sorted({id(e.owner): e.owner for e in group if e.owner}.values(), key=_start)
        new = [e for e in group if e.owner is None]
        if not new and len(owners) <= 1:
            continue  # a stored session the new hits did not touch
        first = group[0]
        keeper = owners[0] if owners else None
        alert_state = next((o.alert_state for o in owners if o.alert_state), None)
        pages = sum(o.pages for o in owners) + sum(1 for e in new if e.page is not None)
        kept = [[e.ts, e.page] for e in group if e.owner is None or e.ts <= e.owner.end]
        if len(kept) > MAX_HITS:
            kept = [*kept[: MAX_HITS - 1], kept[-1]]
        out.append(
            Merged(
                id=keeper.id if keeper else None,
                start=first.ts,
                end=group[-1].ts,
                hits=kept,
                pages=pages,
                referrer=first.referrer,
                user_agent=first.user_agent,
                log=(keeper.log if keeper and keeper.log else log),
                alert_state=alert_state,
                absorbed=[o.id for o in owners[1:]],
                new_pages=sum(1 for e in new if e.page is not None),
            )
        )
    return out


def _fresh(
    hits: list[tuple[float, str | None, str | None, str]], *, timeout: float, log: str | None
) -> list[Merged]:
    """Sessions of a visitor with nothing stored nearby (the common case, kept cheap)."""
    ordered = sorted(hits, key=lambda h: h[0])
    out: list[Merged] = []
    group: list[tuple[float, str | None, str | None, str]] = []
    for hit in ordered:
        if group and hit[0] - group[-1][0] > timeout:
            out.append(_from_group(group, log))
            group = []
        group.append(hit)
    if group:
        out.append(_from_group(group, log))
    return out


def _from_group(group: list[tuple[float, str | None, str | None, str]], log: str | None) -> Merged:
    kept: list[StoredHit] = [[ts, page] for ts, page, _, _ in group]
    if len(kept) > MAX_HITS:
        kept = [*kept[: MAX_HITS - 1], kept[-1]]
    pages = sum(1 for hit in group if hit[1] is not None)
    first = group[0]
    return Merged(
        id=None,
        start=first[0],
        end=group[-1][0],
        hits=kept,
        pages=pages,
        referrer=first[2],
        user_agent=first[3],
        log=log,
        alert_state=None,
        new_pages=pages,
    )


def _start(row: Stored | None) -> float:
    return row.start if row else 0.0
