"""Reply tokens: the ``+r-<token>`` part of a Conversion Issue email's Reply-To.

A token is the only thing that ties an emailed answer ("USE 1") to one eLead, so it is
treated like a password (the Salmon confirm engine's idea, without its flaws):

- 128 random bits from :mod:`secrets`, written as 26 characters of lower-case base32
  (``[a-z2-7]``, a subset of the ``[0-9a-z]`` the classifier accepts); ``leads+r-`` plus
  26 characters stays far below the 64-octet local-part limit some servers enforce;
- only its SHA-256 is stored (a leaked database answers nothing), and the stored hash is
  compared with :func:`hmac.compare_digest`;
- bound to one eLead and one account, expiring, and single use: :func:`consume_token`
  marks it used with a conditional UPDATE inside the caller's transaction, so the token
  is spent exactly when the action it authorised commits.

Every function runs in the caller's database context (the DB thread, or the CLI).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from daemon.db.fast import create_row
from daemon.db.models import ReplyToken, database_proxy, naive_utc

#: Random bytes per token (128 bits).
TOKEN_BYTES = 16
_TOKEN_SHAPE = re.compile(r"^[0-9a-z]{16,64}$")

ProblemKind = Literal["unknown", "expired", "used", "unauthorised"]


@dataclass(frozen=True)
class TokenGrant:
    """A valid token: what it allows (one eLead of one account), never the token itself."""

    token_id: int
    elead_id: int
    account: str
    expires_at: datetime

    @property
    def elead(self) -> str:
        return f"E-{self.elead_id}"


@dataclass(frozen=True)
class TokenProblem:
    """Why a token grants nothing; ``used_by``/``used_at`` say who spent it, when."""

    kind: ProblemKind
    elead_id: int | None = None
    account: str | None = None
    expires_at: datetime | None = None
    used_at: datetime | None = None
    used_by: str | None = None

    @property
    def message(self) -> str:
        if self.kind == "used":
            when = f" on {self.used_at:%Y-%m-%d %H:%M} UTC" if self.used_at else ""
            return f"this reply address was already used by {self.used_by or 'someone'}{when}"
        if self.kind == "expired":
            when = f" on {self.expires_at:%Y-%m-%d}" if self.expires_at else ""
            return f"this reply address expired{when}"
        if self.kind == "unauthorised":
            return "the sender is not an authorised address of this account"
        return "this reply address is not known"


def token_hash(token: str) -> str:
    """SHA-256 hex of the normalised token (mail systems may upper-case local parts)."""
    return hashlib.sha256(token.strip().lower().encode("ascii", "replace")).hexdigest()


def new_token() -> str:
    """128 random bits as 26 lower-case base32 characters."""
    raw = secrets.token_bytes(TOKEN_BYTES)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def issue_token(elead_id: int, account: str, *, ttl: timedelta, now: datetime) -> str:
    """Create a token for ``elead_id`` of ``account``; only its hash is stored."""
    token = new_token()
    now = naive_utc(now)
    create_row(
        ReplyToken,
        elead=elead_id,
        account=account,
        token_hash=token_hash(token),
        created_at=now,
        expires_at=now + ttl,
    )
    return token


def _lookup(token: str) -> ReplyToken | None:
    if not _TOKEN_SHAPE.match(token.strip().lower()):
        return None
    digest = token_hash(token)
    row: ReplyToken | None = ReplyToken.get_or_none(ReplyToken.token_hash == digest)
    # The index lookup found the row; the constant-time comparison is what decides.
    if row is None or not hmac.compare_digest(row.token_hash.encode(), digest.encode()):
        return None
    return row


def _judge(row: ReplyToken | None, now: datetime) -> TokenGrant | TokenProblem:
    if row is None:
        return TokenProblem("unknown")
    if row.used_at is not None:
        return TokenProblem(
            "used", row.elead_id, row.account_id, row.expires_at, row.used_at, row.used_by
        )
    if row.expires_at <= now:
        return TokenProblem("expired", row.elead_id, row.account_id, row.expires_at)
    return TokenGrant(row.id, row.elead_id, row.account_id, row.expires_at)


def check_token(token: str, *, now: datetime) -> TokenGrant | TokenProblem:
    """What ``token`` allows right now, without spending it."""
    return _judge(_lookup(token), naive_utc(now))


def consume_token(
    token: str,
    *,
    sender: str,
    now: datetime,
    authorised_senders: Collection[str] | None = None,
) -> TokenGrant | TokenProblem:
    """Spend ``token`` for ``sender``; call it in the transaction of the action it allows.

    With ``authorised_senders`` given, a sender not in it gets ``unauthorised`` and the
    token stays unspent (the rightful recipient can still answer). The UPDATE is
    conditional on ``used_at IS NULL``, so two concurrent replies cannot both win.
    """
    now = naive_utc(now)
    with database_proxy.atomic():
        row = _lookup(token)
        verdict = _judge(row, now)
        if not isinstance(verdict, TokenGrant) or row is None:
            return verdict
        if authorised_senders is not None:
            allowed = {a.strip().lower() for a in authorised_senders}
            if sender.strip().lower() not in allowed:
                return TokenProblem(
                    "unauthorised",
                    elead_id=verdict.elead_id,
                    account=verdict.account,
                    expires_at=verdict.expires_at,
                )
        spent = (
            ReplyToken.update(used_at=now, used_by=sender.strip().lower())
            .where((ReplyToken.id == row.id) & ReplyToken.used_at.is_null())
            .execute()
        )
        if spent != 1:
            return _judge(ReplyToken.get_by_id(row.id), now)
        return verdict


def purge_tokens(*, now: datetime, older_than: timedelta = timedelta(days=90)) -> int:
    """Delete tokens that expired more than ``older_than`` ago (housekeeping)."""
    cutoff = naive_utc(now) - older_than
    return int(ReplyToken.delete().where(ReplyToken.expires_at < cutoff).execute())
