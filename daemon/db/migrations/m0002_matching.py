"""Version 2: blocking keys for matching, the per-account prospect id counter, and the
count of conflicting leads per prospect."""

from __future__ import annotations

from typing import Any

import peewee as pw
from playhouse.migrate import migrate

from daemon.db.models import ProspectKey


def up(db: Any, migrator: Any) -> None:
    db.create_tables([ProspectKey])
    migrate(
        migrator.add_column("account", "prospect_seq", pw.IntegerField(default=0)),
        migrator.add_column("prospect", "conflicting_leads", pw.IntegerField(default=0)),
    )
