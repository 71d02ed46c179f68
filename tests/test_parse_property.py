"""Property test: random byte and line mutations of real messages never escape parse_message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.parse import parse_message
from daemon.parse.model import ParseResult

HERE = Path(__file__).resolve().parent
CORPUS = Path(os.environ.get("ELEADS_CORPUS", HERE.parents[0].parent / "shared" / "corpus"))
OWN = sorted((HERE / "fixtures").glob("*/*.eml"))
SHARED = sorted(p for d in ("leads", "replies", "noise") for p in (CORPUS / d).glob("*.eml"))
SEEDS = [p.read_bytes() for p in OWN + SHARED]
NASTY = [
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n\r\n",
    b"=?utf-8?B?",
    b"--",
    b"boundary=",
    b"\xff\xfe",
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"<blockquote>",
    b"<!ENTITY",
    b"\x80",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup_line", "drop_line", "nasty"]))
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif op == "delete":
            del raw[pos : pos + draw(st.integers(1, 200))]
        elif op == "nasty":
            raw[pos:pos] = draw(st.sampled_from(NASTY))
        else:
            lines = bytes(raw).split(b"\n")
            index = draw(st.integers(0, len(lines) - 1))
            if op == "dup_line":
                lines.insert(index, lines[index])
            else:
                del lines[index]
            raw = bytearray(b"\n".join(lines))
    return bytes(raw)


@pytest.mark.timeout(120)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_never_escape(raw: bytes) -> None:
    result = parse_message(raw)
    assert isinstance(result, ParseResult)
    assert not any(p.startswith("internal error") for p in result.problems), result.problems
    result.as_json()
