"""The durable queue of received messages (a Mailman-style switchboard).

Layout under ``<data_dir>/spool/``::

    tmp/      files being written; anything here at start is an unacknowledged leftover
    queue/    <id>.msg   durable, waiting (or waiting for a retry)
    active/   <id>.msg   claimed by the running process; moved back to queue/ at start
    state/    <id>.json  retry bookkeeping: attempts, next_attempt_at, last_error
    failed/   <id>.msg + <id>.json   gave up after max_attempts (or a permanent error)

A ``.msg`` file is one line ``ELEADS-SPOOL 1 <envelope JSON>`` followed by the message
bytes exactly as received. A message is acknowledged only after its file is written,
fsynced, renamed into queue/ and the directory fsynced. Concurrent writers share fsync
rounds (group commit): messages arriving within ``group_commit_ms`` are written and
synced together, then all of them are acknowledged.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon import journal
from daemon.errors import TransientError, UsageError
from daemon.journal import JournalReader, JournalWriter, fsync_dir, write_all

log = logging.getLogger(__name__)

MAGIC = b"ELEADS-SPOOL 1 "
_SUBDIRS = ("tmp", "queue", "active", "state", "failed", "journal")
#: Where a journal record already has its file (absorbed before a restart).
_HOLDING = ("queue", "active", "failed")


@dataclass(frozen=True)
class Envelope:
    """What we knew about a message when we accepted it."""

    listener: str  # "smtp", "imap:<mailbox>", "ingest"
    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()
    peer: str | None = None
    account: str | None = None  # routed (or forced) account, if known
    location: str | None = None
    received_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rcpt_tos"] = list(self.rcpt_tos)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        data = dict(data)
        data["rcpt_tos"] = tuple(data.get("rcpt_tos") or ())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RetryState:
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True)
class SpoolEntry:
    id: str
    path: Path  # the claimed file (file store); a placeholder in the database store
    envelope: Envelope
    attempts: int = 0
    raw: bytes | None = field(default=None, repr=False)  # database store: read with the claim


def new_spool_id() -> str:
    """Time-ordered and unique: hex nanoseconds plus 48 random bits."""
    return f"{time.time_ns():016x}-{secrets.token_hex(6)}"


def spool_id_time(spool_id: str) -> float | None:
    """When a message was spooled, from its id (:func:`new_spool_id`); None if not one."""
    try:
        return int(spool_id.split("-", 1)[0], 16) / 1e9
    except ValueError:
        return None


def _body(spool_id: str, raw: bytes, env: dict[str, Any]) -> bytes:
    """The bytes of a .msg file; the envelope line also carries the id (for replay)."""
    head = json.dumps({**env, "spool_id": spool_id}, ensure_ascii=False)
    return MAGIC + head.encode() + b"\n" + raw


def _record_id(body: bytes) -> str | None:
    try:
        head = json.loads(body[len(MAGIC) : body.index(b"\n")])
        return str(head["spool_id"])
    except (ValueError, KeyError) as exc:
        log.error("event=journal_record_unreadable error=%r", exc)
        return None


def read_spool_file(path: Path) -> tuple[Envelope, bytes]:
    """Split a ``.msg`` file into its envelope and the raw message bytes."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path.name}: not a spool file")
    head, sep, raw = data.partition(b"\n")
    if not sep:
        raise ValueError(f"{path.name}: truncated spool file")
    envelope = Envelope.from_json(json.loads(head[len(MAGIC) :]))
    return envelope, raw


class SpoolStore(abc.ABC):
    """What the listeners, the worker and the CLI need from a spool, whatever holds it.

    Two stores: :class:`Spool` (files under ``data_dir/spool``, the default) and
    :class:`daemon.spool.database.DatabaseSpool` (rows of the shared database, for several
    instances on PostgreSQL). Both acknowledge only what is durable, group concurrent
    writers into one durable write, and hand out claims that a crash gives back.
    """

    def __init__(
        self,
        *,
        max_attempts: int = 5,
        retry_base: float = 30.0,
        retry_max: float = 3600.0,
        group_commit_ms: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.group_commit_window = group_commit_ms / 1000.0
        self.clock = clock
        self._pending: list[tuple[bytes, dict[str, Any], asyncio.Future[SpoolEntry]]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        # One thread does the durable writes of put(): one batch at a time, in order.
        self._write_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eleads-spool")

    # -- accepting ----------------------------------------------------------------

    def on_new_message(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) whenever messages become durable."""
        self._listeners.append(callback)

    async def put(self, raw: bytes, envelope: Envelope) -> SpoolEntry:
        """Store durably; returns only once the message is durable (group commit)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SpoolEntry] = loop.create_future()
        self._pending.append((raw, envelope.to_json(), future))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = loop.create_task(self._flush_soon())
        return await future

    async def _flush_soon(self) -> None:
        if self.group_commit_window:
            await asyncio.sleep(self.group_commit_window)
        # Natural batching: whatever arrives during one durable write is the next batch.
        while self._pending:
            batch, self._pending = self._pending, []
            await self._commit(batch)

    async def _commit(
        self, batch: list[tuple[bytes, dict[str, Any], asyncio.Future[SpoolEntry]]]
    ) -> None:
        loop = asyncio.get_running_loop()
        items = [(new_spool_id(), raw, env) for raw, env, _ in batch]
        try:
            await loop.run_in_executor(self._write_io, self._store_batch, items)
        except Exception as exc:  # noqa: BLE001 - every writer must hear about it
            log.error("event=spool_write_failed count=%d error=%r", len(batch), exc)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(TransientError(f"spool write failed: {exc}"))
            return
        for (spool_id, _, env), (_, _, fut) in zip(items, batch, strict=True):
            if not fut.done():
                fut.set_result(self._entry(spool_id, env))
        for callback in self._listeners:
            callback()

    @abc.abstractmethod
    def _store_batch(self, items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        """Make (id, raw, envelope) items durable, all or none; runs in the write thread."""

    @abc.abstractmethod
    def _entry(self, spool_id: str, env: dict[str, Any]) -> SpoolEntry: ...

    @abc.abstractmethod
    def put_sync(self, raw: bytes, envelope: Envelope) -> SpoolEntry:
        """Blocking variant for the CLI: one message, durable on return."""

    # -- claiming and finishing ---------------------------------------------------

    @abc.abstractmethod
    def recover(self) -> int:
        """At the daemon's start: bring back what a crash left half-done."""

    @abc.abstractmethod
    def recover_claims(self) -> int:
        """A (re)started worker: hand back what a dead worker had claimed."""

    def worker_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held by a worker while it may own claims (see :meth:`Spool.worker_lock`)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def queued_ids(self) -> list[str]:
        """Ids of the waiting messages, oldest first."""

    @abc.abstractmethod
    def claim(self, spool_id: str) -> SpoolEntry | None:
        """Take one queued message; None if it is not (or no longer) queued."""

    @abc.abstractmethod
    def claim_due(self, limit: int = 100) -> list[SpoolEntry]:
        """Claim up to ``limit`` messages that are due, oldest first."""

    @abc.abstractmethod
    def next_due_in(self) -> float | None:
        """Seconds until the earliest waiting message is due (None: nothing waits)."""

    @abc.abstractmethod
    def read_raw(self, entry: SpoolEntry) -> bytes: ...

    @abc.abstractmethod
    def archive(self, entry: SpoolEntry, messages_dir: Path, *, repair: bool = False) -> str:
        """Keep the raw message for good; returns what ``InboundMessage.raw_path`` holds."""

    @abc.abstractmethod
    def complete(self, entry: SpoolEntry) -> None:
        """The message's effects are committed: it leaves the queue."""

    def complete_many(self, entries: list[SpoolEntry]) -> None:
        for entry in entries:
            self.complete(entry)

    def retry_delay(self, attempts: int) -> float:
        return float(min(self.retry_max, self.retry_base * 2 ** (attempts - 1)))

    @staticmethod
    def _log_deferred(entry: SpoolEntry, attempts: int, delay: float, reason: str) -> None:
        log.warning(
            "event=spool_deferred spool_id=%s attempts=%d retry_in=%.0fs reason=%s",
            entry.id,
            attempts,
            delay,
            reason,
        )

    @abc.abstractmethod
    def defer(self, entry: SpoolEntry, reason: str) -> bool:
        """Back to the queue with backoff; after max_attempts, failed. True if deferred."""

    @abc.abstractmethod
    def fail(self, entry: SpoolEntry, reason: str) -> None: ...

    # -- the failed area and status -----------------------------------------------

    @abc.abstractmethod
    def failed(self) -> Iterator[dict[str, Any]]: ...

    @abc.abstractmethod
    def requeue(self, spool_id: str) -> None:
        """Give a failed message a fresh set of attempts."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Messages per area: queue, active, failed."""

    def close(self) -> None:
        self._write_io.shutdown(wait=True)


class Spool(SpoolStore):
    """Durable message store in files, with group commit, claims, retries and a failed area."""

    def __init__(
        self,
        root: Path,
        *,
        max_attempts: int = 5,
        retry_base: float = 30.0,
        retry_max: float = 3600.0,
        group_commit_ms: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            max_attempts=max_attempts,
            retry_base=retry_base,
            retry_max=retry_max,
            group_commit_ms=group_commit_ms,
            clock=clock,
        )
        self.root = root
        self._dirs = {name: root / name for name in _SUBDIRS}
        for path in self._dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        # Both journal ends are opened on first use: the writer by put() (the listener),
        # the reader by claim_due() (the worker); CLI commands touch neither.
        self._writer: JournalWriter | None = None
        self._reader: JournalReader | None = None
        self._fsyncers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="eleads-fsync")
        # Worker side: the queue's ids, oldest first, so that a batch does not list and
        # sort a directory of tens of thousands of files; rebuilt from disk at least every
        # second for files other processes add (CLI ingest, requeue).
        self._known_queue: deque[str] = deque()
        self._known_queue_at = float("-inf")

    def dir(self, name: str) -> Path:
        return self._dirs[name]

    # -- accepting ----------------------------------------------------------------

    def _store_batch(self, items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        self._append([_body(spool_id, raw, env) for spool_id, raw, env in items])

    def _append(self, bodies: list[bytes]) -> None:
        if self._writer is None:
            self._writer = JournalWriter(self._dirs["journal"])
        self._writer.append(bodies)

    def absorb_journal(self, limit: int = 256) -> int:
        """Worker side: turn journal records into queue files (unless already there)."""
        if self._reader is None:
            self._reader = JournalReader(self._dirs["journal"])
        if not self._reader.acquire():
            return 0  # another worker process reads the journal
        bodies = self._reader.read(limit)
        pairs = []
        for body in bodies:
            spool_id = _record_id(body)
            if spool_id is None:
                continue
            name = f"{spool_id}.msg"
            if not any(os.path.exists(f"{self._dirs[d]}/{name}") for d in _HOLDING):
                pairs.append((spool_id, body))
        if pairs:
            self._write_files(pairs, durable=False)
            self._known_queue.extend(spool_id for spool_id, _ in pairs)
        self._reader.advance()
        return len(pairs)

    def _entry(self, spool_id: str, env: dict[str, Any]) -> SpoolEntry:
        return SpoolEntry(
            id=spool_id,
            path=self._dirs["queue"] / f"{spool_id}.msg",
            envelope=Envelope.from_json(env),
        )

    def put_sync(self, raw: bytes, envelope: Envelope) -> SpoolEntry:
        """Blocking variant for the CLI: one message, its own fsynced file."""
        spool_id, env = new_spool_id(), envelope.to_json()
        self._write_files([(spool_id, _body(spool_id, raw, env))])
        return self._entry(spool_id, env)

    def _write_files(self, pairs: list[tuple[str, bytes]], *, durable: bool = True) -> None:
        """Write queue files. ``durable=False`` when the journal already holds the bytes:
        a segment is only deleted after ``os.sync()`` (see journal.py), and files a crash
        left short are repaired from the journal by ``recover``."""
        tmp, queue = self._dirs["tmp"], self._dirs["queue"]
        written: list[tuple[str, Path]] = []
        fds: list[int] = []
        try:
            for spool_id, body in pairs:
                path = tmp / f"{spool_id}.msg"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
                fds.append(fd)
                written.append((spool_id, path))
                write_all(fd, body)
            # Concurrent fsyncs share journal commits (ext4/xfs): about 3x faster than
            # one after another for a batch of 32, and each file is still fsynced itself.
            if durable and len(fds) > 1:
                list(self._fsyncers.map(os.fsync, fds))
            elif durable:
                for fd in fds:
                    os.fsync(fd)
            for spool_id, path in written:
                os.rename(path, queue / f"{spool_id}.msg")
            if durable:
                fsync_dir(queue)
        except OSError:
            for _, path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        finally:
            for fd in fds:
                os.close(fd)

    # -- claiming and finishing ---------------------------------------------------

    def _replay_journal(self) -> int:
        """Recreate (or repair) the queue file of every record still in the journal."""
        where = {
            p.stem: p
            for name in ("queue", "active", "failed")
            for p in self._dirs[name].glob("*.msg")
        }
        missing: list[tuple[str, bytes]] = []
        repaired = 0
        for body in journal.replay(self._dirs["journal"]):
            spool_id = _record_id(body)
            if spool_id is None:
                continue
            path = where.get(spool_id)
            if path is None:
                missing.append((spool_id, body))
                where[spool_id] = self._dirs["queue"] / f"{spool_id}.msg"
            elif path.exists() and path.read_bytes() != body:
                # Written out without fsync and cut short by the crash: rewrite it.
                self._rewrite(path, body)
                repaired += 1
        if missing:
            self._write_files(missing)
        if missing or repaired:
            log.warning("event=journal_replayed missing=%d repaired=%d", len(missing), repaired)
        journal.remove_all(self._dirs["journal"])
        return len(missing) + repaired

    def _rewrite(self, path: Path, body: bytes) -> None:
        tmp = self._dirs["tmp"] / path.name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    @contextlib.contextmanager
    def worker_lock(self, *, exclusive: bool = False, timeout: float = 120.0) -> Iterator[None]:
        """Workers hold this shared while they may own files in active/; ``recover`` takes
        it exclusively, so a worker orphaned by a crashed daemon finishes its batch before
        its claims are handed back to the queue."""
        with (self.root / "workers.lock").open("a+") as fh:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TransientError("spool workers.lock: still held") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def recover(self) -> int:
        """At start: replay the journal, return claimed-but-unfinished messages to the
        queue, clear tmp/. Returns how many messages were brought back."""
        with self.worker_lock(exclusive=True):
            return self._recover()

    def _return_active(self) -> int:
        moved = 0
        for path in self._dirs["active"].glob("*.msg"):
            os.replace(path, self._dirs["queue"] / path.name)
            moved += 1
        if moved:
            fsync_dir(self._dirs["queue"])
        return moved

    def _recover(self) -> int:
        moved = self._replay_journal() + self._return_active()
        for path in self._dirs["tmp"].iterdir():
            path.unlink(missing_ok=True)
        if moved:
            log.info("event=spool_recovered count=%d", moved)
        return moved

    def _state(self, spool_id: str) -> RetryState:
        path = self._dirs["state"] / f"{spool_id}.json"
        try:
            return RetryState(**json.loads(path.read_text()))
        except FileNotFoundError:
            return RetryState()
        except (OSError, ValueError, TypeError):
            log.warning("event=spool_state_unreadable spool_id=%s", spool_id)
            return RetryState()

    def _write_state(self, spool_id: str, state: RetryState) -> None:
        path = self._dirs["state"] / f"{spool_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, path)

    def queued_ids(self) -> list[str]:
        # scandir, not Path.glob: this runs before every batch over a queue that can hold
        # tens of thousands of files during a burst.
        with os.scandir(self._dirs["queue"]) as found:
            return sorted(e.name[:-4] for e in found if e.name.endswith(".msg"))

    def claim(self, spool_id: str) -> SpoolEntry | None:
        """Take one message out of the queue by rename; None if someone else has it."""
        src = self._dirs["queue"] / f"{spool_id}.msg"
        dst = self._dirs["active"] / f"{spool_id}.msg"
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return None
        try:
            envelope, _ = read_spool_file(dst)
        except (OSError, ValueError) as exc:
            self._move_to_failed(spool_id, dst, f"unreadable spool file: {exc}", 0)
            return None
        return SpoolEntry(
            id=spool_id, path=dst, envelope=envelope, attempts=self._state(spool_id).attempts
        )

    def claim_due(self, limit: int = 100) -> list[SpoolEntry]:
        self.absorb_journal()
        if not self._known_queue or time.monotonic() - self._known_queue_at > 1.0:
            self._known_queue = deque(self.queued_ids())
            self._known_queue_at = time.monotonic()
        now = self.clock()
        claimed: list[SpoolEntry] = []
        not_due: list[str] = []
        queue = self._known_queue
        while queue and len(claimed) < limit:
            spool_id = queue.popleft()
            if self._state(spool_id).next_attempt_at > now:
                not_due.append(spool_id)
                continue
            entry = self.claim(spool_id)  # None: gone meanwhile (another worker, requeue)
            if entry is not None:
                claimed.append(entry)
        queue.extendleft(reversed(not_due))
        return claimed

    def next_due_in(self) -> float | None:
        """Seconds until the earliest deferred message is due (None: queue empty)."""
        now = self.clock()
        waits = [max(0.0, self._state(sid).next_attempt_at - now) for sid in self.queued_ids()]
        return min(waits) if waits else None

    def read_raw(self, entry: SpoolEntry) -> bytes:
        return read_spool_file(entry.path)[1]

    def archive(self, entry: SpoolEntry, messages_dir: Path, *, repair: bool = False) -> str:
        """Hard-link the spool file into ``messages/YYYY/MM/`` (no copy, already durable)."""
        day = datetime.now(UTC)
        folder = messages_dir / f"{day:%Y}" / f"{day:%m}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{entry.id}.msg"
        # On a retry after a crash the link from the first attempt is already there.
        with contextlib.suppress(FileExistsError):
            os.link(entry.path, target)
        if repair and target.stat().st_size != entry.path.stat().st_size:
            tmp = target.with_suffix(".repair")
            tmp.unlink(missing_ok=True)
            os.link(entry.path, tmp)
            os.replace(tmp, target)
            log.warning("event=archive_repaired spool_id=%s", entry.id)
        return str(target)

    def complete(self, entry: SpoolEntry) -> None:
        """The message's effects are committed: forget it."""
        entry.path.unlink(missing_ok=True)
        (self._dirs["state"] / f"{entry.id}.json").unlink(missing_ok=True)

    def defer(self, entry: SpoolEntry, reason: str) -> bool:
        """Back to the queue with backoff; after max_attempts, to failed/. True if deferred."""
        attempts = self._state(entry.id).attempts + 1
        if attempts >= self.max_attempts:
            self._move_to_failed(entry.id, entry.path, reason, attempts)
            return False
        delay = self.retry_delay(attempts)
        self._write_state(entry.id, RetryState(attempts, self.clock() + delay, reason))
        try:
            os.replace(entry.path, self._dirs["queue"] / entry.path.name)
        except FileNotFoundError:
            log.warning("event=spool_entry_gone spool_id=%s while=defer", entry.id)
            return False
        self._known_queue.append(entry.id)
        self._log_deferred(entry, attempts, delay, reason)
        return True

    def fail(self, entry: SpoolEntry, reason: str) -> None:
        self._move_to_failed(entry.id, entry.path, reason, self._state(entry.id).attempts + 1)

    def _move_to_failed(self, spool_id: str, path: Path, reason: str, attempts: int) -> None:
        failed = self._dirs["failed"]
        info = {
            "id": spool_id,
            "reason": reason,
            "attempts": attempts,
            "failed_at": datetime.now(UTC).isoformat(),
        }
        try:
            os.replace(path, failed / f"{spool_id}.msg")
        except FileNotFoundError:
            log.warning("event=spool_entry_gone spool_id=%s while=fail", spool_id)
            return
        (failed / f"{spool_id}.json").write_text(json.dumps(info))
        fsync_dir(failed)
        (self._dirs["state"] / f"{spool_id}.json").unlink(missing_ok=True)
        log.error(
            "event=spool_failed spool_id=%s attempts=%d reason=%s", spool_id, attempts, reason
        )

    # -- the failed area ----------------------------------------------------------

    def failed(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self._dirs["failed"].glob("*.msg")):
            info_path = path.with_suffix(".json")
            try:
                info = json.loads(info_path.read_text())
            except (OSError, ValueError):
                info = {"id": path.stem, "reason": "(reason unreadable)", "attempts": None}
            try:
                envelope = read_spool_file(path)[0].to_json()
            except (OSError, ValueError):
                envelope = {}
            yield {
                **info,
                "listener": envelope.get("listener"),
                "mail_from": envelope.get("mail_from"),
                "received_at": envelope.get("received_at"),
            }

    def requeue(self, spool_id: str) -> None:
        """Give a failed message a fresh set of attempts."""
        src = self._dirs["failed"] / f"{spool_id}.msg"
        if not src.exists():
            raise UsageError(f"no failed message with id {spool_id}")
        os.replace(src, self._dirs["queue"] / src.name)
        fsync_dir(self._dirs["queue"])
        (self._dirs["failed"] / f"{spool_id}.json").unlink(missing_ok=True)
        self._known_queue.append(spool_id)
        log.info("event=spool_requeued spool_id=%s", spool_id)

    def recover_claims(self) -> int:
        """A (re)started worker: hand back what a dead worker had claimed."""
        with self.worker_lock(exclusive=True):
            return self._return_active()

    def counts(self) -> dict[str, int]:
        return {
            name: sum(1 for p in self._dirs[name].iterdir() if p.suffix == ".msg")
            for name in ("queue", "active", "failed")
        }

    def close(self) -> None:
        super().close()
        self._fsyncers.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            self._reader.release()
