"""Read and validate a campaign TOML file (CLI.md, "Campaign file (TOML)").

Everything is checked here, before anything reaches the database, so a campaign that exists can be
sent: a typo in a key, an impossible window or a template that does not compile is a one-line
UsageError at `campaign create`, never a failure in the middle of a sending run.
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
import re
import sys
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from email import errors as email_errors
from email.policy import default as default_policy
from email.utils import getaddresses, parseaddr
from urllib.parse import unquote

from sender.errors import UsageError
from sender.leads_csv import is_valid_email
from sender.templates import compile_template

MAX_NAME_LENGTH = 200
# Pacing values feed timedelta arithmetic in the sender; a week is far beyond any sane interval and
# keeps absurd values (1e300) from overflowing there instead of failing here.
MAX_SECONDS = 7 * 24 * 3600
# Stored in 32-bit integer columns on PostgreSQL.
MAX_INT = 2**31 - 1
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_TOP_LEVEL_KEYS = (
    "name",
    "from",
    "reply_to",
    "unsubscribe",
    "daily_limit",
    "min_interval_seconds",
    "jitter_seconds",
    "timezone",
    "window",
    "variants",
    "breakers",
)
_WINDOW_KEYS = ("days", "start", "end")
_BREAKER_KEYS = ("duplicate", "hard_failures", "hard_failures_window", "auth", "unknowns")
# Far beyond any useful look-back; keeps the breaker's count query a small LIMIT.
MAX_BREAKER_WINDOW = 10_000
_VARIANT_KEYS = ("letter", "weight", "subject", "body")
_HH_MM = re.compile(r"(\d{1,2}):(\d{2})")
_LETTER = re.compile(r"[A-Z]")


@dataclass(frozen=True)
class VariantSpec:
    letter: str
    weight: int
    subject: str
    body: str


@dataclass(frozen=True)
class Window:
    days: tuple[int, ...]  # 0 = Monday .. 6 = Sunday, sorted, unique
    start: datetime.time
    end: datetime.time  # after start: a window never spans midnight


@dataclass(frozen=True)
class BreakersSpec:
    """The `[breakers]` table (sender/breakers.py); the defaults are the shipped policy."""

    duplicate: bool = True  # pause when the duplicate guard fires
    hard_failures: int = 5  # pause when this many of the last `hard_failures_window` sends failed (0 = off)
    hard_failures_window: int = 20
    auth: bool = True  # pause when the SMTP server rejects our credentials
    unknowns: int = 3  # pause when this many sends ended unknown (0 = off)


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    from_addr: str
    reply_to: str | None
    unsubscribe: str | None
    daily_limit: int | None
    min_interval_seconds: float
    jitter_seconds: float
    timezone: str
    window: Window | None
    variants: tuple[VariantSpec, ...]
    breakers: BreakersSpec = BreakersSpec()


def load_campaign_file(path: str | os.PathLike[str]) -> CampaignSpec:
    source = os.fspath(path)
    try:
        if source == "-":  # stdin: the service user cannot open an admin's file (README, Operations)
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{source}: is a directory, expected a campaign TOML file") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        # TOML is UTF-8 by definition; utf-8-sig tolerates the BOM some Windows editors add.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{source}: not UTF-8 (invalid byte at offset {exc.start}); TOML must be UTF-8"
        ) from None
    return parse_campaign(text, source)


def parse_campaign(text: str, source: str = "campaign file") -> CampaignSpec:
    try:
        doc = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: invalid TOML: {_one_line(str(exc))}") from None
    return _Checker(source).campaign(doc)


class _Checker:
    """Validation with every error prefixed by the file name, one line each."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> UsageError:
        return UsageError(f"{self.source}: {key}: {problem}")

    def campaign(self, doc: Mapping[str, object]) -> CampaignSpec:
        self.no_unknown_keys(doc, _TOP_LEVEL_KEYS, where=None)
        for key in ("name", "from", "variants"):
            if key not in doc:
                raise UsageError(f"{self.source}: missing required key '{key}'")
        daily_limit = doc.get("daily_limit")
        # Keyword arguments evaluate in order, so errors come in the order the keys are documented.
        return CampaignSpec(
            name=self.name(doc["name"]),
            from_addr=self.address("from", doc["from"]),
            reply_to=self.address("reply_to", doc["reply_to"]) if "reply_to" in doc else None,
            unsubscribe=self.unsubscribe(doc["unsubscribe"]) if "unsubscribe" in doc else None,
            daily_limit=None if daily_limit is None else self.integer("daily_limit", daily_limit, 1, MAX_INT),
            min_interval_seconds=self.seconds("min_interval_seconds", doc.get("min_interval_seconds", 0)),
            jitter_seconds=self.seconds("jitter_seconds", doc.get("jitter_seconds", 0)),
            timezone=self.timezone(doc.get("timezone", "UTC")),
            window=self.window(doc["window"]) if "window" in doc else None,
            variants=self.variants(doc["variants"]),
            breakers=self.breakers(doc["breakers"]) if "breakers" in doc else BreakersSpec(),
        )

    def no_unknown_keys(self, table: Mapping[str, object], known: tuple[str, ...], where: str | None) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
                place = f"{where}: " if where else ""
                raise UsageError(f"{self.source}: {place}unknown key {key!r}{hint}")

    def string(self, key: str, value: object) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {_type_name(value)}")
        return value

    def name(self, value: object) -> str:
        name = self.string("name", value).strip()
        if not name:
            raise self.fail("name", "must not be empty")
        if len(name) > MAX_NAME_LENGTH:
            raise self.fail("name", f"must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
        bad = _first_control(name)
        if bad is not None:
            raise self.fail("name", f"contains a control character (U+{ord(bad):04X})")
        return name

    def address(self, key: str, value: object) -> str:
        text = self.string(key, value).strip()
        bad = _first_control(text)
        if bad is not None:
            # A CR/LF here would end up verbatim in a header of every message.
            raise self.fail(key, f"contains a control character (U+{ord(bad):04X})")
        if not text:
            raise self.fail(key, "must not be empty")
        if len(getaddresses([text])) != 1:
            raise self.fail(key, f"must be exactly one email address, got {_shorten(text)!r}")
        _, addr = parseaddr(text)
        if not addr or not is_valid_email(addr):
            raise self.fail(key, f"{_shorten(addr or text)!r} is not a valid email address")
        # parseaddr quietly repairs what it cannot parse (a missing '>', trailing junk); the stricter
        # header parser reports those as defects. It also raises assorted exceptions on odd input,
        # all of which mean the same thing here.
        try:
            header = default_policy.header_factory("From", text)
            defects = [d for d in header.defects if not isinstance(d, email_errors.ObsoleteHeaderDefect)]
            well_formed = len(header.addresses) == 1 and not defects
        except Exception:
            well_formed = False
        if not well_formed:
            raise self.fail(key, f"malformed address {_shorten(text)!r}")
        return text

    def unsubscribe(self, value: object) -> str:
        text = self.string("unsubscribe", value).strip()
        if _first_control(text) is not None or " " in text:
            raise self.fail("unsubscribe", "must not contain spaces or control characters")
        if text.lower().startswith("mailto:"):
            addr = unquote(text[len("mailto:") :].partition("?")[0])
        else:
            addr = text
        if not is_valid_email(addr):
            raise self.fail(
                "unsubscribe", f"must be an email address or a mailto: URL, got {_shorten(text)!r}"
            )
        return text

    def integer(self, key: str, value: object, low: int, high: int) -> int:
        # bool is an int subclass in Python, but `daily_limit = true` is surely a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {_type_name(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"must be between {low} and {high}, got {value}")
        return value

    def seconds(self, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number of seconds, got {_type_name(value)}")
        # TOML has nan and inf literals; neither is a usable interval.
        if not math.isfinite(value) or value < 0:
            raise self.fail(key, f"must be a non-negative number, got {value}")
        if value > MAX_SECONDS:
            raise self.fail(key, f"must be at most {MAX_SECONDS} (one week), got {value}")
        return float(value)

    def timezone(self, value: object) -> str:
        name = self.string("timezone", value)
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise self.fail(
                "timezone", f"unknown time zone {_shorten(name)!r} (use an IANA name such as 'Europe/Warsaw')"
            ) from None
        return name

    def window(self, value: object) -> Window:
        if not isinstance(value, dict):
            raise self.fail(
                "window",
                f"must be a table like {{ days = [...], start = ..., end = ... }}, got {_type_name(value)}",
            )
        self.no_unknown_keys(value, _WINDOW_KEYS, where="window")
        for key in ("start", "end"):
            if key not in value:
                raise self.fail("window", f"missing '{key}' (\"HH:MM\")")
        start = self.time("window.start", value["start"])
        end = self.time("window.end", value["end"])
        if end <= start:
            raise self.fail(
                "window", f"end {end:%H:%M} must be after start {start:%H:%M} (windows cannot span midnight)"
            )
        days = self.days(value["days"]) if "days" in value else tuple(range(7))
        return Window(days=days, start=start, end=end)

    def days(self, value: object) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail("window.days", f"must be a non-empty list of {', '.join(DAY_NAMES)}")
        days: set[int] = set()
        for item in value:
            if not isinstance(item, str) or item.strip().lower() not in DAY_NAMES:
                raise self.fail("window.days", f"unknown day {item!r} (use {', '.join(DAY_NAMES)})")
            days.add(DAY_NAMES.index(item.strip().lower()))
        return tuple(sorted(days))

    def time(self, key: str, value: object) -> datetime.time:
        # TOML's own local-time literal (start = 09:00:00) is accepted as well as the "HH:MM" string.
        if isinstance(value, datetime.time):
            if value.tzinfo is not None:
                raise self.fail(key, "must be a local time without an offset")
            return value
        if isinstance(value, str):
            match = _HH_MM.fullmatch(value.strip())
            if match:
                hour, minute = int(match[1]), int(match[2])
                if hour < 24 and minute < 60:
                    return datetime.time(hour, minute)
        raise self.fail(key, f'must be a time "HH:MM" between 00:00 and 23:59, got {_shorten(repr(value))}')

    def breakers(self, value: object) -> BreakersSpec:
        if not isinstance(value, dict):
            raise self.fail("breakers", f"must be a table ([breakers]), got {_type_name(value)}")
        self.no_unknown_keys(value, _BREAKER_KEYS, where="breakers")
        default = BreakersSpec()
        window = self.integer(
            "breakers.hard_failures_window",
            value.get("hard_failures_window", default.hard_failures_window),
            1,
            MAX_BREAKER_WINDOW,
        )
        hard = self.integer(
            "breakers.hard_failures", value.get("hard_failures", default.hard_failures), 0, MAX_INT
        )
        if hard > window:
            raise self.fail(
                "breakers.hard_failures",
                f"{hard} can never be reached within hard_failures_window = {window} (use 0 to turn it off)",
            )
        return BreakersSpec(
            duplicate=self.boolean("breakers.duplicate", value.get("duplicate", default.duplicate)),
            hard_failures=hard,
            hard_failures_window=window,
            auth=self.boolean("breakers.auth", value.get("auth", default.auth)),
            unknowns=self.integer("breakers.unknowns", value.get("unknowns", default.unknowns), 0, MAX_INT),
        )

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_type_name(value)}")
        return value

    def variants(self, value: object) -> tuple[VariantSpec, ...]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.fail("variants", "must be an array of tables: write each variant as [[variants]]")
        if not value:
            raise self.fail("variants", "at least one [[variants]] is required")
        result: list[VariantSpec] = []
        seen: set[str] = set()
        for index, table in enumerate(value, start=1):
            where = f"variants #{index}"
            self.no_unknown_keys(table, _VARIANT_KEYS, where=where)
            if "letter" not in table:
                raise self.fail(where, "missing 'letter'")
            letter = table["letter"]
            if not isinstance(letter, str) or not _LETTER.fullmatch(letter):
                raise self.fail(f"{where}: letter", f"must be one uppercase letter A-Z, got {letter!r}")
            if letter in seen:
                raise self.fail(f"{where}: letter", f"variant {letter} is defined twice")
            seen.add(letter)
            where = f"variant {letter}"
            weight = self.integer(f"{where}: weight", table.get("weight", 1), 1, 1_000_000)
            templates: dict[str, str] = {}
            for part in ("subject", "body"):
                if part not in table:
                    raise self.fail(where, f"missing '{part}'")
                source = self.string(f"{where}: {part}", table[part])
                if not source.strip():
                    raise self.fail(f"{where}: {part}", "must not be empty")
                # Raises UsageError "<file>: variant A subject: template syntax error at line N: ..."
                compile_template(source, f"{self.source}: {where} {part}")
                templates[part] = source
            result.append(VariantSpec(letter, weight, templates["subject"], templates["body"]))
        return tuple(result)


def _first_control(text: str) -> str | None:
    # isprintable() is False for control, format and line/paragraph-separator characters (and every
    # space but U+0020), none of which belongs in a name or an address header.
    return next((ch for ch in text if ch != " " and not ch.isprintable()), None)


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    if isinstance(value, dict):
        return "a table"
    return names.get(type(value), type(value).__name__)


def _shorten(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())
