"""Import: another system's SendLog CSV (the rules of `sendguard sendlog import`, CLI.md) into
imported_send_log, for analysis on the Duplicates page. The original Prisma export
(`id,campaignId,leadId,variantLetter,createdAt`) imports without edits."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import dashboard_ui as ui
from sender.errors import UsageError
from sender.sendlog_import import import_sendlog

ctx = ui.page_context()

ZONES = ["UTC", "Europe/Warsaw", "Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles",
         "Asia/Tokyo", "Other…"]  # fmt: skip
_RESULT = "sg_import_result"

st.title("Import a SendLog")
st.caption(
    "Columns are matched case-insensitively, snake_case or camelCase: campaign (campaignId), lead (leadId "
    "or email), variant (variantLetter), time (sentAt/createdAt/timestamp), optional step, status, host, "
    "pid, instance. Bad rows are rejected with their line number; the good ones are imported."
)

uploaded = st.file_uploader("SendLog CSV", type=["csv", "txt"], key="sg_import_file")
label = st.text_input(
    "Label", key="sg_import_label", max_chars=200, help="names this log on the Duplicates page"
)
c1, c2 = st.columns(2)
zone = c1.selectbox("Timezone of times without one", ZONES, key="sg_import_zone")
if zone == "Other…":
    zone = c2.text_input("IANA timezone", value="UTC", key="sg_import_zone_other")
replace = st.checkbox("Replace an existing log with this label", key="sg_import_replace")

if st.button("Import", key="sg_import", type="primary"):
    st.session_state.pop(_RESULT, None)
    if uploaded is None:
        st.error("Choose a CSV file first.")
    elif not label.strip():
        st.error("Give the log a label.")
    else:
        try:
            result = import_sendlog(
                ctx.writer(),
                uploaded.getvalue(),
                label=label,
                timezone=zone,
                source=uploaded.name,
                replace=replace,
            )
        except UsageError as exc:
            st.error(ui.md(exc))
        else:
            ui.clear_caches()
            ui.log_action(ctx.actor, f"imported SendLog {uploaded.name!r} as {result['label']!r}: "
                          f"{result['imported']} rows, {len(result['rejected'])} rejected")  # fmt: skip
            st.session_state[_RESULT] = result

result = st.session_state.get(_RESULT)
if result:
    rejected = result["rejected"]
    replaced = f", replacing {result['replaced']} earlier rows" if result["replaced"] else ""
    st.success(
        f"Imported {result['imported']} rows ({result['sends']} sends) as {ui.md(result['label'])}{replaced}; "
        f"{len(rejected)} rejected."
    )
    cols = pd.DataFrame(sorted(result["columns"].items()), columns=["field", "column in the file"])
    st.dataframe(cols, hide_index=True, key="sg_import_columns")
    if result["ignored_columns"]:
        st.text("ignored columns: " + ", ".join(result["ignored_columns"]))
    if rejected:
        st.subheader("Rejected lines")
        st.dataframe(
            pd.DataFrame(rejected, columns=["line", "reason"]), hide_index=True, key="sg_import_rejected"
        )
    if st.button("Analyse it on the Duplicates page", key="sg_import_analyse"):
        st.session_state["sg_dup_source_request"] = result["label"]
        st.switch_page("pages/duplicates.py")

st.subheader("Imported logs")
labels = ui.guarded(ui.import_data, ctx.url)
if labels is not None:
    if labels.empty:
        st.info("Nothing imported yet.")
    else:
        st.dataframe(labels, hide_index=True, key="sg_import_labels")
