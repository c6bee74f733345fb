"""The dashboard in a real browser (issue 3, acceptance 2).

`streamlit run dashboard.py` on a free loopback port, against a SQLite database holding the demo data plus
a campaign that a real `sendguard run` process is sending to a real SMTP peer. Debian's chromium, driven
headless through Playwright (no browser download), opens every page, checks that it renders without a
Streamlit exception and saves a full-page screenshot of it, then pauses the sending campaign the way an
operator would: pick it, type a reason, Pause, Confirm. From the moment the database says `paused`, at
most the one message already on the wire may still reach the peer.

Screenshots go to $SENDGUARD_TEST_ARTIFACTS (default: test-artifacts/ at the repo root, gitignored).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

import dashboard_ui
from sender.demo import seed_demo
from tests.conftest import ROOT
from tests.integration._sendguard import seed
from tests.integration.helpers import poll_until, sql_rows, start_sender, tail
from tests.smtp_peer import SmtpPeer

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

CAMPAIGN = "browser-pause"
LEADS = 600
# Paced, so the campaign takes minutes however fast the machine is (>= 600 * 0.25 s = 150 s): it is
# still sending when the test, having walked every page first, clicks Pause. One message per claim, so at
# most one can be in flight when the pause commits.
MIN_INTERVAL = 0.25
REASON = "browser test: duplicates on the timeline"

HEALTH_DEADLINE = 90.0  # a cold `streamlit run` on a loaded 2-core machine
UI_TIMEOUT_MS = 60_000  # any single wait in the browser
OBSERVE_SECONDS = 3.0  # after the pause: an observation window, not synchronization
VIEWPORT = {"width": 1440, "height": 1000}
MAX_SHOT_HEIGHT = 12_000
# The height the page needs to show everything without scrolling (Streamlit scrolls an inner section).
FULL_HEIGHT_JS = f"""(() => {{
    let need = document.documentElement.scrollHeight;
    for (const el of document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"]')) {{
        need = Math.max(need, window.innerHeight + el.scrollHeight - el.clientHeight);
    }}
    return Math.min(need, {MAX_SHOT_HEIGHT});
}})()"""

# (title in the navigation, text that only that page shows once it has run to the end)
PAGE_MARKERS = {
    "Campaigns": ("Campaigns", "Audit trail"),
    "Timeline": ("Timeline", "Sender instances in this range"),
    "Duplicates": ("Duplicates", "Affected leads"),
    "Import": ("Import a SendLog", "Imported logs"),
    "Senders": ("Senders", "Sender on this host"),
    "Review": ("Review unknown sends", "Mark delivered"),
}


def _require_browser() -> None:
    """Skip loudly where there is no chromium or no Playwright; fail instead in CI."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(CHROMIUM)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if not missing:
        return
    message = f"!!! browser test needs {' and '.join(missing)}: skipped !!!"
    if os.environ.get("CI") or os.environ.get("SENDGUARD_REQUIRE_BROWSER"):
        pytest.fail(message.replace("skipped", "CI requires it"), pytrace=False)
    pytest.skip(message)


def _artifacts_dir() -> Path:
    out = Path(os.environ.get("SENDGUARD_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url_path(page_file: str) -> str:
    """The URL path st.navigation gives a page file (its stem; the default page is also served at /)."""
    return re.sub(r"^[0-9_]+", "", Path(page_file).stem)


def _base_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STREAMLIT_") and k not in (dashboard_ui.PASSWORD_ENV, "SENDGUARD_SMTP_URL")
    }
    env["SENDGUARD_DATABASE_URL"] = db_url
    env["SENDGUARD_LOCK_FILE"] = str(tmp_path / "sender.lock")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=30)


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log_file: Path) -> None:
    url = f"http://127.0.0.1:{port}/_stcore/health"
    deadline = time.monotonic() + HEALTH_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{tail(log_file)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200 and response.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer ok within {HEALTH_DEADLINE:.0f}s:\n{tail(log_file)}")


def _campaign_status(db_url: str) -> str:
    return sql_rows(db_url, "SELECT status FROM campaign WHERE name = :n", {"n": CAMPAIGN})[0][0]


@pytest.fixture
def streamlit_app(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], tuple[str, Path]]]:
    """Start `streamlit run dashboard.py` with an env; returns (base URL, log file). Stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> tuple[str, Path]:
        port = _free_port()
        log_file = tmp_path / "streamlit.log"
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "dashboard.py",
                 "--server.port", str(port), "--server.address", "127.0.0.1",
                 "--server.headless", "true", "--browser.gatherUsageStats", "false",
                 "--server.fileWatcherType", "none"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append(proc)
        _wait_healthy(proc, port, log_file)
        return f"http://127.0.0.1:{port}", log_file

    yield start
    for proc in procs:
        _stop(proc, signal.SIGTERM, timeout=20)


def test_every_page_renders_and_pause_stops_the_sending_campaign(
    sqlite_url: str,
    tmp_path: Path,
    smtp_peer_factory: Callable[..., SmtpPeer],
    streamlit_app: Callable[[dict[str, str]], tuple[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _require_browser()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    artifacts = _artifacts_dir()
    if (ROOT / ".streamlit" / "secrets.toml").exists():
        pytest.fail(".streamlit/secrets.toml exists: this test needs a dashboard with no password set")

    # 1. The database: the demo world, plus a paced campaign for the sender to work through.
    monkeypatch.setenv("SENDGUARD_DATABASE_URL", sqlite_url)
    monkeypatch.delenv(dashboard_ui.PASSWORD_ENV, raising=False)
    seed_demo(sqlite_url)
    seed(sqlite_url, LEADS, workdir=tmp_path / "seed", name=CAMPAIGN,
         toml_extra=f"min_interval_seconds = {MIN_INTERVAL}")  # fmt: skip

    env = _base_env(tmp_path, sqlite_url)
    peer = smtp_peer_factory()
    sender_log = tmp_path / "sender.log"
    with ExitStack() as cleanup:
        # 2. A real sender, sending to a real SMTP peer.
        sender = start_sender(
            {**env, "SENDGUARD_SMTP_URL": peer.url}, tmp_path / "sender.lock", ["--interval", "0.2"],
            log_file=sender_log,
        )  # fmt: skip
        cleanup.callback(lambda: _stop(sender, signal.SIGKILL, timeout=10))
        assert poll_until(lambda: peer.count(CAMPAIGN) >= 3, 90, interval=0.1), (
            f"the sender sent nothing of {CAMPAIGN} within 90s:\n{tail(sender_log)}"
        )

        # 3. The dashboard (no password configured, loopback only: the gate lets the operator in).
        base, streamlit_log = streamlit_app(env)

        # 4. Chromium.
        pw = cleanup.enter_context(sync_playwright())
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        cleanup.callback(browser.close)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        js_errors: list[str] = []
        page.on("pageerror", lambda exc: js_errors.append(str(exc)))

        app = page.locator('[data-testid="stApp"]')

        def settled() -> None:
            """Connected, no script run in progress (a fragment's refresh may start another later), and
            every element drawn: Streamlit shows a skeleton until an element's code has loaded."""
            expect(app).to_have_attribute("data-test-connection-state", "CONNECTED")
            expect(app).to_have_attribute("data-test-script-state", "notRunning")
            expect(page.locator('[data-testid="stSkeleton"]')).to_have_count(0)

        def no_exception(where: str) -> None:
            boxes = page.locator('[data-testid="stException"]')
            assert boxes.count() == 0, f"{where}: Streamlit exception on the page:\n" + "\n".join(
                boxes.all_inner_texts()
            )

        shots: list[Path] = []

        def screenshot(name: str) -> None:
            """The whole page. Streamlit scrolls inside its main section, not the document, so a
            full_page screenshot alone stops at the viewport: grow the viewport to the content first."""
            height = page.evaluate(FULL_HEIGHT_JS)
            page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], height)})
            try:
                try:  # the layout follows the new size within a frame or two; a chart may take longer
                    page.wait_for_function(FULL_HEIGHT_JS + " <= window.innerHeight + 2", timeout=5_000)
                except PlaywrightTimeout:
                    pass  # content that grows with the window: the shot is as tall as it gets
                path = artifacts / f"browser-{len(shots) + 1:02d}-{name}.png"
                page.screenshot(path=str(path), full_page=True, animations="disabled")
            finally:
                page.set_viewport_size(VIEWPORT)
            shots.append(path)
            print(f"screenshot: {path}")

        page.goto(base + "/")
        expect(page.get_by_role("heading", name="Campaigns", exact=True)).to_be_visible()
        # No password configured: no login form, the session is signed in with a local identity.
        expect(page.get_by_text("This dashboard is protected by a password")).to_have_count(0)
        expect(page.get_by_text(re.compile(r"^dashboard:\S+@\S+$"))).to_be_visible()

        for page_file, title, _icon in dashboard_ui.PAGES:
            heading, marker = PAGE_MARKERS[title]
            link = page.locator('[data-testid="stTopNavLink"]').filter(has_text=title)
            if link.count() and link.first.is_visible():
                link.first.click()
            else:  # folded into the navigation's overflow menu: go by URL instead
                page.goto(f"{base}/{_url_path(page_file)}")
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
            expect(page.get_by_text(marker, exact=True).first).to_be_visible()
            if title in ("Timeline", "Duplicates"):
                expect(page.locator('[data-testid="stPlotlyChart"] .main-svg').first).to_be_visible()
            if title == "Senders":  # the dashboard shares the sender's lock file: it sees it running
                expect(page.get_by_text(f"running: pid {sender.pid}")).to_be_visible()
            settled()
            no_exception(title)
            screenshot(_url_path(page_file))
            if title == "Duplicates":  # the demo's imported incident replay: the onset chart
                source = page.locator(".st-key-sg_dup_source").get_by_role("combobox")
                source.click()
                page.get_by_role("option", name=re.compile(r"^Imported: ")).first.click()
                expect(source).to_have_value(re.compile(r"^Imported: "))
                expect(page.get_by_text("Source: imported send log").first).to_be_visible()
                expect(page.locator('[data-testid="stPlotlyChart"] .main-svg').first).to_be_visible()
                settled()
                no_exception("Duplicates, imported source")
                screenshot("duplicates-imported")

        # 5. Pause the sending campaign from the Campaigns page: pick it, give a reason, Pause, Confirm.
        page.locator('[data-testid="stTopNavLink"]').filter(has_text="Campaigns").first.click()
        expect(page.get_by_role("heading", name="Pause or resume")).to_be_visible()
        settled()
        picker = page.locator(".st-key-sg_campaign").get_by_role("combobox")
        picker.click()
        page.get_by_role("option", name=CAMPAIGN, exact=True).click()
        expect(picker).to_have_value(CAMPAIGN)
        expect(page.get_by_text("status: active", exact=True)).to_be_visible()
        settled()
        reason = page.locator(".st-key-sg_reason input")
        reason.fill(REASON)
        reason.press("Enter")  # commits the text input (a rerun) before the click
        settled()
        page.locator(".st-key-sg_pause button").click()
        # The confirmation step names the campaign and the reason it is about to record.
        expect(page.get_by_text("Pause this campaign?")).to_be_visible()
        expect(page.get_by_text(f"campaign: {CAMPAIGN}")).to_be_visible()
        expect(page.get_by_text(f"reason: {REASON}")).to_be_visible()
        assert _campaign_status(sqlite_url) == "active", "paused before the confirmation"
        assert peer.count(CAMPAIGN) < LEADS - 10, "the campaign (almost) finished before the pause"
        page.locator(".st-key-sg_confirm button").click()

        assert poll_until(lambda: _campaign_status(sqlite_url) == "paused", 60, interval=0.05), (
            f"{CAMPAIGN} not paused 60s after Confirm:\n{tail(streamlit_log)}"
        )
        at_pause = peer.count(CAMPAIGN)
        assert 0 < at_pause < LEADS, at_pause
        poll_until(lambda: peer.count(CAMPAIGN) > at_pause + 1, OBSERVE_SECONDS)
        after = peer.count(CAMPAIGN)
        assert after - at_pause <= 1, f"{after - at_pause} messages of {CAMPAIGN} arrived after the pause"
        assert sender.poll() is None, f"a pause must not stop the sender:\n{tail(sender_log)}"

        events = sql_rows(
            sqlite_url,
            "SELECT e.actor, e.reason FROM campaign_event AS e JOIN campaign AS c ON c.id = e.campaign_id"
            " WHERE c.name = :n AND e.kind = 'paused'",
            {"n": CAMPAIGN},
        )
        assert len(events) == 1, events
        actor, recorded_reason = events[0]
        assert actor.startswith("dashboard:"), events
        assert recorded_reason == REASON, events

        # The page says so too.
        expect(page.get_by_text(f"Paused {CAMPAIGN} (recorded as {actor}).")).to_be_visible()
        expect(page.get_by_text("status: paused", exact=True)).to_be_visible()
        expect(page.get_by_text(f"paused by {actor}: {REASON}", exact=True)).to_be_visible()
        expect(page.locator(".st-key-sg_resume button")).to_be_visible()
        settled()
        no_exception("Campaigns after the pause")
        screenshot("campaigns-paused")

        # 6. The sender stops cleanly on SIGTERM (the remaining cleanup runs on the way out).
        assert _stop(sender, signal.SIGTERM, timeout=60) == 0, tail(sender_log)
        assert peer.count(CAMPAIGN) == after, "a message of the paused campaign arrived during shutdown"
        print(f"{CAMPAIGN}: {at_pause} messages when the pause committed, {after} in the end")
        if js_errors:
            print("JavaScript errors in the page:\n" + "\n".join(js_errors))

    log_text = streamlit_log.read_text(errors="replace")
    assert "Traceback" not in log_text, f"the dashboard logged an error:\n{tail(streamlit_log, 80)}"
