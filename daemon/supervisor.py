"""Keeps the spool worker process (daemon/worker.py) running and awake.

The worker is restarted with backoff when it dies; on stop, its stdin is closed so it
finishes its batch and exits, and it is killed only after the timeout. A config reload
(SIGHUP) replaces it the same way (:meth:`WorkerSupervisor.restart`): the old worker
finishes its batch, then a new one starts at once and reads the new config.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable

from daemon.config import ENV_DATA_DIR, Settings
from daemon.systemd import CHILD_UNSET

log = logging.getLogger(__name__)


#: A worker that ran this long before dying restarts after the shortest backoff again.
HEALTHY_AFTER = 300.0


class WorkerSupervisor:
    def __init__(self, settings: Settings, *, nice: int = 5) -> None:
        self.settings = settings
        self.nice = nice
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._restart_requested = False
        self._committed: list[Callable[[], None]] = []
        self.restarts = 0

    def on_batch_committed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop whenever the worker has committed a batch."""
        self._committed.append(callback)

    async def _read_signals(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.read(4096):
            for callback in self._committed:
                callback()

    async def _spawn(self) -> asyncio.subprocess.Process:
        args = [sys.executable, "-m", "daemon.worker", "--nice", str(self.nice)]
        if self.settings.source is not None:
            args += ["--config", str(self.settings.source)]
        # Not the service's main process: systemd must not hear from it.
        env = {k: v for k, v in os.environ.items() if k not in CHILD_UNSET}
        env[ENV_DATA_DIR] = str(self.settings.data_dir)
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        log.info("event=worker_spawned pid=%d", proc.pid)
        return proc

    def wake(self) -> None:
        """Tell the worker that messages are waiting (never blocks the loop)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        transport = proc.stdin.transport
        if transport.get_write_buffer_size() == 0:  # a wake-up already pending is enough
            proc.stdin.write(b"!")

    async def run(self) -> None:
        backoff = 1.0
        while not self._stopping:
            self._proc = await self._spawn()
            started = asyncio.get_running_loop().time()
            self.wake()  # whatever is queued already
            signals = asyncio.create_task(self._read_signals(self._proc))
            code = await self._proc.wait()
            await signals
            if asyncio.get_running_loop().time() - started > HEALTHY_AFTER:
                backoff = 1.0  # it ran fine for a while: this death is not a crash loop
            if self._stopping:
                break
            if self._restart_requested:
                self._restart_requested = False
                log.info("event=worker_replaced code=%s reason=reload", code)
                continue
            self.restarts += 1
            log.error("event=worker_died code=%s restart_in=%.0fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)

    async def restart(self, settings: Settings, timeout: float = 30.0) -> None:
        """Replace the worker so it reads ``settings``' file again; returns once the old
        one has exited (it finishes its batch first; killed after ``timeout``)."""
        self.settings = settings
        proc = self._proc
        if self._stopping or proc is None or proc.returncode is not None:
            return
        self._restart_requested = True
        await self._finish(proc, timeout)

    async def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        await self._finish(proc, timeout)

    async def _finish(self, proc: asyncio.subprocess.Process, timeout: float) -> None:
        """Close its stdin (finish the batch, exit); kill it after ``timeout``."""
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=timeout)
        except TimeoutError:
            log.error("event=worker_kill pid=%d reason=stop timeout", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
