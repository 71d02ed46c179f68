"""``eleads serve``: wires the parts on one event loop and owns its lifetime.

Start order: data-dir lock, database (migrated), spool recovery (claimed-but-unfinished
messages go back to the queue), the spool runner, then the listeners (SMTP, IMAP). Stop
order is the reverse, and the worker finishes the batch it holds before it exits. The
spool worker is a child process by default (daemon/worker.py, supervised by
daemon/supervisor.py), or a thread of this process with ``spool.worker: thread``.
SIGTERM/SIGINT stop the daemon; exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from daemon.config import Settings
from daemon.db.thread import DBThread
from daemon.inbound.smtp import start_smtp_server
from daemon.notify.sender import OutboxSender
from daemon.notify.transport import make_transport
from daemon.runner import SpoolRunner
from daemon.runtime import DataDirLock, Runtime, open_runtime
from daemon.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = DataDirLock(settings.data_dir)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._servers: list[asyncio.Server] = []
        self._pollers: list[Any] = []
        self.runtime: Runtime | None = None
        self.db_thread: DBThread | None = None
        self.runner: SpoolRunner | None = None
        self.supervisor: WorkerSupervisor | None = None
        self.sender: OutboxSender | None = None

    async def start(self) -> None:
        self._lock.acquire()
        runtime = self.runtime = open_runtime(self.settings)
        runtime.db.close()  # from here on, only the DB thread talks to the database
        recovered = runtime.spool.recover()
        self.db_thread = DBThread(runtime.db)
        self.sender = OutboxSender(
            db_thread=self.db_thread,
            transport=make_transport(self.settings),
            settings=self.settings,
        )
        self._tasks.append(asyncio.create_task(self.sender.run(), name="outbox"))
        if self.settings.spool.worker == "process":
            self.supervisor = WorkerSupervisor(self.settings, nice=self.settings.spool.worker_nice)
            runtime.spool.on_new_message(self.supervisor.wake)
            self.supervisor.on_batch_committed(self.sender.wake)
            self._tasks.append(asyncio.create_task(self.supervisor.run(), name="worker"))
        else:
            self.runner = SpoolRunner(
                spool=runtime.spool, pipeline=runtime.pipeline, db_thread=self.db_thread
            )
            self.runner.on_batch_committed(self.sender.wake)
            self._tasks.append(asyncio.create_task(self.runner.run(), name="spool-runner"))
        if self.settings.smtp.enabled:
            self._servers.append(
                await start_smtp_server(settings=self.settings, spool=runtime.spool)
            )
        self._start_imap(runtime)
        log.info("event=daemon_started data_dir=%s recovered=%d", self.settings.data_dir, recovered)

    def _start_imap(self, runtime: Runtime) -> None:
        if not self.settings.imap.mailboxes:
            return
        from daemon.inbound.imap import IMAPPoller

        for mailbox in self.settings.imap.mailboxes:
            poller = IMAPPoller(
                mailbox=mailbox,
                spool=runtime.spool,
                state_dir=self.settings.data_dir / "imap",
                reconnect_min=self.settings.imap.reconnect_min,
                reconnect_max=self.settings.imap.reconnect_max,
            )
            self._pollers.append(poller)
            self._tasks.append(asyncio.create_task(poller.run(), name=f"imap-{mailbox.name}"))

    def request_stop(self) -> None:
        self._stop.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self, timeout: float = 30.0) -> None:
        log.info("event=daemon_stopping")
        for server in self._servers:
            server.close()
        for poller in self._pollers:
            poller.stop()
        if self.runner is not None:
            self.runner.stop()
        if self.supervisor is not None:
            await self.supervisor.stop(timeout)
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
        if self.db_thread is not None:
            self.db_thread.close()
        if self.runtime is not None:
            self.runtime.spool.close()
        self._lock.release()
        log.info("event=daemon_stopped")


def serve(settings: Settings) -> None:
    asyncio.run(Daemon(settings).serve_forever())
