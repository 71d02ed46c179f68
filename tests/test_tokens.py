"""Reply tokens: issue, check, consume, expiry, reuse, tampering, constant-time compare."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from daemon.commands import tokens
from daemon.commands.tokens import (
    TokenGrant,
    TokenProblem,
    check_token,
    consume_token,
    issue_token,
    purge_tokens,
)
from daemon.db.models import ReplyToken, database_proxy
from daemon.notify.outbox import reply_address
from daemon.parse.classify import REPLY_TOKEN_RE
from tests.test_notify_support import NOW, make_elead, make_settings, open_db

TTL = timedelta(days=14)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[pw.Database]:
    database = open_db(tmp_path)
    yield database
    database.close()


@pytest.fixture
def elead_id(db: pw.Database, tmp_path: Path) -> int:
    return int(make_elead(tmp_path).id)


def test_token_shape_and_strength(elead_id: int) -> None:
    issued = {issue_token(elead_id, "demo", ttl=TTL, now=NOW) for _ in range(200)}
    assert len(issued) == 200
    for token in issued:
        assert re.fullmatch(r"[0-9a-z]{26}", token)
    # 26 characters of a 32-letter alphabet: 130 bits of space, 128 of them random.
    assert tokens.TOKEN_BYTES * 8 >= 100 and 26 * math.log2(32) >= 100


def test_only_the_hash_is_stored(elead_id: int) -> None:
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    row = ReplyToken.get()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    stored = " ".join(str(v) for v in row.__data__.values())
    assert token not in stored


def test_check_grants_elead_and_account(elead_id: int) -> None:
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    grant = check_token(token, now=NOW + timedelta(days=1))
    assert isinstance(grant, TokenGrant)
    assert (grant.elead_id, grant.elead, grant.account) == (elead_id, f"E-{elead_id}", "demo")
    assert grant.expires_at == NOW + TTL
    # Checking does not spend it.
    assert isinstance(check_token(token, now=NOW), TokenGrant)


def test_consume_is_single_use_and_says_who(elead_id: int) -> None:
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    first = consume_token(token, sender="Sales@Demo.example", now=NOW + timedelta(hours=1))
    assert isinstance(first, TokenGrant)
    again = consume_token(token, sender="other@demo.example", now=NOW + timedelta(hours=2))
    assert isinstance(again, TokenProblem) and again.kind == "used"
    assert again.used_by == "sales@demo.example"
    assert again.used_at == NOW + timedelta(hours=1)
    assert again.elead_id == elead_id
    assert "already used by sales@demo.example" in again.message


def test_expired(elead_id: int) -> None:
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    late = NOW + TTL + timedelta(seconds=1)
    for verdict in (
        check_token(token, now=late),
        consume_token(token, sender="sales@demo.example", now=late),
    ):
        assert isinstance(verdict, TokenProblem) and verdict.kind == "expired"
        assert verdict.elead_id == elead_id
    assert ReplyToken.get().used_at is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("a" if t[-1] != "a" else "b"),  # one character changed
        lambda t: t[:-1],  # truncated
        lambda t: t + "a",  # extended
        lambda t: "x" * 26,  # guessed
        lambda t: "",  # empty
        lambda t: t[:10] + "'; drop table reply_token; --",  # hostile
    ],
)
def test_tampered_tokens_are_unknown(elead_id: int, mangle: Any) -> None:
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    verdict = consume_token(mangle(token), sender="sales@demo.example", now=NOW)
    assert isinstance(verdict, TokenProblem) and verdict.kind == "unknown"
    assert verdict.elead_id is None  # an unknown token reveals nothing
    assert isinstance(check_token(token, now=NOW), TokenGrant)


def test_case_and_whitespace_from_mail_systems_are_tolerated(elead_id: int) -> None:
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    assert isinstance(check_token(f" {token.upper()} ", now=NOW), TokenGrant)


def test_comparison_is_constant_time(elead_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    assert isinstance(consume_token(token, sender="sales@demo.example", now=NOW), TokenGrant)
    assert calls and all(a == b for a, b in calls)


def test_unauthorised_sender_does_not_spend_the_token(elead_id: int) -> None:
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    allowed = ["sales@demo.example"]
    refused = consume_token(
        token, sender="mallory@evil.example", now=NOW, authorised_senders=allowed
    )
    assert isinstance(refused, TokenProblem) and refused.kind == "unauthorised"
    granted = consume_token(token, sender="SALES@demo.example", now=NOW, authorised_senders=allowed)
    assert isinstance(granted, TokenGrant)


def test_consumption_belongs_to_the_callers_transaction(elead_id: int) -> None:
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    with database_proxy.atomic() as txn:
        assert isinstance(consume_token(token, sender="sales@demo.example", now=NOW), TokenGrant)
        txn.rollback()  # the action it authorised failed
    assert isinstance(check_token(token, now=NOW), TokenGrant)


def test_reply_address_fits_the_local_part_limit(tmp_path: Path, elead_id: int) -> None:
    settings = make_settings(tmp_path, reply_local="x" * 32)
    token = issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    address = reply_address(token, settings.outbound)
    assert len(address.split("@")[0]) <= 64
    found = REPLY_TOKEN_RE.search(address)
    assert found is not None and found.group(1) == token


def test_purge_drops_long_expired_tokens(elead_id: int) -> None:
    issue_token(elead_id, "demo", ttl=TTL, now=NOW)
    assert purge_tokens(now=NOW + TTL + timedelta(days=1)) == 0
    assert purge_tokens(now=NOW + TTL + timedelta(days=91)) == 1
