"""The spool worker process: drains the spool through the pipeline, beside the listeners.

Python runs one thread at a time per process, so parsing in the listener process would
slow every SMTP session down. ``eleads serve`` therefore starts this module as a child
process (``python -m daemon.worker``) at a lower CPU priority: under a burst the
listeners keep accepting at full speed and the worker catches up from the durable spool.

The parent writes one byte to the worker's stdin whenever new messages are durable (a
wake-up); end of file on stdin means the parent is gone (or stopping), and the worker
finishes the batch it holds and exits. SIGTERM does the same; SIGHUP is ignored (on a
config reload the parent replaces the worker, which then reads the new config.yaml). In
the other direction the worker writes one byte to its stdout after each committed batch,
so the parent can wake its outbox sender at once instead of polling.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

from daemon.config import load_settings
from daemon.drivers import skip_postgresql_driver
from daemon.errors import EleadsError
from daemon.logs import setup_logging

if TYPE_CHECKING:
    from daemon.runtime import Runtime

log = logging.getLogger("daemon.worker")

#: Messages per transaction, at most: under a backlog, fewer commits (each an fsync).
BATCH = 64


class _Stop:
    requested = False


def _wait_for_wakeup(timeout: float) -> bool:
    """Block until the parent writes or the timeout passes; False once stdin hit EOF."""
    ready, _, _ = select.select([sys.stdin.fileno()], [], [], timeout)
    if ready:
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:
            return False
    return True


def _tell_parent() -> None:
    """One byte on stdout: "a batch was committed" (the parent may have mail to send)."""
    with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
        os.write(sys.stdout.fileno(), b"c")


def run(config: str | None, *, nice: int) -> int:
    settings = load_settings(config)
    setup_logging(settings.logging.level)
    # The database layer is imported only now, after the config said which one it is.
    skip_postgresql_driver(settings.database_url)
    from daemon.runtime import open_runtime

    if nice:
        os.nice(nice)
    stop = _Stop()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.requested = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent; it stops us
    # A reload is the parent's: it replaces this process after its batch (supervisor.py).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    runtime = open_runtime(settings)
    recovered = runtime.spool.recover_claims()
    log.info("event=worker_started pid=%d nice=%d recovered=%d", os.getpid(), nice, recovered)
    try:
        with runtime.spool.worker_lock():
            _loop(runtime, stop)
    finally:
        runtime.close()
        log.info("event=worker_stopped pid=%d", os.getpid())
    return 0


def _loop(runtime: Runtime, stop: _Stop) -> None:
    from daemon.runner import outage_wait, process_or_defer_batch

    failures = 0
    try:
        while not stop.requested:
            try:
                entries = runtime.spool.claim_due(BATCH)
            except Exception as exc:  # noqa: BLE001 - the database spool's server went away
                # Nothing is claimed; wait (woken or not) and ask again: the next statement
                # reconnects (daemon.db), and the worker stays instead of dying each time.
                failures += 1
                log.error("event=spool_claim_failed attempts=%d error=%r", failures, exc)
                if not _wait_for_wakeup(outage_wait(failures)):
                    break
                continue
            failures = 0
            if entries:
                try:
                    process_or_defer_batch(runtime.pipeline, runtime.spool, entries)
                except Exception:
                    log.exception("event=worker_batch_error count=%d", len(entries))
                _tell_parent()
                # Between batches, notice a parent that stopped: leave the rest queued.
                if not _wait_for_wakeup(0):
                    break
                continue
            try:
                due = runtime.spool.next_due_in()
            except Exception as exc:  # noqa: BLE001 - as above: look again after the wait
                log.warning("event=spool_next_due_failed error=%r", exc)
                due = None
            idle = runtime.settings.spool_idle_wait
            timeout = idle if due is None else min(idle, max(due, 0.05))
            if not _wait_for_wakeup(timeout):
                break
    except OSError as exc:
        log.error("event=worker_io_error error=%r", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.worker")
    parser.add_argument("--config", default=None)
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        return run(args.config, nice=args.nice)
    except EleadsError as exc:
        print(f"eleads worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
