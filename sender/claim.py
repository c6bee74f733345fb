"""The claim-and-send protocol's SQL: every statement that decides who may send what, in one place.

Each transition is a compare-and-set: an UPDATE whose WHERE names the state it expects and, once a
row is claimed, the claimer's token. A statement that touches no row means "someone else owns this
now": the caller stops. The functions take an open Connection; the caller owns the transaction.
"""

from __future__ import annotations

import contextlib
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, TextClause, bindparam, text
from sqlmodel.sql.sqltypes import UTCDateTime

from models import EnrollmentStatus, SendStatus

_TS = UTCDateTime()
_TIME_PARAMS = ("now", "lease_until", "next_at", "day_start", "until")


class Prepared:
    """A protocol statement, compiled once per dialect and run on the driver's cursor.

    `Connection.execute` spends about 50 us a call on statement caching and parameter bookkeeping and
    `exec_driver_sql` still about 40 (an execution context per call): together a third of a message's
    CPU. `run` executes the compiled text on the Connection's own DB-API connection, inside its
    transaction, and hands any error to SQLAlchemy's handler, so callers see what `execute` gives them:
    DBAPIError, a lost connection invalidated. Parameters go through the bind processors `execute`
    would use; results come back fetched (`Rows`).
    """

    def __init__(self, clause: TextClause) -> None:
        self.clause = clause
        self._by_dialect: dict[tuple[str, str, str], _Compiled] = {}

    def __getattr__(self, name: str) -> Any:  # .text, ._bindparams: for EXPLAIN in the tests
        return getattr(self.clause, name)

    def _compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self.clause.compile(dialect=dialect)
        processors = {name: _processor(bind.type, dialect) for name, bind in compiled.binds.items()}
        if compiled.positional:
            names = tuple(compiled.positiontup or ())
            if not names:
                return _Compiled(compiled.string, lambda params: ())
            pick = operator.itemgetter(*names)
            single = len(names) == 1  # itemgetter of one name gives the value, not a tuple
            converted = tuple((i, processors[n]) for i, n in enumerate(names) if processors[n] is not None)

            def positional(params: Mapping[str, Any]) -> Any:
                values = [pick(params)] if single else list(pick(params))
                for i, proc in converted:
                    values[i] = proc(values[i])
                return values

            return _Compiled(compiled.string, positional)
        converted = tuple((name, proc) for name, proc in processors.items() if proc is not None)
        if not converted:  # the driver looks up the names it needs and ignores the rest
            return _Compiled(compiled.string, lambda params: params)
        return _Compiled(
            compiled.string, lambda params: {**params, **{n: p(params[n]) for n, p in converted}}
        )

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Rows:
        if not conn.in_transaction():
            conn.begin()  # what execute's autobegin would do: the caller commits
        return self._execute(conn, params)

    def run_alone(self, conn: Connection, params: Mapping[str, Any]) -> Rows:
        """PostgreSQL: run as a transaction of its own (autocommit), one round trip instead of BEGIN,
        the statement and COMMIT. `conn` must have no transaction open."""
        assert not conn.in_transaction() and conn.dialect.name == "postgresql"
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        try:
            dbapi.autocommit = True
        except BaseException as exc:
            conn._handle_dbapi_exception(exc, None, None, None, None)
        try:
            return self._execute(conn, params)
        finally:
            if not conn.invalidated:
                with contextlib.suppress(Exception):  # a broken connection is discarded anyway
                    dbapi.autocommit = False

    def _execute(self, conn: Connection, params: Mapping[str, Any]) -> Rows:
        dialect = conn.dialect
        key = (dialect.name, dialect.driver, dialect.paramstyle)  # what the compiled text depends on
        entry = self._by_dialect.get(key)
        if entry is None:
            entry = self._by_dialect[key] = self._compiled(dialect)
        args = entry.convert(params)
        cursor = _cursor(conn)
        try:
            cursor.execute(entry.sql, args)
            if entry.returns_rows is None:  # learnt once: psycopg builds Column objects for `description`
                entry.returns_rows = cursor.description is not None
            return Rows(cursor.rowcount, cursor.fetchall() if entry.returns_rows else [])
        except BaseException as exc:
            # SQLAlchemy's own handling: wrapped as DBAPIError, a lost connection invalidated.
            conn._handle_dbapi_exception(exc, entry.sql, args, cursor, None)
            raise  # not reached: the handler always raises


class _Compiled:
    """A statement's text on one dialect, how to convert its parameters, and whether it returns rows."""

    __slots__ = ("sql", "convert", "returns_rows")

    def __init__(self, sql: str, convert: Callable[[Mapping[str, Any]], Any]) -> None:
        self.sql, self.convert = sql, convert
        self.returns_rows: bool | None = None


def _cursor(conn: Connection) -> Any:
    """One driver cursor per DBAPI connection, kept in the pool record's `info` (which SQLAlchemy clears
    when the connection is invalidated or replaced): creating one costs about 25 us on psycopg. Every
    result is fetched whole before the next statement, so sharing it between statements is safe."""
    fairy = conn.connection
    cursor = fairy.info.get("sendguard_cursor")
    if cursor is None or cursor.connection is not fairy.dbapi_connection:
        cursor = fairy.info["sendguard_cursor"] = fairy.dbapi_connection.cursor()  # type: ignore[union-attr]
    return cursor


_PROCESSORS: dict[tuple[int, str, str, str], Callable[[Any], Any] | None] = {}


def _processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """The bind processor of `type_` on `dialect`, one per (type, dialect) for every statement, so
    that the one `now` of a hand-over, bound into several statements, is converted once."""
    key = (id(type_), dialect.name, dialect.driver, dialect.paramstyle)
    if key not in _PROCESSORS:
        proc = type_.dialect_impl(dialect).bind_processor(dialect)
        _PROCESSORS[key] = _remember_last(proc) if proc is not None else None
    return _PROCESSORS[key]


def _remember_last(proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A bind processor that reuses its last result for the very same object. The only processed
    parameters are timestamps (immutable); the (input, output) pair is swapped as one tuple, so threads
    cannot pair one's input with another's output."""
    last: list[tuple[Any, Any]] = [(object(), None)]

    def process(value: Any) -> Any:
        seen, out = last[0]
        if seen is value:
            return out
        out = proc(value)
        last[0] = (value, out)
        return out

    return process


class Rows:
    """A protocol statement's result, fetched: the few CursorResult methods the callers use."""

    __slots__ = ("rowcount", "_rows")

    def __init__(self, rowcount: int, rows: list[Any]) -> None:
        self.rowcount, self._rows = rowcount, rows

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar_one(self) -> Any:
        if len(self._rows) != 1:
            raise ValueError(f"expected one row, got {len(self._rows)}")
        return self._rows[0][0]


def _sql(sql: str) -> Prepared:
    """Bind time parameters through the same type as the columns, so both backends compare alike."""
    params = [bindparam(name, type_=_TS) for name in _TIME_PARAMS if f":{name}" in sql]
    return Prepared(text(sql).bindparams(*params))


@dataclass(frozen=True)
class Claimed:
    enrollment_id: int
    campaign_id: int
    lead_id: int
    step: int
    variant: str
    attempts: int
    token: str


@dataclass(frozen=True)
class LeadData:
    email: str
    first_name: str | None
    last_name: str | None
    fields: str
    suppressed: bool


# --- 1. Claim ------------------------------------------------------------------------------------

# Safe: the CTE locks the rows it picks with SKIP LOCKED, so two claimers never pick the same row, and
# the outer `status = 'queued'` is re-checked after any lock wait (READ COMMITTED). A CTE rather than
# `id IN (SELECT ... LIMIT n FOR UPDATE)`, which can update more than n rows (PostgreSQL bug #15715).
_CLAIM_POSTGRESQL = _sql("""
WITH picked AS (
    SELECT q.id FROM campaign_lead AS q
    WHERE q.campaign_id = :campaign_id AND q.status = 'queued' AND q.next_attempt_at <= :now
      AND EXISTS (SELECT 1 FROM campaign AS c WHERE c.id = q.campaign_id AND c.status = 'active')
    ORDER BY q.next_attempt_at, q.id
    LIMIT :limit
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE campaign_lead
SET status = 'sending', claim_token = :token_prefix || campaign_lead.id, claimed_by = :instance,
    lease_expires_at = :lease_until, attempts = campaign_lead.attempts + 1, updated_at = :now
FROM picked
WHERE campaign_lead.id = picked.id AND campaign_lead.status = 'queued'
RETURNING campaign_lead.id, campaign_lead.campaign_id, campaign_lead.lead_id, campaign_lead.step,
          campaign_lead.variant_letter, campaign_lead.attempts, campaign_lead.claim_token
""")

# Safe: the transaction began with BEGIN IMMEDIATE, so this sender is the only writer until it commits;
# the subquery and the update see the same state, and the status check stays as a second guard.
_CLAIM_SQLITE = _sql("""
UPDATE campaign_lead
SET status = 'sending', claim_token = :token_prefix || id, claimed_by = :instance,
    lease_expires_at = :lease_until, attempts = attempts + 1, updated_at = :now
WHERE id IN (
    SELECT q.id FROM campaign_lead AS q
    WHERE q.campaign_id = :campaign_id AND q.status = 'queued' AND q.next_attempt_at <= :now
      AND EXISTS (SELECT 1 FROM campaign AS c WHERE c.id = q.campaign_id AND c.status = 'active')
    ORDER BY q.next_attempt_at, q.id
    LIMIT :limit
) AND status = 'queued'
RETURNING id, campaign_id, lead_id, step, variant_letter, attempts, claim_token
""")


def claim(
    conn: Connection,
    *,
    campaign_id: int,
    limit: int,
    token_prefix: str,
    instance: str,
    now: datetime,
    lease_until: datetime,
) -> list[Claimed]:
    """Move up to `limit` due, queued enrollments of an active campaign to `sending`, each with its own token."""
    stmt = _CLAIM_SQLITE if conn.dialect.name == "sqlite" else _CLAIM_POSTGRESQL
    rows = stmt.run(
        conn,
        {
            "campaign_id": campaign_id,
            "limit": limit,
            "token_prefix": token_prefix,
            "instance": instance,
            "now": now,
            "lease_until": lease_until,
        },
    ).all()
    return sorted(
        (Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows), key=lambda c: c.enrollment_id
    )


# Safe: a compare-and-set on the campaign row. Concurrent claimers of one paced campaign serialize on
# the row lock it takes, and only one of them finds `next_send_at <= now` true.
_TAKE_PACING_TURN = _sql("""
UPDATE campaign SET next_send_at = :next_at
WHERE id = :campaign_id AND status = 'active' AND (next_send_at IS NULL OR next_send_at <= :now)
""")


def take_pacing_turn(conn: Connection, *, campaign_id: int, now: datetime, next_at: datetime) -> bool:
    """Claim the campaign's next send slot for pacing; also locks the row for the daily-limit count."""
    return (
        _TAKE_PACING_TURN.run(conn, {"campaign_id": campaign_id, "now": now, "next_at": next_at}).rowcount
        == 1
    )


# Runs only after take_pacing_turn locked the campaign row, so no other sender counts concurrently.
_SENDS_SINCE = _sql("""
SELECT count(*) FROM send_log
WHERE campaign_id = :campaign_id AND created_at >= :day_start
  AND status IN ('reserved', 'transmitting', 'sent', 'unknown')
""")


def sends_since(conn: Connection, *, campaign_id: int, day_start: datetime) -> int:
    return int(_SENDS_SINCE.run(conn, {"campaign_id": campaign_id, "day_start": day_start}).scalar_one())


# The domain part of the address: SQLite has no split_part.
_DOMAIN = {"sqlite": "substr(l.email, instr(l.email, '@') + 1)", "postgresql": "split_part(l.email, '@', 2)"}
_LEADS = """
SELECT l.id, l.email, l.first_name, l.last_name, l.fields,
       EXISTS (SELECT 1 FROM suppression AS s WHERE s.email = l.email OR s.domain = {domain}) AS suppressed
FROM lead AS l WHERE l.id IN :ids
"""
_LEADS_BY_DIALECT = {
    name: text(_LEADS.format(domain=domain)).bindparams(bindparam("ids", expanding=True))
    for name, domain in _DOMAIN.items()
}


def lead_data(conn: Connection, lead_ids: Sequence[int]) -> dict[int, LeadData]:
    rows = conn.execute(_LEADS_BY_DIALECT[conn.dialect.name], {"ids": list(lead_ids)}).all()
    return {r[0]: LeadData(r[1], r[2], r[3], r[4], bool(r[5])) for r in rows}


# --- 2. Reserve ----------------------------------------------------------------------------------

# Safe: the partial unique index uq_send_log_live admits one reserved/transmitting/sent/unknown row
# per (campaign, lead, step), whatever the variant: a second reservation inserts nothing. No conflict
# target, so the statement also runs without that index (the crash tests' control drops it to show
# what it prevents); it is send_log's only unique key besides the serial id. One statement for a
# whole claimed batch: the rows travel as one JSON parameter, so the SQL text never changes.
_RESERVE_BY_DIALECT = {
    "postgresql": _sql("""
INSERT INTO send_log (campaign_id, lead_id, enrollment_id, step, variant_letter, status, claim_token,
                      attempt, message_id, instance_id, host, pid, created_at)
SELECT r.campaign_id, r.lead_id, r.enrollment_id, r.step, r.variant, 'reserved', r.token,
       r.attempt, r.message_id, :instance, :host, :pid, :now
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(campaign_id integer, lead_id integer, enrollment_id integer,
                                                    step integer, variant text, token text, attempt integer,
                                                    message_id text)
ON CONFLICT DO NOTHING
RETURNING id, enrollment_id
"""),
    # `WHERE true`: SQLite would otherwise read ON CONFLICT as part of the SELECT's join.
    "sqlite": _sql("""
INSERT INTO send_log (campaign_id, lead_id, enrollment_id, step, variant_letter, status, claim_token,
                      attempt, message_id, instance_id, host, pid, created_at)
SELECT json_extract(r.value, '$.campaign_id'), json_extract(r.value, '$.lead_id'),
       json_extract(r.value, '$.enrollment_id'), json_extract(r.value, '$.step'),
       json_extract(r.value, '$.variant'), 'reserved', json_extract(r.value, '$.token'),
       json_extract(r.value, '$.attempt'), json_extract(r.value, '$.message_id'), :instance, :host, :pid, :now
FROM json_each(:rows) AS r WHERE true
ON CONFLICT DO NOTHING
RETURNING id, enrollment_id
"""),
}


def reserve_many(
    conn: Connection,
    claims: Sequence[tuple[Claimed, str]],
    *,
    instance: str,
    host: str,
    pid: int,
    now: datetime,
) -> dict[int, int]:
    """Insert a `reserved` send_log row per (claim, message id): enrollment id -> send id for those
    reserved. A claim missing from the result is one the guard refused (a live row exists: never send)."""
    if not claims:
        return {}
    rows = json.dumps(
        [
            {
                "campaign_id": c.campaign_id, "lead_id": c.lead_id, "enrollment_id": c.enrollment_id,
                "step": c.step, "variant": c.variant, "token": c.token, "attempt": c.attempts,
                "message_id": message_id,
            }
            for c, message_id in claims
        ]
    )  # fmt: skip
    params = {"rows": rows, "instance": instance, "host": host, "pid": pid, "now": now}
    result = _RESERVE_BY_DIALECT[conn.dialect.name].run(conn, params)
    return {int(enrollment_id): int(send_id) for send_id, enrollment_id in result.all()}


def reserve(
    conn: Connection, c: Claimed, *, message_id: str, instance: str, host: str, pid: int, now: datetime
) -> int | None:
    """Insert the `reserved` send_log row; None when the guard fired (a live row exists: never send)."""
    reserved = reserve_many(conn, [(c, message_id)], instance=instance, host=host, pid=pid, now=now)
    return reserved.get(c.enrollment_id)


# --- 3. Commit to transmit (the gate) -------------------------------------------------------------

# Safe: only the claim holder with an unexpired lease passes, and only while the campaign is active.
# FOR SHARE makes a concurrent pause wait until this commits; a pause that committed first leaves no
# active row to lock (READ COMMITTED re-checks the locked row), so no transmission starts after it.
_GATE = """
UPDATE send_log SET status = 'transmitting', transmit_at = :now
WHERE id = :send_id AND status = 'reserved' AND claim_token = :token
  AND EXISTS (SELECT 1 FROM campaign_lead AS cl
              WHERE cl.id = :enrollment_id AND cl.status = 'sending' AND cl.claim_token = :token
                AND cl.lease_expires_at > :now)
  AND EXISTS (SELECT 1 FROM campaign AS c WHERE c.id = :campaign_id AND c.status = 'active' {lock})
"""
# SQLite has no row locks and needs none: under BEGIN IMMEDIATE a pause cannot commit in between.
_GATE_BY_DIALECT = {"postgresql": _sql(_GATE.format(lock="FOR SHARE")), "sqlite": _sql(_GATE.format(lock=""))}


def commit_to_transmit(conn: Connection, c: Claimed, *, send_id: int, now: datetime) -> bool:
    return (
        _GATE_BY_DIALECT[conn.dialect.name].run(conn, _gate_params(c, send_id=send_id, now=now)).rowcount == 1
    )


# A gate committed while the previous message's reply was still on its way (a payload in flight) is
# read again just before this message's payload leaves. Safe: read-only, and the payload leaves only
# if our gate still stands (not withdrawn by an attempt whose COMMIT we did not see, not reaped) and
# the campaign is active; a pause that commits after this read meets a payload leaving at once, the
# same window the gate itself leaves.
_GATE_STANDS = _sql("""
SELECT 1 FROM send_log AS s
WHERE s.id = :send_id AND s.claim_token = :token AND s.status = 'transmitting'
  AND EXISTS (SELECT 1 FROM campaign AS c WHERE c.id = :campaign_id AND c.status = 'active')
""")


def gate_stands(conn: Connection, c: Claimed, *, send_id: int) -> bool:
    """May this gated message still leave? Inside the caller's transaction if one is open, else read
    on its own: on PostgreSQL one round trip in autocommit, on SQLite the newest committed state."""
    params = {"send_id": send_id, "token": c.token, "campaign_id": c.campaign_id}
    if conn.in_transaction():
        return _GATE_STANDS.run(conn, params).first() is not None
    if conn.dialect.name == "postgresql":
        return _GATE_STANDS.run_alone(conn, params).first() is not None
    return _GATE_STANDS._execute(conn, params).first() is not None


# --- Release (gate refused, template failed before transmission, or shutting down) ---------------

# Safe: deletes only this claim's row and only while it never reached `transmitting`.
_DROP_RESERVATION = _sql("DELETE FROM send_log WHERE claim_token = :token AND status = 'reserved'")

# Safe: CAS on the token; the attempt is given back because nothing was transmitted.
_REQUEUE_UNSENT = _sql("""
UPDATE campaign_lead
SET status = 'queued', claim_token = NULL, claimed_by = NULL, lease_expires_at = NULL,
    attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = :now
WHERE id = :enrollment_id AND claim_token = :token AND status = 'sending'
""")


def release(conn: Connection, c: Claimed, *, now: datetime) -> bool:
    """Give an untransmitted claim back to the queue. False if it was no longer ours or had been gated."""
    if _DROP_RESERVATION.run(conn, {"token": c.token}).rowcount == 0:
        transmitting = conn.execute(
            text("SELECT 1 FROM send_log WHERE claim_token = :token AND status <> 'reserved'"),
            {"token": c.token},
        ).first()
        if transmitting is not None:
            return False
    return (
        _REQUEUE_UNSENT.run(conn, {"enrollment_id": c.enrollment_id, "token": c.token, "now": now}).rowcount
        == 1
    )


# --- Skips (before any send_log row is live) ------------------------------------------------------

# Safe: CAS on the token, from `sending` only.
_FINISH_UNSENT = _sql("""
UPDATE campaign_lead
SET status = CAST(:status AS VARCHAR(16)), reason = :reason, last_error = :error, lease_expires_at = NULL, updated_at = :now
WHERE id = :enrollment_id AND claim_token = :token AND status = 'sending'
""")


def finish_unsent(
    conn: Connection,
    c: Claimed,
    *,
    status: EnrollmentStatus,
    reason: str,
    now: datetime,
    error: str | None = None,
) -> bool:
    """End a claim that will never be transmitted: skipped (suppressed, duplicate_prevented) or failed."""
    _DROP_RESERVATION.run(conn, {"token": c.token})
    params = {
        "status": status.value,
        "reason": reason,
        "error": error,
        "now": now,
        "enrollment_id": c.enrollment_id,
        "token": c.token,
    }
    return _FINISH_UNSENT.run(conn, params).rowcount == 1


# --- 5. Record ------------------------------------------------------------------------------------

# Safe: only this claim's row; `unknown` is accepted because the reaper may have given up on a slow
# transmission that did finish, and a definite answer beats an ambiguous one.
_RECORD_SEND_SQL = """
UPDATE send_log
SET status = CAST(:send_status AS VARCHAR(16)), finished_at = :now, smtp_code = :code, smtp_reply = :reply
WHERE id = :send_id AND claim_token = :token AND status IN ('transmitting', 'unknown')
"""

# Safe: CAS on the token, from `sending` or from `unknown` (set by the reaper while we were slow).
_RECORD_ENROLLMENT_SQL = """
UPDATE campaign_lead
SET status = CAST(:status AS VARCHAR(16)), reason = :reason, last_error = :error, next_attempt_at = :next_at,
    claim_token = CASE WHEN CAST(:status AS VARCHAR(16)) = 'queued' THEN NULL ELSE claim_token END,
    claimed_by = CASE WHEN CAST(:status AS VARCHAR(16)) = 'queued' THEN NULL ELSE claimed_by END,
    lease_expires_at = NULL, updated_at = :now
WHERE id = :enrollment_id AND claim_token = :token AND status IN ('sending', 'unknown')
"""
_RECORD_SEND = _sql(_RECORD_SEND_SQL)
_RECORD_ENROLLMENT = _sql(_RECORD_ENROLLMENT_SQL)
# PostgreSQL: both in one statement, one round trip fewer per message. A data-modifying CTE always
# runs to completion, read or not, and the two touch different tables.
_RECORD_BOTH_POSTGRESQL = _sql(
    f"WITH recorded_send AS ({_RECORD_SEND_SQL} RETURNING id){_RECORD_ENROLLMENT_SQL}"
)
# PostgreSQL: the hand-over in one statement, run as its own transaction (one round trip instead of
# four): the record of one message, exactly as above, and the gate of the next, exactly as `_GATE`
# (its claim's parameters renamed `gate_*`). Safe: the same compare-and-sets on different rows, and a
# statement is atomic, so it leaves the crash states of the two-statement transaction it replaces.
_GATE_RENAMED = (
    _GATE.format(lock="FOR SHARE")
    .replace(":send_id", ":gate_send_id")
    .replace(":token", ":gate_token")  # the gate has no other parameter starting so
    .replace(":enrollment_id", ":gate_enrollment_id")
)
_HAND_OVER_POSTGRESQL = _sql(
    f"WITH recorded_send AS ({_RECORD_SEND_SQL} RETURNING id),"  # noqa: S608 (module constants)
    f" recorded_enrollment AS ({_RECORD_ENROLLMENT_SQL} RETURNING id),"
    f" gated AS ({_GATE_RENAMED} RETURNING id)"
    " SELECT (SELECT count(*) FROM recorded_enrollment), (SELECT count(*) FROM gated)"
)


def record(conn: Connection, params: Mapping[str, Any]) -> bool:
    """Record the SMTP outcome on both rows (`params`: `record_params`). Idempotent: safe to retry after
    a lost connection."""
    if conn.dialect.name == "postgresql":
        return _RECORD_BOTH_POSTGRESQL.run(conn, params).rowcount == 1
    _RECORD_SEND.run(conn, params)
    return _RECORD_ENROLLMENT.run(conn, params).rowcount == 1


def record_params(
    c: Claimed,
    *,
    send_id: int,
    send_status: SendStatus,
    enrollment_status: EnrollmentStatus,
    reason: str | None,
    code: int | None,
    reply: str,
    now: datetime,
    next_at: datetime,
) -> dict[str, Any]:
    """The parameters of `record` and `hand_over_alone`: one attempt's outcome."""
    return {
        "send_status": send_status.value,
        "code": code,
        "reply": reply[:1000],
        "send_id": send_id,
        "status": enrollment_status.value,
        "reason": reason,
        "error": None if enrollment_status == EnrollmentStatus.SENT else reply[:1000],
        "next_at": next_at,
        "now": now,
        "enrollment_id": c.enrollment_id,
        "token": c.token,
    }


def _gate_params(c: Claimed, *, send_id: int, now: datetime, prefix: str = "") -> dict[str, Any]:
    return {
        f"{prefix}send_id": send_id,
        f"{prefix}token": c.token,
        f"{prefix}enrollment_id": c.enrollment_id,
        "campaign_id": c.campaign_id,
        "now": now,
    }


def hand_over_alone(
    conn: Connection, record: Mapping[str, Any] | None, gate: tuple[Claimed, int] | None, now: datetime
) -> bool | None:
    """Record one message (`record`: `record_params`) and gate the next (claim, send id) in one
    transaction of their own, without SQLAlchemy's transaction bookkeeping: on PostgreSQL one statement
    in autocommit, on SQLite `record`'s and the gate's statements between a BEGIN IMMEDIATE and a
    COMMIT on the driver's connection. Returns whether the gate passed (None: nothing to gate). `conn`
    must have no transaction open. A gate that refuses leaves the claim to the caller to release."""
    if conn.dialect.name == "sqlite":
        return _hand_over_sqlite(conn, record, gate, now)
    if gate is None:
        assert record is not None
        _RECORD_BOTH_POSTGRESQL.run_alone(conn, record)
        return None
    c, send_id = gate
    if record is None:
        gated = _GATE_BY_DIALECT["postgresql"].run_alone(conn, _gate_params(c, send_id=send_id, now=now))
        return gated.rowcount == 1
    params = {**record, **_gate_params(c, send_id=send_id, now=now, prefix="gate_")}
    return int(_HAND_OVER_POSTGRESQL.run_alone(conn, params).first()[1]) == 1


def _hand_over_sqlite(
    conn: Connection, record: Mapping[str, Any] | None, gate: tuple[Claimed, int] | None, now: datetime
) -> bool | None:
    assert not conn.in_transaction()
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    _driver_command(conn, dbapi, "BEGIN IMMEDIATE")  # as every sender transaction on SQLite (sender/db.py)
    try:
        if record is not None:
            _RECORD_SEND._execute(conn, record)
            _RECORD_ENROLLMENT._execute(conn, record)
        passed = None
        if gate is not None:
            c, send_id = gate
            gated = _GATE_BY_DIALECT["sqlite"]._execute(conn, _gate_params(c, send_id=send_id, now=now))
            passed = gated.rowcount == 1
        _driver_command(conn, dbapi, "COMMIT")
        return passed
    except BaseException:
        with contextlib.suppress(Exception):  # nothing of it may survive: the caller retries it all
            dbapi.rollback()
        raise


def _driver_command(conn: Connection, dbapi: Any, command: str) -> None:
    try:
        _cursor(conn).execute(command)
    except BaseException as exc:
        conn._handle_dbapi_exception(exc, command, (), None, None)


_SUPPRESS = _sql("""
INSERT INTO suppression (email, reason, detail, created_at) VALUES (:email, :reason, :detail, :now)
ON CONFLICT DO NOTHING
""")


def suppress(conn: Connection, *, email: str, reason: str, detail: str, now: datetime) -> None:
    _SUPPRESS.run(conn, {"email": email, "reason": reason, "detail": detail[:500], "now": now})


# --- Release after a failure before MAIL FROM (SMTP authentication refused) ----------------------

# Safe: only this claim's row, and `deferred` is outside uq_send_log_live: authentication failed while
# connecting, before MAIL FROM, so nothing of this message left the host and the key may be reserved
# again. From `unknown` too: the reaper may have given up on us meanwhile; we know better.
_UNTRANSMITTED_SEND = _sql("""
UPDATE send_log SET status = 'deferred', finished_at = :now, smtp_code = :code, smtp_reply = :reply
WHERE id = :send_id AND claim_token = :token AND status IN ('transmitting', 'unknown')
""")

# Safe: CAS on the token; due at once with the attempt given back, so after a resume the lead is sent as
# if this attempt never happened.
_REQUEUE_UNTRANSMITTED = _sql("""
UPDATE campaign_lead
SET status = 'queued', reason = :reason, last_error = :reply, claim_token = NULL, claimed_by = NULL,
    lease_expires_at = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
    next_attempt_at = :now, updated_at = :now
WHERE id = :enrollment_id AND claim_token = :token AND status IN ('sending', 'unknown')
""")


def requeue_untransmitted(
    conn: Connection, c: Claimed, *, send_id: int, reason: str, code: int | None, reply: str, now: datetime
) -> bool:
    """A gated claim whose message never reached MAIL FROM: back to the queue untouched. Idempotent."""
    _UNTRANSMITTED_SEND.run(
        conn,
        {"now": now, "code": code, "reply": reply[:1000], "send_id": send_id, "token": c.token},
    )
    params = {
        "reason": reason,
        "reply": reply[:1000],
        "now": now,
        "enrollment_id": c.enrollment_id,
        "token": c.token,
    }
    return _REQUEUE_UNTRANSMITTED.run(conn, params).rowcount == 1


# --- Circuit breakers' counts (sender/breakers.py decides what they mean) -------------------------

# Both count from the campaign's last start or resume (the COALESCE): an operator's resume starts a
# fresh count instead of tripping again on what was already looked at.

# Safe: read-only, in the transaction that recorded the outcome (so it counts that row); a concurrent
# sender's uncommitted outcome is counted by that sender's own check when it records it.
_RECENT_HARD_FAILURES = _sql("""
SELECT count(*) FROM (
    SELECT sl.status FROM send_log AS sl
    WHERE sl.campaign_id = :campaign_id AND sl.status IN ('sent', 'failed', 'deferred', 'unknown')
      AND sl.created_at >= COALESCE((SELECT max(e.created_at) FROM campaign_event AS e
                                     WHERE e.campaign_id = :campaign_id AND e.kind IN ('started', 'resumed')),
                                    sl.created_at)
    ORDER BY sl.created_at DESC, sl.id DESC
    LIMIT :window
) AS recent WHERE recent.status = 'failed'
""")

# Safe: read-only, in the transaction of the `unknown` it follows (record or reaper).
_UNKNOWNS = _sql("""
SELECT count(*) FROM send_log AS sl
WHERE sl.campaign_id = :campaign_id AND sl.status = 'unknown'
  AND sl.created_at >= COALESCE((SELECT max(e.created_at) FROM campaign_event AS e
                                 WHERE e.campaign_id = :campaign_id AND e.kind IN ('started', 'resumed')),
                                sl.created_at)
""")


def recent_hard_failures(conn: Connection, *, campaign_id: int, window: int) -> int:
    """Hard failures (5xx) among the campaign's last `window` attempts with an SMTP outcome."""
    params = {"campaign_id": campaign_id, "window": window}
    return int(_RECENT_HARD_FAILURES.run(conn, params).scalar_one())


def unknowns(conn: Connection, *, campaign_id: int) -> int:
    """Attempts of the campaign still `unknown` (not yet resolved by review)."""
    return int(_UNKNOWNS.run(conn, {"campaign_id": campaign_id}).scalar_one())


# --- 6. Reaper ------------------------------------------------------------------------------------

_EXPIRED = _sql("""
SELECT id, claim_token FROM campaign_lead
WHERE status = 'sending' AND lease_expires_at < :now
ORDER BY lease_expires_at LIMIT :limit
""")

# Safe: only rows still `reserved` (never gated). A gate racing with this either committed first (the
# row is `transmitting` and the next statement takes it) or waits on our row lock and then fails.
_REAP_RESERVED = _sql("""
UPDATE send_log SET status = 'deferred', finished_at = :now, smtp_reply = 'lease expired before transmission'
WHERE claim_token = :token AND status = 'reserved'
  AND EXISTS (SELECT 1 FROM campaign_lead AS cl
              WHERE cl.id = send_log.enrollment_id AND cl.claim_token = :token AND cl.status = 'sending'
                AND cl.lease_expires_at < :now)
""")

# Safe: a transmission may have reached the recipient; it becomes `unknown`, never retried by itself.
_REAP_TRANSMITTING = _sql("""
UPDATE send_log SET status = 'unknown', finished_at = :now, smtp_reply = 'lease expired during transmission'
WHERE claim_token = :token AND status = 'transmitting'
  AND EXISTS (SELECT 1 FROM campaign_lead AS cl
              WHERE cl.id = send_log.enrollment_id AND cl.claim_token = :token AND cl.status = 'sending'
                AND cl.lease_expires_at < :now)
""")

# Safe: CAS on the token and the expired lease; a holder that recorded meanwhile wins.
_REAP_ENROLLMENT = _sql("""
UPDATE campaign_lead
SET status = CAST(:status AS VARCHAR(16)), reason = :reason,
    claim_token = CASE WHEN CAST(:status AS VARCHAR(16)) = 'queued' THEN NULL ELSE claim_token END,
    claimed_by = CASE WHEN CAST(:status AS VARCHAR(16)) = 'queued' THEN NULL ELSE claimed_by END,
    lease_expires_at = NULL, next_attempt_at = :now, updated_at = :now
WHERE id = :enrollment_id AND claim_token = :token AND status = 'sending' AND lease_expires_at < :now
""")


# Safe: locks the claim for the reap's transaction, so the holder's renewal (or record) either committed
# before (and the claim is no longer expired) or waits and then finds it settled; never half of each.
_LOCK_EXPIRED = """
SELECT 1 FROM campaign_lead
WHERE id = :enrollment_id AND claim_token = :token AND status = 'sending' AND lease_expires_at < :now{lock}
"""
# SQLite: the reap's BEGIN IMMEDIATE already excludes every other writer.
_LOCK_EXPIRED_BY_DIALECT = {
    "postgresql": _sql(_LOCK_EXPIRED.format(lock=" FOR UPDATE")),
    "sqlite": _sql(_LOCK_EXPIRED.format(lock="")),
}

# Safe: CAS on the holder's token and a live lease only: an expired claim may already be the reaper's,
# and stays expired.
_RENEW_LEASE = _sql("""
UPDATE campaign_lead SET lease_expires_at = :lease_until
WHERE id = :enrollment_id AND claim_token = :token AND status = 'sending' AND lease_expires_at > :now
""")


def renew_leases(conn: Connection, claims: Iterable[Claimed], *, now: datetime, lease_until: datetime) -> int:
    """Extend the leases of claims this sender still holds; returns how many were still live."""
    renewed = 0
    for c in claims:
        params = {"enrollment_id": c.enrollment_id, "token": c.token, "now": now, "lease_until": lease_until}
        renewed += _RENEW_LEASE.run(conn, params).rowcount
    return renewed


@dataclass(frozen=True)
class Reaped:
    requeued: int
    unknown: int


def expired_claims(conn: Connection, *, now: datetime, limit: int = 200) -> list[tuple[int, str]]:
    return [(r[0], r[1]) for r in _EXPIRED.run(conn, {"now": now, "limit": limit}).all()]


def reap_one(conn: Connection, *, enrollment_id: int, token: str, now: datetime) -> EnrollmentStatus | None:
    """Settle one expired claim: back to queued if never transmitted, else unknown."""
    if (
        not _LOCK_EXPIRED_BY_DIALECT[conn.dialect.name]
        .run(conn, {"enrollment_id": enrollment_id, "token": token, "now": now})
        .all()
    ):
        return None  # renewed, recorded or reaped by someone else since it was listed
    _REAP_RESERVED.run(conn, {"token": token, "now": now})
    transmitted = _REAP_TRANSMITTING.run(conn, {"token": token, "now": now}).rowcount > 0
    status = EnrollmentStatus.UNKNOWN if transmitted else EnrollmentStatus.QUEUED
    reason = "lease_expired_during_transmission" if transmitted else None
    params = {
        "status": status.value,
        "reason": reason,
        "now": now,
        "enrollment_id": enrollment_id,
        "token": token,
    }
    return status if _REAP_ENROLLMENT.run(conn, params).rowcount == 1 else None


# --- The DB lock: leased sender slots -------------------------------------------------------------

_ENSURE_SLOT = _sql("INSERT INTO sender_slot (slot) VALUES (:slot) ON CONFLICT DO NOTHING")

# Safe: compare-and-set on a free, expired or already-own slot.
_TAKE_SLOT = _sql("""
UPDATE sender_slot SET instance_id = :instance, lease_expires_at = :until
WHERE slot = :slot AND (instance_id IS NULL OR instance_id = :instance OR lease_expires_at < :now)
""")

_RELEASE_SLOT = _sql(
    "UPDATE sender_slot SET instance_id = NULL, lease_expires_at = NULL WHERE slot = :slot AND instance_id = :instance"
)


def take_slot(conn: Connection, *, slots: int, instance: str, now: datetime, until: datetime) -> int | None:
    """Hold (or renew) one of `slots` DB-lock slots; None means stand by."""
    for slot in range(slots):
        _ENSURE_SLOT.run(conn, {"slot": slot})
    held = conn.execute(
        text("SELECT slot FROM sender_slot WHERE instance_id = :instance AND slot < :slots ORDER BY slot"),
        {"instance": instance, "slots": slots},
    ).first()
    order = ([held[0]] if held else []) + list(range(slots))
    for slot in order:
        if (
            _TAKE_SLOT.run(conn, {"slot": slot, "instance": instance, "now": now, "until": until}).rowcount
            == 1
        ):
            return slot
    return None


def release_slot(conn: Connection, *, slot: int, instance: str) -> None:
    _RELEASE_SLOT.run(conn, {"slot": slot, "instance": instance})
