"""config.yaml: its schema, loading, and the one frozen ``Settings`` built from it.

Only two environment variables are read, here and nowhere else: ``ELEADS_CONFIG`` (which
file, when ``--config`` is not given) and ``ELEADS_DATA_DIR`` (overrides ``data_dir``).
Every problem is reported as ``file: key.path: reason``; unknown keys are errors.
"""

from __future__ import annotations

import os
import re
import socket
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    model_validator,
)

from daemon.errors import ConfigError
from daemon.tls import client_context

ENV_CONFIG = "ELEADS_CONFIG"
ENV_DATA_DIR = "ELEADS_DATA_DIR"

_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_addresses(values: list[str]) -> list[str]:
    out = []
    for value in values:
        value = value.strip().lower()
        if not _ADDRESS.match(value):
            raise ValueError(f"not an email address: {value!r}")
        out.append(value)
    return out


def _check_routes(values: list[str]) -> list[str]:
    """Inbound routes are full addresses or ``@domain`` (every address of that domain)."""
    out = []
    for value in values:
        value = value.strip().lower()
        if value.startswith("@"):
            if not re.fullmatch(r"@[^@\s<>]+\.[^@\s<>]+", value):
                raise ValueError(f"not a domain route: {value!r}")
        elif not _ADDRESS.match(value):
            raise ValueError(f"not an email address or @domain: {value!r}")
        out.append(value)
    return out


Addresses = Annotated[list[str], AfterValidator(_check_addresses)]
Routes = Annotated[list[str], AfterValidator(_check_routes)]


class TLSSettings(_Model):
    cert_file: Path
    key_file: Path
    #: Refuse MAIL FROM until STARTTLS was done.
    require_starttls: bool = False


class SMTPUser(_Model):
    username: str
    password: str = Field(min_length=1, repr=False)


class SMTPAuthSettings(_Model):
    #: Refuse MAIL FROM until the client authenticated.
    required: bool = False
    users: list[SMTPUser] = Field(min_length=1)


class SMTPSettings(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    #: Name in the greeting and EHLO answer (default: the machine's FQDN).
    hostname: str | None = None
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    tls: TLSSettings | None = None
    auth: SMTPAuthSettings | None = None
    #: Seconds an idle client may take before the server hangs up.
    timeout: float = Field(default=300.0, gt=0)
    #: Open connections at most; one more is answered 421 and closed.
    max_connections: int = Field(default=100, ge=1)
    #: New connections per client IP per minute (0: no limit); over it: 421 and close.
    rate_limit_per_ip: int = Field(default=120, ge=0)
    #: Networks the per-IP limit does not apply to (a Postfix in front on this host).
    rate_limit_exempt: list[IPvAnyNetwork] = Field(
        default_factory=lambda: [ip_network("127.0.0.0/8"), ip_network("::1/128")]
    )
    #: On stop: seconds in-flight transactions get to finish (new ones are answered 421).
    drain_timeout: float = Field(default=20.0, ge=0)

    @model_validator(mode="after")
    def _auth_needs_tls_or_loopback(self) -> SMTPSettings:
        if self.auth and not self.tls and self.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("auth without tls is only allowed on a loopback host")
        return self


class IMAPMailbox(_Model):
    name: str = Field(pattern=_KEY.pattern)
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["ssl", "starttls", "none"] = "ssl"
    username: str
    password: str = Field(repr=False)
    folder: str = "INBOX"
    #: After the spool write: mark \\Seen, and/or move to this folder (created if missing).
    mark_seen: bool = True
    move_to: str | None = None
    #: Use IDLE when the server offers it; otherwise (or when false) poll.
    idle: bool = True
    #: Re-issue IDLE after this many seconds (servers and NAT drop idle links early).
    idle_timeout: float = Field(default=240.0, gt=0, le=29 * 60)
    poll_interval: float = Field(default=60.0, gt=0)
    #: Socket timeout for every IMAP command.
    timeout: float = Field(default=60.0, gt=0)
    #: Force every message of this mailbox to one account (default: route by recipient).
    account: str | None = None
    #: Verify the server's certificate (turn off only for a test server).
    verify_tls: bool = True
    #: PEM file of the CA certificate(s) to verify the server with instead of the
    #: system's (a private CA); relative: to the config file's directory.
    ca_file: Path | None = None

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return 993 if self.security == "ssl" else 143


class IMAPSettings(_Model):
    mailboxes: list[IMAPMailbox] = Field(default_factory=list)
    #: Reconnect backoff: first wait, doubled per failure up to the max.
    reconnect_min: float = Field(default=1.0, gt=0)
    reconnect_max: float = Field(default=300.0, gt=0)


def instance_name(data_dir: Path | None) -> str:
    """This instance among several sharing a database: its host and data dir (one
    ``eleads serve`` per data dir)."""
    return f"{socket.gethostname()}:{data_dir}" if data_dir else socket.gethostname()


class SpoolSettings(_Model):
    #: Processing attempts before a message moves to spool/failed/.
    max_attempts: int = Field(default=5, ge=1)
    retry_base: float = Field(default=30.0, gt=0)
    retry_max: float = Field(default=3600.0, gt=0)
    #: Group commit: gather messages arriving within this many ms into one fsync round.
    group_commit_ms: float = Field(default=2.0, ge=0, le=1000)
    #: "process": parse and store in a worker process beside the listeners (uses a
    #: second core); "thread": in the listener process (small installs, tests).
    worker: Literal["process", "thread"] = "process"
    #: CPU priority of the worker process relative to the listeners (0-19).
    worker_nice: int = Field(default=10, ge=0, le=19)
    #: On stop (and on a config reload): seconds the worker gets to finish its batch.
    stop_timeout: float = Field(default=30.0, gt=0)
    #: Where accepted messages wait: "files" (data_dir/spool), "database" (the shared
    #: database: any instance can finish what another accepted), or "auto": database on
    #: PostgreSQL, files on SQLite.
    store: Literal["auto", "files", "database"] = "auto"
    #: Database store: a claim not finished within this many seconds (its instance died)
    #: is taken again by another worker. Longer than any batch takes.
    lease_seconds: float = Field(default=120.0, ge=1)
    #: Database store: how often an idle worker looks for messages other instances accepted.
    poll_interval: float = Field(default=1.0, gt=0, le=60)


class RelaySettings(_Model):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    timeout: float = Field(default=30.0, gt=0)
    #: PEM file of the CA certificate(s) to verify the relay with instead of the system's
    #: (a private CA); relative: to the config file's directory.
    ca_file: Path | None = None


class OutboundSettings(_Model):
    from_address: str = "leads@eleads.example"
    from_name: str = "eLeads"
    #: Replies come back to <reply_local>+r-<token>@<reply_domain>.
    reply_local: str = Field(default="leads", pattern=r"^[A-Za-z0-9._-]{1,32}$")
    reply_domain: str = "eleads.example"
    #: None: outgoing mail is written to the Maildir <data_dir>/outbox/.
    relay: RelaySettings | None = None
    #: A file here replaces the packaged template of the same name (daemon/notify/templates);
    #: relative: to the config file's directory.
    templates_dir: Path | None = None
    #: How long a Conversion Issue reply address (+r-<token>) stays valid.
    token_ttl_days: int = Field(default=14, ge=1, le=365)
    #: Sending attempts (relay 4xx, network errors) before a notification is failed.
    max_attempts: int = Field(default=10, ge=1)
    #: Retry backoff in seconds: first wait, doubled per attempt up to the max.
    retry_base: float = Field(default=30.0, gt=0)
    retry_max: float = Field(default=3600.0, gt=0)
    #: The sender looks for due notifications at least this often (seconds), besides
    #: being woken when one is queued.
    poll_interval: float = Field(default=2.0, gt=0)


class NotificationAddresses(_Model):
    received: Addresses = Field(default_factory=list)
    appointment: Addresses = Field(default_factory=list)
    conversion_issue: Addresses = Field(default_factory=list)
    return_lead: Addresses = Field(default_factory=list)


class LocationSettings(_Model):
    key: str = Field(pattern=_KEY.pattern)
    name: str | None = None
    inbound_addresses: Routes = Field(default_factory=list)
    return_lead_alerts: Addresses = Field(default_factory=list)


class AccountSettings(_Model):
    id: str = Field(pattern=_KEY.pattern)
    name: str | None = None
    country: str = Field(default="US", pattern=r"^[A-Z]{2}$")
    #: Recipients that route to this account: addresses or @domain.
    inbound_addresses: Routes = Field(default_factory=list)
    locations: list[LocationSettings] = Field(default_factory=list)
    notifications: NotificationAddresses = Field(default_factory=NotificationAddresses)
    authorised_senders: Addresses = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_locations(self) -> AccountSettings:
        keys = [loc.key for loc in self.locations]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate location keys: {', '.join(dupes)}")
        return self

    def location(self, key: str) -> LocationSettings | None:
        return next((loc for loc in self.locations if loc.key == key), None)


def _database_url(url: str | None) -> str | None:
    if url is not None and not re.match(r"(sqlite|postgres|postgresql)://", url):
        raise ValueError("use sqlite:///path or postgresql://user:password@host:port/dbname")
    return url


class DatabaseSettings(_Model):
    #: None: sqlite at <data_dir>/eleads.db. Else ``sqlite:///path`` or
    #: ``postgresql://user:password@host:port/dbname`` (docs/scaling.md).
    url: Annotated[str | None, AfterValidator(_database_url)] = None


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"


class VisitSource(_Model):
    #: A glob; relative paths are under data_dir.
    path: str
    format: Literal["combined_cookie", "jsonl"]
    account: str | None = None


class VisitSettings(_Model):
    """The visit-log reader and return-lead alerts (docs/visits.md)."""

    enabled: bool = True
    interval_seconds: float = Field(default=60.0, gt=0)
    session_timeout_minutes: float = Field(default=30.0, gt=0)
    sources: list[VisitSource] = Field(default_factory=list)
    #: No second alert for the same prospect within this many minutes of the last
    #: alerted visit's start (0: off, every return visit alerts).
    cooldown_minutes: float = Field(default=0.0, ge=0)
    #: Extra user-agent regexes counted as bots, besides the crawler-user-agents list.
    bot_patterns: list[str] = Field(default_factory=list)
    #: Extra path regexes (matched at the start of the path) that are not page views,
    #: besides static assets and health checks.
    ignore_paths: list[str] = Field(default_factory=list)
    #: At most this many MiB of log are read per file per transaction (a backlog is
    #: read in several transactions within the same run).
    batch_mib: float = Field(default=32.0, gt=0)
    #: Visits of visitors not linked to any lead are deleted this many days after they
    #: ended (daily; 0: kept forever). Linked visitors' visits are always kept.
    retention_days: int = Field(default=180, ge=0)

    @model_validator(mode="after")
    def _patterns_compile(self) -> VisitSettings:
        for pattern in (*self.bot_patterns, *self.ignore_paths):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        return self


class ReplySettings(_Model):
    """How replies to our Conversion Issue emails are trusted and answered."""

    #: authserv-ids of our own trusted relay/MTA: an Authentication-Results header from
    #: one of them saying dkim=fail or dmarc=fail makes a reply refused (not answered).
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    #: At most this many refusal/help answers per sender per window (no mail storms).
    answers_per_sender: int = Field(default=20, ge=0)
    answer_window_hours: float = Field(default=2.0, gt=0)


class MatchSettings(_Model):
    """Thresholds of the three-way decision (daemon/match/decide.py explains the rules).

    A candidate's verdict comes from the rules (a strong identifier AND a compatible
    name is "same"; a conflict, or a name with only the place in common, is "maybe");
    its score (name similarity x evidence, daemon/match/score.py) ranks candidates and
    must reach ``clear_score`` for an automatic match.
    """

    #: Candidates retrieved per blocking key, at most (each kind takes half of it, the
    #: name-anywhere key a fifth): a few dozen per lead whatever the account's size.
    max_candidates: int = Field(default=50, ge=1, le=1000)
    #: A "same" candidate needs at least this score to be matched automatically; below it
    #: (thin evidence, e.g. an initial and one identifier) a human decides.
    clear_score: float = Field(default=0.9, gt=0, le=1)
    #: "maybe" candidates score between this and clear_score, "different" ones below.
    fuzzy_score: float = Field(default=0.5, gt=0, le=1)
    #: A second "same" candidate within this distance of the best one makes the lead fuzzy.
    competing_margin: float = Field(default=0.1, ge=0, le=1)
    #: Edits (insert, delete, substitute, swap two letters) that still count as a typo of
    #: a name of 4+ letters ("Fitzgerlad", "Baumgardner"); two known names never are.
    name_max_edits: int = Field(default=1, ge=0, le=3)
    #: ...and the similarity (1 - edits / length) such a typo must keep, unless it is a
    #: swap of two letters: "Nowak"/"Novak" is 0.8, "Hall"/"Hill" 0.75 (two names).
    name_min_similarity: float = Field(default=0.8, ge=0, le=1)
    #: Ranked candidates kept on the eLead and shown to humans.
    max_shown: int = Field(default=5, ge=1, le=50)
    #: An email/phone held by this many families (surnames) among the candidates, or a
    #: prospect with this many conflicting leads (the "canvasser typed their own email"
    #: pattern), no longer counts as identifying: a match through it needs another one.
    shared_contact_conflicts: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> MatchSettings:
        if self.fuzzy_score > self.clear_score:
            raise ValueError("fuzzy_score must not exceed clear_score")
        return self


class MetricsSettings(_Model):
    """The Prometheus endpoint (``GET /metrics``); loopback unless you open it on purpose."""

    enabled: bool = False
    host: str = "127.0.0.1"
    #: 0: any free port (tests).
    port: int = Field(default=9478, ge=0, le=65535)


class Settings(_Model):
    """Everything eleads needs to run; built once by :func:`load_settings`."""

    data_dir: Path = Path("var")
    #: Directory of provider rules (relative: to the config file's directory).
    rules_dir: Path = Path("rules")
    #: When exactly one account is configured, every recipient routes to it.
    catch_all_single_account: bool = True
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    smtp: SMTPSettings = Field(default_factory=SMTPSettings)
    imap: IMAPSettings = Field(default_factory=IMAPSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    visits: VisitSettings = Field(default_factory=VisitSettings)
    matching: MatchSettings = Field(default_factory=MatchSettings)
    replies: ReplySettings = Field(default_factory=ReplySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    accounts: list[AccountSettings] = Field(min_length=1)
    #: Where the settings came from (set by load_settings, not by the file).
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        ids = [a.id for a in self.accounts]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate account ids: {', '.join(dupes)}")
        names = [m.name for m in self.imap.mailboxes]
        if len(set(names)) != len(names):
            raise ValueError("imap mailbox names must be unique")
        for mailbox in self.imap.mailboxes:
            if mailbox.account and mailbox.account not in ids:
                raise ValueError(f"imap mailbox {mailbox.name}: unknown account {mailbox.account}")
        return self

    def account(self, account_id: str) -> AccountSettings | None:
        return next((a for a in self.accounts if a.id == account_id), None)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'eleads.db'}"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def instance_name(self) -> str:
        return instance_name(self.data_dir)

    @property
    def spool_idle_wait(self) -> float:
        """How long an idle worker waits before looking at the spool again (a wake-up ends
        the wait at once; other instances' messages in the database store do not wake it)."""
        return self.spool.poll_interval if self.spool_store == "database" else 5.0

    @property
    def spool_store(self) -> Literal["files", "database"]:
        """``spool.store`` with "auto" resolved (database on PostgreSQL)."""
        if self.spool.store != "auto":
            return self.spool.store
        return "files" if self.database_url.startswith("sqlite") else "database"

    @property
    def messages_dir(self) -> Path:
        return self.data_dir / "messages"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """--config, else $ELEADS_CONFIG, else ./config.yaml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(ENV_CONFIG) or "config.yaml")


def _format_location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top)"


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path)


def parse_settings(data: Any, *, source: Path) -> Settings:
    """Validate already-loaded YAML data; relative paths are resolved against the file."""
    name = str(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: (top): expected a mapping of settings")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = [f"{name}: {_format_location(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(problems[0], problems) from None
    base = source.resolve().parent
    data_dir = os.environ.get(ENV_DATA_DIR)
    resolved_data_dir = Path(data_dir).resolve() if data_dir else _resolve(base, settings.data_dir)
    return settings.model_copy(
        update={
            "data_dir": resolved_data_dir,
            "rules_dir": _resolve(base, settings.rules_dir),
            "source": source,
            **_with_ca_files_resolved(settings, base, name),
        }
    )


def _ca_file(path: Path | None, base: Path, where: str) -> Path | None:
    """``path`` resolved against the config file's directory, checked to be a CA file
    (the daemon would otherwise find out at its first connection, and retry forever)."""
    if path is None:
        return None
    resolved = _resolve(base, path)
    try:
        client_context(ca_file=resolved)
    except OSError as exc:  # ssl.SSLError too (a file that is not PEM)
        reason = exc.strerror or exc
        raise ConfigError(
            f"{where}: cannot load {resolved} as PEM CA certificates: {reason}"
        ) from None
    return resolved


def _with_ca_files_resolved(settings: Settings, base: Path, name: str) -> dict[str, Any]:
    """The ``outbound`` and ``imap`` sections with the relay's and mailboxes' ``ca_file``
    resolved and checked."""
    outbound, imap = settings.outbound, settings.imap
    if (relay := outbound.relay) is not None:
        ca_file = _ca_file(relay.ca_file, base, f"{name}: outbound.relay.ca_file")
        outbound = outbound.model_copy(
            update={"relay": relay.model_copy(update={"ca_file": ca_file})}
        )
    mailboxes = [
        m.model_copy(
            update={"ca_file": _ca_file(m.ca_file, base, f"{name}: imap.mailboxes.{i}.ca_file")}
        )
        for i, m in enumerate(imap.mailboxes)
    ]
    return {"outbound": outbound, "imap": imap.model_copy(update={"mailboxes": mailboxes})}


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate config.yaml; raise ConfigError listing every problem."""
    source = config_path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: cannot read: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(top)"
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: {where}: invalid YAML: {reason}") from None
    return parse_settings(data, source=source)
