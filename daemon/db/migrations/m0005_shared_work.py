"""Version 5: the database spool and the scheduler's job runs (several instances)."""

from __future__ import annotations

from typing import Any

from daemon.db.models import SCALING_MODELS


def up(db: Any, migrator: Any) -> None:
    del migrator
    db.create_tables(list(SCALING_MODELS))
