"""Shared setup for the dashboard tests (test_dashboard*.py, test_pages.py): a seeded demo database copied
per test, the incident replay of SEED.md as an imported log, and an AppTest factory with the process-wide
state (login throttle, config, secrets) isolated."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

from tests.conftest import ROOT

DASHBOARD = str(ROOT / "dashboard.py")
PAGES = ["campaigns", "timeline", "duplicates", "import", "senders", "review"]
REPLAY_LABEL = "test-incident-replay"
TIMEOUT = 30


def incident_csv(*, with_processes: bool = True) -> bytes:
    """SEED.md's incident as an export of the original Prisma SendLog (`id,campaignId,leadId,
    variantLetter,createdAt`, plus host/pid when `with_processes`): 20 sends to 20 leads before 11:40 by
    one process; from 11:40 two processes send the same 16 leads, half of the second copies with the
    other variant. Expected: 52 sends, 16 duplicate sends, 16 affected leads (8 exact, 8 cross-variant),
    onset 11:40 with 10-minute buckets, 1 instance before and 2 from the onset."""
    header = "id,campaignId,leadId,variantLetter,createdAt" + (",host,pid" if with_processes else "")
    rows = [header]
    n = 0

    def add(lead: str, variant: str, at: datetime, pid: int) -> None:
        nonlocal n
        n += 1
        extra = f",web-1,{pid}" if with_processes else ""
        rows.append(f"sl{n:03d},cmp_spring,{lead},{variant},{at:%Y-%m-%d %H:%M:%S}.000{extra}")

    start = datetime(2024, 3, 12, 11, 0)
    for i in range(20):  # manual, irregular: one process
        add(f"lead{i:02d}", "AB"[i % 2], start + timedelta(seconds=113 * i), 4100)
    cron = datetime(2024, 3, 12, 11, 40)
    for j in range(16):  # cron: two processes race for the same leads
        lead, first = f"lead{20 + j:02d}", "AB"[j % 2]
        second = first if j < 8 else {"A": "B", "B": "A"}[first]
        add(lead, first, cron + timedelta(seconds=60 * j), 4100)
        add(lead, second, cron + timedelta(seconds=60 * j + 2), 4200)
    return ("\n".join(rows) + "\n").encode()


def _checkpoint(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.fixture(scope="session", name="demo_template")
def demo_template_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo database (sendguard demo) plus the incident replay imported as REPLAY_LABEL; copied per test."""
    from sender.db import make_engine
    from sender.demo import seed_demo
    from sender.sendlog_import import import_sendlog

    path = tmp_path_factory.mktemp("dashboard-template") / "demo.db"
    url = f"sqlite:///{path}"
    seed_demo(url)
    engine = make_engine(url)
    try:
        import_sendlog(engine, incident_csv(), label=REPLAY_LABEL, source="incident.csv")
    finally:
        engine.dispose()
    _checkpoint(path)
    return path


@pytest.fixture(name="demo_url")
def demo_url_fixture(demo_template: Path, tmp_path: Path) -> str:
    """A private copy of the seeded database (tests pause, resolve and import freely)."""
    path = tmp_path / "sendguard.db"
    shutil.copyfile(demo_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(name="isolated")
def isolated_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No password, no SMTP URL, loopback binding, no secrets file, a fresh login throttle."""
    import dashboard_ui

    for name in ("SENDGUARD_DASHBOARD_PASSWORD", "SENDGUARD_SMTP_URL", "SENDGUARD_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SENDGUARD_LOCK_FILE", str(tmp_path / "sender.lock"))
    dashboard_ui.login_throttle().reset()
    overrides = {"server.address": "127.0.0.1", "secrets.files": [str(tmp_path / "no-secrets.toml")]}
    with patch_config_options(overrides):
        yield
    dashboard_ui.login_throttle().reset()


def app(monkeypatch: pytest.MonkeyPatch, url: str, *, run: bool = True) -> AppTest:
    monkeypatch.setenv("SENDGUARD_DATABASE_URL", url)
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT)
    return at.run() if run else at


def ok(at: AppTest) -> AppTest:
    """Assert the run showed no exception and no error, and return it."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def frame(at: AppTest, *columns: str):  # -> pd.DataFrame
    """The first st.dataframe on screen that has all these columns (AppTest does not expose keys)."""
    for df in at.dataframe:
        value = df.value
        if set(columns) <= set(value.columns):
            return value
    raise AssertionError(
        f"no dataframe with columns {columns}: {[list(d.value.columns) for d in at.dataframe]}"
    )


def shown(elements) -> list[str]:  # elements: at.success / at.info / at.error / ...
    """Message texts as the reader sees them: dashboard_ui.md()'s backslash escapes removed."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in elements]


def forge_click(button):  # -> Button
    """Click a disabled button as a hostile or buggy client could (AppTest refuses a plain click on a
    disabled widget): `disabled` is a hint to the browser, so the server side must check again."""
    button.proto.disabled = False
    return button.click()


def plotly_values(value: object) -> list:
    """A Plotly trace array from a chart's JSON spec: plain list, or Plotly 6+'s base64 typed array."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)  # type: ignore[call-overload]


def cli_env(url: str, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SENDGUARD_DATABASE_URL=url, SENDGUARD_LOCK_FILE=str(tmp_path / "sender.lock"), PYTHONUNBUFFERED="1"
    )
    env.pop("SENDGUARD_DASHBOARD_PASSWORD", None)
    return env


PYTHON = sys.executable
