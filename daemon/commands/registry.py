"""The reply commands by name (Mailman style): one module per command."""

from __future__ import annotations

from types import ModuleType

from daemon.commands import help as help_command
from daemon.commands import ignore, new, use

#: Explicit, ordered: the order is the order of the instructions in HELP.
COMMANDS: dict[str, ModuleType] = {
    module.NAME: module for module in (use, new, ignore, help_command)
}


def summaries() -> list[str]:
    return [module.SUMMARY for module in COMMANDS.values()]
