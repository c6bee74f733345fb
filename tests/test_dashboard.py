"""dashboard.py under Streamlit's AppTest: renders the seeded demo database, and says what to do (not a
traceback) when the database is missing or not migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from sender.demo import seed_demo
from tests.conftest import ROOT

DASHBOARD = str(ROOT / "dashboard.py")


def _run(monkeypatch: pytest.MonkeyPatch, url: str) -> AppTest:
    monkeypatch.setenv("SENDGUARD_DATABASE_URL", url)
    # The cached engine and status are keyed by URL, so tests with different databases do not mix.
    at = AppTest.from_file(DASHBOARD, default_timeout=60)
    at.run(timeout=60)
    return at


def test_dashboard_shows_the_seeded_campaigns_and_senders(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_demo(sqlite_url)
    at = _run(monkeypatch, sqlite_url)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert [t.value for t in at.title] == ["sendguard"]

    campaigns, senders = (df.value for df in at.dataframe)
    rows = {r["campaign"]: r for r in campaigns.to_dict("records")}
    assert set(rows) == {"welcome-series", "spring-outreach", "q4-newsletter", "draft-ideas"}
    assert list(campaigns.columns) == [
        "campaign", "status", "queued", "sending", "sent", "failed", "skipped", "unknown", "progress"
    ]  # fmt: skip
    assert (rows["welcome-series"]["status"], rows["welcome-series"]["queued"]) == ("active", 200)
    assert rows["welcome-series"]["progress"] == 0.0
    spring = rows["spring-outreach"]
    assert (spring["sent"], spring["failed"], spring["skipped"], spring["unknown"]) == (2469, 5, 3, 3)
    assert spring["progress"] == 1.0
    assert (rows["q4-newsletter"]["status"], rows["q4-newsletter"]["queued"]) == ("paused", 295)
    assert rows["draft-ideas"]["status"] == "draft"

    # Senders seen within the last day: the past instances that stopped recently, none alive.
    assert list(senders.columns) == ["instance", "host", "pid", "alive", "slot", "heartbeat"]
    assert len(senders) >= 1 and not senders["alive"].any()
    assert set(senders["host"]) <= {"mail-1", "mail-2"}


def test_dashboard_explains_an_unmigrated_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()  # exists, but has no schema
    at = _run(monkeypatch, f"sqlite:///{path}")
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1
    assert "sendguard db upgrade" in at.error[0].value and "not migrated" in at.error[0].value
    assert not at.dataframe


def test_dashboard_does_not_create_a_missing_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "missing.db"
    at = _run(monkeypatch, f"sqlite:///{path}")
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "sendguard db upgrade" in at.error[0].value
    assert not path.exists()


def test_dashboard_never_renders_html() -> None:
    source = Path(DASHBOARD).read_text(encoding="utf-8")
    assert "unsafe_allow_html" not in source
    assert "st.html" not in source and "st.markdown" not in source
