"""Senders: every sender instance (host, pid, version, started, heartbeat age, alive/stale, DB-lock slot,
claims held), and controls for the sender on this host: start one detached, stop it with SIGTERM.

Starting is guarded by the sender's own file lock, not by anything the page remembers: a second click, a
rerun or a second browser tab finds the lock held and says so, and a start that races past that check
exits with code 3 (DESIGN.md, "Streamlit reruns": a rerun must never become a second sender).
"""

from __future__ import annotations

import os
import socket

import streamlit as st

import dashboard_data as dd
import dashboard_ui as ui

ctx = ui.page_context()
lock_file = ctx.settings.resolved_lock_file()
this_host = socket.gethostname()

st.title("Senders")


@st.fragment(run_every=ui.REFRESH)
def instances(url: str, lease_seconds: float) -> None:
    df = ui.guarded(ui.senders_data, url, lease_seconds)
    if df is None:
        return
    cols = st.columns(3)
    cols[0].metric("Alive", int((df["state"] == "alive").sum()))
    cols[1].metric("Stale", int((df["state"] == "stale").sum()), help="not stopped, no heartbeat for a lease")
    cols[2].metric("Holding a DB-lock slot", int(df.loc[df["state"] == "alive", "slot"].notna().sum()))
    if df.empty:
        st.info("No sender has run in the last day (start one below or with `sendguard run`).")
        return
    df = df.assign(local=(df["host"] == this_host) & (df["lock_file"] == lock_file))
    st.dataframe(
        df,
        hide_index=True,
        key="sg_senders_table",
        column_config={
            "pid": st.column_config.NumberColumn("pid", format="%d"),
            "slot": st.column_config.NumberColumn(
                "slot", help="DB-lock slot at the last heartbeat; empty = standby"
            ),
            "claims": st.column_config.NumberColumn("claims", help="enrollments it is sending right now"),
            "heartbeat_age_s": st.column_config.NumberColumn("heartbeat age (s)"),
            "local": st.column_config.CheckboxColumn("this host", help="uses this dashboard's lock file"),
        },
    )
    st.caption(
        f"alive = heartbeat within one lease ({lease_seconds:g} s); refreshes every {ui.REFRESH.seconds} s."
    )


instances(ctx.url, ctx.settings.lease_seconds)

st.subheader("Sender on this host")
st.text(f"host: {this_host}\nlock file: {lock_file}\nlog file: {dd.sender_log_path(lock_file)}")
state = dd.local_sender(lock_file)
if state.running:
    st.text(f"running: pid {state.pid} (from the lock's pid file)")
elif state.pid is not None and state.alive:
    st.text(f"the lock's pid file names pid {state.pid}, which is not a sendguard sender")
else:
    st.text("not running" + (f" (pid {state.pid} in a stale pid file has exited)" if state.pid else ""))
if not ctx.settings.smtp_url:
    st.info(
        "Starting a sender from here needs SENDGUARD_SMTP_URL in the dashboard's environment (where to "
        "send); it is not set. Start the sender from a shell with `sendguard run` instead, or set it and "
        "restart the dashboard."
    )

left, right = st.columns(2)
if left.button("Start local sender", key="sg_sender_start", disabled=not ctx.settings.smtp_url):
    result = dd.start_local_sender(ctx.settings, cwd=os.getcwd())
    ui.log_action(ctx.actor, f"start local sender: {result.outcome} (pid {result.pid})")
    ui.clear_caches()
    if result.outcome == "started":
        st.success(ui.md(result.message))
    elif result.outcome == "running":
        st.info(ui.md(result.message))
    else:
        st.error(ui.md(result.message))
    if result.log_tail:
        st.code(result.log_tail, language=None)
if right.button("Stop local sender", key="sg_sender_stop", disabled=not (state.pid and state.alive)):
    result = dd.stop_local_sender(lock_file)
    ui.log_action(ctx.actor, f"stop local sender: {result.outcome} (pid {result.pid})")
    ui.clear_caches()
    (st.success if result.outcome == "signalled" else st.error)(ui.md(result.message))
st.caption(
    "Stop sends SIGTERM: the sender finishes the message in flight, releases its claims and locks, and "
    "exits. To stop sending at once, pause the campaign (Campaigns page): a pause is exact. Senders on "
    "other hosts are controlled on their hosts."
)
