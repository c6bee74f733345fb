"""reports.py and `sendguard report duplicates`, on SQLite and PostgreSQL (db_url).

(a) the SEED.md incident replayed from an imported Prisma SendLog export, through the CLI;
(b) the live send_log: address, cross-campaign and prevented duplicates, totals, drill-down, timeline,
    campaign overview;
(c) epoch-aligned buckets and sender instances per bucket;
(d) bounded results: every report returns buckets, top-N or LIMITed rows, never the log itself.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert

import reports
from models import Campaign, CampaignEvent, CampaignLead, Lead, SendLog
from sender.db import make_engine
from sender.errors import UsageError
from sender.sendlog_import import import_sendlog

DAY = datetime(2024, 3, 12, tzinfo=UTC)
T0 = DAY.replace(hour=10)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def _ok(result, what: str):  # type: ignore[no-untyped-def]
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


# --------------------------------------------------------------------------------------------------
# (a) SEED.md replay: 20 sends to 20 leads until 11:40, then 16 leads sent twice (32 sends)
# --------------------------------------------------------------------------------------------------


def _seed_rows(with_hosts: bool = False) -> list[list[str]]:
    """The incident as a Prisma SendLog export: id, campaignId, leadId, variantLetter, createdAt."""
    campaign = "clt5k2x9c0000cmpgn0000001"
    rows: list[list[str]] = []

    def add(lead: str, variant: str, at: datetime, host: str, iso_z: bool = False) -> None:
        # Prisma/psql write `2024-03-12 11:40:03.123`; JSON exports write ISO with Z: mix both.
        text = (
            at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            if iso_z
            else at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        )
        row = [f"clsendlog{len(rows):05d}", campaign, lead, variant, text]
        rows.append(row + [host] if with_hosts else row)

    # Until 11:40: manual, irregular sends, one process: 20 emails to 20 unique leads (10:00-11:35).
    for i in range(20):
        add(
            f"cllead{i:04d}", "AB"[i % 2], T0 + timedelta(minutes=5 * i, seconds=7), "web-1", iso_z=i % 3 == 0
        )
    # From 11:40: cron, two processes racing: 16 leads, each sent twice a few seconds apart; half of
    # the second copies picked the other A/B variant (the hole in the original unique key).
    for i in range(16):
        lead = f"cllead{100 + i:04d}"
        first = T0.replace(hour=11, minute=40) + timedelta(minutes=2 * i, seconds=3)
        variant = "AB"[i % 2]
        second_variant = variant if i < 8 else {"A": "B", "B": "A"}[variant]
        add(lead, variant, first, "web-1", iso_z=i % 2 == 0)
        add(lead, second_variant, first + timedelta(seconds=2, milliseconds=250), "web-2")
    return rows


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


PRISMA_HEADER = ["id", "campaignId", "leadId", "variantLetter", "createdAt"]


def test_seed_incident_replay_through_the_cli(sendguard_env, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    export = _write_csv(tmp_path / "SendLog.csv", PRISMA_HEADER, _seed_rows())
    imported = _ok(
        cli(["sendlog", "import", str(export), "--label", "seed", "--json"], sendguard_env), "import"
    )
    result = json.loads(imported.stdout)
    assert result["imported"] == 52 and result["rejected"] == [], result
    assert result["ignored_columns"] == ["id"]

    out = _ok(cli(["report", "duplicates", "--imported", "seed", "--json"], sendguard_env), "report")
    report = json.loads(out.stdout)
    assert set(report) == {
        "total_sends", "unique_keys", "duplicate_sends", "affected_leads", "onset", "by_kind", "buckets",
    }  # fmt: skip
    assert report["total_sends"] == 52
    assert report["unique_keys"] == 36
    assert report["duplicate_sends"] == 16
    assert report["affected_leads"] == 16
    assert report["onset"] == "2024-03-12T11:40:00+00:00"
    kinds = report["by_kind"]
    assert kinds["exact"] == {"duplicate_sends": 8, "affected_leads": 8}
    assert kinds["cross_variant"] == {"duplicate_sends": 8, "affected_leads": 8}
    for field in ("duplicate_sends", "affected_leads"):
        assert kinds["exact"][field] + kinds["cross_variant"][field] == report[field]
    for kind in ("address", "cross_campaign", "prevented"):
        assert kinds[kind] == {"duplicate_sends": 0, "affected_leads": 0}, kind

    buckets = {b["start"]: b for b in report["buckets"]}
    assert sum(b["sends"] for b in buckets.values()) == 52
    assert sum(b["duplicate_sends"] for b in buckets.values()) == 16
    before = [b for start, b in buckets.items() if start < "2024-03-12T11:40"]
    assert sum(b["sends"] for b in before) == 20 and all(b["duplicate_sends"] == 0 for b in before)
    assert buckets["2024-03-12T11:40:00+00:00"]["duplicate_sends"] > 0
    assert all(b["instances"] == 0 for b in buckets.values())  # a Prisma export records no process

    since = json.loads(
        _ok(cli(["report", "duplicates", "--imported", "seed", "--since", "2024-03-12T11:40", "--json"],
                sendguard_env), "report --since").stdout
    )  # fmt: skip
    assert (since["total_sends"], since["duplicate_sends"]) == (32, 16)

    text = _ok(cli(["report", "duplicates", "--imported", "seed"], sendguard_env), "report (text)").stdout
    assert "onset: 2024-03-12T11:40:00+00:00" in text
    assert "duplicate sends 16, affected leads 16" in text
    assert any(line.split()[:3] == ["cross_variant", "8", "8"] for line in text.splitlines())


def test_seed_with_hosts_shows_two_instances_from_the_onset(engine: Engine) -> None:
    data = _write_bytes(PRISMA_HEADER + ["host"], _seed_rows(with_hosts=True))
    import_sendlog(engine, data, label="seed-hosts", source="seed.csv")
    summary = reports.duplicate_summary(engine, reports.Source.imported("seed-hosts"))
    assert (summary["total_sends"], summary["duplicate_sends"], summary["onset"]) == (
        52, 16, "2024-03-12T11:40:00+00:00",
    )  # fmt: skip
    instances = {b["start"][11:16]: b["instances"] for b in summary["buckets"]}
    assert all(n == 1 for start, n in instances.items() if start < "11:40"), instances
    assert all(n == 2 for start, n in instances.items() if start >= "11:40"), instances

    by_instance = reports.duplicates_by_instance(engine, reports.Source.imported("seed-hosts"))
    assert dict(zip(by_instance["instance"], by_instance["duplicate_sends"], strict=True)) == {
        "web-2": 16,
        "web-1": 0,
    }

    details = reports.duplicate_details(engine, reports.Source.imported("seed-hosts"), kind="cross_variant")
    assert len(details) == 16 and details["group"].nunique() == 8
    assert details["is_duplicate"].sum() == 8
    assert set(details.loc[details["is_duplicate"], "instance"]) == {"web-2"}
    assert list(details.columns) == reports.DETAIL_COLUMNS
    exact = reports.duplicate_details(engine, reports.Source.imported("seed-hosts"), kind="exact", limit=6)
    assert len(exact) == 6 and list(exact["copy"]) == [1, 2, 1, 2, 1, 2]
    # Each exact group's copies carry one variant; each cross_variant group two.
    assert (exact.groupby("group")["variant"].nunique() == 1).all()
    assert (details.groupby("group")["variant"].nunique() == 2).all()


def test_a_time_range_counts_only_the_sends_inside_it(engine: Engine) -> None:
    """[since, until) narrows every kind to the sends in it: a key whose first copy falls before `since`
    is not a duplicate inside the range (the dashboard's live default is a recent range)."""
    data = _write_bytes(PRISMA_HEADER + ["host"], _seed_rows(with_hosts=True))
    import_sendlog(engine, data, label="seed-range", source="seed.csv")
    src = reports.Source.imported("seed-range")
    onset = T0.replace(hour=11, minute=40)

    after = reports.duplicate_summary(engine, src, since=onset)
    assert (after["total_sends"], after["duplicate_sends"], after["affected_leads"], after["onset"]) == (
        32, 16, 16, "2024-03-12T11:40:00+00:00",
    )  # fmt: skip
    before = reports.duplicate_summary(engine, src, until=onset)
    assert (before["total_sends"], before["duplicate_sends"], before["onset"]) == (20, 0, None)
    # 11:40:04 falls between the first lead's copies (11:40:03 and 11:40:05.25): its second copy is the
    # only send of its key inside the range, so it is not counted; the other 15 keys are.
    cut = reports.duplicate_summary(engine, src, since=onset + timedelta(seconds=4))
    assert (cut["total_sends"], cut["duplicate_sends"], cut["affected_leads"]) == (31, 15, 15)
    assert cut["by_kind"]["exact"]["affected_leads"] + cut["by_kind"]["cross_variant"]["affected_leads"] == 15
    # The other reports of the page agree with the summary over the same range.
    by_instance = reports.duplicates_by_instance(engine, src, since=onset + timedelta(seconds=4))
    assert int(by_instance["sends"].sum()) == 31 and int(by_instance["duplicate_sends"].sum()) == 15
    details = reports.duplicate_details(engine, src, "any", since=onset + timedelta(seconds=4))
    assert details["group"].nunique() == 15 and int(details["is_duplicate"].sum()) == 15
    assert (details["sent_at"] >= onset + timedelta(seconds=4)).all()
    empty = reports.duplicate_summary(engine, src, since=onset, until=onset)
    assert (empty["total_sends"], empty["buckets"]) == (0, [])


def test_parse_time() -> None:
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert reports.parse_time("24h", now) == now - timedelta(hours=24)
    assert reports.parse_time("7d", now) == now - timedelta(days=7)
    assert reports.parse_time("2026-11-29T08:00", now) == datetime(2026, 11, 29, 8, tzinfo=UTC)
    assert reports.parse_time("2026-11-29T08:00+01:00", now) == datetime(2026, 11, 29, 7, tzinfo=UTC)
    for bad in ("", "yesterday", "24x", "2026-13-01"):
        with pytest.raises(UsageError):
            reports.parse_time(bad, now)


def _write_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


def test_report_cli_usage_errors(sendguard_env, cli) -> None:  # type: ignore[no-untyped-def]
    for args, needle in (
        (["--bucket", "10x"], "--bucket"),
        (["--bucket", "0s"], "--bucket"),
        (["--imported", "nope"], "nope"),
        (["--campaign", "nope"], "nope"),
        (["--since", "yesterday"], "--since"),
        (["--until", "soon"], "--until"),
    ):
        result = cli(["report", "duplicates", *args], sendguard_env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_parse_bucket() -> None:
    assert [reports.parse_bucket(v) for v in ("30s", "10m", "1h", "1d", "90", "2H")] == [
        30, 600, 3600, 86_400, 90, 7200,
    ]  # fmt: skip
    for bad in ("", "m", "10x", "-5m", "0", "400d", "1.5h"):
        with pytest.raises(UsageError):
            reports.parse_bucket(bad)
    assert [reports.format_bucket(s) for s in (30, 600, 3600, 86_400, 90)] == [
        "30s",
        "10m",
        "1h",
        "1d",
        "90s",
    ]


# --------------------------------------------------------------------------------------------------
# (b) the live send_log
# --------------------------------------------------------------------------------------------------


class Live:
    """Raw Core inserts into campaign / lead / campaign_lead / send_log / campaign_event."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sends = 0

    def campaign(self, name: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                insert(Campaign.__table__).values(
                    name=name,
                    status="active",
                    from_addr="Ana <ana@example.com>",
                    daily_limit=100,
                    min_interval_seconds=30.0,
                    created_at=T0,
                    updated_at=T0,
                )  # fmt: skip
            ).inserted_primary_key[0]

    def lead(self, email: str) -> int:
        # Raw: the product stores normalized emails, but another tool (or a bug) may not.
        with self.engine.begin() as conn:
            return conn.execute(
                insert(Lead.__table__).values(email=email, created_at=T0)
            ).inserted_primary_key[0]

    def enroll(self, campaign_id: int, lead_id: int, step: int = 0, status: str = "sent") -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                insert(CampaignLead.__table__).values(
                    campaign_id=campaign_id,
                    lead_id=lead_id,
                    step=step,
                    variant_letter="A",
                    status=status,
                    next_attempt_at=T0,
                    created_at=T0,
                    updated_at=T0,
                )  # fmt: skip
            ).inserted_primary_key[0]

    def send(
        self, enrollment: tuple[int, int, int], *, minutes: float, status: str = "sent", variant: str = "A",
        step: int = 0, instance: str = "sg-1",
    ) -> None:  # fmt: skip
        campaign_id, lead_id, enrollment_id = enrollment
        self.sends += 1
        with self.engine.begin() as conn:
            conn.execute(
                insert(SendLog.__table__).values(
                    campaign_id=campaign_id,
                    lead_id=lead_id,
                    enrollment_id=enrollment_id,
                    step=step,
                    variant_letter=variant,
                    status=status,
                    claim_token=f"tok{self.sends}",
                    message_id=f"<m{self.sends}@example.com>",
                    instance_id=instance,
                    host=f"host-{instance}",
                    pid=1000 + self.sends,
                    created_at=T0 + timedelta(minutes=minutes),
                )  # fmt: skip
            )

    def event(self, campaign_id: int, kind: str, lead_id: int | None, minutes: float, instance: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(CampaignEvent.__table__).values(
                    campaign_id=campaign_id,
                    kind=kind,
                    actor=f"sender:{instance}",
                    reason="already sent",
                    lead_id=lead_id,
                    instance_id=instance,
                    created_at=T0 + timedelta(minutes=minutes),
                )  # fmt: skip
            )


@pytest.fixture
def live(engine: Engine) -> Live:
    """alpha and beta; ann@ reached through two lead records in alpha (an address duplicate) and again
    by beta; bob reached by alpha (steps 0 and 1) and beta; cy failed, deferred, then unknown."""
    db = Live(engine)
    alpha, beta = db.campaign("alpha"), db.campaign("beta")
    ann, ann2, bob, cy = (db.lead(e) for e in ("ann@example.com", " Ann@Example.COM ", "bob@example.com",
                                                "cy@example.com"))  # fmt: skip
    a_ann, a_ann2 = (alpha, ann, db.enroll(alpha, ann)), (alpha, ann2, db.enroll(alpha, ann2))
    a_bob0, a_bob1 = (alpha, bob, db.enroll(alpha, bob)), (alpha, bob, db.enroll(alpha, bob, step=1))
    a_cy = (alpha, cy, db.enroll(alpha, cy, status="unknown"))
    b_bob, b_ann, b_cy = (
        (beta, bob, db.enroll(beta, bob)), (beta, ann, db.enroll(beta, ann)),
        (beta, cy, db.enroll(beta, cy, status="sending")),
    )  # fmt: skip
    db.send(a_ann, minutes=0, instance="sg-1")
    db.send(a_bob0, minutes=1, instance="sg-1")
    db.send(a_cy, minutes=2, status="failed", instance="sg-1")
    db.send(a_cy, minutes=3, status="deferred", instance="sg-1")
    db.send(a_ann2, minutes=5, variant="B", instance="sg-2")
    db.send(a_cy, minutes=12, status="unknown", instance="sg-1")
    db.send(a_bob1, minutes=30, step=1, instance="sg-1")
    db.send(b_bob, minutes=40, variant="B", instance="sg-2")
    db.send(b_ann, minutes=41, instance="sg-2")
    db.send(b_cy, minutes=50, status="reserved", instance="sg-2")  # in flight: not a send yet
    db.event(alpha, "duplicate_prevented", ann, 6, "sg-2")
    db.event(alpha, "duplicate_prevented", ann, 7, "sg-1")
    db.event(alpha, "duplicate_prevented", bob, 7.5, "sg-2")
    db.event(beta, "paused", None, 45, "sg-2")  # other kinds are not prevented duplicates
    return db


def test_live_summary(engine: Engine, live: Live) -> None:
    summary = reports.duplicate_summary(engine)
    # 7 sends: sent or unknown; failed, deferred and reserved attempts are not sends.
    assert (summary["total_sends"], summary["unique_keys"]) == (7, 7)
    # The partial unique index makes a live key duplicate impossible.
    assert (summary["duplicate_sends"], summary["affected_leads"], summary["onset"]) == (0, 0, None)
    kinds = summary["by_kind"]
    assert kinds["exact"] == kinds["cross_variant"] == {"duplicate_sends": 0, "affected_leads": 0}
    assert kinds["address"] == {"duplicate_sends": 1, "affected_leads": 1}  # ann via two records
    assert kinds["cross_campaign"] == {"duplicate_sends": 2, "affected_leads": 2}  # beta -> ann, bob
    assert kinds["prevented"] == {"duplicate_sends": 3, "affected_leads": 2}
    assert summary["buckets"] == [
        {"start": "2024-03-12T10:00:00+00:00", "sends": 3, "duplicate_sends": 0, "instances": 2},
        {"start": "2024-03-12T10:10:00+00:00", "sends": 1, "duplicate_sends": 0, "instances": 1},
        {"start": "2024-03-12T10:30:00+00:00", "sends": 1, "duplicate_sends": 0, "instances": 1},
        {"start": "2024-03-12T10:40:00+00:00", "sends": 2, "duplicate_sends": 0, "instances": 1},
    ]

    alpha = reports.duplicate_summary(engine, campaign="alpha")
    assert (alpha["total_sends"], alpha["unique_keys"]) == (5, 5)
    assert alpha["by_kind"]["address"] == {"duplicate_sends": 1, "affected_leads": 1}
    assert alpha["by_kind"]["cross_campaign"] == {
        "duplicate_sends": 0,
        "affected_leads": 0,
    }  # alpha came first
    assert alpha["by_kind"]["prevented"] == {"duplicate_sends": 3, "affected_leads": 2}
    beta = reports.duplicate_summary(engine, campaign="beta")
    assert (beta["total_sends"], beta["unique_keys"]) == (2, 2)
    assert beta["by_kind"]["address"] == {"duplicate_sends": 0, "affected_leads": 0}
    assert beta["by_kind"]["cross_campaign"] == {"duplicate_sends": 2, "affected_leads": 2}
    assert beta["by_kind"]["prevented"] == {"duplicate_sends": 0, "affected_leads": 0}

    reports.check_source(engine, reports.LIVE, "alpha")
    with pytest.raises(UsageError, match="no campaign named 'gamma'"):
        reports.check_source(engine, reports.LIVE, "gamma")


def test_live_cli_json_matches_the_function(sendguard_env, cli, engine: Engine, live: Live) -> None:  # type: ignore[no-untyped-def]
    out = _ok(
        cli(["report", "duplicates", "--campaign", "alpha", "--bucket", "1h", "--json"], sendguard_env),
        "report",
    )
    assert json.loads(out.stdout) == reports.duplicate_summary(engine, campaign="alpha", bucket_seconds=3600)


def test_live_details(engine: Engine, live: Live) -> None:
    address = reports.duplicate_details(engine, kind="address")
    assert list(address["email"]) == ["ann@example.com", "ann@example.com"]
    assert list(address["lead"]) == ["ann@example.com", " Ann@Example.COM "]  # the records as stored
    assert list(address["is_duplicate"]) == [False, True]
    assert list(address["instance"]) == ["sg-1", "sg-2"]
    assert list(address["variant"]) == ["A", "B"]
    assert address["sent_at"].iloc[1] == T0 + timedelta(minutes=5)

    cross = reports.duplicate_details(engine, kind="cross_campaign")
    assert len(cross) == 6 and cross["group"].nunique() == 2
    ann = cross[cross["email"] == "ann@example.com"]
    assert list(ann["campaign"]) == ["alpha", "alpha", "beta"]
    assert list(ann["is_duplicate"]) == [False, False, True]
    bob = cross[cross["email"] == "bob@example.com"]
    assert list(zip(bob["campaign"], bob["step"], strict=True)) == [("alpha", 0), ("alpha", 1), ("beta", 0)]
    assert list(bob["is_duplicate"]) == [False, False, True]
    assert len(reports.duplicate_details(engine, kind="cross_campaign", limit=4)) == 4
    assert len(reports.duplicate_details(engine, kind="cross_campaign", campaign="alpha")) == 0
    assert len(reports.duplicate_details(engine, kind="cross_campaign", campaign="beta")) == 6

    prevented = reports.duplicate_details(engine, kind="prevented")
    assert len(prevented) == 3
    assert list(prevented["email"]) == [
        "bob@example.com",
        "ann@example.com",
        "ann@example.com",
    ]  # newest first
    assert list(prevented["instance"]) == ["sg-2", "sg-1", "sg-2"]
    assert reports.duplicate_details(engine, kind="any").empty
    assert reports.duplicate_details(engine, reports.Source.imported("x"), kind="prevented").empty
    with pytest.raises(UsageError):
        reports.duplicate_details(engine, kind="bogus")  # type: ignore[arg-type]


def test_sends_timeline_prevented_timeline_and_overview(engine: Engine, live: Live) -> None:
    timeline = reports.sends_timeline(engine, bucket_seconds=600)
    rows = {(b.strftime("%H:%M"), c, o): n for b, c, o, n in timeline.itertuples(index=False)}
    assert rows == {
        ("10:00", "alpha", "sent"): 3,
        ("10:00", "alpha", "failed"): 1,
        ("10:00", "alpha", "deferred"): 1,
        ("10:10", "alpha", "unknown"): 1,
        ("10:30", "alpha", "sent"): 1,
        ("10:40", "beta", "sent"): 2,
    }
    assert str(timeline["bucket"].dt.tz) == "UTC"
    window = reports.sends_timeline(
        engine, since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=40)
    )
    assert sorted(window["outcome"]) == ["sent", "unknown"]
    total = reports.sends_timeline(engine, bucket_seconds=3600, by="total")
    assert {(o, n) for _, c, o, n in total.itertuples(index=False) if c is None} == {
        ("sent", 6), ("failed", 1), ("deferred", 1), ("unknown", 1),
    }  # fmt: skip
    only_beta = reports.sends_timeline(engine, campaign="beta", bucket_seconds=3600)
    assert list(only_beta["sends"]) == [2]

    by_instance = reports.sends_timeline(engine, bucket_seconds=600, by="instance")
    first = by_instance[by_instance["bucket"] == T0].set_index("instance")
    assert first.loc["sg-1", "sends"] == 2 and first.loc["sg-1", "attempts"] == 4
    assert first.loc["sg-2", "sends"] == 1 and first.loc["sg-2", "host"] == "host-sg-2"

    prevented = reports.prevented_timeline(engine, bucket_seconds=600)
    assert list(prevented["prevented"]) == [1, 2] and list(prevented["instance"]) == ["sg-1", "sg-2"]

    overview = reports.campaign_overview(engine, now=T0 + timedelta(minutes=45)).set_index("name")
    assert overview.loc["alpha", "sends_last_hour"] == 5 and overview.loc["beta", "sends_last_hour"] == 2
    assert overview.loc["alpha", "sent"] == 4 and overview.loc["alpha", "unknown"] == 1
    assert overview.loc["beta", "sending"] == 1 and overview.loc["beta", "enrolled"] == 3
    assert (
        overview.loc["alpha", "daily_limit"] == 100 and overview.loc["alpha", "min_interval_seconds"] == 30.0
    )
    assert overview.loc["beta", "last_attempt_at"] == T0 + timedelta(minutes=50)
    later = reports.campaign_overview(engine, now=T0 + timedelta(minutes=100)).set_index("name")
    assert later.loc["alpha", "sends_last_hour"] == 0 and later.loc["beta", "sends_last_hour"] == 2


# --------------------------------------------------------------------------------------------------
# (c) bucket alignment and instances per bucket
# --------------------------------------------------------------------------------------------------


def test_buckets_are_epoch_aligned_with_instances(engine: Engine) -> None:
    header = ["campaign", "lead", "variant", "sent_at", "host", "pid"]
    rows = [
        ["c", "l1", "A", "2024-03-12 11:39:59.999999", "a", "1"],
        ["c", "l2", "A", "2024-03-12 11:40:00", "a", "1"],
        ["c", "l3", "A", "2024-03-12T13:40:00.001+02:00", "b", "2"],  # 11:40:00.001 UTC
        ["c", "l3", "B", "2024-03-12 11:49:59.5", "a", "7"],  # same host, another process
        ["c", "l4", "A", "2024-03-13 00:00:00", "a", "1"],
    ]
    import_sendlog(engine, _write_bytes(header, rows), label="align", source="align.csv")
    src = reports.Source.imported("align")

    def buckets(seconds: int) -> list[tuple[str, int, int, int]]:
        summary = reports.duplicate_summary(engine, src, bucket_seconds=seconds)
        return [(b["start"], b["sends"], b["duplicate_sends"], b["instances"]) for b in summary["buckets"]]

    assert buckets(600) == [
        ("2024-03-12T11:30:00+00:00", 1, 0, 1),
        ("2024-03-12T11:40:00+00:00", 3, 1, 3),  # a:1, b:2, a:7
        ("2024-03-13T00:00:00+00:00", 1, 0, 1),
    ]
    assert buckets(30) == [
        ("2024-03-12T11:39:30+00:00", 1, 0, 1),
        ("2024-03-12T11:40:00+00:00", 2, 0, 2),
        ("2024-03-12T11:49:30+00:00", 1, 1, 1),
        ("2024-03-13T00:00:00+00:00", 1, 0, 1),
    ]
    assert buckets(86_400) == [("2024-03-12T00:00:00+00:00", 4, 1, 3), ("2024-03-13T00:00:00+00:00", 1, 0, 1)]
    # 7 minutes does not divide an hour: alignment is to the Unix epoch, not to the hour.
    seven = 420
    expected = sorted({int(t.timestamp()) // seven * seven for t in (
        datetime(2024, 3, 12, 11, 39, 59, tzinfo=UTC), datetime(2024, 3, 12, 11, 40, tzinfo=UTC),
        datetime(2024, 3, 12, 11, 49, 59, tzinfo=UTC), datetime(2024, 3, 13, tzinfo=UTC),
    )})  # fmt: skip
    assert [b[0] for b in buckets(seven)] == [reports.iso_epoch(e) for e in expected]
    summary = reports.duplicate_summary(engine, src, bucket_seconds=seven)
    assert summary["onset"] == reports.iso_epoch(
        int(datetime(2024, 3, 12, 11, 49, 59, tzinfo=UTC).timestamp()) // seven * seven
    )


def test_imported_kinds_and_statuses(engine: Engine) -> None:
    header = ["campaign", "lead_id", "email", "variant", "sent_at", "status", "step"]
    rows = [
        ["c1", "L1", "ann@example.com", "A", "2024-03-12 10:00", "", "0"],
        ["c1", "L2", "ANN@example.com ", "A", "2024-03-12 10:01", "delivered", "0"],  # address duplicate
        ["c1", "L1", "ann@example.com", "A", "2024-03-12 10:02", "SENT", "1"],  # another step: fine
        ["c1", "L3", "bob@example.com", "A", "2024-03-12 10:03", "failed", "0"],  # not a send
        ["c1", "L3", "bob@example.com", "A", "2024-03-12 10:04", "bounced", "0"],  # not a send
        ["c1", "L3", "bob@example.com", "B", "2024-03-12 10:05", "success", "0"],
        ["c2", "L3", "bob@example.com", "A", "2024-03-12 10:06", "", "0"],  # cross-campaign
        ["c2", "L3", "bob@example.com", "A", "2024-03-12 10:07", "", "0"],  # + exact duplicate in c2
        ["c2", "L1", "ann@example.com", "B", "2024-03-12 09:00", "", "0"],  # c2 reached ann first
    ]
    import_sendlog(engine, _write_bytes(header, rows), label="kinds", source="kinds.csv")
    summary = reports.duplicate_summary(engine, reports.Source.imported("kinds"))
    assert (summary["total_sends"], summary["unique_keys"], summary["duplicate_sends"]) == (7, 6, 1)
    kinds = summary["by_kind"]
    assert kinds["exact"] == {"duplicate_sends": 1, "affected_leads": 1}
    assert kinds["address"] == {"duplicate_sends": 1, "affected_leads": 1}
    # ann: first c2 (09:00), then c1 three times (L1 step 0, L2, L1 step 1); bob: first c1, then c2 twice.
    assert kinds["cross_campaign"] == {"duplicate_sends": 5, "affected_leads": 2}
    assert kinds["prevented"] == {"duplicate_sends": 0, "affected_leads": 0}
    c1 = reports.duplicate_summary(engine, reports.Source.imported("kinds"), campaign="c1")
    assert c1["by_kind"]["cross_campaign"] == {"duplicate_sends": 3, "affected_leads": 1}
    assert c1["total_sends"] == 4
    with pytest.raises(UsageError, match="no campaign 'c3'"):
        reports.check_source(engine, reports.Source.imported("kinds"), "c3")
    labels = reports.imported_labels(engine)
    assert list(labels["label"]) == ["kinds"] and list(labels["rows"]) == [9]


# --------------------------------------------------------------------------------------------------
# (d) bounded results
# --------------------------------------------------------------------------------------------------


def test_reports_return_bounded_rows(engine: Engine) -> None:
    """5,000 sends in: every report hands back buckets, top-N or a LIMITed page, never the log."""
    n = 5000
    start = datetime(2024, 1, 1, tzinfo=UTC)
    header = ["campaign", "lead", "email", "variant", "sent_at", "host"]
    rows = [
        [f"c{(i // 2) % 3}", f"L{i // 2}", f"l{i // 2}@example.com", "AB"[i % 2],
         (start + timedelta(seconds=37 * i)).isoformat(), f"h{i % 4}"]
        for i in range(n)
    ]  # fmt: skip
    assert import_sendlog(engine, _write_bytes(header, rows), label="big", source="big.csv")["imported"] == n
    src = reports.Source.imported("big")

    summary = reports.duplicate_summary(engine, src, bucket_seconds=86_400)
    assert summary["total_sends"] == n
    assert len(summary["buckets"]) == 3  # 5,000 sends 37 s apart span three days
    assert reports.duplicate_buckets(engine, src, bucket_seconds=3600).shape[0] == 52
    for kind in ("any", "exact", "cross_variant", "address", "cross_campaign"):
        page = reports.duplicate_details(engine, src, kind=kind, limit=25)  # type: ignore[arg-type]
        assert len(page) <= 25, kind
    assert len(reports.duplicate_details(engine, src, kind="any", limit=10**9)) <= reports.MAX_DETAIL_ROWS
    assert len(reports.duplicates_by_instance(engine, src, limit=2)) == 2
    with pytest.raises(reports.TooManyBuckets, match="larger bucket"):
        reports.duplicate_buckets(engine, src, bucket_seconds=60, max_buckets=100)
    with pytest.raises(reports.TooManyBuckets):
        reports.duplicate_summary(engine, src, bucket_seconds=1, max_buckets=1000)
    assert len(reports.imported_labels(engine)) == 1
