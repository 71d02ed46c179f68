"""PostgreSQL specifics: URLs, errors, fresh and upgraded schemas, locks, value round trips.

These run on every test run where the PostgreSQL server binaries exist (tests/pg.py starts
the cluster), whatever backend the rest of the suite uses; the whole suite on PostgreSQL
is ``make test-postgresql``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import peewee as pw
import pytest
import yaml

from daemon.db import (
    SchemaMigration,
    is_postgresql,
    lock_account,
    make_database,
    migrate,
    open_database,
    redact_url,
    write_transaction,
)
from daemon.db.migrations import discover
from daemon.db.models import MODELS, Account, AuditEvent, Prospect, database_proxy
from daemon.db.thread import DBThread
from daemon.errors import ConfigError

from .conftest import free_port
from .pg import PostgresCluster


@pytest.fixture
def pg(pg_cluster: PostgresCluster) -> Iterator[tuple[str, pw.Database]]:
    """A fresh migrated PostgreSQL database, bound to the models."""
    url = pg_cluster.new_database()
    db = open_database(url)
    yield url, db
    if not db.is_closed():
        db.close()


def test_urls_and_errors() -> None:
    db = make_database("postgres://u:secret@127.0.0.1:5/eleads?sslmode=disable")
    assert is_postgresql(db) and db.database.startswith("postgresql://")
    with pytest.raises(ConfigError, match="no database name"):
        make_database("postgresql://u:secret@127.0.0.1:5/")
    with pytest.raises(ConfigError, match="unsupported scheme"):
        make_database("mysql://u@h/db")
    assert redact_url("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_unreachable_server_is_a_config_error_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://eleads:hunter2@127.0.0.1:{free_port()}/eleads"
    with pytest.raises(ConfigError) as caught:
        open_database(url)
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "var"),
                "accounts": [{"id": "demo"}],
                "database": {"url": url},
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "list", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_fresh_database_gets_every_table(pg_cluster: PostgresCluster) -> None:
    url = pg_cluster.new_database(migrated=False)
    db = open_database(url)
    try:
        tables = set(db.get_tables())
        assert {m._meta.table_name for m in MODELS} | {"schema_migrations"} <= tables
        newest = discover()[-1].version
        assert migrate(db) == newest  # a second run has nothing to do
        versions = [v for (v,) in SchemaMigration.select(SchemaMigration.version).tuples()]
        assert versions == list(range(1, newest + 1))
    finally:
        db.close()


def test_version_1_database_is_upgraded(pg_cluster: PostgresCluster) -> None:
    """The numbered migrations run on PostgreSQL too (ALTER TABLE through the migrator)."""
    url = pg_cluster.new_database()
    db = open_database(url)
    keep = {"account", "location", "inbound_message", "prospect", "elead"}
    keep |= {"lead_source", "notification", "audit_event", "schema_migrations"}
    for table in set(db.get_tables()) - keep:
        db.execute_sql(f'DROP TABLE "{table}" CASCADE')
    db.execute_sql("ALTER TABLE account DROP COLUMN prospect_seq")
    db.execute_sql("ALTER TABLE prospect DROP COLUMN conflicting_leads")
    db.execute_sql("DELETE FROM schema_migrations WHERE version > 1")
    db.execute_sql(
        "INSERT INTO account (id, name, country, created_at) VALUES ('old', 'Old', 'US', now())"
    )
    db.close()
    db = open_database(url)
    try:
        assert "prospect_key" in db.get_tables()
        assert "prospect_seq" in {c.name for c in db.get_columns("account")}
        assert "conflicting_leads" in {c.name for c in db.get_columns("prospect")}
        assert Account.get_by_id("old").prospect_seq == 0
        versions = [v for (v,) in db.execute_sql("select version from schema_migrations")]
        assert versions == list(range(1, discover()[-1].version + 1))
    finally:
        db.close()


def test_values_round_trip(pg: tuple[str, pw.Database]) -> None:
    Account.create(id="demo")
    aware = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    event = AuditEvent.create(
        at=aware.replace(tzinfo=None),
        actor="test",
        action="round_trip",
        account="demo",
        detail={"name": "Zoë O'Brien", "nested": [1, None, True], "nul": "a\u0000b"},
    )
    again = AuditEvent.get_by_id(event.id)
    assert again.at == aware.replace(tzinfo=None) and again.at.tzinfo is None
    assert again.detail == {"name": "Zoë O'Brien", "nested": [1, None, True], "nul": "a\u0000b"}
    prospect = Prospect.create(account="demo", pid="p17", first_name="Ann")
    found = Prospect.get(pw.fn.UPPER(Prospect.pid) == "P17")
    assert found.id == prospect.id and isinstance(found.id, int)


def test_write_transaction_rolls_back_and_nests(pg: tuple[str, pw.Database]) -> None:
    with pytest.raises(RuntimeError), write_transaction():
        Account.create(id="gone")
        raise RuntimeError("boom")
    assert not Account.select().where(Account.id == "gone").exists()
    with write_transaction():
        Account.create(id="kept")
        with pytest.raises(pw.IntegrityError), write_transaction():
            Account.create(id="kept")  # a savepoint: only this part rolls back
        Account.create(id="also")
    assert {a.id for a in Account.select()} == {"kept", "also"}


def test_lock_account_serialises_one_account(pg: tuple[str, pw.Database]) -> None:
    """A second transaction on the same account waits; another account does not."""
    with pytest.raises(RuntimeError, match="outside a transaction"):
        lock_account("demo")
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def holder() -> None:
        with write_transaction():
            lock_account("demo")
            order.append("holder locked")
            holding.set()
            release.wait(10)
            order.append("holder commits")

    def contender(account: str) -> None:
        with write_transaction():
            lock_account(account)
            order.append(f"{account} locked")

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(10)
    other = threading.Thread(target=contender, args=("other",))
    other.start()
    other.join(10)
    assert order == ["holder locked", "other locked"]  # another account: no wait
    same = threading.Thread(target=contender, args=("demo",))
    same.start()
    time.sleep(0.3)
    assert order[-1] == "other locked"  # still waiting for the holder
    release.set()
    first.join(10)
    same.join(10)
    assert order[-2:] == ["holder commits", "demo locked"]


def test_lock_account_is_a_no_op_on_sqlite(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'e.db'}")
    try:
        lock_account("demo")  # outside a transaction too: nothing to hold
        with write_transaction():
            lock_account("demo")
    finally:
        db.close()


def test_db_thread_has_its_own_connection(pg: tuple[str, pw.Database]) -> None:
    _, db = pg
    thread = DBThread(db)

    def backend() -> int:
        return int(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])

    try:
        assert asyncio.run(thread.run(backend)) != backend()
    finally:
        thread.close()
    assert database_proxy.obj is db


def test_lost_connection_is_replaced(pg: tuple[str, pw.Database]) -> None:
    """A server-side disconnect (restart, failover) fails one statement, not all later ones."""
    url, db = pg
    Account.create(id="demo")

    def backend() -> int:
        return int(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])

    def kill(pid: int) -> None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    kill(backend())
    with pytest.raises(pw.OperationalError):
        Account.select().count()
    assert Account.select().count() == 1
    kill(backend())
    with pytest.raises(pw.PeeweeException), write_transaction():
        Account.create(id="lost")
    with write_transaction():
        Account.create(id="kept")
    assert sorted(a.id for a in Account.select()) == ["demo", "kept"]


def test_an_import_batch_waits_for_the_accounts_lock(pg: tuple[str, pw.Database]) -> None:
    """A batch takes the account's lock, as conversions do (else a conversion reserving an
    id the batch inserts and the batch bumping the counter could wait for each other)."""
    from daemon.prospects_import import import_prospects

    Account.create(id="demo")
    fixture = Path(__file__).resolve().parent / "fixtures" / "match" / "prospects.csv"
    holding, release = threading.Event(), threading.Event()
    imported: list[int] = []

    def holder() -> None:
        with write_transaction():
            lock_account("demo")
            holding.set()
            release.wait(10)

    def importer() -> None:
        report = import_prospects(fixture, account="demo", default_region="US", workers=0)
        imported.append(report.imported)

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(10)
    running = threading.Thread(target=importer)
    running.start()
    running.join(0.5)
    assert running.is_alive() and not imported  # waiting for the holder
    release.set()
    first.join(10)
    running.join(20)
    assert imported == [24]
