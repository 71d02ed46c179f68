"""The Prometheus endpoint and `eleads status`, against a real `eleads serve`: metrics
scraped over HTTP name what the issue asks for; status works running and stopped."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .mail import lead_bytes, wait_for
from .service_support import Serve, free_port


def _status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "status", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _status_json(config: Path) -> dict[str, Any]:
    result = _status(config, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_metrics_endpoint_and_status(make_config: Callable[..., Path], tmp_path: Path) -> None:
    port = free_port()
    config = make_config(
        {
            "smtp": {"port": port},
            "metrics": {"enabled": True, "port": 0},  # host: the loopback default
            "catch_all_single_account": False,
            "accounts": [
                {
                    "id": "demo",
                    "inbound_addresses": ["leads@demo.example"],
                    "notifications": {"received": ["sales@demo.example"]},
                }
            ],
        }
    )
    serve = Serve(config, tmp_path / "serve.log")
    try:
        serve.wait_listening(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            for n in (1, 2):
                client.sendmail("forms@x.example", ["leads@demo.example"], lead_bytes(n))
            # A recipient that routes nowhere: 550.
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("forms@x.example", ["nobody@elsewhere.example"], lead_bytes(3))
        serve.wait_log("event=notification_sent", count=2)  # processed, and mailed
        status = _status_json(config)
        assert status["messages"]["total"] == 2
        assert status["daemon"]["running"] is True
        assert status["daemon"]["pid"] == serve.proc.pid
        assert status["spool"]["queue"] == 0
        assert status["outbox"]["queued"] + status["outbox"]["sent"] >= 2
        metrics = status["daemon"]["metrics"]
        assert metrics["host"] == "127.0.0.1"

        url = f"http://127.0.0.1:{metrics['port']}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())

        def delivered() -> bool:
            return 'eleads_notifications{kind="received",status="sent"} 2.0' in scrape()

        wait_for(delivered, timeout=20, what="the outbox to send both notifications")
        text = scrape()
        for line in (
            'eleads_messages_total{listener="smtp",result="received"} 2.0',
            'eleads_messages_total{listener="smtp",result="accepted"} 2.0',
            'eleads_messages_total{listener="smtp",result="refused_recipient"} 1.0',
            'eleads_smtp_open_connections{listener="smtp"} 0.0',
            'eleads_spool_messages{area="queue"} 0.0',
            "eleads_spool_oldest_age_seconds 0.0",
            "eleads_outbox_queued 0.0",
            "eleads_outbox_failed 0.0",
            "eleads_database_up 1.0",
            'eleads_config_reloads_total{result="refused"} 0.0',
        ):
            assert line in text, line
        for name in (
            'eleads_smtp_connections_total{listener="smtp",result="accepted"} ',
            'eleads_eleads{account="demo",rule="labels",state="converted"} ',
            "eleads_processed_messages{",
            "# TYPE eleads_unconverted_backlog gauge",
            "# TYPE eleads_imap_connected gauge",
            "# TYPE eleads_imap_last_poll_timestamp_seconds gauge",
            "eleads_visit_lines_read ",
            "eleads_return_lead_alerts ",
            "eleads_worker_restarts_total 0.0",
        ):
            assert name in text, name
        created = [
            line
            for line in text.splitlines()
            if line.startswith('eleads_processed_messages{kind="lead",listener="smtp"')
        ]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in created) == 2.0

        human = _status(config)
        assert human.returncode == 0
        assert human.stdout.startswith("daemon:      running")
        assert "outbox:" in human.stdout and "spool:" in human.stdout
        assert serve.stop() == 0
    finally:
        serve.kill()

    stopped = _status_json(config)
    assert stopped["daemon"] == {**stopped["daemon"], "running": False, "state": "stopped"}
    assert stopped["messages"]["total"] == 2
    assert _status(config).stdout.startswith("daemon:      stopped")
    assert "Traceback" not in serve.log_text()
