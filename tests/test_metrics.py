"""sender/metrics.py in-process: hooks are no-ops when off and count when on; the queue gauges come from
the database at scrape time and survive an outage; bad ports are bad input."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text

from sender import metrics
from sender.db import make_engine
from sender.errors import UsageError
from tests.integration._sendguard import seed


@pytest.fixture(autouse=True)
def _metrics_off() -> Iterator[None]:
    metrics.disable()
    yield
    metrics.disable()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_hooks_do_nothing_while_metrics_are_off() -> None:
    metrics.transmitted("c", "sent", 0.1)
    metrics.guard_fired("c")
    metrics.reaped(1, 1)
    metrics.lock_state(0)
    metrics.ticked()
    with metrics.claim_timer():
        pass
    assert metrics._m is None


def test_hooks_count_once_enabled() -> None:
    registry = metrics.enable(labels={"instance": "i1"})
    metrics.transmitted("spring", "sent", 0.2)
    metrics.transmitted("spring", "sent", 0.3)
    metrics.transmitted("spring", "unknown", 31.0)
    metrics.guard_fired("spring")
    metrics.reaped(2, 1)
    metrics.reaped(0, 0)
    with metrics.claim_timer():
        pass
    metrics.lock_state(None)

    assert value(registry, "sendguard_sends_total", campaign="spring", outcome="sent") == 2
    assert value(registry, "sendguard_sends_total", campaign="spring", outcome="unknown") == 1
    assert value(registry, "sendguard_duplicates_prevented_total", campaign="spring") == 1
    assert value(registry, "sendguard_leases_reaped_total", result="requeued") == 2
    assert value(registry, "sendguard_leases_reaped_total", result="unknown") == 1
    assert value(registry, "sendguard_smtp_seconds_count", outcome="sent") == 2
    assert value(registry, "sendguard_smtp_seconds_bucket", outcome="unknown", le="30.0") == 0
    assert value(registry, "sendguard_smtp_seconds_bucket", outcome="unknown", le="60.0") == 1
    assert value(registry, "sendguard_claim_seconds_count") == 1
    assert value(registry, "sendguard_db_lock_active") == 0
    assert value(registry, "sendguard_db_lock_slot") == -1
    metrics.lock_state(3)
    assert value(registry, "sendguard_db_lock_active") == 1
    assert value(registry, "sendguard_db_lock_slot") == 3
    assert b'sendguard_sender_info{instance="i1"' in generate_latest(registry)


def test_queue_gauges_are_read_from_the_database(sqlite_url: str, tmp_path: Path) -> None:
    from sender.migrate import upgrade

    upgrade(sqlite_url)
    seed(sqlite_url, 5, workdir=tmp_path / "seed")
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE campaign_lead SET status = 'unknown' WHERE id IN (SELECT min(id) FROM campaign_lead)"
            )
        )
    collector = metrics.QueueCollector(make_engine(sqlite_url, readonly=True), cache_seconds=0)
    registry = CollectorRegistry()
    registry.register(collector)
    assert value(registry, "sendguard_database_up") == 1
    assert value(registry, "sendguard_queue_depth", campaign="it-campaign") == 4
    assert value(registry, "sendguard_unknown_pending", campaign="it-campaign") == 1
    assert value(registry, "sendguard_enrollments", campaign="it-campaign", state="sent") == 0

    # The database goes away (here: its file is replaced by garbage): the scrape still answers.
    engine.dispose()
    collector.engine.dispose()
    db_file = Path(sqlite_url.removeprefix("sqlite:///"))
    for companion in (db_file, Path(f"{db_file}-wal"), Path(f"{db_file}-shm")):
        companion.unlink(missing_ok=True)
    db_file.write_bytes(b"not a database" * 100)
    assert value(registry, "sendguard_database_up") == 0
    # The last good reading stays, rather than dropping to "empty queue" during an outage.
    assert value(registry, "sendguard_queue_depth", campaign="it-campaign") == 4


def test_the_cache_spares_the_database_from_eager_scrapers(sqlite_url: str) -> None:
    from sender.migrate import upgrade

    upgrade(sqlite_url)
    calls: list[int] = []
    collector = metrics.QueueCollector(make_engine(sqlite_url, readonly=True), cache_seconds=60)
    original = collector._refresh

    def counting() -> None:
        calls.append(1)
        original()

    collector._refresh = counting  # type: ignore[method-assign]
    list(collector.collect())
    at = collector._at
    list(collector.collect())
    assert collector._at == at  # the second scrape reused the first reading
    assert len(calls) == 2


@pytest.mark.parametrize("port", ["-1", "65536", "eighty"])
def test_bad_ports_are_bad_input(port: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGUARD_METRICS_PORT", port)
    with pytest.raises(UsageError, match="metrics port"):
        metrics.serve(None, None, database_url=sqlite_url)
    assert metrics._m is None


def test_a_port_in_use_is_bad_input(sqlite_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            metrics.serve(port, None, database_url=sqlite_url)
    assert metrics._m is None


def test_metrics_stay_off_without_a_port(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENDGUARD_METRICS_PORT", raising=False)
    assert metrics.serve(None, None, database_url=sqlite_url) is None
    assert metrics._m is None
