"""The prospect importer's pipeline: how many validation processes, and the thread that
reads ahead of the writer (results and errors in order, stopped when the writer stops)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import prospects_import
from daemon.prospects_import import _read_ahead, _worker_count


def csv_of(path: Path, rows: int, width: int = 100) -> Path:
    line = "x" * (width - 1) + "\n"
    path.write_text("id,first_name\n" + line * rows)
    return path


def test_worker_count_follows_the_size_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prospects_import.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    small = csv_of(tmp_path / "small.csv", 1000)  # 100 KB: not worth a process
    two_batches = csv_of(tmp_path / "two.csv", 35_000)
    many = csv_of(tmp_path / "many.csv", 100_000)
    assert _worker_count(small, None, 20_000) == 0
    assert _worker_count(two_batches, None, 20_000) == 2  # the writer waits for batch one
    assert _worker_count(many, None, 20_000) == 1  # one keeps ahead of the writer
    assert _worker_count(many, None, 60_000) == 2
    assert _worker_count(small, 3, 20_000) == 3  # asked for
    monkeypatch.setattr(prospects_import.os, "sched_getaffinity", lambda _: {0}, raising=False)
    assert _worker_count(many, None, 20_000) == 0  # one core: nothing to overlap


def test_read_ahead_hands_on_everything_then_the_error_in_order() -> None:
    def items() -> Iterator[int]:
        yield from range(50)
        raise ValueError("bad line 50")

    seen: list[int] = []
    with pytest.raises(ValueError, match="bad line 50"), _read_ahead(items(), 3) as ahead:
        seen.extend(ahead)
    assert seen == list(range(50))


def test_read_ahead_stops_and_closes_its_source_when_the_writer_stops() -> None:
    closed: list[int] = []

    def items() -> Iterator[int]:
        try:
            yield from range(1_000_000)
        finally:
            closed.append(1)  # the worker pool's shutdown runs here in the importer

    with pytest.raises(RuntimeError, match="write failed"), _read_ahead(items(), 3) as ahead:
        for item in ahead:
            if item == 10:
                raise RuntimeError("write failed")
    assert closed == [1]  # the thread has ended (joined) and closed the generator
