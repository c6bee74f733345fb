"""Campaigns: state, progress, pacing and ETA of every campaign; Pause/Resume with a reason and a
confirmation; the audit trail (who, when, why, including auto-pauses)."""

from __future__ import annotations

import streamlit as st

import dashboard_data as dd
import dashboard_ui as ui
from sender import campaigns
from sender.errors import UsageError

ctx = ui.page_context()

_PENDING = "sg_campaign_pending"  # the action waiting for its confirmation
_COUNTS = ["enrolled", "queued", "sending", "sent", "failed", "skipped", "unknown"]
_TABLE = ["name", "status", "breaker", *_COUNTS, "progress", "sends_last_hour", "pacing", "eta", "eta_note", "paused_by",
          "pause_reason"]  # fmt: skip
ETA_HELP = (
    "Optimistic: when the last queued lead would be claimed if a sender keeps up from now at the "
    "campaign's pacing (interval + half the jitter; with no interval, the rate of the last hour), only "
    "inside its sending window, at most its daily limit per local day (today's limit taken as unused). "
    "Retries, failures and stopped senders are not counted."
)

st.title("Campaigns")


# One load per run: the overview and the picked campaign's audit trail come from the same (cached) call.
selected: str | None = st.session_state.get("sg_campaign")


@st.fragment(run_every=ui.REFRESH)
def overview(url: str, selected: str | None) -> None:
    data = ui.guarded(ui.campaigns_data, url, selected)
    if data is None:
        return
    df = data.overview
    if df.empty:
        st.info("No campaigns yet: create one with `sendguard campaign create FILE.toml`.")
        return
    cols = st.columns(4)
    cols[0].metric("Active campaigns", int((df["status"] == "active").sum()))
    cols[1].metric("Paused campaigns", int((df["status"] == "paused").sum()))
    cols[2].metric("Queued", int(df["queued"].sum()))
    cols[3].metric("Sends in the last hour", int(df["sends_last_hour"].sum()))
    st.dataframe(
        df[_TABLE],
        hide_index=True,
        key="sg_campaigns_table",
        column_config={
            "name": st.column_config.TextColumn("campaign"),
            "breaker": st.column_config.TextColumn(
                "auto-paused by", help="the circuit breaker that paused the campaign (see the audit trail)"
            ),
            "progress": st.column_config.ProgressColumn(
                "progress", help="enrollments no longer queued or sending", min_value=0.0, max_value=1.0,
                format="percent",
            ),
            "sends_last_hour": st.column_config.NumberColumn("sends/1h", help="sent + unknown, last hour"),
            "eta": st.column_config.DatetimeColumn("ETA", help=ETA_HELP, format="YYYY-MM-DD HH:mm z"),
            "eta_note": st.column_config.TextColumn("ETA basis"),
        },
    )  # fmt: skip
    st.caption(f"Database time {data.now:%Y-%m-%d %H:%M:%S} UTC; refreshes every {ui.REFRESH.seconds} s.")


overview(ctx.url, selected)

data = ui.guarded(ui.campaigns_data, ctx.url, selected)
if data is None or data.overview.empty:
    st.stop()
names = [str(n) for n in data.overview["name"]]
if selected not in names:
    st.session_state.pop("sg_campaign", None)  # first visit, or the campaign is gone

st.subheader("Pause or resume")
name = st.selectbox("Campaign", names, key="sg_campaign")
if name != selected:  # its audit trail (the overview part is the same)
    data = ui.guarded(ui.campaigns_data, ctx.url, name)
    if data is None:
        st.stop()
row = data.overview.loc[data.overview["name"] == name]
status = str(row["status"].iloc[0]) if len(row) else "unknown"
st.text(f"status: {status}")
if status == "paused" and len(row):
    paused_by, reason = row["paused_by"].iloc[0], row["pause_reason"].iloc[0]
    if row["breaker"].iloc[0]:
        st.warning(f"Auto-paused by the **{ui.md(row['breaker'].iloc[0])}** circuit breaker.", icon="⚡")
    st.text(f"paused by {paused_by or '?'}: {reason if isinstance(reason, str) else '(no reason given)'}")


def _act(action: str, campaign: str, reason: str | None) -> None:
    writer = ctx.writer()
    transition = campaigns.pause if action == "pause" else campaigns.resume
    try:
        transition(writer, campaign, actor=ctx.actor, reason=reason, now=dd.db_now(writer))
    except UsageError as exc:
        st.error(ui.md(exc))
        return
    ui.clear_caches()
    st.session_state.pop("sg_reason", None)  # a pause's reason must not become the resume's
    done = "Paused" if action == "pause" else "Resumed"
    ui.flash("success", f"{done} {ui.md(campaign)} (recorded as {ui.md(ctx.actor)}).")
    st.rerun()


pending = st.session_state.get(_PENDING)
if pending and pending.get("campaign") != name:
    pending = None  # another campaign was selected: a confirmation never carries over
    st.session_state.pop(_PENDING, None)

if status in ("active", "paused"):
    action = "pause" if status == "active" else "resume"
    if pending is None:
        reason = st.text_input(
            "Reason (recorded in the audit trail)", key="sg_reason", max_chars=500,
            placeholder="e.g. duplicates on the timeline" if action == "pause" else "e.g. fixed and verified",
        )  # fmt: skip
        if st.button("Pause…" if action == "pause" else "Resume…", key=f"sg_{action}", type="primary"):
            st.session_state[_PENDING] = {
                "action": action,
                "campaign": name,
                "reason": reason.strip() or None,
            }
            st.rerun()
    else:
        if pending["action"] == "pause":
            st.warning("Pause this campaign? Once the pause commits no new transmission starts for it.")
        else:
            st.warning("Resume this campaign? Senders start claiming its queued leads again.")
        st.text(f"campaign: {pending['campaign']}\nreason: {pending['reason'] or '(none)'}")
        left, right = st.columns(2)
        confirm = left.button(
            "Confirm pause" if pending["action"] == "pause" else "Confirm resume",
            key="sg_confirm",
            type="primary",
        )
        cancel = right.button("Cancel", key="sg_cancel")
        if cancel:
            st.session_state.pop(_PENDING, None)
            st.rerun()
        if confirm:
            st.session_state.pop(_PENDING, None)
            if pending["action"] != action:
                st.error("The campaign changed state meanwhile: nothing done; look again and retry.")
            else:
                _act(pending["action"], pending["campaign"], pending["reason"])
else:
    st.info(
        "Only an active campaign can be paused and a paused one resumed "
        "(start a draft with `sendguard campaign start NAME`)."
    )

st.subheader("Audit trail")
st.caption(f"Newest first, at most {dd.EVENTS_LIMIT} events: who did what, when and why (auto-pauses too).")
if data.events.empty:
    st.info("No events for this campaign yet.")
else:
    st.dataframe(data.events, hide_index=True, key="sg_events_table")
