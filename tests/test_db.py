"""Database set-up: pragmas, fresh creation, and the numbered migration runner."""

from __future__ import annotations

from pathlib import Path

import peewee as pw
import pytest

from daemon import db as db_module
from daemon.db import migrate, open_database
from daemon.db.migrations import Migration, discover


@pytest.mark.sqlite_only(reason="SQLite pragmas")
def test_sqlite_is_wal_with_full_sync(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'e.db'}")
    assert db.execute_sql("pragma journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("pragma synchronous").fetchone()[0] == 2  # FULL
    assert db.execute_sql("pragma foreign_keys").fetchone()[0] == 1
    assert {
        "account",
        "prospect",
        "elead",
        "lead_source",
        "notification",
        "audit_event",
        "inbound_message",
        "schema_migrations",
    } <= set(db.get_tables())
    db.close()


def test_migrations_apply_once_in_order(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = open_database(database_url)
    newest = discover()[-1].version
    applied: list[int] = []

    def add_column(database: pw.Database, migrator: object) -> None:
        applied.append(newest + 1)
        database.execute_sql("ALTER TABLE prospect ADD COLUMN nickname TEXT")

    extra = Migration(newest + 1, "add_nickname", add_column)
    monkeypatch.setattr(db_module, "discover", lambda: [*discover(), extra])
    assert migrate(db) == newest + 1
    assert migrate(db) == newest + 1  # second run: nothing to do
    assert applied == [newest + 1]
    columns = {c.name for c in db.get_columns("prospect")}
    assert "nickname" in columns
    db.close()


def test_failed_migration_rolls_back(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = open_database(database_url)
    newest = discover()[-1].version

    def broken(database: pw.Database, migrator: object) -> None:
        database.execute_sql("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(
        db_module, "discover", lambda: [*discover(), Migration(newest + 1, "broken", broken)]
    )
    with pytest.raises(RuntimeError):
        migrate(db)
    assert "half_done" not in db.get_tables()
    assert (
        db_module.SchemaMigration.select(pw.fn.MAX(db_module.SchemaMigration.version)).scalar()
        == newest
    )
    db.close()


@pytest.mark.sqlite_only(reason="rebuilds SQLite tables; tests/test_db_postgres.py has PG's")
def test_version_1_database_is_upgraded(tmp_path: Path) -> None:
    """A database made by the first release (no blocking keys, no counters) migrates."""
    path = tmp_path / "e.db"
    db = open_database(f"sqlite:///{path}")
    # Take it back to what version 1 created.
    db.execute_sql("DROP TABLE prospect_key")
    for table, keep in (
        ("account", "id, name, country, created_at"),
        (
            "prospect",
            "id, account_id, pid, first_name, last_name, email, phone, "
            "phone_alt, street, city, region, postal_code, country, "
            "created_at, updated_at",
        ),
    ):
        db.execute_sql(f"CREATE TABLE {table}_v1 AS SELECT {keep} FROM {table}")
        db.execute_sql(f"DROP TABLE {table}")
        db.execute_sql(f"ALTER TABLE {table}_v1 RENAME TO {table}")
    db.execute_sql("DELETE FROM schema_migrations WHERE version > 1")
    db.close()
    db = open_database(f"sqlite:///{path}")
    assert "prospect_key" in db.get_tables()
    assert "prospect_seq" in {c.name for c in db.get_columns("account")}
    assert "conflicting_leads" in {c.name for c in db.get_columns("prospect")}
    versions = [v for (v,) in db.execute_sql("select version from schema_migrations")]
    assert versions == list(range(1, discover()[-1].version + 1))
    db.close()


def _prospect_indexes(db: pw.Database) -> set[tuple[str, str, tuple[str, ...], bool]]:
    return {
        (table, index.name, tuple(index.columns), bool(index.unique))
        for table in ("prospect", "prospect_key")
        for index in db.get_indexes(table)
        if not index.name.endswith("_pkey")  # PostgreSQL's primary keys
    }


def test_version_5_prospect_indexes_become_a_new_databases(database_url: str) -> None:
    """m0006 drops the unused prospect indexes and makes the key look-up covering."""
    db = open_database(database_url)
    new = _prospect_indexes(db)
    assert ("prospect_key", "prospect_key_account_id_key_prospect_id",
            ("account_id", "key", "prospect_id"), True) in new  # fmt: skip
    assert not any("email" in columns or "phone" in columns for _, _, columns, _ in new)
    # Take the indexes back to version 5's, with a prospect and its keys in the tables.
    db.execute_sql('DROP INDEX "prospect_key_account_id_key_prospect_id"')
    db.execute_sql('DROP INDEX "prospect_key_prospect_id"')
    for name, table, columns, unique in (
        ("prospect_email", "prospect", "email", ""),
        ("prospect_phone", "prospect", "phone", ""),
        ("prospect_account_id", "prospect", "account_id", ""),
        ("prospect_key_account_id_key", "prospect_key", "account_id, key", ""),
        ("prospect_key_prospect_id_key", "prospect_key", "prospect_id, key", "UNIQUE "),
    ):
        db.execute_sql(f"CREATE {unique}INDEX {name} ON {table} ({columns})")
    now = "CURRENT_TIMESTAMP"
    for statement in (
        f"INSERT INTO account (id, name, country, prospect_seq, created_at) "
        f"VALUES ('a', 'A', 'US', 0, {now})",
        f"INSERT INTO prospect (account_id, pid, conflicting_leads, created_at, updated_at) "
        f"VALUES ('a', 'P1', 0, {now}, {now})",
        "INSERT INTO prospect_key (account_id, prospect_id, key) SELECT 'a', id, k FROM "
        "prospect, (SELECT 'e:x@example.com' AS k UNION ALL SELECT 'p:+15550100') AS keys",
    ):
        db.execute_sql(statement)
    db.execute_sql("DELETE FROM schema_migrations WHERE version > 5")
    assert _prospect_indexes(db) != new
    db.close()
    db = open_database(database_url)
    assert _prospect_indexes(db) == new
    assert db.execute_sql("SELECT COUNT(*) FROM prospect_key").fetchone()[0] == 2
    with pytest.raises(pw.IntegrityError), db.atomic():  # (account, key, prospect) is unique
        db.execute_sql(
            "INSERT INTO prospect_key (account_id, prospect_id, key) "
            "SELECT account_id, prospect_id, key FROM prospect_key"
        )
    db.close()
