"""The daemon's scheduler: the visit-log job every ``visits.interval_seconds`` and the
daily purge of spent reply tokens.

APScheduler 3.x ``AsyncIOScheduler`` on the daemon's own loop; jobs are coroutines that
never block it: file reading runs in a worker thread, every database step on the
DBThread. ``coalesce`` + ``max_instances=1``: a slow run is never overlapped by the next
tick, and missed ticks collapse into one. A failing run is logged and the next tick
simply retries (cursors only move with the results they stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from daemon.config import Settings
from daemon.db import hold_leader_lock, write_transaction
from daemon.db.models import JobRun, utcnow
from daemon.db.thread import DBThread
from daemon.visits.job import (
    RunReport,
    StaleCursor,
    commit_batch,
    current_settings,
    load_cursors,
    log_run,
    merge_reports,
    purge_sessions,
    read_batch,
)

log = logging.getLogger(__name__)

#: Tokens are purged this long after they expired.
TOKEN_RETENTION = timedelta(days=90)
#: job_run rows are kept this long.
JOB_RUN_RETENTION = timedelta(days=7)


def claim_tick(job: str, tick: int, instance: str) -> bool:
    """May this instance run ``job`` for ``tick``? Only the leader may (see
    :func:`daemon.db.hold_leader_lock`), and only once per tick: the ``job_run`` row,
    unique per (job, tick), is the proof, so a tick a failed-over leader already ran
    is not run again by the next one."""
    if not hold_leader_lock():
        return False
    with write_transaction():
        inserted = (
            JobRun.insert(job=job, tick=tick, instance=instance)
            .on_conflict_ignore()
            .as_rowcount()
            .execute()
        )
    return bool(inserted)


def finish_tick(job: str, tick: int, outcome: str) -> None:
    with write_transaction():
        JobRun.update(finished_at=utcnow(), outcome=outcome).where(
            (JobRun.job == job) & (JobRun.tick == tick)
        ).execute()


def purge_job_runs(*, now: datetime) -> int:
    """The scheduler's run records, kept ``JOB_RUN_RETENTION`` (they only prove one run per
    tick and show who led when)."""
    with write_transaction():
        return int(JobRun.delete().where(JobRun.started_at < now - JOB_RUN_RETENTION).execute())


def _purge_tokens() -> int:
    from daemon.commands.tokens import purge_tokens

    with write_transaction():
        return purge_tokens(now=utcnow(), older_than=TOKEN_RETENTION)


class VisitScheduler:
    """Periodic jobs of the daemon; ``wake`` is called when alerts were queued."""

    def __init__(
        self, *, settings: Settings, db_thread: DBThread, wake: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.db_thread = db_thread
        self.wake = wake
        self._scheduler: AsyncIOScheduler | None = None
        self._running: asyncio.Task[None] | None = None
        self.runs = 0
        self.leader: bool | None = None  # None: not asked yet

    async def start(self) -> None:
        # APScheduler logs two INFO lines per run ("Running job", "executed successfully"):
        # quiet them unless a level was set for them on purpose; our own event lines say
        # what each run did.
        for name in ("apscheduler.executors.default", "apscheduler.scheduler"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        scheduler = AsyncIOScheduler(event_loop=loop, timezone="UTC")
        interval = self.settings.visits.interval_seconds
        if self.settings.visits.enabled:
            self._add_visits_job(scheduler, interval)
        scheduler.add_job(
            self._purge_tick,
            IntervalTrigger(days=1),
            id="purge",
            name="daily purge (reply tokens, old visits)",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=3600,
            next_run_time=datetime.now().astimezone() + timedelta(minutes=5),
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info(
            "event=scheduler_started visits=%s interval=%.3g",
            self.settings.visits.enabled,
            interval,
        )

    def _add_visits_job(self, scheduler: AsyncIOScheduler, interval: float) -> None:
        """The visit-log job, first run now. A run in progress when it is replaced (a
        reload) finishes; the executor counts instances by job id, so the new job never
        runs beside it."""
        scheduler.add_job(
            self._visits_tick,
            IntervalTrigger(seconds=interval),
            id="visits",
            name="visit-log reader",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(interval * 2)),
            next_run_time=datetime.now().astimezone(),
            replace_existing=True,
        )

    def reconfigure(self, settings: Settings) -> None:
        """New settings (a reload): read per run, and the visit-log job follows
        ``visits.enabled`` and ``visits.interval_seconds`` (at the new pace from now)."""
        before, self.settings = self.settings.visits, settings
        after, scheduler = settings.visits, self._scheduler
        if scheduler is None or (before.enabled, before.interval_seconds) == (
            after.enabled,
            after.interval_seconds,
        ):
            return
        if after.enabled:
            self._add_visits_job(scheduler, after.interval_seconds)
        elif scheduler.get_job("visits") is not None:
            scheduler.remove_job("visits")
        log.info(
            "event=scheduler_reconfigured visits=%s interval=%.3g",
            after.enabled,
            after.interval_seconds,
        )

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop ticking; let a run in progress finish (its commit is one transaction).

        The scheduler is paused first and shut down only after the run ended, so that
        APScheduler's completion callback never meets a stopped executor.
        """
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.pause()
        running = self._running
        if running is not None and not running.done():
            try:
                await asyncio.wait_for(asyncio.shield(running), timeout)
            except (TimeoutError, asyncio.CancelledError):
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        log.info("event=scheduler_stopped")

    async def _claim(self, job: str, period: float) -> int | None:
        """The tick to run now, or None when another instance leads (or ran it)."""
        tick = int(time.time() // period)
        try:
            mine = await self.db_thread.run(claim_tick, job, tick, self.settings.instance_name)
        except Exception as exc:  # noqa: BLE001 - database away: the next tick asks again
            log.warning("event=scheduler_tick_skipped job=%s reason=%r", job, exc)
            return None
        leader = mine or await self.db_thread.run(hold_leader_lock)
        if leader != self.leader:
            log.info(
                "event=scheduler_leader leader=%s instance=%s", leader, self.settings.instance_name
            )
            self.leader = leader
        return tick if mine else None

    async def _finish(self, job: str, tick: int, outcome: str) -> None:
        with contextlib.suppress(Exception):  # bookkeeping only
            await self.db_thread.run(finish_tick, job, tick, outcome)

    async def _visits_tick(self) -> None:
        self._running = asyncio.current_task()
        try:
            tick = await self._claim("visits", self.settings.visits.interval_seconds)
            if tick is None:
                return
            try:
                report = await self.run_visits()
            except asyncio.CancelledError:
                # Only shutdown cancels a run (after its grace time): nothing was committed
                # for the batch in hand, the next start reads it again.
                log.warning("event=visits_job_cancelled reason=shutdown")
                await self._finish("visits", tick, "cancelled")
                return
            except Exception:  # the daemon keeps serving; the next tick retries
                log.exception("event=visits_job_failed")
                await self._finish("visits", tick, "failed")
                return
            await self._finish("visits", tick, "ok")
        finally:
            self._running = None
        self.runs += 1
        if report.queued:
            self.wake()

    async def run_visits(self) -> RunReport:
        """One run: batches of (cursors on the DB thread, files in a thread, commit)."""
        settings = await asyncio.to_thread(current_settings, self.settings)
        total = RunReport()
        started = time.perf_counter()
        dropped = 0
        while dropped < 3:
            cursors = await self.db_thread.run(load_cursors)
            batch = await asyncio.to_thread(read_batch, settings, cursors)
            if not batch.chunks:
                break
            try:
                part = await self.db_thread.run(commit_batch, settings, batch)
            except StaleCursor as exc:
                log.info("event=visits_batch_dropped reason=%s", exc)
                dropped += 1
                continue
            merge_reports(total, part)
            if part.queued:
                self.wake()  # do not wait for the rest of a backlog to send these
            if not batch.more:
                break
        total.seconds = time.perf_counter() - started
        log_run(total)
        return total

    async def _purge_tick(self) -> None:
        """Daily housekeeping: spent reply tokens, old visits of anonymous visitors."""
        tick = await self._claim("purge", 86400.0)
        if tick is None:
            return
        try:
            purged = await self.db_thread.run(_purge_tokens)
            settings = await asyncio.to_thread(current_settings, self.settings)
            visits = await self.db_thread.run(purge_sessions, settings)
            runs = await self.db_thread.run(purge_job_runs, now=utcnow())
        except Exception:  # housekeeping: tomorrow is another day
            log.exception("event=purge_failed")
            return
        log.info("event=purged tokens=%d visit_sessions=%d job_runs=%d", purged, visits, runs)
        await self._finish("purge", tick, "ok")
