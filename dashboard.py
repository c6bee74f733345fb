"""sendguard operations dashboard: `streamlit run dashboard.py` (`make run` starts it with a sender and a sink).

The access gate runs before anything else (dashboard_ui.py explains the rules); only then does
`st.navigation` offer the pages. Before login the navigation holds nothing but the gate itself, so no
page name, link or content is sent to an unauthenticated browser. Each page runs the same gate again
(`dashboard_ui.page_context()`, which also draws the sidebar), because Streamlit can execute a page file
without this script: on the first run of a fresh process (its pre-`st.navigation` mode for apps with a
`pages/` directory), and AppTest does so on every run after the first.

The dashboard never sends; the sender never renders UI (DESIGN.md): they meet only in the database
named by SENDGUARD_DATABASE_URL. Reads go through one shared read-only engine, the operator's actions
(pause/resume, review, import) through a separate writer engine, each recording the actor.
"""

from __future__ import annotations

import streamlit as st

import dashboard_ui as ui


def _gate() -> None:
    ui.require_access()  # renders the login (or the refusal) and stops


def main() -> None:
    st.set_page_config(page_title="sendguard", page_icon=":material/mail_lock:", layout="wide")
    actor = ui.current_actor()
    if actor is None:
        # Only the gate is navigable: nothing of the pages exists for this session yet.
        st.navigation([st.Page(_gate, title="sendguard", url_path="login")], position="hidden").run()
        return
    st.navigation(ui.navigation_pages(), position="top").run()


if __name__ == "__main__":  # streamlit runs this file as __main__
    main()
