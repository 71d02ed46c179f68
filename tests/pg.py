"""A throw-away PostgreSQL cluster for tests (the recipe in shared/notes/test-servers.md).

``ELEADS_TEST_DATABASE=postgresql`` (or ``pytest --database=postgresql``) runs the whole
suite on PostgreSQL: one cluster per test session, made with ``initdb`` under a temp dir
and run on a free loopback port (as the ``postgres`` user when we are root: the server
refuses to run as root), without fsync (a test cluster need not survive a crash). Each
test config gets a database of its own, created from a template that is already migrated
(``CREATE DATABASE ... TEMPLATE``: a few milliseconds), so tests never see each other's
rows. The server is our child process: it gets a fast shutdown (``pg_ctl stop -m fast``'s
signal) at the end of the session, and from the kernel if the test run is killed.

Without the PostgreSQL server binaries the tests that need them are skipped, except under
``CI=true``, where that is a failure (as for Dovecot in tests/dovecot.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BACKEND_ENV = "ELEADS_TEST_DATABASE"
USER = "eleads"
TEMPLATE = "eleads_template"
#: In a test's data dir: the URL of its database (see PostgresCluster.database_for).
MARKER = ".eleads-test-database"
INSTALL_HINT = "PostgreSQL server binaries not found (apt-get install -y postgresql)"


def selected_backend(config: pytest.Config) -> str:
    """The backend of this run: ``--database``, else $ELEADS_TEST_DATABASE, else sqlite."""
    chosen = config.getoption("--database", default=None) or os.environ.get(BACKEND_ENV, "sqlite")
    name = str(chosen).strip().lower()
    if name in ("postgres", "postgresql", "pg"):
        return "postgresql"
    if name in ("", "sqlite"):
        return "sqlite"
    raise pytest.UsageError(f"unknown test database {chosen!r} (sqlite or postgresql)")


def find_bindir() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: $ELEADS_PG_BINDIR, PATH, or Debian's layout."""
    candidates: list[Path] = []
    if os.environ.get("ELEADS_PG_BINDIR"):
        candidates.append(Path(os.environ["ELEADS_PG_BINDIR"]))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)

    def version(path: Path) -> int:
        try:
            return int(path.parent.name)
        except ValueError:
            return 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for path in candidates:
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "postgres")):
            return path
    return None


def _die_with_parent() -> None:
    """In the child before exec: SIGINT (fast shutdown) when the parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """One running cluster; hands out fresh, migrated databases by URL."""

    host = "127.0.0.1"

    def __init__(self, bindir: Path, root: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.root = root
        #: False for tests (no fsync: fast, and a crash only loses a throw-away cluster);
        #: True for benchmarks, which must pay what a production server pays per commit.
        self.durable = durable
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = _free_port()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._server: subprocess.Popen[bytes] | None = None
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # the server refuses to run as root
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("as root, the test cluster needs a 'postgres' user") from None
            os.chown(root, entry.pw_uid, entry.pw_gid)
            self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(self, *args: str | Path, timeout: float = 120) -> None:
        done = subprocess.run(
            [str(a) for a in args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **self._run_as,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr}\n{log}")

    def start(self) -> None:
        self._run(
            self.bindir / "initdb",
            *("-D", str(self.data), "-A", "trust", "-U", USER),
            *("-E", "UTF8", "--locale=C", "--no-sync"),
        )
        for attempt in range(3):  # another process may take the free port first
            try:
                self._start_server()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                self.port = _free_port()
        self.execute(f'CREATE DATABASE "{TEMPLATE}"')
        self._migrate(self.url(TEMPLATE))

    def _start_server(self) -> None:
        """The postmaster as our child (``pg_ctl start`` would detach it), told by the
        kernel to shut down when this process dies: a killed test run leaves no server."""
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "300",
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        log = self.log.open("ab")
        main = threading.current_thread() is threading.main_thread()
        self._server = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data), *options],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # PDEATHSIG fires when the forking *thread* ends: only from the main thread.
            preexec_fn=_die_with_parent if main else None,
            **self._run_as,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"postgres exited ({self._server.returncode}):\n{tail}")
            try:
                self.execute("SELECT 1")
                return
            except Exception:  # not accepting connections yet
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("postgres did not accept connections within 60 s")

    def _migrate(self, url: str) -> None:
        from daemon.db import open_database
        from daemon.db.models import database_proxy

        bound = database_proxy.obj  # a test may have bound its own database already
        db = open_database(url)
        db.close()
        database_proxy.initialize(bound)

    def stop(self) -> None:
        """Fast shutdown (what ``pg_ctl stop -m fast`` sends), then a kill if need be."""
        server, self._server = self._server, None
        if server is None or server.poll() is not None:
            return
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (its backends are its children)."""
        return self._server.pid if self._server is not None else None

    def url(self, dbname: str) -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{dbname}"

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction in the ``postgres`` database."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.encode())

    def new_database(self, *, migrated: bool = True) -> str:
        """The URL of a new database: migrated (from the template) or empty."""
        name = f"t{next(self._counter)}"  # itertools.count: atomic under the GIL
        template = f' TEMPLATE "{TEMPLATE}"' if migrated else " TEMPLATE template0"
        self.execute(f'CREATE DATABASE "{name}"{template}')
        return self.url(name)

    def database_for(self, data_dir: Path) -> str:
        """The database of the installation whose state lives in ``data_dir``.

        Made on first use and named in a marker file in ``data_dir``, so configs that
        share a data dir share a database, and a data dir removed and made again starts
        empty, as the SQLite file in it would."""
        marker = data_dir / MARKER
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                return marker.read_text().strip()
            data_dir.mkdir(parents=True, exist_ok=True)
            url = self.new_database()
            marker.write_text(url)
            return url


def require_bindir() -> Path:
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{INSTALL_HINT} (CI=true: no skipping)")
        pytest.skip(INSTALL_HINT)
    return bindir


_cluster: PostgresCluster | None = None
_cluster_lock = threading.Lock()


def cluster() -> PostgresCluster:
    """The session's cluster, started on first use (stopped by :func:`stop_cluster`)."""
    global _cluster
    with _cluster_lock:
        if _cluster is None:
            bindir = require_bindir()
            root = Path(tempfile.mkdtemp(prefix="eleads-pg-"))
            started = PostgresCluster(bindir, root)
            try:
                started.start()
            except BaseException:
                started.stop()
                shutil.rmtree(root, ignore_errors=True)
                raise
            _cluster = started
        return _cluster


def stop_cluster() -> None:
    global _cluster
    with _cluster_lock:
        if _cluster is not None:
            _cluster.stop()
            shutil.rmtree(_cluster.root, ignore_errors=True)
            _cluster = None


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A running throw-away cluster (skipped without PostgreSQL, failed under CI=true)."""
    try:
        yield cluster()
    finally:
        stop_cluster()


def database_url_for(where: Path) -> str:
    """A database of the selected backend for a test that opens one itself: a new
    migrated PostgreSQL database, or ``eleads.db`` in the directory ``where``."""
    if os.environ.get(BACKEND_ENV) == "postgresql":
        return cluster().database_for(where)
    return f"sqlite:///{where / 'eleads.db'}"


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one read-only query on the database at ``url``, on a connection of its own.

    For tests that look into a daemon's database from outside without binding the models
    (``?`` placeholders; they become ``%s`` on PostgreSQL)."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with contextlib.closing(
            sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True)
        ) as conn:
            return list(conn.execute(sql, params).fetchall())
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql.replace("?", "%s").encode(), params).fetchall())
