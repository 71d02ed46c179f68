"""Row writes for hot paths, without peewee's per-call SQL building.

``Model.create`` rebuilds and re-renders its INSERT statement on every call; in the
worker that was a fifth of the time per message. :func:`create_row` renders the
statement once per (model, columns, database) with peewee itself, so quoting, parameter
style and ``RETURNING`` (PostgreSQL) stay peewee's, and then only converts the values.
It returns the same saved instance ``Model.create`` would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import peewee as pw

from daemon.db.models import database_proxy

M = TypeVar("M", bound=pw.Model)


@functools.cache
def _insert_sql(
    model: type[pw.Model], names: tuple[str, ...], db_id: int, *, returning: bool = False
) -> str:
    """The INSERT for ``names`` (in that order) on the bound database."""
    del db_id  # part of the cache key only: a test may bind another database
    fields = [model._meta.fields[name] for name in names]
    query = model.insert_many([tuple(None for _ in names)], fields=fields)
    if returning:
        query = query.returning(model._meta.primary_key)
    sql, _ = query.sql()
    return str(sql)


def create_row(model: type[M], **values: Any) -> M:
    """Insert one row (defaults applied as by ``Model.create``) and return it, saved."""
    row: Any = model(**values)  # peewee's stubs lack _dirty and friends
    meta: Any = model._meta
    pk_name = str(meta.primary_key.name)
    data = row.__data__
    names = tuple(n for n in data if n in meta.fields and not (n == pk_name and data[n] is None))
    returning = bool(database_proxy.obj.returning_clause)  # PostgreSQL: RETURNING id
    sql = _insert_sql(model, names, id(database_proxy.obj), returning=returning)
    params = [meta.fields[n].db_value(data[n]) for n in names]
    cursor = database_proxy.execute_sql(sql, params)
    if data.get(pk_name) is None:
        key = cursor.fetchone()[0] if returning else cursor.lastrowid
        setattr(row, pk_name, key)
    row._dirty.clear()
    return cast(M, row)


@functools.cache
def _update_sql(model: type[pw.Model], names: tuple[str, ...], db_id: int) -> str:
    del db_id
    meta = model._meta
    query = model.update({meta.fields[n]: None for n in names}).where(meta.primary_key == 0)
    sql, params = query.sql()
    # peewee writes SET in field declaration order, which update_row passes names in.
    columns = [sql.find(f'"{meta.fields[n].column_name}" = ') for n in names]
    if len(params) != len(names) + 1 or columns != sorted(columns) or min(columns) < 0:
        raise AssertionError(f"unexpected UPDATE shape for {model.__name__}: {sql}")
    return str(sql)


def update_row(row: Any, *names: str) -> None:
    """Write the named fields of a saved row (``row.save(only=...)`` without the rebuild)."""
    model: type[pw.Model] = type(row)
    meta: Any = model._meta
    wanted = set(names)
    names = tuple(n for n in meta.sorted_field_names if n in wanted)
    sql = _update_sql(model, names, id(database_proxy.obj))
    data = row.__data__
    params = [meta.fields[n].db_value(data.get(n)) for n in names]
    database_proxy.execute_sql(sql, [*params, row._pk])
    row._dirty.difference_update(names)


@functools.cache
def _select_sql(model: type[pw.Model], db_id: int) -> str:
    del db_id
    meta: Any = model._meta
    sql, _ = model.select().where(meta.primary_key == 0).sql()
    return str(sql)


def get_row(model: type[M], key: Any) -> M:
    """``Model.get_by_id`` with the statement built once; raises ``DoesNotExist`` too."""
    meta: Any = model._meta
    cursor = database_proxy.execute_sql(_select_sql(model, id(database_proxy.obj)), [key])
    values = cursor.fetchone()
    if values is None:
        raise meta.model.DoesNotExist(f"{model.__name__} {key!r} does not exist")
    data = {f.name: f.python_value(v) for f, v in zip(meta.sorted_fields, values, strict=True)}
    row: Any = model(__no_default__=True)
    row.__data__.update(data)
    return cast(M, row)


def insert_rows(model: type[pw.Model], names: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """INSERT ``rows`` (values in the order of ``names``) with one ``executemany``.

    Fields left out get their model defaults, per row, as ``Model.create`` would.
    """
    meta: Any = model._meta
    missing = [(f, d) for f, d in meta.defaults.items() if f.name not in names]
    fields = [meta.fields[name] for name in names] + [f for f, _ in missing]
    params = [
        tuple(
            f.db_value(v)
            for f, v in zip(
                fields, (*row, *(d() if callable(d) else d for _, d in missing)), strict=True
            )
        )
        for row in rows
    ]
    insert_stored(model, tuple(f.name for f in fields), params)


def insert_stored(
    model: type[pw.Model], names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """INSERT ``rows`` whose values are already as stored (no conversion, no defaults):
    the prospect importer's rows, made in bulk."""
    if rows:
        sql = _insert_sql(model, tuple(names), id(database_proxy.obj))
        database_proxy.cursor().executemany(sql, rows)


def update_rows(
    model: type[pw.Model], names: Sequence[str], rows: Iterable[tuple[Any, Sequence[Any]]]
) -> None:
    """UPDATE by primary key with one ``executemany``: ``rows`` are ``(key, values)``,
    the values in the order of ``names``."""
    meta: Any = model._meta
    rank = {name: i for i, name in enumerate(meta.sorted_field_names)}
    order = sorted(range(len(names)), key=lambda i: rank[names[i]])  # peewee's SET order
    ordered = tuple(names[i] for i in order)
    fields = [meta.fields[name] for name in ordered]
    params = [
        (*(f.db_value(values[i]) for f, i in zip(fields, order, strict=True)), key)
        for key, values in rows
    ]
    if params:
        sql = _update_sql(model, ordered, id(database_proxy.obj))
        database_proxy.cursor().executemany(sql, params)


_STATEMENTS: dict[tuple[str, int], str] = {}


def statement(name: str, build: Callable[[], Any], params: Sequence[Any]) -> str:
    """The SQL of the query ``build()`` makes, rendered by peewee once per database.

    ``build`` must use ``params`` as its values, in the order its SQL takes them: this
    is checked when the statement is rendered, so a query whose parameter order differs
    fails at once instead of binding values to the wrong columns.
    """
    key = (name, id(database_proxy.obj))
    sql = _STATEMENTS.get(key)
    if sql is None:
        sql, rendered = build().sql()
        if list(rendered) != list(params):
            raise AssertionError(f"statement {name}: parameters {rendered} != {list(params)}")
        _STATEMENTS[key] = sql
    return sql
