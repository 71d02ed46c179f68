"""SIGHUP reloads config.yaml without dropping connections (a broken one is refused);
SIGTERM under load answers 421 to new work, finishes what is in flight, exits 0, and
loses nothing that got a 250. A real `eleads serve` child process, real SMTP clients."""

from __future__ import annotations

import copy
import logging
import shutil
import signal
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.app import keep_restart_only
from daemon.config import load_settings
from daemon.db import open_database
from daemon.db.models import ELead, InboundMessage, database_proxy

from .dovecot import DovecotServer, dovecot, make_message
from .mail import lead_bytes, wait_for
from .service_support import NotifySocket, Serve, SMTPLine, free_port, write_config

__all__ = ["dovecot"]  # the fixture, re-exported for pytest

#: Two accounts, so only configured addresses route (no single-account catch-all).
TWO_ACCOUNTS = [
    {"id": "demo", "inbound_addresses": ["leads@demo.example"]},
    {"id": "roof", "inbound_addresses": ["leads@roof.example"]},
]


@pytest.fixture
def db_at() -> Iterator[Callable[[Path], None]]:
    """Open the database of a config file in this process (read side) on demand."""
    opened: list[Any] = []

    def _open(config: Path) -> None:
        if not opened:
            opened.append(open_database(load_settings(config).database_url))
        database_proxy.connect(reuse_if_open=True)

    yield _open
    for db in opened:
        db.close()


def test_sighup_reload_routes_new_address_and_refuses_broken_config(
    make_config: Callable[..., Path], tmp_path: Path, db_at: Callable[[Path], None]
) -> None:
    port = free_port()
    config = make_config(
        {
            "smtp": {"port": port, "drain_timeout": 8},
            "spool": {"worker": "process"},
            "accounts": TWO_ACCOUNTS,
        }
    )
    data = yaml.safe_load(config.read_text())
    notify = NotifySocket()
    serve = Serve(config, tmp_path / "serve.log", env={"NOTIFY_SOCKET": notify.name})
    try:
        notify.wait("READY", "1", timeout=30)
        before = SMTPLine(port)  # opened before the reload; must keep working
        assert before.cmd("EHLO test.example")[0] == 250
        code, _ = before.send("forms@x.example", "leads@new.example", lead_bytes(1))
        assert code == 550, "the new address must not route before the reload"
        assert before.cmd("RSET")[0] == 250

        changed = copy.deepcopy(data)
        changed["accounts"].append({"id": "newco", "inbound_addresses": ["leads@new.example"]})
        changed["smtp"]["port"] = free_port()  # cannot change without a restart
        write_config(config, changed)
        serve.signal(signal.SIGHUP)
        serve.wait_log("event=config_reloaded")
        notify.wait("RELOADING", "1")
        notify.wait("READY", "1", count=2)
        assert "event=config_needs_restart keys=smtp.port" in serve.log_text()

        code, text = before.send("forms@x.example", "leads@new.example", lead_bytes(2))
        assert code == 250, text
        fresh = SMTPLine(port)  # still the old port
        assert fresh.cmd("EHLO test.example")[0] == 250
        assert fresh.send("forms@x.example", "leads@new.example", lead_bytes(3))[0] == 250
        fresh.close()

        # The worker process was replaced and reads the new file: it knows "newco".
        db_at(config)

        def routed() -> bool:
            wanted = {"form-000002@acme-roofing.example", "form-000003@acme-roofing.example"}
            rows = [e for e in ELead.select() if (e.message_id or "").strip("<>") in wanted]
            return sorted(str(e.account_id) for e in rows) == ["newco", "newco"]

        wait_for(routed, timeout=20, what="both leads stored under the new account")

        # A broken config is refused; the old one stays in force; the daemon lives on.
        config.write_text("accounts: [{id: 'bad id!'}]\nsmtp: {port: nope}\n")
        serve.signal(signal.SIGHUP)
        serve.wait_log("event=config_reload_refused")
        assert "smtp.port" in serve.log_text().split("event=config_reload_refused", 1)[1]
        notify.wait("READY", "1", count=3)
        assert serve.alive()
        assert before.send("forms@x.example", "leads@new.example", lead_bytes(4))[0] == 250
        assert before.cmd("QUIT")[0] == 221
        before.close()
        assert serve.stop() == 0
    finally:
        serve.kill()
        notify.close()
    assert "Traceback" not in serve.log_text()


def test_sigterm_under_load_loses_nothing_and_says_421(
    make_config: Callable[..., Path], tmp_path: Path, db_at: Callable[[Path], None]
) -> None:
    port = free_port()
    config = make_config(
        {"smtp": {"port": port, "drain_timeout": 8}, "spool": {"worker": "process"}}
    )
    serve = Serve(config, tmp_path / "serve.log")
    serve.wait_listening(port)
    acked: set[str] = set()
    lock = threading.Lock()
    stop_sending = threading.Event()
    counter = iter(range(300))  # enough to keep 8 sessions busy through the stop

    def sender() -> None:
        while not stop_sending.is_set() and serve.alive():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    for _ in range(3):  # a few messages per connection
                        with lock:
                            n = next(counter, None)
                        if n is None:
                            return
                        client.sendmail("forms@x.example", ["leads@demo.example"], lead_bytes(n))
                        with lock:
                            acked.add(f"form-{n:06d}@acme-roofing.example")
            except (OSError, smtplib.SMTPException):
                # No 250 (421 once the stop began): a real sender retries later.
                time.sleep(0.05)

    # One transaction held open across the stop: it must still be allowed to finish.
    held = SMTPLine(port)
    assert held.cmd("EHLO held.example")[0] == 250
    assert held.cmd("MAIL FROM:<forms@x.example>")[0] == 250
    assert held.cmd("RCPT TO:<leads@demo.example>")[0] == 250

    threads = [threading.Thread(target=sender) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acked) >= 40, timeout=30, what="load under way")
    serve.signal(signal.SIGTERM)

    # After the stop began: a new connection is greeted 421.
    def greeted_421() -> bool:
        probe = SMTPLine(port)
        code = probe.greeting[0]
        probe.close()
        return code == 421

    wait_for(greeted_421, timeout=10, what="421 to a new connection after SIGTERM")
    # The transaction in flight finishes with 250; the next one on it gets 421.
    code, text = held.data(lead_bytes(99_999))
    assert code == 250, text
    acked.add("form-099999@acme-roofing.example")
    assert held.cmd("MAIL FROM:<forms@x.example>")[0] in (421, 0)
    held.close()
    assert serve.proc.wait(30) == 0
    stop_sending.set()
    for thread in threads:
        thread.join(30)
    text = serve.log_text()
    assert "Traceback" not in text
    assert "event=smtp_drain_timeout" not in text

    restarted = Serve(config, tmp_path / "serve.log")
    try:
        restarted.wait_listening(port)
        spool = tmp_path / "var" / "spool"

        def drained() -> bool:
            return not any(any((spool / d).glob("*.msg")) for d in ("queue", "active"))

        wait_for(drained, timeout=60, what="spool drained after restart")
        db_at(config)
        wait_for(
            lambda: InboundMessage.select().count() >= len(acked), timeout=30, what="all stored"
        )
        stored = [
            r.message_id.strip("<>") for r in InboundMessage.select(InboundMessage.message_id)
        ]
        assert len(stored) == len(set(stored)), "a message was stored twice"
        missing = acked - set(stored)
        assert not missing, f"answered 250 but lost: {sorted(missing)[:5]}"
        assert restarted.stop() == 0
    finally:
        restarted.kill()


def test_keep_restart_only_puts_back_what_needs_a_restart(
    make_config: Callable[..., Path],
) -> None:
    old = load_settings(make_config())
    new = old.model_copy(
        update={
            "smtp": old.smtp.model_copy(update={"port": 2626, "max_connections": 7}),
            "metrics": old.metrics.model_copy(update={"enabled": True}),
            "catch_all_single_account": False,
        }
    )
    kept, keys = keep_restart_only(old, new)
    assert keys == ["smtp.port", "metrics"]
    assert kept.smtp.port == old.smtp.port and kept.metrics == old.metrics
    assert kept.smtp.max_connections == 7 and kept.catch_all_single_account is False


def test_reload_in_thread_mode_rebuilds_the_pipeline(
    make_config: Callable[..., Path],
    run_daemon: Callable[[Path], Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """spool.worker: thread has no worker process to replace: the runner's pipeline is."""
    config = make_config({"accounts": TWO_ACCOUNTS})
    daemon = run_daemon(config)
    data = yaml.safe_load(config.read_text())

    reload = daemon.reload

    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("forms@x.example", ["leads@new.example"], lead_bytes(1))
        data["accounts"].append({"id": "newco", "inbound_addresses": ["leads@new.example"]})
        write_config(config, data)
        assert reload()
        client.sendmail("forms@x.example", ["leads@new.example"], lead_bytes(2))
    assert daemon.daemon.settings.account("newco") is not None
    database_proxy.connect(reuse_if_open=True)
    wait_for(
        lambda: ELead.select().where(ELead.account == "newco").count() == 1,
        timeout=20,
        what="the lead stored under the new account",
    )
    config.write_text("accounts: []\n")
    assert not reload()
    assert daemon.daemon.settings.account("newco") is not None
    # A broken rules/ file refuses the reload too (config.yaml itself is fine).
    rules = tmp_path / "rules"
    shutil.copytree(data["rules_dir"], rules)
    (rules / "zz-broken.yaml").write_text("name: broken\nmatch: {}\n")
    write_config(config, {**data, "rules_dir": str(rules)})
    with caplog.at_level(logging.ERROR, logger="daemon.app"):
        assert not reload()
    assert "event=config_reload_refused" in caplog.text and "zz-broken.yaml" in caplog.text
    assert daemon.daemon.settings.rules_dir != rules
    # So does a TLS certificate that cannot be loaded.
    missing = {"cert_file": str(tmp_path / "no.pem"), "key_file": str(tmp_path / "no.key")}
    write_config(config, {**data, "smtp": {**data["smtp"], "tls": missing}})
    assert not reload()
    assert daemon.daemon.settings.smtp.tls is None
    assert daemon.daemon.reloads == {"applied": 1, "refused": 3}


def test_reload_starts_and_stops_imap_pollers(
    make_config: Callable[..., Path],
    run_daemon: Callable[[Path], Any],
    dovecot: DovecotServer,
) -> None:
    """A mailbox added by a reload is polled at once; one removed is let go."""
    config = make_config()
    daemon = run_daemon(config)
    data = yaml.safe_load(config.read_text())
    user = "reload-imap"
    dovecot.append(user, [make_message("Reloaded mailbox lead")])
    assert not daemon.daemon._pollers

    reload = daemon.reload

    mailbox = {
        "name": "leads",
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "none",
        "username": user,
        "password": dovecot.password,
        "timeout": 5.0,
        "idle": False,
        "poll_interval": 0.3,
    }
    write_config(config, {**data, "imap": {"mailboxes": [mailbox]}})
    assert reload()
    database_proxy.connect(reuse_if_open=True)
    wait_for(
        lambda: (
            InboundMessage.select()
            .where(InboundMessage.message_id == "reloaded-mailbox-lead@test.example")
            .exists()
        ),
        timeout=20,
        what="the mailbox added by the reload to be polled",
    )
    (poller,) = daemon.daemon._pollers
    assert poller.status.connected
    write_config(config, data)
    assert reload()
    assert not daemon.daemon._pollers
    assert not poller.status.connected
