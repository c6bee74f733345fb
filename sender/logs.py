"""Logging: one line per enrollment outcome and per busy tick, as text or JSON (`--log-format`);
at DEBUG also every intermediate step of a send (`reserved`, `transmitting`).

JSON lines are one object each: `ts` (UTC, ISO 8601), `level`, `logger`, `event`, then the structured
fields given with `extra=` (campaign, enrollment_id, instance, attempt, outcome, smtp_code, ...).
Recipient addresses are masked (`a***@example.com`) unless `--log-recipients`; the passwords of the
configured URLs are scrubbed from every line as a last resort (they are never logged on purpose).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from sender.claim import Claimed, LeadData
    from sender.sending import PassStats, Reservation
    from sender.transport import SendResult

log = logging.getLogger("sendguard.sender")

# Attributes every LogRecord has: anything else on a record came from `extra=` and is a field.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "sendguard_log_context", default=None
)
_show_recipients = False
_secrets: tuple[str, ...] = ()
_campaign_names: dict[int, str] = {}  # id -> name, learnt at claim time, for lines that only know the id


# --- masking -------------------------------------------------------------------------------------


def mask_email(address: str) -> str:
    """`alice@example.com` -> `a***@example.com`: enough to tell leads apart in an incident, not to
    harvest the list from the logs. Anything that is not an address is masked whole."""
    local, at, domain = address.rpartition("@")
    if not at or not domain:
        return "***"
    return f"{local[:1]}***@{domain}" if local else f"***@{domain}"


def recipient(address: str) -> str:
    return address if _show_recipients else mask_email(address)


def scrub(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


# --- context -------------------------------------------------------------------------------------


def bind(**fields: Any) -> None:
    """Fields added to every later line of this thread (the sender binds its instance id)."""
    _context.set({**(_context.get() or {}), **fields})


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")}


# --- formatters ----------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name, value in _fields(record).items():
            out.setdefault(name, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        scrubbed = {k: scrub(v) if isinstance(v, str) else v for k, v in out.items()}
        return scrub(json.dumps(scrubbed, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """The classic line, then the structured fields as key=value (quoted when they hold spaces)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second, self._stamp = -1, ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        # The stdlib formats the same second afresh for every line (strftime + localtime): a tenth of
        # a busy sender's logging. Same text, built once a second.
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, super().formatTime(record, datefmt).rpartition(",")[0]
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        return scrub(f"{line} {extras}" if extras else line)


_NEEDS_QUOTES = re.compile(r"[\s\"'=]")


def _text_value(value: Any) -> str:
    if type(value) is int:  # most fields: ids, counts, codes
        return str(value)
    text = str(value)
    if text == "" or _NEEDS_QUOTES.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a line is logged (as logging.lastResort does), not the
    stream of the moment it was configured: in-process callers (tests) swap sys.stderr."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr


def configure(
    *,
    level: str = "INFO",
    fmt: str = "text",
    show_recipients: bool = False,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install one stderr handler in the chosen format on the root logger (replacing our earlier one)."""
    global _show_recipients, _secrets
    _context.set({})  # a fresh configuration starts without an earlier service's bound fields
    _show_recipients = show_recipients
    _secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    handler._sendguard = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_sendguard", False):  # ours from an earlier call; others' (pytest's) stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Neither format shows the caller's file, thread or process; not collecting them is the stdlib's
    # documented optimization (Logging HOWTO, Optimization) and a fifth of a busy sender's logging.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return handler


# --- the sender's lines (one call per state transition, so sending.py and service.py stay readable) --

# The intermediate steps of a send (`reserved`, `transmitting`) log at DEBUG; INFO keeps one line per
# enrollment, its outcome. Three lines a message were a third of a busy sender's CPU, and at several
# hundred messages a second they alone outran journald's default rate limit (10,000 lines / 30 s).
STEP = logging.DEBUG


def _claim_fields(c: Claimed) -> dict[str, Any]:
    return {
        "campaign": _campaign_names.get(c.campaign_id, str(c.campaign_id)),
        "campaign_id": c.campaign_id,
        "enrollment_id": c.enrollment_id,
        "step": c.step,
        "attempt": c.attempts,
    }


def transition(event: str, c: Claimed, *, level: int = logging.INFO, **fields: Any) -> None:
    """One enrollment changed state: `event` is the new state (or what happened to it)."""
    log.log(level, event, extra={**_claim_fields(c), **fields})


def claimed(
    campaign: str,
    batch: Iterable[Claimed],
    leads: Mapping[int, LeadData],
    reservations: Iterable[Reservation],
) -> None:
    """After the claim transaction committed, one line per enrollment: `reserved` (claimed, with its
    send_log row: one transaction, so one transition; DEBUG, see `STEP`) or `skipped` (claimed and
    ended unsent: INFO, it is that enrollment's outcome)."""
    reserved = {r.claimed.enrollment_id: r for r in reservations}
    show_steps = log.isEnabledFor(STEP)
    for c in batch:
        _campaign_names[c.campaign_id] = campaign
        r = reserved.get(c.enrollment_id)
        if r is not None and not show_steps:
            continue
        lead = leads.get(c.lead_id)
        address = recipient(lead.email) if lead is not None else None
        if r is not None:
            transition("reserved", c, level=STEP, send_id=r.send_id, recipient=address)
        else:
            reason = "suppressed" if lead is not None and lead.suppressed else "duplicate_prevented"
            transition("skipped", c, reason=reason, recipient=address)


def outcome(r: Reservation, result: SendResult) -> None:
    """The attempt's result, recorded: sent, deferred, failed or unknown."""
    level = logging.INFO if result.outcome.value in ("sent", "deferred") else logging.WARNING
    transition(
        result.outcome.value, r.claimed, level=level, send_id=r.send_id, recipient=recipient(r.lead.email),
        outcome=result.outcome.value, smtp_code=result.code, phase=getattr(result, "phase", None),
    )  # fmt: skip


def reaped(enrollment_id: int, to: str) -> None:
    log.warning("reaped", extra={"enrollment_id": enrollment_id, "to": to})


def tick(stats: PassStats, *, slot: int | None, reaped_requeued: int = 0, reaped_unknown: int = 0) -> None:
    """One line per tick; idle ticks at DEBUG so a quiet sender's log stays quiet."""
    busy = stats.total or stats.released or reaped_requeued or reaped_unknown
    log.log(
        logging.INFO if busy else logging.DEBUG,
        "tick",
        extra={
            "sent": stats.sent, "failed": stats.failed, "deferred": stats.deferred, "unknown": stats.unknown,
            "skipped": stats.skipped, "released": stats.released, "reaped_requeued": reaped_requeued,
            "reaped_unknown": reaped_unknown, "slot": slot,
        },
    )  # fmt: skip
