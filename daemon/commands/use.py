"""USE <n> | USE <prospect id>: add the eLead to a listed candidate or a named prospect."""

from __future__ import annotations

from daemon.commands.base import CommandContext, CommandResult
from daemon.convert import convert_manual
from daemon.db.models import ELead, Prospect
from daemon.errors import CommandError, UsageError

NAME = "use"
SUMMARY = "USE 1 (the first listed candidate), or USE P1234 (any prospect, by its id)"


def _target(ctx: CommandContext) -> str:
    number, pid = ctx.args.get("candidate"), ctx.args.get("prospect")
    if pid:
        return str(pid)
    elead = ELead.get_by_id(ctx.elead_id)
    listed = [c.get("prospect") for c in elead.candidates or []]
    if not isinstance(number, int) or not 1 <= number <= len(listed):
        shown = f"1 to {len(listed)}" if listed else "none"
        raise UsageError(f"there is no candidate {number}: the email listed {shown}")
    return str(listed[number - 1])


def run(ctx: CommandContext) -> CommandResult:
    try:
        pid = _target(ctx)
        done = convert_manual(ctx.elead_id, use=pid, actor=ctx.actor)
    except UsageError as exc:
        return CommandResult(False, f"Not applied: {exc}", spends_token=False)
    except CommandError as exc:
        return CommandResult(False, f"Not applied: {exc}")
    account = ELead.get_by_id(ctx.elead_id).account_id
    prospect = Prospect.get((Prospect.pid == done.prospect) & (Prospect.account == account))
    name = " ".join(x for x in (prospect.first_name, prospect.last_name) if x)
    return CommandResult(True, f"Added to Prospect {done.prospect} {name}".rstrip())
