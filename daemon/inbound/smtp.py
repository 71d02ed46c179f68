"""The SMTP listener: admission, routing checks, the durable spool write, the reply code.

No parsing and no database here. A recipient that routes to no account is refused (550),
so eleads is never an open relay; 250 is answered only once the spool write is fsynced;
any internal error is answered 451 (try again), never a 5xx that would bounce a good lead.

Limits (``smtp:`` in config.yaml): at most ``max_connections`` open connections and
``rate_limit_per_ip`` new connections per client IP per minute; over either, the client
gets ``421`` and the connection is closed (a sender's MTA retries later). Idle clients are
dropped after ``timeout`` seconds (aiosmtpd's own timer) and messages over
``max_message_size`` get 552.

Stopping (:meth:`SMTPListener.drain`): new connections and new transactions (MAIL) on
open ones are answered 421; transactions already past MAIL get ``drain_timeout`` seconds to
finish (their 250 still means "durably spooled"); then every connection is closed.

The handler reads ``settings`` on every command, so a config reload (SIGHUP) changes
routing for connections that are already open; :class:`SMTPListener` builds each new
connection's protocol from the settings current at that moment.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from daemon.config import Settings, SMTPSettings
from daemon.routing import route_recipient
from daemon.spool import Envelope, SpoolStore

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"
STOPPING = "421 4.3.2 Service shutting down, please try again later"
TOO_MANY = "421 4.7.0 Too many connections, please try again later"
RATE_LIMITED = "421 4.7.0 Too many connections from your address, please slow down"


@dataclass
class ListenerStats:
    """Counters of one listener since start (read by daemon/metrics.py and the status file)."""

    connections: collections.Counter[str] = field(default_factory=collections.Counter)
    messages: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_json(self) -> dict[str, dict[str, int]]:
        return {"connections": dict(self.connections), "messages": dict(self.messages)}


class InboundHandler:
    """aiosmtpd handler object (hooks are found by name)."""

    def __init__(
        self,
        *,
        settings: Settings,
        spool: SpoolStore,
        listener: str = "smtp",
        stats: ListenerStats | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.listener = listener
        self.stats = stats or ListenerStats()
        #: Set when the daemon stops: new transactions are answered 421.
        self.stopping = False

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self.stopping:
            self.stats.messages["refused_stopping"] += 1
            _close_after_reply(server)
            return STOPPING
        # With this hook present aiosmtpd leaves the envelope to us.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        route = route_recipient(self.settings, address)
        if route is None:
            self.stats.messages["refused_recipient"] += 1
            log.info(
                "event=rcpt_refused listener=%s peer=%s rcpt_domain=%s",
                self.listener,
                _peer(session),
                address.rpartition("@")[2].lower() or "-",
            )
            return f"550 5.1.1 <{address}>: no such recipient here (relaying denied)"
        envelope.rcpt_tos.append(address)
        if not hasattr(envelope, "eleads_routes"):
            envelope.eleads_routes = []
        envelope.eleads_routes.append(route)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.stats.messages["received"] += 1
        raw: bytes = envelope.original_content or envelope.content or b""
        routes = [r for r in getattr(envelope, "eleads_routes", []) if r.account]
        accounts = {r.account for r in routes}
        account = accounts.pop() if len(accounts) == 1 else None
        locations = {r.location for r in routes if r.account == account and r.location}
        spooled = Envelope(
            listener=self.listener,
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            peer=_peer(session),
            account=account,
            location=locations.pop() if len(locations) == 1 else None,
        )
        try:
            entry = await self.spool.put(raw, spooled)
        except Exception:
            self.stats.messages["tempfail"] += 1
            log.exception("event=spool_put_failed peer=%s size=%d", spooled.peer, len(raw))
            return TEMPFAIL
        self.stats.messages["accepted"] += 1
        log.info(
            "event=message_accepted listener=%s spool_id=%s account=%s peer=%s size=%d rcpts=%d",
            self.listener,
            entry.id,
            account or "-",
            spooled.peer,
            len(raw),
            len(envelope.rcpt_tos),
        )
        return f"250 2.0.0 OK queued as {entry.id}"

    async def handle_exception(self, error: Exception) -> str:
        log.error("event=smtp_internal_error listener=%s error=%r", self.listener, error)
        return TEMPFAIL


def _close_after_reply(server: SMTP) -> None:
    """Close once the reply being returned is written (aiosmtpd writes it synchronously
    right after the hook returns; ``close`` then flushes the buffer before closing)."""
    transport = server.transport
    if transport is not None:
        asyncio.get_running_loop().call_soon(transport.close)


def _peer(session: Any) -> str | None:
    peer = getattr(session, "peer", None)
    if isinstance(peer, tuple) and peer:
        return f"{peer[0]}:{peer[1]}" if len(peer) > 1 else str(peer[0])
    return str(peer) if peer else None


class _Authenticator:
    """Checks AUTH PLAIN/LOGIN against config users in constant time."""

    def __init__(self, config: SMTPSettings) -> None:
        assert config.auth is not None
        self._users = {u.username.encode(): u.password.encode() for u in config.auth.users}

    def __call__(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self._users.get(auth_data.login, b"")
        ok = hmac.compare_digest(expected, auth_data.password) and bool(expected)
        if not ok:
            log.info("event=smtp_auth_failed peer=%s", _peer(session))
        # handled=False: aiosmtpd answers 535 itself (handled=True would answer nothing).
        return AuthResult(success=ok, handled=False)


def tls_context(config: SMTPSettings) -> ssl.SSLContext | None:
    """The STARTTLS context (None without ``smtp.tls``); raises when the files are bad."""
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.tls.cert_file), str(config.tls.key_file))
    return context


class SMTPGate:
    """Admission control for one listener: connection count, per-IP rate, stopping."""

    def __init__(
        self, config: SMTPSettings, stats: ListenerStats, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.stats = stats
        self.clock = clock
        self.open: set[EleadsSMTP] = set()
        self.stopping = False
        self._recent: dict[str, collections.deque[float]] = {}
        self._logged: dict[tuple[str, str], float] = {}

    def admit(self, peer: Any) -> str | None:
        """None to admit the connection, else the 421 line to answer before closing."""
        ip = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        if self.stopping:
            reason, reply = "stopping", STOPPING
        elif len(self.open) >= self.config.max_connections:
            reason, reply = "max_connections", TOO_MANY
        elif not self._within_rate(ip):
            reason, reply = "rate_limited", RATE_LIMITED
        else:
            self.stats.connections["accepted"] += 1
            return None
        self.stats.connections[f"refused_{reason}"] += 1
        self._log_refusal(reason, ip)
        return reply

    def _log_refusal(self, reason: str, ip: str) -> None:
        """One line per address and reason per minute: a flood must not flood the log."""
        now = self.clock()
        if now - self._logged.get((reason, ip), -60.0) < 60.0:
            return
        if len(self._logged) > 10_000:
            self._logged = {k: t for k, t in self._logged.items() if now - t < 60.0}
        self._logged[(reason, ip)] = now
        log.warning(
            "event=smtp_connection_refused reason=%s peer=%s refused_total=%d",
            reason,
            ip,
            self.stats.connections[f"refused_{reason}"],
        )

    def _within_rate(self, ip: str) -> bool:
        limit = self.config.rate_limit_per_ip
        if not limit or _exempt(ip, self.config):
            return True
        now = self.clock()
        window = self._recent.setdefault(ip, collections.deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(self._recent) > 10_000:  # forget quiet addresses; bounded memory
            for key in [k for k, v in self._recent.items() if not v or v[-1] <= now - 60.0]:
                del self._recent[key]
            window = self._recent.setdefault(ip, window)
        if len(window) >= limit:
            return False
        window.append(now)
        return True


def _exempt(ip: str, config: SMTPSettings) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in config.rate_limit_exempt)


class EleadsSMTP(SMTP):
    """aiosmtpd's protocol plus admission (:class:`SMTPGate`) and tracking for drain."""

    def __init__(self, handler: InboundHandler, *, gate: SMTPGate, **options: Any) -> None:
        super().__init__(handler, **options)
        self.gate = gate
        self._refusal: str | None = None
        self._admitted: bool | None = None  # None until the first connection_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._admitted is None:  # not the second call after STARTTLS
            self._refusal = self.gate.admit(transport.get_extra_info("peername"))
            self._admitted = self._refusal is None
            if self._admitted:
                self.gate.open.add(self)

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            await self.push(self._refusal)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        self.gate.open.discard(self)
        super().connection_lost(error)

    @property
    def in_transaction(self) -> bool:
        """Past MAIL and not yet answered after DATA (or reset): must not be cut off."""
        envelope = self.envelope
        return envelope is not None and envelope.mail_from is not None

    def hang_up(self, reply: str | None = STOPPING) -> None:
        """Close now, with ``reply`` first (only safe while no command is being answered)."""
        transport = cast("asyncio.WriteTransport | None", self.transport)
        if transport is None:
            return
        if reply is not None:
            transport.write(reply.encode() + b"\r\n")
        transport.close()


class SMTPListener:
    """A listening socket, its handler and gate; ``drain`` for a clean stop."""

    def __init__(
        self,
        *,
        settings: Settings,
        spool: SpoolStore,
        handler: InboundHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler = handler or InboundHandler(settings=settings, spool=spool)
        self.stats = self.handler.stats
        self.gate = SMTPGate(settings.smtp, self.stats, clock)
        self.settings = settings
        self.server: asyncio.Server | None = None
        self._port: int | None = None
        self._tls_context = tls_context(settings.smtp)

    def reconfigure(self, settings: Settings) -> None:
        """New settings for routing (open connections too) and for new connections."""
        if settings.smtp.tls != self.settings.smtp.tls:
            self._tls_context = tls_context(settings.smtp)
        self.settings = settings
        self.handler.settings = settings
        self.gate.config = settings.smtp

    def _protocol(self) -> EleadsSMTP:
        config = self.settings.smtp
        loop = asyncio.get_running_loop()
        loopback = config.host in ("127.0.0.1", "::1", "localhost")
        options: dict[str, Any] = {
            "data_size_limit": config.max_message_size,
            "enable_SMTPUTF8": True,
            "decode_data": False,
            "hostname": config.hostname,
            "ident": "eleads",
            "timeout": config.timeout,
            "tls_context": self._tls_context,
            "require_starttls": bool(config.tls and config.tls.require_starttls),
        }
        if config.auth is not None:
            options.update(
                authenticator=_Authenticator(config),
                auth_required=config.auth.required,
                auth_require_tls=not loopback or self._tls_context is not None,
            )
        return EleadsSMTP(self.handler, gate=self.gate, loop=loop, **options)

    async def start(self) -> asyncio.Server:
        config = self.settings.smtp
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, host=config.host, port=config.port)
        log.info(
            "event=smtp_listening host=%s port=%s tls=%s auth=%s max_connections=%d",
            config.host,
            self.port,
            self._tls_context is not None,
            config.auth is not None,
            config.max_connections,
        )
        return self.server

    @property
    def port(self) -> int:
        """The bound port (kept after close, for the final status report)."""
        if self._port is None:
            assert self.server is not None
            self._port = int(self.server.sockets[0].getsockname()[1])
        return self._port

    def begin_stop(self) -> None:
        """From now on: 421 to new connections and to MAIL on open ones."""
        self.gate.stopping = True
        self.handler.stopping = True

    async def drain(self, timeout: float) -> int:
        """Let transactions in flight finish (up to ``timeout``), then close everything.

        Returns how many connections were still in a transaction at the deadline.
        """
        self.begin_stop()
        deadline = time.monotonic() + timeout
        while True:
            for proto in list(self.gate.open):
                if not proto.in_transaction:
                    proto.hang_up()
            busy = [p for p in self.gate.open if p.in_transaction]
            if not busy or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        for proto in list(self.gate.open):
            proto.hang_up()
        if busy:
            log.warning("event=smtp_drain_timeout cut_off=%d", len(busy))
        if self.server is not None:
            self.server.close()
        return len(busy)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), timeout=timeout)
            except TimeoutError:
                log.warning("event=smtp_close_timeout")


async def start_smtp_server(
    *, settings: Settings, spool: SpoolStore, handler: InboundHandler | None = None
) -> asyncio.Server:
    """Listen on the daemon's own loop (not aiosmtpd's Controller thread)."""
    return await SMTPListener(settings=settings, spool=spool, handler=handler).start()
