"""The spool as rows of the shared database, for several instances on one PostgreSQL.

With ``spool.store: database`` (the default on PostgreSQL) a message is acknowledged once
its ``spool_message`` row is committed, so any instance can finish what another one
accepted. Life of a row::

    queued --claim--> active (claimed_by, lease_until) --commit of its effects--> done
       ^                 |  lease ran out (instance died): claimed again, one attempt used
       +----defer--------+--after max_attempts, or a permanent error------> failed

Claims take rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL): concurrent
workers never wait for, nor take, each other's rows. On SQLite the write transaction
already holds the only write lock. Finishing is idempotent by design: the pipeline's
dedupe key makes a message processed twice (an expired lease whose worker was only
slow) one eLead, so a lease that runs out early costs work, never a duplicate.

Done rows keep the raw bytes: they are the message archive
(``InboundMessage.raw_path`` = ``db:spool_message/<id>``), readable from every instance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import peewee as pw

from daemon.config import instance_name
from daemon.db import write_transaction
from daemon.db.models import SpoolMessage, database_proxy, utcnow
from daemon.errors import UsageError
from daemon.spool import (
    Envelope,
    Spool,
    SpoolEntry,
    SpoolStore,
    new_spool_id,
    read_spool_file,
    spool_id_time,
)

log = logging.getLogger(__name__)

ARCHIVE_PREFIX = "db:spool_message/"


def _dead(pid: str) -> bool:
    """Whether the process of a claim's ``<pid>`` part is gone (not a number: gone)."""
    return not pid.isdigit() or not _pid_alive(int(pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _connected() -> Iterator[None]:
    """A connection for this thread for the block, closed after if it was not open."""
    db = database_proxy.obj
    opened = db.is_closed()
    if opened:
        db.connect()
    try:
        yield
    finally:
        if opened:
            db.close()


def read_archived(raw_path: str) -> bytes:
    """The raw bytes of an archived message, from the database or from its file."""
    if raw_path.startswith(ARCHIVE_PREFIX):
        row = (
            SpoolMessage.select(SpoolMessage.content)
            .where(SpoolMessage.id == raw_path[len(ARCHIVE_PREFIX) :])
            .first()
        )
        if row is None:
            raise FileNotFoundError(raw_path)
        return bytes(row.content)
    return read_spool_file(Path(raw_path))[1]


class DatabaseSpool(SpoolStore):
    """:class:`SpoolStore` on the ``spool_message`` table; see the module docstring."""

    def __init__(
        self,
        *,
        files_root: Path | None = None,
        lease_seconds: float = 120.0,
        max_attempts: int = 5,
        retry_base: float = 30.0,
        retry_max: float = 3600.0,
        group_commit_ms: float = 2.0,
        clock: Callable[[], float] | None = None,
        instance: str | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        super().__init__(
            max_attempts=max_attempts,
            retry_base=retry_base,
            retry_max=retry_max,
            group_commit_ms=group_commit_ms,
            **kwargs,
        )
        #: A file spool left from before the switch (``recover`` moves it in).
        self.files_root = files_root
        self.lease_seconds = lease_seconds
        self.instance = instance or instance_name(files_root.parent if files_root else None)

    @property
    def owner(self) -> str:
        """``claimed_by`` of this process's claims: the instance and the pid."""
        return f"{self.instance}/{os.getpid()}"

    # -- accepting ----------------------------------------------------------------

    @staticmethod
    def _row(spool_id: str, raw: bytes, env: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": spool_id,
            "state": "queued",
            "envelope": env,
            "content": raw,
            "size": len(raw),
            "received_at": utcnow(),
        }

    def _store_batch(self, items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        # Runs in the spool's write thread, on that thread's own connection: acknowledging
        # never queues behind the daemon's other database work.
        rows = [self._row(spool_id, raw, env) for spool_id, raw, env in items]
        with write_transaction():
            SpoolMessage.insert_many(rows).execute()

    def _entry(self, spool_id: str, env: dict[str, Any]) -> SpoolEntry:
        return SpoolEntry(
            id=spool_id, path=Path(ARCHIVE_PREFIX + spool_id), envelope=Envelope.from_json(env)
        )

    def put_sync(self, raw: bytes, envelope: Envelope) -> SpoolEntry:
        spool_id, env = new_spool_id(), envelope.to_json()
        with write_transaction():
            SpoolMessage.insert(self._row(spool_id, raw, env)).execute()
        return self._entry(spool_id, env)

    # -- claiming and finishing ---------------------------------------------------

    def _skip_locked(self, query: pw.Select) -> pw.Select:
        if isinstance(database_proxy.obj, pw.PostgresqlDatabase):
            return query.for_update(skip_locked=True)
        return query

    def _claimed(self, row: SpoolMessage) -> SpoolEntry:
        return SpoolEntry(
            id=row.id,
            path=Path(ARCHIVE_PREFIX + row.id),
            envelope=Envelope.from_json(row.envelope),
            attempts=row.attempts,
            raw=bytes(row.content),
        )

    def claim_due(self, limit: int = 100) -> list[SpoolEntry]:
        now = self.clock()
        M = SpoolMessage
        with write_transaction():
            queued = M.select().where((M.state == "queued") & (M.next_attempt_at <= now))
            rows = list(self._skip_locked(queued.order_by(M.state, M.id).limit(limit)))
            expired: list[SpoolMessage] = []
            if len(rows) < limit:
                lapsed = M.select().where((M.state == "active") & (M.lease_until < now))
                query = lapsed.order_by(M.state, M.id).limit(limit - len(rows))
                expired = list(self._skip_locked(query))
            for row in expired:
                # Its worker died (or stalled) while it held the claim: that was an attempt,
                # so a message that kills its worker ends in failed, not in a loop.
                row.attempts += 1
                log.warning(
                    "event=spool_lease_expired spool_id=%s claimed_by=%s attempts=%d",
                    row.id,
                    row.claimed_by,
                    row.attempts,
                )
            give_up = [r for r in expired if r.attempts >= self.max_attempts]
            for row in give_up:
                self._fail_row(row.id, "worker died while processing it", row.attempts, owner=None)
            taken = [r for r in rows + expired if r not in give_up]
            if taken:
                until = now + self.lease_seconds
                for attempts in {r.attempts for r in taken}:
                    ids = [r.id for r in taken if r.attempts == attempts]
                    M.update(
                        state="active", claimed_by=self.owner, lease_until=until, attempts=attempts
                    ).where(M.id.in_(ids)).execute()
        return [self._claimed(row) for row in taken]

    def claim(self, spool_id: str) -> SpoolEntry | None:
        M = SpoolMessage
        with write_transaction():
            row = self._skip_locked(
                M.select().where((M.id == spool_id) & (M.state == "queued"))
            ).first()
            if row is None:
                return None
            M.update(
                state="active",
                claimed_by=self.owner,
                lease_until=self.clock() + self.lease_seconds,
            ).where(M.id == spool_id).execute()
        return self._claimed(row)

    def next_due_in(self) -> float | None:
        M = SpoolMessage
        due = M.select(pw.fn.MIN(M.next_attempt_at)).where(M.state == "queued").scalar()
        lease = M.select(pw.fn.MIN(M.lease_until)).where(M.state == "active").scalar()
        times = [t for t in (due, lease) if t is not None]
        return max(0.0, min(times) - self.clock()) if times else None

    def read_raw(self, entry: SpoolEntry) -> bytes:
        if entry.raw is not None:
            return entry.raw
        return read_archived(ARCHIVE_PREFIX + entry.id)

    def archive(self, entry: SpoolEntry, messages_dir: Path, *, repair: bool = False) -> str:
        del messages_dir, repair  # the row itself stays, as ``done``
        return ARCHIVE_PREFIX + entry.id

    def complete(self, entry: SpoolEntry) -> None:
        self.complete_many([entry])

    def complete_many(self, entries: list[SpoolEntry]) -> None:
        if not entries:
            return
        M = SpoolMessage
        with write_transaction():
            M.update(state="done", claimed_by=None, lease_until=None, finished_at=utcnow()).where(
                M.id.in_([e.id for e in entries])
            ).execute()

    def defer(self, entry: SpoolEntry, reason: str) -> bool:
        attempts = entry.attempts + 1
        if attempts >= self.max_attempts:
            with write_transaction():
                self._fail_row(entry.id, reason, attempts, owner=self.owner)
            return False
        delay = self.retry_delay(attempts)
        M = SpoolMessage
        with write_transaction():
            changed = (
                M.update(
                    state="queued",
                    attempts=attempts,
                    next_attempt_at=self.clock() + delay,
                    last_error=reason[:2000],
                    claimed_by=None,
                    lease_until=None,
                )
                .where(self._held(entry.id))
                .execute()
            )
        if not changed:
            # Our lease ran out and another worker has it (or finished it): theirs now.
            log.warning("event=spool_claim_lost spool_id=%s while=defer", entry.id)
            return False
        self._log_deferred(entry, attempts, delay, reason)
        return True

    def fail(self, entry: SpoolEntry, reason: str) -> None:
        with write_transaction():
            self._fail_row(entry.id, reason, entry.attempts + 1, owner=self.owner)

    def _held(self, spool_id: str) -> Any:
        """The row, while this process's claim on it stands (a worker whose lease ran out
        must not undo what the worker that took it over does)."""
        M = SpoolMessage
        return (M.id == spool_id) & (M.state == "active") & (M.claimed_by == self.owner)

    def _fail_row(self, spool_id: str, reason: str, attempts: int, *, owner: str | None) -> None:
        """``owner``: only while that claim stands; None: the caller holds the row locked."""
        M = SpoolMessage
        where = self._held(spool_id) if owner else (M.id == spool_id)
        changed = (
            M.update(
                state="failed",
                attempts=attempts,
                last_error=reason[:2000],
                claimed_by=None,
                lease_until=None,
                finished_at=utcnow(),
            )
            .where(where)
            .execute()
        )
        if not changed:
            log.warning("event=spool_claim_lost spool_id=%s while=fail", spool_id)
            return
        log.error(
            "event=spool_failed spool_id=%s attempts=%d reason=%s", spool_id, attempts, reason
        )

    # -- start, the failed area, status ---------------------------------------------

    def recover(self) -> int:
        """At the daemon's start: hand back this instance's claims whose process is gone
        (other instances would wait for their leases), and move a file spool left from
        before the switch into the database (each file is deleted only after its row is
        committed)."""
        with _connected():
            moved = self.recover_claims()
            if self.files_root is not None and self.files_root.is_dir():
                moved += self._import_files(self.files_root)
            return moved

    def recover_claims(self) -> int:
        """Claims of this instance's dead processes go back to the queue at once; those of
        other instances come back when their leases end."""
        M = SpoolMessage
        prefix = f"{self.instance}/"
        with write_transaction():
            held = M.select(M.id, M.claimed_by).where(
                (M.state == "active") & M.claimed_by.startswith(prefix)
            )
            # LIKE reads "_" in a data dir as a wildcard: the prefix is compared again here.
            claims = [(str(row.id), str(row.claimed_by)) for row in held]
            dead = [
                (row_id, owner)
                for row_id, owner in claims
                if owner.startswith(prefix) and _dead(owner[len(prefix) :])
            ]
            if dead:
                # Re-checked in the UPDATE: a lease that ran out may have been taken by
                # another instance since the SELECT.
                M.update(state="queued", claimed_by=None, lease_until=None).where(
                    M.id.in_([row_id for row_id, _ in dead])
                    & (M.state == "active")
                    & M.claimed_by.in_([owner for _, owner in dead])
                ).execute()
        if dead:
            log.info("event=spool_recovered count=%d", len(dead))
        return len(dead)

    def queued_ids(self) -> list[str]:
        M = SpoolMessage
        return [row.id for row in M.select(M.id).where(M.state == "queued").order_by(M.id)]

    def _import_files(self, root: Path) -> int:
        files = Spool(root)
        try:
            files.recover()  # journal -> queue files, active -> queue
            moved = 0
            for area, state in (("queue", "queued"), ("failed", "failed")):
                for path in sorted(files.dir(area).glob("*.msg")):
                    moved += self._import_file(files, path, state)
        finally:
            files.close()
        if moved:
            log.warning("event=spool_files_imported count=%d root=%s", moved, root)
        return moved

    def _import_file(self, files: Spool, path: Path, state: str) -> int:
        spool_id = path.stem
        try:
            envelope, raw = read_spool_file(path)
        except (OSError, ValueError) as exc:
            log.error("event=spool_file_unreadable path=%s error=%r", path, exc)
            return 0
        row = self._row(spool_id, raw, envelope.to_json())
        info_path = path.with_suffix(".json")
        if state == "failed":
            try:
                info = json.loads(info_path.read_text())
            except (OSError, ValueError):
                info = {}
            row.update(state="failed", last_error=info.get("reason"), finished_at=utcnow())
            row["attempts"] = info.get("attempts") or 0
        with write_transaction():
            SpoolMessage.insert(row).on_conflict_ignore().execute()
        path.unlink()
        info_path.unlink(missing_ok=True)
        (files.dir("state") / f"{spool_id}.json").unlink(missing_ok=True)
        return 1

    def failed(self) -> Iterator[dict[str, Any]]:
        M = SpoolMessage
        query = M.select(M.id, M.envelope, M.attempts, M.last_error, M.finished_at).where(
            M.state == "failed"
        )
        for row in query.order_by(M.state, M.id):
            envelope = row.envelope or {}
            failed_at = row.finished_at
            yield {
                "id": row.id,
                "reason": row.last_error or "(no reason recorded)",
                "attempts": row.attempts,
                "failed_at": failed_at.replace(tzinfo=UTC).isoformat() if failed_at else None,
                "listener": envelope.get("listener"),
                "mail_from": envelope.get("mail_from"),
                "received_at": envelope.get("received_at"),
            }

    def requeue(self, spool_id: str) -> None:
        M = SpoolMessage
        with write_transaction():
            changed = (
                M.update(
                    state="queued",
                    attempts=0,
                    next_attempt_at=0.0,
                    last_error=None,
                    finished_at=None,
                )
                .where((M.id == spool_id) & (M.state == "failed"))
                .execute()
            )
        if not changed:
            raise UsageError(f"no failed message with id {spool_id}")
        log.info("event=spool_requeued spool_id=%s", spool_id)

    def counts(self) -> dict[str, int]:
        return counts()

    def close(self) -> None:
        # The write thread's own connection goes with it.
        with contextlib.suppress(Exception):
            self._write_io.submit(_close_thread_connection).result(timeout=10)
        super().close()


def _close_thread_connection() -> None:
    db = database_proxy.obj
    if db is not None and not db.is_closed():
        db.close()


def counts() -> dict[str, int]:
    """Messages per area of the database spool: queue, active, failed."""
    M = SpoolMessage
    found = {"queue": 0, "active": 0, "failed": 0}
    names = {"queued": "queue", "active": "active", "failed": "failed"}
    query = (
        M.select(M.state, pw.fn.COUNT(M.id).alias("n"))
        .where(M.state.in_(list(names)))
        .group_by(M.state)
    )
    for state, n in cast(Any, query.tuples()):
        found[names[state]] = n
    return found


def snapshot(*, now: float | None = None) -> dict[str, Any]:
    """The shape of :func:`daemon.status.spool_snapshot`, from the database."""
    now = datetime.now(UTC).timestamp() if now is None else now
    M = SpoolMessage
    oldest = M.select(pw.fn.MIN(M.id)).where(M.state.in_(["queued", "active"])).scalar()
    born = spool_id_time(str(oldest)) if oldest else None
    return {
        **counts(),
        "journal": 0,
        "oldest_age_seconds": round(max(0.0, now - born), 3) if born is not None else 0.0,
    }
