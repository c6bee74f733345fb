"""Campaigns (sender/campaigns.py): variant assignment, state transitions and their audit trail,
and `campaign create --update` (in-process, against both backends where a database is involved)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, text

from models import Campaign, CampaignEvent, CampaignLead, Variant
from sender import campaigns
from sender.campaign_file import parse_campaign
from sender.campaigns import assign_variant
from sender.db import make_engine
from sender.enroll import import_leads
from sender.errors import UsageError
from tests.conftest import ROOT

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
EMAILS = [f"person{i:05d}@example.com" for i in range(10_000)]


# --- variant assignment (pure) -------------------------------------------------------------------


def test_weighted_assignment_splits_in_proportion_to_the_weights() -> None:
    counts = Counter(assign_variant("spring", e, [("A", 1), ("B", 3)]) for e in EMAILS)
    assert set(counts) == {"A", "B"}
    # Expected 2,500 A; a binomial standard deviation is ~43, so +-200 is over 4.5 sigma (and the
    # assignment is deterministic, so this can never flake).
    assert abs(counts["A"] - 2_500) <= 200, counts

    three = Counter(assign_variant("spring", e, [("A", 2), ("B", 1), ("C", 1)]) for e in EMAILS)
    assert abs(three["A"] - 5_000) <= 250 and abs(three["B"] - 2_500) <= 200, three
    assert abs(three["C"] - 2_500) <= 200, three


def test_assignment_is_a_function_of_campaign_and_email_only() -> None:
    weights = [("A", 1), ("B", 3)]
    first = [assign_variant("spring", e, weights) for e in EMAILS[:2_000]]
    assert [assign_variant("spring", e, weights) for e in EMAILS[:2_000]] == first
    # The order the variants are listed in does not matter.
    assert [assign_variant("spring", e, list(reversed(weights))) for e in EMAILS[:2_000]] == first
    # The campaign is part of the seed: another campaign reshuffles (or one variant would always
    # get the same people in every campaign).
    other = [assign_variant("autumn", e, weights) for e in EMAILS[:2_000]]
    assert sum(a != b for a, b in zip(first, other, strict=True)) > 300
    assert {assign_variant("spring", e, [("A", 5)]) for e in EMAILS[:100]} == {"A"}


def test_assignment_is_stable_across_processes() -> None:
    """No per-process salt (Python's hash() is randomized per process): every sender agrees."""
    sample = EMAILS[:200]
    here = "".join(assign_variant("spring", e, [("A", 1), ("B", 3)]) for e in sample)
    code = (
        "import sys; from sender.campaigns import assign_variant; "
        "emails = sys.stdin.read().split(); "
        "print(''.join(assign_variant('spring', e, [('A', 1), ('B', 3)]) for e in emails))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        input="\n".join(sample),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=60,
    ).stdout.strip()
    assert other == here


# --- with a database -----------------------------------------------------------------------------


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def spec_text(name: str, letters: dict[str, int]) -> str:
    parts = [f'name = "{name}"', 'from = "Ana <ana@example.com>"']
    for letter, weight in letters.items():
        parts.append(
            f'[[variants]]\nletter = "{letter}"\nweight = {weight}\n'
            f'subject = "Subject {letter}"\nbody = "Hello {{{{ email }}}} from {letter}"'
        )
    return "\n".join(parts) + "\n"


def create(engine: Engine, name: str, letters: dict[str, int], *, update: bool = False) -> str:
    spec = parse_campaign(spec_text(name, letters), f"{name}.toml")
    return campaigns.create_or_update(engine, spec, update_existing=update, now=T0)


def enroll(engine: Engine, name: str, emails: list[str]) -> None:
    data = ("email\n" + "\n".join(emails) + "\n").encode()
    assert import_leads(engine, name, data, source="t.csv", now=T0).enrolled == len(emails)


def test_enrollment_stores_the_deterministic_weighted_variant(engine: Engine) -> None:
    create(engine, "weighted", {"A": 1, "B": 3})
    emails = EMAILS[:800]
    enroll(engine, "weighted", emails)
    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                text(
                    "SELECT l.email, cl.variant_letter FROM campaign_lead AS cl JOIN lead AS l ON l.id = cl.lead_id"
                )
            ).all()
        )
    assert stored == {e: assign_variant("weighted", e, [("A", 1), ("B", 3)]) for e in emails}
    share_a = Counter(stored.values())["A"] / len(emails)
    assert 0.19 <= share_a <= 0.31, share_a


def events(engine: Engine, name: str) -> list[tuple[str, str, str | None]]:
    e = CampaignEvent.__table__.c
    with engine.connect() as conn:
        c = Campaign.__table__.c
        campaign_id = conn.execute(select(c.id).where(c.name == name)).scalar_one()
        rows = conn.execute(
            select(e.kind, e.actor, e.reason).where(e.campaign_id == campaign_id).order_by(e.id)
        )
        return [(kind, actor, reason) for kind, actor, reason in rows]


def campaign_row(engine: Engine, name: str) -> dict[str, object]:
    with engine.connect() as conn:
        return dict(
            conn.execute(select(Campaign.__table__).where(Campaign.__table__.c.name == name)).one()._mapping
        )


def test_transitions_are_compare_and_set_and_leave_an_audit_trail(engine: Engine) -> None:
    create(engine, "audited", {"A": 1})
    enroll(engine, "audited", ["one@example.com"])

    with pytest.raises(UsageError, match="draft"):
        campaigns.pause(engine, "audited", actor="ops:alice", reason="too early", now=T0)
    with pytest.raises(UsageError, match="draft"):
        campaigns.resume(engine, "audited", actor="ops:alice", reason=None, now=T0)
    assert campaigns.start(engine, "audited", actor="ops:alice", reason="launch", now=T0).status == "active"

    paused_at = T0 + timedelta(minutes=5)
    paused = campaigns.pause(engine, "audited", actor="ops:bob", reason="complaint from ACME", now=paused_at)
    assert paused.status == "paused"
    row = campaign_row(engine, "audited")
    assert (row["status"], row["pause_reason"], row["paused_by"]) == (
        "paused",
        "complaint from ACME",
        "ops:bob",
    )
    assert row["paused_at"] == paused_at
    # Pausing a paused campaign is a no-op: no second event, the first reason kept.
    campaigns.pause(
        engine, "audited", actor="ops:carol", reason="again", now=paused_at + timedelta(minutes=1)
    )
    assert campaign_row(engine, "audited")["paused_by"] == "ops:bob"

    campaigns.resume(engine, "audited", actor="ops:alice", reason="fixed", now=T0 + timedelta(minutes=9))
    row = campaign_row(engine, "audited")
    assert (row["status"], row["pause_reason"], row["paused_by"], row["paused_at"]) == (
        "active",
        None,
        None,
        None,
    )
    campaigns.pause(
        engine, "audited", actor="sender:x", reason="bounce rate", now=T0 + timedelta(minutes=10), auto=True
    )

    assert events(engine, "audited") == [
        ("started", "ops:alice", "launch"),
        ("paused", "ops:bob", "complaint from ACME"),
        ("resumed", "ops:alice", "fixed"),
        ("auto_paused", "sender:x", "bounce rate"),
    ]
    with pytest.raises(UsageError, match="no campaign named 'ghost'"):
        campaigns.pause(engine, "ghost", actor="ops:alice", reason=None, now=T0)


def test_update_refuses_to_drop_a_variant_in_use(engine: Engine) -> None:
    assert create(engine, "ab", {"A": 1, "B": 1}) == "created"
    with pytest.raises(UsageError, match="already exists"):
        create(engine, "ab", {"A": 1, "B": 1})
    enroll(engine, "ab", EMAILS[:40])  # 40 leads at 50/50: both letters are in use
    with engine.connect() as conn:
        used = set(conn.execute(select(CampaignLead.__table__.c.variant_letter).distinct()).scalars())
    assert used == {"A", "B"}

    with pytest.raises(UsageError, match=r"variant\(s\) B .*cannot be removed"):
        create(engine, "ab", {"A": 1}, update=True)
    assert variants(engine) == {("A", 1), ("B", 1)}, "a refused update changes nothing"

    assert create(engine, "ab", {"A": 2, "B": 1, "C": 1}, update=True) == "updated"
    assert variants(engine) == {("A", 2), ("B", 1), ("C", 1)}
    assert create(engine, "ab", {"A": 1, "B": 1}, update=True) == "updated", "C is unused: may go"
    assert variants(engine) == {("A", 1), ("B", 1)}
    with engine.connect() as conn:
        after = set(conn.execute(select(CampaignLead.__table__.c.variant_letter).distinct()).scalars())
    assert after == {"A", "B"}, "enrolled leads keep their variant"


def variants(engine: Engine) -> set[tuple[str, int]]:
    v = Variant.__table__.c
    with engine.connect() as conn:
        return {(r.letter, r.weight) for r in conn.execute(select(v.letter, v.weight))}
