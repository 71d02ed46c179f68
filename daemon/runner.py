"""The worker loop that drains the spool through the pipeline.

One bad message never stops the loop: any exception while processing defers the message
with backoff (``Spool.defer``), and after ``max_attempts`` it lands in spool/failed/ with
the reason. ``PermanentError`` skips the retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from daemon.db.thread import DBThread
from daemon.errors import PermanentError
from daemon.pipeline import Outcome, Pipeline
from daemon.spool import SpoolEntry, SpoolStore

log = logging.getLogger(__name__)


def outage_wait(failures: int) -> float:
    """Seconds before asking the spool again after ``failures`` failed tries in a row
    (the database away): 1, 2, 4 ... up to 30."""
    return min(30.0, 0.5 * 2.0**failures)


def settle(spool: SpoolStore, entry: SpoolEntry, result: Outcome | Exception) -> Outcome:
    """Turn a failed entry into a deferred (or failed) one and report it as an Outcome."""
    if isinstance(result, Outcome):
        return result
    if isinstance(result, PermanentError):
        spool.fail(entry, f"permanent: {result}")
        return Outcome(None, "failed", detail=f"moved to spool/failed: {result}", spool_id=entry.id)
    reason = f"{type(result).__name__}: {result}"
    log.error(
        "event=process_error spool_id=%s listener=%s error=%s",
        entry.id,
        entry.envelope.listener,
        reason,
        exc_info=result,
    )
    deferred = spool.defer(entry, reason)
    where = "queued for retry" if deferred else "moved to spool/failed"
    return Outcome(None, "failed", detail=f"{where}: {reason}", spool_id=entry.id)


def process_or_defer_batch(
    pipeline: Pipeline, spool: SpoolStore, entries: list[SpoolEntry]
) -> list[Outcome]:
    """Process claimed entries; failures stay retryable. Never raises for one message."""
    try:
        results = pipeline.process_batch(entries)
    except Exception as exc:  # noqa: BLE001 - a bug in the batch logic must not lose mail
        results = [exc] * len(entries)
    return [settle(spool, entry, result) for entry, result in zip(entries, results, strict=True)]


def process_or_defer(pipeline: Pipeline, spool: SpoolStore, entry: SpoolEntry) -> Outcome:
    return process_or_defer_batch(pipeline, spool, [entry])[0]


class SpoolRunner:
    def __init__(
        self,
        *,
        spool: SpoolStore,
        pipeline: Pipeline,
        db_thread: DBThread,
        batch: int = 32,
        idle_wait: float = 5.0,
    ) -> None:
        self.spool = spool
        self.pipeline = pipeline
        self.db_thread = db_thread
        self.batch = batch
        self.idle_wait = idle_wait
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._committed: list[Callable[[], None]] = []
        spool.on_new_message(self._wakeup.set)

    def on_batch_committed(self, callback: Callable[[], None]) -> None:
        self._committed.append(callback)

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wakeup.clear()
            try:
                wait = await self._step()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - e.g. the database went away: retry
                # What was claimed stays claimed (the lease or the next start returns it);
                # this loop must outlive the outage, or the daemon accepts and never stores.
                failures += 1
                wait = outage_wait(failures)
                log.error("event=spool_runner_error attempts=%d error=%r", failures, exc)
            if wait:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)

    async def _step(self) -> float:
        """One batch; returns how long to wait before the next (0: go on at once)."""
        entries = await self.db_thread.run(self.spool.claim_due, self.batch)
        # Once claimed, entries are finished even when stop() is called meanwhile.
        await self.db_thread.run(process_or_defer_batch, self.pipeline, self.spool, entries)
        for callback in self._committed:
            callback()
        if entries:
            return 0.0
        due = await self.db_thread.run(self.spool.next_due_in)
        return self.idle_wait if due is None else min(self.idle_wait, max(due, 0.05))

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
