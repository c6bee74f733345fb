"""scripts/chaos.py, the chaos soak: its invariant checker must be able to fail, its pieces must agree
with the product (Message-ID format, failpoint syntax, peer actions), and a short real run must pass."""

from __future__ import annotations

import collections
import importlib.util
import random
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sender import failpoints
from sender.message import message_id
from tests import smtp_peer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "chaos.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sendguard_chaos", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


chaos = _load()

K1, K2, K3 = (1, 10, 0), (1, 11, 0), (1, 12, 0)


def _observed(**overrides: object):
    """A clean soak: K1 and K2 delivered once and recorded sent, K3 failed and never delivered."""
    values: dict[str, object] = dict(
        peer=collections.Counter({K1: 1, K2: 1}),
        foreign=0,
        enrollments={K1: "sent", K2: "sent", K3: "failed"},
        sent_rows=collections.Counter({K1: 1, K2: 1}),
        in_flight_rows=0,
        ambiguous=0,
    )
    values.update(overrides)
    return chaos.Observed(**values)


def test_check_passes_a_clean_soak() -> None:
    verdict = chaos.check(_observed())
    assert verdict.ok, verdict.violations
    assert (verdict.duplicates, verdict.lost, verdict.stuck, verdict.unknown) == (0, 0, 0, 0)


def test_check_fails_on_a_duplicate_at_the_peer() -> None:
    verdict = chaos.check(_observed(peer=collections.Counter({K1: 2, K2: 1})))
    assert not verdict.ok
    assert verdict.duplicates == 1
    assert any("duplicate" in v and "c1.l10.s0" in v for v in verdict.violations), verdict.violations


def test_check_fails_on_two_sent_rows_for_one_key() -> None:
    verdict = chaos.check(_observed(sent_rows=collections.Counter({K1: 2, K2: 1})))
    assert not verdict.ok and verdict.duplicates == 1


def test_check_fails_on_a_foreign_message() -> None:
    verdict = chaos.check(_observed(foreign=1))
    assert not verdict.ok and verdict.duplicates == 1


def test_check_fails_on_a_delivery_recorded_as_failed() -> None:
    """The peer accepted K3 but the database says failed: lost (a resend or a wrong report follows)."""
    verdict = chaos.check(_observed(peer=collections.Counter({K1: 1, K2: 1, K3: 1})))
    assert not verdict.ok
    assert verdict.lost == 1
    assert any("lost" in v and "c1.l12.s0" in v for v in verdict.violations), verdict.violations


def test_check_fails_on_a_sent_record_the_peer_never_got() -> None:
    verdict = chaos.check(_observed(peer=collections.Counter({K1: 1})))
    assert not verdict.ok and verdict.lost == 1
    assert any("never reached the peer" in v for v in verdict.violations)


def test_check_fails_on_enrollments_left_in_flight() -> None:
    verdict = chaos.check(_observed(enrollments={K1: "sent", K2: "sent", K3: "queued"}, in_flight_rows=1))
    assert not verdict.ok
    assert verdict.stuck == 2


def test_check_fails_on_more_unknowns_than_ambiguous_events() -> None:
    enrollments = {K1: "unknown", K2: "unknown", K3: "failed"}
    assert chaos.check(_observed(enrollments=enrollments, sent_rows=collections.Counter(), ambiguous=2)).ok
    verdict = chaos.check(_observed(enrollments=enrollments, sent_rows=collections.Counter(), ambiguous=1))
    assert not verdict.ok and verdict.unknown == 2
    assert any("unknown" in v for v in verdict.violations)


def test_check_fails_when_the_campaign_was_paused() -> None:
    verdict = chaos.check(_observed(campaign_status="paused", last_event="auto_paused breaker:unknowns"))
    assert not verdict.ok
    assert any("breaker:unknowns" in v for v in verdict.violations)


def test_message_id_parser_reads_the_senders_message_ids() -> None:
    mid = message_id(7, 12345, 2, "Ana <ana@example.com>")
    assert chaos.parse_message_id(mid) == (7, 12345, 2)
    assert chaos.parse_message_id("<something@else.example>") is None


def test_random_failpoints_are_valid_specs() -> None:
    rng = random.Random(1)
    specs = [chaos.random_failpoints(rng, lease=3.0) for _ in range(300)]
    names = set()
    for spec in specs:
        actions = failpoints.parse(spec)  # raises on anything the sender would refuse (exit 2)
        names |= set(actions)
    assert names == set(failpoints.NAMES)  # every protocol step gets exercised
    assert set(chaos.POST_GATE) < set(failpoints.NAMES)


def test_peer_faults_are_actions_the_peer_knows() -> None:
    assert set(chaos.RCPT_FAULTS) | set(chaos.DATA_FAULTS) <= set(smtp_peer.ACTIONS)
    faults = chaos.Faults(random.Random(3))
    seen = [faults("lead@example.com", phase, 1) for phase in ("rcpt", "data_end") for _ in range(2000)]
    assert faults.total() == sum(1 for a in seen if a is not None) > 0
    faults.on = False
    assert faults("lead@example.com", "data_end", 1) is None


def test_bad_arguments_exit_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--backend", "mysql"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "--backend" in result.stderr


LINE = re.compile(
    r"^chaos backend=sqlite pipelining=no senders=3 leads=300 duration=12s .* sent=(\d+) failed=(\d+) skipped=(\d+)"
    r" unknown=(\d+) accepted=(\d+) .* lives=(\d+) kills=(\d+) .* duplicates=0 lost=0 stuck=0 result=PASS$"
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_soak_on_sqlite_passes() -> None:
    """A real, short soak: senders SIGKILLed and crashing at failpoints against a faulty peer."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--backend", "sqlite", "--senders", "3", "--leads", "300",
         "--duration", "12", "--seed", "4242", "--kill-every", "1"],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # no violation lines: only the figures
    m = LINE.match(lines[0])
    assert m, lines[0]
    sent, failed, skipped, unknown, accepted, lives, kills = map(int, m.groups())
    assert sent + failed + skipped + unknown == 300  # every enrollment terminal
    assert sent <= accepted <= sent + unknown  # what the peer got is recorded sent or unknown
    assert kills >= 1  # the soak did kill working senders
    assert lives >= 6  # the chaos fleet and the calm fleet both ran
