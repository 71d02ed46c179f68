"""Return-lead alerts from website visit logs (docs/visits.md).

readers.py parses log lines, cursor.py finds files and remembers how far they were read,
sessions.py groups hits into visits, links.py ties visitors to leads, alerts.py decides
and builds the alert emails, job.py runs one read, scheduler.py runs it periodically in
the daemon. Imports stay lazy here: the pipeline imports ``daemon.visits.links``.
"""

from __future__ import annotations

from typing import Any

from daemon.config import Settings


def read_visits(settings: Settings) -> dict[str, Any]:
    """``eleads visits read``: run the visit-log job once, here and now."""
    from daemon.db import open_database
    from daemon.visits.job import run_once

    db = open_database(settings.database_url)
    try:
        return run_once(settings).as_json()
    finally:
        if not db.is_closed():
            db.close()
