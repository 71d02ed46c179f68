"""The worker loop that drains the spool through the pipeline.

One bad message never stops the loop: any exception while processing defers the message
with backoff (``Spool.defer``), and after ``max_attempts`` it lands in spool/failed/ with
the reason. ``PermanentError`` skips the retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from daemon.db.thread import DBThread
from daemon.errors import PermanentError
from daemon.pipeline import Outcome, Pipeline
from daemon.spool import Spool, SpoolEntry

log = logging.getLogger(__name__)


def process_or_defer(pipeline: Pipeline, spool: Spool, entry: SpoolEntry) -> Outcome:
    """Process one claimed entry; on failure leave it retryable and say so."""
    try:
        return pipeline.process(entry)
    except PermanentError as exc:
        spool.fail(entry, f"permanent: {exc}")
        return Outcome(None, "failed", detail=f"moved to spool/failed: {exc}", spool_id=entry.id)
    except Exception as exc:  # noqa: BLE001 - the message must stay retryable, whatever broke
        reason = f"{type(exc).__name__}: {exc}"
        log.exception("event=process_error spool_id=%s listener=%s", entry.id,
                      entry.envelope.listener)
        deferred = spool.defer(entry, reason)
        where = "queued for retry" if deferred else "moved to spool/failed"
        return Outcome(None, "failed", detail=f"{where}: {reason}", spool_id=entry.id)


class SpoolRunner:
    def __init__(self, *, spool: Spool, pipeline: Pipeline, db_thread: DBThread,
                 batch: int = 64, idle_wait: float = 5.0) -> None:
        self.spool = spool
        self.pipeline = pipeline
        self.db_thread = db_thread
        self.batch = batch
        self.idle_wait = idle_wait
        self._wakeup = asyncio.Event()
        self._stopping = False
        spool.on_new_message(self._wakeup.set)

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            entries = await self.db_thread.run(self.spool.claim_due, self.batch)
            for entry in entries:
                # Once claimed, an entry is finished even when stop() is called meanwhile.
                await self.db_thread.run(process_or_defer, self.pipeline, self.spool, entry)
            if entries:
                continue
            due = await self.db_thread.run(self.spool.next_due_in)
            wait = self.idle_wait if due is None else min(self.idle_wait, max(due, 0.05))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
