"""One IMAP session of a poller: the blocking commands, each on an explicit client.

:mod:`daemon.inbound.imap` runs the round (and describes it); this module holds what it
asks the server. Everything marked *(thread)* blocks and is only ever called through the
poller's own executor, so its guard can abandon a stuck call; the rest is pure (or only
logs). Library errors are not caught here: the poller maps them to ``ConnectionLost`` /
``CommandFailed`` (:mod:`daemon.inbound.imap_state`), which the functions here raise
themselves for a FETCH without a body and for BYE or EOF while idling.

"Already processed" marker: the keyword ``$eleads`` is set with (or instead of) \\Seen
whenever the folder accepts keywords (PERMANENTFLAGS has ``\\*``), and every search
excludes it, so a lost or stale state file never re-spools what was spooled. \\Seen alone
is not used for that in normal rounds (a person may read a lead before we poll). A
*rescan* (first run, another folder, or a changed UIDVALIDITY: ``last_uid`` restarts
at 0) also excludes \\Seen when ``mark_seen`` is on, the only marker a server without
keywords keeps; at its end ``last_uid`` jumps to the highest UID seen before the search.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from imapclient import DELETED, SEEN, IMAPClient

from daemon.config import IMAPMailbox
from daemon.inbound.imap_state import CommandFailed, ConnectionLost, MailboxState
from daemon.spool import Envelope
from daemon.tls import client_context

# The poller's logger: its events keep one logger name whichever module logs them.
log = logging.getLogger("daemon.inbound.imap")

#: Set on every message once it is spooled (when the folder accepts keywords).
KEYWORD = b"$eleads"
#: Untagged answers that mean new mail in the selected folder.
NEW_MAIL = (b"EXISTS", b"RECENT")


@dataclass
class Session:
    """A logged-in client with its folder selected, and what the server can do."""

    client: IMAPClient
    uidvalidity: int
    idle: bool
    move: bool
    uidplus: bool
    keyword: bool
    target_ready: bool = False


def pop_new_mail(client: IMAPClient) -> bool:
    """(thread) Did an EXISTS/RECENT arrive inside another command's answer (say, SEARCH)?

    Such a message is invisible to the next IDLE, so the caller runs another round.
    imaplib keeps unsolicited responses until asked (``IMAP4.response``); EXPUNGE (one
    per MOVE) is dropped here too, or it would pile up over a long session.
    """
    imap = getattr(client, "_imap", None)
    if imap is None or not hasattr(imap, "response"):
        return False
    imap.response("EXPUNGE")
    return any(imap.response(name.decode())[1] != [None] for name in NEW_MAIL)


def ssl_context(mailbox: IMAPMailbox) -> ssl.SSLContext:
    return client_context(ca_file=mailbox.ca_file, verify=mailbox.verify_tls)


def open_session(mailbox: IMAPMailbox, factory: Callable[..., IMAPClient]) -> Session:
    """(thread) Connect, secure, log in, select the folder, read its capabilities."""
    mb = mailbox
    context = ssl_context(mb) if mb.security != "none" else None
    client = factory(
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
        pop_new_mail(client)  # the SELECT's own EXISTS: the first round covers it
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
    return Session(
        client=client,
        uidvalidity=int(selected[b"UIDVALIDITY"]),
        idle=mb.idle and b"IDLE" in caps,
        move=b"MOVE" in caps,
        uidplus=b"UIDPLUS" in caps,
        keyword=b"\\*" in tuple(selected.get(b"PERMANENTFLAGS", ())),
    )


def log_connected(mailbox: IMAPMailbox, session: Session) -> None:
    log.info(
        "event=imap_connected mailbox=%s host=%s port=%d security=%s folder=%s idle=%s "
        "move=%s keyword=%s",
        mailbox.name,
        mailbox.host,
        mailbox.effective_port,
        mailbox.security,
        mailbox.folder,
        session.idle,
        session.move,
        session.keyword,
    )


def reconcile(mailbox: IMAPMailbox, state: MailboxState, uidvalidity: int) -> MailboxState:
    """Compare the saved UIDVALIDITY (and folder) with the server's; restart if changed."""
    if state.folder == mailbox.folder and state.uidvalidity == uidvalidity:
        return state
    if state.uidvalidity is not None and state.folder == mailbox.folder:
        log.warning(
            "event=imap_uidvalidity_changed mailbox=%s old=%s new=%s last_uid=%d "
            "detail=re-reading the folder",
            mailbox.name,
            state.uidvalidity,
            uidvalidity,
            state.last_uid,
        )
    else:
        log.info(
            "event=imap_first_scan mailbox=%s folder=%s uidvalidity=%d",
            mailbox.name,
            mailbox.folder,
            uidvalidity,
        )
    return MailboxState(uidvalidity, 0, mailbox.folder, rescan=True)


def highest_uid(client: IMAPClient, last_uid: int) -> int:
    """(thread) The highest UID in the folder (0 when empty): where a rescan ends."""
    return max(client.search(["UID", f"{last_uid + 1}:*"]), default=0)


def new_uids(mailbox: IMAPMailbox, session: Session, state: MailboxState) -> list[int]:
    """(thread) The UIDs to spool this round, in order."""
    found = session.client.search(search_criteria(mailbox, session, state))
    # "UID n:*" always returns the last message, even below n: filter ourselves.
    return sorted(uid for uid in found if uid > state.last_uid)


def search_criteria(
    mailbox: IMAPMailbox, session: Session, state: MailboxState
) -> list[str | bytes]:
    """The SEARCH for new messages: above ``last_uid``, never marked as processed."""
    criteria: list[str | bytes] = ["UID", f"{state.last_uid + 1}:*"]
    if session.keyword:
        criteria += ["NOT", "KEYWORD", KEYWORD]
    if state.rescan and mailbox.mark_seen:
        criteria.append("UNSEEN")
    return criteria


def fetch(client: IMAPClient, uid: int) -> bytes | None:
    """(thread) The raw message, or None when the server no longer has this UID."""
    item = client.fetch([uid], ["BODY.PEEK[]"]).get(uid)
    if item is not None and item.get(b"BODY[]") is not None:
        return bytes(item[b"BODY[]"])
    if client.search(["UID", str(uid)]):
        raise CommandFailed(f"FETCH returned no body for uid {uid}")
    return None


def envelope(mailbox: IMAPMailbox, session: Session, uid: int) -> Envelope:
    """Where a message came from, as the spool records it."""
    return Envelope(
        listener=f"imap:{mailbox.name}",
        account=mailbox.account,
        rcpt_tos=(),
        peer=mailbox.host,
        extra={"folder": mailbox.folder, "uid": uid, "uidvalidity": session.uidvalidity},
    )


def mark(mailbox: IMAPMailbox, session: Session, uid: int) -> None:
    """(thread) After the spool write: \\Seen and the keyword, then move if configured."""
    client, target = session.client, mailbox.move_to
    flags = [SEEN] if mailbox.mark_seen else []
    if session.keyword:
        flags.append(KEYWORD)
    if flags:
        client.add_flags([uid], flags, silent=True)
    if not target:
        return
    if not session.target_ready:
        ensure_folder(mailbox, client, target)
        session.target_ready = True
    if session.move:
        client.move([uid], target)
        return
    client.copy([uid], target)
    client.add_flags([uid], [DELETED], silent=True)
    if session.uidplus:
        client.uid_expunge([uid])


def ensure_folder(mailbox: IMAPMailbox, client: IMAPClient, folder: str) -> None:
    """(thread) Create ``folder`` unless the server already has it."""
    if not client.folder_exists(folder):
        client.create_folder(folder)
        log.info("event=imap_folder_created mailbox=%s folder=%s", mailbox.name, folder)


def idle_check(client: IMAPClient, wait: float) -> bool:
    """(thread) Wait up to ``wait`` s inside IDLE; True when new mail was announced."""
    started = time.monotonic()
    answers = client.idle_check(wait)
    if any(a and a[0] == b"BYE" for a in answers):
        raise ConnectionLost("server said BYE while idling")
    if any(len(a) > 1 and a[1] in NEW_MAIL for a in answers):
        return True
    if not answers and time.monotonic() - started < wait / 2:
        raise ConnectionLost("EOF while idling")  # idle_check swallows EOF
    return False
