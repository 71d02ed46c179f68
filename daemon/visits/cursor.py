"""Which log files to read and from where: discovery, fingerprints, cursors, reading.

A cursor remembers, per source and file, how many bytes (and lines) were consumed. The
file is identified by the SHA-256 of its first line, which moves with the content:

- rename rotation (``access.log`` -> ``access.log.1``, a new ``access.log``): the renamed
  file keeps its first line, so its cursor follows it and its unread tail is read; the
  new file has a new first line and starts at 0;
- copytruncate: the copy has the old first line (same cursor, read on from the offset),
  the truncated original gets a new first line (a new cursor from 0);
- gzip (``access.log.2.gz``): decompressed, same first line, same cursor;
- truncation in place: the first line changes (new cursor), or stays but the file is
  now shorter than the offset (read again from 0).

Device+inode and size let an unchanged file be skipped without opening it. Only
complete lines are consumed: a partial last line of a live file stays for the next run
(a gzip file is final, its last line counts even without a newline). Nothing here writes:
the caller stores the new cursors in the transaction that stores what the lines gave.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: ``name.1``, ``name.2.gz``, ``name-20261125``, ``name-20261125.gz``.
_ROTATED = r"(?:\.\d{1,4}|-\d{8,10})(?:\.gz)?"
_FIRST_LINE_MAX = 64 * 1024


@dataclass(frozen=True)
class CursorState:
    """A stored cursor (plain data, loaded on the DB thread)."""

    id: int
    source: str
    fingerprint: str
    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    offset: int
    lines: int


@dataclass
class FileChunk:
    """Complete lines read from one file, and the cursor they move."""

    source: str
    path: Path
    fingerprint: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    cursor_id: int | None
    start_offset: int
    end_offset: int
    start_lines: int
    lines: list[str]
    more: bool = False
    #: The stored cursor's (offset, lines) when it was loaded; None: no cursor yet.
    seen: tuple[int, int] | None = None
    end_lines: int = field(init=False)

    def __post_init__(self) -> None:
        # Fixed here: the caller drops ``lines`` once they are parsed.
        self.end_lines = self.start_lines + len(self.lines)


def discover(data_dir: Path, pattern: str) -> list[Path]:
    """Files of one source: its glob plus the rotated siblings of what it matches.

    Oldest first (rotated files by descending number, then the live file), so lines are
    met roughly in time order.
    """
    base = Path(pattern)
    glob_root = base if base.is_absolute() else data_dir / base
    found: dict[Path, None] = {}
    for live in sorted(glob_root.parent.glob(glob_root.name)):
        if not live.is_file():
            continue
        rotated = re.compile(re.escape(live.name) + _ROTATED + "$")
        siblings = [p for p in live.parent.iterdir() if rotated.fullmatch(p.name) and p.is_file()]
        for sibling in sorted(siblings, key=_age_key, reverse=True):
            found.setdefault(sibling, None)
        found.setdefault(live, None)
    return list(found)


def _age_key(path: Path) -> tuple[int, str]:
    numbers = re.findall(r"\d+", path.name.removesuffix(".gz"))
    number = int(numbers[-1]) if numbers else 0
    # access.log.3.gz is older than .1; access.log-20261125 newer than -20261124.
    return (number if "-" not in path.name[-15:] else -number, path.name)


def fingerprint(first_line: bytes) -> str:
    return hashlib.sha256(first_line).hexdigest()[:32]


def _first_line(data: bytes, *, final: bool) -> bytes | None:
    end = data.find(b"\n")
    if end >= 0:
        return data[: end + 1]
    if len(data) >= _FIRST_LINE_MAX:
        return data[:_FIRST_LINE_MAX]
    return data if final and data else None


def _complete(data: bytes, *, final: bool, limit_hit: bool) -> bytes:
    """The part of ``data`` that is complete lines."""
    if final:
        return data
    end = data.rfind(b"\n")
    if end >= 0:
        return data[: end + 1]
    # One line longer than a whole batch: consume it (it is counted as a bad line).
    return data if limit_hit else b""


def _decode(data: bytes) -> list[str]:
    if not data:
        return []
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_file(
    source: str,
    path: Path,
    cursors: dict[tuple[str, str], CursorState],
    by_inode: dict[tuple[str, int, int], CursorState],
    *,
    max_bytes: int,
    seen: set[int] | None = None,
) -> FileChunk | None:
    """The unread complete lines of one file (at most about ``max_bytes``), or None.

    ``seen`` collects the cursors of files skipped as unchanged (still present).
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None  # rotated away between discovery and now: found again next run
    is_gz = path.name.endswith(".gz")
    known = by_inode.get((source, st.st_dev, st.st_ino))
    if (
        known is not None
        and (known.size, known.mtime_ns) == (st.st_size, st.st_mtime_ns)
        and (is_gz or known.offset == st.st_size)
    ):
        if seen is not None and known.id:
            seen.add(known.id)
        return None  # unchanged since it was read to the end
    if is_gz:
        return _read_gz(source, path, st, cursors, max_bytes=max_bytes)
    with path.open("rb") as fh:
        head = fh.read(_FIRST_LINE_MAX)
        first = _first_line(head, final=False)
        if first is None:
            return None  # not even one complete line yet
        fp = fingerprint(first)
        cursor = cursors.get((source, fp))
        offset, lines_before = (cursor.offset, cursor.lines) if cursor else (0, 0)
        if offset > st.st_size:
            log.info(
                "event=visits_file_truncated path=%s offset=%d size=%d", path, offset, st.st_size
            )
            offset, lines_before = 0, 0
        if offset == st.st_size:
            data = b""
        else:
            fh.seek(offset)
            data = fh.read(max_bytes)
    complete = _complete(data, final=False, limit_hit=len(data) >= max_bytes)
    return FileChunk(
        source=source,
        path=path,
        fingerprint=fp,
        device=st.st_dev,
        inode=st.st_ino,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        cursor_id=cursor.id if cursor else None,
        start_offset=offset,
        end_offset=offset + len(complete),
        start_lines=lines_before,
        lines=_decode(complete),
        more=offset + len(complete) < st.st_size and len(data) >= max_bytes,
        seen=(cursor.offset, cursor.lines) if cursor else None,
    )


def _read_gz(
    source: str,
    path: Path,
    st: os.stat_result,
    cursors: dict[tuple[str, str], CursorState],
    *,
    max_bytes: int,
) -> FileChunk | None:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (EOFError, OSError, zlib.error) as exc:
        # Still being written by logrotate, or damaged: try again next run.
        log.warning("event=visits_gzip_unreadable path=%s error=%s", path, type(exc).__name__)
        return None
    first = _first_line(data, final=True)
    if first is None:
        return None
    fp = fingerprint(first)
    cursor = cursors.get((source, fp))
    offset, lines_before = (cursor.offset, cursor.lines) if cursor else (0, 0)
    if offset > len(data):
        offset, lines_before = 0, 0
    window = data[offset : offset + max_bytes]
    more = offset + len(window) < len(data)
    complete = _complete(window, final=not more, limit_hit=len(window) >= max_bytes)
    end = offset + len(complete)
    return FileChunk(
        source=source,
        path=path,
        fingerprint=fp,
        device=st.st_dev,
        inode=st.st_ino,
        # Only a gzip file read to its end is remembered as done (by its size).
        size=st.st_size if end >= len(data) else -1,
        mtime_ns=st.st_mtime_ns,
        cursor_id=cursor.id if cursor else None,
        start_offset=offset,
        end_offset=end,
        start_lines=lines_before,
        lines=_decode(complete),
        more=more,
        seen=(cursor.offset, cursor.lines) if cursor else None,
    )


def iter_chunks(
    sources: list[tuple[str, Path, str]],
    cursors: list[CursorState],
    *,
    max_bytes: int,
    seen: set[int] | None = None,
) -> Iterator[FileChunk]:
    """Unread chunks of every file of ``sources`` (``(key, data_dir, glob)``).

    Two files with the same content (a rotated file and its gzip copy during
    compression) share a cursor: the second sees the first's advance. A gzip file with
    nothing new is still yielded (without lines) the first time, so that its cursor
    learns its inode and size and the next runs skip it without decompressing it.
    """
    by_fp = {(c.source, c.fingerprint): c for c in cursors}
    by_inode = {(c.source, c.device, c.inode): c for c in cursors}
    for key, data_dir, pattern in sources:
        for path in discover(data_dir, pattern):
            chunk = read_file(key, path, by_fp, by_inode, max_bytes=max_bytes, seen=seen)
            if chunk is None:
                continue
            nothing_new = chunk.end_offset == chunk.start_offset and not chunk.lines
            learns_inode = path.name.endswith(".gz") and chunk.size >= 0 and chunk.cursor_id
            if nothing_new and not learns_inode:
                continue
            state = CursorState(
                id=chunk.cursor_id or 0,
                source=key,
                fingerprint=chunk.fingerprint,
                path=str(path),
                device=chunk.device,
                inode=chunk.inode,
                size=chunk.size,
                mtime_ns=chunk.mtime_ns,
                offset=chunk.end_offset,
                lines=chunk.end_lines,
            )
            by_fp[(key, chunk.fingerprint)] = state
            yield chunk
