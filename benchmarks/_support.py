"""What every benchmark here shares: the machine line, free ports, waiting for a server."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def machine() -> str:
    """One line naming the machine, printed with every set of figures."""
    model = "unknown"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(
            (x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), model
        )
    except OSError:
        pass
    return (
        f"cpu: {model}; cores: {os.cpu_count()}; python {platform.python_version()} "
        f"({platform.python_implementation()}); {platform.system()} {platform.release()}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            if not line.startswith(code):
                raise RuntimeError(f"unexpected reply: {line!r}")
            return


async def _sender(
    port: int,
    jobs: asyncio.Queue[int],
    make: Callable[[int], bytes],
    accepted: dict[int, tuple[float, float]],
) -> None:
    """One persistent SMTP connection sending jobs until the queue is empty."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _expect(reader, b"220")
    writer.write(b"EHLO bench.example\r\n")
    await _expect(reader, b"250")
    while True:
        try:
            n = jobs.get_nowait()
        except asyncio.QueueEmpty:
            break
        data = make(n).replace(b"\r\n.", b"\r\n..")
        start = time.perf_counter()
        writer.write(b"MAIL FROM:<forms@bench.example>\r\n")
        await _expect(reader, b"250")
        writer.write(b"RCPT TO:<leads@demo.example>\r\n")
        await _expect(reader, b"250")
        writer.write(b"DATA\r\n")
        await _expect(reader, b"354")
        writer.write(data + b"\r\n.\r\n")
        await _expect(reader, b"250")
        accepted[n] = (time.time(), time.perf_counter() - start)
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


async def smtp_load(
    port: int | Sequence[int], count: int, connections: int, make: Callable[[int], bytes]
) -> tuple[float, dict[int, tuple[float, float]]]:
    """Send messages 0..count-1 (``make(n)`` builds one) over persistent connections
    (spread round robin over the ports when given several: one per instance).

    Returns the elapsed seconds and, per accepted n, (wall time of its 250, latency)."""
    ports = [port] if isinstance(port, int) else list(port)
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        jobs.put_nowait(n)
    accepted: dict[int, tuple[float, float]] = {}
    start = time.perf_counter()
    await asyncio.gather(
        *(_sender(ports[i % len(ports)], jobs, make, accepted) for i in range(connections))
    )
    return time.perf_counter() - start, accepted


#: A null SMTP server (``python -c NULL_SMTP_SERVER PORT``): answers 250 to everything.
NULL_SMTP_SERVER = """
import asyncio, sys
from aiosmtpd.smtp import SMTP
class Null:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: SMTP(Null(), loop=loop, enable_SMTPUTF8=True,
                             decode_data=False), "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
"""


def wait_stored(db_path: Path, expected: int, timeout: float) -> tuple[int, int]:
    """Poll the daemon's SQLite database until ``expected`` inbound messages are stored
    (or the timeout passes); returns (rows, distinct Message-IDs) as last seen."""
    deadline = time.monotonic() + timeout
    count = distinct = 0
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db_path, timeout=5) as db:
                count, distinct = db.execute(
                    "select count(*), count(distinct message_id) from inbound_message"
                ).fetchone()
        except sqlite3.Error:
            pass
        if count >= expected:
            break
        time.sleep(0.05)
    return count, distinct
