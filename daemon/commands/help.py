"""HELP: the instructions again (changes nothing, keeps the reply address usable)."""

from __future__ import annotations

from daemon.commands.base import CommandContext, CommandResult

NAME = "help"
SUMMARY = "HELP (these instructions)"


def instructions(summaries: list[str]) -> tuple[str, ...]:
    return (
        "Reply to the Conversion Issue email with one of these on the first line:",
        *(f"  {line}" for line in summaries),
        "Only replies from an authorised address of the account are accepted.",
    )


def run(ctx: CommandContext) -> CommandResult:
    from daemon.commands.registry import summaries

    return CommandResult(
        False,
        f"How to answer about E-{ctx.elead_id}",
        instructions(summaries()),
        spends_token=False,
    )
