"""What an IMAP poller remembers and reports: its state file, its status, its errors.

The state file ``<state_dir>/<mailbox>.json`` holds ``{"uidvalidity", "last_uid",
"folder", "rescan"}`` and is replaced atomically (tmp + fsync + rename + fsync of the
directory), so after a crash it is always either the old or the new state.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import TransientError

log = logging.getLogger(__name__)


class ConnectionLost(TransientError):
    """The IMAP connection is gone or unusable (EOF, BYE, timeout, refused login): reconnect."""


class CommandFailed(TransientError):
    """The server answered NO/BAD to one command; the connection itself is still usable."""


@dataclass(frozen=True)
class IMAPStatus:
    """A snapshot for logs and metrics."""

    mailbox: str
    connected: bool
    idling: bool
    last_poll_at: float | None  # wall-clock time of the last complete round
    last_error: str | None
    retry_pending: bool  # the last round stopped at a message that will be retried
    uidvalidity: int | None
    last_uid: int
    spooled: int  # messages spooled since start
    reconnects: int


@dataclass(frozen=True)
class MailboxState:
    """What survives a restart: where the next round starts."""

    uidvalidity: int | None = None
    last_uid: int = 0
    folder: str | None = None
    rescan: bool = True


def load_state(path: Path) -> MailboxState:
    """The saved state, or a fresh one (rescan) when missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return MailboxState(
            uidvalidity=int(data["uidvalidity"]),
            last_uid=int(data["last_uid"]),
            folder=str(data["folder"]),
            rescan=bool(data.get("rescan", False)),
        )
    except FileNotFoundError:
        return MailboxState()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("event=imap_state_unreadable path=%s error=%r", path, exc)
        return MailboxState()


def save_state(path: Path, state: MailboxState) -> None:
    """tmp + fsync + rename + fsync(dir): the file is always the old or the new state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    data = {
        "uidvalidity": state.uidvalidity,
        "last_uid": state.last_uid,
        "folder": state.folder,
        "rescan": state.rescan,
    }
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
