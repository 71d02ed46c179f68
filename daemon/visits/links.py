"""Visitor <-> lead links.

Two ways a website visitor becomes a known lead:

- the lead email carries the visitor id (parsed field ``visitor_id``): linked when the
  eLead is recorded (:func:`index_elead`, called by the pipeline in its transaction);
- a ``form_submit`` event whose email equals (case-insensitively) the lead email of an
  eLead of the same account: linked by the visit job when it reads the event, or by
  :func:`index_elead` when the lead email arrives after the event was read (the usual
  order: the form posts, the site logs it, then emails the lead).

An imported Prospect without an eLead is not a lead here: nothing links to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from daemon.db.fast import statement
from daemon.db.models import ELead, LeadEmail, VisitForm, VisitorLink, database_proxy, utcnow

_CHUNK = 400


def _email(value: Any) -> str | None:
    if not isinstance(value, str) or "@" not in value:
        return None
    return value.strip().lower() or None


def index_elead(elead: ELead, lead: Mapping[str, Any]) -> int:
    """Record the lead email and visitor id of a new eLead; link matching visitors.

    Runs inside the caller's transaction; returns the number of links made.
    """
    account = elead.account_id
    if not account:
        return 0
    made = 0
    visitor = lead.get("visitor_id")
    if isinstance(visitor, str) and visitor.strip():
        made += link(account, visitor.strip(), elead.id, via="lead_field")
    email = _email(lead.get("email"))
    if email:
        # Statements rendered once (daemon/db/fast.py): this runs for every lead.
        values = (account, email, elead.id)
        insert = statement(
            "lead_email",
            lambda: LeadEmail.insert(
                account=values[0], email=values[1], elead=values[2]
            ).on_conflict_ignore(),
            values,
        )
        database_proxy.execute_sql(insert, values)
        forms = statement(
            "forms_by_email",
            lambda: VisitForm.select(VisitForm.visitor_id).where(
                (VisitForm.account == account) & (VisitForm.email == email)
            ),
            (account, email),
        )
        visitors = {vid for (vid,) in database_proxy.execute_sql(forms, (account, email))}
        for vid in sorted(visitors):
            made += link(account, vid, elead.id, via="form_submit")
    return made


def link(account: str, visitor_id: str, elead_id: int, *, via: str) -> int:
    """One link (idempotent: the unique index ignores a second); 1 when it is new."""
    values = (account, visitor_id, elead_id, via, utcnow())
    insert = statement(
        "visitor_link",
        lambda: VisitorLink.insert(
            account=values[0],
            visitor_id=values[1],
            elead=values[2],
            via=values[3],
            created_at=values[4],
        ).on_conflict_ignore(),
        values,
    )
    cursor = database_proxy.execute_sql(insert, values)
    return 1 if cursor.rowcount == 1 else 0


def link_forms(account: str, forms: Iterable[tuple[str, str]]) -> int:
    """Link visitors of ``(visitor_id, email)`` form events to eLeads with that email."""
    by_email: dict[str, set[str]] = {}
    for visitor, email in forms:
        by_email.setdefault(email, set()).add(visitor)
    emails = sorted(by_email)
    made = 0
    for i in range(0, len(emails), _CHUNK):
        chunk = emails[i : i + _CHUNK]
        rows = LeadEmail.select(LeadEmail.email, LeadEmail.elead).where(
            (LeadEmail.account == account) & LeadEmail.email.in_(chunk)
        )
        for row in rows:
            for visitor in sorted(by_email[row.email]):
                made += link(account, visitor, row.elead_id, via="form_submit")
    return made


def links_for(account: str, visitors: Iterable[str]) -> dict[str, list[int]]:
    """eLead ids linked to each of ``visitors`` (only visitors with links appear)."""
    ids = sorted(set(visitors))
    out: dict[str, list[int]] = {}
    for i in range(0, len(ids), _CHUNK):
        rows = VisitorLink.select(VisitorLink.visitor_id, VisitorLink.elead).where(
            (VisitorLink.account == account) & VisitorLink.visitor_id.in_(ids[i : i + _CHUNK])
        )
        for row in rows:
            out.setdefault(row.visitor_id, []).append(row.elead_id)
    return out


def index_existing_eleads() -> int:
    """Index every eLead already in the database (the schema upgrade that adds visits)."""
    made = 0
    for elead in ELead.select().where(ELead.account.is_null(False)).iterator():
        made += index_elead(elead, dict((elead.parse or {}).get("lead") or {}))
    return made
