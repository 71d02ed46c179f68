"""Applying a decision: the only place where eLeads become Prospects and Lead Sources.

Every function here runs inside one database transaction (a savepoint when the caller
already holds one), so a crash leaves either the whole conversion or none of it. Both the
automatic path (the pipeline, after ``daemon.match.match_lead``) and the human paths
(``eleads convert``, and reply commands) come through here, and each records an
AuditEvent saying who decided what, with the candidates that were on the table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import peewee as pw

from daemon.db import lock_account, write_transaction
from daemon.db.fast import create_row, get_row, update_row
from daemon.db.models import AuditEvent, ELead, LeadSource, Prospect, database_proxy, utcnow
from daemon.errors import CommandError, UsageError
from daemon.match import Candidate, Decision
from daemon.prospects import create_prospect, fill_empty_fields

log = logging.getLogger(__name__)

#: eLead states a human may still decide on.
OPEN_STATES = ("received", "unconverted", "failed_parse", "ignored")


@dataclass(frozen=True)
class Conversion:
    outcome: str  # matched | created | fuzzy | ignored
    elead: str
    prospect: str | None = None
    detail: str = ""


def candidate_row(rank: int, candidate: Candidate) -> dict[str, Any]:
    """How a candidate is stored on the eLead (and shown by `eleads show`)."""
    return {
        "rank": rank,
        "prospect": candidate.pid,
        "score": round(candidate.score, 3),
        "verdict": candidate.verdict,
        "reasons": list(candidate.reasons),
        "conflict": candidate.conflict,
        "summary": dict(candidate.summary),
    }


def _lead_source(elead: ELead, prospect: Prospect, lead: Mapping[str, Any]) -> None:
    create_row(
        LeadSource,
        prospect=prospect,
        elead=elead,
        source=lead.get("source"),
        external_id=lead.get("external_id"),
        interest=lead.get("interest"),
        comments=lead.get("comments"),
        location=lead.get("location") or elead.location,
        received_at=elead.received_at,
    )


def _audit(
    elead: ELead, action: str, actor: str, prospect: Prospect | None, detail: dict[str, Any]
) -> None:
    create_row(
        AuditEvent,
        actor=actor,
        action=action,
        account=elead.account_id,
        elead=elead,
        prospect=prospect,
        detail=detail,
    )


def _finish(elead: ELead, state: str, prospect: Prospect | None) -> None:
    elead.state = state
    elead.prospect = prospect
    elead.updated_at = utcnow()
    update_row(elead, "state", "prospect", "candidates", "updated_at")


def apply_decision(
    elead: ELead, lead: Mapping[str, Any], decision: Decision, *, actor: str
) -> Conversion:
    """The automatic path: a fresh eLead and what the matcher decided for it."""
    assert elead.account_id is not None
    ranked = [candidate_row(i + 1, c) for i, c in enumerate(decision.candidates)]
    detail = {"candidates": ranked, "reasons": list(decision.reasons)}
    with database_proxy.atomic():
        elead.candidates = ranked
        # Every outcome counts conflicts (a family mailbox: Nina matches, Paul conflicts);
        # the matcher stops trusting a contact shared by too many names.
        conflicted = [c.prospect_id for c in decision.candidates if c.conflict]
        if conflicted:
            Prospect.update(conflicting_leads=Prospect.conflicting_leads + 1).where(
                Prospect.id.in_(conflicted)
            ).execute()
        if decision.outcome == "fuzzy":
            _finish(elead, "unconverted", None)
            _audit(elead, "elead_fuzzy", actor, None, detail)
            return Conversion(
                "fuzzy",
                elead.public_id,
                ranked[0]["prospect"] if ranked else None,
                "needs a decision: " + "; ".join(decision.reasons),
            )
        if decision.outcome == "matched":
            prospect = get_row(Prospect, decision.prospect_id)
            filled = fill_empty_fields(prospect, lead)
            detail["filled"] = filled
        else:
            prospect = create_prospect(lead, account=elead.account_id)
        _lead_source(elead, prospect, lead)
        _finish(elead, "converted", prospect)
        _audit(elead, f"elead_{decision.outcome}", actor, prospect, detail)
    what = "added to" if decision.outcome == "matched" else "new prospect"
    return Conversion(decision.outcome, elead.public_id, prospect.pid, f"{what} {prospect.pid}")


def _open_elead(elead_id: int) -> ELead:
    elead = ELead.get_or_none(ELead.id == elead_id)
    if elead is None:
        raise UsageError(f"no eLead E-{elead_id}")
    if elead.state == "converted":
        prospect = elead.prospect.pid if elead.prospect is not None else "?"
        last = (
            AuditEvent.select()
            .where(AuditEvent.elead == elead)
            .order_by(AuditEvent.at.desc())
            .first()
        )
        who = f" by {last.actor} at {last.at:%Y-%m-%d %H:%M}" if last else ""
        raise CommandError(f"eLead E-{elead_id} is already converted to {prospect}{who}")
    return elead


def convert_manual(
    elead_id: int, *, use: str | None = None, new: bool = False, actor: str
) -> Conversion:
    """A human's decision: add the eLead to prospect ``use``, or make a new prospect."""
    if (use is None) == (not new):
        raise UsageError("give exactly one of --use PROSPECT_ID or --new")
    with write_transaction():
        elead = _open_elead(elead_id)
        assert elead.account_id is not None
        # PostgreSQL: one decision at a time per account (no second prospect made for
        # the same person beside us), then the eLead read again under that lock.
        lock_account(elead.account_id)
        elead = _open_elead(elead_id)
        assert elead.account_id is not None
        lead = dict((elead.parse or {}).get("lead") or {})
        if use is not None:
            prospect = Prospect.get_or_none(
                (Prospect.account == elead.account_id) & (pw.fn.UPPER(Prospect.pid) == use.upper())
            )
            if prospect is None:
                raise UsageError(f"no prospect {use} in account {elead.account_id}")
            filled = fill_empty_fields(prospect, lead)
            outcome, detail = "matched", {"use": prospect.pid, "filled": filled}
        else:
            prospect = create_prospect(lead, account=elead.account_id)
            outcome, detail = "created", {"new": prospect.pid}
        _lead_source(elead, prospect, lead)
        previous = elead.state
        _finish(elead, "converted", prospect)
        _audit(elead, "elead_converted", actor, prospect, {**detail, "from_state": previous})
    log.info(
        "event=elead_converted elead=%s prospect=%s actor=%s", elead.public_id, prospect.pid, actor
    )
    what = "added to" if outcome == "matched" else "new prospect"
    return Conversion(outcome, elead.public_id, prospect.pid, f"{what} {prospect.pid}")


def ignore(elead_id: int, *, actor: str) -> Conversion:
    """Resolved without creating anything (a human said IGNORE)."""
    with write_transaction():
        elead = _open_elead(elead_id)
        previous = elead.state
        _finish(elead, "ignored", None)
        _audit(elead, "elead_ignored", actor, None, {"from_state": previous})
    return Conversion("ignored", elead.public_id, None, "left unconverted, marked resolved")
