"""The IMAP poller: one per configured mailbox, from the server's folder into the spool.

imapclient is blocking, so every IMAP call (and the state-file I/O) runs on this poller's
own single-thread executor; only ``await spool.put`` runs on the event loop. Every call
has a socket timeout (``mailbox.timeout``) and an outer guard: if the guard fires the
socket is shut down and the stuck thread abandoned, so a dead network never hangs us.

A round, in UID order, for each new message:

1. ``UID FETCH uid BODY.PEEK[]`` (PEEK: \\Seen is never set by reading);
2. ``await spool.put(raw, envelope)`` (returns once the message is fsynced);
3. only then ``+FLAGS (\\Seen $eleads)`` and/or MOVE to ``move_to`` (or COPY + \\Deleted
   + UID EXPUNGE when the server has no MOVE; the folder is created if missing);
4. only then the state file ``<state_dir>/<mailbox>.json`` is replaced atomically:
   ``{"uidvalidity", "last_uid", "folder", "rescan"}``.

Any failure stops the round *before* the failing UID and leaves ``last_uid`` below it,
so the next round retries it: nothing is skipped. A crash between 2 and 4 makes the next
round spool the message again; that duplicate is harmless (the pipeline dedupes on
Message-ID + body hash). The one unretryable case is a UID the server no longer has
(expunged meanwhile): it is logged and passed.

"Already processed" marker: the keyword ``$eleads`` is set with (or instead of) \\Seen
whenever the folder accepts keywords (PERMANENTFLAGS has ``\\*``), and every search
excludes it, so a lost or stale state file never re-spools what was spooled. \\Seen alone
is not used for that in normal rounds (a person may read a lead before we poll). A
*rescan* (first run, another folder, or a changed UIDVALIDITY: ``last_uid`` restarts
at 0) also excludes \\Seen when ``mark_seen`` is on, the only marker a server without
keywords keeps; at its end ``last_uid`` jumps to the highest UID seen before the search.

Waiting: IDLE when the server offers it and ``mailbox.idle``; it is re-issued every
``idle_timeout`` seconds and checked in 1 s slices (prompt ``stop()``; an early empty
answer means EOF). Otherwise a plain wait of ``poll_interval``. Connection errors (EOF,
BrokenPipe, ``* BYE``, socket errors, timeouts, refused logins) reconnect with
exponential backoff from ``reconnect_min`` to ``reconnect_max``; a complete round resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import imaplib
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from imapclient import DELETED, SEEN, IMAPClient

from daemon.config import IMAPMailbox
from daemon.errors import TransientError
from daemon.pipeline import header_message_id
from daemon.spool import Envelope, Spool

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Set on every message once it is spooled (when the folder accepts keywords).
KEYWORD = b"$eleads"
_IDLE_SLICE = 1.0
_NEW_MAIL = (b"EXISTS", b"RECENT")


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


@dataclass
class _Session:
    client: IMAPClient
    uidvalidity: int
    idle: bool
    move: bool
    uidplus: bool
    keyword: bool
    target_ready: bool = False


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


def _pop_new_mail(client: IMAPClient) -> bool:
    """Did an EXISTS/RECENT arrive inside another command's answer (say, our SEARCH)?

    Such a message is invisible to the next IDLE, so the caller runs another round.
    imaplib keeps unsolicited responses until asked (``IMAP4.response``); EXPUNGE (one
    per MOVE) is dropped here too, or it would pile up over a long session.
    """
    imap = getattr(client, "_imap", None)
    if imap is None or not hasattr(imap, "response"):
        return False
    imap.response("EXPUNGE")
    return any(imap.response(name.decode())[1] != [None] for name in _NEW_MAIL)


class IMAPPoller:
    """Polls (or IDLEs on) one mailbox and spools each new message exactly once."""

    def __init__(
        self,
        *,
        mailbox: IMAPMailbox,
        spool: Spool,
        state_dir: Path,
        reconnect_min: float = 1.0,
        reconnect_max: float = 300.0,
        client_factory: Callable[..., IMAPClient] | None = None,
    ) -> None:
        self.mailbox = mailbox
        self.spool = spool
        self.state_path = state_dir / f"{mailbox.name}.json"
        self.reconnect_min = reconnect_min
        self.reconnect_max = max(reconnect_max, reconnect_min)
        self._factory: Callable[..., IMAPClient] = client_factory or IMAPClient
        self._executor: ThreadPoolExecutor | None = None
        self._session: _Session | None = None
        self._state: MailboxState | None = None
        self._stop = asyncio.Event()
        self._backoff = reconnect_min
        self._idling = False
        self._last_poll_at: float | None = None
        self._last_error: str | None = None
        self._retry_pending = False
        self._spooled = 0
        self._reconnects = 0
        self._guard = mailbox.timeout * 2 + 5

    # -- public -------------------------------------------------------------------

    @property
    def status(self) -> IMAPStatus:
        state = self._state or MailboxState()
        return IMAPStatus(
            mailbox=self.mailbox.name,
            connected=self._session is not None,
            idling=self._idling,
            last_poll_at=self._last_poll_at,
            last_error=self._last_error,
            retry_pending=self._retry_pending,
            uidvalidity=state.uidvalidity,
            last_uid=state.last_uid,
            spooled=self._spooled,
            reconnects=self._reconnects,
        )

    def stop(self) -> None:
        """Ask ``run()`` to finish (within about a second, even while idling)."""
        self._stop.set()

    async def run(self) -> None:
        """Poll until ``stop()``; never dies of an IMAP, network or spool error."""
        try:
            while not self._stop.is_set():
                try:
                    await self.poll_once()
                    if not self._retry_pending:
                        self._backoff = self.reconnect_min
                        await self._wait_for_mail()
                        continue
                    delay = self._next_backoff()
                except Exception as exc:  # noqa: BLE001 - the poller must outlive any error
                    delay = self._next_backoff()
                    self._session_failed(exc, delay)
                    await self._drop_session(graceful=False)
                await self._sleep(delay)
        finally:
            await self.close()

    async def poll_once(self) -> int:
        """Connect if needed and run one round; return how many messages were spooled.

        Raises ``ConnectionLost``/``CommandFailed`` when the session fails (it is dropped);
        a message that could not be fetched or spooled ends the round early instead and
        sets ``status.retry_pending``.
        """
        if self._session is None:
            self._session = await self._connect()
        try:
            return await self._round(self._session)
        except TransientError:
            await self._drop_session(graceful=False)
            raise

    async def close(self) -> None:
        """Log out and release the thread; ``poll_once`` may still be called afterwards."""
        await self._drop_session(graceful=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    # -- threads and sessions -----------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, guard: float | None = None) -> T:
        """Run ``fn`` on this mailbox's thread; map library errors to ours."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"eleads-imap-{self.mailbox.name}"
            )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args))
        done, _ = await asyncio.wait({future}, timeout=guard or self._guard)
        if not done:
            self._abandon_thread()
            raise ConnectionLost(f"no answer within {guard or self._guard:.0f}s")
        try:
            return future.result()
        except (OSError, EOFError, imaplib.IMAP4.abort) as exc:
            raise ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
        except imaplib.IMAP4.error as exc:
            raise CommandFailed(f"{type(exc).__name__}: {exc}") from exc

    def _abandon_thread(self) -> None:
        """The thread is stuck in a call: cut its socket and use a fresh thread."""
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.client.socket().shutdown(socket.SHUT_RDWR)
            self._session = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _connect(self) -> _Session:
        if self._state is None:
            self._state = await self._call(load_state, self.state_path)
        session = await self._call(self._open, guard=self.mailbox.timeout * 4 + 5)
        self._reconcile(session.uidvalidity)
        log.info(
            "event=imap_connected mailbox=%s host=%s port=%d security=%s folder=%s idle=%s "
            "move=%s keyword=%s",
            self.mailbox.name,
            self.mailbox.host,
            self.mailbox.effective_port,
            self.mailbox.security,
            self.mailbox.folder,
            session.idle,
            session.move,
            session.keyword,
        )
        return session

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.mailbox.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _open(self) -> _Session:
        """(thread) Connect, secure, log in, select the folder, read its capabilities."""
        mb = self.mailbox
        context = self._ssl_context() if mb.security != "none" else None
        client = self._factory(
            mb.host,
            port=mb.effective_port,
            ssl=mb.security == "ssl",
            ssl_context=context,
            timeout=mb.timeout,
        )
        try:
            if mb.security == "starttls":
                client.starttls(context)
            client.login(mb.username, mb.password)
            selected = client.select_folder(mb.folder)
            caps = {bytes(c).upper() for c in client.capabilities()}
            _pop_new_mail(client)  # the SELECT's own EXISTS: the first round covers it
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        if mb.move_to and not ({b"MOVE", b"UIDPLUS"} & caps):
            log.warning(
                "event=imap_no_uid_expunge mailbox=%s detail=moved messages stay "
                "behind flagged \\Deleted",
                mb.name,
            )
        return _Session(
            client=client,
            uidvalidity=int(selected[b"UIDVALIDITY"]),
            idle=mb.idle and b"IDLE" in caps,
            move=b"MOVE" in caps,
            uidplus=b"UIDPLUS" in caps,
            keyword=b"\\*" in tuple(selected.get(b"PERMANENTFLAGS", ())),
        )

    def _reconcile(self, uidvalidity: int) -> None:
        """Compare the saved UIDVALIDITY (and folder) with the server's; restart if changed."""
        state = self._state or MailboxState()
        if state.folder == self.mailbox.folder and state.uidvalidity == uidvalidity:
            return
        if state.uidvalidity is not None and state.folder == self.mailbox.folder:
            log.warning(
                "event=imap_uidvalidity_changed mailbox=%s old=%s new=%s last_uid=%d "
                "detail=re-reading the folder",
                self.mailbox.name,
                state.uidvalidity,
                uidvalidity,
                state.last_uid,
            )
        else:
            log.info(
                "event=imap_first_scan mailbox=%s folder=%s uidvalidity=%d",
                self.mailbox.name,
                self.mailbox.folder,
                uidvalidity,
            )
        self._state = MailboxState(uidvalidity, 0, self.mailbox.folder, rescan=True)

    async def _drop_session(self, *, graceful: bool) -> None:
        session, self._session = self._session, None
        self._idling = False
        if session is None:
            return
        close = session.client.logout if graceful else session.client.shutdown
        with contextlib.suppress(Exception):
            await self._call(close, guard=self.mailbox.timeout + 5)

    def _session_failed(self, exc: BaseException, delay: float) -> None:
        self._reconnects += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TransientError):
            log.warning(
                "event=imap_disconnected mailbox=%s error=%s retry_in=%.1fs",
                self.mailbox.name,
                exc,
                delay,
            )
        else:
            log.exception("event=imap_error mailbox=%s retry_in=%.1fs", self.mailbox.name, delay)

    def _next_backoff(self) -> float:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.reconnect_max)
        return delay

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    # -- one round ----------------------------------------------------------------

    def _criteria(self, session: _Session, state: MailboxState) -> list[str | bytes]:
        criteria: list[str | bytes] = ["UID", f"{state.last_uid + 1}:*"]
        if session.keyword:
            criteria += ["NOT", "KEYWORD", KEYWORD]
        if state.rescan and self.mailbox.mark_seen:
            criteria.append("UNSEEN")
        return criteria

    async def _round(self, session: _Session) -> int:
        """Spool every new message in UID order; stop at the first one that fails."""
        assert self._state is not None
        state = self._state
        ceiling = 0
        client = session.client
        if state.rescan:  # every UID up to here is processed or excluded once we finish
            ceiling = max(
                await self._call(client.search, ["UID", f"{state.last_uid + 1}:*"]), default=0
            )
        found = await self._call(client.search, self._criteria(session, state))
        # "UID n:*" always returns the last message, even below n: filter ourselves.
        uids = sorted(uid for uid in found if uid > state.last_uid)
        spooled = 0
        for uid in uids:
            if self._stop.is_set():
                return spooled
            if not await self._process(session, uid):
                self._retry_pending = True
                return spooled
            spooled += 1
        state = self._state
        if state.rescan:
            await self._save(replace(state, last_uid=max(state.last_uid, ceiling), rescan=False))
        self._retry_pending = False
        self._last_error = None
        self._last_poll_at = time.time()
        return spooled

    async def _process(self, session: _Session, uid: int) -> bool:
        """Fetch, spool, mark/move, save; False when the message must wait for a retry."""
        name = self.mailbox.name
        try:
            raw = await self._call(
                self._fetch, session.client, uid, guard=max(self._guard, self.mailbox.timeout * 10)
            )
        except CommandFailed as exc:
            return self._message_failed("imap_fetch_failed", uid, exc)
        if raw is None:
            log.warning("event=imap_message_gone mailbox=%s uid=%d", name, uid)
            await self._save(replace(self._state or MailboxState(), last_uid=uid))
            return True
        envelope = Envelope(
            listener=f"imap:{name}",
            account=self.mailbox.account,
            rcpt_tos=(),
            peer=self.mailbox.host,
            extra={"folder": self.mailbox.folder, "uid": uid, "uidvalidity": session.uidvalidity},
        )
        try:
            entry = await self.spool.put(raw, envelope)
        except Exception as exc:  # noqa: BLE001 - stays on the server, retried next round
            return self._message_failed("imap_spool_failed", uid, exc)
        try:
            await self._call(self._mark, session, uid)
        except CommandFailed as exc:
            return self._message_failed("imap_mark_failed", uid, exc, entry.id)
        await self._save(replace(self._state or MailboxState(), last_uid=uid))
        self._spooled += 1
        log.info(
            "event=imap_spooled mailbox=%s uid=%d spool_id=%s message_id=%s size=%d",
            name,
            uid,
            entry.id,
            header_message_id(raw),
            len(raw),
        )
        return True

    def _message_failed(
        self, event: str, uid: int, exc: BaseException, spool_id: str | None = None
    ) -> bool:
        self._last_error = f"uid {uid}: {type(exc).__name__}: {exc}"
        log.error(
            "event=%s mailbox=%s uid=%d spool_id=%s error=%s detail=retried next round",
            event,
            self.mailbox.name,
            uid,
            spool_id,
            exc,
        )
        return False

    def _fetch(self, client: IMAPClient, uid: int) -> bytes | None:
        """(thread) The raw message, or None when the server no longer has this UID."""
        item = client.fetch([uid], ["BODY.PEEK[]"]).get(uid)
        if item is not None and item.get(b"BODY[]") is not None:
            return bytes(item[b"BODY[]"])
        if client.search(["UID", str(uid)]):
            raise CommandFailed(f"FETCH returned no body for uid {uid}")
        return None

    def _mark(self, session: _Session, uid: int) -> None:
        """(thread) After the spool write: \\Seen and the keyword, then move if configured."""
        client, target = session.client, self.mailbox.move_to
        flags = [SEEN] if self.mailbox.mark_seen else []
        if session.keyword:
            flags.append(KEYWORD)
        if flags:
            client.add_flags([uid], flags, silent=True)
        if not target:
            return
        if not session.target_ready:
            if not client.folder_exists(target):
                client.create_folder(target)
                log.info(
                    "event=imap_folder_created mailbox=%s folder=%s", self.mailbox.name, target
                )
            session.target_ready = True
        if session.move:
            client.move([uid], target)
            return
        client.copy([uid], target)
        client.add_flags([uid], [DELETED], silent=True)
        if session.uidplus:
            client.uid_expunge([uid])

    async def _save(self, state: MailboxState) -> None:
        self._state = state
        try:
            await self._call(save_state, self.state_path, state)
        except TransientError as exc:  # the keyword still guards against re-spooling
            self._last_error = f"state file: {exc}"
            log.error(
                "event=imap_state_write_failed mailbox=%s path=%s error=%s",
                self.mailbox.name,
                self.state_path,
                exc,
            )

    # -- waiting for mail ---------------------------------------------------------

    async def _wait_for_mail(self) -> None:
        session = self._session
        if session is None or self._stop.is_set():
            return
        if await self._call(_pop_new_mail, session.client):
            return  # mail arrived during the round: go again at once
        if session.idle:
            await self._idle(session)
        else:
            await self._sleep(self.mailbox.poll_interval)

    async def _idle(self, session: _Session) -> None:
        """One IDLE of at most ``idle_timeout`` s; returns on new mail, timeout or stop()."""
        client = session.client
        await self._call(client.idle)
        self._idling = True
        log.debug(
            "event=imap_idle mailbox=%s timeout=%.0fs", self.mailbox.name, self.mailbox.idle_timeout
        )
        deadline = time.monotonic() + self.mailbox.idle_timeout
        try:
            while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
                wait = min(_IDLE_SLICE, left)
                started = time.monotonic()
                answers = await self._call(
                    client.idle_check, wait, guard=wait + self.mailbox.timeout
                )
                if any(a and a[0] == b"BYE" for a in answers):
                    raise ConnectionLost("server said BYE while idling")
                if any(len(a) > 1 and a[1] in _NEW_MAIL for a in answers):
                    break
                if not answers and time.monotonic() - started < wait / 2:
                    raise ConnectionLost("EOF while idling")  # idle_check swallows EOF
        finally:
            self._idling = False
        await self._call(client.idle_done)
