"""Every dashboard page under Streamlit's AppTest on a seeded SQLite database (`sendguard demo` plus the
incident replay of SEED.md imported as a log): no exception, the numbers the CLI gives on screen, and the
actions (pause/resume, review, import, sender start/stop) changing the database and the audit trail.
The page loaders (dashboard_data.load_*_data) also run on PostgreSQL."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text

import dashboard_data as dd
import reports
from sender.config import load_settings
from sender.db import make_engine
from sender.locks import SenderFileLock
from tests._dashboard import (
    PAGES,
    REPLAY_LABEL,
    app,
    cli_env,
    demo_template_fixture,  # noqa: F401  (fixture)
    demo_url_fixture,  # noqa: F401  (fixture)
    forge_click,
    frame,
    incident_csv,
    isolated_fixture,  # noqa: F401  (fixture)
    metrics,
    ok,
    plotly_values,
    shown,
)
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("isolated")


def _scalar(url: str, sql: str, **params: object) -> object:
    engine = make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()
    finally:
        engine.dispose()


def _rows(url: str, sql: str, **params: object) -> list:
    engine = make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def _cli_json(args: list[str], url: str, tmp_path: Path) -> object:
    result = run_cli([*args, "--json"], cli_env(url, tmp_path))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- navigation ----------------------------------------------------------------------------------


def test_every_page_renders_without_error(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = ok(app(monkeypatch, demo_url))
    assert [t.value for t in at.title] == ["Campaigns"]  # the default page
    for page in PAGES:
        ok(at.switch_page(f"pages/{page}.py").run())
        assert at.title, page


# --- Campaigns -----------------------------------------------------------------------------------


def test_campaigns_page_shows_what_sendguard_status_says(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    status = _cli_json(["status"], demo_url, tmp_path)
    at = ok(app(monkeypatch, demo_url))
    table = frame(at, "name", "status", "queued", "progress", "eta")
    shown = {r["name"]: r for r in table.to_dict("records")}
    assert set(shown) == {c["name"] for c in status["campaigns"]}
    for c in status["campaigns"]:
        row = shown[c["name"]]
        assert row["status"] == c["status"]
        assert {s: int(row[s]) for s in c["counts"]} == c["counts"], c["name"]
        assert int(row["enrolled"]) == sum(c["counts"].values())
    assert shown["spring-outreach"]["progress"] == 1.0 and shown["welcome-series"]["progress"] == 0.0
    assert shown["q4-newsletter"]["eta_note"] == "paused: not sending"
    assert "every 30 s" in shown["spring-outreach"]["pacing"]
    m = metrics(at)
    active = sum(c["status"] == "active" for c in status["campaigns"])
    assert m["Active campaigns"] == str(active)
    assert m["Queued"] == str(sum(c["counts"]["queued"] for c in status["campaigns"]))


def _events(url: str, campaign: str) -> list:
    return _rows(
        url,
        "SELECT e.kind, e.actor, e.reason FROM campaign_event e JOIN campaign c ON c.id = e.campaign_id "
        "WHERE c.name = :name ORDER BY e.id",
        name=campaign,
    )


def _status(url: str, campaign: str) -> str:
    return str(_scalar(url, "SELECT status FROM campaign WHERE name = :name", name=campaign))


def test_pause_needs_a_confirmation_then_records_actor_and_reason(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = ok(app(monkeypatch, demo_url))
    at.selectbox(key="sg_campaign").select("welcome-series").run()
    before = _events(demo_url, "welcome-series")
    at.text_input(key="sg_reason").input("duplicates on the timeline").run()
    ok(at.button(key="sg_pause").click().run())
    # Asked, not done: the confirmation step is on screen and the database is unchanged.
    assert _status(demo_url, "welcome-series") == "active"
    assert any("Pause this campaign?" in m for m in shown(at.warning))
    ok(at.button(key="sg_cancel").click().run())
    assert _status(demo_url, "welcome-series") == "active"
    assert not at.button(key="sg_pause").disabled

    at.text_input(key="sg_reason").input("duplicates on the timeline").run()
    at.button(key="sg_pause").click().run()
    ok(at.button(key="sg_confirm").click().run())
    assert _status(demo_url, "welcome-series") == "paused"
    new = _events(demo_url, "welcome-series")[len(before) :]
    assert len(new) == 1
    kind, actor, reason = new[0]
    assert (kind, reason) == ("paused", "duplicates on the timeline")
    assert actor.startswith("dashboard:") and len(actor) > len("dashboard:")
    paused_by = _scalar(demo_url, "SELECT paused_by FROM campaign WHERE name = 'welcome-series'")
    assert paused_by == actor
    assert any("Paused welcome" in m for m in shown(at.success))
    # The screen shows the new state and the audit trail has the event.
    table = frame(at, "name", "status", "queued")
    assert table.set_index("name").loc["welcome-series", "status"] == "paused"
    trail = frame(at, "kind", "actor", "reason")
    assert trail.iloc[0]["kind"] == "paused" and trail.iloc[0]["actor"] == actor

    # Resume: the same two steps.
    at.text_input(key="sg_reason").input("fixed and verified").run()
    at.button(key="sg_resume").click().run()
    assert _status(demo_url, "welcome-series") == "paused"
    ok(at.button(key="sg_confirm").click().run())
    assert _status(demo_url, "welcome-series") == "active"
    assert _events(demo_url, "welcome-series")[-1] == ("resumed", actor, "fixed and verified")


def test_a_confirmation_does_not_carry_over_to_another_campaign(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = ok(app(monkeypatch, demo_url))
    at.selectbox(key="sg_campaign").select("welcome-series").run()
    at.button(key="sg_pause").click().run()
    at.selectbox(key="sg_campaign").select("spring-outreach").run()
    assert not [b for b in at.button if b.key == "sg_confirm"]
    assert _status(demo_url, "welcome-series") == "active"


def test_an_auto_paused_campaign_is_marked_with_its_breaker(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sender.campaigns import auto_pause

    reason = "5 hard failures (5xx) among the last 20 sends (threshold 5)"
    engine = make_engine(demo_url)
    try:
        with engine.begin() as conn:
            campaign_id = conn.execute(
                text("SELECT id FROM campaign WHERE name = 'welcome-series'")
            ).scalar_one()
            assert auto_pause(
                conn, campaign_id, breaker="hard_failures", reason=reason, now=dd.db_now(engine)
            )
    finally:
        engine.dispose()
    at = ok(app(monkeypatch, demo_url))
    table = frame(at, "name", "status", "breaker")
    marks = {r["name"]: r["breaker"] for r in table.to_dict("records")}
    assert marks["welcome-series"] == "hard_failures"
    # q4-newsletter was paused by hand: no breaker mark.
    assert {n: m for n, m in marks.items() if m} == {"welcome-series": "hard_failures"}
    at.selectbox(key="sg_campaign").select("welcome-series").run()
    assert "Auto-paused by the hard_failures circuit breaker." in [
        m.replace("**", "") for m in shown(at.warning)
    ]
    assert f"paused by breaker:hard_failures: {reason}" in [t.value for t in at.text]
    events = frame(at, "kind", "actor", "reason")
    assert ("auto_paused", "breaker:hard_failures", reason) in set(
        events[["kind", "actor", "reason"]].itertuples(index=False, name=None)
    )
    assert at.button(key="sg_resume")  # resumed as after any pause


def test_draft_campaigns_offer_no_pause(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = ok(app(monkeypatch, demo_url))
    at.selectbox(key="sg_campaign").select("draft-ideas").run()
    assert not [b for b in at.button if b.key in ("sg_pause", "sg_resume")]
    assert any("Only an active campaign" in m for m in shown(at.info))


# --- Timeline ------------------------------------------------------------------------------------


def test_timeline_counts_every_attempt_by_outcome(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = ok(app(monkeypatch, demo_url))
    ok(at.switch_page("pages/timeline.py").run())
    at.selectbox(key="sg_tl_range").select("All time").run()
    ok(at.selectbox(key="sg_tl_bucket").select("1h").run())
    counts = dict(_rows(demo_url, "SELECT status, count(*) FROM send_log GROUP BY status"))
    m = metrics(at)
    for outcome in reports.OUTCOMES:
        assert m[outcome.capitalize()] == str(counts.get(outcome, 0)), outcome
    assert len(at.get("plotly_chart")) == 2  # by outcome, by sender instance

    at.selectbox(key="sg_tl_campaign").select("q4-newsletter").run()
    ok(at)
    q4 = dict(_rows(
        demo_url,
        "SELECT s.status, count(*) FROM send_log s JOIN campaign c ON c.id = s.campaign_id "
        "WHERE c.name = 'q4-newsletter' GROUP BY s.status",
    ))  # fmt: skip
    assert metrics(at)["Sent"] == str(q4.get("sent", 0))

    at.selectbox(key="sg_tl_range").select("Custom dates (UTC)").run()
    ok(at)
    assert at.date_input(key="sg_tl_dates")


def test_timeline_instance_chart_names_each_sender(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = ok(app(monkeypatch, demo_url))
    at.switch_page("pages/timeline.py").run()
    ok(at.selectbox(key="sg_tl_range").select("All time").run())
    spec = json.loads(at.get("plotly_chart")[1].proto.spec)
    names = {t["name"] for t in spec["data"]}
    pids = {r[0] for r in _rows(demo_url, "SELECT DISTINCT pid FROM send_log")}
    assert len(names) == len(pids) == 4
    assert all(any(f"pid {p}" in n for n in names) for p in pids)


# --- Duplicates ----------------------------------------------------------------------------------

_KIND_LABELS = {
    "exact": "Exact duplicates",
    "cross_variant": "Cross-variant duplicates",
    "address": "Address duplicates",
    "cross_campaign": "Cross-campaign overlap",
    "prevented": "Prevented (guard fired)",
}


def _assert_matches_report(at, report: dict) -> None:
    m = metrics(at)
    assert m["Sends"] == str(report["total_sends"])
    assert m["Duplicate sends"] == str(report["duplicate_sends"])
    assert m["Affected leads"] == str(report["affected_leads"])
    for kind, label in _KIND_LABELS.items():
        assert m[label] == str(report["by_kind"][kind]["duplicate_sends"]), kind
    captions = [c.value for c in at.caption]
    for kind in _KIND_LABELS:
        assert f"{report['by_kind'][kind]['affected_leads']} affected lead(s)" in captions


def test_duplicates_page_live_matches_report_duplicates(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    report = _cli_json(["report", "duplicates"], demo_url, tmp_path)
    at = ok(app(monkeypatch, demo_url))
    ok(at.switch_page("pages/duplicates.py").run())
    # The live log holds no key duplicates, so the first visit opens on an imported incident.
    assert at.selectbox(key="sg_dup_source").value.startswith("imported:")
    ok(at.selectbox(key="sg_dup_source").select("live").run())
    assert at.selectbox(key="sg_dup_source").value == "live"
    # The live log opens on a recent range (its cost is a range scan, however long the log)...
    assert at.selectbox(key="sg_dup_range_live").value == "Last 24 hours"
    recent = metrics(at)["Sends"]
    # ...and over all time shows exactly `report duplicates` (all time by default).
    ok(at.selectbox(key="sg_dup_range_live").select("All time").run())
    assert int(recent) <= report["total_sends"]
    _assert_matches_report(at, report)
    assert metrics(at)["Onset"] == "none" and report["onset"] is None
    # The one guard firing of the demo, attributed to its sender instance.
    ok(at.selectbox(key="sg_dup_kind").select("prevented").run())
    details = frame(at, "kind", "group", "lead", "sent_at", "variant", "instance")
    assert len(details) == report["by_kind"]["prevented"]["duplicate_sends"] == 1
    assert details.iloc[0]["instance"]


def test_duplicates_page_on_the_incident_replay(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    report = _cli_json(["report", "duplicates", "--imported", REPLAY_LABEL], demo_url, tmp_path)
    assert (report["total_sends"], report["duplicate_sends"], report["affected_leads"]) == (52, 16, 16)
    at = ok(app(monkeypatch, demo_url))
    at.switch_page("pages/duplicates.py").run()
    ok(at.selectbox(key="sg_dup_source").select(f"imported:{REPLAY_LABEL}").run())
    _assert_matches_report(at, report)
    assert metrics(at)["Onset"] == "2024-03-12 11:40 UTC"
    assert (
        report["by_kind"]["exact"]["duplicate_sends"]
        == report["by_kind"]["cross_variant"]["duplicate_sends"]
        == 8
    )

    # The chart: onset marked, the sender instances per bucket drawn beside the sends.
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    shapes = spec["layout"]["shapes"]
    assert len(shapes) == 1 and str(shapes[0]["x0"]).startswith("2024-03-12T11:40")
    instances = next(t for t in spec["data"] if t["name"] == "sender instances active")
    assert max(plotly_values(instances["y"])) == 2 and min(plotly_values(instances["y"])) == 1
    assert "2 sender instance(s) were active in the onset bucket." in [c.value for c in at.caption]

    # Drill-down: every copy of the 16 affected leads, with time, variant and instance.
    details = frame(at, "kind", "group", "lead", "copy", "sent_at", "variant", "instance")
    assert len(details) == 32 and details["group"].nunique() == 16
    assert set(details["instance"]) == {"web-1:4100", "web-1:4200"}
    ok(at.selectbox(key="sg_dup_kind").select("cross_variant").run())
    cross = frame(at, "kind", "group", "lead", "copy", "variant")
    assert cross["group"].nunique() == 8
    assert all(g["variant"].nunique() == 2 for _, g in cross.groupby("group"))
    assert at.download_button(key="sg_dup_csv")
    instances_table = frame(at, "instance", "sends", "duplicate_sends")
    assert int(instances_table["duplicate_sends"].sum()) == 16


def test_duplicates_csv_download_neutralises_formulas() -> None:
    df = pd.DataFrame({
        "lead": ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx", "plain", None],
        "pid": [1, 2, 3, 4, 5, 6, 7],
    })  # fmt: skip
    out = dd.csv_bytes(df).decode()
    lines = out.splitlines()
    assert lines[1].startswith("\"'=HYPERLINK") and lines[2] == "'+1,2" and lines[3] == "'-2,3"
    assert lines[4] == "'@SUM(A1),4" and lines[5].startswith("'\tx") and lines[6] == "plain,6"
    assert dd.neutralise_formulas(df)["pid"].tolist() == list(range(1, 8))  # numbers untouched


# --- Import --------------------------------------------------------------------------------------


def test_import_page_imports_a_prisma_export_and_hands_over_to_duplicates(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = incident_csv(with_processes=False) + b"sl999,cmp_spring,lead99,A,not a time\n"
    at = ok(app(monkeypatch, demo_url))
    ok(at.switch_page("pages/import.py").run())
    at.file_uploader(key="sg_import_file").upload("SendLog.csv", csv, "text/csv")
    at.text_input(key="sg_import_label").input("prisma-export")
    ok(at.button(key="sg_import").click().run())
    assert any("Imported 52 rows (52 sends)" in m and "1 rejected" in m for m in shown(at.success))
    rejected = frame(at, "line", "reason")
    assert rejected["line"].tolist() == [54] and "unreadable time" in rejected["reason"].iloc[0]
    columns = frame(at, "field", "column in the file")
    assert dict(zip(columns["field"], columns["column in the file"], strict=True))["lead"] == "leadId"
    rows = _scalar(demo_url, "SELECT count(*) FROM imported_send_log WHERE label = 'prisma-export'")
    assert rows == 52
    labels = frame(at, "label", "rows")
    assert set(labels["label"]) >= {REPLAY_LABEL, "prisma-export"}

    ok(at.button(key="sg_import_analyse").click().run())
    assert [t.value for t in at.title] == ["Duplicates"]
    assert at.selectbox(key="sg_dup_source").value == "imported:prisma-export"
    m = metrics(at)
    assert (m["Sends"], m["Duplicate sends"], m["Affected leads"]) == ("52", "16", "16")


def test_import_page_says_what_is_wrong(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = ok(app(monkeypatch, demo_url))
    at.switch_page("pages/import.py").run()
    at.button(key="sg_import").click().run()
    assert [e.value for e in at.error] == ["Choose a CSV file first."]
    # An existing label is refused unless replacing it.
    at.file_uploader(key="sg_import_file").upload("again.csv", incident_csv(), "text/csv")
    at.text_input(key="sg_import_label").input(REPLAY_LABEL)
    at.button(key="sg_import").click().run()
    assert not at.exception and len(at.error) == 1 and "already exists" in at.error[0].value
    at.checkbox(key="sg_import_replace").check()
    ok(at.button(key="sg_import").click().run())
    assert any("replacing 52 earlier rows" in m for m in shown(at.success))
    # A file that is not a SendLog at all.
    at.file_uploader(key="sg_import_file").clear()
    at.file_uploader(key="sg_import_file").upload("x.csv", b"a,b\n1,2\n", "text/csv")
    at.text_input(key="sg_import_label").input("junk")
    at.button(key="sg_import").click().run()
    assert not at.exception and len(at.error) == 1 and "no column for" in shown(at.error)[0]


# --- Senders -------------------------------------------------------------------------------------


def test_senders_page_lists_instances_and_explains_a_missing_smtp_url(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = ok(app(monkeypatch, demo_url))
    ok(at.switch_page("pages/senders.py").run())
    table = frame(at, "instance", "host", "pid", "version", "started_at", "heartbeat_age_s", "state", "slot")
    db = _rows(demo_url, "SELECT id, stopped_at FROM sender_instance")
    recent = {r[0] for r in db}
    assert set(table["instance"]) <= recent and len(table) >= 1
    assert set(table["state"]) == {"stopped"}  # the demo's senders all stopped
    assert metrics(at)["Alive"] == "0"
    assert any("SENDGUARD_SMTP_URL" in m for m in shown(at.info))
    assert at.button(key="sg_sender_start").disabled and at.button(key="sg_sender_stop").disabled
    # Even a forged click on the disabled button starts nothing.
    ok(forge_click(at.button(key="sg_sender_start")).run())
    assert not dd.lock_is_held(os.environ["SENDGUARD_LOCK_FILE"])
    assert not Path(dd.sender_log_path(os.environ["SENDGUARD_LOCK_FILE"])).exists()
    refused = dd.start_local_sender(load_settings())  # and the control itself refuses, saying why
    assert refused.outcome == "refused" and "SENDGUARD_SMTP_URL is not set" in refused.message


def test_start_refuses_while_the_lock_is_held(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SENDGUARD_SMTP_URL", "null://")
    lock = SenderFileLock(str(tmp_path / "sender.lock"))
    lock.acquire()  # this test process plays the running sender
    try:
        at = ok(app(monkeypatch, demo_url))
        at.switch_page("pages/senders.py").run()
        pid = os.getpid()
        assert f"the lock's pid file names pid {pid}, which is not a sendguard sender" in [
            t.value for t in at.text
        ]
        ok(at.button(key="sg_sender_start").click().run())
        assert any(f"already running (pid {os.getpid()})" in m for m in shown(at.info))
        # Stop refuses to signal a lock holder that is not a sendguard sender (here: pytest).
        at.button(key="sg_sender_stop").click().run()
        assert any("not a sendguard sender" in m for m in shown(at.error))
    finally:
        lock.release()


@pytest.mark.slow
def test_start_and_stop_a_local_sender(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SENDGUARD_SMTP_URL", "null://")
    lock_file = str(tmp_path / "sender.lock")
    at = ok(app(monkeypatch, demo_url))
    at.switch_page("pages/senders.py").run()
    ok(at.button(key="sg_sender_start").click().run())
    assert any("Sender started" in m for m in shown(at.success)), shown(at.error) + [c.value for c in at.code]
    state = dd.local_sender(lock_file)
    assert state.running and state.is_sender and dd.lock_is_held(lock_file)
    pid = state.pid
    assert any(f"running: pid {pid}" in t.value for t in at.run().text)
    try:
        # A second click is harmless: the lock says a sender runs.
        ok(at.button(key="sg_sender_start").click().run())
        assert any(f"already running (pid {pid})" in m for m in shown(at.info))
        # Let it register and send (its SIGTERM handler is installed by then), then stop it.
        sql = "SELECT count(*) FROM sender_instance WHERE pid = :pid AND stopped_at IS NULL"
        deadline = time.monotonic() + 30
        while not _scalar(demo_url, sql, pid=pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        ok(at.button(key="sg_sender_stop").click().run())
        assert any(f"SIGTERM sent to pid {pid}" in m for m in shown(at.success))
        deadline = time.monotonic() + 30
        while dd.lock_is_held(lock_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not dd.lock_is_held(lock_file)
    finally:
        if dd.local_sender(lock_file).running:
            os.kill(pid, 9)
    # A clean shutdown: deregistered, and its output went beside its lock file.
    assert _scalar(
        demo_url, "SELECT count(*) FROM sender_instance WHERE pid = :pid AND stopped_at IS NOT NULL", pid=pid
    )
    assert "stopped: sent=" in Path(dd.sender_log_path(lock_file)).read_text()
    assert not dd.local_sender(lock_file).running


# --- Review --------------------------------------------------------------------------------------


def _unknown_ids(url: str) -> list[int]:
    return [r[0] for r in _rows(url, "SELECT id FROM send_log WHERE status = 'unknown' ORDER BY id")]


def test_review_mark_delivered(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _unknown_ids(demo_url)
    at = ok(app(monkeypatch, demo_url))
    ok(at.switch_page("pages/review.py").run())
    table = frame(at, "id", "email", "message_id", "smtp_reply")
    assert table["id"].tolist() == ids
    target = ids[1]
    at.selectbox(key="sg_review_send").select(target).run()
    assert any("message-id:  <sg.c" in c.value for c in at.code)
    ok(at.button(key="sg_review_deliver").click().run())
    assert _scalar(demo_url, "SELECT status FROM send_log WHERE id = :i", i=target) == "sent"
    kind, actor, reason = _rows(
        demo_url, "SELECT kind, actor, reason FROM campaign_event ORDER BY id DESC LIMIT 1"
    )[0]
    assert (kind, reason) == ("delivered", f"send {target}") and actor.startswith("dashboard:")
    assert frame(at, "id", "email")["id"].tolist() == [i for i in ids if i != target]


def test_review_requeue_needs_the_typed_confirmation(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _unknown_ids(demo_url)[0]
    events = _scalar(demo_url, "SELECT count(*) FROM campaign_event")
    at = ok(app(monkeypatch, demo_url))
    at.switch_page("pages/review.py").run()
    assert any("second copy" in m for m in shown(at.warning))
    requeue = at.button(key="sg_review_requeue")
    assert requeue.disabled
    # Clicked anyway by a forged client: discarded, nothing changes.
    ok(forge_click(requeue).run())
    at.text_input(key=f"sg_review_confirm_{target}").input("yes").run()
    assert at.button(key="sg_review_requeue").disabled
    forge_click(at.button(key="sg_review_requeue")).run()
    assert _scalar(demo_url, "SELECT status FROM send_log WHERE id = :i", i=target) == "unknown"
    assert _scalar(demo_url, "SELECT count(*) FROM campaign_event") == events

    at.text_input(key=f"sg_review_confirm_{target}").input("requeue").run()
    assert not at.button(key="sg_review_requeue").disabled
    ok(at.button(key="sg_review_requeue").click().run())
    assert _scalar(demo_url, "SELECT status FROM send_log WHERE id = :i", i=target) == "deferred"
    enrollment = _rows(
        demo_url,
        "SELECT cl.status, cl.reason FROM campaign_lead cl JOIN send_log s ON s.enrollment_id = cl.id WHERE s.id = :i",
        i=target,
    )[0]
    assert tuple(enrollment) == ("queued", "requeued_by_operator")
    kind, actor = _rows(demo_url, "SELECT kind, actor FROM campaign_event ORDER BY id DESC LIMIT 1")[0]
    assert kind == "requeued" and actor.startswith("dashboard:")
    assert any("requeued" in m for m in shown(at.success))


# --- the loaders on both backends -----------------------------------------------------------------


@pytest.mark.slow
def test_page_loaders_on_both_backends(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sender.demo import seed_demo
    from sender.sendlog_import import import_sendlog
    from sender.status import status

    seed_demo(db_url)
    writer = make_engine(db_url)
    engine = make_engine(db_url, readonly=True)
    try:
        import_sendlog(writer, incident_csv(), label=REPLAY_LABEL, source="incident.csv")
        now = dd.db_now(engine)
        campaigns = dd.load_campaigns_data(engine, "spring-outreach")
        expected = {c["name"]: c["counts"] for c in status(engine, now=now, lease_seconds=300)["campaigns"]}
        got = campaigns.overview.set_index("name")
        for name, counts in expected.items():
            assert {s: int(got.loc[name, s]) for s in counts} == counts
        assert set(campaigns.events["kind"]) >= {"started", "duplicate_prevented"}

        timeline = dd.load_timeline_data(engine, None, 3600)
        assert int(timeline.by_outcome["sends"].sum()) == _scalar(
            db_url, "SELECT count(*) FROM send_log WHERE status IN ('sent','failed','deferred','unknown')"
        )
        assert timeline.by_instance["instance"].nunique() == 4

        replay = dd.load_duplicates_data(engine, reports.Source.imported(REPLAY_LABEL))
        s = replay.summary
        assert (s["total_sends"], s["duplicate_sends"], s["affected_leads"]) == (52, 16, 16)
        assert s["onset"].startswith("2024-03-12T11:40:00")
        assert len(replay.details) == 32 and replay.buckets["instances"].max() == 2
        live = dd.load_duplicates_data(engine, kind="prevented")
        assert live.summary["by_kind"]["prevented"]["duplicate_sends"] == 1 and len(live.details) == 1

        assert REPLAY_LABEL in set(dd.load_import_data(engine)["label"])
        senders = dd.load_senders_data(engine, 300.0)
        assert len(senders) >= 1 and set(senders["state"]) <= {"alive", "stale", "stopped"}
        review = dd.load_review_data(engine)
        assert review.total == 3 and len(review.unknown) == 3

        # And the dashboard itself on this backend: every page renders.
        at = ok(app(monkeypatch, db_url))
        for page in PAGES:
            ok(at.switch_page(f"pages/{page}.py").run())
    finally:
        writer.dispose()
        engine.dispose()
