"""SMTP resource limits on a real socket: max connections and the per-IP connection rate
answer 421 and close; the size limit answers 552; an idle client is dropped."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .mail import lead_bytes, wait_for
from .service_support import SMTPLine

Start = Callable[[Path], Any]


def test_max_connections_answers_421_and_frees_up(
    make_config: Callable[..., Path], run_daemon: Start
) -> None:
    daemon = run_daemon(make_config({"smtp": {"max_connections": 2}}))
    port = daemon.smtp_port
    first, second = SMTPLine(port), SMTPLine(port)
    assert first.greeting[0] == second.greeting[0] == 220
    third = SMTPLine(port)
    assert third.greeting[0] == 421, third.greeting
    assert third.reply() == (0, "connection closed")
    third.close()
    # The open ones are unaffected, and a slot freed is usable again.
    assert first.cmd("EHLO a.example")[0] == 250
    assert first.send("forms@x.example", "leads@demo.example", lead_bytes(1))[0] == 250
    assert second.cmd("QUIT")[0] == 221
    second.close()
    listener = daemon.daemon.listeners[0]
    wait_for(lambda: len(listener.gate.open) == 1, timeout=5, what="slot freed")
    fourth = SMTPLine(port)
    assert fourth.greeting[0] == 220
    fourth.close()
    first.close()
    assert listener.stats.connections["refused_max_connections"] == 1


def test_per_ip_rate_limit_answers_421(make_config: Callable[..., Path], run_daemon: Start) -> None:
    daemon = run_daemon(make_config({"smtp": {"rate_limit_per_ip": 3, "rate_limit_exempt": []}}))
    port = daemon.smtp_port
    codes = []
    for _ in range(4):
        conn = SMTPLine(port)
        codes.append(conn.greeting[0])
        conn.close()
    assert codes == [220, 220, 220, 421]
    stats = daemon.daemon.listeners[0].stats
    assert stats.connections["refused_rate_limited"] == 1


def test_loopback_is_exempt_from_the_rate_limit_by_default(
    make_config: Callable[..., Path], run_daemon: Start
) -> None:
    """A Postfix in front on the same host must not be throttled."""
    daemon = run_daemon(make_config({"smtp": {"rate_limit_per_ip": 2}}))
    for _ in range(4):
        conn = SMTPLine(daemon.smtp_port)
        assert conn.greeting[0] == 220
        conn.close()


def test_size_limit_and_idle_timeout(make_config: Callable[..., Path], run_daemon: Start) -> None:
    daemon = run_daemon(make_config({"smtp": {"max_message_size": 2048, "timeout": 0.5}}))
    conn = SMTPLine(daemon.smtp_port)
    assert conn.cmd("EHLO a.example")[0] == 250
    big = lead_bytes(1) + (b"x" * 70 + b"\r\n") * 60
    assert conn.send("forms@x.example", "leads@demo.example", big)[0] == 552
    conn.close()
    idle = SMTPLine(daemon.smtp_port)
    started = time.monotonic()
    assert idle.reply() == (0, "connection closed")  # the server hung up on its own
    assert time.monotonic() - started < 5
    idle.close()
