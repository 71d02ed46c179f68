"""The SMTP listener: routing checks, the durable spool write, the reply code. Nothing else.

No parsing and no database here. A recipient that routes to no account is refused (550),
so eleads is never an open relay; 250 is answered only once the spool write is fsynced;
any internal error is answered 451 (try again), never a 5xx that would bounce a good lead.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from daemon.config import Settings, SMTPSettings
from daemon.routing import route_recipient
from daemon.spool import Envelope, Spool

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"


class InboundHandler:
    """aiosmtpd handler object (hooks are found by name)."""

    def __init__(self, *, settings: Settings, spool: Spool, listener: str = "smtp") -> None:
        self.settings = settings
        self.spool = spool
        self.listener = listener

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        route = route_recipient(self.settings, address)
        if route is None:
            log.info("event=rcpt_refused peer=%s rcpt=%s", _peer(session), address)
            return f"550 5.1.1 <{address}>: no such recipient here (relaying denied)"
        envelope.rcpt_tos.append(address)
        if not hasattr(envelope, "eleads_routes"):
            envelope.eleads_routes = []
        envelope.eleads_routes.append(route)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
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
            log.exception("event=spool_put_failed peer=%s size=%d", spooled.peer, len(raw))
            return TEMPFAIL
        log.info(
            "event=message_accepted listener=%s spool_id=%s peer=%s size=%d rcpts=%d",
            self.listener,
            entry.id,
            spooled.peer,
            len(raw),
            len(envelope.rcpt_tos),
        )
        return f"250 2.0.0 OK queued as {entry.id}"

    async def handle_exception(self, error: Exception) -> str:
        log.error("event=smtp_internal_error error=%r", error)
        return TEMPFAIL


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


def _tls_context(config: SMTPSettings) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.tls.cert_file), str(config.tls.key_file))
    return context


async def start_smtp_server(
    *, settings: Settings, spool: Spool, handler: InboundHandler | None = None
) -> asyncio.Server:
    """Listen on the daemon's own loop (not aiosmtpd's Controller thread)."""
    config = settings.smtp
    handler = handler or InboundHandler(settings=settings, spool=spool)
    tls_context = _tls_context(config)
    loopback = config.host in ("127.0.0.1", "::1", "localhost")
    options: dict[str, Any] = {
        "data_size_limit": config.max_message_size,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "hostname": config.hostname,
        "ident": "eleads",
        "timeout": config.timeout,
        "tls_context": tls_context,
        "require_starttls": bool(config.tls and config.tls.require_starttls),
    }
    if config.auth is not None:
        options.update(
            authenticator=_Authenticator(config),
            auth_required=config.auth.required,
            auth_require_tls=not loopback or tls_context is not None,
        )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, loop=loop, **options), host=config.host, port=config.port
    )
    log.info(
        "event=smtp_listening host=%s port=%s tls=%s auth=%s",
        config.host,
        server.sockets[0].getsockname()[1],
        tls_context is not None,
        config.auth is not None,
    )
    return server
