"""The visit-log job: read new log lines, update sessions and links, queue alerts.

One run = repeated batches of three steps, so that the daemon can put each on the right
thread (scheduler.py) and the CLI can run them in a row (:func:`run_once`):

1. :func:`load_cursors` (database, read only);
2. :func:`read_batch` (files only): the unread complete lines of every configured file,
   parsed and filtered into hits and form events;
3. :func:`commit_batch` (database, one write transaction): form events and links,
   sessions, alerts with their outbox rows, and the new cursors. The cursors only
   advance here, in the transaction that stores what their lines gave, and only if
   nobody else moved them since step 1 (else the batch is dropped and read again): no
   line is counted twice or lost, whatever crashes where.

Config is re-read at every run (``visits`` sources, recipients, cool-down), so a reload
takes effect for the next alert; a new interval reschedules the job (scheduler.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import peewee as pw

from daemon.config import Settings, load_settings
from daemon.db import write_transaction
from daemon.db.fast import insert_rows, update_rows
from daemon.db.models import (
    ReturnAlert,
    VisitCursor,
    VisitForm,
    VisitorLink,
    VisitSession,
    database_proxy,
    utcnow,
)
from daemon.errors import ConfigError
from daemon.visits.alerts import Alerter
from daemon.visits.cursor import CursorState, FileChunk, iter_chunks
from daemon.visits.links import link_forms, links_for
from daemon.visits.readers import READERS, Form, Hit, ReadResult, filters_for
from daemon.visits.sessions import Merged, Stored, merge

log = logging.getLogger(__name__)

_CHUNK = 400
#: Cursors of files not seen for this long (deleted by logrotate) are forgotten; files
#: still present refresh theirs daily even when unchanged, so they are never re-read.
CURSOR_RETENTION = timedelta(days=30)


class StaleCursor(Exception):
    """Another reader advanced a cursor since this batch was read: drop the batch."""


@dataclass
class Batch:
    """What step 2 read: chunks (for the cursors) and their hits, per account."""

    chunks: list[FileChunk] = field(default_factory=list)
    #: account -> visitor -> [(ts, page, referrer, user agent)]
    visits: dict[str, dict[str, list[tuple[float, str | None, str | None, str]]]] = field(
        default_factory=dict
    )
    #: account -> visitor -> log name of its first hit in this batch
    logs: dict[str, dict[str, str]] = field(default_factory=dict)
    forms: dict[str, list[Form]] = field(default_factory=dict)
    #: Cursors of files that were skipped as unchanged (kept alive, see CURSOR_RETENTION).
    seen: set[int] = field(default_factory=set)
    lines: int = 0
    hits: int = 0
    filtered: int = 0
    bad: int = 0
    more: bool = False


@dataclass
class RunReport:
    """What ``eleads visits read --json`` prints."""

    files: int = 0
    lines: int = 0
    hits: int = 0
    filtered: int = 0
    bad_lines: int = 0
    sessions: int = 0
    links: int = 0
    alerts: int = 0
    queued: int = 0
    batches: int = 0
    seconds: float = 0.0
    alert_list: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines": self.lines,
            "hits": self.hits,
            "filtered": self.filtered,
            "bad_lines": self.bad_lines,
            "sessions": self.sessions,
            "links": self.links,
            "alerts": self.alert_list,
            "queued": self.queued,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
        }


def current_settings(settings: Settings) -> Settings:
    """config.yaml as it is now (a reload takes effect); the old one if it is broken."""
    if settings.source is None:
        return settings
    try:
        return load_settings(settings.source)
    except ConfigError as exc:
        log.warning("event=visits_config_reload_failed error=%s", exc)
        return settings


def source_key(fmt: str, pattern: str) -> str:
    return f"{fmt}:{pattern}"


def _source_account(settings: Settings, account: str | None) -> str | None:
    if account:
        return account if settings.account(account) else None
    return settings.accounts[0].id if len(settings.accounts) == 1 else None


def load_cursors() -> list[CursorState]:
    return [
        CursorState(
            id=c.id,
            source=c.source,
            fingerprint=c.fingerprint,
            path=c.path,
            device=c.device,
            inode=c.inode,
            size=c.size,
            mtime_ns=c.mtime_ns,
            offset=c.offset,
            lines=c.lines,
        )
        for c in VisitCursor.select()
    ]


def read_batch(settings: Settings, cursors: list[CursorState]) -> Batch:
    """Step 2: read and parse the unread lines of every source (no database)."""
    visits = settings.visits
    filters = filters_for(tuple(visits.bot_patterns), tuple(visits.ignore_paths))
    batch = Batch()
    max_bytes = int(visits.batch_mib * 1024 * 1024)
    for source in visits.sources:
        account = _source_account(settings, source.account)
        if account is None:
            log.warning(
                "event=visits_source_skipped path=%s reason=no_account account=%s",
                source.path,
                source.account,
            )
            continue
        key = source_key(source.format, source.path)
        reader = READERS[source.format]
        sources = [(key, settings.data_dir, source.path)]
        for chunk in iter_chunks(sources, cursors, max_bytes=max_bytes, seen=batch.seen):
            result = ReadResult()
            reader(chunk.lines, chunk.start_lines + 1, filters, result)
            if result.bad:
                log.warning(
                    "event=visits_bad_lines path=%s count=%d lines=%s",
                    chunk.path,
                    result.bad,
                    ",".join(str(n) for n in result.bad_lines),
                )
            _add(batch, account, _log_name(chunk.path), result)
            batch.more = batch.more or chunk.more
            chunk.lines = []  # the text is not needed any more
            batch.chunks.append(chunk)
    return batch


def _log_name(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    parts = name.rsplit(".", 1)
    return parts[0] if len(parts) == 2 and parts[1].isdigit() else name


def _add(batch: Batch, account: str, log_name: str, result: ReadResult) -> None:
    per_visitor = batch.visits.setdefault(account, {})
    logs = batch.logs.setdefault(account, {})
    hit: Hit
    for hit in result.hits:
        ts, visitor, page, referrer, agent = hit
        found = per_visitor.get(visitor)
        if found is None:
            found = per_visitor[visitor] = []
            logs[visitor] = log_name
        found.append((ts, page, referrer, agent))
    if result.forms:
        batch.forms.setdefault(account, []).extend(result.forms)
    batch.lines += result.lines
    batch.hits += len(result.hits)
    batch.filtered += result.filtered
    batch.bad += result.bad


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def _epoch(value: datetime) -> float:
    return value.replace(tzinfo=UTC).timestamp()


def commit_batch(settings: Settings, batch: Batch, *, now: datetime | None = None) -> RunReport:
    """Step 3: store everything the batch gave, and its cursors, in one transaction."""
    now = now or utcnow()
    report = RunReport(
        files=len(batch.chunks),
        lines=batch.lines,
        hits=batch.hits,
        filtered=batch.filtered,
        bad_lines=batch.bad,
        batches=1,
    )
    timeout = settings.visits.session_timeout_minutes * 60
    with write_transaction():
        _check_and_save_cursors(batch.chunks, sorted(batch.seen), now)
        for account, forms in batch.forms.items():
            _store_forms(account, forms)
            report.links += link_forms(account, [(v, e) for _, v, e, _ in forms if e])
        for account, per_visitor in batch.visits.items():
            account_settings = settings.account(account)
            links = links_for(account, per_visitor)
            changed, sessions = _store_sessions(
                account, per_visitor, batch.logs.get(account, {}), links, timeout
            )
            report.sessions += changed
            if account_settings is None or not sessions:
                continue
            alerter = Alerter(settings=settings, account=account_settings, now=now)
            for result in alerter.run(sessions, links):
                report.alerts += 1
                report.queued += int(result.queued)
                report.alert_list.append(alert_json(result.alert))
    return report


def alert_json(alert: ReturnAlert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "account": alert.account,
        "visitor_id": alert.visitor_id,
        "session_start": f"{alert.session_start:%Y-%m-%dT%H:%M:%S}Z",
        "elead": f"E-{alert.elead_id}" if alert.elead_id else None,
        "prospect": alert.prospect,
        "email": alert.email,
        "locations": list(alert.locations or []),
        "recipients": list(alert.recipients or []),
        "notification": alert.notification_id,
        "log": alert.log,
    }


def _check_and_save_cursors(chunks: list[FileChunk], seen: list[int], now: datetime) -> None:
    """Verify no one moved these cursors since they were read; then move them."""
    first: dict[tuple[str, str], FileChunk] = {}
    last: dict[tuple[str, str], FileChunk] = {}
    for chunk in chunks:
        first.setdefault((chunk.source, chunk.fingerprint), chunk)
        last[(chunk.source, chunk.fingerprint)] = chunk
    for key, chunk in first.items():
        row = VisitCursor.get_or_none(
            (VisitCursor.source == key[0]) & (VisitCursor.fingerprint == key[1])
        )
        stored = (row.offset, row.lines) if row is not None else None
        if stored != chunk.seen:
            raise StaleCursor(f"{chunk.path}: cursor moved")
        end = last[key]
        values = {
            "path": str(end.path),
            "device": end.device,
            "inode": end.inode,
            "size": end.size,
            "mtime_ns": end.mtime_ns,
            "offset": end.end_offset,
            "lines": end.end_lines,
            "seen_at": now,
        }
        # Conditional on what was read: at PostgreSQL's READ COMMITTED a run that read the
        # cursor before another committed would otherwise pass the check above too.
        if row is None:
            try:
                with database_proxy.atomic():
                    VisitCursor.create(source=key[0], fingerprint=key[1], **values)
            except pw.IntegrityError:
                raise StaleCursor(f"{chunk.path}: cursor created meanwhile") from None
        else:
            moved = (
                VisitCursor.update(**values)
                .where(
                    (VisitCursor.id == row.id)
                    & (VisitCursor.offset == row.offset)
                    & (VisitCursor.lines == row.lines)
                )
                .execute()
            )
            if not moved:
                raise StaleCursor(f"{chunk.path}: cursor moved")
    day_ago = now - timedelta(days=1)
    for i in range(0, len(seen), _CHUNK):
        VisitCursor.update(seen_at=now).where(
            VisitCursor.id.in_(seen[i : i + _CHUNK]) & (VisitCursor.seen_at < day_ago)
        ).execute()
    VisitCursor.delete().where(VisitCursor.seen_at < now - CURSOR_RETENTION).execute()


def _store_forms(account: str, forms: list[Form]) -> None:
    rows = [
        {"account": account, "visitor_id": v, "email": e, "location": loc, "at": _dt(ts)}
        for ts, v, e, loc in forms
        if e or loc
    ]
    for i in range(0, len(rows), _CHUNK):
        VisitForm.insert_many(rows[i : i + _CHUNK]).execute()


SESSION_COLUMNS = (
    "account",
    "visitor_id",
    "start_at",
    "end_at",
    "hits",
    "pages",
    "referrer",
    "user_agent",
    "log",
    "alert_state",
)


def _store_sessions(
    account: str,
    per_visitor: dict[str, list[tuple[float, str | None, str | None, str]]],
    logs: dict[str, str],
    links: dict[str, list[int]],
    timeout: float,
) -> tuple[int, list[tuple[str, VisitSession]]]:
    """Merge the batch's hits into stored sessions (bulk writes); return how many
    sessions changed, and the changed sessions of linked visitors as rows."""
    visitors = sorted(per_visitor)
    lo = min(min(h[0] for h in hits) for hits in per_visitor.values()) - timeout
    hi = max(max(h[0] for h in hits) for hits in per_visitor.values()) + timeout
    stored: dict[str, list[Stored]] = {}
    for i in range(0, len(visitors), _CHUNK):
        rows = VisitSession.select().where(
            (VisitSession.account == account)
            & VisitSession.visitor_id.in_(visitors[i : i + _CHUNK])
            & (VisitSession.end_at >= _dt(lo))
            & (VisitSession.start_at <= _dt(hi))
        )
        for row in rows:
            stored.setdefault(row.visitor_id, []).append(
                Stored(
                    id=row.id,
                    start=_epoch(row.start_at),
                    end=_epoch(row.end_at),
                    hits=row.hits or [],
                    pages=row.pages,
                    referrer=row.referrer,
                    user_agent=row.user_agent,
                    log=row.log,
                    alert_state=row.alert_state,
                )
            )
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[int, tuple[Any, ...]]] = []
    absorbed: list[int] = []
    touched: set[tuple[str, datetime]] = set()
    changed = 0
    for visitor in visitors:
        hits = per_visitor[visitor]
        for merged in merge(stored.get(visitor, []), hits, timeout=timeout, log=logs.get(visitor)):
            values = _values(account, visitor, merged)
            changed += 1
            absorbed.extend(merged.absorbed)
            if merged.id is None:
                inserts.append(values)
            else:
                updates.append((merged.id, values))
            if visitor in links:
                touched.add((visitor, values[2]))
    if absorbed:
        ReturnAlert.update(session=None).where(ReturnAlert.session.in_(absorbed)).execute()
        VisitSession.delete().where(VisitSession.id.in_(absorbed)).execute()
    update_rows(VisitSession, SESSION_COLUMNS, updates)
    insert_rows(VisitSession, SESSION_COLUMNS, inserts)
    return changed, _read_back(account, touched)


def _read_back(account: str, touched: set[tuple[str, datetime]]) -> list[tuple[str, VisitSession]]:
    """The rows (with ids) of the changed sessions of linked visitors."""
    if not touched:
        return []
    linked = sorted({visitor for visitor, _ in touched})
    earliest = min(start for _, start in touched)
    out: list[tuple[str, VisitSession]] = []
    for i in range(0, len(linked), _CHUNK):
        rows = VisitSession.select().where(
            (VisitSession.account == account)
            & VisitSession.visitor_id.in_(linked[i : i + _CHUNK])
            & (VisitSession.start_at >= earliest)
        )
        out.extend(
            (row.visitor_id, row) for row in rows if (row.visitor_id, row.start_at) in touched
        )
    return out


def _values(account: str, visitor: str, merged: Merged) -> tuple[Any, ...]:
    return (
        account,
        visitor,
        _dt(merged.start),
        _dt(merged.end),
        merged.hits,
        merged.pages,
        merged.referrer,
        merged.user_agent,
        merged.log,
        merged.alert_state,
    )


def purge_sessions(settings: Settings, *, now: datetime | None = None) -> int:
    """Delete old visits of visitors that never became leads (``visits.retention_days``)."""
    days = settings.visits.retention_days
    if days <= 0:
        return 0
    cutoff = (now or utcnow()) - timedelta(days=days)
    linked = VisitorLink.select(VisitorLink.id).where(
        (VisitorLink.account == VisitSession.account)
        & (VisitorLink.visitor_id == VisitSession.visitor_id)
    )
    with write_transaction():
        return int(
            VisitSession.delete()
            .where((VisitSession.end_at < cutoff) & ~pw.fn.EXISTS(linked))
            .execute()
        )


def run_once(
    settings: Settings,
    *,
    now: Callable[[], datetime] = utcnow,
    reload: bool = True,
) -> RunReport:
    """The whole job, here and now (``eleads visits read``; the database is open)."""
    settings = current_settings(settings) if reload else settings
    total = RunReport()
    started = time.perf_counter()
    dropped = 0
    while dropped < 3:
        batch = read_batch(settings, load_cursors())
        if not batch.chunks:
            break
        try:
            merge_reports(total, commit_batch(settings, batch, now=now()))
        except StaleCursor as exc:
            log.info("event=visits_batch_dropped reason=%s", exc)
            dropped += 1
            continue
        if not batch.more:
            break
    total.seconds = time.perf_counter() - started
    log_run(total)
    return total


def merge_reports(total: RunReport, part: RunReport) -> None:
    for name in ("files", "lines", "hits", "filtered", "bad_lines", "sessions", "links"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.alerts += part.alerts
    total.queued += part.queued
    total.batches += part.batches
    total.alert_list.extend(part.alert_list)


def log_run(report: RunReport) -> None:
    if report.batches:
        log.info(
            "event=visits_read files=%d lines=%d hits=%d filtered=%d bad_lines=%d "
            "sessions=%d links=%d alerts=%d queued=%d seconds=%.3f",
            report.files,
            report.lines,
            report.hits,
            report.filtered,
            report.bad_lines,
            report.sessions,
            report.links,
            report.alerts,
            report.queued,
            report.seconds,
        )
