"""Where outgoing mail goes: the transport seam (httpx style), and its two real kinds.

``Transport.send(message, *, sender, recipients) -> SendResult`` is all the outbox
sender knows. Errors are mapped here, at the boundary, into the eleads tree:

- ``TransientError``: network trouble, timeouts, any 4xx, and any failure while opening
  the session (greeting, EHLO, STARTTLS, AUTH) - those say nothing about this message and
  may be fixed by the relay's admin, so they are retried;
- ``PermanentError``: a 5xx answer to MAIL FROM, RCPT TO or DATA - the relay refuses this
  message and will keep refusing it. The server's answer is the reason.

``MaildirTransport`` (the embedded default, ``data_dir/outbox``) delivers to a real
Maildir with the stdlib :mod:`mailbox` and fsyncs it before reporting success.
``RelayTransport`` talks to an SMTP relay with aiosmtplib and keeps one connection open
between messages sent close together.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import os
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from daemon.config import RelaySettings, Settings
from daemon.errors import PermanentError, TransientError
from daemon.tls import client_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    """What the transport could say about a delivered message."""

    #: Maildir file written (MaildirTransport), else None.
    path: str | None = None
    #: The relay's final answer (e.g. "250 2.0.0 Ok: queued as ...").
    response: str = ""
    #: Recipients the relay refused while accepting the others: address -> answer.
    refused: dict[str, str] = field(default_factory=dict)


class Transport(Protocol):
    async def send(
        self, message: EmailMessage, *, sender: str, recipients: list[str]
    ) -> SendResult: ...


class MaildirTransport:
    """Writes each message into a Maildir (``new/``), fsynced, in an executor thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(
        self, message: EmailMessage, *, sender: str, recipients: list[str]
    ) -> SendResult:
        del sender, recipients  # the message's own headers say it all in a Maildir
        data = message.as_bytes(policy=message.policy.clone(linesep="\n"))
        loop = asyncio.get_running_loop()
        try:
            path = await loop.run_in_executor(None, self._write, data)
        except OSError as exc:
            raise TransientError(f"maildir {self.directory}: {exc.strerror or exc}") from exc
        return SendResult(path=str(path))

    def _write(self, data: bytes) -> Path:
        self.directory.parent.mkdir(parents=True, exist_ok=True)  # Maildir makes one level
        box = mailbox.Maildir(self.directory, create=True)
        key = box.add(data)
        path = self.directory / "new" / key
        # mailbox does not fsync: make the file and its directory entry durable before
        # the notification is marked sent.
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(self.directory / "new", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path


def _answer(code: int, text: str) -> str:
    return f"{code} {' '.join(text.split())}".strip()


def map_smtp_error(exc: BaseException) -> TransientError | PermanentError:
    """One place that turns aiosmtplib/OSError failures into the eleads error tree."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        answers = [f"{r.recipient}: {_answer(r.code, r.message)}" for r in exc.recipients]
        reason = "all recipients refused: " + "; ".join(answers)
        if exc.recipients and all(500 <= r.code < 600 for r in exc.recipients):
            return PermanentError(reason)
        return TransientError(reason)
    session = (
        aiosmtplib.SMTPConnectError,
        aiosmtplib.SMTPHeloError,
        aiosmtplib.SMTPAuthenticationError,
        aiosmtplib.SMTPNotSupported,
        aiosmtplib.SMTPServerDisconnected,
        aiosmtplib.SMTPTimeoutError,
    )
    if isinstance(exc, session):
        return TransientError(f"relay session: {type(exc).__name__}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reason = _answer(exc.code, exc.message)
        if 500 <= exc.code < 600:
            return PermanentError(reason)
        return TransientError(reason)
    if isinstance(exc, OSError):
        return TransientError(f"relay unreachable: {exc.strerror or exc}")
    return TransientError(f"relay: {type(exc).__name__}: {exc}")


class RelayTransport:
    """SMTP relay client (aiosmtplib): STARTTLS/TLS/none, AUTH, timeouts.

    A connection used less than ``reuse_window`` seconds ago is reused (a burst of
    notifications costs one TCP/TLS/AUTH set-up, not one each); an older one is closed and
    replaced, because relays drop idle sessions. Sends are serialised by a lock.
    """

    def __init__(self, relay: RelaySettings, *, reuse_window: float = 5.0) -> None:
        self.relay = relay
        self.reuse_window = reuse_window
        self._client: aiosmtplib.SMTP | None = None
        self._last_used = 0.0
        self._lock = asyncio.Lock()

    def _new_client(self) -> aiosmtplib.SMTP:
        relay = self.relay
        return aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            username=relay.username,
            password=relay.password,
            timeout=relay.timeout,
            use_tls=relay.security == "tls",
            start_tls=relay.security == "starttls",
            tls_context=client_context(ca_file=relay.ca_file) if relay.ca_file else None,
        )

    async def _session(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connected client, and whether it was reused."""
        fresh = time.monotonic() - self._last_used < self.reuse_window
        if self._client is not None and self._client.is_connected and fresh:
            return self._client, True
        await self._drop()
        client = self._new_client()
        try:
            await client.connect()
        except BaseException as exc:
            client.close()
            raise map_smtp_error(exc) from exc
        self._client = client
        return client, False

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await asyncio.wait_for(client.quit(), timeout=2.0)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()

    async def send(
        self, message: EmailMessage, *, sender: str, recipients: list[str]
    ) -> SendResult:
        async with self._lock:
            for _ in range(2):
                client, reused = await self._session()
                try:
                    refused, response = await client.send_message(
                        message, sender=sender, recipients=recipients
                    )
                except aiosmtplib.SMTPServerDisconnected as exc:
                    self._client = None
                    if reused:
                        continue  # the relay had closed the idle session: one fresh try
                    raise map_smtp_error(exc) from exc
                except (aiosmtplib.SMTPException, OSError) as exc:
                    await self._drop()
                    raise map_smtp_error(exc) from exc
                self._last_used = time.monotonic()
                return SendResult(
                    response=response,
                    refused={addr: _answer(r.code, r.message) for addr, r in refused.items()},
                )
            raise TransientError("relay closed the session twice")

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()


def make_transport(settings: Settings) -> Transport:
    """The configured transport: the relay when set, else the outbox Maildir."""
    relay = settings.outbound.relay
    if relay is not None:
        return RelayTransport(relay)
    return MaildirTransport(settings.outbox_dir)
