"""Version 3: reply tokens of Conversion Issue emails (daemon/commands/tokens.py).

The outbox itself (``notification``) exists since version 1; only the token table is new.
"""

from __future__ import annotations

from typing import Any

from daemon.db.models import ReplyToken


def up(db: Any, migrator: Any) -> None:
    del migrator
    db.create_tables([ReplyToken])
