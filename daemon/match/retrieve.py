"""Candidate retrieval: indexed look-ups of a lead's blocking keys (read only).

One small look-up per key on the ``(account, key, prospect)`` index (covering: the
prospect ids come from the index, the table is not read), each with its own LIMIT, all
sent as one statement (``UNION ALL``: one round trip to PostgreSQL instead of one per
key), then one query for the prospects found. A key shared by a crowd (a canvasser's
email on a hundred leads) cannot push the others out, and no query ever scans the
prospect table; :func:`explain` shows the plan so tests and the benchmark can check it.

The SQL is built once per database by peewee (quoting and parameter style: ``?`` on
SQLite, ``%s`` on PostgreSQL) and then run with ``execute_sql``: building query objects
anew for each of a lead's ten keys would cost more than the look-ups themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import peewee as pw

from daemon.config import MatchSettings
from daemon.db.models import Prospect, ProspectKey, database_proxy
from daemon.match.keys import query_keys

#: Share of ``max_candidates`` that one key of each kind may bring.
_KIND_SHARE = {"e": 0.5, "p": 0.5, "a": 0.5, "n": 0.5, "f": 0.5, "c": 0.5, "g": 0.2}

PROSPECT_FIELDS: tuple[str, ...] = (
    "id",
    "pid",
    "first_name",
    "last_name",
    "email",
    "phone",
    "phone_alt",
    "street",
    "city",
    "region",
    "postal_code",
    "country",
    "conflicting_leads",
)

_sql_cache: dict[int, str] = {}
_load_cache: dict[tuple[int, int], str] = {}
_lookups_cache: dict[tuple[int, int], str] = {}


@dataclass(frozen=True)
class Retrieved:
    """The prospects found for a lead, and the keys that hit their limit (crowded)."""

    prospects: tuple[dict[str, Any], ...]
    crowded: frozenset[str]


def _lookup_sql() -> str:
    db = database_proxy.obj
    sql = _sql_cache.get(id(db))
    if sql is None:
        query = (
            ProspectKey.select(ProspectKey.prospect)
            .where((ProspectKey.account == "") & (ProspectKey.key == ""))
            .limit(1)
        )
        sql, _ = query.sql()
        _sql_cache[id(db)] = sql
    return sql


def _lookups_sql(count: int) -> str:
    """``count`` key look-ups in one statement; each row is (look-up number, prospect id)."""
    key = (id(database_proxy.obj), count)
    sql = _lookups_cache.get(key)
    if sql is None:
        one = _lookup_sql()
        sql = " UNION ALL ".join(
            # Only peewee's rendered SQL and integers: the values go as parameters.
            f'SELECT {n} AS "n", "q{n}"."prospect_id" FROM ({one}) AS "q{n}"'  # noqa: S608
            for n in range(count)
        )
        _lookups_cache[key] = sql
    return sql


def key_limit(key: str, settings: MatchSettings) -> int:
    return max(1, int(settings.max_candidates * _KIND_SHARE.get(key[:1], 1.0)))


def _load_sql(count: int) -> str:
    """SELECT of PROSPECT_FIELDS for ``count`` ids, built by peewee once per count."""
    key = (id(database_proxy.obj), count)
    sql = _load_cache.get(key)
    if sql is None:
        fields = [getattr(Prospect, name) for name in PROSPECT_FIELDS]
        sql, _ = Prospect.select(*fields).where(Prospect.id.in_([0] * count)).sql()
        _load_cache[key] = sql
    return sql


def _load(ids: list[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    rows = database_proxy.execute_sql(_load_sql(len(ids)), ids).fetchall()
    found = {row[0]: dict(zip(PROSPECT_FIELDS, row, strict=True)) for row in rows}
    return [found[i] for i in ids if i in found]


def fetch_candidates(
    lead: Mapping[str, Any], *, account: str, settings: MatchSettings
) -> Retrieved:
    """The prospects of ``account`` that share at least one key with ``lead``.

    Ordered by the strength of the first key that found them (email before name).
    """
    keys = list(query_keys(lead))
    if not keys:
        return Retrieved((), frozenset())
    limits = [key_limit(key, settings) for key in keys]
    params = [
        value for key, limit in zip(keys, limits, strict=True) for value in (account, key, limit)
    ]
    rows = database_proxy.execute_sql(_lookups_sql(len(keys)), params).fetchall()
    found: list[list[int]] = [[] for _ in keys]
    for number, prospect_id in rows:
        found[number].append(prospect_id)
    seen: dict[int, None] = {}
    crowded: set[str] = set()
    for key, limit, ids in zip(keys, limits, found, strict=True):
        if len(ids) >= limit:
            crowded.add(key)
        for prospect_id in ids:
            seen.setdefault(prospect_id, None)
    return Retrieved(tuple(_load(list(seen))), frozenset(crowded))


def explain(account: str, key: str) -> list[str]:
    """The query plan of one key look-up, one line per step (for tests and the benchmark).

    SQLite's ``EXPLAIN QUERY PLAN`` (a fixed answer: "SEARCH ... USING INDEX"); on
    PostgreSQL the planner's choice for the table as it is now (``EXPLAIN``), which may be
    a sequential scan of a small table."""
    db = database_proxy.obj
    if isinstance(db, pw.SqliteDatabase):
        plan = "EXPLAIN QUERY PLAN " + _lookup_sql()
        rows = database_proxy.execute_sql(plan, (account, key, 1)).fetchall()
        return [str(row[-1]) for row in rows]
    rows = database_proxy.execute_sql("EXPLAIN " + _lookup_sql(), (account, key, 1)).fetchall()
    return [str(row[0]).strip() for row in rows]
