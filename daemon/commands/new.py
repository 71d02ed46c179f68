"""NEW: create a new prospect for the eLead."""

from __future__ import annotations

from daemon.commands.base import CommandContext, CommandResult
from daemon.convert import convert_manual
from daemon.errors import CommandError

NAME = "new"
SUMMARY = "NEW (create a new prospect for this lead)"


def run(ctx: CommandContext) -> CommandResult:
    try:
        done = convert_manual(ctx.elead_id, new=True, actor=ctx.actor)
    except CommandError as exc:
        return CommandResult(False, f"Not applied: {exc}")
    return CommandResult(True, f"Created Prospect {done.prospect}")
