"""Structured logging: one line per event, ``key=value`` pairs after a fixed prefix.

Lines about a message carry its spool id and Message-ID; never a body or a secret.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def setup_logging(level: str = "info") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (one line per SMTP command) would drown the events that matter.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("imapclient").setLevel(logging.WARNING)
    logging.getLogger("mailparser").setLevel(logging.ERROR)
