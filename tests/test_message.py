"""Unit tests for sender.message: deterministic Message-ID, injection-proof headers."""

from __future__ import annotations

import email
import email.utils
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.policy import default as default_policy
from typing import Any

import pytest

from sender.message import build_message, message_id, one_line


def build(**overrides: Any) -> EmailMessage:
    args: dict[str, Any] = {
        "from_addr": "Ana Nowak <ana@example.com>",
        "to_addr": "lead@example.org",
        "subject": "Quick question",
        "body": "Hi there,\nhow are you?\n",
        "message_id": "<sg.c1.l2.s0@example.com>",
        "reply_to": None,
        "unsubscribe": None,
        "campaign": "spring-outreach",
    }
    args.update(overrides)
    return build_message(**args)


def header_block(raw: bytes) -> list[bytes]:
    head, _, _ = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n")


def header_names(raw: bytes) -> list[str]:
    # Folded continuation lines start with whitespace; every other line starts a header.
    return [line.split(b":", 1)[0].decode() for line in header_block(raw) if line[:1] not in (b" ", b"\t")]


def reparse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    return msg


def body_text(msg: EmailMessage) -> str:
    # The wire form uses CRLF; compare text with plain newlines.
    return msg.get_content().replace("\r\n", "\n")


# --- one_line ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("  padded\t", "padded"),
        ("a\r\nb", "a b"),
        ("a\rb\nc", "a b c"),
        ("a \r\n\r\n  b", "a b"),
        ("a\u2028b\u2029c", "a b c"),
        ("a\x85b\x0bc\x0cd", "a b c d"),
        ("a\x00b\x1bc\x7fd", "a b c d"),
        ("a\u00a0b\u3000c", "a b c"),
        ("\r\n", ""),
        ("Zażółć  gęślą", "Zażółć gęślą"),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    assert one_line(text) == expected


# --- message_id --------------------------------------------------------------------------------


def test_message_id_is_deterministic() -> None:
    first = message_id(7, 42, 0, "Ana Nowak <ana@example.com>")
    assert first == "<sg.c7.l42.s0@example.com>"
    assert message_id(7, 42, 0, "Ana Nowak <ana@example.com>") == first
    assert message_id(7, 42, 1, "Ana Nowak <ana@example.com>") != first


def test_message_id_domain_normalized() -> None:
    assert message_id(1, 2, 3, "ANA@Mail.Example.COM") == "<sg.c1.l2.s3@mail.example.com>"
    assert message_id(1, 2, 3, "ana@münchen.de") == "<sg.c1.l2.s3@xn--mnchen-3ya.de>"


def test_message_id_parses_as_msg_id() -> None:
    value = message_id(1, 2, 0, "ana@example.com")
    assert default_policy.header_factory("Message-ID", value).defects == ()


@pytest.mark.parametrize("bad", [-1, True])
def test_message_id_rejects_bad_ids(bad: int) -> None:
    with pytest.raises(ValueError):
        message_id(bad, 1, 0, "ana@example.com")


def test_message_id_rejects_addressless_from() -> None:
    with pytest.raises(ValueError):
        message_id(1, 1, 0, "Ana Nowak")


# --- build_message -----------------------------------------------------------------------------


def test_headers_and_body() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    msg = build(reply_to="replies@example.com")
    raw = bytes(msg)
    parsed = reparse(raw)
    assert parsed["From"] == "Ana Nowak <ana@example.com>"
    assert parsed["To"] == "lead@example.org"
    assert parsed["Subject"] == "Quick question"
    assert parsed["Message-ID"] == "<sg.c1.l2.s0@example.com>"
    assert parsed["Reply-To"] == "replies@example.com"
    assert parsed["List-Unsubscribe"] == "<mailto:replies@example.com?subject=unsubscribe>"
    assert parsed["X-Sendguard-Campaign"] == "spring-outreach"
    sent = email.utils.parsedate_to_datetime(parsed["Date"])
    assert sent.utcoffset() == timedelta(0)
    assert before <= sent <= datetime.now(UTC) + timedelta(seconds=1)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert body_text(parsed) == "Hi there,\nhow are you?\n"


def test_no_reply_to_header_when_absent() -> None:
    parsed = reparse(bytes(build()))
    assert parsed["Reply-To"] is None
    assert parsed["List-Unsubscribe"] == "<mailto:ana@example.com?subject=unsubscribe>"


@pytest.mark.parametrize(
    ("unsubscribe", "expected"),
    [
        ("unsub@example.com", "<mailto:unsub@example.com?subject=unsubscribe>"),
        ("mailto:unsub@example.com", "<mailto:unsub@example.com?subject=unsubscribe>"),
        ("MAILTO:unsub@example.com?subject=stop", "<mailto:unsub@example.com?subject=stop>"),
        ("mailto:unsub@münchen.de", "<mailto:unsub@xn--mnchen-3ya.de?subject=unsubscribe>"),
    ],
)
def test_list_unsubscribe_prefers_configured_address(unsubscribe: str, expected: str) -> None:
    parsed = reparse(bytes(build(unsubscribe=unsubscribe, reply_to="replies@example.com")))
    assert parsed["List-Unsubscribe"] == expected


def test_serializes_with_crlf_only() -> None:
    msg = build(body="line one\nline two\r\nline three\rline four")
    for raw in (bytes(msg), msg.as_bytes(policy=SMTP)):
        assert b"\r\n" in raw
        assert b"\n" not in raw.replace(b"\r\n", b"")
        assert b"\r" not in raw.replace(b"\r\n", b"")
        assert raw.endswith(b"\r\n")
    assert bytes(msg) == msg.as_bytes(policy=SMTP)


def test_non_ascii_is_encoded_and_message_is_7bit() -> None:
    msg = build(
        from_addr="Żaneta Kowalska <zaneta@example.com>",
        subject="Zażółć gęślą jaźń, Zoë",
        body="Cześć Zoë!\n",
        campaign="wiosna-żółw",
    )
    raw = bytes(msg)
    assert raw.isascii()
    parsed = reparse(raw)
    assert parsed["Subject"] == "Zażółć gęślą jaźń, Zoë"
    assert parsed["From"].addresses[0].display_name == "Żaneta Kowalska"
    assert parsed["X-Sendguard-Campaign"] == "wiosna-żółw"
    assert body_text(parsed) == "Cześć Zoë!\n"


def test_idn_recipient_domain_sent_as_punycode() -> None:
    raw = bytes(build(to_addr="lead@münchen.de"))
    assert b"To: lead@xn--mnchen-3ya.de\r\n" in raw


def test_long_lines_do_not_break_smtp_limits() -> None:
    raw = bytes(build(body="x" * 5000 + "\n", subject="word " * 100))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = reparse(raw)
    assert body_text(parsed) == "x" * 5000 + "\n"
    assert parsed["Subject"] == ("word " * 100).strip()


# --- header injection --------------------------------------------------------------------------

INJECTIONS = [
    "Hello\r\nBcc: victim@example.com",
    "Hello\nBcc: victim@example.com",
    "Hello\rBcc: victim@example.com",
    "Hello\u2028Bcc: victim@example.com",
    "Hello\u2029Bcc: victim@example.com",
    "Hello\x85Bcc: victim@example.com",
    "Hello\r\n\r\nInjected body",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_subject_injection_is_impossible(payload: str) -> None:
    raw = bytes(build(subject=payload))
    names = header_names(raw)
    assert "Bcc" not in names
    assert names.count("Subject") == 1
    parsed = reparse(raw)
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == one_line(payload)
    assert body_text(parsed) == "Hi there,\nhow are you?\n"  # no injected body


@pytest.mark.parametrize("payload", INJECTIONS)
def test_campaign_and_message_id_injection_is_impossible(payload: str) -> None:
    raw = bytes(build(campaign=payload, message_id="<a@example.com>\r\nBcc: victim@example.com"))
    assert "Bcc" not in header_names(raw)
    assert reparse(raw)["Bcc"] is None


@pytest.mark.parametrize(
    "field",
    ["to_addr", "from_addr", "reply_to"],
)
def test_address_injection_refused(field: str) -> None:
    with pytest.raises(ValueError):
        build(**{field: "victim@example.com\r\nBcc: other@example.com"})


def test_display_name_line_break_is_flattened() -> None:
    raw = bytes(build(from_addr="Ana\r\nNowak\u2028 <ana@example.com>"))
    assert b"From: Ana Nowak <ana@example.com>\r\n" in raw
    with pytest.raises(ValueError):  # with a colon it no longer parses as one address at all
        build(from_addr="Ana\r\nBcc: victim@example.com <ana@example.com>")


@pytest.mark.parametrize("bad", ["not-an-address", "a@x.com, b@x.com", "", "ü@example.com"])
def test_invalid_recipient_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        build(to_addr=bad)


# --- prepare_message: the fast path is byte-for-byte build_message -----------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sender.message import PreparedMessage, prepare_message  # noqa: E402
from sender.transport import _message_bytes  # noqa: E402

_FIXED_DATE = datetime(2026, 11, 29, 10, 43, 39, tzinfo=UTC)
_ATOM = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=12)
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_PLAIN_ADDRESSES = st.builds(
    lambda local, labels, tld: f"{'.'.join(local)}@{'.'.join(labels)}.{tld}",
    st.lists(_ATOM, min_size=1, max_size=3),
    st.lists(_LABEL, min_size=1, max_size=3),
    st.from_regex(r"[a-z]{2,6}", fullmatch=True),
)
# Anything at all, plus the near misses of the fast path's conditions.
_TEXT = st.one_of(
    st.text(max_size=120),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=90),
    st.sampled_from(["=?utf-8?q?hi?=", "Re: =?x", "a" * 69, "a" * 70, " lead ", "tab\there", "Zürich"]),
)
_BODIES = st.one_of(
    st.text(max_size=300),
    st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=90)).map(
        "\n".join
    ),
    st.sampled_from(["", "\n", "x" * 78, "x" * 79, "a\r\nb\rc\nd", "line\n.\nafter", "naïve\n"]),
)
_FROMS = st.sampled_from(
    ["Ana Nowak <ana@example.com>", "ana@example.com", '"Nowak, Ana" <ana@example.com>', "Zoë <zoe@example.com>",
     "A Very Long Display Name That Will Certainly Need Folding Somewhere <a.very.long.local.part@example.com>"]
)  # fmt: skip


def _both(**args: Any) -> tuple[Any, EmailMessage | None]:
    fast = prepare_message(**args, date=_FIXED_DATE)
    try:
        slow = build_message(**args, date=_FIXED_DATE)
    except ValueError:
        slow = None
    return fast, slow


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    to_addr=st.one_of(
        _PLAIN_ADDRESSES, st.sampled_from(["Lead@Example.COM", "l@xn--bcher-kva.example", "a@b"])
    ),
    subject=_TEXT,
    body=_BODIES,
    from_addr=_FROMS,
    reply_to=st.one_of(st.none(), st.just("Replies <replies@example.com>")),
    unsubscribe=st.one_of(st.none(), st.just("mailto:unsub@example.com?subject=stop")),
    campaign=st.sampled_from(["spring-outreach", "Frühling", "x" * 70]),
    lead_id=st.integers(min_value=0, max_value=10**12),
)
def test_prepared_message_is_byte_identical_to_build_message(
    to_addr: str, subject: str, body: str, from_addr: str, reply_to: str | None, unsubscribe: str | None,
    campaign: str, lead_id: int,
) -> None:  # fmt: skip
    args = dict(
        from_addr=from_addr, to_addr=to_addr, subject=subject, body=body,
        message_id=message_id(7, lead_id, 0, from_addr), reply_to=reply_to, unsubscribe=unsubscribe,
        campaign=campaign,
    )  # fmt: skip
    try:
        fast, slow = _both(**args)
    except ValueError:
        with pytest.raises(ValueError):
            build_message(**args, date=_FIXED_DATE)
        return
    assert slow is not None, "the fast path accepted what build_message refuses"
    for smtputf8 in (False, True):
        for linesep in ("\r\n", "\n"):
            assert _message_bytes(fast, smtputf8=smtputf8, linesep=linesep) == _message_bytes(
                slow, smtputf8=smtputf8, linesep=linesep
            )


_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@settings(max_examples=200, deadline=None)
@given(
    to_addr=_PLAIN_ADDRESSES,
    subject=st.text(alphabet=_PRINTABLE, min_size=1, max_size=69).filter(
        lambda t: t.strip() and "=?" not in t
    ),
    body=st.lists(st.text(alphabet=_PRINTABLE, max_size=78), min_size=1).map("\n".join).filter(bool),
    from_addr=_FROMS.filter(str.isascii),
    reply_to=st.one_of(st.none(), st.just("Replies <replies@example.com>")),
    campaign=st.sampled_from(["spring-outreach", "x" * 70]),
)
def test_plain_messages_take_the_fast_path_and_match(
    to_addr: str, subject: str, body: str, from_addr: str, reply_to: str | None, campaign: str
) -> None:
    args = dict(
        from_addr=from_addr, to_addr=to_addr, subject=subject, body=body,
        message_id=message_id(7, 42, 0, from_addr), reply_to=reply_to, unsubscribe=None, campaign=campaign,
    )  # fmt: skip
    fast, slow = _both(**args)
    assert isinstance(fast, PreparedMessage)
    assert slow is not None
    for smtputf8 in (False, True):
        assert _message_bytes(fast, smtputf8=smtputf8) == _message_bytes(slow, smtputf8=smtputf8)
    assert _message_bytes(fast, smtputf8=False, linesep="\n") == _message_bytes(
        slow, smtputf8=False, linesep="\n"
    )


def test_prepared_message_takes_the_fast_path_for_a_plain_message() -> None:
    fast, slow = _both(
        from_addr="Ana Nowak <ana@example.com>", to_addr="lead@example.org", subject="Quick question",
        body="Hi there,\nhow are you?\n", message_id="<sg.c1.l2.s0@example.com>", reply_to=None,
        unsubscribe=None, campaign="spring-outreach",
    )  # fmt: skip
    assert isinstance(fast, PreparedMessage)
    assert fast.get("Message-ID") == "<sg.c1.l2.s0@example.com>"
    assert fast.wire == _message_bytes(slow, smtputf8=False)


@pytest.mark.parametrize(
    "override",
    [
        {"to_addr": "lead@example.org\r\nBcc: victim@example.net"},
        {"subject": "hi\r\nBcc: victim@example.net"},
        {"subject": "hi\u2028Bcc: victim@example.net"},
        {"body": "naïve"},
        {"to_addr": "Lead <lead@example.org>"},
    ],
)
def test_prepared_message_falls_back_or_refuses_anything_not_plain(override: dict[str, str]) -> None:
    args = dict(
        from_addr="ana@example.com", to_addr="lead@example.org", subject="s", body="b\n",
        message_id="<sg.c1.l2.s0@example.com>", reply_to=None, unsubscribe=None, campaign="c",
    )  # fmt: skip
    args.update(override)
    try:
        fast = prepare_message(**args, date=_FIXED_DATE)
    except ValueError:
        return  # refused, as build_message refuses it
    raw = _message_bytes(fast, smtputf8=False)
    assert b"\r\nBcc:" not in raw
    assert raw == _message_bytes(build_message(**args, date=_FIXED_DATE), smtputf8=False)
