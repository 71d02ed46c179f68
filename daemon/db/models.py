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


class CharField(pw.CharField):
    """A VARCHAR whose values are cut to its length when written.

    SQLite ignores the length and PostgreSQL refuses a longer value, which would fail a
    whole message on one database only; a display string cut short is the lesser harm
    (identifiers that must not be cut, like prospect ids, are validated before this).
    """

    def db_value(self, value: Any) -> Any:
        value = super().db_value(value)  # type: ignore[no-untyped-call]
        if isinstance(value, str) and self.max_length and len(value) > self.max_length:
            return value[: self.max_length]
        return value


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Account(BaseModel):
    id = CharField(primary_key=True, max_length=64)
    name = CharField(null=True)
    country = CharField(max_length=2, default="US")
    #: Highest N of the account's "P<N>" prospect ids handed out or imported.
    prospect_seq = pw.IntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)


class Location(BaseModel):
    account = pw.ForeignKeyField(Account, backref="locations", on_delete="CASCADE")
    key = CharField(max_length=64)
    name = CharField(null=True)

    class Meta:
        indexes = ((("account", "key"), True),)


class InboundMessage(BaseModel):
    """Every message that left the spool, whatever it was; dedupe lives here."""

    id = pw.AutoField()
    eleads: pw.ModelSelect  # backref

    dedupe_key = CharField(max_length=64, unique=True)
    spool_id = CharField(max_length=64)
    message_id = pw.TextField(null=True, index=True)
    listener = CharField(max_length=64)
    mail_from = pw.TextField(null=True)
    rcpt_tos = JSONField(default=list)
    account = pw.ForeignKeyField(Account, null=True, on_delete="SET NULL")
    raw_path = pw.TextField()
    size = pw.IntegerField(default=0)
    kind = CharField(max_length=16, default="unknown")
    outcome = CharField(max_length=16)
    detail = pw.TextField(null=True)
    received_at = pw.DateTimeField(default=utcnow)
    processed_at = pw.DateTimeField(default=utcnow)


class Prospect(BaseModel):
    # Indexed only by (account, pid): matching finds prospects through ProspectKey, and
    # an index on email or phone here would cost the import a random insert per row for
    # look-ups nothing makes (migration m0006 dropped them).
    id = pw.AutoField()
    account = pw.ForeignKeyField(Account, backref="prospects", on_delete="CASCADE", index=False)
    pid = CharField(max_length=64)
    first_name = CharField(null=True)
    last_name = CharField(null=True)
    email = CharField(null=True)
    phone = CharField(max_length=32, null=True)
    phone_alt = CharField(max_length=32, null=True)
    street = CharField(null=True)
    city = CharField(null=True)
    region = CharField(null=True)
    postal_code = CharField(max_length=32, null=True)
    country = CharField(max_length=2, null=True)
    #: Leads that shared an email/phone with this prospect under another name (the
    #: "canvasser typed their own email" pattern); shown as a warning by `eleads show`.
    conflicting_leads = pw.IntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("account", "pid"), True),)


class ProspectKey(BaseModel):
    """Blocking keys (see daemon/match/keys.py): candidate retrieval without a full scan."""

    # Two indexes, each the smallest that serves its look-ups, since every key row costs
    # a random insert into (account, key, ...) on import: a look-up by key reads the
    # prospect ids from that index alone (covering, no visit to the table), which also
    # keeps each (account, key, prospect) once; a prospect's own keys (updates, cascading
    # deletes) are found by prospect.
    account = pw.ForeignKeyField(Account, on_delete="CASCADE", index=False)
    prospect = pw.ForeignKeyField(Prospect, backref="keys", on_delete="CASCADE")
    key = CharField(max_length=255)

    class Meta:
        indexes = ((("account", "key", "prospect"), True),)


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
    location = CharField(max_length=64, null=True)
    state = CharField(max_length=16, default="received", index=True)
    rule = CharField(null=True)
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
    source = CharField(null=True)
    external_id = CharField(null=True)
    interest = pw.TextField(null=True)
    comments = pw.TextField(null=True)
    location = CharField(max_length=64, null=True)
    received_at = pw.DateTimeField(default=utcnow)
    created_at = pw.DateTimeField(default=utcnow)


class Notification(BaseModel):
    id = pw.AutoField()
    account = pw.ForeignKeyField(Account, null=True, on_delete="SET NULL")
    kind = CharField(max_length=32)
    to = JSONField(default=list)
    subject = pw.TextField()
    reply_to = pw.TextField(null=True)
    message_id = pw.TextField(unique=True)
    payload = JSONField(default=dict)
    status = CharField(max_length=16, default="queued", index=True)
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
    actor = CharField()
    action = CharField(max_length=64)
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
    token_hash = CharField(max_length=64, unique=True)
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


# --- visit logs and return-lead alerts (daemon/visits/) ------------------------------
# Accounts are plain ids here, not foreign keys: the visit job reloads config.yaml each
# run, so an account added there must not need a restart to have its rows accepted.


class VisitCursor(BaseModel):
    """How far one log file was read. The file is known by the fingerprint of its first
    line (it survives rename, gzip and copytruncate); device+inode spot a file that was
    truncated or replaced under the same name."""

    id = pw.AutoField()
    source = CharField(max_length=255)
    fingerprint = CharField(max_length=64)
    path = pw.TextField()
    device = pw.BigIntegerField(default=0)
    inode = pw.BigIntegerField(default=0)
    #: Size of the file at the last read (a gzip file of the same size is done).
    size = pw.BigIntegerField(default=0)
    mtime_ns = pw.BigIntegerField(default=0)
    offset = pw.BigIntegerField(default=0)
    lines = pw.BigIntegerField(default=0)
    seen_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("source", "fingerprint"), True),)


class LeadEmail(BaseModel):
    """Lead email -> eLead, so form_submit events link without scanning eLead JSON."""

    elead_id: int

    account = CharField(max_length=64)
    email = CharField()
    elead = pw.ForeignKeyField(ELead, on_delete="CASCADE")

    class Meta:
        indexes = ((("account", "email", "elead"), True),)


class VisitorLink(BaseModel):
    """A website visitor id known to belong to an eLead (and so to its Prospect)."""

    id = pw.AutoField()
    elead_id: int
    account = CharField(max_length=64)
    visitor_id = CharField(max_length=128)
    elead = pw.ForeignKeyField(ELead, backref="visitor_links", on_delete="CASCADE")
    via = CharField(max_length=16)  # lead_field | form_submit
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("account", "visitor_id", "elead"), True),)


class VisitForm(BaseModel):
    """A form_submit event of a visitor: links by email, and names a location."""

    account = CharField(max_length=64)
    visitor_id = CharField(max_length=128, index=True)
    email = CharField(null=True, index=True)
    location = CharField(max_length=64, null=True)
    at = pw.DateTimeField()


class VisitSession(BaseModel):
    """One visit: hits of a visitor with no gap longer than the session timeout.

    ``hits`` is ``[[epoch seconds, page or null], ...]`` in time order (null: activity that
    is not a page view, e.g. a POST or form_submit); kept so that a later line can extend
    or merge the session exactly.
    """

    id = pw.AutoField()
    account = CharField(max_length=64)
    visitor_id = CharField(max_length=128)
    start_at = pw.DateTimeField()
    end_at = pw.DateTimeField(index=True)
    hits = JSONField(default=list)
    pages = pw.IntegerField(default=0)
    referrer = pw.TextField(null=True)
    user_agent = pw.TextField(null=True)
    log = pw.TextField(null=True)
    #: null: not decided; "alerted", "cooldown", or "none" (not a return visit).
    alert_state = CharField(max_length=16, null=True)

    class Meta:
        indexes = ((("account", "visitor_id", "start_at"), False),)


class ReturnAlert(BaseModel):
    """One return-lead alert (one per session), emailed or only recorded."""

    id = pw.AutoField()
    elead_id: int | None
    notification_id: int | None
    session_id: int | None

    account = CharField(max_length=64)
    visitor_id = CharField(max_length=128)
    session = pw.ForeignKeyField(VisitSession, null=True, on_delete="SET NULL")
    session_start = pw.DateTimeField()
    elead = pw.ForeignKeyField(ELead, null=True, on_delete="SET NULL")
    prospect = CharField(max_length=64, null=True)
    email = CharField(null=True)
    locations = JSONField(default=list)
    recipients = JSONField(default=list)
    notification = pw.ForeignKeyField(Notification, null=True, on_delete="SET NULL")
    log = pw.TextField(null=True)
    created_at = pw.DateTimeField(default=utcnow)


VISIT_MODELS: tuple[type[BaseModel], ...] = (
    VisitCursor,
    LeadEmail,
    VisitorLink,
    VisitForm,
    VisitSession,
    ReturnAlert,
)
MODELS = (*MODELS, *VISIT_MODELS)


SPOOL_STATES = ("queued", "active", "done", "failed")


class SpoolMessage(BaseModel):
    """A received message in the database spool (``spool.store: database``).

    Any instance sharing the database can finish what another accepted: a claim sets
    ``state='active'`` with a lease, and a claim whose lease ran out (its instance died)
    is taken again. Finished rows stay as ``done``: their ``content`` is the message archive
    (``InboundMessage.raw_path`` = ``db:spool_message/<id>``).
    """

    id = CharField(max_length=64, primary_key=True)
    state = CharField(max_length=8, default="queued")
    envelope = JSONField()
    content = pw.BlobField()  # the message as received (not ``raw``: a Model method)
    size = pw.IntegerField()
    attempts = pw.IntegerField(default=0)
    next_attempt_at = pw.DoubleField(default=0.0)  # epoch seconds
    claimed_by = pw.TextField(null=True)  # "<host>:<data dir>/<pid>": no length to cut
    lease_until = pw.DoubleField(null=True)  # epoch seconds
    last_error = pw.TextField(null=True)
    received_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("state", "id"), False),)


class JobRun(BaseModel):
    """One run of a scheduled job. ``(job, tick)`` is unique: whichever instance runs a
    tick first records it, any other instance skips that tick."""

    id = pw.AutoField()
    job = CharField(max_length=32)
    tick = pw.BigIntegerField()
    instance = pw.TextField()
    started_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)
    outcome = CharField(max_length=16, null=True)

    class Meta:
        indexes = ((("job", "tick"), True),)


SCALING_MODELS: tuple[type[BaseModel], ...] = (SpoolMessage, JobRun)
MODELS = (*MODELS, *SCALING_MODELS)
