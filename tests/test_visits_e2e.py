"""End to end with the daemon running: a lead over SMTP carrying a visitor id, then log
lines appended; the scheduler's next tick queues the return-lead alert, the outbox
sender delivers it, and a failing run does not stop the next one."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.db.models import Notification, ReturnAlert, database_proxy
from daemon.visits import job

from .mail import wait_for
from .test_smtp import send
from .test_visits import ACCOUNTS, VISITS, line

TICK = 0.3


def _config(make_config: Any, worker: str) -> Path:
    path: Path = make_config(
        {
            "accounts": ACCOUNTS,
            "spool": {"worker": worker},
            "outbound": {"poll_interval": 0.2},
            "visits": {
                "interval_seconds": TICK,
                "sources": [{"path": "visits/*.log", "format": "combined_cookie"}],
            },
        }
    )
    return path


def _alerts() -> list[Notification]:
    database_proxy.connect(reuse_if_open=True)
    return list(Notification.select().where(Notification.kind == "return_lead"))


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_lead_over_smtp_then_a_visit_alerts_within_a_tick(
    make_config: Any, run_daemon: Any, worker: str
) -> None:
    daemon = run_daemon(_config(make_config, worker))
    visits = daemon.settings.data_dir / "visits"
    visits.mkdir(parents=True, exist_ok=True)
    log = visits / "access.log"
    log.write_text(line("2026-11-23T14:40:00", "/quote/"))  # the enquiry, before the lead
    send(daemon.smtp_port, (VISITS / "lead_visitor.eml").read_bytes())
    wait_for(lambda: ReturnAlert.select().count() == 0 and _has_link(), what="visitor link")
    time.sleep(2 * TICK)
    assert _alerts() == []
    now = datetime.now(UTC).replace(tzinfo=None)
    written = time.monotonic()
    with log.open("a") as fh:
        fh.write(line(now.isoformat(timespec="seconds"), "/gutters/", ua="Mozilla/5.0 (iPhone)"))
    wait_for(lambda: len(_alerts()) == 1, timeout=10, what="return-lead alert")
    latency = time.monotonic() - written
    assert latency < 5 * TICK + 2.0, latency  # one tick plus processing, with slack
    (note,) = _alerts()
    assert note.to == ["sales@demo.example"]
    wait_for(lambda: Notification.get_by_id(note.id).status == "sent", timeout=10, what="delivery")
    assert Path(Notification.get_by_id(note.id).path).is_file()
    # The same session goes on: no second alert.
    with log.open("a") as fh:
        fh.write(line(now.isoformat(timespec="seconds"), "/gutters/more/"))
    time.sleep(4 * TICK)
    assert len(_alerts()) == 1


def _has_link() -> bool:
    from daemon.db.models import VisitorLink

    database_proxy.connect(reuse_if_open=True)
    return VisitorLink.select().where(VisitorLink.visitor_id == "v-fix0001").exists()


def test_a_failing_run_is_retried_on_the_next_tick(
    make_config: Any, run_daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = job.commit_batch
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr("daemon.visits.scheduler.commit_batch", flaky)
    daemon = run_daemon(_config(make_config, "thread"))
    send(daemon.smtp_port, (VISITS / "lead_visitor.eml").read_bytes())
    wait_for(_has_link, what="visitor link")
    visits = daemon.settings.data_dir / "visits"
    visits.mkdir(parents=True, exist_ok=True)
    (visits / "access.log").write_text(line("2026-11-24T10:00:00", "/a"))
    wait_for(lambda: len(_alerts()) == 1, timeout=10, what="alert after the retry")
    assert calls["n"] >= 2
    assert daemon.daemon.scheduler is not None and daemon.daemon.scheduler.runs >= 1


def test_a_reload_reschedules_the_visit_log_job(make_config: Any, run_daemon: Any) -> None:
    """visits.interval_seconds and visits.enabled apply on reload, not only at start."""
    from datetime import timedelta

    import yaml

    from .service_support import write_config

    config = _config(make_config, "thread")
    daemon = run_daemon(config)
    data = yaml.safe_load(config.read_text())

    def reload_with(visits: dict[str, Any]) -> Any:
        write_config(config, {**data, "visits": {**data["visits"], **visits}})
        assert daemon.reload()
        jobs = daemon.daemon.scheduler._scheduler
        return jobs.get_job("visits")

    scheduler = daemon.daemon.scheduler
    assert scheduler._scheduler.get_job("visits").trigger.interval == timedelta(seconds=TICK)
    job_now = reload_with({"interval_seconds": 7})
    assert job_now.trigger.interval == timedelta(seconds=7)
    assert reload_with({"interval_seconds": 7, "enabled": False}) is None
    job_now = reload_with({"interval_seconds": 3, "enabled": True})
    assert job_now.trigger.interval == timedelta(seconds=3)
    assert scheduler.settings.visits.interval_seconds == 3
