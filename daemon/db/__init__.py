"""Database: connection set-up, schema migrations, and the single DB thread.

Two backends, the same models and the same numbered migrations on both:

* SQLite (the embedded default) runs in WAL mode with synchronous=FULL, so a commit is on
  disk when it returns. One writer at a time: :func:`write_transaction` takes the write
  lock up front (``BEGIN IMMEDIATE``), which serialises every writer of the database.
* PostgreSQL (``postgresql://user:pass@host:port/dbname``, psycopg 3) for bigger
  installations. Transactions are plain ``BEGIN`` at READ COMMITTED; writers are
  serialised by row locks (an UPDATE of the same row waits for the other's commit), by
  unique constraints, and where a read decides a write (is there a prospect for this
  person yet?) by :func:`lock_account`, a per-account advisory lock held to the commit.

All database work of the asyncio daemon goes through :class:`daemon.db.thread.DBThread`;
the CLI calls the same service functions directly. Connections are per thread (peewee's
default) and never cross a fork: the spool worker is a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlsplit, urlunsplit

import peewee as pw
from playhouse.migrate import SchemaMigrator

from daemon.db.migrations import discover
from daemon.db.models import MODELS, database_proxy, utcnow
from daemon.errors import ConfigError

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "full",
    "foreign_keys": 1,
    "busy_timeout": 10000,
    # 4 MiB per connection: the same end-to-end rate as 16 MiB under benchmarks/load.py
    # (the OS page cache holds the rest), 12 MiB less RSS per process.
    "cache_size": -4000,
}


class SchemaMigration(pw.Model):
    version = pw.IntegerField(primary_key=True)
    name = pw.CharField()
    applied_at = pw.DateTimeField(default=utcnow)

    class Meta:
        database = database_proxy
        table_name = "schema_migrations"


#: Seconds to wait for a PostgreSQL server to accept a connection.
PG_CONNECT_TIMEOUT = 10
#: First key of the two-key advisory locks (``"eL"``), so that ours cannot collide with
#: another application's locks in a shared database; the second key says what is locked.
ADVISORY_NAMESPACE = 0x654C0000
ADVISORY_ACCOUNT = ADVISORY_NAMESPACE + 1
ADVISORY_MIGRATE = ADVISORY_NAMESPACE + 2
#: The scheduler's leader lock (distinct from the account locks' key space).
ADVISORY_LEADER = ADVISORY_NAMESPACE + 3


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def is_postgresql(db: pw.Database | None = None) -> bool:
    """Whether ``db`` (default: the database the models are bound to) is PostgreSQL."""
    return isinstance(database_proxy.obj if db is None else db, pw.PostgresqlDatabase)


def is_sqlite(db: pw.Database | None = None) -> bool:
    return isinstance(database_proxy.obj if db is None else db, pw.SqliteDatabase)


def make_database(url: str) -> pw.Database:
    """Build (not connect) the peewee database for a ``sqlite:///`` or ``postgresql://`` URL."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else parsed.path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return pw.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    if parsed.scheme in ("postgres", "postgresql"):
        return _make_postgresql(url)
    raise ConfigError(
        f"database.url: unsupported scheme {parsed.scheme!r} (use sqlite:/// or postgresql://)"
    )


def _make_postgresql(url: str) -> pw.Database:
    try:
        import psycopg  # noqa: F401 - only to say clearly when it is missing
    except ImportError:
        raise ConfigError(
            "database.url: PostgreSQL needs the psycopg package: pip install 'psycopg[binary]'"
        ) from None
    parts = urlsplit(url)
    if not parts.path.strip("/"):
        raise ConfigError(f"database.url: no database name in {redact_url(url)}")
    # psycopg takes the URL as its conninfo (query parameters such as ?sslmode=require too).
    conninfo = urlunsplit(parts._replace(scheme="postgresql"))
    db: pw.Database = _postgresql_class()(
        conninfo, connect_timeout=PG_CONNECT_TIMEOUT, application_name="eleads"
    )
    return db


@functools.cache
def _postgresql_class() -> type[pw.Database]:
    """psycopg 3 through peewee, reconnecting a connection the server has dropped."""
    try:
        from playhouse.postgres_ext import Psycopg3Database  # peewee >= 3.18
    except ImportError:  # pragma: no cover - peewee 3.17
        from playhouse.psycopg3_ext import Psycopg3Database

    class PostgresqlDatabase(Psycopg3Database):  # type: ignore[misc]
        """A connection lost with a server restart or failover fails the statement that
        found it out (the caller retries, as for any transient error); the next one,
        outside a transaction, gets a new connection instead of the same error forever.
        Nothing is re-run here, so no statement can be applied twice."""

        def _revive(self) -> None:
            if (
                self.transaction_depth() == 0
                and not self.is_closed()
                and not self.is_connection_usable()
            ):
                log.warning("event=db_reconnect reason=connection_lost")
                with contextlib.suppress(Exception):
                    self.close()
                self.connect()

        def begin(self, *args: Any, **kwargs: Any) -> Any:
            self._revive()
            return super().begin(*args, **kwargs)

        def execute_sql(self, sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
            self._revive()
            return super().execute_sql(sql, params, *args, **kwargs)

    return PostgresqlDatabase


def set_page_cache(*, kib: int) -> None:
    """Resize this thread's SQLite page cache (``SQLITE_PRAGMAS`` sets 4 MiB); a no-op on
    PostgreSQL, whose cache is the server's."""
    if isinstance(database_proxy.obj, pw.SqliteDatabase):
        database_proxy.execute_sql(f"PRAGMA cache_size = -{int(kib)}")


def write_transaction() -> Any:
    """A transaction that will write.

    On SQLite it takes the write lock up front (BEGIN IMMEDIATE): a deferred transaction
    that reads first cannot wait for the lock when it later writes ("database is locked"
    at once, busy_timeout or not). On PostgreSQL it is a plain transaction; a writer whose
    decision depends on what it read takes :func:`lock_account` first. Nested in another
    transaction it is a savepoint, as ``atomic()`` is."""
    if isinstance(database_proxy.obj, pw.SqliteDatabase):
        return database_proxy.atomic("IMMEDIATE")
    return database_proxy.atomic()


def lock_account(account_id: str) -> None:
    """Serialise the writers of one account until the current transaction ends.

    For a read that decides a write: "no prospect matches this lead, so create one" must
    not run in two transactions at once for the same account, or both create the person.
    On PostgreSQL this is ``pg_advisory_xact_lock`` on the account (released at commit or
    rollback; other accounts go on in parallel). On SQLite it does nothing: a
    :func:`write_transaction` already holds the database's only write lock.
    """
    if not isinstance(database_proxy.obj, pw.PostgresqlDatabase):
        return
    if not database_proxy.in_transaction():
        raise RuntimeError("lock_account() outside a transaction would not hold the lock")
    database_proxy.execute_sql(
        "SELECT pg_advisory_xact_lock(CAST(%s AS integer), hashtext(%s))",
        (ADVISORY_ACCOUNT, account_id),
    )


def hold_leader_lock(job: str = "scheduler") -> bool:
    """True while this connection leads the scheduled jobs among instances sharing the
    database: a PostgreSQL session advisory lock, taken if free and kept until the
    connection ends, so a dead leader's lock is released with its connection and the next
    instance that asks becomes the leader. SQLite has one daemon per database: always True.
    """
    if not isinstance(database_proxy.obj, pw.PostgresqlDatabase):
        return True
    held = database_proxy.execute_sql(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND pid = pg_backend_pid() AND classid = CAST(%s AS integer)::oid"
        " AND objid = hashtext(%s)::oid"
        " AND objsubid = 2)",
        (ADVISORY_LEADER, job),
    ).fetchone()[0]
    if held:
        return True
    taken = database_proxy.execute_sql(
        "SELECT pg_try_advisory_lock(CAST(%s AS integer), hashtext(%s))", (ADVISORY_LEADER, job)
    ).fetchone()[0]
    return bool(taken)


@contextlib.contextmanager
def _migration_lock(db: pw.Database) -> Iterator[None]:
    """Instances starting together on one PostgreSQL migrate one after the other."""
    if not isinstance(db, pw.PostgresqlDatabase):
        yield
        return
    run: Any = db.execute_sql
    run("SELECT pg_advisory_lock(CAST(%s AS integer), 0)", (ADVISORY_MIGRATE,))
    try:
        yield
    finally:
        run("SELECT pg_advisory_unlock(CAST(%s AS integer), 0)", (ADVISORY_MIGRATE,))


def migrate(db: pw.Database) -> int:
    """Bring the schema to the newest version; return that version."""
    with _migration_lock(db):
        return _migrate(db)


def _migrate(db: pw.Database) -> int:
    migrations = discover()
    newest = migrations[-1].version
    with db.atomic():
        if not db.table_exists(SchemaMigration._meta.table_name):
            db.create_tables([SchemaMigration, *MODELS])
            for m in migrations:
                SchemaMigration.create(version=m.version, name=m.name)
            log.info("event=db_created version=%d", newest)
            return newest
    current = SchemaMigration.select(pw.fn.MAX(SchemaMigration.version)).scalar() or 0
    migrator = SchemaMigrator.from_database(db)
    for m in migrations:
        if m.version <= current:
            continue
        with db.atomic():
            m.up(db, migrator)
            SchemaMigration.create(version=m.version, name=m.name)
        log.info("event=db_migrated version=%d name=%s", m.version, m.name)
    return newest


def open_database(url: str, *, role: str = "") -> pw.Database:
    """Connect, bind the models, and migrate. Idempotent for the same URL.

    ``role`` names the database in errors when there are two ("source", "target")."""
    db = make_database(url)
    database_proxy.initialize(db)
    try:
        db.connect(reuse_if_open=True)
        migrate(db)
    except (pw.OperationalError, pw.ProgrammingError) as exc:
        # Unreachable server, wrong password, no such database, no right to create tables.
        with contextlib.suppress(pw.PeeweeException):
            db.close()
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        named = f"{role} database" if role else "database"
        raise ConfigError(f"{named} {redact_url(url)}: {detail}") from None
    return db
