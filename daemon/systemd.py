"""sd_notify: tell systemd (``Type=notify``) that we are ready, reloading, stopping, alive.

A minimal datagram send to ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a
leading ``@``), as sd_notify(3) describes. The PyPI ``sdnotify`` package does the same in
as many lines but is unmaintained since 2017 and untyped; ``systemd-python`` needs
libsystemd headers to build. Every call is a no-op when ``NOTIFY_SOCKET`` is unset (a
terminal, the tests), and a failed send is logged once, never raised: systemd's absence
must not stop the daemon.

The watchdog interval comes from ``$WATCHDOG_USEC`` (set by ``WatchdogSec=``); it applies
only to the process named by ``$WATCHDOG_PID`` when that is set.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"
#: Variables a child process must not inherit (it is not the service's main process).
CHILD_UNSET = (ENV_SOCKET, ENV_WATCHDOG_USEC, ENV_WATCHDOG_PID)


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not used by eleads' units


class Notifier:
    """One socket for the process's lifetime; ``send`` is cheap enough for the loop."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get(ENV_SOCKET, ""))
        self._sock: socket.socket | None = None
        self._warned = False
        self.watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False when nothing was sent."""
        if self.address is None:
            return False
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("event=sd_notify_failed error=%r", exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def reloading(self) -> bool:
        usec = time_monotonic_usec()
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading config")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: dict[str, str] | os._Environ[str]) -> int | None:
    """The watchdog interval for this process, or None when there is none."""
    pid = env.get(ENV_WATCHDOG_PID)
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    usec = env.get(ENV_WATCHDOG_USEC, "")
    return int(usec) if usec.isdigit() and int(usec) > 0 else None


def time_monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
