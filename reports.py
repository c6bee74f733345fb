"""SQL aggregations shared by the dashboard pages and `sendguard report` (DESIGN.md, "Reports").

Every aggregation runs in the database, on SQLite and PostgreSQL alike; Python only ever receives
buckets, per-campaign rows, top-N or drill-down rows under a LIMIT, never the send log itself, so the
dashboard stays fast at a million send_log rows.

Sources. A report reads either the live `send_log` (`LIVE`) or another system's log imported under a
label (`Source.imported(label)`). Both are reduced to the same `sends` CTE, one row per send:

- live: a send_log row whose status is `sent` or `unknown` (delivered or possibly delivered), timed by
  `created_at` (the attempt start, indexed; transmission follows within the same claim), attributed to
  its `instance_id`, host and pid;
- imported: an imported_send_log row whose status is empty/NULL (the original SendLog had no status:
  a row meant "sent") or one of sendlog_import.DELIVERED_STATUSES (sent, delivered, success, ...,
  unknown; stored per row as `is_send` at import), timed by `sent_at`, attributed to `instance`, else
  `host:pid`, else `host` (none: 0 instances, i.e. not recorded).

Definitions (CLI.md, "report duplicates"): key = (campaign, lead, step); a send's copy number is its
rank among its key's sends ordered by time, then id; a duplicate send is every copy after the first.
Per-send kinds: `exact` = same variant as the key's first send, `cross_variant` = another variant, so
exact + cross_variant = duplicate_sends. Per-key kinds: an affected key is classified by its second
copy (its first duplicate), so exact + cross_variant = affected_leads as well. `address` = one
normalized address reached through several lead records within one campaign+step: sends through any
lead record other than the group's first one; `cross_campaign` = one address sent by several
campaigns: sends from any campaign other than the first to reach it; for both, affected_leads counts
the groups concerned; an imported row's address is its normalized email, else its lead id (stored
at import as `address`). `prevented` = campaign_event rows of kind `duplicate_prevented` (live only).
Times are UTC; buckets are aligned to the Unix epoch in SQL and returned as epoch seconds or aware
datetimes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, Float, Integer, String, TextClause, bindparam, text
from sqlmodel.sql.sqltypes import UTCDateTime

from sender.errors import UsageError

_TS = UTCDateTime()

# Every function takes an Engine, or a Connection to share one pool checkout (and its pre-ping) between
# the several reads of one page load.
Bind = Engine | Connection

MAX_BUCKETS = 10_000  # rows any bucketed report may return before asking for a larger bucket
MAX_DETAIL_ROWS = 10_000  # ceiling on duplicate_details(limit=...)
MAX_BUCKET_SECONDS = 366 * 86_400

Kind = Literal["exact", "cross_variant", "any", "address", "cross_campaign", "prevented"]
KINDS: tuple[str, ...] = ("exact", "cross_variant", "address", "cross_campaign", "prevented")
OUTCOMES: tuple[str, ...] = ("sent", "failed", "deferred", "unknown")


class TooManyBuckets(UsageError):
    """The requested bucket size over this time range would return too many rows: pick a larger one."""


@dataclass(frozen=True)
class Source:
    """Where the sends come from: the live send_log (label None) or an imported log by its label."""

    label: str | None = None

    @classmethod
    def imported(cls, label: str) -> Source:
        return cls(label=label)

    @property
    def live(self) -> bool:
        return self.label is None

    def describe(self) -> str:
        return "send_log (live)" if self.live else f"imported send log {self.label!r}"


LIVE = Source()


@contextmanager
def reading(bind: Bind) -> Iterator[Connection]:
    """A connection for report queries: the given one, else a new one from the engine, on PostgreSQL in
    autocommit: the reports only read, one statement per call (READ COMMITTED gives each statement its
    own snapshot in a transaction too), so a BEGIN and a ROLLBACK would be two round trips for nothing."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


# --- SQL building blocks -------------------------------------------------------------------------
# Statements are templates whose {placeholders} are filled only with the constant fragments below,
# chosen by dialect and source; every value from a caller travels as a bound parameter.
#
# Speed: a window over every send costs a full sort (seconds at a million rows), so each duplicate
# statement first narrows to *candidates* with a cheap GROUP BY (for the live log's keys, one answered
# from an index alone) and runs its window only over the candidates' sends: usually few, at worst (every
# lead in several campaigns) the overlapping part of the log.


def _sqlite_version(engine: Bind) -> tuple[int, ...]:
    return tuple(getattr(engine.dialect.dbapi, "sqlite_version_info", (0,)))


def _bucket(engine: Bind, column: str) -> str:
    """Epoch seconds of the start of the :b-second bucket holding `column`, aligned to the Unix epoch."""
    if engine.dialect.name == "sqlite":
        # SQLAlchemy stores 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC. SQLite's date functions round the
        # fraction to milliseconds (23:59:59.9996 would become the next second, and maybe the next
        # bucket), so only the first 19 characters, the whole seconds, are read: the floor, as on
        # PostgreSQL. Integer division floors too, since imports refuse times before 1970.
        # unixepoch() (SQLite 3.38+) equals strftime('%s') at about half the cost.
        epoch = (
            "unixepoch({c})" if _sqlite_version(engine) >= (3, 38) else "CAST(strftime('%s', {c}) AS INTEGER)"
        )
        return f"({epoch.format(c=f'substr({column}, 1, 19)')} / :b) * :b"
    return f"CAST(floor(extract(epoch FROM {column}) / :b) * :b AS BIGINT)"


def _inline(engine: Bind) -> str:
    # A CTE referenced twice is materialized by default on both backends (a copy of every send); NOT
    # MATERIALIZED (PostgreSQL 12+, SQLite 3.35+) lets each reference use its own plan and indexes.
    if engine.dialect.name == "sqlite" and _sqlite_version(engine) < (3, 35):
        return ""
    return "NOT MATERIALIZED"


# Addresses. Live lead emails are stored normalized and unique, so an address is normally one lead
# record; `canon` maps the rare records that share one (written raw by another tool) to the lowest id
# among them, and an address key is that id or the lead's own. Finding them needs no grouping of the
# lead table: emails are unique strings, so of the records sharing an address at most one is stored
# normalized and every other one is `odd` (stored not normalized); the members of a shared address are
# its odd records plus the record stored exactly as the address (a unique-index probe).
# Integer keys let every statement group and join on addresses without reading the lead table per
# send; in `sends`, the IN list is built once, so the per-send cost is one probe, and the correlated
# lookup runs only for the rare shared records.
_LIVE_CANON = """odd AS (
    SELECT id, lower(trim(email)) AS address FROM lead WHERE email <> lower(trim(email))
),
members AS (
    SELECT id, address FROM odd
    UNION ALL
    SELECT id, email FROM lead WHERE email IN (SELECT address FROM odd)
),
canon AS (
    SELECT m.id AS lead_id, g.canon_id
    FROM members AS m
    JOIN (
        SELECT address, min(id) AS canon_id FROM members GROUP BY address HAVING count(*) > 1
    ) AS g ON g.address = m.address
),
"""

# One row per send. Names and addresses are scalar subqueries on primary keys rather than joins: both
# planners drop an unused select-list expression of an inlined CTE, but SQLite keeps an unused join, so
# a statement that never reads them (the bucket totals) never pays a lookup per send.
_LIVE_SENDS = """sends AS {inline} (
    SELECT sl.id, sl.campaign_id AS campaign_key,
           (SELECT c.name FROM campaign AS c WHERE c.id = sl.campaign_id) AS campaign,
           sl.lead_id AS lead_key,
           (SELECT l.email FROM lead AS l WHERE l.id = sl.lead_id) AS lead,
           (SELECT lower(trim(l.email)) FROM lead AS l WHERE l.id = sl.lead_id) AS address,
           CASE WHEN sl.lead_id IN (SELECT lead_id FROM canon)
                THEN (SELECT cn.canon_id FROM canon AS cn WHERE cn.lead_id = sl.lead_id)
                ELSE sl.lead_id END AS address_key,
           sl.step, sl.variant_letter AS variant, sl.created_at AS ts, {bucket} AS bucket,
           sl.instance_id AS instance, sl.host, sl.pid
    FROM send_log AS sl {time_index}
    WHERE sl.status IN ('sent', 'unknown') {campaign_filter} {time_filter}
)"""
_LIVE_CAMPAIGN = "AND sl.campaign_id = (SELECT id FROM campaign WHERE name = :campaign)"

# `address`, `is_send` and the three candidate flags were computed once at import (models.ImportedSendLog,
# migration 0004): an imported log never changes afterwards.
_IMPORTED_SENDS = """sends AS {inline} (
    SELECT i.id, i.campaign AS campaign_key, i.campaign, i.lead AS lead_key, i.lead,
           i.address, i.address AS address_key,
           i.step, i.variant, i.sent_at AS ts, {bucket} AS bucket,
           coalesce(i.instance, i.host || ':' || CAST(i.pid AS VARCHAR(20)), i.host) AS instance,
           i.host, i.pid, i.key_repeats, i.address_shared, i.address_multi_campaign
    FROM imported_send_log AS i
    WHERE i.label = :label AND i.is_send {campaign_filter} {time_filter}
)"""
_IMPORTED_CAMPAIGN = "AND i.campaign = :campaign"

# Candidate keys: (campaign, lead, step) with more than one row in a superset of the sends. Live: the
# partial unique index's own predicate (sent and unknown are among its states), so both planners answer
# from uq_send_log_live alone, and the index guarantees the answer is empty unless it was tampered with.
_LIVE_DUP_KEYS = """dup_keys AS {materialized} (
    SELECT campaign_id AS campaign_key, lead_id AS lead_key, step
    FROM send_log AS sl {time_index}
    WHERE status IN ('reserved', 'transmitting', 'sent', 'unknown') {campaign_filter} {time_filter}
    GROUP BY campaign_id, lead_id, step
    HAVING count(*) > 1
)"""

# Lead records that share their address with another record: the only source of address duplicates.
_LIVE_SHARED_LEADS = "shared_leads AS (SELECT lead_id AS lead_key FROM canon)"


# Lead records an address sent by several campaigns can come from: records sent by more than one
# campaign, plus records sharing their address with another record (needs shared_leads). A cheap GROUP
# BY on the lead key, so the cross-campaign window sorts only the overlapping part of the log.
_LIVE_MULTI_LEADS = """multi_leads AS (
    SELECT lead_id AS lead_key FROM send_log AS sl {time_index}
    WHERE status IN ('sent', 'unknown') {time_filter}
    GROUP BY lead_id
    HAVING min(campaign_id) <> max(campaign_id)
    UNION
    SELECT lead_key FROM shared_leads
)"""


@dataclass(frozen=True)
class Span:
    """A time range [since, until) of send times; None on either side is open. A duplicate report over a
    span considers only the sends in it: a copy, the first variant, the first lead record or campaign to
    reach an address are decided among them (all time = the whole log)."""

    since: datetime | None = None
    until: datetime | None = None

    def filter(self, column: str) -> str:
        return _time_filter(column, self.since, self.until)

    def binds(self) -> list:
        return _time_binds(self.since, self.until)

    def params(self) -> dict[str, datetime]:
        return {k: _utc(v) for k, v in (("since", self.since), ("until", self.until)) if v}


ALL_TIME = Span()


def _fragments(engine: Bind, source: Source, campaign: str | None, span: Span = ALL_TIME) -> dict[str, str]:
    """The constant SQL pieces of one (dialect, source, campaign filter, span): `prelude` (CTEs the others
    need, ending in a comma, or empty), `sends` (filtered by campaign), `sends_all` (never filtered by
    campaign), the candidates of each window (`key_ctes` + `key_candidates`: the sends of keys that may
    repeat; `address_ctes` + `address_candidates`: of addresses that may have several lead records;
    `cross_ctes` + `cross_candidates`: of addresses that may have several campaigns; each *_ctes is empty
    or CTEs ending in a comma) and `campaign_key` (a condition naming the filtered campaign, or TRUE).
    Every read of a send log is limited to the span, so a report over a recent span costs a range scan
    of ix_send_log_time / ix_imported_label_time, whatever the log's size."""
    inline = _inline(engine)
    # Small candidate sets are computed once: PostgreSQL's parallel workers would otherwise each
    # rebuild an inlined one for their hash join.
    materialized = "MATERIALIZED" if inline else ""
    if source.live:
        cf = _LIVE_CAMPAIGN if campaign else ""
        bucket = _bucket(engine, "sl.created_at")
        tf = span.filter("sl.created_at")
        # SQLite's planner prefers an index that yields the GROUP BY order (the whole of
        # uq_send_log_live or ix_send_log_lead, a million entries, each checked against the range)
        # over the range itself (~35,000 rows a day at a million sends a month): 3-4 s instead of
        # 0.1 s, with or without ANALYZE. A recent range is what the pages ask for, so name the index.
        ti = "INDEXED BY ix_send_log_time" if engine.dialect.name == "sqlite" and span.since else ""
        fill = {"campaign_filter": cf, "time_filter": tf, "time_index": ti}
        shared_leads = _LIVE_SHARED_LEADS + ",\n"
        return {
            "prelude": _LIVE_CANON,
            "sends": _LIVE_SENDS.format(inline=inline, bucket=bucket, **fill),
            "sends_all": _LIVE_SENDS.format(inline=inline, bucket=bucket, **(fill | {"campaign_filter": ""})),
            "key_ctes": _LIVE_DUP_KEYS.format(materialized=materialized, **fill) + ",\n",
            "key_candidates": "JOIN dup_keys AS k "
            "ON k.campaign_key = s.campaign_key AND k.lead_key = s.lead_key AND k.step = s.step",
            "address_ctes": shared_leads,
            "address_candidates": "s.lead_key IN (SELECT lead_key FROM shared_leads)",
            "cross_ctes": shared_leads + _LIVE_MULTI_LEADS.format(time_filter=tf, time_index=ti) + ",\n",
            "cross_candidates": "lead_key IN (SELECT lead_key FROM multi_leads)",
            "campaign_key": (
                "campaign_key = (SELECT id FROM campaign WHERE name = :campaign)" if campaign else "1 = 1"
            ),
        }
    # Imported: the candidate flags were computed at import over the whole label, every status and
    # time (models.ImportedSendLog), so they mark a superset of the candidates of any span or campaign;
    # each is constant over its window's partition (a key; an address), so every partition a window
    # sees is complete. Each bare flag is its partial index's predicate: the windows read only the
    # flagged rows, through ix_imported_repeats / ix_imported_shared / ix_imported_multi_campaign.
    cf = _IMPORTED_CAMPAIGN if campaign else ""
    bucket = _bucket(engine, "i.sent_at")
    tf = span.filter("i.sent_at")
    return {
        "prelude": "",
        "sends": _IMPORTED_SENDS.format(inline=inline, bucket=bucket, campaign_filter=cf, time_filter=tf),
        "sends_all": _IMPORTED_SENDS.format(inline=inline, bucket=bucket, campaign_filter="", time_filter=tf),
        "key_ctes": "",
        "key_candidates": "WHERE s.key_repeats",
        "address_ctes": "",
        "address_candidates": "s.address_shared",
        "cross_ctes": "",
        "cross_candidates": "address_multi_campaign",
        "campaign_key": "campaign_key = :campaign" if campaign else "1 = 1",
    }


def _params(
    source: Source, campaign: str | None, bucket_seconds: int = 600, span: Span = ALL_TIME, **extra: object
) -> dict:
    return {"label": source.label, "campaign": campaign, "b": int(bucket_seconds), **span.params(), **extra}


def _statement(sql: str, span: Span) -> TextClause:
    """text() with the span's bounds typed, so SQLite compares them in the stored UTC format."""
    return text(sql).bindparams(*span.binds())


def _frame(rows: Sequence[Any], columns: list[str], dtype: str | None = None) -> pd.DataFrame:
    """A DataFrame of result rows. Plain tuples: given SQLAlchemy Row objects, pandas probes each row for
    attributes (hasattr -> Row's key lookup -> a raised and caught KeyError per row), ~20 ms per 1,000
    rows, which made small reports twice as slow as their SQL. With a numeric dtype, through one numpy
    array: pandas converts a list of tuples column by column through object arrays (~9 ms for the
    3,000 x 8 integers of a 10-minute bucket report over 20 days, against ~1 ms)."""
    if dtype is not None and rows:
        return pd.DataFrame(np.array([tuple(r) for r in rows], dtype=dtype), columns=columns)
    return pd.DataFrame([tuple(r) for r in rows], columns=columns, dtype=dtype)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _epoch_datetimes(epochs: Any) -> pd.DatetimeIndex:
    """Epoch seconds -> aware UTC datetimes: what pd.to_datetime(..., unit="s", utc=True) returns
    (datetime64[us, UTC]) at a quarter of its cost."""
    micros = (np.asarray(epochs, dtype="int64") * 1_000_000).astype("datetime64[us]")
    return pd.DatetimeIndex(micros).tz_localize("UTC")


def _bucket_frame(rows: Sequence[Any], columns: list[str]) -> pd.DataFrame:
    """_frame with the `bucket` column (epoch seconds) as aware UTC datetimes, built column by column:
    converting the column of a built frame (to_datetime, then a column assignment) cost more than the
    frame itself, which counted against the sub-50 ms Timeline loads."""
    if not rows:
        df = _frame(rows, columns)
        df["bucket"] = _epoch_datetimes(df["bucket"].to_numpy(dtype="int64"))
        return df
    data: dict[str, Any] = {}
    for name, values in zip(columns, zip(*rows, strict=True), strict=True):
        data[name] = _epoch_datetimes(values) if name == "bucket" else list(values)
    return pd.DataFrame(data)


def iso_epoch(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(int(epoch), UTC).isoformat()


def _iso_epochs(epochs: pd.Series) -> list[str]:
    """iso_epoch of each epoch second (1970 to 9999), in C: a Python datetime per bucket cost ~10 ms
    per 1,000 buckets."""
    whole = np.datetime_as_string(epochs.to_numpy(dtype="int64").astype("datetime64[s]"), unit="s")
    return [f"{t}+00:00" for t in whole.tolist()]


def _check_bucket_rows(n_rows: int, limit: int, bucket_seconds: int) -> None:
    if n_rows > limit:
        raise TooManyBuckets(
            f"more than {limit} rows of {format_bucket(bucket_seconds)} buckets: "
            "choose a larger bucket (or a shorter time range)"
        )


# --- bucket sizes --------------------------------------------------------------------------------

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_bucket(value: str) -> int:
    """`30s`, `10m`, `1h`, `1d` (or plain seconds) -> seconds; UsageError (exit 2) otherwise."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", value or "", flags=re.IGNORECASE)
    if not match:
        raise UsageError(f"--bucket {value!r}: expected a size such as 30s, 10m, 1h or 1d")
    seconds = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if not 1 <= seconds <= MAX_BUCKET_SECONDS:
        raise UsageError(f"--bucket {value!r}: must be between 1s and 366d")
    return seconds


def parse_time(value: str, now: datetime, option: str = "--since") -> datetime:
    """An ISO-8601 time (no zone = UTC) or an age such as `24h` / `7d` (that long before `now`) -> an
    aware UTC datetime; UsageError (exit 2) otherwise."""
    text_value = (value or "").strip()
    if re.fullmatch(r"\d{1,9}\s*[smhd]", text_value, flags=re.IGNORECASE):
        return _utc(now) - timedelta(seconds=parse_bucket(text_value))
    try:
        return _utc(datetime.fromisoformat(text_value))
    except ValueError:
        raise UsageError(
            f"{option} {value!r}: expected an ISO-8601 time (2026-11-29T08:00, UTC unless it has an offset) "
            "or an age such as 24h or 7d"
        ) from None


def format_bucket(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- sources -------------------------------------------------------------------------------------

# Index-only on ix_imported_label_time: the picker for the dashboard's source selector.
_LABELS = text("""
SELECT label, count(*) AS rows, min(sent_at) AS first_at, max(sent_at) AS last_at
FROM imported_send_log GROUP BY label ORDER BY label
""").columns(label=String, rows=Integer, first_at=_TS, last_at=_TS)


def imported_labels(engine: Bind) -> pd.DataFrame:
    """One row per imported log: label, rows, first_at, last_at."""
    with reading(engine) as conn:
        rows = conn.execute(_LABELS).all()
    return _frame(rows, columns=["label", "rows", "first_at", "last_at"])


# EXISTS stops at the first matching row: the check costs one index probe however large the log.
_CHECK_IMPORTED = text("""
SELECT
    EXISTS (SELECT 1 FROM imported_send_log WHERE label = :label) AS has_label,
    EXISTS (SELECT 1 FROM imported_send_log WHERE label = :label AND campaign = :campaign) AS has_campaign
""")
_CHECK_LIVE = text("SELECT count(*) FROM campaign WHERE name = :campaign")


def check_source(engine: Bind, source: Source, campaign: str | None = None) -> None:
    """UsageError when the label or campaign does not exist, so a typo never reads as "no duplicates"."""
    with reading(engine) as conn:
        if source.live:
            if campaign is not None and not conn.execute(_CHECK_LIVE, {"campaign": campaign}).scalar_one():
                raise UsageError(f"no campaign named {campaign!r} (see `sendguard campaign list`)")
            return
        has_label, has_campaign = conn.execute(
            _CHECK_IMPORTED, {"label": source.label, "campaign": campaign or ""}
        ).one()
    if not has_label:
        raise UsageError(
            f"no imported send log labelled {source.label!r} "
            f"(import one with `sendguard sendlog import FILE.csv --label {source.label}`)"
        )
    if campaign is not None and not has_campaign:
        raise UsageError(f"imported send log {source.label!r} has no campaign {campaign!r}")


# --- duplicates ----------------------------------------------------------------------------------

# Correct because ROW_NUMBER over (campaign, lead, step) ordered by (time, id) numbers each key's sends
# 1, 2, ... once: copy > 1 is a duplicate send, copy = 2 marks one send per affected key, and FIRST_VALUE
# over the same window is the variant of the key's first send. Only keys sent more than once can hold
# copies > 1, so the window runs over dup_keys' sends alone; `totals` counts every send once.
_DUPLICATE_BUCKETS = """
WITH {prelude}{sends},
{key_ctes}ranked AS (
    SELECT s.bucket, s.variant,
           ROW_NUMBER() OVER w AS copy,
           FIRST_VALUE(s.variant) OVER w AS first_variant
    FROM sends AS s
    {key_candidates}
    WINDOW w AS (PARTITION BY s.campaign_key, s.lead_key, s.step ORDER BY s.ts, s.id)
),
classified AS (
    SELECT bucket, copy,
           CASE WHEN coalesce(variant, '') = coalesce(first_variant, '') THEN 1 ELSE 0 END AS same_variant
    FROM ranked
    WHERE copy > 1
),
dups AS (
    SELECT bucket,
           count(*) AS duplicate_sends,
           sum(same_variant) AS exact_sends,
           sum(1 - same_variant) AS cross_variant_sends,
           sum(CASE WHEN copy = 2 THEN same_variant ELSE 0 END) AS exact_keys,
           sum(CASE WHEN copy = 2 THEN 1 - same_variant ELSE 0 END) AS cross_variant_keys
    FROM classified
    GROUP BY bucket
),
totals AS (
    SELECT bucket, count(*) AS sends, count(DISTINCT instance) AS instances
    FROM sends
    GROUP BY bucket
)
SELECT t.bucket, t.sends,
       coalesce(d.duplicate_sends, 0) AS duplicate_sends,
       coalesce(d.exact_sends, 0) AS exact_sends,
       coalesce(d.cross_variant_sends, 0) AS cross_variant_sends,
       coalesce(d.exact_keys, 0) AS exact_keys,
       coalesce(d.cross_variant_keys, 0) AS cross_variant_keys,
       t.instances
FROM totals AS t
LEFT JOIN dups AS d ON d.bucket = t.bucket
ORDER BY t.bucket
LIMIT :max_rows
"""
BUCKET_COLUMNS = ["bucket", "sends", "duplicate_sends", "exact_sends", "cross_variant_sends", "exact_keys",
                  "cross_variant_keys", "instances"]  # fmt: skip


def duplicate_buckets(
    engine: Bind,
    source: Source = LIVE,
    campaign: str | None = None,
    bucket_seconds: int = 600,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    max_buckets: int = MAX_BUCKETS,
) -> pd.DataFrame:
    """One row per non-empty bucket: bucket (epoch seconds, int), sends, duplicate_sends, exact_sends,
    cross_variant_sends, exact_keys, cross_variant_keys (affected keys whose first duplicate falls in
    the bucket), instances (distinct sender instances that sent in the bucket). Raises TooManyBuckets
    beyond `max_buckets` rows."""
    span = Span(since, until)
    sql = _DUPLICATE_BUCKETS.format(**_fragments(engine, source, campaign, span))
    stmt = _statement(sql, span).columns(**dict.fromkeys(BUCKET_COLUMNS, Integer))
    params = _params(source, campaign, bucket_seconds, span, max_rows=max_buckets + 1)
    with reading(engine) as conn:
        rows = conn.execute(stmt, params).all()
    _check_bucket_rows(len(rows), max_buckets, bucket_seconds)
    return _frame(rows, columns=BUCKET_COLUMNS, dtype="int64")


# Correct because FIRST_VALUE(lead_key) over (campaign, step, address) ordered by (time, id) is the lead
# record that reached the address first; every send through another record is an address duplicate.
# Only records sharing their address with another record (shared_leads) can produce one.
_ADDRESS = """
WITH {prelude}{sends},
{address_ctes}ranked AS (
    SELECT s.campaign_key, s.step, s.address_key, s.lead_key,
           FIRST_VALUE(s.lead_key) OVER (
               PARTITION BY s.address_key, s.campaign_key, s.step ORDER BY s.ts, s.id
           ) AS first_lead
    FROM sends AS s
    WHERE {address_candidates}
),
groups AS (
    SELECT sum(CASE WHEN lead_key <> first_lead THEN 1 ELSE 0 END) AS extra
    FROM ranked
    GROUP BY campaign_key, step, address_key
)
SELECT coalesce(sum(extra), 0), coalesce(sum(CASE WHEN extra > 0 THEN 1 ELSE 0 END), 0) FROM groups
"""

# Correct because FIRST_VALUE(campaign_key) over the address ordered by (time, id) is the first campaign
# to reach it, and every send from another campaign is cross-campaign; only multi_leads' sends can be.
# With a campaign filter only that campaign's sends count (the outer WHERE runs after the window, which
# still sees every campaign).
_CROSS_CAMPAIGN = """
WITH {prelude}{sends_all},
{cross_ctes}ranked AS (
    SELECT address_key, campaign_key,
           FIRST_VALUE(campaign_key) OVER (PARTITION BY address_key ORDER BY ts, id) AS first_campaign
    FROM sends
    WHERE {cross_candidates}
)
SELECT coalesce(sum(CASE WHEN campaign_key <> first_campaign THEN 1 ELSE 0 END), 0),
       count(DISTINCT CASE WHEN campaign_key <> first_campaign THEN address_key END)
FROM ranked
WHERE {campaign_key}
"""

# Each guard firing is one prevented duplicate; affected = distinct (campaign, lead) it fired for.
_PREVENTED = """
SELECT coalesce(sum(n), 0), count(*)
FROM (
    SELECT e.campaign_id, e.lead_id, count(*) AS n
    FROM campaign_event AS e
    WHERE e.kind = 'duplicate_prevented' {campaign_filter} {time_filter}
    GROUP BY e.campaign_id, e.lead_id
) AS g
"""


def _two_counts(engine: Bind, sql: str, params: dict, span: Span = ALL_TIME) -> dict[str, int]:
    with reading(engine) as conn:
        sends, affected = conn.execute(_statement(sql, span), params).one()
    return {"duplicate_sends": int(sends), "affected_leads": int(affected)}


def _kind_counts(
    engine: Bind, template: str, source: Source, campaign: str | None, span: Span
) -> dict[str, int]:
    sql = template.format(**_fragments(engine, source, campaign, span))
    return _two_counts(engine, sql, _params(source, campaign, span=span), span)


def address_duplicates(
    engine: Bind,
    source: Source = LIVE,
    campaign: str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, int]:
    """{"duplicate_sends", "affected_leads"} for one address reached via several lead records."""
    return _kind_counts(engine, _ADDRESS, source, campaign, Span(since, until))


def cross_campaign_duplicates(
    engine: Bind,
    source: Source = LIVE,
    campaign: str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, int]:
    """{"duplicate_sends", "affected_leads"} for addresses sent by more than one campaign."""
    return _kind_counts(engine, _CROSS_CAMPAIGN, source, campaign, Span(since, until))


def prevented_duplicates(
    engine: Bind,
    source: Source = LIVE,
    campaign: str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, int]:
    """{"duplicate_sends", "affected_leads"} for guard firings; always zero for an imported log."""
    if not source.live:
        return {"duplicate_sends": 0, "affected_leads": 0}
    span = Span(since, until)
    sql = _PREVENTED.format(
        campaign_filter="AND e.campaign_id = (SELECT id FROM campaign WHERE name = :campaign)"
        if campaign
        else "",
        time_filter=span.filter("e.created_at"),
    )
    return _two_counts(engine, sql, {"campaign": campaign, **span.params()}, span)


def duplicate_summary(
    engine: Bind,
    source: Source = LIVE,
    campaign: str | None = None,
    bucket_seconds: int = 600,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    max_buckets: int = MAX_BUCKETS,
) -> dict[str, object]:
    """CLI.md's `report duplicates --json` shape: totals, onset, by_kind, buckets, over the sends in
    [since, until) (all time by default)."""
    span = {"since": since, "until": until}
    buckets = duplicate_buckets(engine, source, campaign, bucket_seconds, max_buckets=max_buckets, **span)
    # Totals are exact sums of the buckets: every send is in one bucket, copy = 1 marks one send per key
    # and copy = 2 one send per affected key (see _DUPLICATE_BUCKETS).
    total = int(buckets["sends"].sum())
    duplicates = int(buckets["duplicate_sends"].sum())
    exact_keys = int(buckets["exact_keys"].sum())
    cross_keys = int(buckets["cross_variant_keys"].sum())
    with_duplicates = buckets.loc[buckets["duplicate_sends"] > 0, "bucket"]
    return {
        "total_sends": total,
        "unique_keys": total - duplicates,
        "duplicate_sends": duplicates,
        "affected_leads": exact_keys + cross_keys,
        "onset": iso_epoch(int(with_duplicates.min())) if len(with_duplicates) else None,
        "by_kind": {
            "exact": {"duplicate_sends": int(buckets["exact_sends"].sum()), "affected_leads": exact_keys},
            "cross_variant": {
                "duplicate_sends": int(buckets["cross_variant_sends"].sum()),
                "affected_leads": cross_keys,
            },
            "address": address_duplicates(engine, source, campaign, **span),
            "cross_campaign": cross_campaign_duplicates(engine, source, campaign, **span),
            "prevented": prevented_duplicates(engine, source, campaign, **span),
        },
        "buckets": [
            {"start": start, "sends": sends, "duplicate_sends": dups, "instances": instances}
            for start, sends, dups, instances in zip(
                _iso_epochs(buckets["bucket"]),
                buckets["sends"].tolist(),
                buckets["duplicate_sends"].tolist(),
                buckets["instances"].tolist(),
                strict=True,
            )
        ],
    }


# Attribution per sender instance: every send counted once in `totals`; duplicate copies (copy > 1) come
# from the window over the candidate keys only, as in _DUPLICATE_BUCKETS.
_BY_INSTANCE = """
WITH {prelude}{sends},
{key_ctes}ranked AS (
    SELECT s.instance,
           ROW_NUMBER() OVER (PARTITION BY s.campaign_key, s.lead_key, s.step ORDER BY s.ts, s.id) AS copy
    FROM sends AS s
    {key_candidates}
),
dups AS (
    SELECT coalesce(instance, '') AS instance_key, count(*) AS duplicate_sends
    FROM ranked WHERE copy > 1 GROUP BY coalesce(instance, '')
),
totals AS (
    SELECT instance, max(host) AS host, max(pid) AS pid, count(*) AS sends, min(ts) AS first_at,
           max(ts) AS last_at
    FROM sends
    GROUP BY instance
)
SELECT t.instance, t.host, t.pid, t.sends, coalesce(d.duplicate_sends, 0) AS duplicate_sends, t.first_at,
       t.last_at
FROM totals AS t
LEFT JOIN dups AS d ON d.instance_key = coalesce(t.instance, '')
ORDER BY duplicate_sends DESC, t.sends DESC
LIMIT :limit
"""
INSTANCE_COLUMNS = ["instance", "host", "pid", "sends", "duplicate_sends", "first_at", "last_at"]


def duplicates_by_instance(
    engine: Bind,
    source: Source = LIVE,
    campaign: str | None = None,
    limit: int = 100,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Top `limit` sender instances by duplicate sends: instance, host, pid, sends, duplicate_sends,
    first_at, last_at (instance None = not recorded in an imported log)."""
    span = Span(since, until)
    sql = _BY_INSTANCE.format(**_fragments(engine, source, campaign, span))
    stmt = _statement(sql, span).columns(instance=String, host=String, pid=Integer, sends=Integer, duplicate_sends=Integer,
                             first_at=_TS, last_at=_TS)  # fmt: skip
    with reading(engine) as conn:
        rows = conn.execute(
            stmt, _params(source, campaign, span=span, limit=min(limit, MAX_DETAIL_ROWS))
        ).all()
    return _frame(rows, columns=INSTANCE_COLUMNS)


# --- drill-down ----------------------------------------------------------------------------------

DETAIL_COLUMNS = ["kind", "group", "campaign", "lead", "email", "step", "copy", "sent_at", "variant",
                  "instance", "host", "pid", "is_duplicate", "reason"]  # fmt: skip
_DETAIL_TYPES = dict(campaign=String, lead=String, email=String, step=Integer, copy=Integer, sent_at=_TS,
                     variant=String, instance=String, host=String, pid=Integer, is_duplicate=Integer,
                     reason=String)  # fmt: skip

# Every copy of each affected key, keys in order of their first duplicate. A key's class comes from its
# second copy (as in _DUPLICATE_BUCKETS), so these groups are exactly by_kind's affected_leads; the
# second copy's values reach every row of its key through a whole-partition frame (no self-join).
_DETAILS_KEY = """
WITH {prelude}{sends},
{key_ctes}ranked AS (
    SELECT s.*,
           ROW_NUMBER() OVER w AS copy,
           FIRST_VALUE(s.variant) OVER w AS first_variant,
           NTH_VALUE(s.variant, 2) OVER whole AS second_variant,
           NTH_VALUE(s.ts, 2) OVER whole AS first_duplicate_at,
           NTH_VALUE(s.id, 2) OVER whole AS first_duplicate_id
    FROM sends AS s
    {key_candidates}
    WINDOW w AS (PARTITION BY s.campaign_key, s.lead_key, s.step ORDER BY s.ts, s.id),
           whole AS (PARTITION BY s.campaign_key, s.lead_key, s.step ORDER BY s.ts, s.id
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
SELECT campaign, lead, address AS email, step, copy, ts AS sent_at, variant, instance, host, pid,
       CASE WHEN copy > 1 THEN 1 ELSE 0 END AS is_duplicate, NULL AS reason
FROM ranked
WHERE first_duplicate_id IS NOT NULL {variant_filter}
ORDER BY first_duplicate_at, first_duplicate_id, copy
LIMIT :limit
"""

# Every send of each (campaign, step, address) reached through more than one lead record; the copies
# through a record other than the first one are the duplicates (as in _ADDRESS).
_DETAILS_ADDRESS = """
WITH {prelude}{sends},
{address_ctes}ranked AS (
    SELECT s.*,
           ROW_NUMBER() OVER w AS copy,
           FIRST_VALUE(s.lead_key) OVER w AS first_lead
    FROM sends AS s
    WHERE {address_candidates}
    WINDOW w AS (PARTITION BY s.address_key, s.campaign_key, s.step ORDER BY s.ts, s.id)
),
groups AS (
    SELECT campaign_key, step, address_key,
           min(CASE WHEN lead_key <> first_lead THEN ts END) AS first_duplicate_at
    FROM ranked
    GROUP BY campaign_key, step, address_key
    HAVING sum(CASE WHEN lead_key <> first_lead THEN 1 ELSE 0 END) > 0
)
SELECT r.campaign, r.lead, r.address AS email, r.step, r.copy, r.ts AS sent_at, r.variant, r.instance,
       r.host, r.pid, CASE WHEN r.lead_key <> r.first_lead THEN 1 ELSE 0 END AS is_duplicate,
       NULL AS reason
FROM ranked AS r
JOIN groups AS g ON g.campaign_key = r.campaign_key AND g.step = r.step AND g.address_key = r.address_key
ORDER BY g.first_duplicate_at, g.campaign_key, g.address_key, g.step, r.copy
LIMIT :limit
"""

# Every send to each address reached by more than one campaign (with a campaign filter: addresses that
# campaign reached after another one), the first campaign decided as in _CROSS_CAMPAIGN. The window
# carries keys only; names are read for the page of returned rows alone (the join back on id).
_DETAILS_CROSS_CAMPAIGN = """
WITH {prelude}{sends_all},
{cross_ctes}ranked AS (
    SELECT id, address_key, campaign_key, ts,
           ROW_NUMBER() OVER w AS copy,
           FIRST_VALUE(campaign_key) OVER w AS first_campaign
    FROM sends
    WHERE {cross_candidates}
    WINDOW w AS (PARTITION BY address_key ORDER BY ts, id)
),
groups AS (
    SELECT address_key, min(ts) AS first_duplicate_at
    FROM ranked
    WHERE campaign_key <> first_campaign AND {campaign_key}
    GROUP BY address_key
),
page AS (
    SELECT r.id, r.copy, CASE WHEN r.campaign_key <> r.first_campaign THEN 1 ELSE 0 END AS is_duplicate,
           g.first_duplicate_at, g.address_key
    FROM ranked AS r
    JOIN groups AS g ON g.address_key = r.address_key
    ORDER BY g.first_duplicate_at, g.address_key, r.copy
    LIMIT :limit
)
SELECT s.campaign, s.lead, s.address AS email, s.step, p.copy, s.ts AS sent_at, s.variant, s.instance,
       s.host, s.pid, p.is_duplicate, NULL AS reason
FROM page AS p
JOIN sends AS s ON s.id = p.id
ORDER BY p.first_duplicate_at, p.address_key, p.copy
"""

# Guard firings, newest first, with the instance's host and pid while it is still registered.
_DETAILS_PREVENTED = """
SELECT c.name AS campaign, l.email AS lead, l.email AS email, NULL AS step, NULL AS copy,
       e.created_at AS sent_at, NULL AS variant, e.instance_id AS instance, si.host, si.pid,
       1 AS is_duplicate, e.reason
FROM campaign_event AS e
JOIN campaign AS c ON c.id = e.campaign_id
LEFT JOIN lead AS l ON l.id = e.lead_id
LEFT JOIN sender_instance AS si ON si.id = e.instance_id
WHERE e.kind = 'duplicate_prevented' {campaign_filter} {time_filter}
ORDER BY e.created_at DESC, e.id DESC
LIMIT :limit
"""

_SAME_VARIANT = "coalesce(second_variant, '') = coalesce(first_variant, '')"
_VARIANT_FILTER = {"exact": f"AND {_SAME_VARIANT}", "cross_variant": f"AND NOT ({_SAME_VARIANT})", "any": ""}


def _details_sql(engine: Bind, source: Source, kind: str, campaign: str | None, span: Span) -> str:
    fragments = _fragments(engine, source, campaign, span)
    if kind in _VARIANT_FILTER:
        return _DETAILS_KEY.format(variant_filter=_VARIANT_FILTER[kind], **fragments)
    if kind == "address":
        return _DETAILS_ADDRESS.format(**fragments)
    if kind == "cross_campaign":
        return _DETAILS_CROSS_CAMPAIGN.format(**fragments)
    if kind == "prevented":
        return _DETAILS_PREVENTED.format(
            campaign_filter="AND c.name = :campaign" if campaign else "",
            time_filter=span.filter("e.created_at"),
        )
    raise UsageError(f"unknown duplicate kind {kind!r}: one of {', '.join((*KINDS, 'any'))}")


def duplicate_details(
    engine: Bind,
    source: Source = LIVE,
    kind: Kind = "any",
    limit: int = 500,
    campaign: str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Drill-down rows (at most `limit`, capped at MAX_DETAIL_ROWS): every copy of the affected leads of
    one kind, each with its time, variant and sender instance. Columns DETAIL_COLUMNS; `group` numbers
    the duplicate groups in order of their first duplicate; `is_duplicate` marks the copies beyond the
    first. kind: exact | cross_variant | any (both) | address | cross_campaign | prevented."""
    if kind == "prevented" and not source.live:
        return pd.DataFrame(columns=DETAIL_COLUMNS)
    span = Span(since, until)
    sql = _details_sql(engine, source, kind, campaign, span)
    stmt = _statement(sql, span).columns(**_DETAIL_TYPES)
    limit = max(0, min(int(limit), MAX_DETAIL_ROWS))
    with reading(engine) as conn:
        rows = conn.execute(stmt, _params(source, campaign, span=span, limit=limit)).all()
    df = _frame(rows, columns=DETAIL_COLUMNS[2:])
    df.insert(0, "kind", kind)
    group_by = {"address": ["campaign", "email", "step"], "cross_campaign": ["email"]}.get(
        kind, ["campaign", "lead", "step"]
    )
    # Rows arrive group by group, so numbering groups in order of appearance follows the SQL's order.
    groups = df.groupby(group_by, sort=False, dropna=False).ngroup() if len(df) else pd.Series(dtype="int64")
    df.insert(1, "group", range(len(df)) if kind == "prevented" else groups)
    df["is_duplicate"] = df["is_duplicate"].astype(bool)
    return df


# --- live operations -----------------------------------------------------------------------------


def _time_filter(column: str, since: datetime | None, until: datetime | None) -> str:
    return (f"AND {column} >= :since " if since else "") + (f"AND {column} < :until" if until else "")


# Uses ix_send_log_time (or ix_send_log_campaign_time) for the range; grouping yields one row per
# bucket x campaign x outcome, never a send.
_TIMELINE_OUTCOME = """
SELECT {bucket} AS bucket, c.name AS campaign, sl.status AS outcome, count(*) AS sends
FROM send_log AS sl
JOIN campaign AS c ON c.id = sl.campaign_id
WHERE sl.status IN ('sent', 'failed', 'deferred', 'unknown') {campaign_filter} {time_filter}
GROUP BY {bucket}, c.name, sl.status
ORDER BY bucket, campaign, outcome
LIMIT :max_rows
"""

# All campaigns together: one row per bucket x outcome (the page's default view; bucket x campaign x
# outcome would multiply the rows by the number of campaigns for a chart that sums them anyway).
_TIMELINE_TOTAL = """
SELECT {bucket} AS bucket, CAST(NULL AS VARCHAR(200)) AS campaign, sl.status AS outcome, count(*) AS sends
FROM send_log AS sl
WHERE sl.status IN ('sent', 'failed', 'deferred', 'unknown') {campaign_filter} {time_filter}
GROUP BY {bucket}, sl.status
ORDER BY bucket, outcome
LIMIT :max_rows
"""

# The same range by sender instance: `sends` are delivered or possibly delivered, `attempts` every
# finished attempt (adding failed and deferred); the number of rows per bucket is the number of active
# senders, the incident's root-cause signal.
_TIMELINE_INSTANCE = """
SELECT {bucket} AS bucket, sl.instance_id AS instance, max(sl.host) AS host, max(sl.pid) AS pid,
       sum(CASE WHEN sl.status IN ('sent', 'unknown') THEN 1 ELSE 0 END) AS sends, count(*) AS attempts
FROM send_log AS sl
WHERE sl.status IN ('sent', 'failed', 'deferred', 'unknown') {campaign_filter} {time_filter}
GROUP BY {bucket}, sl.instance_id
ORDER BY bucket, instance
LIMIT :max_rows
"""


def sends_timeline(
    engine: Bind,
    campaign: str | None = None,
    bucket_seconds: int = 600,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    by: Literal["outcome", "total", "instance"] = "outcome",
    max_rows: int = MAX_BUCKETS,
) -> pd.DataFrame:
    """Live send_log attempts over time. by="outcome": bucket, campaign, outcome (sent, failed, deferred,
    unknown), sends; by="total": the same summed over campaigns (campaign None). by="instance": bucket, instance, host, pid, sends (sent + unknown), attempts.
    `bucket` is an aware UTC datetime; [since, until) filters on the attempt time. Raises
    TooManyBuckets beyond `max_rows` rows."""
    template, columns = (
        (
            _TIMELINE_OUTCOME if by == "outcome" else _TIMELINE_TOTAL,
            {"bucket": Integer, "campaign": String, "outcome": String, "sends": Integer},
        )
        if by in ("outcome", "total")
        else (_TIMELINE_INSTANCE, {"bucket": Integer, "instance": String, "host": String, "pid": Integer,
                                   "sends": Integer, "attempts": Integer})
    )  # fmt: skip
    sql = template.format(
        bucket=_bucket(engine, "sl.created_at"),
        campaign_filter=_LIVE_CAMPAIGN if campaign else "",
        time_filter=_time_filter("sl.created_at", since, until),
    )
    stmt = text(sql).bindparams(*_time_binds(since, until)).columns(**columns)
    params = {"campaign": campaign, "b": int(bucket_seconds), "max_rows": max_rows + 1}
    params |= {k: _utc(v) for k, v in (("since", since), ("until", until)) if v}
    with reading(engine) as conn:
        rows = conn.execute(stmt, params).all()
    _check_bucket_rows(len(rows), max_rows, bucket_seconds)
    return _bucket_frame(rows, list(columns))


def _time_binds(since: datetime | None, until: datetime | None) -> list:
    return [bindparam(name, type_=_TS) for name, v in (("since", since), ("until", until)) if v]


# Guard firings over time per campaign and instance: the early warning that two senders race.
_PREVENTED_TIMELINE = """
SELECT {bucket} AS bucket, c.name AS campaign, e.instance_id AS instance, count(*) AS prevented
FROM campaign_event AS e
JOIN campaign AS c ON c.id = e.campaign_id
WHERE e.kind = 'duplicate_prevented' {campaign_filter} {time_filter}
GROUP BY {bucket}, c.name, e.instance_id
ORDER BY bucket, campaign, instance
LIMIT :max_rows
"""


def prevented_timeline(
    engine: Bind,
    campaign: str | None = None,
    bucket_seconds: int = 600,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    max_rows: int = MAX_BUCKETS,
) -> pd.DataFrame:
    """Guard firings (campaign_event duplicate_prevented): bucket (aware UTC), campaign, instance,
    prevented. Raises TooManyBuckets beyond `max_rows` rows."""
    sql = _PREVENTED_TIMELINE.format(
        bucket=_bucket(engine, "e.created_at"),
        campaign_filter="AND c.name = :campaign" if campaign else "",
        time_filter=_time_filter("e.created_at", since, until),
    )
    columns = {"bucket": Integer, "campaign": String, "instance": String, "prevented": Integer}
    stmt = text(sql).bindparams(*_time_binds(since, until)).columns(**columns)
    params = {"campaign": campaign, "b": int(bucket_seconds), "max_rows": max_rows + 1}
    params |= {k: _utc(v) for k, v in (("since", since), ("until", until)) if v}
    with reading(engine) as conn:
        rows = conn.execute(stmt, params).all()
    _check_bucket_rows(len(rows), max_rows, bucket_seconds)
    return _bucket_frame(rows, list(columns))


# One row per campaign: enrollment counts from one GROUP BY over campaign_lead (index-only on
# ix_campaign_lead_queue), sends in the last hour from the ix_send_log_time range, last attempt from
# ix_send_log_campaign_time's max.
_OVERVIEW = text("""
SELECT c.name, c.status,
       coalesce(q.queued, 0) AS queued, coalesce(q.sending, 0) AS sending, coalesce(q.sent, 0) AS sent,
       coalesce(q.failed, 0) AS failed, coalesce(q.skipped, 0) AS skipped, coalesce(q.unknown, 0) AS unknown,
       coalesce(q.enrolled, 0) AS enrolled,
       coalesce(h.sends_last_hour, 0) AS sends_last_hour,
       (SELECT max(s.created_at) FROM send_log AS s WHERE s.campaign_id = c.id) AS last_attempt_at,
       c.daily_limit, c.min_interval_seconds, c.jitter_seconds, c.timezone, c.window_days, c.window_start,
       c.window_end, c.next_send_at, c.pause_reason, c.paused_by, c.paused_at
FROM campaign AS c
LEFT JOIN (
    SELECT campaign_id,
           sum(CASE WHEN status = 'queued' THEN n ELSE 0 END) AS queued,
           sum(CASE WHEN status = 'sending' THEN n ELSE 0 END) AS sending,
           sum(CASE WHEN status = 'sent' THEN n ELSE 0 END) AS sent,
           sum(CASE WHEN status = 'failed' THEN n ELSE 0 END) AS failed,
           sum(CASE WHEN status = 'skipped' THEN n ELSE 0 END) AS skipped,
           sum(CASE WHEN status = 'unknown' THEN n ELSE 0 END) AS unknown,
           sum(n) AS enrolled
    FROM (
        -- the plain (campaign_id, status) grouping is the prefix of ix_campaign_lead_queue: both planners
        -- count it from the index alone, with no per-row CASE; the pivot then runs over ~campaigns x 6 rows
        SELECT campaign_id, status, count(*) AS n FROM campaign_lead GROUP BY campaign_id, status
    ) AS per_status
    GROUP BY campaign_id
) AS q ON q.campaign_id = c.id
LEFT JOIN (
    SELECT campaign_id, count(*) AS sends_last_hour
    FROM send_log
    WHERE created_at >= :since AND status IN ('sent', 'unknown')
    GROUP BY campaign_id
) AS h ON h.campaign_id = c.id
ORDER BY c.name
""")
OVERVIEW_TYPES = dict(name=String, status=String, queued=Integer, sending=Integer, sent=Integer, failed=Integer,
                      skipped=Integer, unknown=Integer, enrolled=Integer, sends_last_hour=Integer,
                      last_attempt_at=_TS, daily_limit=Integer, min_interval_seconds=Float,
                      jitter_seconds=Float, timezone=String, window_days=String, window_start=String,
                      window_end=String, next_send_at=_TS, pause_reason=String, paused_by=String,
                      paused_at=_TS)  # fmt: skip


def campaign_overview(engine: Bind, now: datetime | None = None) -> pd.DataFrame:
    """One row per campaign: name, status, enrollment counts (queued, sending, sent, failed, skipped,
    unknown, enrolled), sends_last_hour (sent + unknown since now - 1h), last_attempt_at, and the pacing
    fields (daily_limit, min_interval_seconds, jitter_seconds, timezone, window_*, next_send_at) and
    pause fields. `now` defaults to the database's clock."""
    if now is None:
        from sender.clock import DatabaseClock

        now = DatabaseClock(engine.engine if isinstance(engine, Connection) else engine).now()
    stmt = _OVERVIEW.bindparams(bindparam("since", type_=_TS)).columns(**OVERVIEW_TYPES)
    with reading(engine) as conn:
        rows = conn.execute(stmt, {"since": _utc(now) - timedelta(hours=1)}).all()
    return _frame(rows, columns=list(OVERVIEW_TYPES))


# --- text rendering (`sendguard report duplicates` without --json) -------------------------------

_SHOWN_BUCKETS = 24


def render_summary(
    summary: dict, *, source: Source, campaign: str | None = None, bucket_seconds: int = 600
) -> str:
    """A short human-readable report: totals, onset (with the instances active then), by kind, buckets."""
    where = source.describe() + (f", campaign {campaign!r}" if campaign else "")
    buckets: list[dict] = summary["buckets"]
    lines = [
        f"duplicates in {where} ({format_bucket(bucket_seconds)} buckets)",
        f"  sends {summary['total_sends']}, unique keys {summary['unique_keys']}, "
        f"duplicate sends {summary['duplicate_sends']}, affected leads {summary['affected_leads']}",
    ]
    onset = summary["onset"]
    if onset is None:
        lines.append("  onset: none (no duplicate sends)")
    else:
        at = next((b for b in buckets if b["start"] == onset), None)
        if at is None or not at["instances"]:
            active = " (sender instances not recorded)"
        else:
            active = f" ({at['instances']} sender instance(s) active in that bucket)"
        lines.append(f"  onset: {onset}{active}")
    lines.append(f"  {'by kind':<16}{'dup sends':>10}{'leads':>8}")
    for kind, counts in summary["by_kind"].items():
        lines.append(f"  {kind:<16}{counts['duplicate_sends']:>10}{counts['affected_leads']:>8}")
    if buckets:
        # Around the onset when there is one (what came just before matters), else the latest buckets.
        index = next((i for i, b in enumerate(buckets) if b["start"] == onset), len(buckets))
        first = max(0, min(index - 3, len(buckets) - _SHOWN_BUCKETS))
        shown = buckets[first : first + _SHOWN_BUCKETS]
        lines.append(f"  {'bucket start':<27}{'sends':>7}{'dups':>7}{'instances':>11}")
        for b in shown:
            mark = "  <- onset" if b["start"] == onset else ""
            lines.append(
                f"  {b['start']:<27}{b['sends']:>7}{b['duplicate_sends']:>7}{b['instances']:>11}{mark}"
            )
        hidden = len(buckets) - len(shown)
        if hidden:
            lines.append(f"  ({hidden} more non-empty bucket(s) not shown: use --json)")
    return "\n".join(lines)
