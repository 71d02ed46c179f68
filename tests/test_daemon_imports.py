"""The listener process stays small: it must not import the parsing/matching stack.

With ``spool.worker: process`` (the default) messages are parsed, matched and converted in
the worker; the listener process only accepts, sends notifications and runs the scheduler.
Each of those stacks costs it RSS (docs/performance.md, issue 8), and a stray top-level
import brings one back without any test noticing, hence this one.
"""

from __future__ import annotations

import subprocess
import sys

#: What the listener process imports at start and in its periodic jobs.
LISTENER = ("daemon.app", "daemon.commands.tokens", "daemon.visits.job")
#: Worker-only stacks.
WORKER_ONLY = (
    "daemon.pipeline",
    "daemon.match",
    "daemon.convert",
    "daemon.commands.registry",
    "daemon.parse.decode",
    "daemon.parse.normalise",
    "daemon.parse.leads",
)


def test_the_listener_process_does_not_import_the_worker_stack() -> None:
    code = (
        "import sys\n"
        f"for name in {LISTENER!r}: __import__(name)\n"
        f"print(' '.join(m for m in {WORKER_ONLY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == [], f"imported by the listener process: {done.stdout}"
