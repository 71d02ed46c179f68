"""The one thread that talks to the database on behalf of the event loop.

SQLite wants one writer, and peewee keeps a connection per thread; running every DB
call on one dedicated thread gives both, and ``await db_thread.run(fn, ...)`` keeps the
event loop free while a commit waits for fsync. On PostgreSQL the thread holds the
daemon's one connection (the spool worker process has its own); a connection the server
dropped is replaced on the next call (daemon.db).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import peewee as pw

P = ParamSpec("P")
T = TypeVar("T")


class DBThread:
    def __init__(self, db: pw.Database) -> None:
        self._db = db
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="eleads-db", initializer=self._connect
        )

    def _connect(self) -> None:
        self._db.connect(reuse_if_open=True)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        def _close() -> None:
            if not self._db.is_closed():
                self._db.close()

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)
