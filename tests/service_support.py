"""Helpers for the service tests: `eleads serve` as a real child process, a fake systemd
notify socket, and SMTP conversations that look at reply codes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .mail import wait_for


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET.

    Bound to an abstract name (``@...`` in the environment), so long temp paths do not
    matter and the abstract-name form of the protocol is exercised.
    """

    def __init__(self) -> None:
        self.name = f"@eleads-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.sock.settimeout(0.2)
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        with self._lock:
            return [m for _, m in self.messages if key in m and (value is None or m[key] == value)]

    def wait(
        self, key: str, value: str | None = None, *, count: int = 1, timeout: float = 20
    ) -> None:
        wait_for(
            lambda: len(self.with_key(key, value)) >= count,
            timeout=timeout,
            what=f"{count}x {key}={value or '*'} on the notify socket",
        )

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        self._thread.join(2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Serve:
    """`eleads serve` as a child process; its stderr goes to a log file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))
        }
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            env=full_env,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, *, count: int = 1, timeout: float = 20) -> None:
        def seen() -> bool:
            assert self.alive() or needle in self.log_text(), self.log_text()[-3000:]
            return self.log_text().count(needle) >= count

        wait_for(seen, timeout=timeout, what=f"{needle!r} in the daemon log")

    def wait_listening(self, port: int, timeout: float = 30) -> None:
        def up() -> bool:
            assert self.alive(), self.log_text()[-3000:]
            return accepts(port)

        wait_for(up, timeout=timeout, what="eleads serve to listen")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)


def write_config(path: Path, data: dict[str, Any]) -> None:
    """Replace the file atomically, as an editor or config management would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)


class SMTPLine:
    """A raw SMTP conversation: send a line, read the reply code (multi-line aware)."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return 0, "connection closed"
            lines.append(line.decode(errors="replace").rstrip())
            if len(line) < 4 or line[3:4] != b"-":
                break
        return int(lines[-1][:3]), "\n".join(lines)

    def cmd(self, line: str) -> tuple[int, str]:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def data(self, raw: bytes) -> tuple[int, str]:
        code, text = self.cmd("DATA")
        if code != 354:
            return code, text
        body = raw.replace(b"\r\n.", b"\r\n..")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.sock.sendall(body + b".\r\n")
        return self.reply()

    def send(self, mail_from: str, rcpt: str, raw: bytes) -> tuple[int, str]:
        """MAIL, RCPT, DATA; the first reply that is not 2xx/3xx, else DATA's."""
        for line in (f"MAIL FROM:<{mail_from}>", f"RCPT TO:<{rcpt}>"):
            code, text = self.cmd(line)
            if code >= 400:
                return code, text
        return self.data(raw)

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    wait_for(predicate, timeout=timeout, what=what)
