"""Review: `unknown` sends (the connection was lost after the message was handed over, so it may or may
not have arrived) with their SMTP context. A human decides: mark delivered, or requeue, which may give
the recipient a second copy and so needs the word `requeue` typed first. Both go to the audit trail."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import dashboard_data as dd
import dashboard_ui as ui
from sender.errors import UsageError
from sender.review import resolve

ctx = ui.page_context()
CONFIRM_WORD = "requeue"

st.title("Review unknown sends")
data = ui.guarded(ui.review_data, ctx.url)
if data is None:
    st.stop()
if data.unknown.empty:
    st.success("No unknown sends: nothing to review.")
    st.stop()

shown = len(data.unknown)
st.caption(
    f"{data.total} unknown send(s)" + (f", the oldest {shown} shown" if shown < data.total else "")
    + ". Never retried automatically: only you can tell whether the message arrived (ask the recipient's "
    "mail admin, look for a reply, check the SMTP server's log for the Message-ID)."
)  # fmt: skip
st.dataframe(data.unknown, hide_index=True, key="sg_review_table")

rows = {int(r["id"]): r for r in data.unknown.to_dict("records")}
send_id = st.selectbox(
    "Send", list(rows), key="sg_review_send",
    format_func=lambda i: f"#{i} {rows[i]['campaign']} to {rows[i]['email']}",
)  # fmt: skip
row = rows[int(send_id)]
st.code(
    "\n".join([
        f"campaign:    {row['campaign']}",
        f"recipient:   {row['email']}",
        f"step:        {row['step']}, variant {row['variant']}",
        f"message-id:  {row['message_id']}",
        f"sender:      {row['instance']} ({row['host']} pid {row['pid']}), attempt {row['attempt']}",
        f"transmitted: {row['transmit_at']}",
        f"smtp:        {int(row['smtp_code']) if pd.notna(row['smtp_code']) else '-'} {row['smtp_reply']}",
    ]),
    language=None,
)  # fmt: skip


def _resolve(requeue: bool) -> None:
    writer = ctx.writer()
    try:
        result = resolve(writer, int(send_id), requeue=requeue, actor=ctx.actor, now=dd.db_now(writer))
    except UsageError as exc:
        st.error(ui.md(exc))
        return
    ui.clear_caches()
    what = "requeued" if requeue else "marked delivered"
    note = "" if result["enrollment_updated"] else " (its enrollment had already moved on)"
    ui.flash("success", f"Send #{int(send_id)} {what}{note}, recorded as {ui.md(ctx.actor)}.")
    st.rerun()


left, right = st.columns(2)
with left:
    st.text("The message arrived (or you accept that it did):")
    if st.button("Mark delivered", key="sg_review_deliver"):
        _resolve(requeue=False)
with right:
    st.warning("Requeue sends this email again: the recipient may get a second copy.")
    typed = st.text_input(
        f"Type {CONFIRM_WORD} to confirm", key=f"sg_review_confirm_{int(send_id)}", max_chars=20
    )
    confirmed = typed.strip().lower() == CONFIRM_WORD
    if st.button("Requeue", key="sg_review_requeue", disabled=not confirmed):
        # Checked again here: a disabled button is a hint to the browser, not a guarantee.
        if confirmed:
            _resolve(requeue=True)
        else:
            st.error(f"Not requeued: type {CONFIRM_WORD} in the box first.")
