"""Service functions behind the CLI commands (and, later, the scheduler's jobs).

Each opens what it needs from ``Settings``, does one thing, and returns plain data.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from daemon.config import Settings
from daemon.convert import convert_manual
from daemon.db.models import AuditEvent, ELead, InboundMessage, Prospect
from daemon.errors import UsageError
from daemon.notify.outbox import list_outbox
from daemon.pipeline import Outcome, recorded_outcome
from daemon.prospects import IMPORT_BATCH_ROWS, ImportReport, list_prospects
from daemon.prospects_import import import_prospects
from daemon.runner import process_or_defer
from daemon.runtime import DataDirLock, Runtime, open_runtime
from daemon.spool import Envelope

#: How long ``ingest`` waits for a running daemon that claimed its message first.
HANDOVER_TIMEOUT = 60.0


def _wait_for_daemon(spool_id: str, timeout: float = HANDOVER_TIMEOUT) -> Outcome:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = InboundMessage.get_or_none(InboundMessage.spool_id == spool_id)
        if row is not None:
            return recorded_outcome(row)
        time.sleep(0.05)
    return Outcome(
        None,
        "failed",
        detail="queued; the running daemon has not finished it yet",
        spool_id=spool_id,
    )


def ingest_messages(
    settings: Settings, messages: Iterable[tuple[str, bytes]], *, account: str | None = None
) -> Iterator[Outcome]:
    """Spool each message durably, then run it through the pipeline here and now.

    When a daemon runs on the same data dir (or, with the database spool, any instance
    sharing the database) it may claim the message first; then we wait for its result
    instead of processing the message twice.
    """
    runtime = open_runtime(settings)
    daemon_running = DataDirLock(settings.data_dir).held_by_other()
    try:
        for label, raw in messages:
            envelope = Envelope(listener="ingest", account=account, peer=label)
            entry = runtime.spool.put_sync(raw, envelope)
            claimed = runtime.spool.claim(entry.id)
            if claimed is None:
                # A daemon on this data dir, or (database spool) any instance's worker.
                shared = settings.spool_store == "database"
                yield (
                    _wait_for_daemon(entry.id)
                    if daemon_running or shared
                    else Outcome(
                        None, "failed", detail="spooled, but claimed elsewhere", spool_id=entry.id
                    )
                )
                continue
            yield process_or_defer(runtime.pipeline, runtime.spool, claimed)
    finally:
        runtime.close()


@contextlib.contextmanager
def _runtime(settings: Settings) -> Iterator[Runtime]:
    """The database and spool for one CLI command, closed afterwards."""
    runtime = open_runtime(settings)
    try:
        yield runtime
    finally:
        runtime.close()


def elead_db_id(public_id: str) -> int:
    match = re.fullmatch(r"(?i)(?:e-?)?(\d+)", public_id.strip())
    if not match:
        raise UsageError(f"not an eLead id: {public_id!r} (expected E-<number>)")
    return int(match.group(1))


def _elead_row(elead: ELead) -> dict[str, Any]:
    return {
        "id": elead.public_id,
        "state": elead.state,
        "message_id": elead.message_id,
        "account": elead.account_id,
        "prospect": elead.prospect.pid if elead.prospect is not None else None,
        "received_at": elead.received_at.isoformat() if elead.received_at else None,
    }


def list_eleads(
    settings: Settings, *, state: str | None = None, account: str | None = None
) -> list[dict[str, Any]]:
    with _runtime(settings):
        query = ELead.select().order_by(ELead.id.desc())
        if state:
            query = query.where(ELead.state == state)
        if account:
            query = query.where(ELead.account == account)
        return [_elead_row(e) for e in query]


#: A candidate that has drawn this many leads under other names gets a warning.
CONFLICT_WARNING_AT = 3


def _candidates_with_warnings(elead: ELead) -> list[dict[str, Any]]:
    rows = [dict(c) for c in elead.candidates or []]
    pids = [c.get("prospect") for c in rows]
    counts = {
        p.pid: p.conflicting_leads
        for p in Prospect.select(Prospect.pid, Prospect.conflicting_leads).where(
            (Prospect.account == elead.account_id) & Prospect.pid.in_(pids)
        )
    }
    for row in rows:
        n = counts.get(str(row.get("prospect")), 0)
        if n >= CONFLICT_WARNING_AT:
            row["warning"] = (
                f"{row['prospect']} has drawn {n} leads under other names that share its "
                "email or phone: check before merging anything into it"
            )
    return rows


def _history(elead: ELead) -> list[dict[str, Any]]:
    return [
        {"at": a.at.isoformat(), "actor": a.actor, "action": a.action}
        for a in AuditEvent.select().where(AuditEvent.elead == elead).order_by(AuditEvent.id)
    ]


def show_elead(settings: Settings, public_id: str) -> dict[str, Any]:
    with _runtime(settings):
        elead = ELead.get_or_none(ELead.id == elead_db_id(public_id))
        if elead is None:
            raise UsageError(f"no eLead {public_id}")
        message = elead.message
        return {
            **_elead_row(elead),
            "location": elead.location,
            "rule": elead.rule,
            "listener": message.listener,
            "mail_from": message.mail_from,
            "raw_path": message.raw_path,
            "header_date": elead.header_date.isoformat() if elead.header_date else None,
            "lead": (elead.parse or {}).get("lead"),
            "problems": elead.problems,
            "candidates": _candidates_with_warnings(elead),
            "history": _history(elead),
        }


def spool_counts(settings: Settings) -> dict[str, int]:
    with _runtime(settings) as runtime:
        return runtime.spool.counts()


def failed_messages(settings: Settings) -> list[dict[str, Any]]:
    with _runtime(settings) as runtime:
        return list(runtime.spool.failed())


def requeue_failed(settings: Settings, spool_ids: list[str] | None) -> int:
    with _runtime(settings) as runtime:
        ids = spool_ids if spool_ids is not None else [r["id"] for r in runtime.spool.failed()]
        for spool_id in ids:
            runtime.spool.requeue(spool_id)
        return len(ids)


def convert_elead(
    settings: Settings, public_id: str, *, use: str | None, new: bool, actor: str
) -> dict[str, Any]:
    with _runtime(settings):
        done = convert_manual(elead_db_id(public_id), use=use, new=new, actor=actor)
        return {
            "elead": done.elead,
            "outcome": done.outcome,
            "prospect": done.prospect,
            "detail": done.detail,
        }


def import_prospects_file(
    settings: Settings, path: Path, *, account: str, batch_size: int | None = None
) -> ImportReport:
    account_settings = settings.account(account)
    if account_settings is None:
        raise UsageError(f"unknown account {account!r}")
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    with _runtime(settings):
        return import_prospects(
            path,
            account=account,
            default_region=account_settings.country,
            batch_size=batch_size or IMPORT_BATCH_ROWS,
        )


def prospects(settings: Settings, *, account: str | None) -> list[dict[str, Any]]:
    with _runtime(settings):
        rows: list[dict[str, Any]] = list_prospects(account=account)
        return rows


def outbox_rows(settings: Settings, *, status: str | None = None) -> list[dict[str, Any]]:
    with _runtime(settings):
        rows: list[dict[str, Any]] = list_outbox(status=status)
        return rows
