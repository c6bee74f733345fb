"""deploy/ and README's Operations section: the units verify, their commands and the documented
`sendguard` commands parse, the example files load, the PostgreSQL settings apply, the First campaign
step runs as written, and deploy/sgunit runs a unit's command as systemd would (user, environment,
directories; start, stop, a failed start reported). docs/operations-walkthrough.md is the whole
section run by hand on two hosts."""

from __future__ import annotations

import configparser
import importlib.machinery
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from sender.cli import build_parser
from sender.config import load_settings
from tests.conftest import run_cli

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
    commands = re.findall(r"sgctl ((?:db|status|health|config|campaign|leads|review|run)[^`#<\n]*)", section)
    assert len(commands) >= 10, commands
    for command in commands:
        argv = shlex.split(command.replace("NAME", "spring"))
        build_parser().parse_args(argv)  # SystemExit(2) on anything the CLI does not accept


@pytest.mark.slow
def test_first_campaign_step_runs_as_written(tmp_path: Path) -> None:
    """Step 5's commands, in order, with the example campaign file and a leads file on stdin (`- <`)."""
    step = operations_section().split("### 5. First campaign")[1].split("\n### ")[0]
    commands = re.findall(r"^    sgctl (.+?)\s*(?:#.*)?$", step, re.M)
    assert [c.split()[:2] for c in commands] == [
        ["campaign", "create"], ["leads", "import"], ["campaign", "start"], ["status"],
    ]  # fmt: skip
    files = {
        "spring.toml": (DEPLOY / "example-campaign.toml").read_text(),
        "leads.csv": "email,first_name,company\nana@example.com,Ana,Acme\nbo@example.com,Bo,Initech\n",
    }
    env = dict(os.environ, SENDGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/sendguard.db",
               SENDGUARD_LOCK_FILE=str(tmp_path / "sender.lock"))  # fmt: skip
    assert run_cli(["db", "upgrade"], env).returncode == 0
    results = []
    for command in commands:
        args, _, stdin_file = command.partition(" < ")
        result = run_cli(shlex.split(args), env, input=files[stdin_file] if stdin_file else None)
        assert result.returncode == 0, (command, result.stderr)
        results.append(result.stdout)
    assert "enrolled 2," in results[1]
    assert re.search(r"^spring-outreach\s+active\s+queued=2 ", results[3], re.M), results[3]


def test_example_campaign_file_loads() -> None:
    from sender.campaign_file import load_campaign_file

    spec = load_campaign_file(DEPLOY / "example-campaign.toml")
    assert spec.name == "spring-outreach"  # the name step 5 uses
    assert [v.letter for v in spec.variants] == ["A", "B"]


def test_stdin_dash_is_stdin_not_a_file_named_dash(tmp_path: Path) -> None:
    (tmp_path / "-").write_text((DEPLOY / "example-campaign.toml").read_text())  # would be accepted
    env = dict(os.environ, SENDGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/sendguard.db")
    bad = run_cli(["campaign", "create", "-"], env, cwd=tmp_path, input="name = ")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("sendguard: -: invalid TOML"), bad.stderr


# deploy/sgunit ------------------------------------------------------------------------------------


def sgunit() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("sgunit", str(DEPLOY / "sgunit"))
    spec = importlib.util.spec_from_loader("sgunit", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_sgunit_reads_environment_files_as_systemd(tmp_path: Path) -> None:
    mod = sgunit()
    example = mod.read_environment_file(DEPLOY / "sendguard.env.example")
    assert load_settings(example).lock_file == "/var/lib/sendguard/sender.lock"
    path = tmp_path / "env"
    path.write_text(
        "# comment\n; comment\n\n  A=1\nURL=smtp://u:p%40w@h:25?starttls=true&timeout=5\n"
        'Q="two words \\" quoted"\nS=\'$HOME stays\'\nLAST=no newline'
    )
    assert mod.read_environment_file(path) == {
        "A": "1",
        "URL": "smtp://u:p%40w@h:25?starttls=true&timeout=5",  # no shell: & and % are data
        "Q": 'two words " quoted',
        "S": "$HOME stays",
        "LAST": "no newline",
    }
    path.write_text("export A=1\n")
    with pytest.raises(mod.Failure, match="not a KEY=value line"):
        mod.read_environment_file(path)


def test_readme_sgctl_without_systemd_runs_the_sender_units_binary() -> None:
    line = next(x for x in operations_section().splitlines() if "sgunit exec" in x and "sgctl()" in x)
    argv = shlex.split(line.split("{", 1)[1].split(";")[0])
    assert argv[:5] == ["sudo", "python3", "/opt/sendguard/deploy/sgunit", "exec", "sendguard-sender"]
    assert argv[5] == shlex.split(unit("sendguard-sender.service")["Service"]["ExecStart"])[0]
    assert argv[6:] == ["$@"]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sgunit switches users: needs root")


def write_unit(tmp_path: Path, exec_start: str) -> Path:
    (tmp_path / "env").write_text("SG_FROM_FILE=file wins\nSG_URL=a&b\n")
    path = tmp_path / "probe.service"
    path.write_text(
        "[Service]\nUser=nobody\nGroup=nogroup\n"
        f"EnvironmentFile={tmp_path}/env\nEnvironment=SG_FROM_FILE=unit SG_UNIT=unit\n"
        f"WorkingDirectory=/\nUMask=0027\nExecStart={exec_start}\nKillSignal=SIGTERM\nTimeoutStopSec=20\n"
    )
    return path


@needs_root
def test_sgunit_exec_runs_as_the_units_user_with_its_environment(tmp_path: Path) -> None:
    script = 'id -un; id -gn; pwd; umask; echo "$SG_FROM_FILE|$SG_URL|$SG_UNIT|$HOME|$PYTHONPATH"'
    unit_file = write_unit(tmp_path, "/bin/true")
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "sgunit"), "exec", str(unit_file), "/bin/sh", "-c", script],
        env=dict(os.environ, PYTHONPATH="leaks"), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    home = pwd.getpwnam("nobody").pw_dir
    assert result.stdout.splitlines() == ["nobody", "nogroup", "/", "0027", f"file wins|a&b|unit|{home}|"]


@needs_root
@pytest.mark.slow
def test_sgunit_start_stop_and_a_failed_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = sgunit()
    monkeypatch.setattr(mod, "LOG_DIR", tmp_path)
    monkeypatch.setattr(mod, "RUN_DIR", tmp_path)
    unit_file = write_unit(tmp_path, "/bin/sleep 120")
    assert mod.main(["start", str(unit_file)]) == 0
    pid = int((tmp_path / "probe.pid").read_text())
    try:
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"/bin/sleep", b"120"]
        assert Path(f"/proc/{pid}/status").read_text().count(f"\t{pwd.getpwnam('nobody').pw_uid}\t") >= 1
        assert mod.main(["start", str(unit_file)]) == 0  # already running: nothing started
        started = time.monotonic()
        assert mod.main(["stop", str(unit_file)]) == 0
        assert time.monotonic() - started < 10  # SIGTERM, not the 20 s timeout
        assert not (tmp_path / "probe.pid").exists()
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    failing = write_unit(tmp_path, "/bin/sh -c 'echo bad configuration >&2; exit 2'")
    with pytest.raises(mod.Failure, match=r"(?s)probe exited with status 2.*bad configuration"):
        mod.start("probe", mod.service_section(failing))


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
