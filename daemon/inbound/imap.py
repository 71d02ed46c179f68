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

Waiting: IDLE when the server offers it and ``mailbox.idle``; it is re-issued every
``idle_timeout`` seconds and checked in 1 s slices (prompt ``stop()``; an early empty
answer means EOF). Otherwise a plain wait of ``poll_interval``. Connection errors (EOF,
BrokenPipe, ``* BYE``, socket errors, timeouts, refused logins) reconnect with
exponential backoff from ``reconnect_min`` to ``reconnect_max``; a complete round resets it.

This module is the asyncio loop around the rounds. The IMAP commands themselves (login
and capabilities, UIDVALIDITY, SEARCH, FETCH, flags and MOVE) and the "already
processed" marker (``$eleads``, or \\Seen on a rescan) are in
:mod:`daemon.inbound.imap_session`; the state file and the errors in
:mod:`daemon.inbound.imap_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import imaplib
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from imapclient import IMAPClient

from daemon.config import IMAPMailbox
from daemon.errors import TransientError
from daemon.inbound import imap_session
from daemon.inbound.imap_session import KEYWORD, Session
from daemon.inbound.imap_state import (
    CommandFailed,
    ConnectionLost,
    IMAPStatus,
    MailboxState,
    load_state,
    save_state,
)
from daemon.pipeline import header_message_id
from daemon.spool import SpoolStore

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "KEYWORD",
    "CommandFailed",
    "ConnectionLost",
    "IMAPPoller",
    "IMAPStatus",
    "MailboxState",
    "load_state",
]

_IDLE_SLICE = 1.0


class IMAPPoller:
    """Polls (or IDLEs on) one mailbox and spools each new message exactly once."""

    def __init__(
        self,
        *,
        mailbox: IMAPMailbox,
        spool: SpoolStore,
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
        self._session: Session | None = None
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

    async def _connect(self) -> Session:
        if self._state is None:
            self._state = await self._call(load_state, self.state_path)
        session = await self._call(
            imap_session.open_session,
            self.mailbox,
            self._factory,
            guard=self.mailbox.timeout * 4 + 5,
        )
        self._state = imap_session.reconcile(
            self.mailbox, self._state or MailboxState(), session.uidvalidity
        )
        imap_session.log_connected(self.mailbox, session)
        return session

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

    async def _round(self, session: Session) -> int:
        """Spool every new message in UID order; stop at the first one that fails."""
        assert self._state is not None
        state = self._state
        ceiling = 0
        if state.rescan:  # every UID up to here is processed or excluded once we finish
            ceiling = await self._call(imap_session.highest_uid, session.client, state.last_uid)
        uids = await self._call(imap_session.new_uids, self.mailbox, session, state)
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

    async def _process(self, session: Session, uid: int) -> bool:
        """Fetch, spool, mark/move, save; False when the message must wait for a retry."""
        name = self.mailbox.name
        try:
            raw = await self._call(
                imap_session.fetch,
                session.client,
                uid,
                guard=max(self._guard, self.mailbox.timeout * 10),
            )
        except CommandFailed as exc:
            return self._message_failed("imap_fetch_failed", uid, exc)
        if raw is None:
            log.warning("event=imap_message_gone mailbox=%s uid=%d", name, uid)
            await self._save(replace(self._state or MailboxState(), last_uid=uid))
            return True
        try:
            entry = await self.spool.put(raw, imap_session.envelope(self.mailbox, session, uid))
        except Exception as exc:  # noqa: BLE001 - stays on the server, retried next round
            return self._message_failed("imap_spool_failed", uid, exc)
        try:
            await self._call(imap_session.mark, self.mailbox, session, uid)
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
        if await self._call(imap_session.pop_new_mail, session.client):
            return  # mail arrived during the round: go again at once
        if session.idle:
            await self._idle(session)
        else:
            await self._sleep(self.mailbox.poll_interval)

    async def _idle(self, session: Session) -> None:
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
                guard = wait + self.mailbox.timeout
                if await self._call(imap_session.idle_check, client, wait, guard=guard):
                    break
        finally:
            self._idling = False
        await self._call(client.idle_done)
