"""Prospect CSV import: validation, normalisation, and bulk writes in batches.

Rows are validated with the normalisers the parsers use (daemon/parse/normalise.py)
behind caches for what repeats (a number's NANP exchange, an email's domain, names and
places); prospects are written with one ``executemany`` per batch of a statement peewee
builds (``insert_many`` converts each value in Python: four times slower), keys on SQLite
as one JSON text sorted by key (see _json_keys_sql), one transaction per batch, with a
page cache big enough for the key index while the import runs (benchmarks/match.py has
the numbers). Bad rows are reported by line and skipped.

A big file is validated by worker processes (pure functions on raw row tuples; they never
touch the database) while a thread of this process reads the CSV for them and the main
thread writes the batches before: the CPU work of validation and of reading then overlaps
the SQLite work. Rows come back in file order, and every decision that depends on earlier
rows (ids, duplicates) is taken in the main thread, so the result is the same as
validating in-process, which small files do.
"""

from __future__ import annotations

import csv
import functools
import gc
import json
import logging
import multiprocessing
import operator
import os
import queue
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import peewee as pw

from daemon.db import lock_account, write_transaction
from daemon.db.fast import insert_stored
from daemon.db.models import Account, Prospect, ProspectKey, database_proxy, utcnow
from daemon.errors import TransientError, UsageError
from daemon.match.keys import blocking_keys, e164, email_address
from daemon.parse import normalise
from daemon.prospects import (
    _ID_RE,
    _KEY_COLUMNS,
    _P_NUMBER_RE,
    FIELDS,
    IMPORT_CACHE_KIB,
    MAX_PROBLEMS,
    ImportReport,
    _reserve_pids,
    _tuples,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The order of a raw row's values: the CSV's ``id`` column, then FIELDS.
_COLUMNS: tuple[str, ...] = ("id", *FIELDS)
#: Raw row values in _COLUMNS order (None: the file has no such column, or the row ends).
Raw = tuple[str | None, ...]
#: A validated row: (line, id, problem, values in FIELDS order, keys (see _key_json),
#: fingerprint of an id-less row). A row with a problem has no values.
Checked = tuple[int, str | None, str | None, tuple[str | None, ...], str, tuple[str, ...] | None]
#: Rows per chunk handed to a worker, and chunks in the workers' hands; validated chunks
#: queue for the writer up to a batch more (see _validated_ahead).
CHUNK_ROWS = 2500
CHUNKS_AHEAD = 12
#: Below this size (about 5,000 rows) starting worker processes costs more than it saves.
PARALLEL_MIN_BYTES = 512 * 1024
#: A transaction that took longer than this makes the next one smaller (see
#: _next_batch_rows), down to MIN_BATCH_ROWS.
BATCH_SECONDS = 5.0
MIN_BATCH_ROWS = 5000
#: The most rows one transaction may take: a batch is validated ahead in memory, and its
#: keys go to SQLite as one JSON text (SQLite's limit on a text is 1 GB).
MAX_BATCH_ROWS = 1_000_000
#: The least page cache an import takes, however little memory is free (the default).
MIN_IMPORT_CACHE_KIB = 4096
_FINGERPRINT = tuple(FIELDS.index(n) for n in ("first_name", "last_name", "email"))
_FINGERPRINT += tuple(FIELDS.index(n) for n in ("phone", "street", "postal_code"))


@functools.lru_cache(maxsize=16384)
def _place(
    country_raw: str | None, postal_raw: str | None, region_raw: str | None, default_region: str
) -> tuple[str | None, str | None, str | None, str | None, tuple[str, ...]]:
    """(country as written, country, postal code, region, phone regions to try) of a row's
    raw place columns; rows repeat these a lot."""
    clean = normalise.clean
    country_text, postal = clean(country_raw, 80), clean(postal_raw, 32)
    region = clean(region_raw, 80)
    country = normalise.country(country_text) if country_text else None
    code = normalise.postal_code(postal, country) if postal else None
    hint = normalise.postal_region(code)
    region = normalise.region(region, country) if region else None
    regions = tuple(dict.fromkeys(r for r in (country, hint, default_region.upper()) if r))
    return country_text, country, code, region, regions


@functools.lru_cache(maxsize=65536)
def _clean_common(value: str | None, limit: int) -> str | None:
    """normalise.clean for the columns whose values repeat (names, cities)."""
    return normalise.clean(value, limit)


def _normalise_row(raw: Raw, default_region: str) -> tuple[tuple[str | None, ...], str | None]:
    """(values in FIELDS order, problem): names kept as written, the rest in lead-field form."""
    _, first, last, email_raw, phone_raw, alt_raw, street, city, region_raw, postal_raw = raw[:10]
    clean = normalise.clean
    first, last = _clean_common(first, 200), _clean_common(last, 200)
    city, street = _clean_common(city, 200), clean(street)
    country_text, country, postal, region, regions = _place(
        raw[10], postal_raw, region_raw, default_region
    )
    if country_text and not country:
        return (), f"country {country_text!r} is not a country"
    text = clean(phone_raw, 64)
    phone = e164(text, regions) if text else None
    if text and not phone:
        return (), f"phone {text!r} is not a phone number"
    text = clean(alt_raw, 64)
    alt = e164(text, regions) if text else None
    if text and not alt:
        return (), f"phone_alt {text!r} is not a phone number"
    text = clean(email_raw, 254)
    email = email_address(text) if text else None
    if text and not email:
        return (), f"email {text!r} is not an email address"
    if not (first or last or email or phone):
        return (), "no name, email or phone"
    return (first, last, email, phone, alt, street, city, region, postal, country), None


def _fingerprint(values: Sequence[str | None]) -> tuple[str, ...]:
    """What makes two id-less rows the same record (a re-imported file); FIELDS order."""
    return tuple(normalise.fold(values[i] or "") for i in _FINGERPRINT)


def _key_json(keys: Iterable[str]) -> str:
    """``["<key>",...]``: a prospect's keys as a JSON array. One string to pass between
    processes, and to join as it is into the batch's JSON (see _json_keys_sql)."""
    return f"[{','.join(map(json.encoder.encode_basestring_ascii, keys))}]"


def _check_rows(rows: list[tuple[int, Raw]], default_region: str) -> list[Checked]:
    """Validate and normalise rows, and compute their keys: no state, no database (this
    runs in the worker processes)."""
    out: list[Checked] = []
    for line, raw in rows:
        pid = normalise.clean(raw[0], 80)
        if pid is not None and not _ID_RE.match(pid):
            out.append((line, pid, None, (), "", None))  # reported by the importer
            continue
        values, problem = _normalise_row(raw, default_region)
        if problem:
            out.append((line, pid, problem, (), "", None))
            continue
        keys = _key_json(sorted(blocking_keys(dict(zip(FIELDS, values, strict=True)))))
        out.append((line, pid, None, values, keys, None if pid else _fingerprint(values)))
    return out


def _header(row: list[str]) -> tuple[dict[str, int], list[str]]:
    columns: dict[str, int] = {}
    ignored: list[str] = []
    for index, title in enumerate(row):
        name = re.sub(r"[\s\-]+", "_", title.strip().lower())
        if name in FIELDS or name == "id":
            columns.setdefault(name, index)
        elif name:
            ignored.append(f"column {title.strip()!r} is not a prospect field; ignored")
    return columns, ignored


def _records(path: Path) -> Iterator[tuple[int, Raw]]:
    """(line number, raw values in _COLUMNS order) for each CSV record after the header."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        columns = _header(next(reader, []))[0]
        where = [columns.get(name, -1) for name in _COLUMNS]  # -1: the None appended below
        top = max(where)
        take = operator.itemgetter(*where)
        for record in reader:
            if any(record):
                if len(record) <= top:  # a short record: the missing columns are None
                    record = record + [None] * (top + 1 - len(record))  # type: ignore[list-item]
                record.append(None)  # type: ignore[arg-type]
                yield reader.line_num, take(record)


def _chunks(records: Iterator[tuple[int, Raw]]) -> Iterator[list[tuple[int, Raw]]]:
    while chunk := list(islice(records, CHUNK_ROWS)):
        yield chunk


def _worker_count(path: Path, workers: int | None, batch_size: int) -> int:
    """Validation processes: 0 (in-process) for small files or without fork(); 2 for a
    file of up to two batches; else 1.

    Validating a row takes less CPU than writing it (~23 us against 30-60 us), so once
    the writer has its first batch one worker keeps ahead of it, and a second one only
    takes CPU from the writer on two cores (5-10% slower from 100,000 rows on). Up to
    about two batches the writer mostly waits for the first one, which two workers
    validate in half the time."""
    if workers is not None:
        return workers
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    size = path.stat().st_size
    if (cores or 1) < 2 or size < PARALLEL_MIN_BYTES:
        return 0
    with path.open("rb") as handle:  # rows estimated from the lines of the first 64 KiB
        head = handle.read(65536)
    rows = size * head.count(b"\n") // max(len(head), 1)
    return 2 if rows <= 2 * batch_size else 1


def _validated_ahead(batch_size: int) -> int:
    """Validated chunks the reading thread may hold for the writer: a whole batch.

    While the writer is in SQLite with one batch (which lets go of the GIL) the worker
    validates the next; with a shorter queue it stopped once the queue was full and the
    writer then waited for most of each batch (12 s of a 1M import in 100,000-row
    batches). The price is memory: a batch of validated rows, ~100 MB at 100,000."""
    return max(CHUNKS_AHEAD, -(-batch_size // CHUNK_ROWS) + 1)


@contextmanager
def _checked(
    path: Path, default_region: str, workers: int, *, ahead: int = CHUNKS_AHEAD
) -> Iterator[Iterator[list[Checked]]]:
    """Every record of the file, validated (by ``workers`` processes, or here), in order,
    a chunk at a time.

    Workers are forked: they start at once with the modules loaded, and run only
    :func:`_check_rows` (pure; they never use the database connection they inherit, and
    leave by ``os._exit``, which closes nothing of it). They are all forked here, in the
    caller's thread, before :func:`_read_ahead` starts its own."""
    chunks = _chunks(_records(path))
    if workers < 1:
        yield (_check_rows(chunk, default_region) for chunk in chunks)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        pool.submit(int).result()  # a fork-context pool starts all its processes at once
        with _read_ahead(_pooled(pool, chunks, default_region), ahead) as checked:
            yield checked
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _pooled(
    pool: ProcessPoolExecutor, chunks: Iterator[list[tuple[int, Raw]]], default_region: str
) -> Iterator[list[Checked]]:
    pending: deque[tuple[int, Future[list[Checked]]]] = deque()
    line = 0  # the first line not yet handed on
    try:
        for chunk in chunks:
            line = pending[0][0] if pending else chunk[0][0]
            pending.append((chunk[0][0], pool.submit(_check_rows, chunk, default_region)))
            if len(pending) >= CHUNKS_AHEAD:
                line, future = pending.popleft()
                yield future.result()
        while pending:
            line, future = pending.popleft()
            yield future.result()
    except BrokenProcessPool as exc:
        raise TransientError(
            f"prospect import stopped at line {line}: a validation process died ({exc}); "
            "nothing of the batch in progress was written, the batches before it were; "
            "importing the file again skips what is already there"
        ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _read_ahead(items: Iterator[T], depth: int) -> Iterator[Iterator[T]]:
    """``items``, made by a thread up to ``depth`` ahead of the caller.

    With worker processes the reading thread does what is left of the validation in this
    process: parsing the CSV, handing chunks over, taking results back. That is Python
    holding the GIL, but the writer's long SQLite calls (a batch's keys, the commit) let
    go of it, so the two overlap instead of taking turns. An error of ``items`` comes out
    in order, after everything made before it; leaving the block stops the thread, which
    then closes ``items`` (the worker pool's shutdown runs there)."""
    made: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                made.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def consume() -> Iterator[T]:
        while True:
            more, value = made.get()
            if more:
                yield value
            elif value is None:
                return
            else:
                raise value

    thread = threading.Thread(target=produce, name="prospect-import-reader", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


@dataclass(slots=True)
class _Row:
    line: int
    pid: str | None
    values: tuple[str | None, ...]
    keys: str
    fingerprint: tuple[str, ...] | None


class _Importer:
    """One import run: what was seen and taken across batches, and the batch writer."""

    def __init__(self, account: str, path: Path) -> None:
        self.account, self.path = account, path
        #: The file's P-numbers were read ahead (needed before numbering id-less rows).
        self.scanned = False
        self.ids: dict[str, int] = {}
        self.prints: dict[tuple[str, ...], int] = {}
        self.problems: list[str] = []
        self.imported = self.skipped = self.batches = 0
        query = Prospect.select(Prospect.pid).where(Prospect.account == account)
        self.taken = {str(pid) for (pid,) in _tuples(query)}

    def problem(self, line: int, text: str) -> _Row | None:
        """Count a skipped row and say why (returns None: no row to insert)."""
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"line {line}: {text}")
        return None

    def row(self, checked: Checked) -> _Row | None:
        """The checks that depend on earlier rows and on the database, in file order."""
        line, pid, problem, values, keys, fingerprint = checked
        if pid is not None:
            if not _ID_RE.match(pid):
                return self.problem(line, f"id {pid!r} is not letters and digits")
            if pid in self.ids:
                return self.problem(line, f"duplicate id {pid} (first on line {self.ids[pid]})")
            if pid in self.taken:
                self.ids[pid] = line
                return self.problem(line, f"id {pid} already exists; skipped")
        if problem:
            return self.problem(line, problem)
        if fingerprint is not None:
            if fingerprint in self.prints:
                return self.problem(
                    line, f"same prospect as line {self.prints[fingerprint]}; skipped"
                )
            self.prints[fingerprint] = line
        elif pid is not None:
            self.ids[pid] = line
        return _Row(line, pid, values, keys, fingerprint)

    def _known_prints(self, rows: list[_Row]) -> set[tuple[str, ...]]:
        """Fingerprints of existing prospects that share a key with id-less ``rows``."""
        keys = sorted({k for r in rows for k in json.loads(r.keys) if k[0] in "epan"})
        ids: set[int] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            query = ProspectKey.select(ProspectKey.prospect).where(
                (ProspectKey.account == self.account) & ProspectKey.key.in_(chunk)
            )
            ids.update(int(i) for (i,) in _tuples(query))
        if not ids:
            return set()
        fields = [getattr(Prospect, n) for n in FIELDS]
        records = Prospect.select(*fields).where(Prospect.id.in_(sorted(ids)))
        return {_fingerprint(p) for p in _tuples(records)}

    def flush(self, batch: list[_Row]) -> float:
        """Insert one batch and its keys in one transaction; known id-less records skip.
        Returns the seconds the transaction took, from holding the write lock to the end
        of its commit.

        The write lock is taken up front: a transaction that reads first cannot wait for
        it behind a busy daemon (see daemon.db.write_transaction). On PostgreSQL the
        account's lock too, as the daemon's conversions take it: without it a conversion
        could reserve an id this batch inserts and both wait for the other (the batch
        for the account's counter row, the conversion for the batch's id)."""
        with _foreign_keys_checked_here():
            with write_transaction():
                started = time.perf_counter()
                self._flush(batch)
            return time.perf_counter() - started

    def _flush(self, batch: list[_Row]) -> None:
        lock_account(self.account)
        if not Account.select().where(Account.id == self.account).exists():
            raise UsageError(f"no account {self.account!r}")  # deleted meanwhile
        anonymous = [r for r in batch if r.pid is None]
        if anonymous and (known := self._known_prints(anonymous)):
            dropped = {id(r) for r in anonymous if r.fingerprint in known}
            for r in anonymous:
                if id(r) in dropped:
                    self.problem(r.line, "this prospect already exists; skipped")
            batch[:] = [r for r in batch if id(r) not in dropped]
            anonymous = [r for r in anonymous if id(r) not in dropped]
        if anonymous and not self.scanned:
            _bump_seq(self.account, _top_p_number(raw[0] for _, raw in _records(self.path)))
            self.scanned = True
        while anonymous:
            for r, pid in zip(anonymous, _reserve_pids(self.account, len(anonymous)), strict=True):
                r.pid = None if pid in self.taken else pid
            anonymous = [r for r in anonymous if r.pid is None]
        self._insert(batch)

    def _insert(self, rows: list[_Row]) -> None:
        account, top = self.account, Prospect.select(pw.fn.MAX(Prospect.id))
        before = top.scalar() or 0
        # On SQLite the text its datetime adapter would store (isoformat(" ")), made once.
        now = utcnow()
        stamp: Any = (
            now.isoformat(" ") if isinstance(database_proxy.obj, pw.SqliteDatabase) else now
        )
        data = [(account, r.pid, *r.values, 0, stamp, stamp) for r in rows]
        insert_stored(Prospect, _PROSPECT_COLUMNS, data)
        ids: Sequence[int]
        if (top.scalar() or 0) == before + len(rows):
            # New ids are above every earlier one: exactly before+1..before+n, in order.
            ids = range(before + 1, before + len(rows) + 1)
        else:  # someone else's ids in between (PostgreSQL sequences): ask
            query = Prospect.select(Prospect.pid, Prospect.id).where(
                (Prospect.id > before) & (Prospect.account == account)
            )
            found = {str(p): int(i) for p, i in _tuples(query)}
            ids = [found[str(r.pid)] for r in rows]
        if isinstance(ids, range) and _json_inserts():
            keys = f"[{','.join(r.keys for r in rows)}]"  # row i's keys: prospect start + i
            database_proxy.execute_sql(_json_keys_sql(), (account, ids.start, keys))
        else:
            pairs = zip(rows, ids, strict=True)
            key_rows = [(account, i, k) for r, i in pairs for k in json.loads(r.keys)]
            key_rows.sort(key=operator.itemgetter(2))  # stable: the order of the JSON path
            insert_stored(ProspectKey, _KEY_COLUMNS, key_rows)
        _bump_seq(account, _top_p_number(r.pid for r in rows))
        self.taken.update(str(r.pid) for r in rows)
        self.imported += len(rows)
        self.batches += 1


_PROSPECT_COLUMNS = ("account", "pid", *FIELDS, "conflicting_leads", "created_at", "updated_at")


def _json_inserts() -> bool:
    """SQLite 3.38+ (JSON functions built in): a batch's keys go in as one JSON text."""
    return isinstance(database_proxy.obj, pw.SqliteDatabase) and sqlite3.sqlite_version_info >= (
        3,
        38,
    )


@functools.cache
def _json_keys_sql() -> str:
    """INSERT ... SELECT of the batch's keys, sorted by key (then prospect).

    Parameters: the account, the first new prospect id, and ``[[key, ...], ...]`` with
    the keys of each new prospect in id order (ids are consecutive: see _insert). One JSON
    text for the batch's 140,000 key rows skips sqlite3's binding of three values per row
    (about a fifth of the key table's insert time); the nested form makes the prospect id
    the outer array's index and each key a plain atom, so nothing is parsed twice (half
    the CPU of reading [[key, id], ...] with ``->>`` and sorting on it). Sorted by key,
    the (account, key) index, the one written all over, takes its inserts in order, a
    leaf page after the other (about a third faster at 1M than in prospect order)."""
    fields = ProspectKey._meta.fields
    columns = ", ".join(f'"{fields[n].column_name}"' for n in _KEY_COLUMNS)
    table = ProspectKey._meta.table_name
    return (
        f'INSERT INTO "{table}" ({columns}) '  # noqa: S608 - names from the model
        "SELECT ?, p.key + ?, k.atom FROM json_each(?) AS p, json_each(p.value) AS k "
        "ORDER BY k.atom, p.key"
    )


def _top_p_number(ids: Iterable[str | None]) -> int:
    """The highest N of the "P<N>" ids among ``ids``."""
    numbers = (_P_NUMBER_RE.match((pid or "").strip()) for pid in ids)
    return max((int(m.group(1)) for m in numbers if m), default=0)


def _bump_seq(account: str, top: int) -> None:
    """Move the account's counter past ``top`` (an imported "P<top>")."""
    query = Account.update(prospect_seq=top).where(
        (Account.id == account) & (Account.prospect_seq < top)
    )
    query.execute()


@contextmanager
def _foreign_keys_checked_here() -> Iterator[None]:
    """SQLite's foreign key checks off for one batch (a fifth of the key table's inserts).

    Every row written references the account, checked inside the same write transaction,
    or a prospect inserted by it: the checks could not fail. The setting is per connection
    and only changes outside a transaction; the previous value comes back after the commit.
    """
    db = database_proxy.obj
    if not isinstance(db, pw.SqliteDatabase) or db.in_transaction():
        yield
        return
    before = int(database_proxy.execute_sql("PRAGMA foreign_keys").fetchone()[0])
    database_proxy.execute_sql("PRAGMA foreign_keys = 0")
    try:
        yield
    finally:
        database_proxy.execute_sql(f"PRAGMA foreign_keys = {before}")


@contextmanager
def _cycles_not_collected() -> Iterator[None]:
    """Python's cycle collector off while importing (back as it was after).

    The rows in flight (queued, validated, in the batch) live long enough to reach the
    oldest generation, so the collector kept running full collections over every object
    of the process: 48 of them, 20 s of a 1M import (a fifth), 0.5 s at 100k. The import
    makes no cycles of its own; refcounting frees its rows batch by batch."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _import_cache_kib(meminfo: Path = Path("/proc/meminfo")) -> int:
    """IMPORT_CACHE_KIB, or a quarter of the memory available now if that is less.

    The cache is allocated as pages are used, up to the size of what the import touches
    (most of an 800 MB database at 1M prospects): a small server importing a big file
    must not run out of memory for it. Where /proc/meminfo cannot be read, the full size.
    """
    try:
        with meminfo.open() as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    quarter = int(line.split()[1]) // 4  # the file counts in kB
                    return max(MIN_IMPORT_CACHE_KIB, min(IMPORT_CACHE_KIB, quarter))
    except (OSError, ValueError, IndexError):
        pass
    return IMPORT_CACHE_KIB


@contextmanager
def _page_cache(kib: int) -> Iterator[None]:
    """A bigger SQLite page cache while importing: the key index is written all over."""
    db = database_proxy.obj
    if not isinstance(db, pw.SqliteDatabase):
        yield
        return
    before = database_proxy.execute_sql("PRAGMA cache_size").fetchone()[0]
    database_proxy.execute_sql(f"PRAGMA cache_size = {-abs(int(kib))}")
    try:
        yield
    finally:
        database_proxy.execute_sql(f"PRAGMA cache_size = {int(before)}")


def _next_batch_rows(rows: int, seconds: float, most: int) -> int:
    """Rows for the next transaction: about BATCH_SECONDS at the last one's pace.

    A batch holds what the daemon's conversions wait for: SQLite's one write lock (for
    all accounts; the daemon gives up after its 10 s busy timeout and retries later), and
    on PostgreSQL the account's lock. On SQLite a batch's commit rewrites most of the key
    index, so its time grows with the database: past a few million prospects a fixed
    100,000 rows would outlast the busy timeout. Shrinking in proportion errs short (part
    of a batch's time does not shrink with it); a quick batch lets the next grow back,
    never past ``most``."""
    if seconds <= BATCH_SECONDS / 2:
        return most
    if seconds <= BATCH_SECONDS:
        return min(most, rows * 2)
    return min(most, max(MIN_BATCH_ROWS, int(rows * BATCH_SECONDS / seconds)))


def import_prospects(
    path: Path,
    *,
    account: str,
    default_region: str,
    batch_size: int = 1000,
    workers: int | None = None,
) -> ImportReport:
    """Import a CRM export (columns: the lead fields, optional ``id``); see ImportReport.

    Bad rows are reported and skipped, the rest inserted one transaction per batch of at
    most ``batch_size`` rows (fewer after a batch that took over BATCH_SECONDS).
    Re-importing a file skips what is already there (by id, else by identical fields).
    ``workers``: validation processes (default: 1 or 2 for files over 512 KiB on 2+ cores).
    """
    if not 1 <= batch_size <= MAX_BATCH_ROWS:
        raise UsageError(f"batch size must be 1 to {MAX_BATCH_ROWS:,} rows, not {batch_size}")
    started = time.perf_counter()
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        columns, ignored = _header(next(csv.reader(handle), []))
    if not set(columns) & set(FIELDS):
        return ImportReport(0, 0, ("no prospect columns in the header line",))
    if not Account.select().where(Account.id == account).exists():
        raise UsageError(f"no account {account!r}")
    importer = _Importer(account, path)
    importer.problems.extend(ignored)
    batch: list[_Row] = []
    workers = _worker_count(path, workers, batch_size)
    rows = batch_size
    with (
        _cycles_not_collected(),
        _page_cache(_import_cache_kib()),
        _checked(path, default_region, workers, ahead=_validated_ahead(batch_size)) as chunks,
    ):
        for chunk in chunks:
            for checked in chunk:
                if (row := importer.row(checked)) is not None:
                    batch.append(row)
                if len(batch) >= rows:
                    rows = _next_batch_rows(rows, importer.flush(batch), batch_size)
                    batch = []
        if batch:
            importer.flush(batch)
    log.info(
        "event=prospects_imported account=%s imported=%d skipped=%d batches=%d seconds=%.2f",
        *(account, importer.imported, importer.skipped, importer.batches),
        time.perf_counter() - started,
    )
    return ImportReport(importer.imported, importer.skipped, tuple(importer.problems))
