"""The Prometheus endpoint (``metrics:`` in config.yaml; loopback, off unless enabled).

Parsing, matching and conversion happen in the worker process, so in-process counters
would miss them: :class:`EleadsCollector` reads the database and the spool at scrape
time instead (daemon/status.py), on the HTTP server's own thread with its own connection
(SQLite in WAL mode lets it read beside the writers; nothing here writes). Only what the
listener process itself sees is counted in memory: SMTP connections and messages per
listener, IMAP mailbox state, config reloads, worker restarts.

Gauges from the database are totals of rows as they stand (eLeads per account, state and
rule; messages per listener, kind and outcome; notifications per kind and status), so a
``rate()`` or ``delta()`` of them gives throughput.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.config import Settings
from daemon.db.models import database_proxy
from daemon.status import db_snapshot, spool_status

log = logging.getLogger(__name__)


@dataclass
class LiveSources:
    """Callables that read the listener process's own state (cheap, thread-safe enough:
    they copy small dicts and ints)."""

    settings: Callable[[], Settings]
    listeners: Callable[[], list[dict[str, Any]]] = list
    imap: Callable[[], list[dict[str, Any]]] = list
    counters: Callable[[], dict[str, Any]] = dict
    extra: list[Callable[[], Iterator[Metric]]] = field(default_factory=list)


class EleadsCollector(Collector):
    """Builds every eleads metric at scrape time."""

    def __init__(self, sources: LiveSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        yield from self._listeners()
        yield from self._imap()
        yield from self._process()
        yield from self._spool()
        yield from self._database()
        for extra in self.sources.extra:
            yield from extra()
        took = GaugeMetricFamily(
            "eleads_scrape_duration_seconds", "Time taken to collect these metrics."
        )
        took.add_metric([], time.monotonic() - started)
        yield took

    def _listeners(self) -> Iterator[Metric]:
        conns = CounterMetricFamily(
            "eleads_smtp_connections",
            "SMTP connections since start, by listener and result (accepted or refused_*).",
            labels=["listener", "result"],
        )
        msgs = CounterMetricFamily(
            "eleads_messages",
            "Messages since start by listener and result: received (DATA done), accepted "
            "(250: durably spooled), tempfail (451), refused_recipient (550 at RCPT), "
            "refused_stopping (421).",
            labels=["listener", "result"],
        )
        open_now = GaugeMetricFamily(
            "eleads_smtp_open_connections", "Open SMTP connections.", labels=["listener"]
        )
        for listener in self.sources.listeners():
            name = str(listener["name"])
            open_now.add_metric([name], listener["open"])
            stats = listener["stats"]
            for result, count in sorted(stats["connections"].items()):
                conns.add_metric([name, result], count)
            for result, count in sorted(stats["messages"].items()):
                msgs.add_metric([name, result], count)
        yield from (conns, msgs, open_now)

    def _imap(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "eleads_imap_connected", "1 while the mailbox's IMAP session is up.", labels=["mailbox"]
        )
        last_poll = GaugeMetricFamily(
            "eleads_imap_last_poll_timestamp_seconds",
            "Unix time of the last complete IMAP round.",
            labels=["mailbox"],
        )
        spooled = CounterMetricFamily(
            "eleads_imap_messages",
            "Messages spooled from the mailbox since start.",
            labels=["mailbox"],
        )
        reconnects = CounterMetricFamily(
            "eleads_imap_reconnects", "IMAP sessions lost since start.", labels=["mailbox"]
        )
        for box in self.sources.imap():
            name = str(box["mailbox"])
            connected.add_metric([name], 1 if box.get("connected") else 0)
            if box.get("last_poll_at") is not None:
                last_poll.add_metric([name], box["last_poll_at"])
            spooled.add_metric([name], box.get("spooled", 0))
            reconnects.add_metric([name], box.get("reconnects", 0))
        yield from (connected, last_poll, spooled, reconnects)

    def _process(self) -> Iterator[Metric]:
        counters = self.sources.counters()
        reloads = CounterMetricFamily(
            "eleads_config_reloads", "SIGHUP reloads by result.", labels=["result"]
        )
        for result in ("applied", "refused"):
            reloads.add_metric([result], counters.get("reloads", {}).get(result, 0))
        restarts = CounterMetricFamily(
            "eleads_worker_restarts", "Spool worker processes that died and were restarted."
        )
        restarts.add_metric([], counters.get("worker_restarts", 0))
        started = GaugeMetricFamily("eleads_start_time_seconds", "Unix time the daemon started.")
        started.add_metric([], counters.get("started_at", 0))
        yield from (reloads, restarts, started)

    def _spool(self) -> Iterator[Metric]:
        settings = self.sources.settings()
        try:
            if settings.spool_store == "database":
                with database_proxy.connection_context():
                    snap = spool_status(settings)
            else:
                snap = spool_status(settings)
        except Exception as exc:  # noqa: BLE001 - a scrape reports, it never raises
            # Without the spool's gauges; eleads_database_up says why.
            log.warning("event=metrics_spool_failed error=%r", exc)
            return
        depth = GaugeMetricFamily(
            "eleads_spool_messages",
            "Messages in the spool by area: journal and queue (waiting), active (being "
            "processed), failed (gave up; see `eleads spool failed`).",
            labels=["area"],
        )
        for area in ("journal", "queue", "active", "failed"):
            depth.add_metric([area], snap[area])
        oldest = GaugeMetricFamily(
            "eleads_spool_oldest_age_seconds",
            "Age of the oldest message waiting or being processed (0: none).",
        )
        oldest.add_metric([], snap["oldest_age_seconds"])
        yield from (depth, oldest)

    def _database(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("eleads_database_up", "1 when the database answered this scrape.")
        try:
            with database_proxy.connection_context():
                snap = db_snapshot()
        except Exception as exc:  # noqa: BLE001 - a scrape reports, it never raises
            log.warning("event=metrics_db_failed error=%r", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        eleads = GaugeMetricFamily(
            "eleads_eleads",
            "eLeads by account, state and parsing rule (state failed_parse: the rule or "
            "generic parser did not get a lead out of it).",
            labels=["account", "state", "rule"],
        )
        backlog = GaugeMetricFamily(
            "eleads_unconverted_backlog",
            "Unconverted eLeads waiting for a human decision.",
            labels=["account"],
        )
        per_account: dict[str, int] = {}
        for row in snap["eleads"]:
            account = row["account"] or ""
            eleads.add_metric([account, row["state"], row["rule"] or ""], row["count"])
            if row["state"] == "unconverted":
                per_account[account] = per_account.get(account, 0) + row["count"]
        for account, count in sorted(per_account.items()):
            backlog.add_metric([account], count)
        outcomes = GaugeMetricFamily(
            "eleads_processed_messages",
            "Processed messages by listener, kind and outcome (created, matched, fuzzy, "
            "duplicate, reply, dropped, failed): the parse and match results.",
            labels=["listener", "kind", "outcome"],
        )
        for row in snap["messages"]:
            outcomes.add_metric([row["listener"], row["kind"], row["outcome"]], row["count"])
        notes = GaugeMetricFamily(
            "eleads_notifications",
            "Notifications by kind and status: queued (outbox depth), sent, failed.",
            labels=["kind", "status"],
        )
        queued = failed = 0
        for row in snap["notifications"]:
            notes.add_metric([row["kind"], row["status"]], row["count"])
            queued += row["count"] if row["status"] == "queued" else 0
            failed += row["count"] if row["status"] == "failed" else 0
        depth = GaugeMetricFamily("eleads_outbox_queued", "Notifications waiting to be sent.")
        depth.add_metric([], queued)
        fails = GaugeMetricFamily("eleads_outbox_failed", "Notifications that were given up.")
        fails.add_metric([], failed)
        yield from (eleads, backlog, outcomes, notes, depth, fails)
        if snap["visit_lines_read"] is not None:
            lines = GaugeMetricFamily(
                "eleads_visit_lines_read", "Visit-log lines read, over every log file seen."
            )
            lines.add_metric([], snap["visit_lines_read"])
            yield lines
        if snap["return_alerts"] is not None:
            alerts = GaugeMetricFamily(
                "eleads_return_lead_alerts", "Return-lead alerts recorded (one per session)."
            )
            alerts.add_metric([], snap["return_alerts"])
            yield alerts


class MetricsServer:
    """``GET /metrics`` on a thread of its own (prometheus_client's WSGI server)."""

    def __init__(self, sources: LiveSources) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EleadsCollector(sources))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> bool:
        """Listen; False (logged) when the port cannot be had: leads matter more."""
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error("event=metrics_unavailable host=%s port=%d error=%s", host, port, exc)
            return False
        log.info("event=metrics_listening host=%s port=%d", host, self.port)
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("event=metrics_exposed host=%s reason=no authentication on /metrics", host)
        return True

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
