"""Configuration: defaults < config file < environment < flags (README "Configuration").

Every setting has one name in every layer: the file key `lease_seconds` is the variable
`SENDGUARD_LEASE_SECONDS` and the flag `--lease-seconds` (where a command has that flag). The file
(TOML, top-level keys only) is read only when named by `--config` or `SENDGUARD_CONFIG`: an implicit
file in the working directory would change a sender's behaviour depending on where it was started.

Bad input in any layer is a UsageError naming where it came from (variable, file and key, or flag);
values that may hold a password (the URLs) are never echoed back.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sqlalchemy.engine import make_url

from sender.errors import UsageError

DEFAULT_DATABASE_URL = "sqlite:///sendguard.db"
ENV_PREFIX = "SENDGUARD_"
CONFIG_ENV = "SENDGUARD_CONFIG"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    smtp_url: str | None = None
    max_senders: int = 1
    lock_file: str | None = None
    lease_seconds: float = 300.0
    retry_base_seconds: float = 60.0
    max_attempts: int = 5
    smtp_timeout: float = 30.0
    sqlite_synchronous: str = "FULL"
    log_level: str = "INFO"
    log_format: str = "text"
    log_recipients: bool = False

    def __repr__(self) -> str:  # a Settings may end up in a log line or a traceback: never the passwords
        shown = masked(self)
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def with_overrides(self, **kwargs: object) -> Settings:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    def resolved_lock_file(self) -> str:
        """Beside the SQLite file, else in the working directory (one sender per lock file)."""
        if self.lock_file:
            return self.lock_file
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return str(Path(url.database).resolve()) + ".sender.lock"
        return str(Path.cwd() / "sendguard-sender.lock")


@dataclass(frozen=True)
class Key:
    """One setting: its kind and bounds, the same in the file, the environment and on the command line."""

    name: str
    kind: type
    minimum: float | None = None
    choices: tuple[str, ...] | None = None
    secret: bool = False  # the value may hold a password: never echoed in an error or `config show`

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


KEYS: tuple[Key, ...] = (
    Key("database_url", str, secret=True),
    Key("smtp_url", str, secret=True),
    Key("max_senders", int, minimum=1),
    Key("lock_file", str),
    Key("lease_seconds", float, minimum=0.5),
    Key("retry_base_seconds", float, minimum=0),
    Key("max_attempts", int, minimum=1),
    Key("smtp_timeout", float, minimum=0.1),
    Key("sqlite_synchronous", str, choices=SQLITE_SYNCHRONOUS),
    Key("log_level", str, choices=LOG_LEVELS),
    Key("log_format", str, choices=LOG_FORMATS),
    Key("log_recipients", bool),
)
KEYS_BY_NAME = {k.name: k for k in KEYS}
assert set(KEYS_BY_NAME) == {f.name for f in fields(Settings)}, "every setting has exactly one Key"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_TOML_TYPE = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


@dataclass(frozen=True)
class Loaded:
    """The effective settings and, per key, the layer that decided it (default, file, env or flag)."""

    settings: Settings
    sources: dict[str, str]
    config_file: str | None


# --- per-layer parsing ---------------------------------------------------------------------------


def _check(key: Key, value: Any, where: str) -> Any:
    """Bounds, choices and normalisation shared by every layer; `where` names the origin for errors."""
    if key.kind in (int, float):
        if not math.isfinite(value):  # float() accepts "nan" and "inf"; neither is a usable setting
            raise UsageError(f"{where} must be a finite number")
        if key.minimum is not None and value < key.minimum:
            raise UsageError(f"{where} must be at least {key.minimum:g}")
    if key.choices is not None:
        value = str(value).strip().upper() if key.choices[0].isupper() else str(value).strip().lower()
        if value not in key.choices:
            raise UsageError(f"{where} must be one of {', '.join(key.choices)}")
    if key.name == "database_url":
        value = validate_database_url(value, where=where)
    return value


def _from_text(key: Key, raw: str, where: str) -> Any:
    """A value given as text (environment variable or flag)."""
    text = raw.strip()
    if key.kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise UsageError(f"{where} must be one of 1/true/yes/on or 0/false/no/off")
    if key.kind in (int, float):
        try:
            value = key.kind(text)
        except ValueError:
            raise UsageError(f"{where} is not a valid {key.kind.__name__}") from None
        return _check(key, value, where)
    return _check(key, raw, where)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in KEYS:
        raw = env.get(key.env)
        if raw is None or raw.strip() == "":
            continue  # an empty variable means "not set", as in most shells' `VAR= cmd`
        where = key.env if key.secret else f"{key.env}={raw!r}"
        out[key.name] = _from_text(key, raw, where)
    return out


def _from_file(path: str) -> dict[str, Any]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names the line and column, never the offending text (which may be a secret).
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = KEYS_BY_NAME.get(name)
        if key is None:
            hint = " (sections are not used: keys go at the top level)" if isinstance(value, dict) else ""
            raise UsageError(
                f"config file {path}: unknown key {name!r}{hint}; known keys: {', '.join(KEYS_BY_NAME)}"
            )
        where = f"config file {path}: {name}"
        ok = (
            isinstance(value, bool)
            if key.kind is bool
            else isinstance(value, int | float) and not isinstance(value, bool)
            if key.kind is float
            else isinstance(value, key.kind) and not isinstance(value, bool)
        )
        if not ok:
            raise UsageError(f"{where} must be {_TOML_TYPE[key.kind]}, not {_toml_type_name(value)}")
        if key.kind is str and value.strip() == "":
            raise UsageError(f"{where} is empty (leave the key out for the default)")
        out[name] = _check(key, float(value) if key.kind is float else value, where)
    return out


def _toml_type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date or time"


def _from_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            continue
        key = KEYS_BY_NAME[name]
        if isinstance(value, str):
            out[name] = _from_text(key, value, key.flag)
        else:  # argparse already typed it (int, bool)
            out[name] = _check(key, value, key.flag)
    return out


# --- the layers together -------------------------------------------------------------------------


def load_config(
    env: Mapping[str, str] | None = None,
    *,
    config_file: str | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Loaded:
    """Defaults < file (`config_file`, else $SENDGUARD_CONFIG) < environment < flags."""
    env = dict(os.environ if env is None else env)
    path = config_file or (env.get(CONFIG_ENV) or "").strip() or None
    sources = {key.name: "default" for key in KEYS}
    values: dict[str, Any] = {}
    for layer, found in (
        ("file", _from_file(path) if path else {}),
        ("env", _from_env(env)),
        ("flag", _from_flags(flags or {})),
    ):
        values.update(found)
        sources.update(dict.fromkeys(found, layer))
    return Loaded(Settings(**values), sources, path)


def load_settings(env: Mapping[str, str] | None = None, *, config_file: str | None = None) -> Settings:
    return load_config(env, config_file=config_file).settings


def validate_database_url(url: str, *, where: str = "SENDGUARD_DATABASE_URL") -> str:
    try:
        parsed = make_url(url)
    except Exception:
        raise UsageError(f"{where} is not a valid SQLAlchemy URL") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(
            f"{where}: unsupported database {parsed.get_backend_name()!r}: use sqlite:///FILE or postgresql+psycopg://..."
        )
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            # A bare postgresql:// means psycopg2 to SQLAlchemy; we ship psycopg 3.
            return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        if parsed.get_driver_name() != "psycopg":
            raise UsageError(
                f"{where}: PostgreSQL URLs must use the psycopg 3 driver: postgresql+psycopg://..."
            )
    return url


def redact_database_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def redact_smtp_url(url: str) -> str:
    from sender.transport import redact_url

    return redact_url(url)


def masked(settings: Settings) -> dict[str, Any]:
    """Every setting, with the passwords inside the URLs replaced by ***: safe to print or log."""
    out: dict[str, Any] = {}
    for key in KEYS:
        value = getattr(settings, key.name)
        if key.name == "database_url":
            try:
                value = redact_database_url(value)
            except Exception:  # not parseable: show nothing of it rather than risk the password
                value = "***"
        elif key.name == "smtp_url" and value is not None:
            value = redact_smtp_url(value)
        out[key.name] = value
    return out


def secrets_of(settings: Settings) -> list[str]:
    """The passwords this configuration holds, for the log formatter's last-resort scrubbing."""
    found: set[str] = set()
    for url in (settings.database_url, settings.smtp_url):
        if url:
            found.update(_url_passwords(url))
    # Longest first, so a password containing another is scrubbed whole; scrubbing "a" out of every
    # line would mangle the logs, and so short a password is not worth hiding anyway.
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def _url_passwords(url: str) -> set[str]:
    """The password of a URL as written (percent-encoded) and decoded. The same split as
    transport.redact_url (the last '@' before the path ends the userinfo), so it works on URLs that
    do not parse."""
    rest = url.partition("://")[2]
    authority = rest.split("/", 1)[0] if "@" in rest.split("/", 1)[0] else rest.split("?", 1)[0]
    userinfo, at, _host = authority.rpartition("@")
    raw = userinfo.partition(":")[2] if at else ""
    return {raw, unquote(raw)} - {""}
