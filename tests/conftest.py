"""Shared fixtures: configs in temp dirs, free ports, an in-process daemon on a real port."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.app import Daemon
from daemon.config import Settings, load_settings
from tests.pg import (
    BACKEND_ENV,
    PostgresCluster,
    database_url_for,
    pg_cluster,
    selected_backend,
    stop_cluster,
)
from tests.tls import write_self_signed

__all__ = ["pg_cluster"]  # the session fixture, re-exported for pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("ELEADS_CORPUS", REPO.parent / "shared" / "corpus"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
IN_CI = os.environ.get("CI") == "true"


def require_corpus() -> Path:
    """The shared corpus, or a skip (a failure under CI=true)."""
    if not CORPUS.is_dir():
        if IN_CI:
            pytest.fail(f"corpus missing at {CORPUS} (CI=true: no skipping)")
        pytest.skip(f"shared corpus not found at {CORPUS}")
    return CORPUS


def make_certificate(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key (PEM files);
    given to a client as its CA file it verifies. Needs openssl (CI installs it)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    if not write_self_signed(cert, key):
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is missing (CI=true: no skipping)")
        pytest.skip("openssl is not installed")
    return cert, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BASE_CONFIG: dict[str, Any] = {
    "smtp": {"host": "127.0.0.1", "port": 0},
    # Thread mode lets in-process tests inject faults; test_restart covers process mode.
    "spool": {"retry_base": 0.2, "retry_max": 1.0, "max_attempts": 3, "worker": "thread"},
    "accounts": [
        {
            "id": "demo",
            "country": "US",
            "locations": [{"key": "north"}, {"key": "south"}],
            "notifications": {"received": ["sales@demo.example"]},
            "authorised_senders": ["sales@demo.example"],
        }
    ],
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=("sqlite", "postgresql"),
        default=None,
        help="database backend of the suite (default: $ELEADS_TEST_DATABASE, else sqlite)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only(reason): skipped on a PostgreSQL run")
    # One answer for fixtures, helpers (tests/pg.py database_url_for) and child processes.
    os.environ[BACKEND_ENV] = selected_backend(config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_cluster()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if selected_backend(config) != "postgresql":
        return
    for item in items:
        mark = item.get_closest_marker("sqlite_only")
        if mark is not None:
            reason = mark.kwargs.get("reason") or (mark.args[0] if mark.args else "SQLite only")
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A new migrated database of the selected backend, for tests that open one directly."""
    return database_url_for(tmp_path)


@pytest.fixture
def make_config(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Path]:
    """Write a config.yaml (BASE_CONFIG + overrides) with data_dir under tmp_path.

    On a PostgreSQL run (tests/pg.py) the data dir's own database goes in database.url."""

    def _make(overrides: dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
        data = deep_merge(BASE_CONFIG, overrides or {})
        data.setdefault("data_dir", str(tmp_path / "var"))
        data.setdefault("rules_dir", str(REPO / "rules"))
        if selected_backend(request.config) == "postgresql":
            database = data["database"] = dict(data.get("database") or {})
            if not database.get("url"):
                cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
                database["url"] = cluster.database_for(tmp_path / data["data_dir"])
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return _make


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELEADS_DATA_DIR", raising=False)
    monkeypatch.delenv("ELEADS_CONFIG", raising=False)


class DaemonThread:
    """A real Daemon on its own event loop in a thread, listening on a real port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.daemon = Daemon(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.daemon.start())
        except BaseException as exc:
            self.error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self) -> DaemonThread:
        self._thread.start()
        self._started.wait(30)
        if self.error:
            raise self.error
        return self

    def reload(self) -> bool:
        """What SIGHUP runs, on the daemon's loop: True when the new config was applied."""
        future = asyncio.run_coroutine_threadsafe(self.daemon.reload(), self.loop)
        return bool(future.result(30))

    @property
    def smtp_port(self) -> int:
        return int(self.daemon._servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self.error is None:
            asyncio.run_coroutine_threadsafe(self.daemon.shutdown(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


@pytest.fixture
def run_daemon() -> Iterator[Callable[[Path], DaemonThread]]:
    started: list[DaemonThread] = []

    def _start(config: Path) -> DaemonThread:
        daemon = DaemonThread(load_settings(config)).start()
        started.append(daemon)
        return daemon

    yield _start
    for daemon in started:
        daemon.stop()
