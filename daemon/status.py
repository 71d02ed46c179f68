"""What the daemon is doing: counts for ``eleads status`` and the Prometheus collector.

Three sources, each readable whether the daemon runs or not:

- the database (eLead states per rule, message outcomes, notifications, visit-log lines,
  return-lead alerts): plain SELECTs, which SQLite in WAL mode serves beside the writers;
- the spool directories (queue depth, the oldest waiting message: spool ids start with
  the time they were written; records still only in the journal count too);
- ``<data_dir>/status.json``, written by the running daemon every few seconds and at
  stop (:func:`write_status_file`): listener counters and each IMAP mailbox's connection
  and last poll. With the daemon stopped it says when it stopped; IMAP mailboxes then
  fall back to their state files' time (``<data_dir>/imap/<name>.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import peewee as pw

from daemon import journal
from daemon.config import Settings
from daemon.db import models, open_database
from daemon.db.models import ELead, InboundMessage, Notification, database_proxy
from daemon.runtime import DataDirLock
from daemon.spool import MAGIC, spool_id_time

STATUS_FILE = "status.json"
#: A status file older than this (seconds) while the lock is held means a stuck daemon.
STALE_AFTER = 60.0


# --- spool --------------------------------------------------------------------------


def _journal_pending(directory: Path, limit: int = 100_000) -> list[str]:
    """Ids of records the worker has not yet turned into queue files."""
    if not directory.is_dir():
        return []
    reader = journal.JournalReader(directory)  # read() neither locks nor moves the cursor
    ids = []
    for body in reader.read(limit):
        head = body[len(MAGIC) : body.find(b"\n")]
        with contextlib.suppress(ValueError, KeyError, TypeError):
            ids.append(str(json.loads(head)["spool_id"]))
    return ids


def spool_snapshot(spool_dir: Path, *, now: float | None = None) -> dict[str, Any]:
    """Counts per spool area and the age of the oldest message not yet processed."""
    now = time.time() if now is None else now
    out: dict[str, Any] = {}
    waiting: list[str] = []
    for area in ("queue", "active", "failed"):
        ids = [p.stem for p in (spool_dir / area).glob("*.msg")] if spool_dir.is_dir() else []
        out[area] = len(ids)
        if area != "failed":
            waiting += ids
    pending = _journal_pending(spool_dir / "journal")
    out["journal"] = len(pending)
    times = [t for t in map(spool_id_time, waiting + pending) if t is not None]
    out["oldest_age_seconds"] = round(max(0.0, now - min(times)), 3) if times else 0.0
    return out


def spool_status(settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    """:func:`spool_snapshot` of the configured store (the database one: connected by the
    caller)."""
    if settings.spool_store == "database":
        from daemon.spool import database

        if not _table_exists(models.SpoolMessage):
            return {"queue": 0, "active": 0, "failed": 0, "journal": 0, "oldest_age_seconds": 0.0}
        return database.snapshot(now=now)
    return spool_snapshot(settings.spool_dir, now=now)


# --- database -----------------------------------------------------------------------


def _table_exists(model: type[pw.Model]) -> bool:
    db = database_proxy.obj
    return bool(db is not None and db.table_exists(model._meta.table_name))


def _rows(query: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in query.tuples()]


def db_snapshot() -> dict[str, Any]:
    """Grouped counts from the database the models are bound to (connected by the caller)."""
    eleads = [
        {"account": a, "state": s, "rule": r, "count": n}
        for a, s, r, n in _rows(
            ELead.select(ELead.account, ELead.state, ELead.rule, pw.fn.COUNT(ELead.id)).group_by(
                ELead.account, ELead.state, ELead.rule
            )
        )
    ]
    messages = [
        {"listener": lis, "kind": k, "outcome": o, "count": n}
        for lis, k, o, n in _rows(
            InboundMessage.select(
                InboundMessage.listener,
                InboundMessage.kind,
                InboundMessage.outcome,
                pw.fn.COUNT(InboundMessage.id),
            ).group_by(InboundMessage.listener, InboundMessage.kind, InboundMessage.outcome)
        )
    ]
    notifications = [
        {"kind": k, "status": s, "count": n}
        for k, s, n in _rows(
            Notification.select(
                Notification.kind, Notification.status, pw.fn.COUNT(Notification.id)
            ).group_by(Notification.kind, Notification.status)
        )
    ]
    oldest_queued = (
        Notification.select(pw.fn.MIN(Notification.created_at))
        .where(Notification.status == "queued")
        .scalar()
    )
    return {
        "eleads": eleads,
        "messages": messages,
        "notifications": notifications,
        "outbox_oldest_queued_at": _iso(oldest_queued),
        **visits_snapshot(),
    }


def visits_snapshot() -> dict[str, int | None]:
    """Visit-log lines read and return-lead alerts (daemon/visits' tables; None before
    their migration ran)."""
    cursor = getattr(models, "VisitCursor", None)
    alert = getattr(models, "ReturnAlert", None)
    lines = alerts = None
    if cursor is not None and _table_exists(cursor):
        lines = int(cursor.select(pw.fn.COALESCE(pw.fn.SUM(cursor.lines), 0)).scalar() or 0)
    if alert is not None and _table_exists(alert):
        alerts = int(alert.select().count())
    return {"visit_lines_read": lines, "return_alerts": alerts}


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else (str(value) if value else None)


# --- the daemon's own status file ---------------------------------------------------


def write_status_file(data_dir: Path, data: dict[str, Any]) -> None:
    """Replace ``status.json`` atomically (no fsync: it is a report, rebuilt every few s)."""
    path = data_dir / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def read_status_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((data_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def imap_snapshot(settings: Settings, live: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per configured mailbox: connection and last poll (live), or the state file's time."""
    from_daemon = {m["mailbox"]: m for m in (live or {}).get("imap", [])}
    out = []
    for mailbox in settings.imap.mailboxes:
        entry: dict[str, Any] = {"mailbox": mailbox.name, **from_daemon.get(mailbox.name, {})}
        state = settings.data_dir / "imap" / f"{mailbox.name}.json"
        with contextlib.suppress(OSError):
            entry["state_saved_at"] = state.stat().st_mtime
        out.append(entry)
    return out


# --- eleads status ------------------------------------------------------------------


def collect_status(settings: Settings, *, running: bool) -> dict[str, Any]:
    """Everything ``eleads status`` shows, as one JSON-able document."""
    now = time.time()
    live = read_status_file(settings.data_dir)
    daemon: dict[str, Any] = {"running": running}
    if live is not None:
        daemon.update(
            state=live.get("state") if running else "stopped",
            pid=live.get("pid") if running else None,
            started_at=live.get("started_at"),
            updated_at=live.get("updated_at"),
            reloads=live.get("reloads", {}),
            worker_restarts=live.get("worker_restarts", 0),
            metrics=live.get("metrics") if running else None,
        )
        updated = live.get("updated_at")
        if running and isinstance(updated, int | float) and now - updated > STALE_AFTER:
            daemon["warning"] = f"status file not updated for {now - updated:.0f}s"
    else:
        daemon["state"] = "running" if running else "stopped"
    result: dict[str, Any] = {
        "daemon": daemon,
        "listeners": (live or {}).get("listeners", []) if running else [],
        "spool": spool_status(settings, now=now),
        "imap": imap_snapshot(settings, live if running else None),
    }
    db = db_snapshot()
    eleads = db["eleads"]
    notes = db["notifications"]
    result["eleads"] = {
        state: sum(r["count"] for r in eleads if r["state"] == state)
        for state in models.ELEAD_STATES
    }
    result["unconverted"] = result["eleads"].get("unconverted", 0)
    result["failed_parse"] = result["eleads"].get("failed_parse", 0)
    result["outbox"] = {
        status: sum(r["count"] for r in notes if r["status"] == status)
        for status in ("queued", "sent", "failed")
    }
    result["outbox"]["oldest_queued_at"] = db["outbox_oldest_queued_at"]
    result["messages"] = {
        "total": sum(r["count"] for r in db["messages"]),
        "failed": sum(r["count"] for r in db["messages"] if r["outcome"] == "failed"),
    }
    result["visits"] = {
        "lines_read": db["visit_lines_read"],
        "return_alerts": db["return_alerts"],
    }
    return result


def status_report(settings: Settings) -> dict[str, Any]:
    """``eleads status``: works with the daemon running (reads beside it) or stopped."""
    running = DataDirLock(settings.data_dir).held_by_other()
    db = open_database(settings.database_url)
    try:
        return collect_status(settings, running=running)
    finally:
        db.close()


def _ago(then: Any, now: float) -> str:
    if not isinstance(then, int | float):
        return "never"
    seconds = max(0.0, now - then)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def format_status(status: dict[str, Any], *, now: float | None = None) -> str:
    """A short human summary of :func:`collect_status`."""
    now = time.time() if now is None else now
    daemon = status["daemon"]
    lines = []
    head = f"daemon:      {daemon.get('state')}"
    if daemon.get("pid"):
        head += f" (pid {daemon['pid']}, up {_ago(daemon.get('started_at'), now)[:-4]})"
    elif daemon.get("updated_at"):
        head += f" (last seen {_ago(daemon.get('updated_at'), now)})"
    lines.append(head)
    if daemon.get("warning"):
        lines.append(f"warning:     {daemon['warning']}")
    for listener in status["listeners"]:
        msgs = listener.get("stats", {}).get("messages", {})
        lines.append(
            f"listener:    {listener['name']} {listener['host']}:{listener['port']} "
            f"open={listener['open']} accepted={msgs.get('accepted', 0)} "
            f"refused={sum(v for k, v in msgs.items() if k.startswith('refused'))}"
        )
    spool = status["spool"]
    lines.append(
        f"spool:       {spool['queue'] + spool['journal']} queued, {spool['active']} active, "
        f"{spool['failed']} failed; oldest waiting {spool['oldest_age_seconds']:.0f}s"
    )
    lines.append(
        f"eleads:      {status['unconverted']} unconverted (backlog), "
        f"{status['failed_parse']} failed to parse, {status['eleads'].get('converted', 0)} "
        "converted"
    )
    outbox = status["outbox"]
    lines.append(
        f"outbox:      {outbox['queued']} queued, {outbox['failed']} failed, {outbox['sent']} sent"
    )
    visits = status["visits"]
    if visits["lines_read"] is not None:
        lines.append(
            f"visits:      {visits['lines_read']} lines read, "
            f"{visits['return_alerts']} return-lead alerts"
        )
    for mailbox in status["imap"]:
        if "connected" in mailbox:
            state = "connected" if mailbox["connected"] else "disconnected"
            line = f"{state}, last poll {_ago(mailbox.get('last_poll_at'), now)}"
            if mailbox.get("last_error"):
                line += f", last error: {mailbox['last_error']}"
        else:
            line = f"state saved {_ago(mailbox.get('state_saved_at'), now)}"
        lines.append(f"imap:        {mailbox['mailbox']}: {line}")
    return "\n".join(lines)
