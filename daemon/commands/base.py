"""What every reply command gets and gives back.

A command never sees a token: the reply handler (``commands/handle.py``) has already
checked the sender and the token, and hands over the eLead it is allowed to act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CommandContext:
    elead_id: int
    sender: str  # the authorised address the reply came from
    args: dict[str, Any]  # the parsed command: {"action", "candidate", "prospect", "token"}

    @property
    def actor(self) -> str:
        return f"reply:{self.sender}"


@dataclass(frozen=True)
class CommandResult:
    applied: bool  # the eLead's state changed
    summary: str  # one line: the result email's subject and the audit detail
    details: tuple[str, ...] = ()  # more lines for the result email
    spends_token: bool = True  # False for HELP/invalid: the same address can still answer
