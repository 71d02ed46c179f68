"""Database: connection set-up, schema migrations, and the single DB thread.

SQLite (the embedded default) runs in WAL mode with synchronous=FULL, so a commit is on
disk when it returns. All database work of the asyncio daemon goes through
:class:`daemon.db.thread.DBThread`; the CLI calls the same service functions directly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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
    "cache_size": -16000,
}


class SchemaMigration(pw.Model):
    version = pw.IntegerField(primary_key=True)
    name = pw.CharField()
    applied_at = pw.DateTimeField(default=utcnow)

    class Meta:
        database = database_proxy
        table_name = "schema_migrations"


def make_database(url: str) -> pw.Database:
    """Build (not connect) the peewee database for a ``sqlite:///`` or ``postgresql://`` URL."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else parsed.path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return pw.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    if parsed.scheme in ("postgres", "postgresql"):
        raise ConfigError(f"database.url: PostgreSQL is not supported yet: {parsed.scheme}")
    raise ConfigError(f"database.url: unsupported scheme {parsed.scheme!r}")


def write_transaction() -> Any:
    """A transaction that will write: on SQLite, take the write lock up front (BEGIN
    IMMEDIATE). A deferred transaction that reads first cannot wait for the lock when it
    later writes ("database is locked" at once, busy_timeout or not). Nested in another
    transaction it is a savepoint, as ``atomic()`` is."""
    if isinstance(database_proxy.obj, pw.SqliteDatabase):
        return database_proxy.atomic("IMMEDIATE")
    return database_proxy.atomic()


def migrate(db: pw.Database) -> int:
    """Bring the schema to the newest version; return that version."""
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


def open_database(url: str) -> pw.Database:
    """Connect, bind the models, and migrate. Idempotent for the same URL."""
    db = make_database(url)
    database_proxy.initialize(db)
    try:
        db.connect(reuse_if_open=True)
        migrate(db)
    except pw.OperationalError as exc:
        raise ConfigError(f"database {url}: {exc}") from None
    return db
