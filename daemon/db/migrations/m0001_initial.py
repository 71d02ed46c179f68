"""Version 1: the first schema (accounts, prospects, eLeads, notifications, audit)."""

from __future__ import annotations

from typing import Any


def up(db: Any, migrator: Any) -> None:
    # Version 1 is what a fresh database gets from the models; nothing to do on top of it.
    del db, migrator
