"""Prospects: CSV import (validation, normalisation, ids, re-import), creation, filling
gaps, listing, and the key index the matcher relies on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon import prospects_import
from daemon.db import open_database
from daemon.db.models import Account, Prospect, ProspectKey
from daemon.errors import TransientError, UsageError
from daemon.match.keys import blocking_keys
from daemon.match.retrieve import explain
from daemon.prospects import create_prospect, fill_empty_fields, list_prospects
from daemon.prospects_import import import_prospects
from tests.pg import database_url_for

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "match" / "prospects.csv"
CORPUS = Path(
    os.environ.get(
        "ELEADS_CORPUS", Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
    )
)
FIELDS = ("first_name", "last_name", "email", "phone", "phone_alt")
FIELDS += ("street", "city", "region", "postal_code", "country")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[None]:
    database = open_database(database_url_for(tmp_path))
    Account.create(id="demo")
    yield
    database.close()


def corpus_csv() -> Path:
    path = CORPUS / "prospects.csv"
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"corpus missing at {CORPUS} (CI=true: no skipping)")
        pytest.skip(f"shared corpus not found at {CORPUS}")
    return path


def get(pid: str) -> Prospect:
    return Prospect.get((Prospect.account == "demo") & (Prospect.pid == pid))


def keys_of(prospect: Prospect) -> set[str]:
    return {k.key for k in ProspectKey.select().where(ProspectKey.prospect == prospect.id)}


def test_fixture_import_reports_each_bad_row(db: None) -> None:
    report = import_prospects(FIXTURE, account="demo", default_region="US")
    assert (report.imported, report.skipped) == (24, 7)
    assert report.problems == (
        "column 'notes' is not a prospect field; ignored",
        "line 25: phone '555-12' is not a phone number",
        "line 26: email 'not-an-email' is not an email address",
        "line 27: duplicate id F101 (first on line 2)",
        "line 28: id 'F-124' is not letters and digits",
        "line 30: no name, email or phone",
        "line 31: country 'Narnia' is not a country",
        "line 33: same prospect as line 32; skipped",
    )
    assert report.as_json()["imported"] == 24


def test_fixture_values_are_normalised_and_names_kept(db: None) -> None:
    import_prospects(FIXTURE, account="demo", default_region="US")
    brandt = get("F102")
    assert (brandt.first_name, brandt.email, brandt.phone) == (
        "William",
        "wbrandt@example.com",
        "+16145550102",
    )
    assert get("F110").first_name == "KATHERINE"
    assert get("F105").last_name == "Whitfield Sr."
    uk = get("F116")
    assert (uk.phone, uk.postal_code, uk.country, uk.region) == (
        "+442079460115",
        "SW1A 1AA",
        "GB",
        None,
    )
    ca = get("F117")
    assert (ca.phone, ca.postal_code, ca.region) == ("+14165550117", "M4K 1N2", "ON")
    assert get("F111").phone == "+16145550111"
    reyes = get("F121")
    assert (reyes.email, reyes.phone, reyes.street) == (None, None, None)


def test_ids_kept_counter_bumped_and_new_ids_follow(db: None) -> None:
    import_prospects(FIXTURE, account="demo", default_region="US")
    assert Account.get_by_id("demo").prospect_seq == 7003
    assert get("P7003").first_name == "Sam"  # the id-less row, numbered past P7002
    new = create_prospect(
        {"first_name": "Ivy", "last_name": "Lane", "email": "ivy@example.com"}, account="demo"
    )
    assert new.pid == "P7004"
    assert keys_of(new) == blocking_keys(
        {"first_name": "Ivy", "last_name": "Lane", "email": "ivy@example.com"}
    )


def test_reimport_creates_no_duplicates(db: None) -> None:
    import_prospects(FIXTURE, account="demo", default_region="US")
    again = import_prospects(FIXTURE, account="demo", default_region="US")
    assert again.imported == 0
    assert "line 2: id F101 already exists; skipped" in again.problems
    assert "line 32: this prospect already exists; skipped" in again.problems
    assert Prospect.select().count() == 24


def test_every_key_is_indexed(db: None) -> None:
    import_prospects(FIXTURE, account="demo", default_region="US")
    for prospect in Prospect.select():
        fields = {f: getattr(prospect, f) for f in FIELDS}
        assert keys_of(prospect) == blocking_keys(fields), prospect.pid
    plan = " ".join(explain("demo", "e:x@example.com"))
    if os.environ.get("ELEADS_TEST_DATABASE") != "postgresql":  # PG may scan a small table
        # Covering: the prospect ids come from the index, the table is not read.
        assert "USING COVERING INDEX" in plan and "key=?" in plan, plan
        assert "SCAN" not in plan


def test_create_prospect_skips_ids_taken_by_an_import(db: None) -> None:
    import_prospects(FIXTURE, account="demo", default_region="US")
    Account.update(prospect_seq=7000).where(Account.id == "demo").execute()
    assert create_prospect({"last_name": "Vale"}, account="demo").pid == "P7004"
    with pytest.raises(UsageError):
        create_prospect({"last_name": "Vale"}, account="nobody")


def test_fill_empty_fields_never_overwrites(db: None) -> None:
    import_prospects(FIXTURE, account="demo", default_region="US")
    marchetti = get("F107")  # "J Marchetti", phone only, Gahanna 43230
    lead = {"first_name": "John", "last_name": "Marchetti", "email": "jm@example.com"}
    lead |= {
        "phone": "+16145550177",
        "street": "4 Oak St",
        "city": "Gahanna",
        "postal_code": "43230",
    }
    filled = fill_empty_fields(marchetti, lead)
    assert filled == ["email", "street", "phone_alt"]
    marchetti = get("F107")
    assert (marchetti.first_name, marchetti.phone, marchetti.phone_alt) == (
        "J",
        "+16145550107",
        "+16145550177",
    )
    assert "e:jm@example.com" in keys_of(marchetti)
    assert fill_empty_fields(marchetti, lead) == []


def test_fill_keeps_an_old_address_whole(db: None) -> None:
    import_prospects(FIXTURE, account="demo", default_region="US")
    fitz = get("F112")  # no street, Columbus 43214
    moved = {
        "street": "9 New Rd",
        "city": "Dayton",
        "region": "OH",
        "postal_code": "45402",
        "phone_alt": "+16145550190",
    }
    assert fill_empty_fields(fitz, moved) == ["phone_alt"]
    assert get("F112").street is None


def test_list_prospects(db: None) -> None:
    import_prospects(FIXTURE, account="demo", default_region="US")
    Account.create(id="other")
    create_prospect({"first_name": "Olga"}, account="other")
    rows = list_prospects(account="demo")
    assert len(rows) == 24 and rows[0]["id"] == "F101"
    assert rows[0] | {"lead_sources": 0} == rows[0]
    assert set(rows[0]) >= {
        "id",
        "account",
        "first_name",
        "email",
        "phone",
        "lead_sources",
        "conflicting_leads",
    }
    assert len(list_prospects(account=None)) == 25
    assert list_prospects(account="other")[0]["id"] == "P1"


def test_unusable_files(db: None, tmp_path: Path) -> None:
    empty = tmp_path / "x.csv"
    empty.write_text("name,age\nBob,4\n")
    assert import_prospects(empty, account="demo", default_region="US").problems == (
        "no prospect columns in the header line",
    )
    with pytest.raises(UsageError):
        import_prospects(FIXTURE, account="nobody", default_region="US")
    with pytest.raises(OSError):
        import_prospects(tmp_path / "missing.csv", account="demo", default_region="US")


def test_default_region_reads_local_numbers(db: None, tmp_path: Path) -> None:
    path = tmp_path / "uk.csv"
    rows = ["First Name,Last Name,Phone,Postal Code", "Alice,Hart,020 7946 0123,"]
    path.write_text("\n".join([*rows, "Ben,Hart,0113 496 0321,LS1 6QP", ""]))
    report = import_prospects(path, account="demo", default_region="GB")
    assert report.imported == 2, report.problems
    assert [p.phone for p in Prospect.select().order_by(Prospect.id)] == [
        "+442079460123",
        "+441134960321",
    ]
    assert [p.pid for p in Prospect.select().order_by(Prospect.id)] == ["P1", "P2"]


def test_corpus_csv_imports_cleanly(db: None) -> None:
    report = import_prospects(corpus_csv(), account="demo", default_region="US")
    assert (report.imported, report.skipped, report.problems) == (300, 0, ())
    assert Account.get_by_id("demo").prospect_seq == 1300
    assert get("P1012").email == "gary.cruz84@example.net"
    assert get("P1038").phone == "+442079460311"
    assert get("P1005").phone == "+16145550141"  # "1-614-555-0141"
    assert get("P1180").last_name == "Platt Sr."
    assert get("P1168").first_name == "ANGEL"
    assert (get("P1052").postal_code, get("P1052").country) == ("M4K 1N2", "CA")
    p1095 = get("P1095")
    assert (p1095.first_name, p1095.email, p1095.phone) == ("R", None, None)


# --- validation in worker processes ---------------------------------------------------------


def messy_csv(path: Path, rows: int = 160) -> Path:
    """Good rows, bad rows of every kind, id-less and repeated rows, short records."""
    lines = ["id,first_name,last_name,email,phone,phone_alt,street,city,postal_code,country"]
    for n in range(rows):
        pid = ("", f"M{n}", "M3", "bad-id", f"P{n + 5}")[n % 5 if n % 7 else 0]
        phone = ("(614) 555-01{:02d}", "555-12", "+44 20 7946 01{:02d}", "")[n % 4]
        email = ("p{}@Example.com", "not-an-email", "", "a{}@gmail.com")[n % 3]
        country = ("US", "", "Narnia", "CA")[n % 11 % 4]
        lines.append(
            f"{pid},Ann{n % 9},Lee{n % 13},{email.format(n % 17)},{phone.format(n % 23)},"
            f",{n % 31} Oak St,Columbus,4321{n % 10},{country}"
        )
        if n % 19 == 0:
            lines.append(f",Ann{n % 4},Short")
    path.write_text("\n".join(lines) + "\n")
    return path


def contents() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """Every prospect (without its timestamps) and key row, and the account's counter."""
    fields = [Prospect.id, Prospect.pid, *(getattr(Prospect, f) for f in FIELDS)]
    prospects = list(Prospect.select(*fields).order_by(Prospect.id).tuples())
    columns = (ProspectKey.id, ProspectKey.prospect, ProspectKey.key)
    keys = list(ProspectKey.select(*columns).order_by(ProspectKey.id).tuples())
    return prospects, keys, int(Account.get_by_id("demo").prospect_seq)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 7 rows, 3 ahead: a small file goes through many of them."""
    monkeypatch.setattr(prospects_import, "CHUNK_ROWS", 7)
    monkeypatch.setattr(prospects_import, "CHUNKS_AHEAD", 3)


def import_twice(tmp_path: Path, csv_path: Path, workers: int) -> tuple[Any, ...]:
    database = open_database(database_url_for(tmp_path / f"workers-{workers}"))
    try:
        Account.create(id="demo")
        first = import_prospects(
            csv_path, account="demo", default_region="US", batch_size=25, workers=workers
        )
        again = import_prospects(
            csv_path, account="demo", default_region="US", batch_size=25, workers=workers
        )
        return first, again, contents()
    finally:
        database.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_import_exactly_what_one_process_does(
    tmp_path: Path, small_chunks: None, workers: int
) -> None:
    csv_path = messy_csv(tmp_path / "messy.csv")
    serial = import_twice(tmp_path, csv_path, workers=0)
    parallel = import_twice(tmp_path, csv_path, workers=workers)
    assert parallel == serial
    first, again, (prospects, keys, _) = serial
    assert first.imported > 40 and first.skipped > 40 and len(keys) > 3 * len(prospects)
    assert any("same prospect as line" in p for p in first.problems)
    assert again.imported < first.imported
    assert any(p.endswith("already exists; skipped") for p in again.problems)


def test_workers_report_bad_rows_by_line(db: None, small_chunks: None) -> None:
    report = import_prospects(FIXTURE, account="demo", default_region="US", workers=2)
    assert (report.imported, report.skipped) == (24, 7)
    assert "line 25: phone '555-12' is not a phone number" in report.problems
    assert "line 33: same prospect as line 32; skipped" in report.problems


def test_a_dead_worker_stops_the_import_between_batches(
    db: None, tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv_path = messy_csv(tmp_path / "messy.csv", rows=400)
    lines = csv_path.read_text().splitlines()
    lines.insert(299, "C1,Crash,Here,,(614) 555-0199,,,,,")
    csv_path.write_text("\n".join(lines) + "\n")
    normalise_row = prospects_import._normalise_row

    def dies_on_line_300(raw: tuple[str | None, ...], region: str) -> Any:
        if raw[1] == "Crash":
            os._exit(3)  # the worker process dies (as if killed) on one row
        return normalise_row(raw, region)

    monkeypatch.setattr(prospects_import, "_normalise_row", dies_on_line_300)
    with pytest.raises(TransientError, match="validation process died"):
        import_prospects(csv_path, account="demo", default_region="US", batch_size=25, workers=2)
    imported = Prospect.select().count()
    assert imported % 25 == 0 and imported < 150  # whole batches, none after the death
    assert not Prospect.select().where(Prospect.pid == "C1").exists()
    assert ProspectKey.select(ProspectKey.prospect).distinct().count() == imported


def test_the_reader_validates_a_whole_batch_ahead(
    db: None, tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker keeps validating the next batch while the writer writes one."""
    depths: list[int] = []
    read_ahead = prospects_import._read_ahead

    def spy(items: Any, depth: int) -> Any:
        depths.append(depth)
        return read_ahead(items, depth)

    monkeypatch.setattr(prospects_import, "_read_ahead", spy)
    csv_path = messy_csv(tmp_path / "messy.csv")
    import_prospects(csv_path, account="demo", default_region="US", batch_size=60, workers=1)
    (depth,) = depths
    assert depth * prospects_import.CHUNK_ROWS >= 60 and depth >= prospects_import.CHUNKS_AHEAD


def batches_logged(caplog: Any) -> int:
    (line,) = [r.getMessage() for r in caplog.records if "prospects_imported" in r.getMessage()]
    return int(line.split(" batches=")[1].split()[0])


def test_a_slow_batch_makes_the_next_smaller(
    db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Over BATCH_SECONDS a batch shrinks the next (a running daemon waits for it)."""
    caplog.set_level("INFO", logger="daemon.prospects_import")
    csv_path = messy_csv(tmp_path / "messy.csv", rows=400)
    report = import_prospects(csv_path, account="demo", default_region="US", batch_size=50)
    assert report.imported > 100
    assert batches_logged(caplog) == -(-report.imported // 50)  # quick: full batches
    caplog.clear()
    Prospect.delete().execute()
    monkeypatch.setattr(prospects_import, "BATCH_SECONDS", 1e-9)
    monkeypatch.setattr(prospects_import, "MIN_BATCH_ROWS", 10)
    again = import_prospects(csv_path, account="demo", default_region="US", batch_size=50)
    assert again.imported == report.imported
    assert batches_logged(caplog) == 1 + -(-(report.imported - 50) // 10)
    next_rows = prospects_import._next_batch_rows
    monkeypatch.setattr(prospects_import, "BATCH_SECONDS", 5.0)
    assert next_rows(100_000, 1.0, 100_000) == 100_000
    assert next_rows(20_000, 4.0, 100_000) == 40_000  # under the limit: grows back
    assert next_rows(100_000, 10.0, 100_000) == 50_000
    assert next_rows(100_000, 1e6, 100_000) == 10  # the floor (patched above)
    assert next_rows(5, 1000.0, 8) == 8  # never more than asked for
    for wrong in (0, prospects_import.MAX_BATCH_ROWS + 1):
        with pytest.raises(UsageError, match="batch size"):
            import_prospects(csv_path, account="demo", default_region="US", batch_size=wrong)


def test_batch_size_reaches_the_importer(
    make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """`--batch-size` is one transaction per that many rows; the default is documented."""
    from click.testing import CliRunner

    from daemon import services
    from daemon.cli import main
    from daemon.config import load_settings
    from daemon.prospects import IMPORT_BATCH_ROWS

    config = make_config()
    caplog.set_level("INFO", logger="daemon.prospects_import")
    report = services.import_prospects_file(
        load_settings(config), FIXTURE, account="demo", batch_size=5
    )
    assert report.imported == 24
    assert batches_logged(caplog) == 5  # 24 rows, 5 to a transaction

    seen: list[int | None] = []
    monkeypatch.setattr(
        services,
        "import_prospects_file",
        lambda *a, batch_size=None, **k: seen.append(batch_size) or report,
    )
    runner = CliRunner()
    for extra, expected in (([], None), (["--batch-size", "7"], 7)):
        args = ["prospects", "import", str(FIXTURE), "--account", "demo", "--config", str(config)]
        result = runner.invoke(main, [*args, *extra])
        assert result.exit_code == 0, result.output
        assert seen.pop() == expected
    result = runner.invoke(main, ["prospects", "import", str(FIXTURE), "--account", "demo",
                                  "--batch-size", "0", "--config", str(config)])  # fmt: skip
    assert result.exit_code == 2 and "--batch-size" in result.output
    result = runner.invoke(main, ["prospects", "import", str(FIXTURE), "--account", "demo",
                                  "--batch-size", "1000001", "--config", str(config)])  # fmt: skip
    assert result.exit_code == 2 and "--batch-size" in result.output
    help_text = runner.invoke(main, ["prospects", "import", "--help"]).output
    assert f"[default: {IMPORT_BATCH_ROWS}]" in " ".join(help_text.split())


def test_the_import_cache_fits_the_memory_available(
    db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    page_cache = prospects_import._page_cache
    monkeypatch.setattr(prospects_import, "_import_cache_kib", lambda: 4321)
    monkeypatch.setattr(
        prospects_import, "_page_cache", lambda kib: sizes.append(kib) or page_cache(kib)
    )
    import_prospects(FIXTURE, account="demo", default_region="US")
    assert sizes == [4321]
    monkeypatch.undo()
    meminfo = tmp_path / "meminfo"
    cache = prospects_import._import_cache_kib
    meminfo.write_text("MemTotal:  1000000 kB\nMemAvailable:  800000 kB\n")
    assert cache(meminfo) == 200_000  # a quarter of what is available
    meminfo.write_text("MemAvailable: 64000000 kB\n")
    assert cache(meminfo) == prospects_import.IMPORT_CACHE_KIB  # never more than 1 GiB
    meminfo.write_text("MemAvailable: 1000 kB\n")
    assert cache(meminfo) == prospects_import.MIN_IMPORT_CACHE_KIB
    for unreadable in ("MemAvailable: lots\n", "nothing here\n"):
        meminfo.write_text(unreadable)
        assert cache(meminfo) == prospects_import.IMPORT_CACHE_KIB
    assert cache(tmp_path / "missing") == prospects_import.IMPORT_CACHE_KIB
