"""`sendlog import`: another system's SendLog CSV into `imported_send_log`, for duplicate analysis only.

CLI.md, "SendLog import (CSV)". Column names are matched case-insensitively, snake_case or camelCase, so
an export of the original Prisma `SendLog` table (`id,campaignId,leadId,variantLetter,createdAt`)
imports without edits. Every row is validated before the transaction opens, against the same limits
the database enforces (column lengths, integer ranges, no NUL), so one bad row is rejected with its
line number and can never fail the insert of the good ones. Whole-file problems raise UsageError
(exit 2) and import nothing.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, delete, func, insert, select, text

from models import ImportedSendLog
from sender.errors import UsageError
from sender.leads_csv import LineCounter, decode_csv_text, normalize_email

T = ImportedSendLog.__table__
C = T.c
CHUNK = 1000
MAX_LABEL = 200

# Which imported rows count as sends (reports.py reads this): a delivered or possibly delivered message.
# An empty status counts because the original SendLog had no status column: a row meant "sent". Anything
# else (failed, bounced, deferred, queued, ...) is imported for reference but is not a send.
DELIVERED_STATUSES: tuple[str, ...] = (
    "sent",
    "delivered",
    "success",
    "succeeded",
    "ok",
    "accepted",
    "unknown",  # possibly delivered, exactly as in the live send_log
    "opened",
    "clicked",
    "replied",
)

# Canonical field -> accepted header spellings, most preferred first, compared after _header_key().
# `lead` falls back to `email`: an address identifies a lead when the export has no lead id.
ALIASES: dict[str, tuple[str, ...]] = {
    "campaign": ("campaignid", "campaign"),
    "lead": ("leadid", "lead", "email"),
    "variant": ("variantletter", "variant"),
    "sent_at": ("sentat", "createdat", "timestamp"),
    "step": ("step",),
    "status": ("status",),
    "host": ("host", "hostname"),
    "pid": ("pid",),
    "instance": ("instance", "instanceid"),
    "email": ("email",),
}
REQUIRED = ("campaign", "lead", "sent_at")

# Lengths the table enforces (PostgreSQL VARCHAR(n)); checked per row so the insert cannot fail.
MAX_LENGTH = {"campaign": 200, "lead": 320, "email": 320, "variant": 16, "status": 32, "host": 255,
              "instance": 200}  # fmt: skip
INT32_MAX = 2**31 - 1
# Before 1970 SQLite's integer division (truncation) and PostgreSQL's floor() would bucket differently.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NUMBER = re.compile(r"\d{9,13}(\.\d+)?")


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str


@dataclass
class ImportResult:
    label: str
    imported: int = 0
    sends: int = 0
    replaced: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    timezone: str = "UTC"

    def as_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "imported": self.imported,
            "sends": self.sends,
            "replaced": self.replaced,
            "rejected": [{"line": r.line, "reason": r.reason} for r in self.rejected],
            "columns": self.columns,
            "ignored_columns": self.ignored_columns,
            "timezone": self.timezone,
        }


def import_sendlog(
    engine: Engine,
    data: bytes,
    *,
    label: str,
    timezone: str = "UTC",
    source: str,
    replace: bool = False,
) -> dict[str, object]:
    """Parse the whole file, then insert every good row under `label` in one transaction.

    Returns ImportResult.as_json(). Raises UsageError (nothing imported) for an unusable file, a bad
    label or timezone, or a label that already exists without `replace`.
    """
    label = _check_label(label)
    zone = _zone(timezone)
    result = ImportResult(label=label, timezone=timezone)
    rows = _parse(data, source, zone, result)
    derive_columns(rows)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two concurrent imports of one label must not both see it absent (READ COMMITTED); SQLite's
            # BEGIN IMMEDIATE already serializes writers.
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"sendlog:{label}"})
        existing = conn.execute(select(func.count()).select_from(T).where(C.label == label)).scalar_one()
        if existing and not replace:
            raise UsageError(
                f"an imported send log labelled {label!r} already exists ({existing} rows): "
                "pass --replace to replace it, or choose another --label"
            )
        if existing:
            result.replaced = conn.execute(delete(T).where(C.label == label)).rowcount
        for start in range(0, len(rows), CHUNK):
            conn.execute(insert(T), rows[start : start + CHUNK])
        if rows:
            # Fresh statistics now, not whenever autovacuum gets to it (SQLite never does): with stale
            # or no statistics the planners take a large import for a handful of rows and pick poor
            # plans for the reports' joins on it (a 100,000-row log's Duplicates page on SQLite: 3.3 s
            # without, 2.1 s with). ANALYZE is allowed inside a transaction on both; VACUUM is not.
            conn.execute(text("ANALYZE imported_send_log"))
    result.imported = len(rows)
    result.sends = sum(1 for r in rows if r["is_send"])
    return result.as_json()


def derive_columns(rows: list[dict[str, object]]) -> None:
    """Fill, in place, the columns computed once per import (models.ImportedSendLog, migration 0004) for
    `rows`, the whole of one label: `address`, `is_send` and the three candidate flags. The flags span
    every row of the label whatever its status or time, so they mark a superset of the rows any duplicate
    report over the label can need (reports.py reads only flagged rows), and each is constant over the
    report's partition (a key, an address). Rows must hold label, campaign, lead, email (normalized or
    None), step and status (lower-cased or None), as _row() builds them."""
    keys: Counter[tuple[object, ...]] = Counter()
    leads: dict[tuple[object, object], set[object]] = defaultdict(set)
    campaigns: dict[tuple[object, object], set[object]] = defaultdict(set)
    for r in rows:
        r["address"] = r["email"] if r["email"] is not None else r["lead"]
        r["is_send"] = r["status"] is None or r["status"] in DELIVERED_STATUSES
        keys[(r["label"], r["campaign"], r["lead"], r["step"])] += 1
        address = (r["label"], r["address"])
        leads[address].add(r["lead"])
        campaigns[address].add(r["campaign"])
    for r in rows:
        address = (r["label"], r["address"])
        r["key_repeats"] = keys[(r["label"], r["campaign"], r["lead"], r["step"])] > 1
        r["address_shared"] = len(leads[address]) > 1
        r["address_multi_campaign"] = len(campaigns[address]) > 1


# --- whole file ----------------------------------------------------------------------------------


def _check_label(label: str) -> str:
    label = (label or "").strip()
    if not label:
        raise UsageError("--label must not be empty")
    if len(label) > MAX_LABEL or "\x00" in label:
        raise UsageError(f"--label must be at most {MAX_LABEL} characters, without NUL")
    return label


def _zone(name: str) -> tzinfo:
    if name.strip().upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown --timezone {name!r}: use an IANA name such as Europe/Warsaw") from None


def _header_key(name: str) -> str:
    # campaignId, campaign_id, CAMPAIGN-ID and "Campaign Id" all mean the same column.
    return re.sub(r"[\s_\-]", "", name).lower()


def _map_columns(header: list[str], line: int, source: str, result: ImportResult) -> dict[str, int]:
    """Canonical field -> column index; raises UsageError when a required field is missing or ambiguous."""
    by_key: dict[str, int] = {}
    for index, name in enumerate(header):
        key = _header_key(name)
        if key in by_key:
            earlier = header[by_key[key]].strip()
            raise UsageError(
                f"{source} line {line}: two columns {earlier!r} and {name.strip()!r} name the same field"
            )
        by_key[key] = index
    mapping: dict[str, int] = {}
    for canonical, spellings in ALIASES.items():
        found = [by_key[s] for s in spellings if s in by_key]
        if not found:
            continue
        # campaignId next to campaign, or sentAt next to createdAt: the more specific one wins, by the
        # order of ALIASES; `columns` in the result shows which one was used.
        mapping[canonical] = found[0]
    missing = [f for f in REQUIRED if f not in mapping]
    if missing:
        shown = ", ".join(repr(h.strip()) for h in header[:12])
        wanted = {
            "campaign": "campaign (campaignId, campaign_id, campaign)",
            "lead": "lead (leadId, lead_id, lead, email)",
            "sent_at": "time (sentAt, createdAt, sent_at, created_at, timestamp)",
        }
        need = "; ".join(wanted[f] for f in missing)
        raise UsageError(f"{source} line {line}: no column for {need} in the header (found: {shown})")
    if mapping.get("email") == mapping["lead"]:
        del mapping["email"]  # the lead *is* the address: stored in both columns by _row()
    used = set(mapping.values())
    result.columns = {f: header[i].strip() for f, i in mapping.items()}
    result.ignored_columns = [h.strip() for i, h in enumerate(header) if i not in used]
    return mapping


def _parse(data: bytes, source: str, zone: tzinfo, result: ImportResult) -> list[dict[str, object]]:
    text_ = decode_csv_text(data, source)
    if not text_.strip():
        raise UsageError(f"{source} is empty: expected a header row with campaign, lead and time columns")
    records = _records(text_)
    first = next(((n, v, err) for n, v, err in records if err or not _blank(v)), None)
    if first is None:
        raise UsageError(f"{source} is empty: expected a header row with campaign, lead and time columns")
    header_line, header, header_error = first
    if header_error is not None:
        raise UsageError(f"{source} line {header_line}: cannot read the header row: {header_error}")
    mapping = _map_columns(header, header_line, source, result)
    lead_is_email = _header_key(result.columns["lead"]) == "email"
    rows: list[dict[str, object]] = []
    for line, values, error in records:
        if line <= header_line:
            continue
        if error is None and _blank(values):
            continue
        if error is None and len(values) != len(header):
            error = f"expected {len(header)} columns, got {len(values)}"
        if error is None:
            try:
                rows.append(_row(values, mapping, zone, result.label, lead_is_email))
                continue
            except ValueError as exc:
                error = str(exc)
        result.rejected.append(Rejection(line, error))
    return rows


# A record as read: (physical line where it starts, values, error reason or None).
_Record = tuple[int, list[str], str | None]


def _records(text_: str) -> list[_Record]:
    lines = LineCounter(text_)
    # strict: an unterminated quote is an error for that record, not the rest of the file swallowed.
    reader = csv.reader(lines, strict=True)
    out: list[_Record] = []
    while True:
        start = lines.consumed + 1
        try:
            values = next(reader)
        except StopIteration:
            return out
        except csv.Error as exc:
            out.append((start, [], f"malformed CSV: {' '.join(str(exc).split())}"))
            continue
        out.append((start, values, None))


def _blank(values: list[str]) -> bool:
    return not values or (len(values) == 1 and not values[0].strip())


# --- one row ------------------------------------------------------------------------------------


def _row(
    values: list[str], mapping: dict[str, int], zone: tzinfo, label: str, lead_is_email: bool
) -> dict[str, object]:
    """One validated insert row; ValueError(reason) rejects the line."""

    def get(name: str) -> str | None:
        index = mapping.get(name)
        if index is None:
            return None
        value = values[index].strip()
        if "\x00" in value:
            raise ValueError(f"NUL character in {name}")  # PostgreSQL text cannot hold it
        if name in MAX_LENGTH and len(value) > MAX_LENGTH[name]:
            raise ValueError(f"{name} longer than {MAX_LENGTH[name]} characters")
        return value or None

    campaign = get("campaign")
    if campaign is None:
        raise ValueError("missing campaign")
    lead = get("lead")
    if lead is None:
        raise ValueError("missing lead" + (" email" if lead_is_email else " id"))
    raw_time = get("sent_at")
    if raw_time is None:
        raise ValueError("missing time")
    email = normalize_email(lead) if lead_is_email else get("email")
    if lead_is_email:
        lead = email
    elif email is not None:
        email = normalize_email(email)
    status = get("status")
    return {
        "label": label,
        "campaign": campaign,
        "lead": lead,
        "email": email,
        "variant": get("variant"),
        "step": _int(get("step"), "step", default=0),
        "status": status.lower() if status else None,
        "sent_at": parse_time(raw_time, zone),
        "host": get("host"),
        "pid": _int(get("pid"), "pid", default=None),
        "instance": get("instance"),
    }


def _int(value: str | None, name: str, default: int | None) -> int | None:
    if value is None:
        return default
    if not re.fullmatch(r"\d{1,10}", value) or int(value) > INT32_MAX:
        raise ValueError(f"{name} {value[:40]!r} is not a whole number from 0 to {INT32_MAX}")
    return int(value)


def parse_time(raw: str, zone: tzinfo) -> datetime:
    """A send time as aware UTC. Accepts `2024-03-12 11:40:03.123`, ISO 8601 with `T`/`Z`/an offset,
    and Unix epoch seconds or milliseconds. A time without a zone is read in `zone`; in a DST fall-back
    hour the earlier of the two instants is taken (fold=0). Raises ValueError with a readable reason."""
    value = raw.strip()
    shown = value[:40]
    try:
        if _EPOCH_NUMBER.fullmatch(value):
            number = float(value)
            # 10 digits are seconds until 2286; 13 digits are milliseconds (JavaScript's Date.now()).
            parsed = datetime.fromtimestamp(number / 1000 if len(value.split(".")[0]) > 11 else number, UTC)
        else:
            if ":" not in value:
                raise ValueError  # a date alone is not a send time
            parsed = datetime.fromisoformat(value.removesuffix(" UTC"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=zone)
            parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"unreadable time {shown!r}: expected e.g. 2024-03-12 11:40:03.123 or 2024-03-12T11:40:03Z"
        ) from None
    if parsed < EARLIEST:
        raise ValueError(f"time {shown!r} is before 1970")
    return parsed
