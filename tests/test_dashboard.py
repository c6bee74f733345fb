"""dashboard.py under Streamlit's AppTest: the navigation over the six pages on the seeded demo database,
what it says (not a traceback) when the database is missing or not migrated; and the dashboard's pure
helpers (ETA estimate, pacing text, log path)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import dashboard_data as dd
from tests._dashboard import (
    PAGES,
    app,
    demo_template_fixture,  # noqa: F401  (fixture)
    demo_url_fixture,  # noqa: F401  (fixture)
    isolated_fixture,  # noqa: F401  (fixture)
    ok,
)

pytestmark = pytest.mark.usefixtures("isolated")


def test_dashboard_navigates_the_six_pages(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = ok(app(monkeypatch, demo_url))
    assert [t.value for t in at.title] == ["Campaigns"]
    sidebar = [t.value for t in at.sidebar.text]
    assert sidebar[0].startswith("dashboard:") and sidebar[1] == demo_url
    titles = {}
    for page in PAGES:
        ok(at.switch_page(f"pages/{page}.py").run())
        titles[page] = at.title[0].value
        assert at.sidebar.text[0].value == sidebar[0]  # who acts is always on screen
    assert titles == {
        "campaigns": "Campaigns", "timeline": "Timeline", "duplicates": "Duplicates",
        "import": "Import a SendLog", "senders": "Senders", "review": "Review unknown sends",
    }  # fmt: skip


@pytest.mark.parametrize("page", PAGES)
def test_every_page_explains_an_unmigrated_database(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()  # exists, but has no schema
    at = app(monkeypatch, f"sqlite:///{path}")
    if page != "campaigns":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1
    assert "sendguard db upgrade" in at.error[0].value and "not migrated" in at.error[0].value
    assert not at.dataframe and not at.metric


def test_dashboard_does_not_create_a_missing_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "missing.db"
    at = app(monkeypatch, f"sqlite:///{path}")
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "sendguard db upgrade" in at.error[0].value
    assert not path.exists()


def test_dashboard_reports_an_unreachable_database(monkeypatch: pytest.MonkeyPatch) -> None:
    at = app(monkeypatch, "postgresql+psycopg://sg:secret@127.0.0.1:1/nowhere?connect_timeout=2")
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "Cannot read the database" in at.error[0].value
    assert "secret" not in at.error[0].value  # the URL is shown redacted


def test_dashboard_reports_a_bad_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    at = app(monkeypatch, "mysql://x/y")
    assert not at.exception and len(at.error) == 1 and "Configuration error" in at.error[0].value


# --- ETA and pacing ------------------------------------------------------------------------------

NOW = datetime(2024, 3, 11, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Warsaw


def _eta(remaining: int, **kw: object) -> datetime | None:
    args = dict(interval_seconds=0.0, sends_last_hour=0, daily_limit=None, timezone="UTC", window_days=None,
                window_start=None, window_end=None)  # fmt: skip
    args.update(kw)
    return dd.estimate_eta(remaining, NOW, **args)  # type: ignore[arg-type]


def test_eta_from_pacing_alone() -> None:
    assert _eta(0) == NOW
    assert _eta(120, interval_seconds=30) == NOW + timedelta(hours=1)
    assert _eta(10) is None  # no interval and nothing sent lately: no basis for an estimate
    assert _eta(100, sends_last_hour=50) == NOW + timedelta(hours=2)  # no interval: the observed rate


def test_eta_respects_the_daily_limit_and_the_window() -> None:
    # 1000/day at one per second: 2500 take two full days and 500 s of the third (days reset at midnight).
    eta = _eta(2500, interval_seconds=1, daily_limit=1000)
    assert eta == datetime(2024, 3, 13, 0, 8, 20, tzinfo=UTC)
    # Mon-Fri 09:00-17:00 Warsaw (UTC+1 in March): 8 h/day at one a minute = 480/day.
    window = dict(timezone="Europe/Warsaw", window_days="0,1,2,3,4", window_start="09:00", window_end="17:00")
    assert _eta(480, interval_seconds=60, **window) == datetime(2024, 3, 11, 16, 0, tzinfo=UTC)
    assert _eta(481, interval_seconds=60, **window) == datetime(2024, 3, 12, 8, 1, tzinfo=UTC)
    # Friday's leftovers wait for Monday.
    assert _eta(480 * 5 + 1, interval_seconds=60, **window) == datetime(2024, 3, 18, 8, 1, tzinfo=UTC)
    # A window that never opens (no days): no estimate rather than a wrong one.
    assert _eta(1, interval_seconds=60, window_days="", window_start="09:00", window_end="09:00") is None


def test_campaign_overview_rows_get_pacing_and_eta(demo_url: str) -> None:
    from sender.db import make_engine

    engine = make_engine(demo_url, readonly=True)
    try:
        data = dd.load_campaigns_data(engine)
    finally:
        engine.dispose()
    rows = data.overview.set_index("name")
    assert rows.loc["spring-outreach", "pacing"] == "every 30 s (+0-10 s jitter), max 1000/day, Europe/Warsaw"
    assert (
        rows.loc["draft-ideas", "pacing"]
        == "no interval, window Mon,Tue,Wed,Thu,Fri 09:00-17:00, Europe/Warsaw"
    )
    assert rows.loc["spring-outreach", "eta_note"] == "done"
    assert rows.loc["draft-ideas", "eta_note"] == "draft: not sending"
    assert pd_isna(rows.loc["welcome-series", "eta"])  # no interval, no recent sends


def pd_isna(value: object) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_sender_log_sits_beside_the_lock_file() -> None:
    assert dd.sender_log_path("/var/lib/sendguard/sendguard.db.sender.lock") == (
        "/var/lib/sendguard/sendguard.db.sender.log"
    )
    assert dd.sender_log_path("/tmp/x/lockfile") == "/tmp/x/lockfile.log"
