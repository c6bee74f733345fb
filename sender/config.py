"""Configuration from the environment (CLI.md); a flag of the same meaning overrides it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.engine import make_url

from sender.errors import UsageError

DEFAULT_DATABASE_URL = "sqlite:///sendguard.db"


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


def _number(env: dict[str, str], name: str, kind: type, minimum: float) -> float | int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = kind(raw.strip())
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if not math.isfinite(value):  # float() accepts "nan" and "inf"; neither is a usable setting
        raise UsageError(f"{name}={raw!r} must be a finite number")
    if value < minimum:
        raise UsageError(f"{name}={raw!r} must be at least {minimum}")
    return value


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    settings = Settings()
    url = env.get("SENDGUARD_DATABASE_URL") or DEFAULT_DATABASE_URL
    return settings.with_overrides(
        database_url=validate_database_url(url),
        smtp_url=env.get("SENDGUARD_SMTP_URL") or None,
        max_senders=_number(env, "SENDGUARD_MAX_SENDERS", int, 1),
        lock_file=env.get("SENDGUARD_LOCK_FILE") or None,
        lease_seconds=_number(env, "SENDGUARD_LEASE_SECONDS", float, 0.5),
        retry_base_seconds=_number(env, "SENDGUARD_RETRY_BASE_SECONDS", float, 0),
        max_attempts=_number(env, "SENDGUARD_MAX_ATTEMPTS", int, 1),
        smtp_timeout=_number(env, "SENDGUARD_SMTP_TIMEOUT", float, 0.1),
    )


def validate_database_url(url: str) -> str:
    try:
        parsed = make_url(url)
    except Exception:
        raise UsageError("SENDGUARD_DATABASE_URL is not a valid SQLAlchemy URL") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite:///FILE or postgresql+psycopg://..."
        )
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            # A bare postgresql:// means psycopg2 to SQLAlchemy; we ship psycopg 3.
            return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        if parsed.get_driver_name() != "psycopg":
            raise UsageError("PostgreSQL URLs must use the psycopg 3 driver: postgresql+psycopg://...")
    return url


def redact_database_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
