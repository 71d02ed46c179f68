"""A real Dovecot IMAP server for tests (the verified recipe in shared/notes/test-servers.md).

``dovecot`` is a session-scoped fixture: one server on 127.0.0.1 on a free port, under a
world-traversable temp dir (Dovecot's mail processes run as the ``dovecot`` user and must
reach the Maildirs). Any user name logs in with the static password, so each test uses
its own user and never sees another test's mail.

Skipped only when the ``dovecot`` binary is missing and ``CI`` is not ``"true"``; on CI a
missing server is a failure, so the IMAP tests cannot silently stop running.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.tls import write_self_signed

PASSWORD = "test-secret"  # a throw-away test server


def _find(name: str, *extra: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((p for p in extra if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _wait_gone(pid: int | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while pid is not None and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _users() -> tuple[str, str]:
    """(mail user, login user): the recipe's users as root, else ourselves for both."""
    if os.geteuid() == 0:
        return "dovecot", "dovenull"
    me = pwd.getpwuid(os.geteuid()).pw_name
    return me, me


class DovecotServer:
    """One running Dovecot; helpers to append mail, inspect it and break things."""

    host = "127.0.0.1"
    password = PASSWORD

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.doveadm = _find("doveadm", "/usr/bin/doveadm")
        self.root = root
        self.port = _free_port()
        #: Implicit-TLS port (self-signed certificate), None when openssl is missing.
        self.tls_port = _free_port() if self._make_certificate() else None
        self.conf = root / "dovecot.conf"
        self.mail_user, login_user = _users()
        self.conf.write_text(self._config(login_user))

    def _make_certificate(self) -> bool:
        return write_self_signed(self.root / "cert.pem", self.root / "key.pem")

    def _tls_config(self) -> str:
        if self.tls_port is None:
            return "ssl = no\n"
        dh = Path("/usr/share/dovecot/dh.pem")
        return f"ssl = yes\nssl_cert = <{self.root}/cert.pem\nssl_key = <{self.root}/key.pem\n" + (
            f"ssl_dh = <{dh}\n" if dh.exists() else ""
        )

    def _config(self, login_user: str) -> str:
        r = self.root
        return (
            self._tls_config()
            + f"""
protocols = imap
listen = 127.0.0.1
base_dir = {r}/run
state_dir = {r}/state
first_valid_uid = 1
first_valid_gid = 1
default_internal_user = {self.mail_user}
default_internal_group = {self.mail_user}
default_login_user = {login_user}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
log_path = {r}/dovecot.log
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={self.mail_user} gid={self.mail_user} home={r}/mail/%u
}}
mail_location = maildir:{r}/mail/%u/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port or 0}
  }}
}}
"""
        )

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root / "mail", self.mail_user, self.mail_user)
            for path in (self.root / "mail").rglob("*"):
                shutil.chown(path, self.mail_user, self.mail_user)
        subprocess.run([self.binary, "-c", str(self.conf)], check=True, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=1) as sock,
            ):
                if sock.recv(100).startswith(b"* OK"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not start; see {self.root}/dovecot.log")

    def stop(self, *, command: bool = False) -> None:
        """SIGTERM the master and, at once, its children: an IDLEing imap process would
        otherwise keep its client connected for about ten more seconds. ``command``:
        ask ``dovecot -c conf stop`` to signal the master (the same SIGTERM) instead."""
        pid_file = self.root / "run" / "master.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().strip())
        children = _children(pid)
        stopper = subprocess.Popen([self.binary, "-c", str(self.conf), "stop"]) if command else None
        for target in children if command else [pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGTERM)
        for target in [pid, *children]:
            _wait_gone(target)
        if stopper is not None:
            stopper.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- mail ---------------------------------------------------------------------

    @contextlib.contextmanager
    def client(self, user: str, folder: str | None = "INBOX") -> Iterator[IMAPClient]:
        """A logged-in IMAPClient (plain text, loopback), with ``folder`` selected."""
        imap = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        try:
            imap.login(user, self.password)
            if folder is not None:
                imap.select_folder(folder)
            yield imap
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def append(
        self,
        user: str,
        messages: Iterable[bytes],
        folder: str = "INBOX",
        flags: tuple[bytes, ...] = (),
    ) -> None:
        with self.client(user, folder=None) as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
            for raw in messages:
                imap.append(folder, raw, flags=flags)

    def flags(self, user: str, folder: str = "INBOX") -> dict[int, set[bytes]]:
        """UID -> flags of every message in ``folder`` (an empty dict if it does not exist)."""
        with self.client(user, folder=None) as imap:
            if not imap.folder_exists(folder):
                return {}
            imap.select_folder(folder, readonly=True)
            data = imap.get_flags(imap.search(["ALL"]))
            return {uid: set(flags) for uid, flags in data.items()}

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        with self.client(user, folder=None) as imap:
            return int(imap.select_folder(folder, readonly=True)[b"UIDVALIDITY"])

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def message_file(self, user: str, marker: bytes) -> Path:
        """The Maildir file (INBOX) whose content contains ``marker``."""
        for sub in ("cur", "new"):
            for path in (self.maildir(user) / sub).iterdir():
                if marker in path.read_bytes():
                    return path
        raise FileNotFoundError(marker.decode())

    def kick(self, user: str) -> None:
        """Drop every IMAP connection of ``user`` server-side (their clients see EOF/BYE)."""
        if self.doveadm is None:
            raise RuntimeError("doveadm is not installed")
        subprocess.run(
            [self.doveadm, "-c", str(self.conf), "kick", user],
            check=True,
            timeout=30,
            capture_output=True,
        )

    def reset_uidvalidity(self, user: str) -> None:
        """Stop, forget INBOX's UID list and index (Dovecot then assigns the next
        UIDVALIDITY from its dovecot-uidvalidity counter), start."""
        before = self.uidvalidity(user)
        self.stop()
        for path in self.maildir(user).iterdir():
            if path.name == "dovecot-uidlist" or path.name.startswith("dovecot.index"):
                path.unlink()
        self.start()
        if self.uidvalidity(user) == before:
            raise RuntimeError("UIDVALIDITY did not change")


def make_message(
    subject: str,
    *,
    sender: str = "lead@provider.example",
    to: str = "leads@demo.example",
    body: str = "Hello",
) -> bytes:
    """A small, unique RFC 5322 message (the Message-ID follows the subject)."""
    mid = subject.replace(" ", "-").lower()
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{mid}@test.example>\r\nDate: Tue, 25 Nov 2025 10:00:00 +0000\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    binary = _find("dovecot", "/usr/sbin/dovecot")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dovecot is not installed (apt-get install -y dovecot-imapd)")
        pytest.skip("dovecot is not installed (apt-get install -y dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="eleads-dovecot-"))
    root.chmod(0o755)
    server = DovecotServer(binary, root)
    server.start()
    try:
        yield server
    finally:
        server.stop(command=True)
        shutil.rmtree(root, ignore_errors=True)
