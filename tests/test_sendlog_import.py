"""`sendguard sendlog import` (CLI.md, "SendLog import (CSV)") on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError

from models import ImportedSendLog
from sender.db import make_engine
from sender.errors import UsageError
from sender.sendlog_import import import_sendlog, parse_time

T = ImportedSendLog.__table__


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def _rows(engine: Engine, label: str) -> list[dict[str, object]]:
    with engine.connect() as conn:
        result = conn.execute(select(T).where(T.c.label == label).order_by(T.c.id))
        return [dict(r._mapping) for r in result]


def _count(engine: Engine, label: str | None = None) -> int:
    stmt = select(func.count()).select_from(T)
    if label is not None:
        stmt = stmt.where(T.c.label == label)
    with engine.connect() as conn:
        return conn.execute(stmt).scalar_one()


def _import(engine: Engine, text: str, label: str = "x", **kwargs: object) -> dict[str, object]:
    return import_sendlog(engine, text.encode("utf-8"), label=label, source="log.csv", **kwargs)  # type: ignore[arg-type]


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_prisma_camelcase_export_imports_without_edits(engine: Engine) -> None:
    result = _import(
        engine,
        "id,campaignId,leadId,variantLetter,createdAt\n"
        "cl1,cmp1,lead1,A,2024-03-12 11:40:03.123\n"
        "cl2,cmp1,lead1,B,2024-03-12T11:40:05.5Z\n"
        "cl3,cmp1,lead2,A,2024-03-12T11:40:07.000+00:00\n",
    )
    assert result["imported"] == 3 and result["sends"] == 3 and result["rejected"] == []
    assert result["columns"] == {"campaign": "campaignId", "lead": "leadId", "variant": "variantLetter",
                                 "sent_at": "createdAt"}  # fmt: skip
    assert result["ignored_columns"] == ["id"]
    rows = _rows(engine, "x")
    assert [(r["campaign"], r["lead"], r["variant"], r["step"], r["email"], r["status"]) for r in rows] == [
        ("cmp1", "lead1", "A", 0, None, None),
        ("cmp1", "lead1", "B", 0, None, None),
        ("cmp1", "lead2", "A", 0, None, None),
    ]
    assert [r["sent_at"] for r in rows] == [
        at(2024, 3, 12, 11, 40, 3, 123000), at(2024, 3, 12, 11, 40, 5, 500000), at(2024, 3, 12, 11, 40, 7),
    ]  # fmt: skip


def test_snake_case_with_every_optional_column(engine: Engine) -> None:
    result = _import(
        engine,
        "Campaign_ID,LEAD_ID,variant,sent_at,step,status,host,pid,instance,email,notes\n"
        "c1,L1,A,2024-03-12 10:00:00,0, Sent ,web-1,4242,sg-a,  Ann@Example.com ,hello\n"
        "c1,L1,A,2024-03-12 10:01:00,1,failed,web-2,77,,,\n"
        "c1,L2,,2024-03-12 10:02:00,,,,,,,\n",
    )
    assert result["imported"] == 3 and result["sends"] == 2  # `failed` is imported, not a send
    assert result["ignored_columns"] == ["notes"]
    rows = _rows(engine, "x")
    assert (rows[0]["status"], rows[0]["host"], rows[0]["pid"], rows[0]["instance"], rows[0]["email"]) == (
        "sent", "web-1", 4242, "sg-a", "ann@example.com",
    )  # fmt: skip
    assert (rows[1]["step"], rows[1]["status"], rows[1]["instance"], rows[1]["email"]) == (
        1,
        "failed",
        None,
        None,
    )
    assert (rows[2]["variant"], rows[2]["step"], rows[2]["status"], rows[2]["pid"]) == (None, 0, None, None)


def test_email_identifies_the_lead_when_there_is_no_lead_id(engine: Engine) -> None:
    result = _import(engine, "CAMPAIGN,Email,Timestamp\nc1, Bob@Example.COM ,2024-03-12T10:00:00Z\n")
    assert result["columns"] == {"campaign": "CAMPAIGN", "lead": "Email", "sent_at": "Timestamp"}
    [row] = _rows(engine, "x")
    assert (row["lead"], row["email"]) == ("bob@example.com", "bob@example.com")


def test_times_without_a_zone_are_read_in_the_given_timezone(engine: Engine) -> None:
    result = _import(
        engine,
        "campaign,lead,sent_at\n"
        "c,winter,2024-03-12 12:40:00\n"  # CET, UTC+1
        "c,summer,2024-07-01 12:00:00\n"  # CEST, UTC+2
        "c,zulu,2024-03-12T12:40:00Z\n"  # explicit zones win
        "c,offset,2024-03-12T12:40:00-05:00\n"
        "c,epoch,1710243600\n"  # Unix seconds are UTC by definition
        "c,epoch_ms,1710243600123\n",
        timezone="Europe/Warsaw",
    )
    assert result["rejected"] == [] and result["timezone"] == "Europe/Warsaw"
    assert {r["lead"]: r["sent_at"] for r in _rows(engine, "x")} == {
        "winter": at(2024, 3, 12, 11, 40),
        "summer": at(2024, 7, 1, 10, 0),
        "zulu": at(2024, 3, 12, 12, 40),
        "offset": at(2024, 3, 12, 17, 40),
        "epoch": at(2024, 3, 12, 11, 40),
        "epoch_ms": at(2024, 3, 12, 11, 40, 0, 123000),
    }
    utc = _import(engine, "campaign,lead,sent_at\nc,winter,2024-03-12 12:40:00\n", label="utc")
    assert utc["timezone"] == "UTC" and _rows(engine, "utc")[0]["sent_at"] == at(2024, 3, 12, 12, 40)
    with pytest.raises(UsageError, match="timezone"):
        _import(engine, "campaign,lead,sent_at\nc,l,2024-03-12 12:40\n", label="tz", timezone="Mars/Base")
    assert _count(engine, "tz") == 0


def test_parse_time() -> None:
    warsaw = ZoneInfo("Europe/Warsaw")
    assert parse_time("2024-03-12 11:40:03.123", UTC) == at(2024, 3, 12, 11, 40, 3, 123000)
    assert parse_time(" 2024-03-12T11:40:03.1234567Z ", warsaw) == at(2024, 3, 12, 11, 40, 3, 123456)
    assert parse_time("2024-10-27 02:30:00", warsaw) == at(
        2024, 10, 27, 0, 30
    )  # DST fall-back: the first one
    for bad in (
        "",
        "yesterday",
        "2024-03-12",
        "2024-13-01 10:00",
        "12/03/2024 10:00",
        "1969-12-31T23:59:59Z",
    ):
        with pytest.raises(ValueError):
            parse_time(bad, UTC)


def test_bad_rows_are_rejected_by_line_and_never_block_good_ones(engine: Engine) -> None:
    long_campaign = "c" * 201
    result = _import(
        engine,
        "campaignId,leadId,variantLetter,createdAt,pid,step\n"  # line 1
        "c1,l1,A,2024-03-12 10:00,1,0\n"  # 2: good
        ",l2,A,2024-03-12 10:00,1,0\n"  # 3: no campaign
        "c1,,A,2024-03-12 10:00,1,0\n"  # 4: no lead
        "c1,l3,A,not a time,1,0\n"  # 5: bad time
        "c1,l4,A,2024-03-12 10:00,1\n"  # 6: a column short
        '"c1","l5\n'  # 7-8: a quoted field spanning two lines: still one good record
        'continued",A,2024-03-12 10:01,2,0\n'
        "c1,l6,A,2024-03-12 10:00,-3,0\n"  # 9: bad pid
        "c1,l7,A,2024-03-12 10:00,1,first\n"  # 10: bad step
        f"{long_campaign},l8,A,2024-03-12 10:00,1,0\n"  # 11: longer than the column
        "c1,l9\x00,A,2024-03-12 10:00,1,0\n"  # 12: NUL (PostgreSQL text cannot hold it)
        "\n"  # 13: blank lines are skipped
        "c1,l10,ABCDEFGHIJKLMNOPQ,2024-03-12 10:00,1,0\n"  # 14: variant longer than 16
        "c1,l11,B,2024-03-12 10:02,99999999999,0\n"  # 15: pid out of range
        "c1,l12,B,2024-03-12 10:03,,\n",  # 16: good
    )
    assert [r["line"] for r in result["rejected"]] == [3, 4, 5, 6, 9, 10, 11, 12, 14, 15]  # type: ignore[index]
    reasons = {r["line"]: r["reason"] for r in result["rejected"]}  # type: ignore[union-attr]
    assert "campaign" in reasons[3] and "lead" in reasons[4] and "time" in reasons[5]
    assert "columns" in reasons[6] and "pid" in reasons[9] and "step" in reasons[10]
    assert "200" in reasons[11] and "NUL" in reasons[12] and "variant" in reasons[14]
    assert result["imported"] == 3
    assert [r["lead"] for r in _rows(engine, "x")] == ["l1", "l5\ncontinued", "l12"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (b"campaignId,leadId,createdAt\nc1,l\xe9,2024-03-12 10:00\n", "not UTF-8"),
        (b"campaignId,leadId,variantLetter\nc1,l1,A\n", "time"),
        (b"leadId,createdAt\nl1,2024-03-12 10:00\n", "campaign"),
        (b"foo,bar\n1,2\n", "campaign"),
        (b"campaign_id,campaignId,leadId,createdAt\n", "same field"),
        (b'"campaignId,leadId,createdAt\n', "header"),
    ],
    ids=["empty", "blank", "latin1", "no-time", "no-campaign", "unrelated", "ambiguous", "broken-header"],
)
def test_unusable_files_exit_2_and_import_nothing(
    sendguard_env, cli, engine: Engine, tmp_path: Path, content: bytes, needle: str
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = cli(["sendlog", "import", str(path), "--label", "bad"], sendguard_env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert _count(engine) == 0


def test_cli_import_replace_and_json(sendguard_env, cli, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = tmp_path / "first.csv"
    first.write_text("campaignId,leadId,createdAt\nc,l1,2024-03-12 10:00\nc,l1,2024-03-12 10:01\nc,,x\n")
    second = tmp_path / "second.csv"
    second.write_text("\ufeffcampaignId,leadId,createdAt\nc,l2,2024-03-12 11:00\n", encoding="utf-8")  # BOM
    other = tmp_path / "other.csv"
    other.write_text("campaign,email,sent_at\nc,z@example.com,2024-03-12 09:00\n")

    out = cli(["sendlog", "import", str(first), "--label", "prod", "--json"], sendguard_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) | {"columns": None} == {
        "label": "prod", "imported": 2, "sends": 2, "replaced": 0, "rejected": [{"line": 4, "reason": "missing lead id"}],
        "columns": None, "ignored_columns": [], "timezone": "UTC",
    }  # fmt: skip
    assert cli(["sendlog", "import", str(other), "--label", "other"], sendguard_env).returncode == 0

    again = cli(["sendlog", "import", str(second), "--label", "prod"], sendguard_env)
    assert again.returncode == 2 and "--replace" in again.stderr, again.stderr
    assert [r["lead"] for r in _rows(engine, "prod")] == ["l1", "l1"]  # untouched

    replaced = cli(["sendlog", "import", str(second), "--label", "prod", "--replace"], sendguard_env)
    assert replaced.returncode == 0, replaced.stderr
    assert "imported 1 rows (1 sends) as 'prod', replacing 2 earlier rows, rejected 0" in replaced.stdout
    assert [r["lead"] for r in _rows(engine, "prod")] == ["l2"]
    assert _count(engine, "other") == 1  # other labels are never touched

    missing = cli(["sendlog", "import", str(tmp_path / "nope.csv"), "--label", "n"], sendguard_env)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    no_label = cli(["sendlog", "import", str(first)], sendguard_env)
    assert no_label.returncode == 2 and "--label" in no_label.stderr
    blank_label = cli(["sendlog", "import", str(first), "--label", "  "], sendguard_env)
    assert blank_label.returncode == 2 and "--label" in blank_label.stderr


def test_replace_of_a_missing_label_and_header_only_file(engine: Engine) -> None:
    assert _import(engine, "campaignId,leadId,createdAt\n", label="empty")["imported"] == 0
    result = _import(engine, "campaignId,leadId,createdAt\nc,l,2024-03-12 10:00\n", label="new", replace=True)
    assert (result["imported"], result["replaced"]) == (1, 0)


# --- columns computed at import (migration 0004) ------------------------------------------------

# Rows: a repeated key (l1), a shared address (l2 and l3 normalize to one), an address reached by two
# campaigns (l4), a failed row that is no send but still counts for the flags (l5 repeats in c1).
DERIVED_CSV = (
    "campaign,lead,email,step,status,sent_at\n"
    "c1,l1,One@Example.com,0,sent,2024-03-12T10:00:00Z\n"
    "c1,l1,one@example.com,0,,2024-03-12T10:01:00Z\n"
    "c1,l2,Two@Example.com ,0,Delivered,2024-03-12T10:02:00Z\n"
    "c1,l3,two@example.com,0,sent,2024-03-12T10:03:00Z\n"
    "c1,l4,four@example.com,0,sent,2024-03-12T10:04:00Z\n"
    "c2,l4,four@example.com,0,sent,2024-03-12T10:05:00Z\n"
    "c1,l5,,0,failed,2024-03-12T10:06:00Z\n"
    "c1,l5,,0,sent,2024-03-12T10:07:00Z\n"
)
# (lead, address, is_send, key_repeats, address_shared, address_multi_campaign) per row, in file order
DERIVED_EXPECTED = [
    ("l1", "one@example.com", True, True, False, False),
    ("l1", "one@example.com", True, True, False, False),
    ("l2", "two@example.com", True, False, True, False),
    ("l3", "two@example.com", True, False, True, False),
    ("l4", "four@example.com", True, False, False, True),
    ("l4", "four@example.com", True, False, False, True),
    ("l5", "l5", False, True, False, False),
    ("l5", "l5", True, True, False, False),
]
DERIVED = ("lead", "address", "is_send", "key_repeats", "address_shared", "address_multi_campaign")


def _derived(engine: Engine, label: str) -> list[tuple[object, ...]]:
    return [
        tuple(bool(r[c]) if c not in ("lead", "address") else r[c] for c in DERIVED)
        for r in _rows(engine, label)
    ]


def test_import_stores_the_address_send_flag_and_candidate_flags(engine: Engine) -> None:
    """The reports read these instead of computing them per row; each flag spans the whole label, every
    status (the failed l5 row still makes its key a candidate)."""
    result = _import(engine, DERIVED_CSV, label="derived")
    assert result["imported"] == 8 and result["sends"] == 7
    assert _derived(engine, "derived") == DERIVED_EXPECTED
    # Another label's rows never make these candidates: the flags are per label.
    _import(
        engine, "campaign,lead,email,sent_at\nc1,l9,two@example.com,2024-03-12T10:00:00Z\n", label="other"
    )
    assert _derived(engine, "derived") == DERIVED_EXPECTED
    assert _derived(engine, "other") == [("l9", "two@example.com", True, False, False, False)]
    # A replacement is derived afresh over its own rows only.
    _import(engine, "campaign,lead,sent_at\nc1,l1,2024-03-12T10:00:00Z\n", label="derived", replace=True)
    assert _derived(engine, "derived") == [("l1", "l1", True, False, False, False)]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    """An empty database (no schema), once per backend."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def test_migration_0004_derives_the_columns_of_rows_imported_before_it(empty_url: str) -> None:
    """Rows written before 0004 (here as an older import or another tool may have: emails and statuses
    not normalized) get the values the reports computed per row until then, and the Duplicates reports
    on them agree with the same log imported today."""
    import reports
    from sender.migrate import upgrade

    upgrade(empty_url, "0003")
    engine = make_engine(empty_url)
    try:
        raw = [  # (campaign, lead, email, status, minute): DERIVED_CSV as stored unnormalized
            ("c1", "l1", "One@Example.com", "SENT"),
            ("c1", "l1", " one@example.com", None),
            ("c1", "l2", "Two@Example.com ", " Delivered"),
            ("c1", "l3", "two@example.com", "sent"),
            ("c1", "l4", "four@example.com", "sent"),
            ("c2", "l4", "FOUR@example.com", "sent"),
            ("c1", "l5", None, "failed"),
            ("c1", "l5", None, ""),
        ]
        with engine.begin() as conn:
            for minute, (campaign, lead, email, status) in enumerate(raw):
                conn.execute(
                    text(
                        "INSERT INTO imported_send_log (label, campaign, lead, email, step, status, sent_at) "
                        "VALUES ('old', :campaign, :lead, :email, 0, :status, :sent_at)"
                    ),
                    {"campaign": campaign, "lead": lead, "email": email, "status": status,
                     "sent_at": at(2024, 3, 12, 10, minute)},
                )  # fmt: skip
        engine.dispose()
        upgrade(empty_url)
        engine = make_engine(empty_url)
        assert _derived(engine, "old") == DERIVED_EXPECTED
        _import(engine, DERIVED_CSV, label="new")
        for function in (reports.duplicate_summary, reports.duplicates_by_instance):
            old = function(engine, reports.Source.imported("old"))
            new = function(engine, reports.Source.imported("new"))
            assert str(old) == str(new), function.__name__
        summary = reports.duplicate_summary(engine, reports.Source.imported("old"))
        assert summary["duplicate_sends"] == 1 and summary["by_kind"]["address"]["duplicate_sends"] == 1
        assert summary["by_kind"]["cross_campaign"] == {"duplicate_sends": 1, "affected_leads": 1}
        # The columns have no default: an insert that forgets them fails instead of hiding duplicates.
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO imported_send_log (label, campaign, lead, step, sent_at) "
                    "VALUES ('x', 'c', 'l', 0, :at)"
                ),
                {"at": at(2024, 1, 1)},
            )
    finally:
        engine.dispose()
