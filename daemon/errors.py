"""The one exception tree of eleads.

::

    EleadsError                  anything eleads raises on purpose
    ├── ConfigError              config.yaml or rules/ is invalid (CLI exit 2)
    ├── UsageError               a CLI argument or an id that does not exist (CLI exit 2)
    ├── ParseError               a message could not be decoded at all (rare: parse
    │                            normally returns kind="unknown" with problems instead)
    ├── MatchError               matching could not decide (bad data, not "fuzzy")
    ├── CommandError             a reply command could not be applied
    ├── TransientError           worth retrying later (disk full, DB locked, relay 4xx);
    │                            a spooled message stays queued with backoff
    └── PermanentError           retrying will not help; the message goes to spool/failed/
                                 with the reason, and is kept

Library errors (peewee, smtplib, imapclient, OSError) are converted to this tree at the
boundary where they happen, never raised past a stage as themselves. "Not recognised" is a
result (``kind="unknown"``), not an exception.
"""

from __future__ import annotations


class EleadsError(Exception):
    """Base of every error eleads raises on purpose."""


class ConfigError(EleadsError):
    """The configuration (or a rules file) is invalid.

    ``problems`` holds one line per problem, each as ``file: key.path: reason``.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems if problems is not None else [message]


class UsageError(EleadsError):
    """A command was asked for something that cannot be done (unknown id, bad path)."""


class ParseError(EleadsError):
    """A message could not be decoded at all."""


class MatchError(EleadsError):
    """Matching could not run on this lead."""


class CommandError(EleadsError):
    """A reply command could not be applied."""


class TransientError(EleadsError):
    """A failure that a later retry may not meet (I/O, locks, a relay's 4xx)."""


class PermanentError(EleadsError):
    """A failure that no retry will cure; the message is moved aside and reported."""
