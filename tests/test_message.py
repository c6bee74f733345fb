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
