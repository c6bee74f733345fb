"""Configuration from the environment (sender/config.py, CLI.md "Configuration")."""

from __future__ import annotations

from pathlib import Path

import pytest

from sender.config import DEFAULT_DATABASE_URL, Settings, load_settings, redact_database_url
from sender.errors import UsageError


def test_defaults_when_nothing_is_set() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite:///sendguard.db"
    assert (settings.smtp_url, settings.max_senders, settings.lock_file) == (None, 1, None)
    assert (settings.lease_seconds, settings.retry_base_seconds, settings.max_attempts) == (300.0, 60.0, 5)


def test_every_variable_is_read_and_typed() -> None:
    settings = load_settings(
        {
            "SENDGUARD_DATABASE_URL": "sqlite:////data/sg.db",
            "SENDGUARD_SMTP_URL": "smtp://mail.example.com:2525",
            "SENDGUARD_MAX_SENDERS": " 3 ",
            "SENDGUARD_LOCK_FILE": "/run/sg.lock",
            "SENDGUARD_LEASE_SECONDS": "12.5",
            "SENDGUARD_RETRY_BASE_SECONDS": "0",
            "SENDGUARD_MAX_ATTEMPTS": "7",
            "SENDGUARD_SMTP_TIMEOUT": "4",
            "UNRELATED": "ignored",
        }
    )
    assert settings == Settings(
        database_url="sqlite:////data/sg.db",
        smtp_url="smtp://mail.example.com:2525",
        max_senders=3,
        lock_file="/run/sg.lock",
        lease_seconds=12.5,
        retry_base_seconds=0.0,
        max_attempts=7,
        smtp_timeout=4.0,
    )
    assert isinstance(settings.max_senders, int) and isinstance(settings.lease_seconds, float)


def test_empty_values_mean_the_default() -> None:
    env = {
        name: "  " if name != "SENDGUARD_DATABASE_URL" else ""
        for name in (
            "SENDGUARD_DATABASE_URL",
            "SENDGUARD_MAX_SENDERS",
            "SENDGUARD_LEASE_SECONDS",
            "SENDGUARD_RETRY_BASE_SECONDS",
            "SENDGUARD_MAX_ATTEMPTS",
        )
    }
    assert load_settings({**env, "SENDGUARD_SMTP_URL": "", "SENDGUARD_LOCK_FILE": ""}) == Settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SENDGUARD_MAX_SENDERS", "many", "not a valid int"),
        ("SENDGUARD_MAX_SENDERS", "1.5", "not a valid int"),
        ("SENDGUARD_MAX_SENDERS", "0", "at least 1"),
        ("SENDGUARD_MAX_SENDERS", "-2", "at least 1"),
        ("SENDGUARD_MAX_ATTEMPTS", "0", "at least 1"),
        ("SENDGUARD_LEASE_SECONDS", "five minutes", "not a valid float"),
        ("SENDGUARD_LEASE_SECONDS", "0", "at least"),
        ("SENDGUARD_LEASE_SECONDS", "nan", "finite"),
        ("SENDGUARD_LEASE_SECONDS", "inf", "finite"),
        ("SENDGUARD_RETRY_BASE_SECONDS", "-1", "at least 0"),
        ("SENDGUARD_RETRY_BASE_SECONDS", "-inf", "finite"),
        ("SENDGUARD_SMTP_TIMEOUT", "0", "at least"),
        ("SENDGUARD_DATABASE_URL", "mysql://x", "unsupported database 'mysql'"),
        ("SENDGUARD_DATABASE_URL", "not a url", "not a valid SQLAlchemy URL"),
        ("SENDGUARD_DATABASE_URL", "postgresql+psycopg2://u:pw@h/db", "psycopg 3"),
        ("SENDGUARD_DATABASE_URL", "postgresql+asyncpg://u:pw@h/db", "psycopg 3"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        load_settings({name: value})
    text = str(raised.value)
    assert "\n" not in text
    if name != "SENDGUARD_DATABASE_URL":
        assert name in text
    assert "pw" not in text, "a database password never appears in an error"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "postgresql://sg:p%40ss@db.example:5433/sendguard",
            "postgresql+psycopg://sg:p%40ss@db.example:5433/sendguard",
        ),
        ("postgresql://localhost/sg?sslmode=require", "postgresql+psycopg://localhost/sg?sslmode=require"),
        ("postgresql+psycopg://sg:pw@db/sg", "postgresql+psycopg://sg:pw@db/sg"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
    ],
)
def test_bare_postgresql_urls_are_normalized_to_psycopg_3(given: str, expected: str) -> None:
    assert load_settings({"SENDGUARD_DATABASE_URL": given}).database_url == expected


def test_redacted_database_url_hides_the_password() -> None:
    shown = redact_database_url("postgresql+psycopg://sg:s3cret@db.example/sg")
    assert "s3cret" not in shown and "sg:***@db.example" in shown


def test_lock_file_defaults_beside_the_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    absolute = load_settings({"SENDGUARD_DATABASE_URL": f"sqlite:///{tmp_path}/data/sg.db"})
    assert absolute.resolved_lock_file() == f"{tmp_path}/data/sg.db.sender.lock"
    relative = load_settings({"SENDGUARD_DATABASE_URL": "sqlite:///data/sg.db"})
    assert relative.resolved_lock_file() == str((tmp_path / "data" / "sg.db").resolve()) + ".sender.lock"
    # Two spellings of one database file share one lock file: one sender per file.
    assert relative.resolved_lock_file() == absolute.resolved_lock_file()
    assert load_settings({}).resolved_lock_file() == str(tmp_path.resolve() / "sendguard.db") + ".sender.lock"


def test_lock_file_elsewhere_falls_back_to_the_working_dir_and_an_explicit_path_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pg = load_settings({"SENDGUARD_DATABASE_URL": "postgresql://db.example/sg"})
    assert pg.resolved_lock_file() == str(Path.cwd() / "sendguard-sender.lock")
    memory = load_settings({"SENDGUARD_DATABASE_URL": "sqlite://"})
    assert memory.resolved_lock_file() == str(Path.cwd() / "sendguard-sender.lock")
    explicit = load_settings(
        {"SENDGUARD_DATABASE_URL": "sqlite:///x.db", "SENDGUARD_LOCK_FILE": "/run/x.lock"}
    )
    assert explicit.resolved_lock_file() == "/run/x.lock"


def test_flags_override_the_environment_only_when_given() -> None:
    base = load_settings({"SENDGUARD_SMTP_URL": "smtp://env.example", "SENDGUARD_MAX_SENDERS": "2"})
    same = base.with_overrides(smtp_url=None, max_senders=None, database_url=None, lock_file=None)
    assert same == base
    changed = base.with_overrides(smtp_url="smtp://flag.example", max_senders=4)
    assert (changed.smtp_url, changed.max_senders) == ("smtp://flag.example", 4)
    assert base.smtp_url == "smtp://env.example", "Settings are immutable"
