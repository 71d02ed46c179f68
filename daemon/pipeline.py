"""From a spooled message to its durable effects: dedupe, parse, archive, record.

``Pipeline.process`` runs on the DB thread (or in the CLI) and is the one place where a
spooled message turns into database rows. Its order is what makes retries safe:

1. the dedupe key (Message-ID + body hash) already recorded -> finish, nothing new;
2. parse (pure; never raises);
3. hard-link the spool file into ``messages/`` (the raw bytes outlive the spool);
4. one transaction: InboundMessage, eLead, match and conversion (convert.py), the
   notifications it calls for (notify/outbox.py), audit; or, for a reply, the command
   (commands/handle.py) and its result email;
5. only then remove the spool file.

A crash between any two steps leaves the message in the spool; the retry finds the link
already made (3) or the row already committed (1) and finishes without doubling anything.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any

import peewee as pw

from daemon.commands.handle import ReplyHandler
from daemon.config import Settings
from daemon.convert import apply_decision
from daemon.db import lock_account, write_transaction
from daemon.db.fast import create_row, update_row
from daemon.db.models import (
    AuditEvent,
    ELead,
    InboundMessage,
    database_proxy,
    naive_utc,
    utcnow,
)
from daemon.match import match_lead
from daemon.notify.outbox import queue_for_elead
from daemon.parse import parse_message
from daemon.parse.model import ParseContext, ParseResult
from daemon.routing import route_recipient
from daemon.spool import Envelope, SpoolEntry, SpoolStore
from daemon.visits.links import index_elead

log = logging.getLogger(__name__)

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class _Prepared:
    entry: SpoolEntry
    key: str
    size: int
    raw_path: str
    result: ParseResult
    account_id: str | None
    location: str | None
    raw: bytes = b""  # kept for replies only (Authentication-Results)


@dataclass(frozen=True)
class Outcome:
    """One line of ``eleads ingest --json``."""

    message_id: str | None
    outcome: str  # created|matched|fuzzy|duplicate|reply|dropped|failed|received
    elead: str | None = None
    prospect: str | None = None
    detail: str = ""
    spool_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "outcome": self.outcome,
            "elead": self.elead,
            "prospect": self.prospect,
            "detail": self.detail,
        }


def recorded_outcome(row: InboundMessage) -> Outcome:
    """The Outcome of a message already processed, as its row recorded it."""
    elead = row.eleads.first()
    prospect = elead.prospect.pid if elead and elead.prospect is not None else None
    return Outcome(
        row.message_id,
        row.outcome,
        elead.public_id if elead else None,
        prospect,
        detail=row.detail or "",
        spool_id=row.spool_id,
    )


def split_head_body(raw: bytes) -> tuple[bytes, bytes]:
    normalised = raw.replace(b"\r\n", b"\n")
    head, _, body = normalised.partition(b"\n\n")
    return head, body


def header_message_id(raw: bytes) -> str | None:
    head, _ = split_head_body(raw)
    match = _MESSAGE_ID.search(head)
    if not match:
        return None
    value = re.sub(rb"\s+", b"", match.group(1)).decode("ascii", "replace").strip("<>")
    return value or None


def header_recipients(raw: bytes) -> list[str]:
    """Addresses in Delivered-To, X-Original-To, To and Cc (for mail without an envelope)."""
    head, _ = split_head_body(raw)
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n\n")
    except Exception:  # noqa: BLE001 - a broken header block routes nowhere
        return []
    values: list[str] = []
    for name in ("delivered-to", "x-original-to", "to", "cc"):
        values.extend(str(v) for v in headers.get_all(name, []))
    return [addr.lower() for _, addr in getaddresses(values) if "@" in addr]


def dedupe_key(raw: bytes) -> str:
    """Same Message-ID and same body = the same message, however often delivered.

    Trace headers differ between deliveries (Received, Delivered-To), so only the
    Message-ID and the body count; without a Message-ID the whole header block counts
    minus the trace headers.
    """
    head, body = split_head_body(raw)
    message_id = header_message_id(raw)
    digest = hashlib.sha256()
    if message_id:
        digest.update(b"mid:" + message_id.lower().encode())
    else:
        kept = [
            line
            for line in head.split(b"\n")
            if not re.match(rb"(?i)(received|return-path|delivered-to|x-original-to)\s*:", line)
        ]
        digest.update(b"head:" + b"\n".join(kept))
    digest.update(b"\0body:" + body)
    return digest.hexdigest()


class Pipeline:
    """Turns claimed spool entries into database rows; see the module docstring."""

    def __init__(self, *, settings: Settings, spool: SpoolStore, rules: Any = None) -> None:
        self.settings = settings
        self.spool = spool
        self.rules = rules

    def _archive(self, entry: SpoolEntry, *, repair: bool = False) -> str:
        return self.spool.archive(entry, self.settings.messages_dir, repair=repair)

    def _account_for(self, envelope: Envelope) -> tuple[str | None, str | None]:
        if envelope.account:
            return envelope.account, envelope.location
        for rcpt in envelope.rcpt_tos:
            route = route_recipient(self.settings, rcpt)
            if route is not None and route.account:
                return route.account, route.location
        if self.settings.catch_all_single_account and len(self.settings.accounts) == 1:
            return self.settings.accounts[0].id, None
        return None, None

    def _parse(self, raw: bytes, account_id: str | None) -> ParseResult:
        account = self.settings.account(account_id) if account_id else None
        ctx = ParseContext(default_region=account.country if account else "US", account=account_id)
        return parse_message(raw, ctx=ctx, rules=self.rules)

    def process(self, entry: SpoolEntry) -> Outcome:
        """One entry; raises what ``process_batch`` would have returned for it."""
        result = self.process_batch([entry])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def process_batch(self, entries: list[SpoolEntry]) -> list[Outcome | Exception]:
        """Process entries in one transaction, each in its own savepoint.

        Returns, per entry, its Outcome or the exception that stopped it; the caller
        defers or fails the latter. Entries with an Outcome are finished (spool file gone).
        """
        results: dict[str, Outcome | Exception] = {}
        prepared: list[_Prepared] = []
        raws: dict[str, tuple[bytes, str]] = {}
        for entry in entries:
            try:
                raw = self.spool.read_raw(entry)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, entry retried
                results[entry.id] = exc
                continue
            raws[entry.id] = (raw, dedupe_key(raw))
        known = self._known([key for _, key in raws.values()])
        for entry in entries:
            if entry.id not in raws:
                continue
            raw, key = raws[entry.id]
            try:
                ready = self._prepare(entry, raw, key, known.get(key))
            except Exception as exc:  # noqa: BLE001 - reported to the caller, entry retried
                results[entry.id] = exc
                continue
            if isinstance(ready, Outcome):
                results[entry.id] = ready
            else:
                prepared.append(ready)
        if prepared:
            try:
                with write_transaction():
                    # Every account of the batch, in one order for all instances: taken lead
                    # by lead, two batches holding [x, y] and [y, x] would deadlock.
                    for account_id in sorted({i.account_id for i in prepared if i.account_id}):
                        lock_account(account_id)
                    for item in prepared:
                        results[item.entry.id] = self._record_savepoint(item)
            except Exception as exc:  # noqa: BLE001 - the commit failed: retry them all
                for item in prepared:
                    results[item.entry.id] = exc
        accounts = {item.entry.id: item.account_id for item in prepared}
        self.spool.complete_many([e for e in entries if isinstance(results[e.id], Outcome)])
        for entry in entries:
            outcome = results[entry.id]
            if isinstance(outcome, Outcome):
                log.info(
                    "event=message_processed spool_id=%s message_id=%s listener=%s "
                    "account=%s outcome=%s elead=%s detail=%s",
                    entry.id,
                    outcome.message_id,
                    entry.envelope.listener,
                    accounts.get(entry.id),
                    outcome.outcome,
                    outcome.elead,
                    outcome.detail,
                )
        return [results[entry.id] for entry in entries]

    @staticmethod
    def _known(keys: list[str]) -> dict[str, InboundMessage]:
        """Rows already stored for these dedupe keys: one query for the whole batch."""
        if not keys:
            return {}
        query = InboundMessage.select().where(InboundMessage.dedupe_key.in_(keys))
        return {row.dedupe_key: row for row in query}

    def _prepare(
        self, entry: SpoolEntry, raw: bytes, key: str, existing: InboundMessage | None
    ) -> _Prepared | Outcome:
        """Everything that needs no transaction: dedupe check, parse, archive."""
        if existing is not None:
            if existing.spool_id == entry.id:
                self._archive(entry, repair=True)  # replayed after a crash: check the copy
            return self._repeat_outcome(existing, entry)
        account_id, location = self._account_for(entry.envelope)
        if account_id is None:
            # IMAP and ingest have no RCPT step: route by the message's own recipients.
            account_id, location = self._route_by_headers(raw)
        result = self._parse(raw, account_id)
        raw_path = self._archive(entry)
        keep = raw if result.kind == "reply" else b""
        return _Prepared(entry, key, len(raw), raw_path, result, account_id, location, keep)

    def _record_savepoint(self, item: _Prepared) -> Outcome | Exception:
        try:
            with database_proxy.atomic():
                return self._record(item)
        except pw.IntegrityError as exc:
            # The same message twice in one batch: the first one's row is visible now.
            existing = InboundMessage.get_or_none(InboundMessage.dedupe_key == item.key)
            if existing is None:
                return exc
            return self._repeat_outcome(existing, item.entry)
        except Exception as exc:  # noqa: BLE001 - only this entry is rolled back
            return exc

    def _route_by_headers(self, raw: bytes) -> tuple[str | None, str | None]:
        for address in header_recipients(raw):
            route = route_recipient(self.settings, address)
            if route is not None and route.account:
                return route.account, route.location
        return None, None

    def _repeat_outcome(self, existing: InboundMessage, entry: SpoolEntry) -> Outcome:
        if existing.spool_id == entry.id:  # our own retry after a crash past the commit
            return recorded_outcome(existing)
        first = recorded_outcome(existing)
        log.info(
            "event=duplicate spool_id=%s message_id=%s elead=%s first_spool_id=%s",
            entry.id,
            existing.message_id,
            first.elead,
            existing.spool_id,
        )
        return Outcome(
            existing.message_id,
            "duplicate",
            first.elead,
            detail=f"already received as spool {existing.spool_id}",
            spool_id=entry.id,
        )

    def _record(self, item: _Prepared) -> Outcome:
        entry, result, account_id = item.entry, item.result, item.account_id
        envelope = entry.envelope
        outcome, detail = _classify_outcome(result, account_id)
        # Accounts are synced from config at start: the id is a valid foreign key as is.
        account = account_id
        message = create_row(
            InboundMessage,
            dedupe_key=item.key,
            spool_id=entry.id,
            message_id=result.message_id,
            listener=envelope.listener,
            # PostgreSQL text refuses NUL; the envelope is the one part decode never saw.
            mail_from=envelope.mail_from and envelope.mail_from.replace("\x00", ""),
            rcpt_tos=[r.replace("\x00", "") for r in envelope.rcpt_tos],
            account=account,
            raw_path=str(item.raw_path),
            size=item.size,
            kind=result.kind,
            outcome=outcome,
            detail=detail,
            received_at=_parse_time(envelope.received_at),
        )
        final = self._dispatch(item, message, outcome, detail)
        if (final.outcome, final.detail) != (outcome, detail):
            # The row keeps what finally happened: a retry after a crash and `ingest`
            # handing over to a running daemon report the outcome from it.
            message.outcome, message.detail = final.outcome, final.detail
            update_row(message, "outcome", "detail")
        return final

    def _dispatch(
        self, item: _Prepared, message: InboundMessage, outcome: str, detail: str
    ) -> Outcome:
        entry, result, account_id = item.entry, item.result, item.account_id
        account = account_id
        if result.kind == "reply":
            answered = ReplyHandler(settings=self.settings, now=utcnow()).handle(result, item.raw)
            return Outcome(
                result.message_id,
                "reply",
                answered.elead,
                answered.prospect,
                detail=answered.detail,
                spool_id=entry.id,
            )
        if result.kind != "lead":
            return Outcome(result.message_id, outcome, detail=detail, spool_id=entry.id)
        lead = dict(result.lead or {})
        state = "failed_parse" if outcome == "failed" else "received"
        elead = create_row(
            ELead,
            account=account,
            message=message,
            message_id=result.message_id,
            location=lead.get("location") or item.location,
            state=state,
            rule=result.rule,
            parse=result.as_json(),
            problems=list(result.problems),
            header_date=_naive_utc(result.date),
            received_at=message.received_at,
        )
        actor = f"pipeline:{entry.envelope.listener}"
        create_row(
            AuditEvent,
            actor=actor,
            action=f"elead_{state}",
            account=account,
            elead=elead,
            detail={"rule": result.rule, "problems": list(result.problems)},
        )
        index_elead(elead, lead)  # visit logs: link the visitor id / lead email
        if state != "received" or account_id is None:
            # Kept as failed_parse: the Conversion Issue email says what was missing.
            queue_for_elead(
                elead, settings=self.settings, outcome="failed", prospect_pid=None, now=utcnow()
            )
            return Outcome(
                result.message_id, outcome, elead.public_id, detail=detail, spool_id=entry.id
            )
        # Reads see earlier messages of the same batch: two leads for one new person in
        # one batch give one prospect, not two; and process_batch holds this account's lock
        # (PostgreSQL: no concurrent "no match, create" by another instance's batch).
        decision = match_lead(lead, account=account_id, settings=self.settings.matching)
        conversion = apply_decision(elead, lead, decision, actor=actor)
        queue_for_elead(
            elead,
            settings=self.settings,
            outcome=conversion.outcome,
            prospect_pid=conversion.prospect,
            now=utcnow(),
        )
        return Outcome(
            result.message_id,
            conversion.outcome,
            elead.public_id,
            conversion.prospect,
            detail=conversion.detail,
            spool_id=entry.id,
        )


def _classify_outcome(result: ParseResult, account_id: str | None) -> tuple[str, str]:
    if result.kind == "lead":
        lead = result.lead or {}
        if account_id is None:
            return "failed", "no configured account for this message's recipients"
        if not (lead.get("email") or lead.get("phone")):
            return "failed", "lead without email or phone: " + "; ".join(result.problems)
        return "received", f"lead parsed by {result.rule}"  # then matched and converted
    if result.kind == "reply":
        return "reply", "reply command recorded"
    reason = {"auto_reply": "auto-reply", "bounce": "bounce"}.get(result.kind, "not a lead")
    problems = f": {'; '.join(result.problems)}" if result.problems else ""
    return "dropped", f"{reason} (kept in the message archive){problems}"


def _parse_time(value: str) -> datetime:
    try:
        return naive_utc(datetime.fromisoformat(value))
    except ValueError:
        return utcnow()


def _naive_utc(value: datetime | None) -> datetime | None:
    return None if value is None else naive_utc(value)
