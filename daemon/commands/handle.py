"""A reply to a Conversion Issue email: who may act on which eLead, then the command.

Order, each step able to stop the reply:

1. never answer ourselves (our From or reply address): mail loops end here;
2. find the eLead: the ``+r-<token>`` recipient (checked, not yet spent), else an eLead id
   from In-Reply-To/References or the Subject -- then only an eLead still unconverted;
3. the sender must be an authorised address of that eLead's account (its
   ``authorised_senders`` or any of its notification addresses);
4. an Authentication-Results header added by our own trusted relay that says dkim=fail or
   dmarc=fail refuses the reply without an answer (the From is probably forged);
5. run the command (``daemon/commands/<name>.py``); USE/NEW/IGNORE spend the token in the
   same transaction as the conversion, HELP and unknown commands leave it usable.

Every reply that reaches step 3 gets one result email; refusals, HELP and invalid commands
are answered at most ``replies.answers_per_sender`` times per window per sender. Auto-replies
and bounces never get here (the classifier drops them), and all our mail carries
Auto-Submitted, so two eleads instances cannot keep answering each other.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from daemon.commands.base import CommandContext, CommandResult
from daemon.commands.help import instructions
from daemon.commands.registry import COMMANDS, summaries
from daemon.commands.tokens import TokenGrant, check_token, consume_token
from daemon.config import AccountSettings, Settings
from daemon.db.models import AuditEvent, ELead, Notification, database_proxy
from daemon.notify.outbox import queue_message
from daemon.parse.model import ParseResult

log = logging.getLogger(__name__)

_RESULT = re.compile(r"(?i)\b(dkim|dmarc)\s*=\s*(fail|permerror)\b")


@dataclass(frozen=True)
class ReplyOutcome:
    elead: str | None
    detail: str
    prospect: str | None = None


def _addresses(account: AccountSettings) -> set[str]:
    n = account.notifications
    return {
        *account.authorised_senders,
        *n.received,
        *n.appointment,
        *n.conversion_issue,
        *n.return_lead,
    }


def _ours(sender: str, settings: Settings) -> bool:
    out = settings.outbound
    local, _, domain = sender.partition("@")
    return sender == out.from_address.lower() or (
        domain == out.reply_domain.lower() and local.split("+")[0] == out.reply_local.lower()
    )


def _auth_failed(raw: bytes, settings: Settings) -> bool:
    trusted = {t.lower() for t in settings.replies.trusted_authserv_ids}
    if not trusted:
        return False
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    headers = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n\n")
    for value in headers.get_all("authentication-results", []):
        authserv = str(value).split(";", 1)[0].strip().split()[0:1]
        if authserv and authserv[0].lower() in trusted and _RESULT.search(str(value)):
            return True
    return False


def _elead_from_reference(result: ParseResult) -> int | None:
    ref = result.extra.get("elead_ref")
    match = re.fullmatch(r"E-(\d+)", str(ref or ""))
    return int(match.group(1)) if match else None


class ReplyHandler:
    def __init__(self, *, settings: Settings, now: datetime) -> None:
        self.settings = settings
        self.now = now

    def handle(self, result: ParseResult, raw: bytes) -> ReplyOutcome:
        sender = (result.sender or "").lower()
        command = dict(result.command or {})
        if not sender or _ours(sender, self.settings):
            return ReplyOutcome(None, "reply from our own address: not answered (mail loop)")
        token = command.get("token")
        elead_id, refusal = self._find_elead(result, token)
        if elead_id is None:
            self._answer(sender, result, None, f"Not applied: {refusal}", (), limited=True)
            return ReplyOutcome(None, f"refused: {refusal}")
        elead = ELead.get_or_none(ELead.id == elead_id)
        account = self.settings.account(elead.account_id) if elead and elead.account_id else None
        if elead is None or account is None:
            return ReplyOutcome(f"E-{elead_id}", "refused: the eLead or its account is gone")
        if sender not in _addresses(account):
            self._audit(elead, sender, "reply_refused", {"reason": "unauthorised sender"})
            self._answer(
                sender,
                result,
                elead,
                "Not applied: this address may not answer for this account",
                (),
                limited=True,
            )
            return ReplyOutcome(elead.public_id, f"refused: unauthorised sender {sender}")
        if _auth_failed(raw, self.settings):
            self._audit(elead, sender, "reply_refused", {"reason": "authentication failed"})
            return ReplyOutcome(elead.public_id, "refused: DKIM/DMARC failed at our relay")
        return self._run(elead, sender, command, result, token)

    def _find_elead(self, result: ParseResult, token: str | None) -> tuple[int | None, str]:
        if token:
            verdict = check_token(token, now=self.now)
            if isinstance(verdict, TokenGrant):
                return verdict.elead_id, ""
            if verdict.kind == "used" and verdict.elead_id is not None:
                return verdict.elead_id, ""  # answered below: "already resolved"
            return None, verdict.message
        elead_id = _elead_from_reference(result)
        if elead_id is None:
            return None, "no eLead could be found for this reply"
        elead = ELead.get_or_none(ELead.id == elead_id)
        if elead is None or elead.state != "unconverted":
            return None, f"E-{elead_id} is not waiting for a decision"
        return elead_id, ""

    def _run(
        self,
        elead: ELead,
        sender: str,
        command: dict[str, Any],
        result: ParseResult,
        token: str | None,
    ) -> ReplyOutcome:
        action = str(command.get("action") or "invalid")
        module = COMMANDS.get(action)
        ctx = CommandContext(elead_id=elead.id, sender=sender, args=command)
        if module is None:  # "invalid": say so, with the instructions
            outcome = CommandResult(
                False,
                "Not understood: the first line held no command",
                instructions(summaries()),
                spends_token=False,
            )
        else:
            outcome = self._apply(module.run, ctx, token)
        self._audit(
            elead,
            sender,
            f"reply_{action}",
            {"applied": outcome.applied, "summary": outcome.summary},
        )
        self._answer(
            sender, result, elead, outcome.summary, outcome.details, limited=not outcome.applied
        )
        elead = ELead.get_by_id(elead.id)  # the command may have converted it
        prospect = elead.prospect.pid if elead.prospect is not None else None
        return ReplyOutcome(elead.public_id, f"{action}: {outcome.summary}", prospect)

    def _apply(self, run: Any, ctx: CommandContext, token: str | None) -> CommandResult:
        with database_proxy.atomic() as savepoint:
            if token:
                account = ELead.get_by_id(ctx.elead_id).account_id
                spent = consume_token(token, sender=ctx.sender, now=self.now)
                if not isinstance(spent, TokenGrant) or spent.account != account:
                    message = getattr(spent, "message", "this reply address is not valid")
                    return CommandResult(False, f"Not applied again: {message}")
            outcome: CommandResult = run(ctx)
            if not outcome.spends_token or not outcome.applied:
                savepoint.rollback()  # nothing changed: keep the token usable
        return outcome

    def _recent_answers(self, sender: str) -> int:
        since = self.now - timedelta(hours=self.settings.replies.answer_window_hours)
        return (
            Notification.select()
            .where(
                (Notification.kind == "command_result")
                & (Notification.created_at >= since)
                # cast: a JSONField would JSON-encode the LIKE pattern itself
                & Notification.to.cast("TEXT").contains(f'"{sender}"')
            )
            .count()
        )

    def _answer(
        self,
        sender: str,
        result: ParseResult,
        elead: ELead | None,
        summary: str,
        details: tuple[str, ...],
        *,
        limited: bool,
    ) -> None:
        if limited and self._recent_answers(sender) >= self.settings.replies.answers_per_sender:
            log.warning(
                "event=reply_answer_suppressed elead=%s reason=rate_limit",
                elead.public_id if elead else None,
            )
            return
        subject = result.subject or summary
        if not re.match(r"(?i)\s*(re|aw|sv|antw)\s*:", subject):
            subject = f"Re: {subject}"
        queue_message(
            kind="command_result",
            to=[sender],
            subject=subject[:200],
            template="command_result",
            context={
                "summary": summary,
                "details": list(details),
                "elead": elead.public_id if elead else None,
            },
            settings=self.settings,
            now=self.now,
            account=elead.account_id if elead else None,
            elead=elead,
            in_reply_to=f"<{result.message_id}>" if result.message_id else None,
            references=f"<{result.message_id}>" if result.message_id else None,
        )

    def _audit(self, elead: ELead, sender: str, action: str, detail: dict[str, Any]) -> None:
        AuditEvent.create(
            actor=f"reply:{sender}",
            action=action,
            account=elead.account_id,
            elead=elead,
            detail=detail,
        )
