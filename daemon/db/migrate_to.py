"""``eleads db migrate-to URL``: copy the whole database into another one.

The usual move is from the embedded SQLite file to PostgreSQL (docs/scaling.md); any
pair of supported URLs works. The steps, each a refusal rather than a guess when
something is off:

1. Take the data dir's lock (:class:`daemon.runtime.DataDirLock`): ``eleads serve`` must
   be stopped, or rows written during the copy would be lost.
2. Open the source (config's ``database.url``) and bring it to the newest schema, as
   every eleads command does; open the target and create or migrate its schema the same
   way. The target must hold no rows (refused otherwise: nothing is ever overwritten),
   and every table of the source must be one eleads knows.
3. Copy table by table in foreign-key order, in batches ordered by primary key, ids
   preserved, all in one target transaction: a failure leaves the target as it was.
   Values go through the models' fields, so SQLite's text timestamps arrive as
   PostgreSQL timestamps and JSON text stays JSON text.
4. Move each PostgreSQL id sequence past the highest copied id, and compare the row
   count of every table in source and target.

The source is not changed beyond its schema migrations: to switch, point
``database.url`` at the target and start the daemon again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import peewee as pw
from peewee import sort_models  # type: ignore[attr-defined]

from daemon.config import Settings
from daemon.db import SchemaMigration, is_postgresql, open_database, redact_url
from daemon.db.models import MODELS, database_proxy
from daemon.errors import UsageError
from daemon.runtime import DataDirLock

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000


@dataclass(frozen=True)
class TableCopy:
    table: str
    rows: int


@dataclass
class MigrateReport:
    source: str
    target: str
    version: int
    tables: list[TableCopy] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "version": self.version,
            "tables": {t.table: t.rows for t in self.tables},
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
        }


def copy_order() -> list[type[pw.Model]]:
    """Every table eleads keeps, parents before children (then the migration log)."""
    ordered: list[type[pw.Model]] = list(sort_models(list(MODELS)))
    return [*ordered, SchemaMigration]


def _sqlite_path(url: str) -> Path | None:
    if urlparse(url).scheme != "sqlite":
        return None
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else urlparse(url).path
    return None if path == ":memory:" else Path(path).resolve()


def _same_database(a: str, b: str) -> bool:
    path_a, path_b = _sqlite_path(a), _sqlite_path(b)
    if path_a is not None or path_b is not None:
        return path_a == path_b
    pa, pb = urlparse(a), urlparse(b)
    return (pa.hostname, pa.port or 5432, pa.path.strip("/")) == (
        pb.hostname,
        pb.port or 5432,
        pb.path.strip("/"),
    )


def _count(model: type[pw.Model], db: pw.Database) -> int:
    return int(model.select().count(db))


def _batches(model: type[pw.Model], db: pw.Database, size: int) -> Iterator[list[tuple[Any, ...]]]:
    """All rows of ``model`` in ``db`` as tuples of its fields, in primary-key order."""
    fields = list(model._meta.sorted_fields)
    pk = model._meta.primary_key
    if pk is None or isinstance(pk, pw.CompositeKey):
        order = fields
        offset = 0
        while True:
            query = model.select(*fields).order_by(*order).limit(size).offset(offset)
            rows = list(query.tuples().execute(db))
            if not rows:
                return
            yield rows
            offset += len(rows)
    index = fields.index(pk)
    last: Any = None
    while True:
        query = model.select(*fields).order_by(pk).limit(size)
        if last is not None:
            query = query.where(pk > last)
        rows = list(query.tuples().execute(db))
        if not rows:
            return
        yield rows
        last = rows[-1][index]


def _reset_sequence(model: type[pw.Model], db: Any) -> None:
    """Point the id sequence of ``model`` past its highest id (PostgreSQL only)."""
    pk = model._meta.primary_key
    if not is_postgresql(db) or not isinstance(pk, pw.AutoField):
        return
    table, column = model._meta.table_name, pk.column_name
    db.execute_sql(
        f'SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE(MAX("{column}"), 1), '  # noqa: S608 - names from the models
        f'MAX("{column}") IS NOT NULL) FROM "{table}"',
        (f'"{table}"', column),
    )


def _check_source_tables(source: pw.Database, models: list[type[pw.Model]]) -> None:
    known = {m._meta.table_name for m in models}
    unknown = sorted(
        t for t in source.get_tables() if t not in known and not t.startswith("sqlite_")
    )
    if unknown:
        raise UsageError(
            "the source database has tables eleads does not know, so it cannot copy them: "
            + ", ".join(unknown)
        )


def _check_target_empty(target: pw.Database, models: list[type[pw.Model]]) -> None:
    filled = [m._meta.table_name for m in models if m is not SchemaMigration and _count(m, target)]
    if filled:
        raise UsageError(
            "the target database already holds eleads data (" + ", ".join(filled) + "); "
            "migrate-to only fills an empty database: create a new one, or drop this one"
        )


def migrate_to(
    settings: Settings,
    target_url: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[TableCopy], None] | None = None,
) -> MigrateReport:
    """Copy the database of ``settings`` into the empty database at ``target_url``."""
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    source_url = settings.database_url
    if _same_database(source_url, target_url):
        raise UsageError(f"the target is the current database ({redact_url(target_url)})")
    source_path = _sqlite_path(source_url)
    if source_path is not None and not source_path.exists():
        raise UsageError(f"no database at {source_path}: nothing to copy")
    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire()
    except UsageError:
        raise UsageError(
            f"eleads serve is running on {settings.data_dir}: stop it first "
            "(rows written during the copy would be lost)"
        ) from None
    started = time.monotonic()
    source: pw.Database | None = None
    target: pw.Database | None = None
    try:
        source = open_database(source_url, role="source")
        target = open_database(target_url, role="target")
        version = int(SchemaMigration.select(pw.fn.MAX(SchemaMigration.version)).scalar(target))
        models = copy_order()
        _check_source_tables(source, models)
        _check_target_empty(target, models)
        report = MigrateReport(redact_url(source_url), redact_url(target_url), version)
        with _snapshot(source), target.atomic():
            # The fresh target stamped its own migration log; keep the source's history.
            SchemaMigration.delete().execute(target)
            for model in models:
                copied = 0
                fields = list(model._meta.sorted_fields)
                for rows in _batches(model, source, batch_size):
                    model.insert_many(rows, fields=fields).as_rowcount().execute(target)
                    copied += len(rows)
                _reset_sequence(model, target)
                done = TableCopy(model._meta.table_name, copied)
                report.tables.append(done)
                log.info("event=db_copy table=%s rows=%d", done.table, done.rows)
                if progress is not None:
                    progress(done)
            _verify(models, source, target)
        report.seconds = time.monotonic() - started
        log.info(
            "event=db_migrated_to target=%s rows=%d seconds=%.1f",
            report.target,
            report.rows,
            report.seconds,
        )
        return report
    finally:
        for db in (target, source):
            if db is not None and not db.is_closed():
                db.close()
        database_proxy.initialize(None)
        lock.release()


@contextmanager
def _snapshot(db: Any) -> Iterator[None]:
    """One consistent read of the source: a read transaction (REPEATABLE READ on PG)."""
    with db.atomic():
        if is_postgresql(db):
            db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def _verify(models: list[type[pw.Model]], source: pw.Database, target: pw.Database) -> None:
    """Every table has as many rows in the target as in the source (else roll back)."""
    wrong = []
    for model in models:
        have, want = _count(model, target), _count(model, source)
        if have != want:
            wrong.append(f"{model._meta.table_name}: {want} in the source, {have} copied")
    if wrong:
        raise UsageError("row counts differ after the copy: " + "; ".join(wrong))
