"""config.yaml validation: the shipped file passes; problems name file, key path, reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daemon.config import load_settings
from daemon.errors import ConfigError
from daemon.routing import route_recipient

from .conftest import REPO, make_certificate

ELEADS = [sys.executable, "-m", "daemon.cli"]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ELEADS, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_shipped_config_is_valid() -> None:
    settings = load_settings(REPO / "config.yaml")
    assert settings.smtp.host == "127.0.0.1" and settings.smtp.port == 2525
    assert settings.smtp.max_message_size == 25 * 1024 * 1024
    demo = settings.account("demo")
    assert demo is not None and demo.country == "US"
    assert [loc.key for loc in demo.locations] == ["north", "south"]
    assert demo.notifications.received == ["sales@demo.example"]
    assert demo.location("north").return_lead_alerts == ["north@demo.example"]  # type: ignore[union-attr]
    assert set(demo.authorised_senders) == {
        "sales@demo.example",
        "north@demo.example",
        "south@demo.example",
    }
    assert settings.data_dir == REPO / "var"
    assert settings.database_url.startswith("sqlite:///")


def test_check_config_cli_ok() -> None:
    out = run_cli("check-config", "--config", str(REPO / "config.yaml"))
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"smtp": {"port": "twenty"}}, "smtp.port: Input should be a valid integer"),
        ({"smtp": {"colour": "blue"}}, "smtp.colour: Extra inputs are not permitted"),
        ({"accounts": [{"id": "a", "country": "usa"}]}, "accounts.0.country: String should match"),
        (
            {"accounts": [{"id": "a", "authorised_senders": ["not-an-address"]}]},
            "accounts.0.authorised_senders: Value error, not an email address",
        ),
        ({"accounts": []}, "accounts: List should have at least 1 item"),
        ({"accounts": [{"id": "a"}, {"id": "a"}]}, "duplicate account ids: a"),
    ],
)
def test_invalid_config_reports_file_key_reason(
    tmp_path: Path, patch: dict[str, object], expected: str
) -> None:
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data.update(patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert any(p.startswith(f"{path}: ") and expected in p for p in info.value.problems), (
        info.value.problems
    )
    out = run_cli("check-config", "--config", str(path))
    assert out.returncode == 2
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("smtp: [unclosed\n")
    out = run_cli("check-config", "--config", str(path))
    assert out.returncode == 2 and "invalid YAML" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("check-config", "--config", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "no such file" in out.stderr


def test_data_dir_env_overrides_and_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELEADS_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("ELEADS_CONFIG", str(REPO / "config.yaml"))
    settings = load_settings()
    assert settings.data_dir == tmp_path / "elsewhere"


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data_dir": "state", "accounts": [{"id": "x"}]}))
    assert load_settings(path).data_dir == tmp_path.resolve() / "state"


def test_routing_refuses_unknown_recipients_with_several_accounts(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "accounts": [
                    {
                        "id": "roof",
                        "inbound_addresses": ["leads@roof.example"],
                        "locations": [{"key": "east", "inbound_addresses": ["east@roof.example"]}],
                    },
                    {"id": "cars", "inbound_addresses": ["@cars.example"]},
                ]
            }
        )
    )
    settings = load_settings(path)
    assert route_recipient(settings, "Leads+web@Roof.example").account == "roof"  # type: ignore[union-attr]
    east = route_recipient(settings, "east@roof.example")
    assert east is not None and (east.account, east.location) == ("roof", "east")
    assert route_recipient(settings, "anyone@cars.example").account == "cars"  # type: ignore[union-attr]
    assert route_recipient(settings, "victim@elsewhere.example") is None
    reply = route_recipient(settings, "leads+r-abc123@eleads.example")
    assert reply is not None and reply.is_reply_address


def test_ca_files_are_relative_to_the_config_file_and_must_load(tmp_path: Path) -> None:
    """A relay's or mailbox's private CA: found next to the config, refused when unusable."""
    path = tmp_path / "c.yaml"
    data = {
        "accounts": [{"id": "x"}],
        "outbound": {"relay": {"host": "relay.example", "ca_file": "tls/ca.pem"}},
        "imap": {
            "mailboxes": [
                {
                    "name": "m",
                    "host": "imap.example",
                    "username": "u",
                    "password": "p",
                    "ca_file": "tls/ca.pem",
                },
            ]
        },
    }
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "tls").mkdir()
    ca = tmp_path / "tls" / "ca.pem"
    with pytest.raises(ConfigError, match=r"outbound\.relay\.ca_file: cannot load .*ca\.pem"):
        load_settings(path)  # no such file
    ca.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"outbound\.relay\.ca_file: cannot load"):
        load_settings(path)
    out = run_cli("check-config", "--config", str(path))
    assert out.returncode == 2 and "ca_file" in out.stderr and "Traceback" not in out.stderr
    cert, _ = make_certificate(tmp_path / "tls")
    cert.rename(ca)
    settings = load_settings(path)
    assert settings.outbound.relay is not None
    assert settings.outbound.relay.ca_file == tmp_path.resolve() / "tls" / "ca.pem"
    assert settings.imap.mailboxes[0].ca_file == tmp_path.resolve() / "tls" / "ca.pem"
    del data["outbound"]
    path.write_text(yaml.safe_dump(data))
    ca.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"imap\.mailboxes\.0\.ca_file: cannot load"):
        load_settings(path)
