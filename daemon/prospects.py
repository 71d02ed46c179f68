"""Prospects: creation (for convert.py), filling gaps, listing (CSV import: prospects_import).

A prospect's id is a string: ``P<n>`` from ``Account.prospect_seq`` for new ones, or the
CSV's ``id`` column when imported. Every write also maintains the prospect's blocking
keys (daemon/match/keys.py), which is what makes matching an indexed look-up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import peewee as pw

from daemon.db.fast import create_row, insert_stored, statement
from daemon.db.models import Account, LeadSource, Prospect, ProspectKey, database_proxy, utcnow
from daemon.errors import UsageError
from daemon.match.keys import blocking_keys, city_key, postal_key
from daemon.parse import normalise

log = logging.getLogger(__name__)

#: The prospect's own fields: the lead fields that describe a person.
FIELDS: tuple[str, ...] = (
    *("first_name", "last_name", "email", "phone", "phone_alt"),
    *("street", "city", "region", "postal_code", "country"),
)
_ADDRESS = FIELDS[5:]
_ID_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
_P_NUMBER_RE = re.compile(r"^[Pp](\d{1,18})$")
MAX_PROBLEMS = 1000
#: SQLite page cache while importing (allocated only as pages are used; at most a
#: quarter of the memory available: prospects_import._import_cache_kib).
IMPORT_CACHE_KIB = 1024 * 1024
#: Rows per transaction of `eleads prospects import` (at most: see
#: prospects_import._next_batch_rows). Every batch's keys land all over the key index,
#: so each commit rewrites most of its pages: at 1M prospects 100,000-row batches import
#: 1.6x faster than 20,000-row ones, and hold SQLite's write lock ~3.5 s each against a
#: running daemon (which waits up to its 10 s busy timeout, and retries after that).
#: benchmarks/match.py and docs/performance.md have the numbers.
IMPORT_BATCH_ROWS = 100_000


@dataclass(frozen=True)
class ImportReport:
    """Outcome of a CSV import; ``problems`` hold "line N: ..." for every skipped row."""

    imported: int
    skipped: int
    problems: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"imported": self.imported, "skipped": self.skipped, "problems": list(self.problems)}


def _clean_fields(fields: Mapping[str, Any]) -> dict[str, str | None]:
    """The prospect columns of a lead, as one-line strings (absent -> None)."""
    values = {name: normalise.clean(fields.get(name)) for name in FIELDS}
    country = values["country"]
    values["country"] = country.upper() if country and len(country) == 2 else None
    return values


def _tuples(query: Any) -> list[tuple[Any, ...]]:
    """A peewee query's rows as tuples (its type stubs say model instances)."""
    return list(query.tuples())


def _reserve_pids(account: str, count: int) -> list[str]:
    """Take ``count`` numbers from the account's counter (one atomic UPDATE)."""
    # Statements rendered once (daemon/db/fast.py): the worker runs this per new prospect.
    bump = statement(
        "reserve_pids",
        lambda: Account.update(prospect_seq=Account.prospect_seq + count).where(
            Account.id == account
        ),
        (count, account),
    )
    if not database_proxy.execute_sql(bump, (count, account)).rowcount:
        raise UsageError(f"no account {account!r}")
    read = statement(
        "prospect_seq",
        lambda: Account.select(Account.prospect_seq).where(Account.id == account),
        (account,),
    )
    top = int(database_proxy.execute_sql(read, (account,)).fetchone()[0])
    return [f"P{n}" for n in range(top - count + 1, top + 1)]


def _pid_taken(account: str, pid: str) -> bool:
    sql = statement(
        "pid_taken",
        lambda: (
            Prospect.select(Prospect.id)
            .where((Prospect.account == account) & (Prospect.pid == pid))
            .limit(1)
        ),
        (account, pid, 1),
    )
    return database_proxy.execute_sql(sql, (account, pid, 1)).fetchone() is not None


_KEY_COLUMNS = ("account", "prospect", "key")


def _write_keys(account: str, pairs: Iterable[tuple[int, Iterable[str]]]) -> None:
    rows = [(account, pid, key) for pid, keys in pairs for key in keys]
    insert_stored(ProspectKey, _KEY_COLUMNS, rows)


def refresh_keys(prospect: Prospect) -> None:
    """Make the prospect's stored keys equal :func:`blocking_keys` of its fields."""
    want = blocking_keys({name: getattr(prospect, name) for name in FIELDS})
    query = ProspectKey.select(ProspectKey.key).where(ProspectKey.prospect == prospect.id)
    have = {str(k) for (k,) in _tuples(query)}
    if have - want:
        ProspectKey.delete().where(
            (ProspectKey.prospect == prospect.id) & ProspectKey.key.in_(sorted(have - want))
        ).execute()
    record: Any = prospect  # peewee's account_id accessor is not in its type stubs
    _write_keys(str(record.account_id), [(int(prospect.id), sorted(want - have))])


def create_prospect(fields: Mapping[str, Any], *, account: str) -> Prospect:
    """Insert a new prospect ``P<n>`` with its keys, inside the caller's transaction."""
    values = _clean_fields(fields)
    with database_proxy.atomic():
        pid = _reserve_pids(account, 1)[0]
        while _pid_taken(account, pid):  # an id imported out of sequence
            pid = _reserve_pids(account, 1)[0]
        prospect = create_row(Prospect, account=account, pid=pid, **values)
        _write_keys(account, [(int(prospect.id), blocking_keys(values))])
    log.info("event=prospect_created account=%s prospect=%s", account, pid)
    return prospect


def fill_empty_fields(prospect: Prospect, fields: Mapping[str, Any]) -> list[str]:
    """Copy the lead's values into the prospect's empty fields; never overwrite.

    The address fields are filled only when the prospect has no address yet or the lead's
    is in the same place (a moved customer's new ZIP must not join the old street). A new
    phone number for a matched person goes to an empty ``phone_alt``, so that the next
    lead with it matches too. Returns the names of the fields filled; keys follow.
    """
    values = _clean_fields(fields)
    no_address = not any(getattr(prospect, name) for name in ("street", "city", "postal_code"))
    same_place = (postal_key(values["postal_code"]) or city_key(values["city"])) is not None and (
        postal_key(values["postal_code"]) == postal_key(prospect.postal_code)
        or city_key(values["city"]) == city_key(prospect.city)
    )
    filled: list[str] = []
    for name in FIELDS:
        if name in _ADDRESS and not (no_address or same_place):
            continue
        if values[name] and not getattr(prospect, name):
            setattr(prospect, name, values[name])
            filled.append(name)
    phone = values["phone"]
    if phone and not prospect.phone_alt and phone not in (prospect.phone, None):
        prospect.phone_alt = phone
        filled.append("phone_alt")
    if filled:
        prospect.updated_at = utcnow()
        prospect.save()
        refresh_keys(prospect)
    return filled


def list_prospects(*, account: str | None) -> list[dict[str, Any]]:
    """Every prospect (of one account) with its number of lead sources, in id order."""
    count = pw.fn.COUNT(LeadSource.id).alias("lead_sources")
    query = (
        Prospect.select(Prospect, count)
        .join(LeadSource, pw.JOIN.LEFT_OUTER)
        .group_by(Prospect.id)
        .order_by(Prospect.account, Prospect.id)
    )
    if account is not None:
        query = query.where(Prospect.account == account)
    rows: Any = query
    return [
        {"id": p.pid, "account": p.account_id, **{n: getattr(p, n) for n in FIELDS}}
        | {"lead_sources": int(p.lead_sources), "conflicting_leads": int(p.conflicting_leads)}
        for p in rows
    ]
