"""`eleads db migrate-to URL`: a populated SQLite database copied to PostgreSQL or SQLite.

The source is always the embedded SQLite file (whatever backend the run selects); after
the copy a config pointed at the target must show exactly what the old one showed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from daemon.config import load_settings
from daemon.runtime import DataDirLock
from daemon.services import list_eleads, outbox_rows, prospects, show_elead

from .conftest import BASE_CONFIG, FIXTURES, REPO, deep_merge
from .mail import lead_bytes
from .pg import PostgresCluster

ELEADS = [sys.executable, "-m", "daemon.cli"]

#: Commands whose text output must not change with the database (the JSON forms are
#: compared through the same service functions, in-process, which is quicker).
VIEWS: tuple[tuple[str, ...], ...] = (("list",), ("prospects", "list"), ("outbox",))


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ELEADS, *args, "--config", str(config)], capture_output=True, text=True, timeout=300
    )


def ok(config: Path, *args: str) -> str:
    done = cli(config, *args)
    assert done.returncode == 0, (args, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stdout


def retarget(config: Path, url: str, name: str) -> Path:
    """A copy of ``config`` (same data dir) on the database at ``url``."""
    data = yaml.safe_load(config.read_text())
    data["database"] = {"url": url}
    path = config.with_name(name)
    path.write_text(yaml.safe_dump(data))
    return path


def write_config(where: Path, data_dir: Path) -> Path:
    data = deep_merge(BASE_CONFIG, {"data_dir": str(data_dir), "rules_dir": str(REPO / "rules")})
    data["database"] = {"url": f"sqlite:///{data_dir / 'eleads.db'}"}
    path = where / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir on SQLite with imported prospects, ingested leads and a manual convert
    (made once: each test works on a copy)."""
    root = tmp_path_factory.mktemp("golden")
    config = write_config(root, root / "var")
    csv_file = str(FIXTURES / "match" / "prospects.csv")
    ok(config, "prospects", "import", csv_file, "--account", "demo")
    inbox = root / "inbox"
    inbox.mkdir()
    for eml in sorted((FIXTURES / "leads").glob("*.eml")):
        (inbox / eml.name).write_bytes(eml.read_bytes())
    for n in (1, 2):
        (inbox / f"generated{n}.eml").write_bytes(lead_bytes(n))
    lines = [json.loads(line) for line in ok(config, "ingest", str(inbox), "--json").splitlines()]
    assert {line["outcome"] for line in lines} >= {"created"}
    unconverted = json.loads(ok(config, "unconverted", "--json"))
    if unconverted:
        ok(config, "convert", unconverted[0]["id"], "--new")
    return root / "var"


@pytest.fixture
def populated(golden: Path, tmp_path: Path) -> Path:
    """A config on a copy of the golden SQLite data dir."""
    shutil.copytree(golden, tmp_path / "var")
    return write_config(tmp_path, tmp_path / "var")


def snapshot(config: Path) -> dict[str, Any]:
    """What the CLI shows of everything in the database."""
    settings = load_settings(config)
    rows = list_eleads(settings)
    assert rows, "the fixture should have made eLeads"
    data = {
        "list": rows,
        "unconverted": list_eleads(settings, state="unconverted"),
        "prospects": prospects(settings, account=None),
        "outbox": outbox_rows(settings),
        "show": {row["id"]: show_elead(settings, row["id"]) for row in rows},
        "text": {" ".join(args): ok(config, *args) for args in VIEWS},
    }
    data["text"]["show"] = ok(config, "show", rows[-1]["id"])
    return cast(dict[str, Any], json.loads(json.dumps(data, default=str)))


def check_copy(populated: Path, target_url: str, name: str, extra_lead: int = 99) -> Path:
    before = snapshot(populated)
    out = json.loads(ok(populated, "db", "migrate-to", target_url, "--json", "--batch-size", "7"))
    assert out["rows"] == sum(out["tables"].values()) > 0
    assert out["tables"]["prospect"] >= 30 and out["tables"]["elead"] == len(before["show"])
    moved = retarget(populated, target_url, name)
    after = snapshot(moved)
    for part in before:
        assert after[part] == before[part], part
    # Ids go on after the copied ones (PostgreSQL sequences were moved past them).
    extra = populated.parent / f"extra{extra_lead}.eml"
    extra.write_bytes(lead_bytes(extra_lead))
    line = json.loads(ok(moved, "ingest", str(extra), "--json"))
    top = max(int(public_id.removeprefix("E-")) for public_id in before["show"])
    assert line["outcome"] == "created" and line["elead"] == f"E-{top + 1}"
    return moved


def test_sqlite_to_postgresql(populated: Path, pg_cluster: PostgresCluster) -> None:
    # An empty database: migrate-to creates the schema itself.
    target = pg_cluster.new_database(migrated=False)
    moved = check_copy(populated, target, "config-pg.yaml")
    # A second run refuses: the target is not empty any more.
    again = cli(populated, "db", "migrate-to", target)
    assert again.returncode == 2
    assert "already holds eleads data" in again.stderr and "Traceback" not in again.stderr
    # And back: PostgreSQL (with the lead added there) to a new SQLite file.
    back = f"sqlite:///{populated.parent / 'back' / 'eleads.db'}"
    check_copy(moved, back, "config-back.yaml", extra_lead=98)


def test_sqlite_to_sqlite(populated: Path, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'copy' / 'eleads.db'}"
    check_copy(populated, target, "config-copy.yaml")


def test_postgresql_target_already_migrated(populated: Path, pg_cluster: PostgresCluster) -> None:
    """A database someone created and migrated (no rows yet) is a valid target."""
    target = pg_cluster.new_database(migrated=True)
    out = json.loads(ok(populated, "db", "migrate-to", target, "--json"))
    assert out["tables"]["account"] == 1


def test_refusals(populated: Path, tmp_path: Path) -> None:
    settings = load_settings(populated)
    same = cli(populated, "db", "migrate-to", settings.database_url)
    assert same.returncode == 2 and "is the current database" in same.stderr
    bad = cli(populated, "db", "migrate-to", "mysql://x/y")
    assert bad.returncode == 2 and "unsupported scheme" in bad.stderr
    lock = DataDirLock(settings.data_dir)
    lock.acquire()
    try:
        running = cli(populated, "db", "migrate-to", f"sqlite:///{tmp_path / 'other.db'}")
    finally:
        lock.release()
    assert running.returncode == 2 and "stop it first" in running.stderr
    assert not (tmp_path / "other.db").exists()
    for out in (same, bad, running):
        assert "Traceback" not in out.stderr


def test_failed_copy_leaves_target_empty(
    populated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that fails half way rolls the target back, so it can simply be run again."""
    from daemon.db import migrate_to as module
    from daemon.errors import UsageError

    real = module._reset_sequence
    calls = 0

    def broken(model: Any, db: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise UsageError("disk full (simulated)")
        real(model, db)

    monkeypatch.setattr(module, "_reset_sequence", broken)
    settings = load_settings(populated)
    target = f"sqlite:///{tmp_path / 'half' / 'eleads.db'}"
    with pytest.raises(UsageError, match="simulated"):
        module.migrate_to(settings, target)
    monkeypatch.setattr(module, "_reset_sequence", real)
    report = module.migrate_to(settings, target)
    assert report.tables[0].rows >= 1
