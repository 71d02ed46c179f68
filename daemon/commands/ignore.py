"""IGNORE: mark the eLead resolved without creating anything."""

from __future__ import annotations

from daemon.commands.base import CommandContext, CommandResult
from daemon.convert import ignore
from daemon.errors import CommandError

NAME = "ignore"
SUMMARY = "IGNORE (leave it unconverted, mark it resolved)"


def run(ctx: CommandContext) -> CommandResult:
    try:
        ignore(ctx.elead_id, actor=ctx.actor)
    except CommandError as exc:
        return CommandResult(False, f"Not applied: {exc}")
    return CommandResult(True, f"E-{ctx.elead_id} marked resolved; nothing was created")
