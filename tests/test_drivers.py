"""daemon/drivers.py: a SQLite daemon keeps psycopg (and its ~17 MiB) out of its processes."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from daemon.drivers import skip_postgresql_driver
skipped = skip_postgresql_driver(sys.argv[1])
import peewee
from daemon.db import open_database
print(skipped, peewee.psycopg is not None)
"""


def _probe(url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, url], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_sqlite_process_never_imports_psycopg() -> None:
    assert _probe("sqlite:///tmp/x.db") == "True False"


def test_postgresql_process_keeps_its_driver() -> None:
    assert _probe("postgresql://u@127.0.0.1:1/x") == "False True"


def test_too_late_once_peewee_is_imported() -> None:
    import peewee  # noqa: F401 - the point of the test

    from daemon.drivers import skip_postgresql_driver

    assert skip_postgresql_driver("sqlite:///x.db") is False
