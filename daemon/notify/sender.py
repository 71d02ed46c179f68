"""The outbox sender: takes due notifications from the database and hands them on.

Life of a row (all DB work through the DB thread, each step its own short transaction):

1. claim: due rows (``status='queued'`` and ``next_attempt_at <= now``) get a lease by
   moving ``next_attempt_at`` forward (a conditional UPDATE, so two senders never take
   the same row; on PostgreSQL the rows are read ``FOR UPDATE SKIP LOCKED``, so the
   senders of several instances do not wait for each other); a crash mid-send leaves the
   row queued, due again when the lease ends;
2. build (render.py) and send (transport.py);
3. only after the relay's 250 (or the fsynced Maildir file): ``sent``, ``sent_at``,
   ``path``. A transient failure counts an attempt and backs off exponentially up to
   ``retry_max``; after ``max_attempts`` (or a permanent failure) the row is ``failed``
   with the reason.

Delivery is at least once: a crash after the relay's 250 but before step 3 commits sends
the message again when the lease ends - the same bytes with the same Message-ID, so the
receiving side can drop the duplicate. Nothing already marked sent is ever sent again.

Wake-ups: :meth:`OutboxSender.wake` (callable from any thread) whenever something may
have queued mail - ``app.py`` hooks it to "a spool batch was committed" of the runner
thread or the worker process - and a poll every ``outbound.poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

import peewee as pw

from daemon.config import Settings
from daemon.db import write_transaction
from daemon.db.models import Notification, database_proxy, utcnow
from daemon.db.thread import DBThread
from daemon.errors import PermanentError, TransientError
from daemon.notify.render import (
    Outgoing,
    Renderer,
    build_message,
    original_paths,
    templates_dir_for,
)
from daemon.notify.transport import SendResult, Transport, make_transport

log = logging.getLogger(__name__)


# --- database steps (run on the DB thread) -------------------------------------------


def _write_transaction() -> Any:
    """:func:`daemon.db.write_transaction`: ``BEGIN IMMEDIATE`` on SQLite.

    The spool worker (another process) writes the same database. A SQLite transaction
    that reads first and writes later gets "database is locked" at once, without the
    busy wait, when another connection committed in between; holding the write lock
    from the start makes it wait its turn instead.
    """
    return write_transaction()


def claim_due(*, now: datetime, limit: int, lease: timedelta) -> list[Outgoing]:
    """Lease up to ``limit`` due rows, oldest first, and return them as plain data."""
    until = now + lease
    claimed: list[Outgoing] = []
    with _write_transaction():
        due = (
            Notification.select()
            .where((Notification.status == "queued") & (Notification.next_attempt_at <= now))
            .order_by(Notification.next_attempt_at, Notification.id)
            .limit(limit)
        )
        if isinstance(database_proxy.obj, pw.PostgresqlDatabase):
            # Several instances: each takes rows nobody else is taking, without waiting.
            due = due.for_update(skip_locked=True)
        for row in list(due):
            taken = (
                Notification.update(next_attempt_at=until)
                .where(
                    (Notification.id == row.id)
                    & (Notification.status == "queued")
                    & (Notification.next_attempt_at <= now)
                )
                .execute()
            )
            if taken == 1:
                claimed.append(_outgoing(row))
    return claimed


def _outgoing(row: Notification) -> Outgoing:
    return Outgoing(
        id=row.id,
        kind=row.kind,
        to=tuple(row.to or ()),
        subject=row.subject,
        reply_to=row.reply_to,
        message_id=row.message_id,
        payload=dict(row.payload or {}),
        elead_id=cast(Any, row).elead_id,
        attempts=row.attempts,
        created_at=row.created_at,
    )


def mark_sent(notification_id: int, *, now: datetime, path: str | None, note: str | None) -> None:
    with _write_transaction():
        Notification.update(
            status="sent",
            sent_at=now,
            path=path,
            attempts=Notification.attempts + 1,
            last_error=note,
        ).where(Notification.id == notification_id).execute()


def mark_failed(notification_id: int, *, now: datetime, reason: str) -> None:
    del now
    with _write_transaction():
        Notification.update(
            status="failed", attempts=Notification.attempts + 1, last_error=reason[:2000]
        ).where(Notification.id == notification_id).execute()


def backoff(attempts: int, *, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: base, 2*base, ... cap."""
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))


def mark_retry(
    notification_id: int,
    *,
    now: datetime,
    reason: str,
    max_attempts: int,
    base: float,
    cap: float,
) -> tuple[str, datetime | None]:
    """Count a transient failure: back off, or give up after ``max_attempts``."""
    with _write_transaction():
        row = Notification.get_by_id(notification_id)
        attempts = row.attempts + 1
        if attempts >= max_attempts:
            row.status, next_at = "failed", None
            reason = f"gave up after {attempts} attempts: {reason}"
        else:
            next_at = now + timedelta(seconds=backoff(attempts, base=base, cap=cap))
            row.next_attempt_at = next_at
        row.attempts, row.last_error = attempts, reason[:2000]
        row.save()
    return row.status, next_at


def release(ids: list[int], *, now: datetime) -> None:
    """Give claimed-but-unsent rows back (on stop), due at once."""
    if ids:
        with _write_transaction():
            Notification.update(next_attempt_at=now).where(
                Notification.id.in_(ids) & (Notification.status == "queued")
            ).execute()


def archived_originals(item: Outgoing) -> dict[str, bytes | None]:
    """Originals archived in the database (``spool.store: database``), read here on the
    DB thread so that rendering in a worker thread needs no connection of its own."""
    from daemon.spool.database import ARCHIVE_PREFIX, read_archived

    found: dict[str, bytes | None] = {}
    for path in original_paths(item):
        if path.startswith(ARCHIVE_PREFIX):
            try:
                found[path] = read_archived(path)
            except FileNotFoundError:
                found[path] = None
    return found


def next_due_in(*, now: datetime) -> float | None:
    """Seconds until the next queued row is due (None: nothing queued)."""
    row = (
        Notification.select(Notification.next_attempt_at)
        .where(Notification.status == "queued")
        .order_by(Notification.next_attempt_at)
        .first()
    )
    return None if row is None else (row.next_attempt_at - now).total_seconds()


# --- the sender ------------------------------------------------------------------------


class OutboxSender:
    """Sends due notifications through ``transport``; see the module docstring."""

    def __init__(
        self,
        *,
        db_thread: DBThread,
        transport: Transport,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        renderer: Renderer | None = None,
        batch: int = 20,
    ) -> None:
        self.db_thread = db_thread
        self.transport = transport
        self.settings = settings
        self.clock = clock
        self.renderer = renderer or Renderer(templates_dir_for(settings))
        self.batch = batch
        out = settings.outbound
        timeout = out.relay.timeout if out.relay is not None else 10.0
        self.lease = timedelta(seconds=3 * timeout + 30)
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._last_claim_full = False
        self._retired: list[Transport] = []

    def reconfigure(self, settings: Settings) -> None:
        """Config reload: the next claim uses ``settings``; a changed relay or templates
        folder gets a new transport or renderer (the old transport is closed between
        batches, so a send in progress finishes on it)."""
        old, self.settings = self.settings, settings
        if settings.outbound.relay != old.outbound.relay:
            self._retired.append(self.transport)
            self.transport = make_transport(settings)
            relay = settings.outbound.relay
            self.lease = timedelta(seconds=3 * (relay.timeout if relay else 10.0) + 30)
        if templates_dir_for(settings) != templates_dir_for(old):
            self.renderer = Renderer(templates_dir_for(settings))
        self.wake()

    async def _close_retired(self) -> None:
        while self._retired:
            closer = getattr(self._retired.pop(), "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    def wake(self) -> None:
        """Look for due notifications now; callable from any thread."""
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            self._wakeup.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wakeup.set)

    def stop(self) -> None:
        self._stopping = True
        self.wake()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        log.info("event=outbox_started transport=%s", type(self.transport).__name__)
        try:
            while not self._stopping:
                self._wakeup.clear()
                await self._close_retired()
                try:
                    await self.send_due()
                    if self._last_claim_full:
                        continue
                    wait = await self._idle_wait()
                except Exception:
                    log.exception("event=outbox_error")
                    wait = self.settings.outbound.poll_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
        finally:
            await self._close_retired()
            closer = getattr(self.transport, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
            log.info("event=outbox_stopped")

    async def _idle_wait(self) -> float:
        poll = self.settings.outbound.poll_interval
        due = await self.db_thread.run(next_due_in, now=self.clock())
        return poll if due is None else min(poll, max(due, 0.05))

    async def send_due(self) -> int:
        """Claim what is due and send it; return how many were sent."""
        items = await self.db_thread.run(
            claim_due, now=self.clock(), limit=self.batch, lease=self.lease
        )
        self._last_claim_full = len(items) >= self.batch
        sent = 0
        for index, item in enumerate(items):
            if self._stopping:
                rest = [i.id for i in items[index:]]
                await self.db_thread.run(release, rest, now=self.clock())
                self._last_claim_full = False
                break
            sent += await self._send_one(item)
        return sent

    async def _send_one(self, item: Outgoing) -> bool:
        started = time.monotonic()
        try:
            originals = await self.db_thread.run(archived_originals, item)
        except Exception as exc:  # noqa: BLE001 - the database, not the message: retry
            await self._retry(item, f"reading the original: {exc!r}")
            return False
        try:
            message = await asyncio.to_thread(
                build_message,
                item,
                outbound=self.settings.outbound,
                renderer=self.renderer,
                originals=originals,
            )
        except Exception as exc:  # noqa: BLE001 - a broken template fails this row only
            await self._failed(item, f"render: {type(exc).__name__}: {exc}")
            return False
        try:
            result = await self.transport.send(
                message, sender=self.settings.outbound.from_address, recipients=list(item.to)
            )
        except PermanentError as exc:
            await self._failed(item, str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - TransientError, or a transport bug: retry
            reason = str(exc) if isinstance(exc, TransientError) else repr(exc)
            await self._retry(item, reason)
            return False
        await self._sent(item, result, started)
        return True

    async def _sent(self, item: Outgoing, result: SendResult, started: float) -> None:
        now = self.clock()
        note = None
        if result.refused:
            note = "refused: " + "; ".join(f"{a}: {r}" for a, r in result.refused.items())
        await self.db_thread.run(mark_sent, item.id, now=now, path=result.path, note=note)
        queued_ms = (now - item.created_at).total_seconds() * 1000 if item.created_at else -1
        log.info(
            "event=notification_sent id=%d kind=%s elead=%s message_id=%s domains=%s "
            "attempts=%d send_ms=%.1f queued_ms=%.0f refused=%d",
            item.id,
            item.kind,
            _elead(item),
            item.message_id,
            _domains(item),
            item.attempts + 1,
            (time.monotonic() - started) * 1000,
            queued_ms,
            len(result.refused),
        )

    async def _failed(self, item: Outgoing, reason: str) -> None:
        await self.db_thread.run(mark_failed, item.id, now=self.clock(), reason=reason)
        log.error(
            "event=notification_failed id=%d kind=%s elead=%s message_id=%s domains=%s reason=%r",
            item.id,
            item.kind,
            _elead(item),
            item.message_id,
            _domains(item),
            reason,
        )

    async def _retry(self, item: Outgoing, reason: str) -> None:
        out = self.settings.outbound
        status, next_at = await self.db_thread.run(
            mark_retry,
            item.id,
            now=self.clock(),
            reason=reason,
            max_attempts=out.max_attempts,
            base=out.retry_base,
            cap=out.retry_max,
        )
        level = logging.ERROR if status == "failed" else logging.WARNING
        log.log(
            level,
            "event=notification_%s id=%d kind=%s elead=%s message_id=%s attempts=%d "
            "next_attempt_at=%s reason=%r",
            "failed" if status == "failed" else "retry",
            item.id,
            item.kind,
            _elead(item),
            item.message_id,
            item.attempts + 1,
            next_at.isoformat() if next_at else "-",
            reason,
        )


def _elead(item: Outgoing) -> str:
    return f"E-{item.elead_id}" if item.elead_id is not None else "-"


def _domains(item: Outgoing) -> str:
    """Recipient domains only: logs carry no full addresses."""
    return ",".join(sorted({a.rpartition("@")[2] for a in item.to})) or "-"


def sender_from_settings(settings: Settings, *, db_thread: DBThread, **kwargs: Any) -> OutboxSender:
    """The sender with the configured transport (relay, or the outbox Maildir)."""
    return OutboxSender(
        db_thread=db_thread, transport=make_transport(settings), settings=settings, **kwargs
    )
