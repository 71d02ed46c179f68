"""The spool's write-ahead journal: one append and one fdatasync per batch of messages.

An fsync per message file caps acceptance far below what the SMTP server can do, so the
listener's acknowledgement path only appends the batch to the current segment file and
fdatasyncs it (``JournalWriter``). The spool worker reads the segments (``JournalReader``)
and turns each record into a queue file; a segment is deleted once the writer has moved
on, every record in it has been turned into a file, and ``os.sync()`` has put those files
on disk (one sync per segment instead of one fsync per message).

At daemon start, ``replay`` yields every record still in a segment, so the spool can
recreate or repair files that a crash left missing or short.

Record: ``b"ELJR" | length (u32) | crc32 (u32) | body``. An incomplete record at the end of
the newest segment is a write in progress; anywhere else it is a torn write that was never
acknowledged, and the rest of that segment is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">4sII")
_MAGIC = b"ELJR"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def _seq(path: Path) -> int:
    return int(path.stem)


def _records(data: bytes, offset: int) -> Iterator[tuple[bytes, int]]:
    """Intact records from ``offset``: (body, offset after it)."""
    while offset + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, offset)
        body = data[offset + _HEADER.size : offset + _HEADER.size + length]
        if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
            return
        offset += _HEADER.size + length
        yield body, offset


class JournalWriter:
    """Append-only segments, written by the listener process; thread-safe."""

    def __init__(self, directory: Path, *, rotate_bytes: int = 8 << 20) -> None:
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._seq = max((_seq(p) for p in segments(directory)), default=0)
        self._size = 0

    def append(self, bodies: list[bytes]) -> None:
        """Durably append one batch of records (the acknowledgement point)."""
        data = b"".join(_HEADER.pack(_MAGIC, len(b), zlib.crc32(b)) + b for b in bodies)
        with self._lock:
            if self._fd is not None and self._size >= self.rotate_bytes:
                os.close(self._fd)
                self._fd = None
            if self._fd is None:
                # Always a fresh segment: never append behind a torn tail.
                self._seq += 1
                path = self.directory / f"{self._seq:016d}.seg"
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
                fsync_dir(self.directory)  # the segment's name must survive a crash too
                self._size = 0
            write_all(self._fd, data)
            os.fdatasync(self._fd)
            self._size += len(data)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class JournalReader:
    """Reads new records for the one process that turns them into queue files.

    Only one reader may be active per journal (an flock on ``reader.lock``); the position
    is kept in ``cursor.json`` so a restarted worker does not start over (it is a hint:
    records read twice are skipped because their files exist, or deduped downstream).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._cursor_path = directory / "cursor.json"
        self._lock_file: IO[str] | None = None
        self.seq, self.offset = self._load_cursor()
        self._pending = (self.seq, self.offset)

    def acquire(self) -> bool:
        """Become the reader; False if another process already is."""
        if self._lock_file is None:
            fh = (self.directory / "reader.lock").open("a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                return False
            self._lock_file = fh
        return True

    def _load_cursor(self) -> tuple[int, int]:
        try:
            data = json.loads(self._cursor_path.read_text())
            return int(data["seq"]), int(data["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0

    def read(self, limit: int) -> list[bytes]:
        """Up to ``limit`` records after the cursor (does not move it: see ``advance``)."""
        out: list[bytes] = []
        seq, offset = self.seq, self.offset
        for path in segments(self.directory):
            if _seq(path) < seq:
                continue
            if _seq(path) > seq:  # the writer moved on: the previous segment is complete
                seq, offset = _seq(path), 0
            with path.open("rb") as fh:
                fh.seek(offset)
                while len(out) < limit:
                    head = fh.read(_HEADER.size)
                    if len(head) < _HEADER.size:
                        break
                    magic, length, crc = _HEADER.unpack(head)
                    body = fh.read(length) if magic == _MAGIC else b""
                    if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
                        break  # in progress (newest segment) or torn (skipped with it)
                    out.append(body)
                    offset += _HEADER.size + length
            if len(out) >= limit:
                break
        self._pending = (seq, offset)
        return out

    def advance(self) -> None:
        """The records last read are in their own files now: move the cursor past them,
        and delete segments the writer has left that are fully read."""
        if self._pending == (self.seq, self.offset):
            return
        self.seq, self.offset = self._pending
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seq": self.seq, "offset": self.offset}))
        os.replace(tmp, self._cursor_path)
        done = [p for p in segments(self.directory) if _seq(p) < self.seq]
        if done:
            self.checkpoint()
            for path in done:
                path.unlink(missing_ok=True)

    def checkpoint(self) -> None:
        """Make every file written so far durable (one ``os.sync``) and record the cursor
        as durable: ``replay`` need not recreate anything before it."""
        os.sync()  # the queue files written from records were not fsynced one by one
        _write_durable(self.directory / "synced.json", {"seq": self.seq, "offset": self.offset})

    def release(self) -> None:
        """Clean stop: checkpoint, so the next start replays nothing already done."""
        if self._lock_file is not None:
            self.checkpoint()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


def _write_durable(path: Path, data: dict[str, int]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        write_all(fd, json.dumps(data).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def replay(directory: Path) -> Iterator[bytes]:
    """Intact records not yet known to be in durable files, oldest first (daemon start)."""
    try:
        synced = json.loads((directory / "synced.json").read_text())
        done_seq, done_offset = int(synced["seq"]), int(synced["offset"])
    except (OSError, ValueError, KeyError, TypeError):
        done_seq, done_offset = 0, 0
    for path in segments(directory):
        data = path.read_bytes()
        end = 0
        for body, end in _records(data, 0):
            if (_seq(path), end) > (done_seq, done_offset):
                yield body
        if end != len(data):
            log.warning(
                "event=journal_torn_tail segment=%s dropped_bytes=%d", path.name, len(data) - end
            )


def remove_all(directory: Path) -> None:
    """After a replay has put every record in its own fsynced file."""
    for path in segments(directory):
        path.unlink()
    for name in ("cursor.json", "synced.json"):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    fsync_dir(directory)
