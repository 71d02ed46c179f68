"""Decisions taken before the database layer is first imported.

peewee imports psycopg at import time whenever it is installed, and psycopg's binary
build maps libpq and OpenSSL: about 17 MiB of RSS in every process. A daemon on SQLite
(the default) never needs it, so ``eleads serve`` and its worker process say so before
anything imports peewee. Any other process (tests, ``eleads db migrate-to``) is untouched.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

_POSTGRESQL = ("postgres://", "postgresql://")


def skip_postgresql_driver(database_url: str) -> bool:
    """Keep psycopg out of this process when its database is not PostgreSQL.

    True when it was kept out; False when PostgreSQL is configured or peewee is already
    imported (too late to matter: it has imported psycopg or not already).
    """
    if database_url.startswith(_POSTGRESQL) or "peewee" in sys.modules:
        return False
    for name in ("psycopg", "psycopg2"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # import -> ImportError
    return True
