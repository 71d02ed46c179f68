"""Structured logging: one line per event, ``key=value`` pairs after a fixed prefix.

Lines about a message carry its spool id and Message-ID; never a body or a secret.

Under systemd (stderr connected to the journal: ``$JOURNAL_STREAM`` names it) each line
starts with its syslog priority (``<3>`` error ... ``<7>`` debug), so ``journalctl -p
warning`` works, and leaves the timestamp to the journal.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
JOURNAL_FORMAT = "level=%(levelname)s logger=%(name)s %(message)s"
_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


class JournalFormatter(logging.Formatter):
    """``<priority>`` prefix (sd-daemon(3)), one line even for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", "\n    ")
        return f"<{_PRIORITY.get(record.levelname, 6)}>{text}"


def _to_journal() -> bool:
    """True when stderr is the journal stream systemd gave us (not a redirect)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(inode) and f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def setup_logging(level: str = "info") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    journal = _to_journal()
    handler.setFormatter(JournalFormatter(JOURNAL_FORMAT) if journal else logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (one line per SMTP command) would drown the events that matter.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("imapclient").setLevel(logging.WARNING)
    logging.getLogger("mailparser").setLevel(logging.ERROR)
