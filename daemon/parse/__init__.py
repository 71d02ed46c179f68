"""Parsing: raw message bytes in, one ``ParseResult`` out, no I/O and no database.

    decode -> classify (bounce, auto-reply, reply, lead?) -> unwrap forwards -> lead parsers

``parse_message`` never raises: an exception inside a stage becomes ``kind="unknown"``
with the problem ``internal error in <stage>: <ExcType>`` and one log line (no body text),
so one hostile message cannot stop the pipeline. ``eleads parse`` prints
``parse_message(raw).as_json()``.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.parse.model import DecodedMessage, ParseContext, ParseResult

if TYPE_CHECKING:
    from daemon.parse.leads import LeadExtraction
    from daemon.parse.rules import RuleSet

# The stages are imported by the functions that run them: the daemon process imports this
# package for its rule checks (rules.py, labels.py) and never parses a message itself.
__all__ = ["ParseContext", "ParseResult", "parse_message"]

log = logging.getLogger(__name__)
_DEFAULT_CONTEXT = ParseContext()


@dataclass
class _Run:
    """State of one parse, so the error handler knows the stage and the Message-ID."""

    ctx: ParseContext
    rules: RuleSet | None
    stage: str = "decode"
    msg: DecodedMessage | None = None
    original: DecodedMessage | None = None
    extraction: LeadExtraction | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def lead_test(self, msg: DecodedMessage) -> bool:
        """Classify's lead rule: unwrap a forward, then ask the lead parsers."""
        from daemon.parse.forwards import unwrap_forward

        self.stage = "forwards"
        self.original = unwrap_forward(msg)
        self.stage = "leads"
        self.extraction = _extract_lead(self.original, self.ctx, self.rules)
        self.stage = "classify"
        return self.extraction is not None


def _extract_lead(
    msg: DecodedMessage, ctx: ParseContext, rules: RuleSet | None
) -> LeadExtraction | None:
    """The lead parsers, imported on first use: they load rules/, pydantic and phonenumbers,
    which ``decode_message`` users do not need."""
    from daemon.parse.leads import extract_lead

    return extract_lead(msg, ctx=ctx, rules=rules)


def parse_message(
    raw: bytes, *, ctx: ParseContext = _DEFAULT_CONTEXT, rules: RuleSet | None = None
) -> ParseResult:
    """Decode, classify and parse one message; never raises."""
    run = _Run(ctx=ctx, rules=rules)
    try:
        return _parse(raw, run)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        return _internal_error(run, exc)


def _parse(raw: bytes, run: _Run) -> ParseResult:
    from daemon.parse.classify import classify, referenced_elead, subject_elead
    from daemon.parse.decode import decode_message
    from daemon.parse.replies import extract_command

    msg = run.msg = decode_message(raw)
    run.stage = "classify"
    verdict = classify(msg, lead_test=run.lead_test)
    problems = [f"decode: {d}" for d in msg.defects]
    lead = command = None
    rule = verdict.rule
    if verdict.kind == "reply":
        run.stage = "replies"
        command = extract_command(msg)
        elead = referenced_elead(msg) or subject_elead(msg)
        if elead:
            run.extra["elead_ref"] = elead
    elif verdict.kind == "lead" and (extraction := run.extraction) is not None:
        rule = extraction.rule
        lead = dict(extraction.lead)
        if run.ctx.account is not None and lead.get("account") is None:
            lead["account"] = run.ctx.account
        problems.extend(extraction.problems)
        if run.original is not None and run.original is not msg:
            run.extra["forwarded_by"] = msg.from_addr
    elif verdict.kind == "unknown":
        problems.append("not recognised as a lead, reply, auto-reply or bounce")
    run.extra["classifier"] = verdict.rule
    return ParseResult(
        kind=verdict.kind,
        rule=rule,
        lead=lead,
        command=command,
        problems=tuple(problems),
        message_id=msg.message_id,
        subject=msg.subject,
        sender=msg.from_addr,
        date=msg.date,
        extra=run.extra,
    )


def _internal_error(run: _Run, exc: Exception) -> ParseResult:
    """Log where it failed (type and code location only: no message text) and go on."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
    msg = run.msg
    log.error(
        "internal error in %s: %s at %s (message_id=%s)",
        run.stage,
        type(exc).__name__,
        where,
        msg.message_id if msg else None,
    )
    return ParseResult(
        kind="unknown",
        rule="internal-error",
        problems=(f"internal error in {run.stage}: {type(exc).__name__}",),
        message_id=msg.message_id if msg else None,
        subject=msg.subject if msg else "",
        sender=msg.from_addr if msg else None,
        date=msg.date if msg else None,
    )
