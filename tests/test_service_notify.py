"""systemd Type=notify: READY=1 only once SMTP accepts, STATUS= lines, WATCHDOG=1 pings,
STOPPING=1 and exit 0 on SIGTERM; a real `eleads serve` and a real notify socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import peewee as pw
import pytest

from daemon import app
from daemon.config import load_settings
from daemon.db.thread import DBThread
from daemon.systemd import Notifier

from .service_support import NotifySocket, Serve, accepts, free_port


def test_ready_status_watchdog_and_stop(make_config: Callable[..., Path], tmp_path: Path) -> None:
    port = free_port()
    config = make_config({"smtp": {"port": port}, "spool": {"worker": "process"}})
    notify = NotifySocket()
    log = tmp_path / "serve.log"
    log.touch()
    st = log.stat()  # stderr "is" the journal: lines carry their syslog priority
    env = {
        "NOTIFY_SOCKET": notify.name,
        "WATCHDOG_USEC": "400000",  # pings every 200 ms
        "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
    }
    serve = Serve(config, log, env=env)
    try:
        notify.wait("READY", "1", timeout=30)
        assert accepts(port), "READY=1 was sent before the SMTP port accepted"
        ready = notify.with_key("READY", "1")[0]
        assert ready["MAINPID"] == str(serve.proc.pid)
        assert "smtp 127.0.0.1:" in ready["STATUS"]
        assert notify.with_key("STATUS", "starting"), "no STATUS before READY"
        notify.wait("WATCHDOG", "1", count=3, timeout=10)
        serve.signal(signal.SIGTERM)
        assert serve.proc.wait(30) == 0
        stopping = notify.with_key("STOPPING", "1")
        assert stopping and stopping[0]["STATUS"].startswith("stopping")
    finally:
        serve.kill()
        notify.close()
    text = serve.log_text()
    assert "event=daemon_stopped" in text
    assert "<6>level=INFO logger=daemon.app event=daemon_started" in text
    assert "Traceback" not in text


def test_notifier_is_a_no_op_without_socket() -> None:
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_usec is None


def test_notifier_path_socket_and_watchdog_pid(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier(environ={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        assert notifier.watchdog_usec == 2_000_000
        assert notifier.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
        notifier.close()
    # The watchdog belongs to another process: not ours to ping.
    other = Notifier(environ={"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_usec is None
    # A socket that went away is logged, never raised.
    gone = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert not gone.send("STATUS=x")


def test_watchdog_pings_stop_while_the_db_thread_is_stuck(
    make_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "DB_STUCK_AFTER", 0.3)
    notify = NotifySocket()
    daemon = app.Daemon(load_settings(make_config()))
    daemon.notifier = Notifier(environ={"NOTIFY_SOCKET": notify.name})
    daemon.db_thread = DBThread(pw.SqliteDatabase(":memory:"))
    release = threading.Event()

    def pings() -> int:
        return len(notify.with_key("WATCHDOG", "1"))

    async def scenario() -> None:
        watchdog = asyncio.create_task(daemon._watchdog(0.05))
        await asyncio.to_thread(notify.wait, "WATCHDOG", "1", count=3, timeout=5)
        assert daemon.db_thread is not None
        stuck = asyncio.ensure_future(daemon.db_thread.run(release.wait, 30))
        await asyncio.sleep(0.6)  # past DB_STUCK_AFTER: no more pings from here
        withheld = pings()
        await asyncio.sleep(0.4)
        assert pings() == withheld, "pinged although the DB thread was stuck"
        release.set()
        await stuck
        await asyncio.to_thread(notify.wait, "WATCHDOG", "1", count=withheld + 2, timeout=5)
        watchdog.cancel()

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        daemon.db_thread.close()
        notify.close()
