"""``eleads serve``: wires the parts on one event loop and owns its lifetime.

Start order: data-dir lock, database (migrated), spool recovery (claimed-but-unfinished
messages go back to the queue), the spool runner, then the listeners (SMTP, IMAP). Stop
order is the reverse, and the worker finishes the batch it holds before it exits. The
spool worker is a child process by default (daemon/worker.py, supervised by
daemon/supervisor.py), or a thread of this process with ``spool.worker: thread``.

Signals and systemd (``Type=notify``, daemon/systemd.py):

- READY=1 once every listener accepts; STATUS= lines; WATCHDOG=1 every half
  ``WatchdogSec`` while the loop and the DB thread answer (a wedged daemon gets killed
  and restarted instead of silently taking nothing).
- SIGHUP reloads config.yaml and rules/: the new file is validated first and refused
  (logged, old settings kept) when invalid; otherwise ``Daemon.settings`` is replaced,
  the SMTP handler routes with it at once (open connections too), the outbox sender uses
  it, IMAP pollers of changed mailboxes are replaced, and the worker process is replaced
  after its batch so it reads the new file.
  Settings that need a restart (``RESTART_ONLY``) keep their old value and are logged.
- SIGTERM/SIGINT: 421 to new SMTP connections and transactions, in-flight transactions
  get ``smtp.drain_timeout``, the worker finishes its batch (``spool.stop_timeout``),
  then exit 0. Every message answered 250 is in the spool, so nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from daemon.config import IMAPMailbox, IMAPSettings, Settings, load_settings
from daemon.db import set_page_cache
from daemon.db.thread import DBThread
from daemon.inbound.smtp import SMTPListener, tls_context
from daemon.metrics import LiveSources, MetricsServer
from daemon.notify.sender import OutboxSender
from daemon.notify.transport import make_transport
from daemon.parse.rules import RuleSet
from daemon.runtime import DataDirLock, Runtime, load_rules, open_runtime, sync_accounts
from daemon.spool import SpoolStore
from daemon.status import write_status_file
from daemon.supervisor import WorkerSupervisor
from daemon.systemd import Notifier
from daemon.visits.scheduler import VisitScheduler

if TYPE_CHECKING:
    from daemon.runner import SpoolRunner

log = logging.getLogger(__name__)

#: A DB thread that has not answered the watchdog's probe for this long is stuck.
DB_STUCK_AFTER = 300.0

#: Settings a reload cannot change (sockets, files and processes opened at start).
RESTART_ONLY: tuple[tuple[str, ...], ...] = (
    ("data_dir",),
    ("database",),
    ("smtp", "enabled"),
    ("smtp", "host"),
    ("smtp", "port"),
    ("spool", "worker"),
    ("spool", "store"),
    ("metrics",),
)


def _get(model: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        model = getattr(model, name)
    return model


def _with(model: BaseModel, path: tuple[str, ...], value: Any) -> Any:
    """A copy of ``model`` with the attribute at ``path`` replaced."""
    head, *rest = path
    inner = value if not rest else _with(getattr(model, head), tuple(rest), value)
    return model.model_copy(update={head: inner})


def keep_restart_only(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``new`` with every RESTART_ONLY value that changed put back to ``old``'s."""
    kept = []
    for path in RESTART_ONLY:
        if _get(old, path) != _get(new, path):
            new = _with(new, path, _get(old, path))
            kept.append(".".join(path))
    return new, kept


class Daemon:
    """The running service; ``settings`` is the config in force (replaced on reload)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = DataDirLock(settings.data_dir)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._servers: list[asyncio.Server] = []
        self._pollers: list[Any] = []
        self._poller_tasks: dict[str, tuple[Any, asyncio.Task[None]]] = {}
        self.runtime: Runtime | None = None
        self.db_thread: DBThread | None = None
        self.runner: SpoolRunner | None = None
        self.supervisor: WorkerSupervisor | None = None
        self.sender: OutboxSender | None = None
        self.scheduler: VisitScheduler | None = None
        self.listeners: list[SMTPListener] = []
        self.notifier = Notifier()
        self.metrics: MetricsServer | None = None
        self.started_at = time.time()
        self.state = "starting"
        self.reloads: collections.Counter[str] = collections.Counter()
        self._reload_hooks: list[Callable[[Settings], None]] = []
        self._service_tasks: list[asyncio.Task[Any]] = []
        self._ready = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    def on_reload(self, callback: Callable[[Settings], None]) -> None:
        """Call ``callback(new_settings)`` after each accepted config reload."""
        self._reload_hooks.append(callback)

    async def start(self) -> None:
        self._lock.acquire()
        runtime = self.runtime = open_runtime(self.settings)
        runtime.db.close()  # from here on, only the DB thread talks to the database
        recovered = runtime.spool.recover()
        self.db_thread = DBThread(runtime.db)
        if self.settings.spool.worker == "process":
            # This process only claims notifications and reads counts; matching (which
            # wants the 4 MiB page cache) happens in the worker.
            await self.db_thread.run(set_page_cache, kib=1024)
        self.sender = OutboxSender(
            db_thread=self.db_thread,
            transport=make_transport(self.settings),
            settings=self.settings,
        )
        self._tasks.append(asyncio.create_task(self.sender.run(), name="outbox"))
        self.scheduler = VisitScheduler(
            settings=self.settings, db_thread=self.db_thread, wake=self.sender.wake
        )
        await self.scheduler.start()
        if self.settings.spool.worker == "process":
            self.supervisor = WorkerSupervisor(self.settings, nice=self.settings.spool.worker_nice)
            runtime.spool.on_new_message(self.supervisor.wake)
            self.supervisor.on_batch_committed(self.sender.wake)
            self._tasks.append(asyncio.create_task(self.supervisor.run(), name="worker"))
        else:
            # Imported here: the pipeline is the worker process's in the default mode.
            from daemon.runner import SpoolRunner

            self.runner = SpoolRunner(
                spool=runtime.spool,
                pipeline=runtime.pipeline,
                db_thread=self.db_thread,
                idle_wait=self.settings.spool_idle_wait,
            )
            self.runner.on_batch_committed(self.sender.wake)
            self._tasks.append(asyncio.create_task(self.runner.run(), name="spool-runner"))
        if self.settings.smtp.enabled:
            listener = SMTPListener(settings=self.settings, spool=runtime.spool)
            self._servers.append(await listener.start())
            self.listeners.append(listener)
        self._start_imap(runtime)
        self._start_metrics()
        self.write_status()
        self.state = "running"
        self._ready.set()  # a SIGHUP that came during start is handled from here on
        log.info("event=daemon_started data_dir=%s recovered=%d", self.settings.data_dir, recovered)

    def _start_imap(self, runtime: Runtime) -> None:
        for mailbox in self.settings.imap.mailboxes:
            self._start_poller(runtime.spool, mailbox, self.settings.imap)

    def _start_poller(self, spool: SpoolStore, mailbox: IMAPMailbox, imap: IMAPSettings) -> None:
        from daemon.inbound.imap import IMAPPoller

        poller = IMAPPoller(
            mailbox=mailbox,
            spool=spool,
            state_dir=self.settings.data_dir / "imap",
            reconnect_min=imap.reconnect_min,
            reconnect_max=imap.reconnect_max,
        )
        task = asyncio.create_task(poller.run(), name=f"imap-{mailbox.name}")
        self._pollers.append(poller)
        self._tasks.append(task)
        self._poller_tasks[mailbox.name] = (poller, task)

    async def _reload_imap(self, old: IMAPSettings, new: IMAPSettings) -> list[str]:
        """Replace the pollers of mailboxes that were added, changed or removed.

        A stopped poller finishes the message in hand and logs out; its successor starts
        from the same state file, so nothing is skipped (a message spooled but not yet
        marked is fetched again and deduplicated).
        """
        if old == new or self.runtime is None:
            return []
        backoff_changed = (old.reconnect_min, old.reconnect_max) != (
            new.reconnect_min,
            new.reconnect_max,
        )
        before = {m.name: m for m in old.mailboxes}
        after = {m.name: m for m in new.mailboxes}
        stop = [n for n in before if backoff_changed or after.get(n) != before[n]]
        stopping = [self._poller_tasks.pop(name) for name in stop if name in self._poller_tasks]
        for poller, _ in stopping:
            poller.stop()
        tasks = [task for _, task in stopping]
        if tasks:
            grace = max(m.timeout for m in old.mailboxes) * 2 + 5
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
        for poller, task in stopping:
            self._pollers.remove(poller)
            self._tasks.remove(task)
        start = [n for n in after if n in stop or n not in before]
        for name in start:
            self._start_poller(self.runtime.spool, after[name], new)
        return sorted(set(stop) | set(start))

    def _start_metrics(self) -> None:
        config = self.settings.metrics
        if not config.enabled:
            return
        self.metrics = MetricsServer(
            LiveSources(
                settings=lambda: self.settings,
                listeners=self.listener_status,
                imap=self.imap_status,
                counters=self.counters,
            )
        )
        if not self.metrics.start(config.host, config.port):
            self.metrics = None

    def listener_status(self) -> list[dict[str, Any]]:
        """Per SMTP listener: address, open connections, counters (metrics, status.json)."""
        return [
            {
                "name": listener.handler.listener,
                "host": listener.settings.smtp.host,
                "port": listener.port,
                "open": len(listener.gate.open),
                "stats": listener.stats.as_json(),
            }
            for listener in self.listeners
        ]

    def imap_status(self) -> list[dict[str, Any]]:
        """Per IMAP mailbox: connection, last poll, last error (metrics, status.json)."""
        return [dataclasses.asdict(poller.status) for poller in self._pollers]

    def counters(self) -> dict[str, Any]:
        """Counters only this process knows: reloads, worker restarts, start time."""
        return {
            "reloads": dict(self.reloads),
            "worker_restarts": self.supervisor.restarts if self.supervisor is not None else 0,
            "started_at": self.started_at,
        }

    def live_status(self) -> dict[str, Any]:
        """What ``eleads status`` shows of the running daemon (daemon/status.py)."""
        return {
            "pid": os.getpid(),
            "state": self.state,
            "updated_at": time.time(),
            "listeners": self.listener_status(),
            "imap": self.imap_status(),
            "metrics": (
                {"host": self.settings.metrics.host, "port": self.metrics.port}
                if self.metrics is not None
                else None
            ),
            **self.counters(),
        }

    def write_status(self) -> None:
        """Refresh ``data_dir/status.json`` for ``eleads status`` (a separate process)."""
        try:
            write_status_file(self.settings.data_dir, self.live_status())
        except Exception as exc:  # noqa: BLE001 - a report must never stop the daemon
            log.warning("event=status_file_failed error=%r", exc)

    def request_stop(self) -> None:
        if not self._stop.is_set():
            # Refuse new work at once; shutdown() then drains what is in flight.
            for listener in self.listeners:
                listener.begin_stop()
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP handler: the reload runs as a task (signal handlers must not block)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._service_tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._service_tasks.remove(task)

    def status_line(self) -> str:
        """One line for systemctl status (STATUS=)."""
        parts = [self.state]
        for listener in self.listeners:
            config = listener.settings.smtp
            stats = listener.stats
            parts.append(
                f"smtp {config.host}:{listener.port} open={len(listener.gate.open)} "
                f"accepted={stats.messages['accepted']}"
            )
        if self._pollers:
            connected = sum(1 for p in self._pollers if p.status.connected)
            parts.append(f"imap {connected}/{len(self._pollers)} connected")
        return "; ".join(parts)

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.notifier.status("starting")
        await self.start()
        self._mark_ready()
        await self._stop.wait()
        await self.shutdown()

    def _mark_ready(self) -> None:
        """Every listener accepts now: READY=1, and the watchdog and status tasks."""
        self.notifier.ready(self.status_line())
        interval = self.notifier.watchdog_usec
        if interval:
            self._service_tasks.append(
                asyncio.create_task(self._watchdog(interval / 2e6), name="watchdog")
            )
        self._service_tasks.append(asyncio.create_task(self._report(), name="status"))

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 while the loop runs this on time and the DB thread is not stuck.

        A probe waits in the DB thread's queue; a long job ahead of it (a big visit-log
        batch) is fine, but a probe unanswered for ``DB_STUCK_AFTER`` seconds stops the
        pings, and systemd restarts the daemon.
        """
        probe: asyncio.Future[None] | None = None
        since = time.monotonic()
        while True:
            if self.db_thread is not None and (probe is None or probe.done()):
                probe = asyncio.ensure_future(self.db_thread.run(_noop))
                since = time.monotonic()
            await asyncio.sleep(interval)
            waited = time.monotonic() - since
            if probe is not None and not probe.done() and waited > DB_STUCK_AFTER:
                log.error("event=watchdog_withheld reason=db thread stuck for %.0fs", waited)
                continue
            self.notifier.watchdog()

    async def _report(self, every: float = 5.0) -> None:
        """STATUS= for systemctl and status.json for `eleads status`, every few seconds."""
        while True:
            self.notifier.status(self.status_line())
            self.write_status()
            await asyncio.sleep(every)

    async def reload(self) -> bool:
        """SIGHUP: apply a valid config.yaml and rules/, or refuse and keep the old."""
        await self._ready.wait()
        async with self._reload_lock:
            if self._stop.is_set():
                return False
            self.notifier.reloading()
            self.state = "reloading"
            try:
                new, rules = await asyncio.to_thread(self._load_new)
                new, kept = keep_restart_only(self.settings, new)
                if self.db_thread is not None:
                    await self.db_thread.run(sync_accounts, new)
            except Exception as exc:  # noqa: BLE001 - any reason refuses the new config
                self.reloads["refused"] += 1
                log.error("event=config_reload_refused reason=%s", _one_line(exc))
                self.state = "running"
                self.notifier.ready(f"running; reload refused: {_one_line(exc)[:200]}")
                return False
            if kept:
                log.warning("event=config_needs_restart keys=%s", ",".join(kept))
            old = self.settings
            try:
                self._apply(new, rules)
                mailboxes = await self._reload_imap(old.imap, new.imap)
                if self.supervisor is not None:
                    await self.supervisor.restart(new, timeout=new.spool.stop_timeout)
            except Exception:
                # Validated, so a bug: say so, and keep serving with what was applied.
                log.exception("event=config_reload_failed")
                self.state = "running"
                self.notifier.ready(self.status_line())
                return False
            self.reloads["applied"] += 1
            log.info(
                "event=config_reloaded accounts=%d rules=%d imap_restarted=%s "
                "kept_until_restart=%s",
                len(new.accounts),
                len(rules.rules),
                ",".join(mailboxes) or "-",
                ",".join(kept) or "-",
            )
            self.state = "running"
            self.notifier.ready(self.status_line())
            return True

    def _load_new(self) -> tuple[Settings, RuleSet]:
        """The new config, rules and TLS files, all checked before anything is applied."""
        settings = load_settings(self.settings.source)
        rules = load_rules(settings)
        tls_context(settings.smtp)
        return settings, rules

    def _apply(self, settings: Settings, rules: RuleSet) -> None:
        """Hand the new settings to everything that reads them per use."""
        self.settings = settings
        for listener in self.listeners:
            listener.reconfigure(settings)
        if self.sender is not None:
            self.sender.reconfigure(settings)
        runtime = self.runtime
        if runtime is not None:
            runtime.reload(settings, rules)
            if self.runner is not None:
                self.runner.pipeline = runtime.pipeline
        if self.scheduler is not None:
            self.scheduler.reconfigure(settings)
        for callback in self._reload_hooks:
            try:
                callback(settings)
            except Exception:
                log.exception("event=reload_hook_failed hook=%r", callback)

    async def shutdown(self, timeout: float | None = None) -> None:
        log.info("event=daemon_stopping")
        self.state = "stopping"
        self.notifier.stopping(f"stopping: draining {self._open_connections()} connection(s)")
        self.write_status()
        for poller in self._pollers:
            poller.stop()
        drain = self.settings.smtp.drain_timeout
        await asyncio.gather(*(listener.drain(drain) for listener in self.listeners))
        for server in self._servers:
            server.close()
        timeout = self.settings.spool.stop_timeout if timeout is None else timeout
        if self.runner is not None:
            self.runner.stop()
        if self.supervisor is not None:
            await self.supervisor.stop(timeout)
        if self.scheduler is not None:
            await self.scheduler.shutdown(timeout)
        if self.sender is not None:
            self.sender.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=5)
        for task in list(self._service_tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._service_tasks, return_exceptions=True)
        if self.db_thread is not None:
            self.db_thread.close()
        if self.runtime is not None:
            self.runtime.spool.close()
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        self.state = "stopped"
        self.write_status()
        self._lock.release()
        self.notifier.close()
        log.info("event=daemon_stopped")

    def _open_connections(self) -> int:
        return sum(len(listener.gate.open) for listener in self.listeners)


def _noop() -> None:
    """The watchdog's probe of the DB thread."""


def _one_line(exc: BaseException) -> str:
    problems = getattr(exc, "problems", None)
    text = "; ".join(problems) if problems else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def serve(settings: Settings) -> None:
    asyncio.run(Daemon(settings).serve_forever())
