"""Kill -9 the daemon in the middle of a load, restart it: nothing lost, nothing twice."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from daemon.config import load_settings
from daemon.db import open_database
from daemon.db.models import InboundMessage
from daemon.runtime import make_spool

from .conftest import free_port
from .mail import lead_bytes, wait_for


def start_serve(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )

    def listening() -> bool:
        assert proc.poll() is None, log.read_text()[-2000:]
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout=30, what="eleads serve to listen")
    return proc


def test_sigkill_mid_run_then_restart_loses_nothing(make_config: Any, tmp_path: Path) -> None:
    port = free_port()
    config = make_config({"smtp": {"port": port}, "spool": {"worker": "process"}})
    log = tmp_path / "serve.log"
    proc = start_serve(config, port, log)
    acked: dict[str, str] = {}  # message-id -> spool id, for every 250 we got
    lock = threading.Lock()
    total, workers = 240, 6
    counter = iter(range(total))

    def sender() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    client.sendmail("forms@example.org", ["leads@demo.example"], lead_bytes(n))
                    reply = client.noop()  # connection still fine after DATA
                    del reply
            except (OSError, smtplib.SMTPException):
                continue  # no 250: the sender would retry; not our responsibility yet
            with lock:
                acked[f"form-{n:06d}@acme-roofing.example"] = str(n)

    threads = [threading.Thread(target=sender) for _ in range(workers)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acked) >= total // 2, timeout=60, what="half the load accepted")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for thread in threads:
        thread.join(60)
    killed_at = len(acked)
    assert 0 < killed_at < total, "the kill should land mid-run"

    proc = start_serve(config, port, log)
    try:
        settings = load_settings(config)
        db = open_database(settings.database_url)
        spool = make_spool(settings)  # the files or the database, as the daemon uses

        def drained() -> bool:
            counts = spool.counts()
            return counts["queue"] + counts["active"] == 0

        wait_for(drained, timeout=60, what="spool drained after restart")
        stored = [r.message_id for r in InboundMessage.select(InboundMessage.message_id)]
        failed = spool.counts()["failed"]
        spool.close()
        db.close()
        assert len(stored) == len(set(stored)), "a message was processed twice"
        missing = set(acked) - set(stored)
        assert not missing, f"accepted with 250 but lost: {sorted(missing)[:5]}"
        assert failed == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "Traceback" not in log.read_text()
    time.sleep(0)
