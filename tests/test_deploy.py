"""deploy/ and README's Operations section: the units verify, their commands and the documented
`sendguard` commands parse, the example environment file loads, the PostgreSQL settings apply."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from sender.cli import build_parser
from sender.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ("sendguard-sender.service", "sendguard-dashboard.service")


def operations_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Operations\n")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(DEPLOY / name)
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_units_run_as_a_dedicated_user_hardened_and_restarting(name: str) -> None:
    service = unit(name)["Service"]
    assert service["User"] == service["Group"] == "sendguard"
    assert service["EnvironmentFile"] == "/etc/sendguard/sendguard.env"
    assert service["Restart"] == "on-failure"
    assert service["Type"] == "simple"  # no sd_notify: nothing to test with a notify socket
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, key
    assert unit(name)["Install"]["WantedBy"] == "multi-user.target"


def test_sender_unit_runs_a_command_the_cli_accepts() -> None:
    service = unit("sendguard-sender.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/sendguard/.venv/bin/sendguard"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.metrics_port, args.metrics_bind) == ("run", 9464, None)
    assert service["RestartPreventExitStatus"] == "2"  # bad input: a restart loop would not fix it
    assert int(service["TimeoutStopSec"]) >= 90  # room for the message in flight (SMTP timeouts)


def test_dashboard_unit_binds_loopback() -> None:
    service = unit("sendguard-dashboard.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[:3] == ["/opt/sendguard/.venv/bin/streamlit", "run", "dashboard.py"]
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert service["WorkingDirectory"] == "/opt/sendguard"
    assert (ROOT / "dashboard.py").is_file()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The units name /opt/sendguard; verify checks the binaries exist, so point them at this checkout.
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace("/opt/sendguard", str(ROOT))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "sendguard" not in result.stderr, result.stderr  # no warning about our units either


def test_example_environment_file_loads() -> None:
    env = {}
    for line in (DEPLOY / "sendguard.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    settings = load_settings(env)
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.max_senders == 2
    assert settings.lock_file == "/var/lib/sendguard/sender.lock"
    documented = set(re.findall(r"`(SENDGUARD_[A-Z_]+)`", (ROOT / "README.md").read_text()))
    assert set(env) <= documented, set(env) - documented


def test_documented_sendguard_commands_parse() -> None:
    section = operations_section()
    commands = re.findall(r"sgctl ((?:db|status|health|config|campaign|review|run)[^`#\n]*)", section)
    assert len(commands) >= 6, commands
    for command in commands:
        argv = shlex.split(command.replace("NAME", "spring"))
        build_parser().parse_args(argv)  # SystemExit(2) on anything the CLI does not accept


@pytest.mark.postgres
def test_documented_postgresql_settings_apply(pg_url: str, pg_admin_url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    from tests.conftest import _psycopg_conninfo

    statements = re.findall(r"^\s*(ALTER DATABASE sendguard SET [^;]+);", operations_section(), re.M)
    assert len(statements) == 6, statements
    database = make_url(pg_url).database
    with psycopg.connect(_psycopg_conninfo(pg_admin_url), autocommit=True) as admin:
        for statement in statements:
            admin.execute(statement.replace("sendguard", f'"{database}"', 1))  # type: ignore[arg-type]
    with psycopg.connect(_psycopg_conninfo(pg_url)) as conn:  # a new session gets them
        shown = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in (
                "idle_in_transaction_session_timeout",
                "client_connection_check_interval",
                "tcp_keepalives_idle",
                "synchronous_commit",
            )  # fmt: skip
        }
    assert shown == {
        "idle_in_transaction_session_timeout": "1min",
        "client_connection_check_interval": "10s",
        "tcp_keepalives_idle": "30",
        "synchronous_commit": "on",
    }
