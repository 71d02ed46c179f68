"""Prospect CSV import: validation, normalisation, and bulk writes in batches.

Rows are validated with the normalisers the parsers use (daemon/parse/normalise.py)
behind caches for what repeats (a number's NANP exchange, an email's domain, names and
places); prospects and keys are written with one ``executemany`` per batch of a statement
peewee builds (``insert_many`` converts each value in Python: four times slower), one
transaction per batch, with a page cache big enough for the key index while the import
runs (benchmarks/match.py has the numbers). Bad rows are reported by line and skipped.
"""

from __future__ import annotations

import csv
import functools
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw

from daemon.db import write_transaction
from daemon.db.models import Account, Prospect, ProspectKey, database_proxy, utcnow
from daemon.errors import UsageError
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
    _executemany,
    _reserve_pids,
    _tuples,
)

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _place(country_text: str | None, postal: str | None, region: str | None) -> tuple[Any, ...]:
    """(country, postal code, region, phone regions) of a row; rows repeat these a lot."""
    country = normalise.country(country_text) if country_text else None
    code = normalise.postal_code(postal, country) if postal else None
    hint = normalise.postal_region(code)
    return country, code, normalise.region(region, country) if region else None, hint


@dataclass(slots=True)
class _Row:
    line: int
    pid: str | None
    values: dict[str, str | None]
    keys: set[str]


@functools.lru_cache(maxsize=65536)
def _clean_common(value: str | None, limit: int) -> str | None:
    """normalise.clean for the columns whose values repeat (names, places)."""
    return normalise.clean(value, limit)


def _normalise_row(
    raw: Mapping[str, str], default_region: str
) -> tuple[dict[str, str | None], str | None]:
    """(prospect values, problem): names kept as written, the rest in lead-field form."""
    clean = _clean_common
    values = {n: clean(raw.get(n), 200) for n in ("first_name", "last_name", "city")}
    values["street"] = normalise.clean(raw.get("street"))
    country_text = clean(raw.get("country"), 80)
    country, postal, region, hint = _place(
        country_text, clean(raw.get("postal_code"), 32), clean(raw.get("region"), 80)
    )
    if country_text and not country:
        return values, f"country {country_text!r} is not a country"
    values.update(country=country, postal_code=postal, region=region)
    regions = tuple(dict.fromkeys(r for r in (country, hint, default_region.upper()) if r))
    for name in ("phone", "phone_alt"):
        text = normalise.clean(raw.get(name), 64)
        values[name] = e164(text, regions) if text else None
        if text and not values[name]:
            return values, f"{name} {text!r} is not a phone number"
    text = normalise.clean(raw.get("email"), 254)
    values["email"] = email_address(text) if text else None
    if text and not values["email"]:
        return values, f"email {text!r} is not an email address"
    if not any(values[n] for n in ("first_name", "last_name", "email", "phone")):
        return values, "no name, email or phone"
    return values, None


def _fingerprint(values: Mapping[str, str | None]) -> tuple[str, ...]:
    """What makes two id-less rows the same record (a re-imported file)."""
    names = ("first_name", "last_name", "email", "phone", "street", "postal_code")
    return tuple(normalise.fold(values.get(n) or "") for n in names)


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


def _records(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: text}) for each CSV record after the header."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        columns = list(_header(next(reader, []))[0].items())
        for record in reader:
            if any(record):
                size = len(record)
                yield reader.line_num, {n: record[i] for n, i in columns if i < size}


class _Importer:
    """One import run: what was seen and taken across batches, and the batch writer."""

    def __init__(self, account: str, default_region: str, path: Path) -> None:
        self.account, self.default_region, self.path = account, default_region, path
        #: The file's P-numbers were read ahead (needed before numbering id-less rows).
        self.scanned = False
        self.ids: dict[str, int] = {}
        self.prints: dict[tuple[str, ...], int] = {}
        self.problems: list[str] = []
        self.imported = self.skipped = 0
        query = Prospect.select(Prospect.pid).where(Prospect.account == account)
        self.taken = {str(pid) for (pid,) in _tuples(query)}

    def problem(self, line: int, text: str) -> _Row | None:
        """Count a skipped row and say why (returns None: no row to insert)."""
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"line {line}: {text}")
        return None

    def row(self, line: int, raw: Mapping[str, str]) -> _Row | None:
        pid = normalise.clean(raw.get("id"), 80)
        if pid is not None and not _ID_RE.match(pid):
            return self.problem(line, f"id {pid!r} is not letters and digits")
        if pid is not None and pid in self.ids:
            return self.problem(line, f"duplicate id {pid} (first on line {self.ids[pid]})")
        if pid is not None and pid in self.taken:
            self.ids[pid] = line
            return self.problem(line, f"id {pid} already exists; skipped")
        values, problem = _normalise_row(raw, self.default_region)
        if problem:
            return self.problem(line, problem)
        if pid is None:
            fp = _fingerprint(values)
            if fp in self.prints:
                return self.problem(line, f"same prospect as line {self.prints[fp]}; skipped")
            self.prints[fp] = line
        else:
            self.ids[pid] = line
        return _Row(line, pid, values, blocking_keys(values))

    def _known_prints(self, rows: list[_Row]) -> set[tuple[str, ...]]:
        """Fingerprints of existing prospects that share a key with id-less ``rows``."""
        keys = sorted({k for r in rows for k in r.keys if k[0] in "epan"})
        ids: set[int] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            query = ProspectKey.select(ProspectKey.prospect).where(
                (ProspectKey.account == self.account) & ProspectKey.key.in_(chunk)
            )
            ids.update(int(i) for (i,) in _tuples(query))
        fields = (getattr(Prospect, n) for n in FIELDS)
        records: Any = Prospect.select(*fields).where(Prospect.id.in_(sorted(ids))).dicts()
        return {_fingerprint(p) for p in records} if ids else set()

    def flush(self, batch: list[_Row]) -> None:
        """Insert one batch and its keys in one transaction; known id-less records skip.

        The write lock is taken up front: a transaction that reads first cannot wait for
        it behind a busy daemon (see daemon.db.write_transaction)."""
        with write_transaction():
            anonymous = [r for r in batch if r.pid is None]
            if anonymous:
                known = self._known_prints(anonymous)
                for r in [r for r in anonymous if _fingerprint(r.values) in known]:
                    self.problem(r.line, "this prospect already exists; skipped")
                    batch.remove(r)
                    anonymous.remove(r)
            if anonymous and not self.scanned:
                _bump_seq(self.account, _top_p_number(_records(self.path)))
                self.scanned = True
            while anonymous:
                for r, pid in zip(
                    anonymous, _reserve_pids(self.account, len(anonymous)), strict=True
                ):
                    r.pid = None if pid in self.taken else pid
                anonymous = [r for r in anonymous if r.pid is None]
            self._insert(batch)

    def _insert(self, rows: list[_Row]) -> None:
        now, before = utcnow(), Prospect.select(pw.fn.MAX(Prospect.id)).scalar() or 0
        names = ("account", "pid", *FIELDS, "conflicting_leads", "created_at", "updated_at")
        data = [(self.account, r.pid, *(r.values[n] for n in FIELDS), 0, now, now) for r in rows]
        _executemany(Prospect, names, data)
        query = Prospect.select(Prospect.pid, Prospect.id).where(
            (Prospect.id > before) & (Prospect.account == self.account)
        )
        ids = {str(p): int(i) for p, i in _tuples(query)}
        # In prospect order: three of the key table's four indexes then only append.
        keys = [(self.account, ids[str(r.pid)], k) for r in rows for k in sorted(r.keys)]
        _executemany(ProspectKey, _KEY_COLUMNS, keys)
        _bump_seq(self.account, _top_p_number((r.line, {"id": str(r.pid)}) for r in rows))
        self.taken.update(str(r.pid) for r in rows)
        self.imported += len(rows)


def _top_p_number(records: Iterable[tuple[int, Mapping[str, str]]]) -> int:
    """The highest N of the "P<N>" ids among ``records``."""
    numbers = (_P_NUMBER_RE.match((raw.get("id") or "").strip()) for _, raw in records)
    return max((int(m.group(1)) for m in numbers if m), default=0)


def _bump_seq(account: str, top: int) -> None:
    """Move the account's counter past ``top`` (an imported "P<top>")."""
    query = Account.update(prospect_seq=top).where(
        (Account.id == account) & (Account.prospect_seq < top)
    )
    query.execute()


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


def import_prospects(
    path: Path, *, account: str, default_region: str, batch_size: int = 1000
) -> ImportReport:
    """Import a CRM export (columns: the lead fields, optional ``id``); see ImportReport.

    Bad rows are reported and skipped, the rest inserted one transaction per batch.
    Re-importing a file skips what is already there (by id, else by identical fields).
    """
    started = time.perf_counter()
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        columns, ignored = _header(next(csv.reader(handle), []))
    if not set(columns) & set(FIELDS):
        return ImportReport(0, 0, ("no prospect columns in the header line",))
    if not Account.select().where(Account.id == account).exists():
        raise UsageError(f"no account {account!r}")
    importer = _Importer(account, default_region, path)
    importer.problems.extend(ignored)
    batch: list[_Row] = []
    with _page_cache(IMPORT_CACHE_KIB):
        for line, raw in _records(path):
            if (row := importer.row(line, raw)) is not None:
                batch.append(row)
            if len(batch) >= batch_size:
                importer.flush(batch)
                batch = []
        if batch:
            importer.flush(batch)
    log.info(
        "event=prospects_imported account=%s imported=%d skipped=%d seconds=%.2f",
        *(account, importer.imported, importer.skipped, time.perf_counter() - started),
    )
    return ImportReport(importer.imported, importer.skipped, tuple(importer.problems))
