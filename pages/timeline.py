"""Timeline: attempts per time bucket, stacked by outcome and by sender instance, for one campaign or all,
over a chosen time range."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import plotly.express as px
import streamlit as st

import dashboard_ui as ui
import reports

ctx = ui.page_context()

ALL = "(all campaigns)"
BUCKETS = ["1m", "5m", "10m", "30m", "1h", "6h", "1d"]
OUTCOME_COLORS = {"sent": "#2e7d32", "failed": "#c62828", "deferred": "#f9a825", "unknown": "#6a1b9a"}

st.title("Timeline")
names = ui.guarded(ui.campaign_names, ctx.url) or []
c1, c2, c3 = st.columns([2, 2, 1])
campaign_choice = c1.selectbox("Campaign", [ALL, *names], key="sg_tl_campaign")
bucket_choice = c3.selectbox("Bucket", BUCKETS, index=2, key="sg_tl_bucket")
campaign = None if campaign_choice == ALL else campaign_choice
bucket_seconds = reports.parse_bucket(bucket_choice)


# The default range keeps the page's cost to a range scan of ix_send_log_time however long the log.
since, until = ui.time_range(c2, "sg_tl_range", "Last 3 days", bucket_seconds, ctx.reader())


def _stacked(df: pd.DataFrame, color: str, title: str, colors: dict[str, str] | None = None) -> None:
    fig = px.bar(
        df, x="bucket", y="sends", color=color, title=title, color_discrete_map=colors or {},
        labels={"bucket": "bucket start (UTC)", "sends": "attempts" if color == "outcome" else "sends"},
    )  # fmt: skip
    fig.update_layout(barmode="stack", bargap=0.05, legend_title_text=color, height=360)
    st.plotly_chart(fig)


@st.fragment(run_every=ui.REFRESH)
def charts(
    url: str, campaign: str | None, bucket_seconds: int, since: datetime | None, until: datetime | None
) -> None:
    data = ui.guarded(ui.timeline_data, url, campaign, bucket_seconds, since, until)
    if data is None:
        return
    by_outcome = data.by_outcome
    totals = by_outcome.groupby("outcome")["sends"].sum() if len(by_outcome) else pd.Series(dtype="int64")
    cols = st.columns(4)
    for col, outcome in zip(cols, reports.OUTCOMES, strict=True):
        col.metric(outcome.capitalize(), int(totals.get(outcome, 0)))
    if by_outcome.empty:
        st.info("No attempts in this range.")
        return
    # One bar per bucket and outcome (summed over campaigns when showing all of them).
    per_outcome = by_outcome.groupby(["bucket", "outcome"], as_index=False)["sends"].sum()
    _stacked(per_outcome, "outcome", "Attempts by outcome", OUTCOME_COLORS)

    inst = data.by_instance.copy()
    inst["sender"] = [
        ui.plot_label(f"{h or '?'} pid {p} · {str(i)[:8]}")
        for i, h, p in zip(inst["instance"], inst["host"], inst["pid"], strict=True)
    ]
    _stacked(inst, "sender", "Sends (sent + unknown) by sender instance")
    active = inst.groupby("bucket")["instance"].nunique()
    if (active > 1).any():
        st.caption(
            f"{int((active > 1).sum())} bucket(s) had more than one sender instance sending: a handover, "
            "or senders running side by side (the Duplicates page shows whether that produced duplicates)."
        )
    with st.expander("Sender instances in this range"):
        summary = inst.groupby(["instance", "host", "pid"], as_index=False, dropna=False)[
            ["sends", "attempts"]
        ].sum()
        st.dataframe(summary, hide_index=True)


charts(ctx.url, campaign, bucket_seconds, since, until)
