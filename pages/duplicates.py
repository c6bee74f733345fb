"""Duplicates: the five kinds (DESIGN.md, Reports) for the live send log or an imported one, over time with
the onset marked and the sender instances active per bucket beside it, attributed per instance, with a
drill-down of the affected leads and a CSV export."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import dashboard_data as dd
import dashboard_ui as ui
import reports

ctx = ui.page_context()

LIVE = "live"
ALL = "(all campaigns)"
BUCKETS = ["1m", "5m", "10m", "30m", "1h", "6h", "1d"]
# The live log defaults to a recent range (its cost is a range scan however long the log); an imported
# log is an incident to analyse as a whole.
LIVE_RANGE, IMPORTED_RANGE = "Last 24 hours", "All time"
SOURCE_REQUEST = "sg_dup_source_request"  # set by the Import page: preselect the log just imported
KIND_TITLES = {
    "exact": ("Exact duplicates", "same campaign, lead and step sent again with the same variant"),
    "cross_variant": (
        "Cross-variant duplicates",
        "same campaign, lead and step sent again with another variant",
    ),
    "address": ("Address duplicates", "one normalized address reached through several lead records"),
    "cross_campaign": ("Cross-campaign overlap", "one address sent by more than one campaign"),
    "prevented": ("Prevented (guard fired)", "duplicates the send guard stopped: senders racing"),
}
DRILL_KINDS = {"any": "exact + cross-variant", **{k: v[0] for k, v in KIND_TITLES.items()}}

st.title("Duplicates")

labels_df = ui.guarded(ui.import_data, ctx.url)
labels = [] if labels_df is None else [str(x) for x in labels_df["label"]]
options = [LIVE, *(f"imported:{label}" for label in labels)]
requested = st.session_state.pop(SOURCE_REQUEST, None)
if requested is not None and f"imported:{requested}" in options:
    st.session_state["sg_dup_source"] = f"imported:{requested}"
if st.session_state.get("sg_dup_source") not in options:
    st.session_state.pop("sg_dup_source", None)  # e.g. a label replaced meanwhile
if "sg_dup_source" not in st.session_state and labels:
    # First visit: the live log cannot hold key duplicates (the guard stops them), so when it shows
    # none, open on the newest imported log, where an incident's onset is to be seen.
    recent = ui.floor_to_bucket(dd.db_now(ctx.reader()) - ui.RANGES[LIVE_RANGE], 600)
    live = ui.guarded(ui.duplicates_data, ctx.url, None, None, 600, "any", recent)
    if live is not None and live.summary["duplicate_sends"] == 0:
        st.session_state["sg_dup_source"] = f"imported:{labels[-1]}"


def _source_name(option: str) -> str:
    return "Live send log" if option == LIVE else f"Imported: {option.removeprefix('imported:')}"


c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
choice = c1.selectbox("Source", options, format_func=_source_name, key="sg_dup_source")
label = None if choice == LIVE else choice.removeprefix("imported:")
campaign = None
if label is None:
    names = ui.guarded(ui.campaign_names, ctx.url) or []
    picked = c2.selectbox("Campaign", [ALL, *names], key="sg_dup_campaign")
    campaign = None if picked == ALL else picked
bucket_seconds = reports.parse_bucket(c4.selectbox("Bucket", BUCKETS, index=2, key="sg_dup_bucket"))
since, until = ui.time_range(
    c3,
    "sg_dup_range_live" if label is None else "sg_dup_range_imported",
    LIVE_RANGE if label is None else IMPORTED_RANGE,
    bucket_seconds,
    ctx.reader(),
)
kind = st.session_state.get("sg_dup_kind", "any")

data = ui.guarded(ui.duplicates_data, ctx.url, label, campaign, bucket_seconds, kind, since, until)
if data is None:
    st.stop()
summary = data.summary

st.caption(
    f"Source: {ui.md((reports.Source(label)).describe())}. Counted among the sends in the time range: "
    "a copy, and the first campaign or lead record to reach an address, are decided within it."
)
cols = st.columns(4)
cols[0].metric("Sends", summary["total_sends"], help="delivered or possibly delivered (sent + unknown)")
cols[1].metric("Duplicate sends", summary["duplicate_sends"], help="every send of a key after its first")
cols[2].metric(
    "Affected leads", summary["affected_leads"], help="(campaign, lead, step) keys sent more than once"
)
onset = summary["onset"]
cols[3].metric("Onset", pd.Timestamp(onset).strftime("%Y-%m-%d %H:%M UTC") if onset else "none",
               help="start of the bucket holding the earliest duplicate send")  # fmt: skip

cols = st.columns(len(KIND_TITLES))
for col, (k, (title, help_text)) in zip(cols, KIND_TITLES.items(), strict=True):
    counts = summary["by_kind"][k]
    col.metric(title, counts["duplicate_sends"], help=help_text + " (duplicate sends)")
    col.caption(f"{counts['affected_leads']} affected lead(s)")

if label is None and summary["duplicate_sends"] == 0 and labels:
    st.info("No duplicate sends in the live log. To analyse another system's log, pick it under Source.")


def _chart(buckets: pd.DataFrame, prevented: pd.DataFrame, onset: str | None) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.06)
    fig.add_trace(go.Bar(x=buckets["bucket"], y=buckets["sends"], name="sends", marker_color="#b0bec5"), 1, 1)
    fig.add_trace(
        go.Bar(x=buckets["bucket"], y=buckets["duplicate_sends"], name="duplicate sends", marker_color="#c62828"),
        1, 1,
    )  # fmt: skip
    if len(prevented):
        guard = prevented.groupby("bucket", as_index=False)["prevented"].sum()
        fig.add_trace(
            go.Bar(x=guard["bucket"], y=guard["prevented"], name="prevented (guard fired)", marker_color="#f9a825"),
            1, 1,
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=buckets["bucket"], y=buckets["instances"], name="sender instances active",
                   mode="lines+markers", line_shape="hv", marker_color="#1565c0"),
        2, 1,
    )  # fmt: skip
    if onset:
        at = pd.Timestamp(onset)
        # A shape + an annotation rather than add_vline(annotation_text=...), which cannot place text
        # on a date axis; yref="paper" spans both rows.
        fig.add_shape(type="line", x0=at, x1=at, xref="x", y0=0, y1=1, yref="paper",
                      line={"color": "#c62828", "dash": "dash", "width": 2}, name="onset")  # fmt: skip
        fig.add_annotation(x=at, xref="x", y=1.0, yref="paper", text="onset", showarrow=False,
                           yanchor="bottom", font={"color": "#c62828"})  # fmt: skip
    fig.update_layout(
        barmode="overlay",
        height=460,
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        title="Sends and duplicates",
    )
    fig.update_yaxes(title_text="sends", row=1, col=1)
    fig.update_yaxes(title_text="instances", row=2, col=1, rangemode="tozero", dtick=1)
    fig.update_xaxes(title_text="bucket start (UTC)", row=2, col=1)
    return fig


if data.buckets.empty:
    st.info("No sends in this source and time range.")
else:
    st.plotly_chart(_chart(data.buckets, data.prevented, onset), key="sg_dup_chart")
    if onset:
        at_onset = data.buckets.loc[data.buckets["bucket"] == pd.Timestamp(onset), "instances"]
        if len(at_onset):
            st.caption(f"{int(at_onset.iloc[0])} sender instance(s) were active in the onset bucket.")

st.subheader("By sender instance")
if data.by_instance.empty:
    st.info("No sends to attribute.")
else:
    st.dataframe(data.by_instance, hide_index=True, key="sg_dup_instances")

st.subheader("Affected leads")
st.selectbox(
    "Kind", list(DRILL_KINDS), format_func=DRILL_KINDS.__getitem__, key="sg_dup_kind",
    help="every copy of each affected lead: time, variant and the sender instance that sent it",
)  # fmt: skip
details = data.details
if details.empty:
    st.info("No affected leads of this kind.")
else:
    st.caption(
        f"{len(details)} row(s), at most {dd.DETAIL_LIMIT}; `is_duplicate` marks the copies after the first."
    )
    st.dataframe(details, hide_index=True, key="sg_dup_details")
    st.download_button(
        "Download CSV", dd.csv_bytes(details), file_name=f"duplicates-{kind}.csv", mime="text/csv",
        key="sg_dup_csv", help="cells starting with = + - @ are prefixed with ' so a spreadsheet shows them as text",
    )  # fmt: skip
