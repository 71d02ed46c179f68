"""daemon/db/fast.py: the cached-statement helpers store and load exactly what peewee does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import pytest

from daemon.db import open_database
from daemon.db.fast import create_row, get_row, update_row
from daemon.db.models import Account, ELead, InboundMessage, Prospect


@pytest.fixture
def db(tmp_path: Path) -> Iterator[pw.Database]:
    database = open_database(f"sqlite:///{tmp_path / 'fast.db'}")
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
