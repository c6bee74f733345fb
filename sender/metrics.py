"""Prometheus metrics for `sendguard run --metrics-port P` (prometheus-client).

The sender calls the hooks below from its hot path; each is one attribute check when metrics are off
(the default), so `sending.py` and `service.py` carry one-line calls and no conditionals.

Counters and histograms are this process's (a Prometheus server adds the instance label). Gauges of
the queue (depth per campaign, unknown sends pending review) describe the shared database: they are
read at scrape time from a read-only connection of their own, cached a few seconds so an eager scraper
cannot load the database, and every sender of a database reports the same values.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from sender.errors import UsageError
from sender.version import VERSION

log = logging.getLogger("sendguard.metrics")

DEFAULT_BIND = "127.0.0.1"
# A claim is one short transaction; SMTP spans a connection set-up to a slow DATA acknowledgement.
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SMTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_CACHE_SECONDS = 5.0


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.sends = Counter(
            "sendguard_sends",
            "Messages handed to SMTP, by campaign and outcome (sent, failed, deferred, unknown).",
            ["campaign", "outcome"],
            registry=registry,
        )
        self.guard = Counter(
            "sendguard_duplicates_prevented",
            "Reservations refused by the uq_send_log_live guard (a duplicate that never left).",
            ["campaign"],
            registry=registry,
        )
        self.reaped = Counter(
            "sendguard_leases_reaped",
            "Expired claims settled by this sender's reaper: requeued (never transmitted) or unknown.",
            ["result"],
            registry=registry,
        )
        self.claim_seconds = Histogram(
            "sendguard_claim_seconds",
            "Claim-and-reserve transaction time per batch.",
            buckets=CLAIM_BUCKETS,
            registry=registry,
        )
        self.smtp_seconds = Histogram(
            "sendguard_smtp_seconds",
            "SMTP transaction time per message, by outcome.",
            ["outcome"],
            buckets=SMTP_BUCKETS,
            registry=registry,
        )
        self.slot_held = Gauge(
            "sendguard_db_lock_active",
            "1 while this sender holds a DB-lock slot (active), 0 while it stands by.",
            registry=registry,
        )
        self.slot = Gauge(
            "sendguard_db_lock_slot", "The DB-lock slot held, -1 on standby.", registry=registry
        )
        self.file_lock = Gauge(
            "sendguard_file_lock_held", "1 while this process holds its lock file.", registry=registry
        )
        self.last_tick = Gauge(
            "sendguard_last_tick_timestamp_seconds",
            "Unix time of the last completed tick (alert when it stops moving).",
            registry=registry,
        )
        self.info = Info("sendguard_sender", "This sender process.", registry=registry)


_m: _Metrics | None = None


# --- hooks (no-ops while metrics are off) ----------------------------------------------------------


def transmitted(campaign: str, outcome: str, seconds: float) -> None:
    if _m is not None:
        _m.sends.labels(campaign, outcome).inc()
        _m.smtp_seconds.labels(outcome).observe(seconds)


def guard_fired(campaign: str) -> None:
    if _m is not None:
        _m.guard.labels(campaign).inc()


def reaped(requeued: int, unknown: int) -> None:
    if _m is not None:
        if requeued:
            _m.reaped.labels("requeued").inc(requeued)
        if unknown:
            _m.reaped.labels("unknown").inc(unknown)


@contextlib.contextmanager
def claim_timer() -> Iterator[None]:
    if _m is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        _m.claim_seconds.observe(time.perf_counter() - started)


def lock_state(slot: int | None) -> None:
    if _m is not None:
        _m.slot_held.set(0 if slot is None else 1)
        _m.slot.set(-1 if slot is None else slot)


def ticked() -> None:
    if _m is not None:
        _m.last_tick.set_to_current_time()


# --- the queue, read at scrape time ----------------------------------------------------------------


class QueueCollector(Collector):
    """Enrollment counts per campaign and state, from `sendguard status`'s own query."""

    def __init__(self, engine: Engine, cache_seconds: float = QUEUE_CACHE_SECONDS) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._at = -1e9
        self._campaigns: list[dict[str, Any]] = []
        self._up = 0

    def _refresh(self) -> None:
        from sender.status import status

        now = time.monotonic()
        if now - self._at < self.cache_seconds:
            return
        try:
            data = status(self.engine, now=datetime.now(UTC), lease_seconds=0)
            self._campaigns = list(data["campaigns"])  # type: ignore[call-overload]
            self._up = 1
        except Exception as exc:  # a scrape during a database outage reports it, never crashes
            log.warning("metrics: cannot read the queue (%s)", exc.__class__.__name__)
            self._up = 0
            self.engine.dispose()
        self._at = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            self._refresh()
            campaigns, up = self._campaigns, self._up
        yield GaugeMetricFamily("sendguard_database_up", "1 if the last queue read succeeded.", value=up)
        depth = GaugeMetricFamily(
            "sendguard_queue_depth",
            "Enrollments queued (due now or later), per campaign.",
            labels=["campaign"],
        )
        unknown = GaugeMetricFamily(
            "sendguard_unknown_pending",
            "Enrollments `unknown`, waiting for `sendguard review`, per campaign.",
            labels=["campaign"],
        )
        states = GaugeMetricFamily(
            "sendguard_enrollments", "Enrollments per campaign and state.", labels=["campaign", "state"]
        )
        for c in campaigns:
            counts: dict[str, int] = c["counts"]
            depth.add_metric([c["name"]], counts.get("queued", 0))
            unknown.add_metric([c["name"]], counts.get("unknown", 0))
            for state, n in counts.items():
                states.add_metric([c["name"], state], n)
        yield depth
        yield unknown
        yield states


# --- serving ---------------------------------------------------------------------------------------


def enable(engine: Engine | None = None, *, labels: dict[str, str] | None = None) -> CollectorRegistry:
    """Turn the hooks on with a fresh registry (the process's own, not prometheus_client's global one,
    so tests can enable it more than once)."""
    global _m
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    _m = _Metrics(registry)
    _m.info.info({"version": VERSION, **(labels or {})})
    if engine is not None:
        registry.register(QueueCollector(engine))
    return registry


def disable() -> None:
    global _m
    _m = None


def file_lock_held(held: bool) -> None:
    if _m is not None:
        _m.file_lock.set(1 if held else 0)


def _parse_port(raw: str | int) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise UsageError(f"metrics port {raw!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"metrics port {port} is out of range (0-65535; 0 picks a free port)")
    return port


def serve(
    port: int | None,
    bind: str | None,
    *,
    database_url: str,
    labels: dict[str, str] | None = None,
) -> int | None:
    """Start the /metrics endpoint if a port is given (flag, else SENDGUARD_METRICS_PORT); returns the
    bound port (useful with 0), or None when metrics stay off. Bind errors are bad input (exit 2)."""
    from sender.db import make_engine

    raw_port: str | int | None = port if port is not None else os.environ.get("SENDGUARD_METRICS_PORT")
    if raw_port is None or raw_port == "":
        return None
    number = _parse_port(raw_port)
    addr = bind or os.environ.get("SENDGUARD_METRICS_BIND") or DEFAULT_BIND
    try:
        loopback = ipaddress.ip_address(addr).is_loopback
    except ValueError:
        loopback = addr == "localhost"
    # A small pool of its own: a scrape never waits for, or takes, the sender's connections.
    engine = make_engine(database_url, readonly=True, pool_size=1)
    registry = enable(engine, labels=labels)
    try:
        server, _thread = start_http_server(number, addr=addr, registry=registry)
    except OSError as exc:
        disable()
        engine.dispose()
        raise UsageError(f"cannot serve metrics on {addr}:{number}: {exc.strerror or exc}") from None
    bound = int(server.server_port)
    if not loopback:
        log.warning(
            "metrics on %s:%d are readable by anyone who can reach it (no authentication)", addr, bound
        )
    log.info("metrics on http://%s:%d/metrics", addr if ":" not in addr else f"[{addr}]", bound)
    return bound
