"""The config file layer (sendguard.toml), precedence flag > env > file > default, and `config show`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sender.config import KEYS, Settings, load_config, load_settings
from sender.errors import UsageError
from tests.conftest import run_cli

DB_SECRET = "DbS3cretPw42"  # distinctive: a substring match can only be a leak
SMTP_SECRET = "Smtp-S3cret-pw"
FULL_FILE = f"""
database_url = "postgresql://sg:{DB_SECRET}@db.example:5433/sendguard"
smtp_url = "smtp://mailer:{SMTP_SECRET}@mail.example:2525?starttls=true"
max_senders = 3
lock_file = "/run/sg.lock"
lease_seconds = 120
retry_base_seconds = 7.5
max_attempts = 9
smtp_timeout = 4
sqlite_synchronous = "normal"
log_level = "debug"
log_format = "json"
log_recipients = true
"""


def write(tmp_path: Path, text: str, name: str = "sendguard.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_every_key_is_read_from_the_file_typed_and_normalised(tmp_path: Path) -> None:
    loaded = load_config({}, config_file=write(tmp_path, FULL_FILE))
    assert loaded.settings == Settings(
        database_url=f"postgresql+psycopg://sg:{DB_SECRET}@db.example:5433/sendguard",  # psycopg 3, as env
        smtp_url=f"smtp://mailer:{SMTP_SECRET}@mail.example:2525?starttls=true",
        max_senders=3,
        lock_file="/run/sg.lock",
        lease_seconds=120.0,
        retry_base_seconds=7.5,
        max_attempts=9,
        smtp_timeout=4.0,
        sqlite_synchronous="NORMAL",
        log_level="DEBUG",
        log_format="json",
        log_recipients=True,
    )
    assert isinstance(loaded.settings.lease_seconds, float), "a TOML integer for a float key is a float"
    assert set(loaded.sources.values()) == {"file"} and len(loaded.sources) == len(KEYS)


def test_the_file_documents_every_key_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    missing = [k.name for k in KEYS if f"`{k.name}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"


@pytest.mark.parametrize(
    ("file", "env", "flag", "expected", "source"),
    [
        (None, None, None, 1, "default"),
        ("2", None, None, 2, "file"),
        ("2", "3", None, 3, "env"),
        ("2", "3", 4, 4, "flag"),
        (None, None, 4, 4, "flag"),
        ("2", "", None, 2, "file"),  # an empty variable is unset, as everywhere else
    ],
)
def test_precedence_flag_over_env_over_file_over_default(
    tmp_path: Path, file: str | None, env: str | None, flag: int | None, expected: int, source: str
) -> None:
    path = write(tmp_path, f"max_senders = {file}\n" if file else "")
    environ = {} if env is None else {"SENDGUARD_MAX_SENDERS": env}
    loaded = load_config(environ, config_file=path, flags={"max_senders": flag})
    assert (loaded.settings.max_senders, loaded.sources["max_senders"]) == (expected, source)


def test_sendguard_config_names_the_file_and_the_flag_wins_over_it(tmp_path: Path) -> None:
    a = write(tmp_path, 'log_format = "json"\n', "a.toml")
    b = write(tmp_path, 'log_format = "text"\nmax_attempts = 2\n', "b.toml")
    assert load_settings({"SENDGUARD_CONFIG": a}).log_format == "json"
    by_flag = load_config({"SENDGUARD_CONFIG": a}, config_file=b)
    assert (by_flag.settings.log_format, by_flag.settings.max_attempts, by_flag.config_file) == ("text", 2, b)
    # No file is read unless named: a sendguard.toml in the working directory is ignored.
    assert load_config({}).config_file is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_sender = 2\n", "unknown key 'max_sender'"),
        ('[smtp]\nurl = "smtp://x"\n', "unknown key 'smtp' (sections are not used"),
        ('max_senders = "3"\n', "max_senders must be an integer, not a string"),
        ("max_senders = 1.5\n", "max_senders must be an integer, not a float"),
        ("max_senders = 0\n", "max_senders must be at least 1"),
        ("lease_seconds = true\n", "lease_seconds must be a number, not a boolean"),
        ("lease_seconds = nan\n", "lease_seconds must be a finite number"),
        ("lease_seconds = 0.1\n", "lease_seconds must be at least 0.5"),
        ("retry_base_seconds = -1\n", "retry_base_seconds must be at least 0"),
        ('log_format = "xml"\n', "log_format must be one of text, json"),
        ('log_level = "loud"\n', "log_level must be one of DEBUG"),
        ('sqlite_synchronous = "OFF"\n', "sqlite_synchronous must be one of FULL, NORMAL, EXTRA"),
        ('log_recipients = "yes"\n', "log_recipients must be true or false, not a string"),
        ('lock_file = ""\n', "lock_file is empty"),
        ("smtp_url = 25\n", "smtp_url must be a string, not an integer"),
        (f'database_url = "mysql://u:{DB_SECRET}@h/db"\n', "database_url: unsupported database 'mysql'"),
        (f'database_url = "postgresql+psycopg2://u:{DB_SECRET}@h/db"\n', "psycopg 3"),
        (f'database_url = "::{DB_SECRET}"\n', "database_url is not a valid SQLAlchemy URL"),
        (f'smtp_url = "smtp://u:{SMTP_SECRET}@h\n', "is not valid TOML"),
        (f'database_url = "x"\nsmtp_url = "smtp://u:{SMTP_SECRET}@h" junk\n', "is not valid TOML"),
    ],
)
def test_bad_files_are_one_line_naming_file_and_key_without_the_secret(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as raised:
        load_config({}, config_file=path)
    shown = str(raised.value)
    assert message in shown
    assert path in shown and "\n" not in shown
    assert DB_SECRET not in shown and SMTP_SECRET not in shown


def test_a_missing_or_binary_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read config file .*nope\.toml: No such file"):
        load_config({}, config_file=str(tmp_path / "nope.toml"))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="is not UTF-8"):
        load_config({}, config_file=str(binary))


def test_bad_environment_values_still_name_the_variable_and_hide_url_secrets() -> None:
    with pytest.raises(UsageError, match="SENDGUARD_LOG_FORMAT='xml' must be one of text, json"):
        load_settings({"SENDGUARD_LOG_FORMAT": "xml"})
    with pytest.raises(UsageError, match="SENDGUARD_LOG_RECIPIENTS='maybe' must be one of"):
        load_settings({"SENDGUARD_LOG_RECIPIENTS": "maybe"})
    assert load_settings({"SENDGUARD_LOG_RECIPIENTS": "yes"}).log_recipients is True
    with pytest.raises(UsageError) as raised:
        load_settings({"SENDGUARD_DATABASE_URL": f"mysql://u:{DB_SECRET}@h/db"})
    assert DB_SECRET not in str(raised.value) and "SENDGUARD_DATABASE_URL" in str(raised.value)


def test_settings_repr_never_shows_a_password(tmp_path: Path) -> None:
    settings = load_settings({}, config_file=write(tmp_path, FULL_FILE))
    shown = repr(settings)
    assert DB_SECRET not in shown and SMTP_SECRET not in shown
    assert "sg:***@db.example" in shown and "mailer:***@mail.example" in shown


# --- through the real CLI ------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDGUARD_")}
    return {**env, **extra}


def test_config_show_masks_every_secret_from_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_FILE)
    env = _env(SENDGUARD_SMTP_URL=f"smtps://other:{SMTP_SECRET}x@mail2.example")
    for args in (["--config", path, "config", "show"], ["config", "show", "--config", path, "--json"]):
        result = run_cli(args, env)
        assert result.returncode == 0, result.stderr
        everything = result.stdout + result.stderr
        assert DB_SECRET not in everything and SMTP_SECRET not in everything
        assert "sg:***@db.example:5433" in result.stdout and "other:***@mail2.example" in result.stdout
    shown = json.loads(result.stdout)
    assert shown["config_file"] == path
    assert shown["sources"]["smtp_url"] == "env" and shown["sources"]["database_url"] == "file"
    assert shown["settings"]["max_senders"] == 3 and shown["settings"]["log_recipients"] is True


def test_config_show_reports_each_layer_and_its_text_form_is_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "max_senders = 2\nmax_attempts = 2\nlease_seconds = 60\n")
    env = _env(SENDGUARD_CONFIG=path, SENDGUARD_MAX_ATTEMPTS="3")
    result = run_cli(["config", "show", "--log-level", "warning"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"# config file: {path}; passwords shown as ***" == lines[0]
    assert "max_senders = 2  # file" in lines and "max_attempts = 3  # env" in lines
    assert 'log_level = "WARNING"  # flag' in lines and "max_senders = 2  # file" in lines
    assert "# smtp_url is unset  # default" in lines
    import tomllib

    parsed = tomllib.loads(result.stdout)  # paste-able: what it prints is a valid sendguard.toml
    assert parsed["lease_seconds"] == 60.0 and "smtp_url" not in parsed


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_bad_file_exits_2_with_one_line_for_any_command(tmp_path: Path, where: str) -> None:
    path = write(tmp_path, f'database_url = "mysql://u:{DB_SECRET}@h/db"\n')
    args = ["--config", path, "status"] if where == "before" else ["status", "--config", path]
    result = run_cli(args, _env())
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert path in result.stderr and "database_url" in result.stderr and DB_SECRET not in result.stderr
    assert "Traceback" not in result.stderr


def test_the_file_configures_a_real_command(tmp_path: Path, sqlite_url: str) -> None:
    path = write(tmp_path, f'database_url = "{sqlite_url}"\n')
    upgraded = run_cli(["db", "upgrade", "--config", path], _env())
    assert upgraded.returncode == 0, upgraded.stderr
    assert sqlite_url in upgraded.stdout and Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_sqlite_synchronous_from_the_file_reaches_the_engine(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """db.py reads SENDGUARD_SQLITE_SYNCHRONOUS when it opens SQLite: the file's value must get there."""
    from sender import cli
    from sender.db import make_engine
    from sender.migrate import upgrade

    monkeypatch.setenv("SENDGUARD_SQLITE_SYNCHRONOUS", "")  # unset for the loader; restored after
    path = write(tmp_path, f'database_url = "{sqlite_url}"\nsqlite_synchronous = "NORMAL"\n')
    assert cli.main(["--config", path, "config", "show"]) == 0
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            level = conn.exec_driver_sql("PRAGMA synchronous").scalar_one()
    finally:
        engine.dispose()
    assert level == 1, "NORMAL is 1 (FULL would be 2)"
    monkeypatch.setenv("SENDGUARD_SQLITE_SYNCHRONOUS", "FULL")  # the control: the PRAGMA read can fail
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2
    finally:
        engine.dispose()
