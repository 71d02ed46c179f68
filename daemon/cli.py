"""The ``eleads`` command: parse arguments, call a service, print. Nothing else.

Exit codes (DESIGN.md): 0 ok; 2 usage, config or I/O error, with one line on stderr and
no traceback; 3 "not recognised" (``parse``: neither a lead nor a reply); 1 an internal
error (a bug: one line on stderr, the traceback only in the debug log).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from daemon.config import Settings, config_path, load_settings
from daemon.errors import ConfigError, EleadsError
from daemon.inbound.files import iter_messages
from daemon.logs import setup_logging

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("daemon.cli")


def fail(message: str, code: int = 2) -> None:
    click.echo(f"eleads: {message}", err=True)
    sys.exit(code)


def guarded(fn: Callable[P, T]) -> Callable[P, T]:
    """Map the exception tree to exit codes with a single stderr line."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            for problem in exc.problems[:-1]:
                click.echo(f"eleads: {problem}", err=True)
            fail(exc.problems[-1] if exc.problems else str(exc))
        except EleadsError as exc:
            fail(str(exc))
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                # The reader went away (`eleads list | head`): stop quietly, like other tools.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(0)
            where = f" {exc.filename}" if exc.filename else ""
            fail(f"I/O error{where}: {exc.strerror or exc}")
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:
            log.debug("internal error", exc_info=True)
            fail(f"internal error: {type(exc).__name__}: {exc}", 1)
        raise AssertionError("unreachable")

    return wrapper


def emit(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, default=str))


config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="config.yaml to use (default: $ELEADS_CONFIG, then ./config.yaml).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def settings_for(config_file: Path | None, *, quiet: bool = True) -> Settings:
    settings = load_settings(config_file)
    setup_logging("warning" if quiet else settings.logging.level)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eleads")
def main() -> None:
    """eleads: email-native lead intake daemon."""


@main.command()
@config_option
@guarded
def serve(config_file: Path | None) -> None:
    """Run the daemon (SMTP, IMAP, spool runner) until SIGTERM."""
    from daemon.drivers import skip_postgresql_driver

    settings = settings_for(config_file, quiet=False)
    skip_postgresql_driver(settings.database_url)  # before daemon.app imports peewee
    from daemon.app import serve as serve_daemon

    serve_daemon(settings)


@main.command("check-config")
@config_option
@guarded
def check_config(config_file: Path | None) -> None:
    """Validate config.yaml and rules/; print every problem; exit 0 or 2."""
    from daemon.runtime import load_rules

    settings = load_settings(config_file)
    load_rules(settings)
    click.echo(f"{config_path(config_file)}: OK ({len(settings.accounts)} account(s))")


@main.command()
@click.argument("eml", type=click.Path(dir_okay=False, path_type=Path))
@config_option
@json_option
@click.option("--account", default=None, help="Parse as this account (phone region).")
@guarded
def parse(eml: Path, config_file: Path | None, as_json: bool, account: str | None) -> None:
    """Parse one message (no database); exit 3 when it is neither a lead nor a reply."""
    from daemon.parse import parse_message
    from daemon.parse.model import ParseContext
    from daemon.runtime import load_rules

    raw = eml.read_bytes()
    try:
        settings: Settings | None = settings_for(config_file)
    except ConfigError:
        if config_file is not None:
            raise
        settings = None  # parse works without a config: US defaults, shipped rules
    account_settings = None
    if settings is not None:
        account_settings = (
            settings.account(account)
            if account
            else (settings.accounts[0] if len(settings.accounts) == 1 else None)
        )
    ctx = ParseContext(
        default_region=account_settings.country if account_settings else "US",
        account=account_settings.id if account_settings else account,
    )
    rules = load_rules(settings) if settings is not None else None
    result = parse_message(raw, ctx=ctx, rules=rules)
    if as_json:
        emit(result.as_json())
    else:
        _print_parse(result.as_json())
    if result.kind not in ("lead", "reply"):
        sys.exit(3)


def _print_parse(data: dict[str, Any]) -> None:
    click.echo(f"kind: {data['kind']}  rule: {data['rule']}")
    for key in ("lead", "command"):
        for field, value in (data.get(key) or {}).items():
            if value not in (None, ""):
                click.echo(f"  {field}: {value}")
    for problem in data["problems"]:
        click.echo(f"  problem: {problem}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@config_option
@json_option
@click.option("--account", default=None, help="Force every message to this account.")
@guarded
def ingest(
    paths: tuple[Path, ...], config_file: Path | None, as_json: bool, account: str | None
) -> None:
    """Run .eml files, folders, mbox files or Maildirs through the pipeline."""
    from daemon.services import ingest_messages

    settings = settings_for(config_file)
    if account and settings.account(account) is None:
        fail(f"--account: unknown account {account!r}")
    unreadable: list[str] = []

    def messages() -> Iterator[tuple[str, bytes]]:
        for path in paths:
            yield from iter_messages(path, on_error=unreadable.append)

    for outcome in ingest_messages(settings, messages(), account=account):
        if as_json:
            emit(outcome.as_json())
        else:
            ident = outcome.elead or outcome.message_id or outcome.spool_id
            click.echo(f"{outcome.outcome:10} {ident}  {outcome.detail}")
    for problem in unreadable:
        click.echo(f"eleads: {problem}", err=True)
    if unreadable:
        sys.exit(2)


@main.command("list")
@config_option
@json_option
@click.option(
    "--state",
    type=click.Choice(["received", "converted", "unconverted", "failed_parse", "ignored"]),
    default=None,
)
@click.option("--account", default=None)
@guarded
def list_eleads(
    config_file: Path | None, as_json: bool, state: str | None, account: str | None
) -> None:
    """List eLeads, newest first."""
    from daemon.services import list_eleads as query

    rows = query(settings_for(config_file), state=state, account=account)
    if as_json:
        emit(rows)
        return
    for row in rows:
        click.echo(
            f"{row['id']:>8}  {row['state']:13} {row['account'] or '-':10} "
            f"{row['prospect'] or '-':8} {row['received_at']}  {row['message_id'] or ''}"
        )


@main.command()
@click.argument("elead_id")
@config_option
@json_option
@guarded
def show(elead_id: str, config_file: Path | None, as_json: bool) -> None:
    """Show one eLead: its message, its parse, its candidates."""
    from daemon.services import show_elead

    data = show_elead(settings_for(config_file), elead_id)
    if as_json:
        emit(data)
        return
    for key, value in data.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False, indent=2, default=str)
        click.echo(f"{key}: {value}")


@main.command()
@config_option
@json_option
@click.option("--account", default=None)
@guarded
def unconverted(config_file: Path | None, as_json: bool, account: str | None) -> None:
    """eLeads waiting for a human decision (fuzzy matches)."""
    from daemon.services import list_eleads as query

    rows = query(settings_for(config_file), state="unconverted", account=account)
    if as_json:
        emit(rows)
        return
    for row in rows:
        click.echo(
            f"{row['id']:>8}  {row['account'] or '-':10} {row['received_at']}  "
            f"{row['message_id'] or ''}"
        )


@main.command()
@click.argument("elead_id")
@click.option(
    "--use", "use", default=None, metavar="PROSPECT_ID", help="Add the eLead to this prospect."
)
@click.option("--new", "new", is_flag=True, help="Create a new prospect for the eLead.")
@config_option
@json_option
@guarded
def convert(
    elead_id: str, use: str | None, new: bool, config_file: Path | None, as_json: bool
) -> None:
    """Decide an eLead by hand: --use PROSPECT_ID or --new."""
    import getpass

    from daemon.services import convert_elead

    if (use is None) == (not new):
        fail("give exactly one of --use PROSPECT_ID or --new")
    result = convert_elead(
        settings_for(config_file), elead_id, use=use, new=new, actor=f"cli:{getpass.getuser()}"
    )
    if as_json:
        emit(result)
    else:
        click.echo(f"{result['elead']}: {result['detail']}")


@main.group()
def prospects() -> None:
    """Prospects: import a CSV, list."""


@prospects.command("import")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--account", required=True, help="The account the prospects belong to.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=1_000_000),  # prospects_import.MAX_BATCH_ROWS
    default=None,
    # The default lives in daemon.prospects (not imported here: it loads the matcher).
    help="Most rows per transaction [default: 100000]. Smaller holds SQLite's write lock "
    "for less time against a running daemon, but imports a big file slower; a batch "
    "that took over 5 s makes the next one smaller.",
)
@config_option
@json_option
@guarded
def prospects_import(
    csv_file: Path, account: str, batch_size: int | None, config_file: Path | None, as_json: bool
) -> None:
    """Import prospects (columns as the lead fields, optional id); bad rows are reported."""
    from daemon.services import import_prospects_file

    report = import_prospects_file(
        settings_for(config_file), csv_file, account=account, batch_size=batch_size
    )
    if as_json:
        emit(
            {
                "imported": report.imported,
                "skipped": report.skipped,
                "problems": list(report.problems),
            }
        )
        return
    click.echo(f"imported {report.imported}, skipped {report.skipped}")
    for problem in report.problems:
        click.echo(f"  {problem}")


@prospects.command("list")
@config_option
@json_option
@click.option("--account", default=None)
@guarded
def prospects_list(config_file: Path | None, as_json: bool, account: str | None) -> None:
    """Prospects with their lead source counts."""
    from daemon.services import prospects as query

    rows = query(settings_for(config_file), account=account)
    if as_json:
        emit(rows)
        return
    for row in rows:
        name = " ".join(x for x in (row.get("first_name"), row.get("last_name")) if x)
        click.echo(
            f"{row['id']:>8}  {row['account']:10} {name:30} {row.get('email') or '-':30} "
            f"{row.get('phone') or '-':14} sources={row.get('lead_sources', 0)}"
        )


@main.command()
@config_option
@json_option
@click.option("--status", type=click.Choice(["queued", "sent", "failed"]), default=None)
@guarded
def outbox(config_file: Path | None, as_json: bool, status: str | None) -> None:
    """Notifications: queued, sent, failed (with the reason)."""
    from daemon.services import outbox_rows

    rows = outbox_rows(settings_for(config_file), status=status)
    if as_json:
        emit(rows)
        return
    for row in rows:
        reason = f"  ({row.get('last_error')})" if row.get("last_error") else ""
        click.echo(
            f"{row['id']:>6}  {row['status']:7} {row['kind']:16} {row['elead'] or '-':>8}  "
            f"{', '.join(row['to'])}  {row['subject']}{reason}"
        )


@main.group()
def visits() -> None:
    """Visit logs and return-lead alerts."""


@visits.command("read")
@config_option
@json_option
@guarded
def visits_read(config_file: Path | None, as_json: bool) -> None:
    """Run the visit-log job once (what the daemon's scheduler runs)."""
    from daemon.visits import read_visits

    report = read_visits(settings_for(config_file))
    if as_json:
        emit(report)
        return
    click.echo(
        f"read {report['lines']} line(s) from {report['files']} file(s): {report['hits']} hit(s), "
        f"{report['filtered']} filtered, {report['bad_lines']} unparsable; "
        f"{len(report['alerts'])} alert(s), {report['queued']} queued"
    )
    for alert in report["alerts"]:
        click.echo(
            f"  {alert['session_start']}  {alert['visitor_id']}  {alert['elead']}  "
            f"{', '.join(alert['recipients']) or '(no recipients: recorded only)'}"
        )


@main.command()
@config_option
@json_option
@guarded
def status(config_file: Path | None, as_json: bool) -> None:
    """The daemon at a glance (running or stopped): backlog, outbox, spool, IMAP."""
    from daemon.status import format_status, status_report

    report = status_report(settings_for(config_file))
    if as_json:
        emit(report)
    else:
        click.echo(format_status(report))


@main.group()
def spool() -> None:
    """Inspect the spool; list and re-queue failed messages."""


@spool.command("status")
@config_option
@json_option
@guarded
def spool_status(config_file: Path | None, as_json: bool) -> None:
    """Counts of queued, active and failed messages."""
    from daemon.services import spool_counts

    counts = spool_counts(settings_for(config_file))
    if as_json:
        emit(counts)
    else:
        click.echo("  ".join(f"{k}: {v}" for k, v in counts.items()))


@spool.command("failed")
@config_option
@json_option
@guarded
def spool_failed(config_file: Path | None, as_json: bool) -> None:
    """Messages that ran out of attempts, with the reason."""
    from daemon.services import failed_messages

    rows = failed_messages(settings_for(config_file))
    if as_json:
        emit(rows)
        return
    for row in rows:
        click.echo(f"{row['id']}  attempts={row['attempts']}  {row['reason']}")


@spool.command("requeue")
@click.argument("spool_ids", nargs=-1)
@click.option("--all", "requeue_all", is_flag=True, help="Re-queue every failed message.")
@config_option
@guarded
def spool_requeue(spool_ids: tuple[str, ...], requeue_all: bool, config_file: Path | None) -> None:
    """Give failed messages a fresh set of attempts (the daemon or `ingest` runs them)."""
    from daemon.services import requeue_failed

    if not spool_ids and not requeue_all:
        fail("give spool ids or --all")
    done = requeue_failed(settings_for(config_file), None if requeue_all else list(spool_ids))
    click.echo(f"re-queued {done} message(s)")


@main.group("db")
def db_group() -> None:
    """The database: copy it to another one (docs/scaling.md)."""


@db_group.command("migrate-to")
@click.argument("url")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@config_option
@json_option
@guarded
def db_migrate_to(url: str, batch_size: int, config_file: Path | None, as_json: bool) -> None:
    """Copy every table into the empty database at URL (eleads serve must be stopped)."""
    from daemon.db.migrate_to import TableCopy, migrate_to

    def progress(done: TableCopy) -> None:
        if not as_json:
            click.echo(f"  {done.table:20} {done.rows:>10} rows")

    report = migrate_to(settings_for(config_file), url, batch_size=batch_size, progress=progress)
    if as_json:
        emit(report.as_json())
        return
    click.echo(
        f"copied {report.rows} rows in {len(report.tables)} tables to {report.target} "
        f"({report.seconds:.1f}s); row counts verified"
    )
    click.echo("to switch: set database.url in config.yaml to it, then start eleads serve")


if __name__ == "__main__":  # pragma: no cover
    main()
