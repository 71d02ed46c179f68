"""daemon/db/fast.py: the cached-statement helpers store and load exactly what peewee does."""

from __future__ import annotations

from collections.abc import Iterator

import peewee as pw
import pytest

from daemon.db import open_database
from daemon.db.fast import create_row, get_row, insert_rows, update_row, update_rows
from daemon.db.models import Account, ELead, InboundMessage, Prospect


@pytest.fixture
def db(database_url: str) -> Iterator[pw.Database]:
    database = open_database(database_url)
    Account.create(id="demo")
    yield database
    database.close()


def _message(create: object, key: str) -> InboundMessage:
    values = {
        "dedupe_key": key,
        "spool_id": "s1",
        "listener": "smtp",
        "raw_path": "/x",
        "outcome": "received",
        "rcpt_tos": ["a@demo.example", "b@demo.example"],
        "account": "demo",
    }
    if create is create_row:
        return create_row(InboundMessage, **values)
    made: InboundMessage = InboundMessage.create(**values)
    return made


def _row(model: type[pw.Model], key: int) -> dict[str, object]:
    data = dict(model.get_by_id(key).__data__)
    for volatile in ("id", "dedupe_key", "received_at", "processed_at"):
        data.pop(volatile, None)
    return data


def test_create_row_stores_what_model_create_stores(db: pw.Database) -> None:
    ours, theirs = _message(create_row, "k1"), _message(InboundMessage.create, "k2")
    assert ours.id and theirs.id and ours.id != theirs.id
    assert _row(InboundMessage, ours.id) == _row(InboundMessage, theirs.id)
    assert InboundMessage.get_by_id(ours.id).rcpt_tos == ["a@demo.example", "b@demo.example"]
    assert not ours.is_dirty()


def test_create_row_with_foreign_keys_json_and_explicit_key(db: pw.Database) -> None:
    message = _message(create_row, "k1")
    elead = create_row(ELead, account="demo", message=message, parse={"a": [1, "é"]}, id=41)
    assert elead.id == 41 and elead.public_id == "E-41"
    stored = ELead.get_by_id(41)
    assert stored.parse == {"a": [1, "é"]} and stored.message.id == message.id
    assert stored.state == "received"  # the model's default, applied as by Model.create


def test_update_row_writes_only_the_named_fields(db: pw.Database) -> None:
    elead = create_row(ELead, account="demo", message=_message(create_row, "k1"))
    prospect = create_row(Prospect, account="demo", pid="P1", first_name="Ann")
    elead.state, elead.prospect, elead.candidates = "converted", prospect, [{"rank": 1}]
    elead.location = "north"  # changed, but not named: stays as stored
    update_row(elead, "candidates", "state", "prospect")  # any order
    stored = ELead.get_by_id(elead.id)
    assert (stored.state, stored.prospect_id, stored.candidates) == (
        "converted",
        prospect.id,
        [{"rank": 1}],
    )
    assert stored.location is None


def test_get_row_equals_get_by_id(db: pw.Database) -> None:
    prospect = create_row(Prospect, account="demo", pid="P7", email="a@b.example")
    ours, theirs = get_row(Prospect, prospect.id), Prospect.get_by_id(prospect.id)
    assert ours.__data__ == theirs.__data__ and not ours.is_dirty()
    ours.city = "Columbus"
    ours.save()
    assert Prospect.get_by_id(prospect.id).city == "Columbus"
    with pytest.raises(pw.DoesNotExist):
        get_row(Prospect, 999)


def test_insert_rows_and_update_rows_in_any_column_order(db: pw.Database) -> None:
    insert_rows(Prospect, ("pid", "account", "city"), [("P1", "demo", "Ada"), ("P2", "demo", "Bo")])
    rows = {p.pid: p for p in Prospect.select()}
    assert (rows["P1"].city, rows["P2"].city) == ("Ada", "Bo")
    # Names not in declaration order: each value must still land in its own column.
    update_rows(
        Prospect,
        ("city", "first_name", "conflicting_leads"),
        [(rows["P1"].id, ("Columbus", "Ann", 2)), (rows["P2"].id, ("Dayton", "Bob", 0))],
    )
    got = {p.pid: (p.city, p.first_name, p.conflicting_leads) for p in Prospect.select()}
    assert got == {"P1": ("Columbus", "Ann", 2), "P2": ("Dayton", "Bob", 0)}


def test_char_fields_are_cut_to_their_length_on_every_database(db: pw.Database) -> None:
    """PostgreSQL refuses an over-long VARCHAR (SQLite keeps it): both store it cut."""
    message = _message(create_row, "k1")
    elead = create_row(ELead, account="demo", message=message, location="north-" + "x" * 200)
    prospect = Prospect.create(account="demo", pid="P1", postal_code="4" * 80)
    assert ELead.get_by_id(elead.id).location == ("north-" + "x" * 200)[:64]
    assert Prospect.get_by_id(prospect.id).postal_code == "4" * 32
    assert Prospect.get_or_none(Prospect.postal_code == "4" * 80) is not None  # same cut
