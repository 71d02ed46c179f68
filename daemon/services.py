"""Service functions behind the CLI commands (and, later, the scheduler's jobs).

Each opens what it needs from ``Settings``, does one thing, and returns plain data.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from daemon.config import Settings
from daemon.db.models import ELead, InboundMessage
from daemon.errors import UsageError
from daemon.pipeline import Outcome
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
            elead = row.eleads.first()
            return Outcome(
                row.message_id,
                row.outcome,
                elead.public_id if elead else None,
                detail=row.detail or "",
                spool_id=spool_id,
            )
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

    When a daemon runs on the same data dir it may claim the message first; then we wait
    for its result instead of processing the message twice.
    """
    runtime = open_runtime(settings)
    daemon_running = DataDirLock(settings.data_dir).held_by_other()
    try:
        for label, raw in messages:
            envelope = Envelope(listener="ingest", account=account, peer=label)
            entry = runtime.spool.put_sync(raw, envelope)
            claimed = runtime.spool.claim(entry.id)
            if claimed is None:
                yield (
                    _wait_for_daemon(entry.id)
                    if daemon_running
                    else Outcome(
                        None, "failed", detail="spooled, but claimed elsewhere", spool_id=entry.id
                    )
                )
                continue
            yield process_or_defer(runtime.pipeline, runtime.spool, claimed)
    finally:
        runtime.close()


def _with_runtime(settings: Settings) -> Runtime:
    return open_runtime(settings)


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
    runtime = _with_runtime(settings)
    try:
        query = ELead.select().order_by(ELead.id.desc())
        if state:
            query = query.where(ELead.state == state)
        if account:
            query = query.where(ELead.account == account)
        return [_elead_row(e) for e in query]
    finally:
        runtime.close()


def show_elead(settings: Settings, public_id: str) -> dict[str, Any]:
    runtime = _with_runtime(settings)
    try:
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
            "candidates": elead.candidates,
        }
    finally:
        runtime.close()


def spool_counts(settings: Settings) -> dict[str, int]:
    runtime = _with_runtime(settings)
    try:
        spool = runtime.spool
        return {
            name: len(list(spool.dir(name).glob("*.msg"))) for name in ("queue", "active", "failed")
        }
    finally:
        runtime.close()


def failed_messages(settings: Settings) -> list[dict[str, Any]]:
    runtime = _with_runtime(settings)
    try:
        return list(runtime.spool.failed())
    finally:
        runtime.close()


def requeue_failed(settings: Settings, spool_ids: list[str] | None) -> int:
    runtime = _with_runtime(settings)
    try:
        ids = spool_ids if spool_ids is not None else [r["id"] for r in runtime.spool.failed()]
        for spool_id in ids:
            runtime.spool.requeue(spool_id)
        return len(ids)
    finally:
        runtime.close()
