"""A reply whose DKIM/DMARC failed at our own trusted relay is refused, not answered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ELEADS = [sys.executable, "-m", "daemon.cli"]

CSV = (
    "id,first_name,last_name,email,phone,street,city,region,postal_code,country\n"
    "P10,Roberta,Kaminski,rk.home@example.net,(614) 555-0148,2231 Alder Ridge Rd,"
    "Westerville,OH,43081,US\n"
)
LEAD = (
    b"From: forms@site.example\r\nTo: leads@demo.example\r\nSubject: Estimate\r\n"
    b"Message-ID: <auth-lead-1@site.example>\r\n\r\nFirst Name: Robert\r\n"
    b"Last Name: Kaminski\r\nPhone: 614-555-0148\r\nAddress: 2231 Alder Ridge Rd\r\n"
    b"Zip Code: 43081\r\n"
)


def cli(config: Path, *args: str) -> Any:
    out = subprocess.run(
        [*ELEADS, *args, "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    return lines[0] if len(lines) == 1 else lines


def reply(to: str, n: int, auth: str) -> bytes:
    return (
        f"Authentication-Results: {auth}\r\nFrom: sales@demo.example\r\nTo: {to}\r\n"
        f"Subject: Re: Conversion issue\r\nMessage-ID: <auth-reply-{n}@demo.example>\r\n\r\n"
        f"USE 1\r\n"
    ).encode()


def test_failed_dkim_at_trusted_relay_refuses_the_reply(make_config: Any, tmp_path: Path) -> None:
    config = make_config(
        {
            "replies": {"trusted_authserv_ids": ["mx.eleads.example"]},
            "accounts": [
                {
                    "id": "demo",
                    "notifications": {"conversion_issue": ["sales@demo.example"]},
                    "authorised_senders": ["sales@demo.example"],
                }
            ],
        }
    )
    (tmp_path / "p.csv").write_text(CSV)
    cli(config, "prospects", "import", str(tmp_path / "p.csv"), "--account", "demo")
    (tmp_path / "lead.eml").write_bytes(LEAD)
    lead = cli(config, "ingest", str(tmp_path / "lead.eml"))
    assert lead["outcome"] == "fuzzy"
    (issue,) = [r for r in cli(config, "outbox") if r["kind"] == "conversion_issue"]
    before = len(cli(config, "outbox"))

    forged = "mx.eleads.example; dkim=fail header.d=demo.example; dmarc=fail"
    (tmp_path / "r1.eml").write_bytes(reply(issue["reply_to"], 1, forged))
    refused = cli(config, "ingest", str(tmp_path / "r1.eml"))
    assert refused["outcome"] == "reply" and "DKIM/DMARC" in refused["detail"]
    assert cli(config, "show", lead["elead"])["state"] == "unconverted"
    assert len(cli(config, "outbox")) == before  # a forged From gets no answer

    # The same verdict from someone else's server proves nothing either way: not trusted.
    other = "mx.attacker.example; dkim=fail; dmarc=fail"
    (tmp_path / "r2.eml").write_bytes(reply(issue["reply_to"], 2, other))
    applied = cli(config, "ingest", str(tmp_path / "r2.eml"))
    assert applied["prospect"] == "P10"
    assert cli(config, "show", lead["elead"])["state"] == "converted"
