"""Numbered schema migrations.

Each module ``mNNNN_<name>.py`` defines ``up(db, migrator)`` that moves a database at
version NNNN-1 to version NNNN (playhouse.migrate operations or plain SQL). A fresh
database is created from the current models and stamped with the newest version (like
Alembic's "stamp head"), so a migration only ever runs on a database one step older.
Add a migration whenever models.py changes shape; never edit one that has shipped.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: Callable[[Any, Any], None]


def discover() -> list[Migration]:
    found: list[Migration] = []
    for info in pkgutil.iter_modules(__path__):
        match = re.fullmatch(r"m(\d{4})_(\w+)", info.name)
        if not match:
            continue
        module: ModuleType = importlib.import_module(f"{__name__}.{info.name}")
        found.append(Migration(int(match.group(1)), match.group(2), module.up))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps: {versions}")
    return found
