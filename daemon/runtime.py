"""Open the parts every entry point needs: data dir, database, spool, rules, pipeline.

The CLI calls :func:`open_runtime` directly; ``app.py`` calls it once at start and then
hands the database to its DB thread.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import peewee as pw

from daemon.config import Settings
from daemon.db import open_database
from daemon.db.models import Account, Location, database_proxy
from daemon.errors import ConfigError, UsageError
from daemon.parse.rules import RuleSet
from daemon.parse.rules import load_rules as load_rule_files
from daemon.spool import Spool, SpoolStore

if TYPE_CHECKING:
    from daemon.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: pw.Database
    spool: SpoolStore
    rules: Any
    _pipeline: Pipeline | None = None

    @property
    def pipeline(self) -> Pipeline:
        """Built on first use: the daemon process of ``spool.worker: process`` never
        processes a message itself, and importing the pipeline (parsing, matching,
        conversion, reply commands) would cost it about 6 MiB of RSS."""
        if self._pipeline is None:
            from daemon.pipeline import Pipeline

            self._pipeline = Pipeline(settings=self.settings, spool=self.spool, rules=self.rules)
        return self._pipeline

    def reload(self, settings: Settings, rules: Any) -> None:
        """New settings and rules; the pipeline is rebuilt with them on next use."""
        self.settings, self.rules, self._pipeline = settings, rules, None

    def close(self) -> None:
        self.spool.close()
        if not self.db.is_closed():
            self.db.close()


def load_rules(settings: Settings) -> RuleSet:
    """Provider rules from ``rules_dir``, checked against their schema."""
    if not settings.rules_dir.is_dir():
        raise ConfigError(f"{settings.source}: rules_dir: not a directory: {settings.rules_dir}")
    return load_rule_files(settings.rules_dir)


def sync_accounts(settings: Settings) -> None:
    """Make the Account/Location rows mirror config.yaml (config is the source of truth)."""
    with database_proxy.atomic():
        for account in settings.accounts:
            Account.insert(id=account.id, name=account.name, country=account.country).on_conflict(
                conflict_target=[Account.id],
                update={Account.name: account.name, Account.country: account.country},
            ).execute()
            for loc in account.locations:
                Location.insert(account=account.id, key=loc.key, name=loc.name).on_conflict(
                    conflict_target=[Location.account, Location.key],
                    update={Location.name: loc.name},
                ).execute()


def make_spool(settings: Settings) -> SpoolStore:
    """The spool ``spool.store`` asks for (the database must be open for "database")."""
    common: dict[str, Any] = {
        "max_attempts": settings.spool.max_attempts,
        "retry_base": settings.spool.retry_base,
        "retry_max": settings.spool.retry_max,
        "group_commit_ms": settings.spool.group_commit_ms,
    }
    if settings.spool_store == "database":
        from daemon.spool.database import DatabaseSpool

        return DatabaseSpool(
            files_root=settings.spool_dir,
            lease_seconds=settings.spool.lease_seconds,
            instance=settings.instance_name,
            **common,
        )
    return Spool(settings.spool_dir, **common)


def open_runtime(settings: Settings) -> Runtime:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data_dir {settings.data_dir}: {exc.strerror or exc}") from None
    db = open_database(settings.database_url)
    sync_accounts(settings)
    spool = make_spool(settings)
    return Runtime(settings=settings, db=db, spool=spool, rules=load_rules(settings))


class DataDirLock:
    """One ``eleads serve`` per data dir: an flock held for the daemon's lifetime."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "serve.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise UsageError(f"another eleads serve is running on {self.path.parent}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def held_by_other(self) -> bool:
        """True when a daemon holds the lock (used by the CLI to hand work over)."""
        if not self.path.exists():
            return False
        with self.path.open("a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
