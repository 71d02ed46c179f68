"""The durable outbox: notifications are queued as rows in the caller's transaction.

Queueing happens INSIDE the transaction of the change that causes it (the conversion of
an eLead, a reply command), so a notification exists exactly when that change committed:
a rolled-back conversion leaves no email behind, and a committed one cannot lose its
email. Sending is someone else's job (sender.py), after the commit.

Each row stores everything needed to build the same email again (render.py): template
name, context as plain JSON (a snapshot: later changes to the eLead do not alter an email
already queued), Date, and a Message-ID fixed here. A resend after a crash is therefore
the same message with the same Message-ID.

Kinds and who gets them (``accounts[].notifications.<kind>``; an empty list queues
nothing for that kind):

- ``received``          every eLead: who, what, source, and what eleads did with it;
- ``appointment``       the lead asked for an appointment (requested time up front);
- ``conversion_issue``  fuzzy match or unparseable lead: candidates, and how to answer
                        by reply (a single-use ``+r-<token>`` Reply-To);
- ``command_result`` / ``return_lead``: through :func:`queue_message` by their callers.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, cast

from daemon.config import AccountSettings, OutboundSettings, Settings
from daemon.db.fast import create_row
from daemon.db.models import ELead, LeadSource, Notification, Prospect, naive_utc
from daemon.notify.render import (
    appointment_info,
    clean_header,
    display_time,
    format_address,
    format_name,
    format_phone,
    mailto,
)

log = logging.getLogger(__name__)

#: Message-ID prefixes; ``ci.E-<n>.`` is what daemon/parse/classify.py recognises.
ID_PREFIX = {
    "received": "rx",
    "appointment": "ap",
    "conversion_issue": "ci",
    "command_result": "cr",
    "return_lead": "rl",
}
OUTCOME_TEXT = {
    "created": "new prospect {pid}",
    "matched": "added to prospect {pid}",
    "fuzzy": "needs a decision",
    "failed": "could not be parsed",
    "ignored": "ignored",
}
_MSGID = re.compile(r"<[^<>\s]{1,250}>")
_LEAD_ROWS = (
    ("Email", "email"),
    ("Phone", "phone"),
    ("Alt. phone", "phone_alt"),
    ("Address", None),
    ("Interest", "interest"),
    ("Comments", "comments"),
    ("Source", "source"),
    ("Provider lead id", "external_id"),
    ("Location", "location"),
)


def make_message_id(kind: str, elead: str | None, *, domain: str, now: datetime) -> str:
    """``<ci.E-12.20261117124602.9f3a1c2b@domain>``: kind, eLead, time and randomness."""
    middle = f"{elead}." if elead else ""
    stamp = f"{naive_utc(now):%Y%m%d%H%M%S}"
    return f"<{ID_PREFIX.get(kind, 'n')}.{middle}{stamp}.{secrets.token_hex(4)}@{domain}>"


def reply_address(token: str, outbound: OutboundSettings) -> str:
    return f"{outbound.reply_local}+r-{token}@{outbound.reply_domain}"


def message_ids(value: str | Sequence[str] | None) -> list[str]:
    """The ``<...>`` ids in a header value (hostile input: nothing else survives)."""
    if not value:
        return []
    text = value if isinstance(value, str) else " ".join(value)
    return _MSGID.findall(text)


def lead_context(
    elead: ELead, *, settings: Settings, outcome: str, prospect_pid: str | None
) -> dict[str, Any]:
    """What every notification about an eLead shows (JSON only: it is stored)."""
    lead: dict[str, Any] = dict((elead.parse or {}).get("lead") or {})
    account = settings.account(elead.account_id or "")
    region = account.country if account else "US"
    rows: list[list[str]] = [["Name", format_name(lead) or "(no name)"]]
    for label, key in _LEAD_ROWS:
        value = format_address(lead) if key is None else lead.get(key)
        if key in ("phone", "phone_alt"):
            value = format_phone(value, region)
        if value:
            rows.append([label, str(value)])
    status = OUTCOME_TEXT.get(outcome, outcome).format(pid=prospect_pid or "?")
    return {
        "elead": elead.public_id,
        "account": {"id": elead.account_id, "name": account.name if account else None},
        "location": lead.get("location") or elead.location,
        "received": display_time(elead.received_at),
        "outcome": outcome,
        "outcome_text": status,
        "prospect": prospect_pid,
        "state": elead.state,
        "name": format_name(lead) or "(no name)",
        "source": lead.get("source"),
        "external_id": lead.get("external_id"),
        "rows": rows,
        "problems": [str(p) for p in (elead.problems or [])],
        "appointment": appointment_info(lead),
        "source_message_id": elead.message_id,
    }


def _last_sources(account: str | None, pids: list[str]) -> dict[str, str]:
    """Per prospect id, its newest Lead Source as ``name, date``."""
    if not account or not pids:
        return {}
    query: Any = (
        LeadSource.select(Prospect.pid, LeadSource.source, LeadSource.received_at)
        .join(Prospect)
        .where((Prospect.account == account) & Prospect.pid.in_(pids))
        .order_by(LeadSource.received_at.desc())
        .tuples()  # no model per row: a shared contact can have hundreds of sources
    )
    found: dict[str, str] = {}
    for pid, source, received_at in query:
        if pid not in found:
            found[pid] = f"{source or 'unknown source'}, {received_at:%d %b %Y}"
    return found


def _candidates(elead: ELead, region: str, reply: tuple[str, str]) -> list[dict[str, Any]]:
    ranked = sorted(elead.candidates or [], key=lambda c: int(c.get("rank") or 0))
    last = _last_sources(elead.account_id, [str(c.get("prospect")) for c in ranked])
    out = []
    for cand in ranked:
        summary = cand.get("summary") or {}
        pid = str(cand.get("prospect"))
        contact = [
            x for x in (format_phone(summary.get("phone"), region), summary.get("email")) if x
        ]
        score = cand.get("score")
        out.append(
            {
                "rank": cand.get("rank"),
                "prospect": pid,
                "score": f"{float(score):.2f}" if isinstance(score, int | float) else None,
                "verdict": cand.get("verdict"),
                "name": summary.get("name") or format_name(summary) or "(no name)",
                "contact": ", ".join(str(x) for x in contact) or None,
                "address": format_address(summary),
                "last_source": last.get(pid),
                "reasons": [str(r) for r in cand.get("reasons") or []],
                "conflict": bool(cand.get("conflict")),
                "warning": cand.get("warning"),
                "use_mailto": mailto(*reply, f"USE {pid}"),
            }
        )
    return out


def _commands(candidates: list[dict[str, Any]], reply: tuple[str, str]) -> list[dict[str, str]]:
    rows = [
        (f"USE {c['rank']}", f"use candidate {c['rank']} ({c['prospect']})") for c in candidates
    ]
    rows += [
        ("USE P1234", "use another prospect, by its id"),
        ("NEW", "create a new prospect for this lead"),
        ("IGNORE", "leave it unconverted"),
        ("HELP", "show these instructions again"),
    ]
    # "USE P1234" is an example: its link starts the command and the reader adds the id.
    return [
        {
            "command": cmd,
            "meaning": meaning,
            "mailto": mailto(*reply, "USE P" if cmd == "USE P1234" else cmd),
        }
        for cmd, meaning in rows
    ]


def queue_message(
    *,
    kind: str,
    to: Sequence[str],
    subject: str,
    template: str,
    context: Mapping[str, Any],
    settings: Settings,
    now: datetime,
    account: str | None = None,
    elead: ELead | int | None = None,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    references: str | Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    attachments: Sequence[Mapping[str, Any]] = (),
    message_id: str | None = None,
) -> Notification | None:
    """Queue one email in the caller's transaction; None (nothing) when ``to`` is empty.

    ``in_reply_to``/``references`` take the Message-IDs of the mail being answered
    (command results); only ``<...>`` ids are kept from them.
    """
    recipients = [a.strip().lower() for a in to if a and a.strip()]
    if not recipients:
        return None
    elead_id = elead.id if isinstance(elead, ELead) else elead
    public = f"E-{elead_id}" if elead_id is not None else None
    when = naive_utc(now)
    stored = {k: clean_header(v, limit=900) for k, v in (headers or {}).items() if v}
    stored["Date"] = format_datetime(when.replace(tzinfo=UTC))
    stored["X-Eleads-Kind"] = kind
    if public:
        stored["X-Eleads-ELead"] = public
    parent = message_ids(in_reply_to)[:1]
    refs = message_ids(references)[-20:]
    if parent:
        stored["In-Reply-To"] = parent[0]
        stored["References"] = " ".join([*(r for r in refs if r != parent[0]), parent[0]])
    row = create_row(
        Notification,
        account=account,
        kind=kind,
        to=recipients,
        subject=clean_header(subject),
        reply_to=reply_to,
        message_id=message_id
        or make_message_id(kind, public, domain=settings.outbound.reply_domain, now=when),
        payload={
            "template": template,
            "context": dict(context),
            "headers": stored,
            "attachments": [dict(a) for a in attachments],
        },
        status="queued",
        attempts=0,
        next_attempt_at=when,
        elead=elead_id,
        created_at=when,
    )
    log.debug("event=notification_queued id=%d kind=%s elead=%s", row.id, kind, public)
    return row


def _queue_conversion_issue(
    elead: ELead,
    base: dict[str, Any],
    *,
    account: AccountSettings,
    settings: Settings,
    now: datetime,
) -> Notification | None:
    to = account.notifications.conversion_issue
    if not to:
        return None
    # Imported here, not at the top: daemon.commands (the reply commands) imports
    # convert.py, which queues notifications through this module - a cycle at import.
    from daemon.commands.tokens import issue_token

    ttl = timedelta(days=settings.outbound.token_ttl_days)
    token = issue_token(elead.id, account.id, ttl=ttl, now=now)
    address = reply_address(token, settings.outbound)
    failed = elead.state == "failed_parse"
    why = "could not be parsed" if failed else "needs a decision"
    subject = f"Conversion issue: eLead {elead.public_id} {why}"
    reply = (address, f"Re: {subject}")
    candidates = [] if failed else _candidates(elead, account.country, reply)
    context = {
        **base,
        "reason": "failed_parse" if failed else "fuzzy",
        "candidates": candidates,
        "commands": _commands(candidates, reply),
        "reply_address": address,
        "expires": f"{naive_utc(now) + ttl:%a %d %b %Y}",
    }
    raw_path = elead.message.raw_path if failed else None
    return queue_message(
        kind="conversion_issue",
        to=to,
        subject=subject,
        template="conversion_issue",
        context=context,
        settings=settings,
        now=now,
        account=account.id,
        elead=elead,
        reply_to=address,
        headers=_source_headers(elead),
        attachments=[{"type": "original", "path": raw_path}] if raw_path else (),
    )


def _source_headers(elead: ELead) -> dict[str, str]:
    ids = message_ids(f"<{(elead.message_id or '').strip('<>')}>")
    return {"X-Eleads-Source-Message-ID": ids[0]} if ids else {}


def queue_for_elead(
    elead: ELead, *, settings: Settings, outcome: str, prospect_pid: str | None, now: datetime
) -> list[Notification]:
    """Queue the received / appointment / conversion_issue emails one eLead calls for.

    ``outcome``: created | matched | fuzzy | failed (failed_parse). Call it inside the
    transaction that recorded the outcome.
    """
    account = settings.account(elead.account_id or "")
    if account is None:
        return []
    if elead.state == "failed_parse":
        outcome = "failed"
    if outcome in ("fuzzy", "failed"):
        prospect_pid = None  # convert.py reports the top candidate here: not a decision
    base = lead_context(elead, settings=settings, outcome=outcome, prospect_pid=prospect_pid)
    common: dict[str, Any] = {
        "settings": settings,
        "now": now,
        "account": account.id,
        "elead": elead,
        "headers": _source_headers(elead),
    }
    queued: list[Notification | None] = []
    source = f" ({base['source']})" if base["source"] else ""
    queued.append(
        queue_message(
            kind="received",
            to=account.notifications.received,
            template="received",
            subject=f"New eLead {elead.public_id}: {base['name']}{source} - {base['outcome_text']}",
            context={**base, "kind": "received"},
            **common,
        )
    )
    if base["appointment"] is not None:
        when = base["appointment"]["at"] or "time not given"
        queued.append(
            queue_message(
                kind="appointment",
                to=account.notifications.appointment,
                template="appointment",
                subject=f"Appointment requested: {base['name']}, {when} (eLead {elead.public_id})",
                context={**base, "kind": "appointment"},
                **common,
            )
        )
    if outcome in ("fuzzy", "failed"):
        queued.append(
            _queue_conversion_issue(
                elead,
                {**base, "kind": "conversion_issue"},
                account=account,
                settings=settings,
                now=now,
            )
        )
    return [n for n in queued if n is not None]


def outbox_row(row: Notification) -> dict[str, Any]:
    """One notification in the ``eleads outbox --json`` shape (DESIGN.md)."""
    elead_id = cast(Any, row).elead_id
    return {
        "id": row.id,
        "kind": row.kind,
        "to": list(row.to or []),
        "subject": row.subject,
        "reply_to": row.reply_to,
        "status": row.status,
        "elead": f"E-{elead_id}" if elead_id is not None else None,
        "path": row.path,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "message_id": row.message_id,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "sent_at": row.sent_at.isoformat() if row.sent_at else None,
    }


def list_outbox(*, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Data of ``eleads outbox [--json]``: every notification, oldest first."""
    query = Notification.select().order_by(Notification.id)
    if status is not None:
        query = query.where(Notification.status == status)
    if limit is not None:
        query = query.limit(limit)
    return [outbox_row(row) for row in query]
