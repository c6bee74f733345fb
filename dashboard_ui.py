"""Streamlit plumbing shared by dashboard.py and pages/: the access gate, engines, cached loaders, safe text.

Access (issue 3, "Access"):

- With no authentication configured the dashboard serves only a loopback address (.streamlit/config.toml
  binds 127.0.0.1). Bound anywhere else (or unset: Streamlit then listens on every interface) it refuses
  to show anything until a password or an `[auth]` section is configured.
- Password: SENDGUARD_DASHBOARD_PASSWORD in the environment (wins) or in .streamlit/secrets.toml. Compared
  in constant time (both sides hashed first, so not even the length leaks). Failed attempts are
  throttled twice over: per session (st.session_state) and per process (a st.cache_resource counter
  shared by every session, because opening a new session is free). The first FREE_ATTEMPTS failures
  cost nothing; from then on each failure locks the login for BASE_DELAY_S * 2^(n - FREE_ATTEMPTS)
  seconds, capped at MAX_DELAY_S, and attempts made while locked are refused without being checked. A
  success resets both. The price of the process-wide counter: someone hammering the login can keep the
  operator out for up to MAX_DELAY_S at a time; the CLI (`sendguard campaign pause`) is never gated
  by it. The password form also asks for a name, recorded as the actor of every action.
- `st.login` (OIDC) when .streamlit/secrets.toml has an `[auth]` section; the actor is the identity's
  email (or name, or subject). When both are configured, both are required.
- A secrets file that exists but cannot be read fails closed: nothing is shown until it is fixed.

Every page calls `page_context()` first, which runs the same gate. dashboard.py gates before
`st.navigation`, but the page files must not rely on that: the first script run of a fresh Streamlit
process with a `pages/` directory executes the requested page file directly, without the entry script
(Streamlit's pre-navigation MPA mode; AppTest does the same on every run after the first).

Lead- and operator-supplied text never goes through Markdown or HTML: tables via st.dataframe, single
values via st.text/st.code, and the rare value inside one of our own messages escaped with `md()`.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import html
import ipaddress
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from streamlit import config as st_config

import dashboard_data as dd
import reports
from sender.config import Settings, load_settings, redact_database_url
from sender.db import make_engine
from sender.errors import UsageError
from sender.migrate import current_revision, head_revision

T = TypeVar("T")

REFRESH = timedelta(seconds=5)  # live parts (st.fragment run_every)
PASSWORD_ENV = "SENDGUARD_DASHBOARD_PASSWORD"
FREE_ATTEMPTS = 3
BASE_DELAY_S = 2.0
MAX_DELAY_S = 300.0
MAX_NAME = 80
UPGRADE = "run `sendguard db upgrade` with the same SENDGUARD_DATABASE_URL"

_SESSION = "sg_session"  # who logged in with the password (never the password itself)
_SESSION_THROTTLE = "sg_login_throttle"
_FLASH = "sg_flash"

log = logging.getLogger("sendguard.dashboard")
if not log.handlers:  # `streamlit run` configures only its own loggers: say it on stderr, once
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)

# Indirection so tests can move the clock instead of sleeping through lockouts.
_clock: Callable[[], float] = time.monotonic


# --- safe text ----------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def md(value: object) -> str:
    """`value` as literal text inside our own Markdown (st.error/st.success/...): every ASCII
    punctuation character backslash-escaped (CommonMark), so no link, image, emphasis, `:color[]`
    directive or math can come out of it."""
    return _MD_SPECIAL.sub(r"\\\1", str(value))


def plot_label(value: object) -> str:
    """For Plotly trace names and axis labels, which understand a few HTML-like tags."""
    return html.escape(str(value))


def log_action(actor: str, what: str) -> None:
    """Actions with no campaign to hang an audit event on (a SendLog import, starting or stopping the
    local sender) are logged with their actor; campaign actions are recorded in campaign_event."""
    log.info("%s: %s", actor, what)


def flash(level: str, message: str) -> None:
    """A message shown on the next run (after st.rerun): success / info / warning / error."""
    st.session_state.setdefault(_FLASH, []).append((level, message))


def show_flashes() -> None:
    for level, message in st.session_state.pop(_FLASH, []):
        getattr(st, level)(message)


# --- access --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthConfig:
    password: str | None  # never displayed, logged or stored
    oidc: bool
    secrets_error: str | None  # a secrets file exists but cannot be read: fail closed


def _load_secrets() -> tuple[dict[str, Any], str | None]:
    try:
        return {k: st.secrets[k] for k in st.secrets}, None
    except FileNotFoundError as exc:  # StreamlitSecretNotFoundError is one
        if getattr(exc, "error_id", None) in (None, "no-secrets-found"):
            return {}, None
        return {}, str(exc)


def auth_config() -> AuthConfig:
    values, error = _load_secrets()
    password = os.environ.get(PASSWORD_ENV) or values.get(PASSWORD_ENV) or None
    return AuthConfig(
        password=str(password) if password else None, oidc="auth" in values, secrets_error=error
    )


def server_address() -> str | None:
    # streamlit.config.get_option, looked up at call time (st.get_option is bound at import).
    return st_config.get_option("server.address")


def is_loopback(address: str | None) -> bool:
    """Only a loopback address keeps the dashboard off the network. Unset means every interface."""
    if not address:
        return False
    host = address.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class LoginThrottle:
    """Failed password attempts and the lockout they earn (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures = 0
        self.locked_until = 0.0

    def retry_in(self, now: float) -> float:
        return max(0.0, self.locked_until - now)

    def failed(self, now: float) -> None:
        with self._lock:
            self.failures += 1
            self.locked_until = max(self.locked_until, now + lockout_after(self.failures))

    def reset(self) -> None:
        with self._lock:
            self.failures, self.locked_until = 0, 0.0

    # Picklable without its lock (the per-session copy lives in st.session_state).
    def __getstate__(self) -> dict[str, float]:
        return {"failures": self.failures, "locked_until": self.locked_until}

    def __setstate__(self, state: dict[str, float]) -> None:
        self.__init__()  # type: ignore[misc]
        self.failures, self.locked_until = int(state["failures"]), float(state["locked_until"])


def lockout_after(failures: int) -> float:
    if failures < FREE_ATTEMPTS:
        return 0.0
    return min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (failures - FREE_ATTEMPTS))


@st.cache_resource(show_spinner=False)
def login_throttle() -> LoginThrottle:
    """One per process: shared by every session, so new sessions do not buy new attempts."""
    return LoginThrottle()


def _session_throttle() -> LoginThrottle:
    if _SESSION_THROTTLE not in st.session_state:
        st.session_state[_SESSION_THROTTLE] = LoginThrottle()
    return st.session_state[_SESSION_THROTTLE]


@st.cache_resource(show_spinner=False)
def _session_key() -> bytes:
    """Per-process secret: sessions remember an HMAC of the password, so changing the password (or
    restarting) logs everyone out, and session state never holds the password or a plain hash of it."""
    return secrets.token_bytes(32)


def _password_fingerprint(password: str) -> str:
    return hmac.new(_session_key(), password.encode("utf-8"), hashlib.sha256).hexdigest()


def password_matches(given: str, expected: str) -> bool:
    # Equal-length digests, compared in constant time.
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8")).digest(), hashlib.sha256(expected.encode("utf-8")).digest()
    )


def _clean_name(value: str | None) -> str:
    name = " ".join("".join(ch for ch in (value or "") if ch.isprintable()).split())
    return name[:MAX_NAME]


def _oidc_identity() -> str | None:
    if not st.user.get("is_logged_in"):
        return None
    for claim in ("email", "name", "sub"):
        value = st.user.get(claim)
        if value:
            return _clean_name(str(value))
    return "unknown"


def _local_identity() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def current_actor() -> str | None:
    """`dashboard:<who>` when this session may see the dashboard, None when the gate must be shown.
    Renders nothing."""
    cfg = auth_config()
    if cfg.secrets_error:
        return None
    if not (cfg.password or cfg.oidc) and not is_loopback(server_address()):
        return None
    identity = None
    if cfg.oidc:
        identity = _oidc_identity()
        if identity is None:
            return None
    if cfg.password:
        session = st.session_state.get(_SESSION)
        if not isinstance(session, dict) or session.get("key") != _password_fingerprint(cfg.password):
            return None
        identity = identity or session.get("name")
    return f"dashboard:{identity or _local_identity()}"


def require_access() -> str:
    """The actor for this session, or: render the gate (login, or why the dashboard refuses) and stop.
    Nothing of any page is rendered before this returns."""
    actor = current_actor()
    if actor is not None:
        return actor
    _render_gate()
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


def _render_gate() -> None:
    cfg = auth_config()
    st.title("sendguard")
    if cfg.secrets_error:
        st.error(
            "The secrets file cannot be read, so the dashboard cannot tell whether it must ask for a "
            "password: it shows nothing until the file is fixed."
        )
        st.code(cfg.secrets_error, language=None)
        return
    address = server_address()
    if not (cfg.password or cfg.oidc) and not is_loopback(address):
        where = f"address {md(address)}" if address else "every network interface (server.address is unset)"
        st.error(
            f"Refusing to start: this dashboard listens on {where} and no authentication is configured. "
            f"Set {PASSWORD_ENV} (environment or .streamlit/secrets.toml) or an `[auth]` section for "
            "st.login, or bind it to 127.0.0.1 (the default in .streamlit/config.toml)."
        )
        return
    if cfg.oidc and not st.user.get("is_logged_in"):
        st.info("Log in with your identity provider to open the dashboard.")
        if st.button("Log in", key="sg_oidc_login", type="primary"):
            st.login()
        return
    _password_form(str(cfg.password))


def _password_form(password: str) -> None:
    st.info("This dashboard is protected by a password.")
    with st.form("sg_login", clear_on_submit=True):
        name = st.text_input("Your name (recorded with every action you take)", key="sg_login_name")
        given = st.text_input("Password", type="password", key="sg_login_password")
        submitted = st.form_submit_button("Log in", key="sg_login_submit", type="primary")
    if not submitted:
        return
    now = _clock()
    shared, mine = login_throttle(), _session_throttle()
    wait = max(shared.retry_in(now), mine.retry_in(now))
    if wait > 0:
        # Not even checked: a locked-out guess must teach nothing.
        st.error(f"Too many failed attempts: try again in {math.ceil(wait)} s.")
        return
    if not password_matches(given or "", password):
        shared.failed(now)
        mine.failed(now)
        wait = max(shared.retry_in(now), mine.retry_in(now))
        st.error("Wrong password." + (f" Next attempt in {math.ceil(wait)} s." if wait else ""))
        return
    clean = _clean_name(name)
    if not clean:
        st.error("Enter your name: it is recorded as the actor of every action you take.")
        return
    shared.reset()
    mine.reset()
    st.session_state[_SESSION] = {"name": clean, "key": _password_fingerprint(password)}
    st.rerun()


def logout_control() -> None:
    cfg = auth_config()
    if cfg.password and _SESSION in st.session_state:
        if st.sidebar.button("Log out", key="sg_logout"):
            del st.session_state[_SESSION]
            st.rerun()
    elif cfg.oidc and st.user.get("is_logged_in"):
        if st.sidebar.button("Log out", key="sg_logout"):
            st.logout()


# --- database ------------------------------------------------------------------------------------


def _dispose(engine: Engine) -> None:
    engine.dispose()


@st.cache_resource(show_spinner=False, on_release=_dispose)
def reader_engine(url: str) -> Engine:
    """One read-only engine (and pool) per process and database, shared by every session and rerun;
    on SQLite it begins deferred transactions, so reads never queue behind the sender's writes."""
    return make_engine(url, readonly=True)


@st.cache_resource(show_spinner=False, on_release=_dispose)
def writer_engine(url: str) -> Engine:
    """A separate engine for the operator's actions (pause/resume, review, import)."""
    return make_engine(url, pool_size=2)


@st.cache_resource(show_spinner=False)
def _head_revision() -> str:
    return head_revision()


def schema_problem(url: str) -> str | None:
    """What keeps the database from being shown (as an instruction), or None."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # Connecting would create an empty file; say what is wrong instead.
        if not Path(str(parsed.database)).exists():
            return f"The database file {md(parsed.database)} does not exist: {UPGRADE} to create it."
    try:
        current = current_revision(reader_engine(url))
    except SQLAlchemyError as exc:
        return cannot_read(url, exc)
    head = _head_revision()
    if current is None:
        return f"The database is not migrated yet: {UPGRADE}, then reload this page."
    if current != head:
        return (
            f"The database schema is at revision {md(current)}, but this dashboard expects {md(head)}: "
            f"{UPGRADE} (or upgrade sendguard if the database is newer)."
        )
    return None


def cannot_read(url: str, exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return (
        f"Cannot read the database {md(redact_database_url(url))} ({type(orig or exc).__name__}). "
        "Is it running and reachable?"
    )


@dataclass(frozen=True)
class PageContext:
    settings: Settings
    actor: str  # recorded with every action: dashboard:<who>

    @property
    def url(self) -> str:
        return self.settings.database_url

    def reader(self) -> Engine:
        return reader_engine(self.url)

    def writer(self) -> Engine:
        return writer_engine(self.url)


PAGES = [
    ("pages/campaigns.py", "Campaigns", ":material/campaign:"),
    ("pages/timeline.py", "Timeline", ":material/timeline:"),
    ("pages/duplicates.py", "Duplicates", ":material/content_copy:"),
    ("pages/import.py", "Import", ":material/upload_file:"),
    ("pages/senders.py", "Senders", ":material/dns:"),
    ("pages/review.py", "Review", ":material/rule:"),
]


def navigation_pages() -> list[Any]:  # list[st.Page]
    return [
        st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)
    ]


def _leave_pre_navigation_mode() -> None:
    """The first run of a fresh Streamlit process executes a requested page file directly, without
    dashboard.py (pre-navigation mode, because pages/ exists), and stays in that mode until some run
    calls st.navigation. Calling it here switches the process over and reruns, so the page comes back
    through dashboard.py (layout, navigation, gate). Only ever true for that first run, which is a page
    load (no click to lose). AppTest resets the mode before every run, so it is left alone there."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory and not st_config.get_option("global.appTest"):
        st.navigation(navigation_pages(), position="hidden")
        st.rerun()


def page_context() -> PageContext:
    """First call of every page: the gate, the configuration and the schema check (each stops the page
    with an instruction instead of a traceback)."""
    _leave_pre_navigation_mode()
    actor = require_access()
    try:
        settings = load_settings()
    except UsageError as exc:
        st.error(f"Configuration error: {md(exc)}")
        st.stop()
    _sidebar(actor, settings)
    problem = schema_problem(settings.database_url)
    if problem:
        st.error(problem)
        st.stop()
    show_flashes()
    return PageContext(settings=settings, actor=actor)


def _sidebar(actor: str, settings: Settings) -> None:
    st.sidebar.caption("Signed in as")
    st.sidebar.text(actor)
    logout_control()
    st.sidebar.caption("Database")
    st.sidebar.text(redact_database_url(settings.database_url))


def guarded(load: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run a loader; on a database or input error show it (no traceback) and return None."""
    try:
        return load(*args, **kwargs)
    except reports.TooManyBuckets as exc:
        st.warning(md(exc))
    except UsageError as exc:
        st.error(md(exc))
    except SQLAlchemyError as exc:
        st.error(cannot_read(load_settings().database_url, exc))
    return None


# --- cached loaders (the benchmark calls the dashboard_data functions underneath) ----------------


@st.cache_data(ttl=3, show_spinner=False, max_entries=64)
def campaigns_data(url: str, campaign: str | None) -> dd.CampaignsData:
    return dd.load_campaigns_data(reader_engine(url), campaign)


@st.cache_data(ttl=30, show_spinner=False, max_entries=16)
def campaign_names(url: str) -> list[str]:
    return dd.campaign_names(reader_engine(url))


@st.cache_data(ttl=10, show_spinner=False, max_entries=64)
def timeline_data(
    url: str, campaign: str | None, bucket_seconds: int, since: datetime | None, until: datetime | None
) -> dd.TimelineData:
    return dd.load_timeline_data(reader_engine(url), campaign, bucket_seconds, since, until)


@st.cache_data(ttl=15, show_spinner=False, max_entries=64)
def duplicates_data(
    url: str,
    label: str | None,
    campaign: str | None,
    bucket_seconds: int,
    kind: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dd.DuplicatesData:
    source = reports.Source.imported(label) if label is not None else reports.LIVE
    return dd.load_duplicates_data(
        reader_engine(url), source, campaign, bucket_seconds, kind, since=since, until=until
    )


@st.cache_data(ttl=10, show_spinner=False, max_entries=16)
def import_data(url: str) -> Any:
    return dd.load_import_data(reader_engine(url))


@st.cache_data(ttl=3, show_spinner=False, max_entries=16)
def senders_data(url: str, lease_seconds: float) -> Any:
    return dd.load_senders_data(reader_engine(url), lease_seconds)


@st.cache_data(ttl=3, show_spinner=False, max_entries=16)
def review_data(url: str) -> dd.ReviewData:
    return dd.load_review_data(reader_engine(url))


# --- time ranges ---------------------------------------------------------------------------------

RANGES: dict[str, timedelta | None] = {
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(hours=24),
    "Last 3 days": timedelta(days=3),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
    "All time": None,
    "Custom dates (UTC)": None,
}
CUSTOM = "Custom dates (UTC)"


def floor_to_bucket(at: datetime, seconds: int) -> datetime:
    # Aligned to the bucket so the cache key (and the first bucket) stays put between refreshes.
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def time_range(
    column: Any, key: str, default: str, bucket_seconds: int, reader: Engine
) -> tuple[datetime | None, datetime | None]:
    """A "Time range" picker in `column`: (since, until) for the chosen range, `since` floored to the
    bucket and taken from the database's clock (the senders' clock); (None, None) for all time. Stops the
    script with a hint while a custom range is half picked."""
    choice = column.selectbox("Time range", list(RANGES), index=list(RANGES).index(default), key=key)
    if choice == CUSTOM:
        today = date.today()
        picked = st.date_input(
            "From / to (inclusive)",
            value=(today - timedelta(days=3), today),
            key=key.removesuffix("_range") + "_dates",
        )
        if isinstance(picked, tuple | list) and len(picked) == 2:
            since = datetime.combine(picked[0], dt_time(0), tzinfo=UTC)
            return since, datetime.combine(picked[1] + timedelta(days=1), dt_time(0), tzinfo=UTC)
        st.info("Pick both a start and an end date.")
        st.stop()
    span = RANGES[choice]
    if span is None:
        return None, None
    return floor_to_bucket(dd.db_now(reader) - span, bucket_seconds), None


def clear_caches() -> None:
    """After an action: every view reflects it on the next run."""
    for loader in (campaigns_data, timeline_data, duplicates_data, import_data, senders_data, review_data):
        loader.clear()
