"""CLI ingest sources: single .eml files, folders of them, mbox files, Maildirs."""

from __future__ import annotations

import mailbox
from collections.abc import Callable, Iterator
from pathlib import Path


def _is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(5) == b"From "


def _maildir(path: Path) -> Iterator[tuple[str, bytes]]:
    box = mailbox.Maildir(path, factory=None, create=False)
    for key in sorted(box.iterkeys()):
        yield f"{path}:{key}", box.get_bytes(key)


def _mbox(path: Path) -> Iterator[tuple[str, bytes]]:
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        for index, key in enumerate(box.iterkeys()):
            yield f"{path}#{index + 1}", box.get_bytes(key)
    finally:
        box.close()


def iter_messages(path: Path, *, on_error: Callable[[str], None]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(label, raw bytes)`` for every message under ``path``.

    Unreadable paths are reported through ``on_error`` and skipped, so one bad path does
    not stop the others.
    """
    try:
        if path.is_dir():
            if _is_maildir(path):
                yield from _maildir(path)
                return
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in (".eml", ".msg", ".txt", ".mbox"):
                    yield from iter_messages(child, on_error=on_error)
                elif child.is_dir() and _is_maildir(child):
                    yield from _maildir(child)
            return
        if not path.exists():
            on_error(f"{path}: no such file or directory")
            return
        if _is_mbox(path):
            yield from _mbox(path)
        else:
            yield str(path), path.read_bytes()
    except OSError as exc:
        on_error(f"{path}: {exc.strerror or exc}")
