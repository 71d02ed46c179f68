"""extract_command over every reply fixture and corpus reply, and the command grammar."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from daemon.parse.decode import decode_message
from daemon.parse.replies import extract_command, first_fresh_line, parse_command

HERE = Path(__file__).resolve().parent
CORPUS = Path(os.environ.get("ELEADS_CORPUS", HERE.parents[0].parent / "shared" / "corpus"))
REPLIES = sorted((HERE / "fixtures" / "replies").glob("*.eml")) + sorted(
    (CORPUS / "replies").glob("*.eml")
)


@pytest.mark.parametrize("eml", REPLIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_reply_command(eml: Path) -> None:
    want = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
    assert extract_command(decode_message(eml.read_bytes())) == want["command"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("USE 2", ("use", 2, None)),
        ("use 2", ("use", 2, None)),
        ("  USE 3  ", ("use", 3, None)),
        ("Use P1187", ("use", None, "P1187")),
        ("use p1187 please", ("use", None, "P1187")),
        ("USE ABC12", ("use", None, "ABC12")),
        ("USE #2.", ("use", 2, None)),
        ("NEW prospect please", ("new", None, None)),
        ("New.", ("new", None, None)),
        ("IGNORE - test lead", ("ignore", None, None)),
        ("Help", ("help", None, None)),
        ("1", ("invalid", None, None)),
        ("USE", ("invalid", None, None)),
        ("USE 0", ("invalid", None, None)),
        ("USE the first one", ("invalid", None, None)),
        ("Which Bob is this?", ("invalid", None, None)),
        ("", ("invalid", None, None)),
    ],
)
def test_parse_command(line: str, expected: tuple[str, int | None, str | None]) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    "text",
    [
        "> USE 1\n",
        "On Tue, Nov 17, 2026 at 7:46 AM eLeads <leads@x.example> wrote:\n> USE 1",
        "On Tue, Nov 17, 2026 at 7:46 AM eLeads <\nleads@x.example> wrote:\n> USE 1",
        "-----Original Message-----\nFrom: eLeads\nUSE 1",
        "From: eLeads <leads@x.example>\nSent: Tuesday\nTo: a\nSubject: b\n\nUSE 1",
        "Fra: eLeads <leads@x.example>\nSendt: 17. november 2026\n\nUSE 1",
        "Am 17.11.2026 um 07:46 schrieb eLeads <leads@x.example>:\n> USE 1",
        "Le mar. 17 nov. 2026 à 07:46, eLeads <leads@x.example> a écrit :\n> USE 1",
        "El mar, 17 nov 2026 a las 7:46, eLeads escribió:\n> USE 1",
        "-- \nDana\nUSE 1",
        "________________________________\nFrom: eLeads\nUSE 1",
        "\n\n   \n",
    ],
)
def test_quoted_text_never_counts(text: str) -> None:
    assert first_fresh_line(text) is None
