"""Access to the dashboard: the password gate blocks every page and every action, wrong passwords are
throttled, the right one opens (and its name is the actor of every action); st.login is chosen when an
[auth] section exists; a non-loopback binding without auth is refused; lead- and operator-supplied text
containing HTML/JS is shown as text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

import dashboard_ui
from sender.db import make_engine
from tests._dashboard import (
    PAGES,
    TIMEOUT,
    app,
    demo_template_fixture,  # noqa: F401  (fixture)
    demo_url_fixture,  # noqa: F401  (fixture)
    frame,
    isolated_fixture,  # noqa: F401  (fixture)
    ok,
    shown,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("isolated")

PASSWORD = "correct horse battery staple"
XSS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]


class Clock:
    """Stands in for time.monotonic in dashboard_ui, so lockouts pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(dashboard_ui, "_clock", c)
    return c


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SENDGUARD_DASHBOARD_PASSWORD", PASSWORD)
    return PASSWORD


def _widget_keys(at: AppTest) -> set[str]:
    keys = set()
    for kind in ("button", "text_input", "selectbox", "checkbox", "file_uploader", "date_input"):
        keys |= {w.key for w in getattr(at, kind) if w.key}
    return keys


def assert_gate_only(at: AppTest) -> None:
    """Nothing of any page: no table, chart, metric or page control; only the login form."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.dataframe and not at.metric and not at.get("plotly_chart")
    assert _widget_keys(at) <= {"sg_login_name", "sg_login_password", "sg_login_submit", "sg_oidc_login"}
    assert [t.value for t in at.title] == ["sendguard"]
    assert not at.sidebar.text and not at.sidebar.button  # no identity, no database, no logout


def login(at: AppTest, pw: str, name: str = "Marta") -> AppTest:
    at.text_input(key="sg_login_name").input(name)
    at.text_input(key="sg_login_password").input(pw)
    return at.button(key="sg_login_submit").click().run()


def _db(url: str, sql: str) -> list:
    engine = make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


# --- the password gate ---------------------------------------------------------------------------


def test_with_a_password_nothing_renders_before_login(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    at = app(monkeypatch, demo_url)
    assert_gate_only(at)
    assert {w.key for w in at.text_input} == {"sg_login_name", "sg_login_password"}
    assert at.text_input(key="sg_login_password").proto.type == 1  # PASSWORD: masked
    # No page is even registered for this session: switching to one is impossible...
    for page in PAGES:
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(f"pages/{page}.py")


@pytest.mark.parametrize("page", PAGES)
def test_each_page_file_run_on_its_own_is_gated_too(
    page: str, demo_url: str, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    # ...and a page file executed directly (as Streamlit's pre-navigation mode can on a fresh process)
    # runs the same gate first: no content, no action button.
    monkeypatch.setenv("SENDGUARD_DATABASE_URL", demo_url)
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=TIMEOUT).run()
    assert_gate_only(at)
    # Actions stay out of reach even with their session state forged in.
    at.session_state["sg_campaign_pending"] = {"action": "pause", "campaign": "welcome-series", "reason": "x"}
    at.run()
    assert_gate_only(at)
    assert _db(demo_url, "SELECT status FROM campaign WHERE name = 'welcome-series'") == [("active",)]


def test_the_right_password_opens_and_names_the_actor(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, password: str, clock: Clock
) -> None:
    at = app(monkeypatch, demo_url)
    ok(login(at, password, name="Marta  Nowak"))
    assert [t.value for t in at.title] == ["Campaigns"]
    assert "dashboard:Marta Nowak" in [t.value for t in at.sidebar.text]
    assert at.session_state["sg_session"]["name"] == "Marta Nowak"
    assert PASSWORD not in repr(at.session_state["sg_session"])  # an HMAC, never the password
    for page in PAGES:
        ok(at.switch_page(f"pages/{page}.py").run())
    # An action records the logged-in name.
    at.switch_page("pages/campaigns.py").run()
    at.selectbox(key="sg_campaign").select("welcome-series").run()
    at.text_input(key="sg_reason").input("checking").run()
    at.button(key="sg_pause").click().run()
    ok(at.button(key="sg_confirm").click().run())
    assert _db(demo_url, "SELECT kind, actor FROM campaign_event ORDER BY id DESC LIMIT 1") == [
        ("paused", "dashboard:Marta Nowak")
    ]
    # Logging out closes it again.
    at.button(key="sg_logout").click().run()
    assert_gate_only(at)


def test_a_name_is_required(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, password: str, clock: Clock
) -> None:
    at = login(app(monkeypatch, demo_url), password, name="   ")
    assert any("Enter your name" in m for m in shown(at.error))
    assert_gate_only(at)


def test_the_password_may_come_from_secrets(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    at = app(monkeypatch, demo_url, run=False)
    at.secrets["SENDGUARD_DASHBOARD_PASSWORD"] = "from-secrets"
    at.run()
    assert_gate_only(at)
    assert_gate_only(login(at, "wrong"))
    ok(login(at, "from-secrets"))
    assert [t.value for t in at.title] == ["Campaigns"]


def test_wrong_passwords_are_throttled(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, password: str, clock: Clock
) -> None:
    at = app(monkeypatch, demo_url)
    for attempt in range(1, dashboard_ui.FREE_ATTEMPTS):
        login(at, f"guess {attempt}")
        assert shown(at.error) == ["Wrong password."]
        assert_gate_only(at)
    login(at, "guess 3")  # the third failure starts the lockout
    assert shown(at.error) == ["Wrong password. Next attempt in 2 s."]
    # While locked out even the right password is refused, without being checked.
    login(at, password)
    assert shown(at.error) == ["Too many failed attempts: try again in 2 s."]
    assert_gate_only(at)
    # A new session (a new browser tab, a script) is locked out as well: the counter is per process.
    other = app(monkeypatch, demo_url)
    login(other, password)
    assert shown(other.error) == ["Too many failed attempts: try again in 2 s."]
    assert_gate_only(other)
    # Each further failure doubles the wait.
    clock.now += 2
    login(at, "guess 4")
    assert shown(at.error) == ["Wrong password. Next attempt in 4 s."]
    clock.now += 4
    ok(login(at, password))
    assert [t.value for t in at.title] == ["Campaigns"]
    assert dashboard_ui.login_throttle().failures == 0  # success resets the counter


def test_lockout_grows_exponentially_and_is_capped() -> None:
    delays = [dashboard_ui.lockout_after(n) for n in range(1, 15)]
    assert delays[:2] == [0.0, 0.0]
    assert delays[2:6] == [2.0, 4.0, 8.0, 16.0]
    assert max(delays) == dashboard_ui.MAX_DELAY_S and delays[-1] == dashboard_ui.MAX_DELAY_S


def test_password_comparison() -> None:
    assert dashboard_ui.password_matches("s3cret", "s3cret")
    assert not dashboard_ui.password_matches("s3cre", "s3cret")
    assert not dashboard_ui.password_matches("", "s3cret")
    source = Path(dashboard_ui.__file__).read_text()
    assert "hmac.compare_digest" in source


# --- binding and OIDC ----------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0", "", "192.168.1.10", "mail.example.com", "::"])
def test_refuses_a_non_loopback_binding_without_auth(
    address: str, demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with patch_config_options({"server.address": address or None}):
        at = app(monkeypatch, demo_url)
        assert not at.exception
        assert len(at.error) == 1 and "Refusing to start" in at.error[0].value
        assert_gate_only(at)
        assert not at.text_input and not at.button


def test_a_non_loopback_binding_with_a_password_asks_for_it(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, password: str, clock: Clock
) -> None:
    with patch_config_options({"server.address": "0.0.0.0"}):
        at = app(monkeypatch, demo_url)
        assert_gate_only(at)
        assert not at.error and at.text_input(key="sg_login_password")
        ok(login(at, password))


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.53", "localhost", "::1", "[::1]"])
def test_loopback_addresses(address: str) -> None:
    assert dashboard_ui.is_loopback(address)


@pytest.mark.parametrize("address", [None, "", "0.0.0.0", "::", "10.0.0.1", "example.com"])
def test_non_loopback_addresses(address: str | None) -> None:
    assert not dashboard_ui.is_loopback(address)


def _oidc_app(monkeypatch: pytest.MonkeyPatch, url: str, user: dict) -> AppTest:
    at = app(monkeypatch, url, run=False)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "x" * 32,
        "client_id": "sendguard",
        "client_secret": "s",
        "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration",
    }
    at.user = user
    return at.run()


def test_st_login_is_chosen_when_an_auth_section_exists(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with patch_config_options({"server.address": "0.0.0.0"}):  # auth configured: any binding is allowed
        at = _oidc_app(monkeypatch, demo_url, {"is_logged_in": False})
        assert_gate_only(at)
        assert {b.key for b in at.button} == {"sg_oidc_login"} and not at.text_input
        at = _oidc_app(
            monkeypatch, demo_url, {"is_logged_in": True, "email": "ana@example.com", "name": "Ana"}
        )
        ok(at)
        assert [t.value for t in at.title] == ["Campaigns"]
        assert "dashboard:ana@example.com" in [t.value for t in at.sidebar.text]


def test_an_unreadable_secrets_file_fails_closed(
    demo_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "secrets.toml"
    broken.write_text('SENDGUARD_DASHBOARD_PASSWORD = "unterminated\n')
    from streamlit.runtime.secrets import secrets_singleton

    with patch_config_options({"secrets.files": [str(broken)]}):
        secrets_singleton._reset()
        try:
            at = app(monkeypatch, demo_url)
        finally:
            secrets_singleton._reset()
    assert len(at.error) == 1 and "cannot be read" in at.error[0].value
    assert_gate_only(at)
    assert not at.text_input


# --- lead- and operator-supplied text is never HTML -----------------------------------------------

_HTML_IN_MARKDOWN = re.compile(r"(?<!\\)<(script|img)", re.IGNORECASE)


def _assert_no_raw_html_in_markdown(at: AppTest) -> None:
    """Markdown-rendering elements may mention the text only escaped (\\<script ...)."""
    for kind in (
        "markdown",
        "caption",
        "success",
        "info",
        "warning",
        "error",
        "title",
        "subheader",
        "header",
    ):
        for element in getattr(at, kind):
            assert not _HTML_IN_MARKDOWN.search(str(element.value)), (kind, element.value)
    for metric in at.metric:
        assert not _HTML_IN_MARKDOWN.search(metric.label + metric.value)


def test_html_in_imported_lead_fields_is_shown_as_text(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = (
        "campaignId,leadId,variantLetter,createdAt,host\n"
        f'"{XSS[1]}","{XSS[0]}",A,2024-03-12 11:40:00,"{XSS[1]}"\n'
        f'"{XSS[1]}","{XSS[0]}",B,2024-03-12 11:41:00,"{XSS[1]}"\n'
        f'"{XSS[1]}","=HYPERLINK(""http://evil"")",A,2024-03-12 11:42:00,web\n'
        f'"{XSS[1]}","=HYPERLINK(""http://evil"")",A,2024-03-12 11:43:00,web\n'
    ).encode()
    at = ok(app(monkeypatch, demo_url))
    at.switch_page("pages/import.py").run()
    at.file_uploader(key="sg_import_file").upload("x.csv", csv, "text/csv")
    at.text_input(key="sg_import_label").input(XSS[0])
    ok(at.button(key="sg_import").click().run())
    _assert_no_raw_html_in_markdown(at)
    assert XSS[0] in set(frame(at, "label", "rows")["label"])

    ok(at.button(key="sg_import_analyse").click().run())
    _assert_no_raw_html_in_markdown(at)
    details = frame(at, "kind", "group", "lead", "variant", "instance")
    assert set(details["lead"]) == {XSS[0], '=HYPERLINK("http://evil")'}  # verbatim, as text
    assert set(details["campaign"]) == {XSS[1]} and XSS[1] in set(details["host"])
    assert at.selectbox(key="sg_dup_source").value == f"imported:{XSS[0]}"


def test_html_in_campaign_names_and_smtp_replies_is_shown_as_text(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(demo_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE campaign SET name = :n WHERE name = 'welcome-series'"), {"n": XSS[1]})
            conn.execute(text("UPDATE send_log SET smtp_reply = :r WHERE status = 'unknown'"), {"r": XSS[0]})
    finally:
        engine.dispose()
    at = ok(app(monkeypatch, demo_url))
    _assert_no_raw_html_in_markdown(at)
    assert XSS[1] in set(frame(at, "name", "status", "queued")["name"])
    at.selectbox(key="sg_campaign").select(XSS[1]).run()
    at.button(key="sg_pause").click().run()
    assert f"campaign: {XSS[1]}\nreason: (none)" in [t.value for t in at.text]  # st.text: plain
    ok(at.button(key="sg_confirm").click().run())
    _assert_no_raw_html_in_markdown(at)
    assert any(f"Paused {XSS[1]}" in m for m in shown(at.success))  # escaped in the Markdown source

    ok(at.switch_page("pages/review.py").run())
    _assert_no_raw_html_in_markdown(at)
    assert set(frame(at, "id", "smtp_reply")["smtp_reply"]) == {XSS[0]}
    assert any(XSS[0] in c.value for c in at.code)  # st.code: literal
    for page in ("timeline", "duplicates", "senders"):
        ok(at.switch_page(f"pages/{page}.py").run())
        _assert_no_raw_html_in_markdown(at)


def test_md_escapes_everything_markdown_could_act_on() -> None:
    for raw in [
        *XSS,
        "[x](javascript:alert(1))",
        "![x](http://t/p.png)",
        ":red[x]",
        "$x$",
        "**b**",
        "a@b.com",
    ]:
        escaped = dashboard_ui.md(raw)
        assert re.sub(r"\\(.)", r"\1", escaped) == raw
        assert not re.search(r"(?<!\\)[<\[\]()!*:$@]", escaped), escaped
    assert dashboard_ui.plot_label(XSS[0]) == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_the_dashboard_source_never_renders_raw_html() -> None:
    files = [
        ROOT / "dashboard.py",
        ROOT / "dashboard_ui.py",
        ROOT / "dashboard_data.py",
        *(ROOT / "pages").glob("*.py"),
    ]
    assert len(files) >= 9
    for path in files:
        source = path.read_text(encoding="utf-8")
        for needle in (
            "unsafe_allow_html",
            "st.html",
            "components.html",
            "st.components",
            "st.markdown",
            "st.write(",
        ):
            assert needle not in source, f"{path.name} uses {needle}"
