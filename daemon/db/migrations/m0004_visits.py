"""Version 4: visit-log cursors, visitor links, sessions and return-lead alerts.

Existing eLeads are indexed here (their lead email and visitor id), as ingestion does
for new ones, so visitors of leads received before the upgrade are linked too.
"""

from __future__ import annotations

from typing import Any

from daemon.db.models import VISIT_MODELS


def up(db: Any, migrator: Any) -> None:
    del migrator
    db.create_tables(list(VISIT_MODELS))
    from daemon.visits.links import index_existing_eleads

    index_existing_eleads()
