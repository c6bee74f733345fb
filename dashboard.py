"""sendguard operations dashboard (minimal for now): campaigns and senders, refreshed live.

Run it with `streamlit run dashboard.py` (`make run` starts it along with a sender and a sink). It only
reads the database named by SENDGUARD_DATABASE_URL: the dashboard never sends, the sender never renders
UI (DESIGN.md). Everything shown goes through st.dataframe / st.text, which display plain text: lead-
and operator-supplied text is never rendered as HTML or Markdown.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from sender.clock import DatabaseClock
from sender.config import load_settings, redact_database_url
from sender.db import make_engine
from sender.errors import UsageError
from sender.migrate import current_revision, head_revision
from sender.status import STATES, status

REFRESH = timedelta(seconds=3)
UPGRADE = "run `sendguard db upgrade` with the same SENDGUARD_DATABASE_URL"


class NotReady(Exception):
    """The database cannot be shown (yet); the message says what to do about it."""


@st.cache_resource(show_spinner=False)
def get_engine(url: str) -> Engine:
    """One engine (and connection pool) per process and database, shared by every session and rerun."""
    return make_engine(url, readonly=True)


def _check_schema(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # Connecting would create an empty file; say what is wrong instead.
        if not Path(str(parsed.database)).exists():
            raise NotReady(f"The database file {parsed.database} does not exist: {UPGRADE} to create it.")
    engine = get_engine(url)
    current, head = current_revision(engine), head_revision()
    if current is None:
        raise NotReady(f"The database is not migrated yet: {UPGRADE}, then reload this page.")
    if current != head:
        raise NotReady(
            f"The database schema is at revision {current}, but this dashboard expects {head}: {UPGRADE} "
            "(or upgrade sendguard if the database is newer)."
        )
    return engine


@st.cache_data(ttl=2, show_spinner=False)
def load_status(url: str, lease_seconds: float) -> dict[str, Any]:
    """`sendguard status --json`, cached for two seconds across sessions."""
    engine = _check_schema(url)
    return status(engine, now=DatabaseClock(engine).now(), lease_seconds=lease_seconds)


def campaigns_frame(data: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for c in data["campaigns"]:
        counts = c["counts"]
        total = sum(counts.values())
        done = total - counts["queued"] - counts["sending"]
        rows.append(
            {
                "campaign": c["name"],
                "status": c["status"],
                **{state: counts[state] for state in STATES},
                "progress": done / total if total else 0.0,
            }
        )
    return pd.DataFrame(rows, columns=["campaign", "status", *STATES, "progress"])


def senders_frame(data: dict[str, Any]) -> pd.DataFrame:
    rows = [
        {
            "instance": s["instance"],
            "host": s["host"],
            "pid": s["pid"],
            "alive": s["alive"],
            "slot": s["slot"],
            "heartbeat": pd.Timestamp(s["heartbeat_at"]) if s["heartbeat_at"] else pd.NaT,
        }
        for s in data["senders"]
    ]
    return pd.DataFrame(rows, columns=["instance", "host", "pid", "alive", "slot", "heartbeat"])


@st.fragment(run_every=REFRESH)
def live_view(url: str, lease_seconds: float) -> None:
    try:
        data = load_status(url, lease_seconds)
    except NotReady as exc:
        st.error(str(exc))
        return
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        st.error(
            f"Cannot read the database {redact_database_url(url)} "
            f"({type(orig or exc).__name__}). Is it running and reachable?"
        )
        return

    st.subheader("Campaigns")
    campaigns = campaigns_frame(data)
    if campaigns.empty:
        st.info("No campaigns yet: create one with `sendguard campaign create FILE.toml`.")
    else:
        st.dataframe(
            campaigns,
            hide_index=True,
            column_config={
                "progress": st.column_config.ProgressColumn(
                    "progress",
                    help="enrollments no longer queued or sending",
                    min_value=0.0,
                    max_value=1.0,
                    format="percent",
                ),
            },  # fmt: skip
        )

    st.subheader("Senders")
    senders = senders_frame(data)
    if senders.empty:
        st.info("No sender has run in the last day (start one with `sendguard run`).")
    else:
        st.dataframe(
            senders,
            hide_index=True,
            column_config={
                "pid": st.column_config.NumberColumn("pid", format="%d"),
                "slot": st.column_config.NumberColumn(
                    "slot", help="DB-lock slot; empty = standby or stopped"
                ),
                "heartbeat": st.column_config.DatetimeColumn("heartbeat", format="YYYY-MM-DD HH:mm:ss z"),
            },
        )


def main() -> None:
    st.set_page_config(page_title="sendguard", layout="wide")
    st.title("sendguard")
    try:
        settings = load_settings()
    except UsageError as exc:
        st.error(f"Configuration error: {exc}")
        return
    st.text(f"database: {redact_database_url(settings.database_url)} · refreshes every {REFRESH.seconds} s")
    live_view(settings.database_url, settings.lease_seconds)


if __name__ == "__main__":
    main()
