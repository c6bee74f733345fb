"""Unit tests for sender.campaign_file: the campaign TOML contract in CLI.md."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from sender.campaign_file import CampaignSpec, VariantSpec, Window, load_campaign_file, parse_campaign
from sender.errors import UsageError

FULL = '''
name = "spring-outreach"
from = "Ana Nowak <ana@example.com>"
reply_to = "ana@example.com"            # optional
unsubscribe = "mailto:unsub@example.com"
daily_limit = 200                       # optional: sends per campaign per local day
min_interval_seconds = 30               # optional: pacing across all senders
jitter_seconds = 10.5                   # optional
timezone = "Europe/Warsaw"              # optional, default UTC
window = { days = ["mon","tue","wed","thu","fri"], start = "09:00", end = "17:00" }   # optional

[[variants]]
letter = "A"
weight = 1
subject = "Quick question, {{ first_name }}"
body = """Hi {{ first_name | default("there") }}, ..."""

[[variants]]
letter = "B"
weight = 3
subject = "Hello {{ first_name }}"
body = "Body B"
'''

MINIMAL_VARIANT = '\n[[variants]]\nletter = "A"\nsubject = "s"\nbody = "b"\n'
MINIMAL = 'name = "c"\nfrom = "ana@example.com"\n' + MINIMAL_VARIANT


def with_lines(*lines: str, variants: str = MINIMAL_VARIANT) -> str:
    """A minimal valid campaign with the given top-level lines added (later keys override none)."""
    base = {"name": 'name = "c"', "from": 'from = "ana@example.com"'}
    for line in lines:
        key = line.split("=", 1)[0].strip()
        base[key] = line
    return "\n".join(base.values()) + "\n" + variants


def error(text: str) -> str:
    with pytest.raises(UsageError) as info:
        parse_campaign(text, "c.toml")
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith("c.toml: ")
    return message


# --- valid files -------------------------------------------------------------------------------


def test_full_example_from_cli_md() -> None:
    spec = parse_campaign(FULL)
    assert spec == CampaignSpec(
        name="spring-outreach",
        from_addr="Ana Nowak <ana@example.com>",
        reply_to="ana@example.com",
        unsubscribe="mailto:unsub@example.com",
        daily_limit=200,
        min_interval_seconds=30.0,
        jitter_seconds=10.5,
        timezone="Europe/Warsaw",
        window=Window(days=(0, 1, 2, 3, 4), start=datetime.time(9, 0), end=datetime.time(17, 0)),
        variants=(
            VariantSpec(
                "A", 1, "Quick question, {{ first_name }}", 'Hi {{ first_name | default("there") }}, ...'
            ),
            VariantSpec("B", 3, "Hello {{ first_name }}", "Body B"),
        ),
    )
    assert isinstance(spec.min_interval_seconds, float)


def test_defaults() -> None:
    spec = parse_campaign(MINIMAL)
    assert spec.reply_to is None and spec.unsubscribe is None and spec.daily_limit is None
    assert spec.min_interval_seconds == 0.0 and spec.jitter_seconds == 0.0
    assert spec.timezone == "UTC" and spec.window is None
    assert spec.variants == (VariantSpec("A", 1, "s", "b"),)


def test_name_is_trimmed() -> None:
    assert parse_campaign(with_lines('name = "  spring  "')).name == "spring"


def test_window_days_sorted_unique_case_insensitive_and_default_all() -> None:
    spec = parse_campaign(
        with_lines('window = { days = ["Fri", "mon", "MON", "sun"], start = "8:05", end = "9:00" }')
    )
    assert spec.window == Window((0, 4, 6), datetime.time(8, 5), datetime.time(9, 0))
    spec = parse_campaign(with_lines('window = { start = "00:00", end = "23:59" }'))
    assert spec.window is not None and spec.window.days == (0, 1, 2, 3, 4, 5, 6)


def test_window_accepts_toml_local_times() -> None:
    spec = parse_campaign(with_lines("window = { days = ['sat'], start = 09:00:00, end = 12:30:00 }"))
    assert spec.window == Window((5,), datetime.time(9), datetime.time(12, 30))


def test_from_forms_accepted() -> None:
    for value in [
        '"Nowak, Ana" <ana@example.com>',
        "ana@example.com",
        "Zażółć Gęślą <ana@example.com>",
        "ana@foo.test",
        "Ana <ANA@Example.COM>",
    ]:
        assert parse_campaign(with_lines(f"from = '{value}'")).from_addr == value


def test_unsubscribe_plain_address() -> None:
    assert parse_campaign(with_lines('unsubscribe = "unsub@example.com"')).unsubscribe == "unsub@example.com"


def test_utf8_bom_tolerated() -> None:
    assert parse_campaign("\ufeff" + MINIMAL).name == "c"


def test_integer_seconds_allowed_and_zero_ok() -> None:
    spec = parse_campaign(with_lines("min_interval_seconds = 0", "jitter_seconds = 0.0"))
    assert spec.min_interval_seconds == 0.0 and spec.jitter_seconds == 0.0


# --- TOML and top-level errors -----------------------------------------------------------------


def test_toml_syntax_error_is_one_line_with_position() -> None:
    message = error('name = "c"\nfrom = \n')
    assert message.startswith("c.toml: invalid TOML: ")
    assert "line 2" in message


def test_duplicate_key_is_toml_error() -> None:
    assert "invalid TOML" in error('name = "a"\nname = "b"\n' + MINIMAL_VARIANT)


def test_unknown_key_with_suggestion() -> None:
    message = error(with_lines("daily_limt = 5"))
    assert message == "c.toml: unknown key 'daily_limt' (did you mean 'daily_limit'?)"


def test_unknown_key_without_suggestion_lists_known() -> None:
    assert "known keys: name, from," in error(with_lines("zzz = 1"))


@pytest.mark.parametrize("key", ["name", "from", "variants"])
def test_required_keys(key: str) -> None:
    lines = {"name": 'name = "c"', "from": 'from = "ana@example.com"', "variants": MINIMAL_VARIANT}
    del lines[key]
    assert error("\n".join(lines.values())) == f"c.toml: missing required key '{key}'"


# --- name ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('name = ""', "name: must not be empty"),
        ('name = "   "', "name: must not be empty"),
        ("name = 5", "name: must be a string, got an integer"),
        (f'name = "{"x" * 201}"', "name: must be at most 200 characters, got 201"),
        ('name = "a\\u0007b"', "name: contains a control character (U+0007)"),
        ('name = "a\\nb"', "name: contains a control character (U+000A)"),
        ('name = "a\\u2028b"', "name: contains a control character (U+2028)"),
    ],
)
def test_bad_name(line: str, fragment: str) -> None:
    assert fragment in error(with_lines(line))


def test_name_of_200_chars_ok() -> None:
    assert len(parse_campaign(with_lines(f'name = "{"x" * 200}"')).name) == 200


# --- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("from", "", "from: must not be empty"),
        ("from", "ana", "from: 'ana' is not a valid email address"),
        ("from", "foo@", "is not a valid email address"),
        ("from", "a@x.com, b@x.com", "from: must be exactly one email address"),
        ("from", "Nowak, Ana <ana@example.com>", "from: must be exactly one email address"),
        ("from", "Ana <ana@example.com> extra", "from: must be exactly one email address"),
        ("from", "Ana <ana@example.com", "from: malformed address 'Ana <ana@example.com'"),
        ("from", "Ana <ana@example.com> (x", "from: malformed address"),
        ("from", "ana@example.com.", "from: 'ana@example.com.' is not a valid email address"),
        ("from", "ana@example.com\\r\\nBcc: x@example.com", "from: contains a control character (U+000D)"),
        ("from", "Ana <ana@localhost>", "from: 'ana@localhost' is not a valid email address"),
        ("reply_to", "nope", "reply_to: 'nope' is not a valid email address"),
        ("reply_to", "a@x.com; b@x.com", "reply_to:"),
        ("unsubscribe", "nope", "unsubscribe: must be an email address or a mailto: URL"),
        (
            "unsubscribe",
            "https://example.com/unsub",
            "unsubscribe: must be an email address or a mailto: URL",
        ),
        ("unsubscribe", "mailto:", "unsubscribe: must be an email address or a mailto: URL"),
        ("unsubscribe", "mailto:a@x.com?subject=un sub", "unsubscribe: must not contain spaces"),
    ],
)
def test_bad_addresses(key: str, value: str, fragment: str) -> None:
    message = error(with_lines(f'{key} = "{value}"'))
    assert fragment in message


def test_from_must_be_string() -> None:
    assert "from: must be a string, got an array" in error(with_lines('from = ["a@example.com"]'))


def test_unsubscribe_mailto_with_query_ok() -> None:
    line = 'unsubscribe = "mailto:unsub@example.com?subject=stop"'
    assert parse_campaign(with_lines(line)).unsubscribe == "mailto:unsub@example.com?subject=stop"


# --- numbers, timezone -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("daily_limit = 0", "daily_limit: must be between 1 and"),
        ("daily_limit = -3", "daily_limit: must be between 1 and"),
        ("daily_limit = 1.5", "daily_limit: must be an integer, got a number"),
        ("daily_limit = true", "daily_limit: must be an integer, got a boolean"),
        ('daily_limit = "10"', "daily_limit: must be an integer, got a string"),
        ("daily_limit = 9999999999", "daily_limit: must be between 1 and 2147483647"),
        ("min_interval_seconds = -1", "min_interval_seconds: must be a non-negative number, got -1"),
        ("min_interval_seconds = nan", "min_interval_seconds: must be a non-negative number"),
        ("min_interval_seconds = inf", "min_interval_seconds: must be a non-negative number"),
        ("min_interval_seconds = 1e300", "min_interval_seconds: must be at most 604800"),
        ('min_interval_seconds = "30"', "min_interval_seconds: must be a number of seconds, got a string"),
        ("jitter_seconds = -0.5", "jitter_seconds: must be a non-negative number"),
        ("jitter_seconds = false", "jitter_seconds: must be a number of seconds, got a boolean"),
        ('timezone = "Mars/Olympus"', "timezone: unknown time zone 'Mars/Olympus'"),
        ('timezone = "Europe"', "timezone: unknown time zone 'Europe'"),
        ('timezone = "../../etc/passwd"', "timezone: unknown time zone"),
        ('timezone = "/etc/localtime"', "timezone: unknown time zone"),
        ('timezone = ""', "timezone: unknown time zone"),
        ("timezone = 1", "timezone: must be a string"),
    ],
)
def test_bad_numbers_and_timezone(line: str, fragment: str) -> None:
    assert fragment in error(with_lines(line))


def test_daily_limit_one_ok() -> None:
    assert parse_campaign(with_lines("daily_limit = 1")).daily_limit == 1


# --- window --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "fragment"),
    [
        ('"9-17"', "window: must be a table"),
        ('{ start = "09:00" }', "window: missing 'end'"),
        ('{ end = "09:00" }', "window: missing 'start'"),
        (
            '{ start = "09:00", end = "17:00", dayz = ["mon"] }',
            "window: unknown key 'dayz' (did you mean 'days'?)",
        ),
        ('{ days = [], start = "09:00", end = "17:00" }', "window.days: must be a non-empty list"),
        ('{ days = "mon", start = "09:00", end = "17:00" }', "window.days: must be a non-empty list"),
        ('{ days = ["monday"], start = "09:00", end = "17:00" }', "window.days: unknown day 'monday'"),
        ('{ days = [1], start = "09:00", end = "17:00" }', "window.days: unknown day 1"),
        ('{ start = "9am", end = "17:00" }', 'window.start: must be a time "HH:MM"'),
        ('{ start = "24:00", end = "23:00" }', "window.start: must be a time"),
        ('{ start = "09:60", end = "17:00" }', "window.start: must be a time"),
        ('{ start = "09:00", end = "17:00:00" }', "window.end: must be a time"),
        ('{ start = "09:00", end = 17 }', "window.end: must be a time"),
        ('{ start = "17:00", end = "09:00" }', "window: end 09:00 must be after start 17:00"),
        ('{ start = "09:00", end = "09:00" }', "window: end 09:00 must be after start 09:00"),
    ],
)
def test_bad_window(window: str, fragment: str) -> None:
    assert fragment in error(with_lines(f"window = {window}"))


# --- variants ------------------------------------------------------------------------------------


def variant(letter: str = "A", **extra: str) -> str:
    lines = [f'letter = "{letter}"', 'subject = "s"', 'body = "b"']
    for key, value in extra.items():
        lines = [line for line in lines if not line.startswith(f"{key} ")]
        lines.append(f"{key} = {value}")
    return "\n[[variants]]\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("variants", "fragment"),
    [
        ("variants = []", "variants: at least one [[variants]] is required"),
        ('variants = "A"', "variants: must be an array of tables"),
        ('[variants]\nletter = "A"', "variants: must be an array of tables"),
        (variant() + variant(), "variants #2: letter: variant A is defined twice"),
        (variant("a"), "variants #1: letter: must be one uppercase letter A-Z, got 'a'"),
        (variant("AB"), "must be one uppercase letter A-Z, got 'AB'"),
        (variant("Ä"), "must be one uppercase letter A-Z"),
        (
            '\n[[variants]]\nletter = 1\nsubject = "s"\nbody = "b"\n',
            "must be one uppercase letter A-Z, got 1",
        ),
        ('\n[[variants]]\nsubject = "s"\nbody = "b"\n', "variants #1: missing 'letter'"),
        (variant(weight="0"), "variant A: weight: must be between 1 and"),
        (variant(weight="1.5"), "variant A: weight: must be an integer, got a number"),
        (variant(weight="true"), "variant A: weight: must be an integer, got a boolean"),
        (variant(subject='""'), "variant A: subject: must not be empty"),
        (variant(body='"  \\n "'), "variant A: body: must not be empty"),
        (variant(body="3"), "variant A: body: must be a string, got an integer"),
        ('\n[[variants]]\nletter = "A"\nbody = "b"\n', "variant A: missing 'subject'"),
        (variant(subjct='"x"'), "variants #1: unknown key 'subjct' (did you mean 'subject'?)"),
    ],
)
def test_bad_variants(variants: str, fragment: str) -> None:
    assert fragment in error(with_lines(variants=variants))


def test_variant_letters_unique_weights_default() -> None:
    spec = parse_campaign(with_lines(variants=variant("B") + variant("A", weight="2")))
    assert [(v.letter, v.weight) for v in spec.variants] == [("B", 1), ("A", 2)]


def test_template_syntax_error_names_variant_part_and_line() -> None:
    text = with_lines(variants=variant("A") + variant("B", body='"""Hi\n\n{{ first_name }"""'))
    assert error(text) == "c.toml: variant B body: template syntax error at line 3: unexpected '}'"


def test_template_syntax_error_in_subject() -> None:
    message = error(with_lines(variants=variant("C", subject='"{% if x %}"')))
    assert message.startswith("c.toml: variant C subject: template syntax error at line 1: ")


def test_sandbox_escape_rejected_at_parse_time() -> None:
    message = error(with_lines(variants=variant(body="\"{{ ''.__class__.__mro__ }}\"")))
    assert message.startswith("c.toml: variant A body: template line 1 accesses ")


# --- load_campaign_file -------------------------------------------------------------------------


def test_load_from_path(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(FULL, encoding="utf-8")
    assert load_campaign_file(path).name == "spring-outreach"
    assert load_campaign_file(str(path)).name == "spring-outreach"


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(UsageError, match=r"nope\.toml: no such file$"):
        load_campaign_file(missing)
    with pytest.raises(UsageError, match="is a directory"):
        load_campaign_file(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(UsageError, match=r"bad\.toml: not UTF-8 \(invalid byte at offset 11\)"):
        load_campaign_file(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"broken\.toml: invalid TOML: "):
        load_campaign_file(broken)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(with_lines("daily_limit = 0"), encoding="utf-8")
    with pytest.raises(UsageError, match=r"wrong\.toml: daily_limit: "):
        load_campaign_file(wrong)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_load_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    path.chmod(0)
    with pytest.raises(UsageError, match="cannot read"):
        load_campaign_file(path)
