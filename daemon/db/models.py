"""peewee models: the current shape of the schema.

The schema itself is created and evolved only by ``db/migrations/`` (numbered, applied
once, recorded in ``schema_migrations``). Models are bound to ``database_proxy`` so that
configuration picks SQLite or PostgreSQL at start.

Public ids: eLeads are ``E-<n>`` (``ELead.public_id``), prospects carry their own string id
``pid`` (``P<n>`` for new ones, or the id column of an imported CSV), unique per account.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import peewee as pw

database_proxy = pw.DatabaseProxy()

ELEAD_STATES = ("received", "converted", "unconverted", "failed_parse", "ignored")
NOTIFICATION_KINDS = (
    "received",
    "appointment",
    "conversion_issue",
    "return_lead",
    "command_result",
)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(value: datetime) -> datetime:
    """The database stores naive UTC; accept aware datetimes too."""
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


class JSONField(pw.TextField):
    """JSON stored as text, so SQLite and PostgreSQL behave alike."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=False, default=str)

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Account(BaseModel):
    id = pw.CharField(primary_key=True, max_length=64)
    name = pw.CharField(null=True)
    country = pw.CharField(max_length=2, default="US")
    #: Highest N of the account's "P<N>" prospect ids handed out or imported.
    prospect_seq = pw.IntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)


class Location(BaseModel):
    account = pw.ForeignKeyField(Account, backref="locations", on_delete="CASCADE")
    key = pw.CharField(max_length=64)
    name = pw.CharField(null=True)

    class Meta:
        indexes = ((("account", "key"), True),)


class InboundMessage(BaseModel):
    """Every message that left the spool, whatever it was; dedupe lives here."""

    id = pw.AutoField()
    eleads: pw.ModelSelect  # backref

    dedupe_key = pw.CharField(max_length=64, unique=True)
    spool_id = pw.CharField(max_length=64)
    message_id = pw.TextField(null=True, index=True)
    listener = pw.CharField(max_length=64)
    mail_from = pw.TextField(null=True)
    rcpt_tos = JSONField(default=list)
    account = pw.ForeignKeyField(Account, null=True, on_delete="SET NULL")
    raw_path = pw.TextField()
    size = pw.IntegerField(default=0)
    kind = pw.CharField(max_length=16, default="unknown")
    outcome = pw.CharField(max_length=16)
    detail = pw.TextField(null=True)
    received_at = pw.DateTimeField(default=utcnow)
    processed_at = pw.DateTimeField(default=utcnow)


class Prospect(BaseModel):
    id = pw.AutoField()
    account = pw.ForeignKeyField(Account, backref="prospects", on_delete="CASCADE")
    pid = pw.CharField(max_length=64)
    first_name = pw.CharField(null=True)
    last_name = pw.CharField(null=True)
    email = pw.CharField(null=True, index=True)
    phone = pw.CharField(max_length=32, null=True, index=True)
    phone_alt = pw.CharField(max_length=32, null=True)
    street = pw.CharField(null=True)
    city = pw.CharField(null=True)
    region = pw.CharField(null=True)
    postal_code = pw.CharField(max_length=32, null=True)
    country = pw.CharField(max_length=2, null=True)
    #: Leads that shared an email/phone with this prospect under another name (the
    #: "canvasser typed their own email" pattern); shown as a warning by `eleads show`.
    conflicting_leads = pw.IntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("account", "pid"), True),)


class ProspectKey(BaseModel):
    """Blocking keys (see daemon/match/keys.py): candidate retrieval without a full scan."""

    # No per-column indexes: (account, key) and (prospect, key) cover every look-up, and
    # each extra index costs a random insert per key row on import.
    account = pw.ForeignKeyField(Account, on_delete="CASCADE", index=False)
    prospect = pw.ForeignKeyField(Prospect, backref="keys", on_delete="CASCADE", index=False)
    key = pw.CharField(max_length=255)

    class Meta:
        indexes = ((("account", "key"), False), (("prospect", "key"), True))


class ELead(BaseModel):
    class Meta:
        table_name = "elead"

    id = pw.AutoField()
    account_id: str | None
    prospect_id: int | None

    account = pw.ForeignKeyField(Account, null=True, backref="eleads", on_delete="SET NULL")
    message = pw.ForeignKeyField(
        InboundMessage, backref="eleads", on_delete="CASCADE", column_name="inbound_id"
    )
    message_id = pw.TextField(null=True)
    location = pw.CharField(max_length=64, null=True)
    state = pw.CharField(max_length=16, default="received", index=True)
    rule = pw.CharField(null=True)
    parse = JSONField(null=True)
    problems = JSONField(default=list)
    candidates = JSONField(default=list)
    prospect = pw.ForeignKeyField(Prospect, null=True, backref="eleads", on_delete="SET NULL")
    header_date = pw.DateTimeField(null=True)
    received_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    @property
    def public_id(self) -> str:
        return f"E-{self.id}"


class LeadSource(BaseModel):
    id = pw.AutoField()
    prospect = pw.ForeignKeyField(Prospect, backref="lead_sources", on_delete="CASCADE")
    elead = pw.ForeignKeyField(ELead, unique=True, backref="lead_sources", on_delete="CASCADE")
    source = pw.CharField(null=True)
    external_id = pw.CharField(null=True)
    interest = pw.TextField(null=True)
    comments = pw.TextField(null=True)
    location = pw.CharField(max_length=64, null=True)
    received_at = pw.DateTimeField(default=utcnow)
    created_at = pw.DateTimeField(default=utcnow)


class Notification(BaseModel):
    id = pw.AutoField()
    account = pw.ForeignKeyField(Account, null=True, on_delete="SET NULL")
    kind = pw.CharField(max_length=32)
    to = JSONField(default=list)
    subject = pw.TextField()
    reply_to = pw.TextField(null=True)
    message_id = pw.TextField(unique=True)
    payload = JSONField(default=dict)
    status = pw.CharField(max_length=16, default="queued", index=True)
    attempts = pw.IntegerField(default=0)
    next_attempt_at = pw.DateTimeField(default=utcnow)
    last_error = pw.TextField(null=True)
    elead = pw.ForeignKeyField(ELead, null=True, backref="notifications", on_delete="SET NULL")
    path = pw.TextField(null=True)
    created_at = pw.DateTimeField(default=utcnow)
    sent_at = pw.DateTimeField(null=True)


class AuditEvent(BaseModel):
    id = pw.AutoField()
    at = pw.DateTimeField(default=utcnow, index=True)
    actor = pw.CharField()
    action = pw.CharField(max_length=64)
    account = pw.ForeignKeyField(Account, null=True, on_delete="SET NULL")
    elead = pw.ForeignKeyField(ELead, null=True, backref="audit", on_delete="SET NULL")
    prospect = pw.ForeignKeyField(Prospect, null=True, on_delete="SET NULL")
    detail = JSONField(default=dict)


class ReplyToken(BaseModel):
    """A Conversion Issue reply address token (daemon/commands/tokens.py).

    Only the SHA-256 of the token is stored, so a copy of the database does not let
    anyone answer for a human; it is bound to one eLead and account, expires, and is
    single use (``used_at``/``used_by`` say who spent it).
    """

    id = pw.AutoField()
    elead_id: int
    account_id: str

    elead = pw.ForeignKeyField(ELead, backref="reply_tokens", on_delete="CASCADE")
    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    token_hash = pw.CharField(max_length=64, unique=True)
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField()
    used_at = pw.DateTimeField(null=True)
    used_by = pw.TextField(null=True)


MODELS: tuple[type[BaseModel], ...] = (
    Account,
    Location,
    InboundMessage,
    Prospect,
    ProspectKey,
    ELead,
    LeadSource,
    Notification,
    AuditEvent,
    ReplyToken,
)
