"""Build the RFC 5322 message for one send.

Header injection is impossible by construction: every header value goes through `one_line` (so no
CR/LF or other line separator survives), and address headers are rebuilt from a parsed, validated
address rather than pasted in as text.
"""

from __future__ import annotations

import functools
import io
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses
from urllib.parse import unquote

from sender.leads_csv import ascii_email

# Every Unicode whitespace (\s covers U+2028/U+2029, U+0085, \v, \f, ...) plus the remaining C0/C1
# control characters: any of them could split or corrupt a header line somewhere down the line.
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")


class _HeaderClasses(HeaderRegistry):
    """The stdlib registry builds a fresh header class on every lookup (several per header set: about a
    sixth of rendering a message); a class depends only on the header name, so build each one once."""

    def __init__(self) -> None:
        super().__init__()
        self._built: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._built.get(key)
        if cls is None:
            cls = self._built[key] = super().__getitem__(name)
        return cls


# email.policy.SMTP with the caching registry: the same parsing, folding and line endings.
_POLICY = SMTP.clone(header_factory=_HeaderClasses())


def one_line(text: str) -> str:
    """Collapse every run of whitespace and control characters into one space, and strip."""
    return _BREAKS.sub(" ", text).strip()


def message_id(campaign_id: int, lead_id: int, step: int, from_addr: str) -> str:
    """Deterministic Message-ID: the same on every retry, so receiving MTAs can drop a second copy."""
    for label, value in (("campaign_id", campaign_id), ("lead_id", lead_id), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label} must be a non-negative integer, got {value!r}")
    return f"<sg.c{campaign_id}.l{lead_id}.s{step}@{_id_domain(from_addr)}>"


@functools.lru_cache(maxsize=64)
def _id_domain(from_addr: str) -> str:
    return _parse_single(from_addr).domain.lower()


def build_message(
    *,
    from_addr: str,
    to_addr: str,
    subject: str,
    body: str,
    message_id: str,
    reply_to: str | None,
    unsubscribe: str | None,
    campaign: str,
    date: datetime | None = None,
) -> EmailMessage:
    """The message ready for `bytes(msg)`; ValueError if an address is not exactly one valid address."""
    sender = _parse_single(from_addr)
    reply = _parse_single(reply_to) if reply_to else None
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    msg["To"] = _parse_single(to_addr)
    msg["Subject"] = one_line(subject)
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = one_line(message_id)
    if reply is not None:
        msg["Reply-To"] = reply
    msg["List-Unsubscribe"] = f"<{_unsubscribe_url(unsubscribe, reply or sender)}>"
    msg["X-Sendguard-Campaign"] = one_line(campaign)
    # Quoted-printable for non-ASCII keeps the message 7-bit clean, so it survives any SMTP server
    # whether or not it offers 8BITMIME; ASCII bodies keep the stdlib's choice (7bit unless lines
    # are too long).
    msg.set_content(body, charset="utf-8", cte=None if body.isascii() else "quoted-printable")
    return msg


# Cached: the From (and Reply-To) address of a campaign is parsed and validated for every message
# otherwise; Address is immutable and a ValueError is never cached.
@functools.lru_cache(maxsize=256)
def _parse_single(value: str) -> Address:
    """Exactly one address, its domain in ASCII (IDNA): a raw non-ASCII domain would be RFC 2047
    encoded by the stdlib, which yields an address no MTA can deliver to."""
    text = one_line(value)
    parsed = getaddresses([text])
    if len(parsed) != 1 or not parsed[0][1]:
        raise ValueError(f"expected exactly one email address, got {text!r}")
    display_name, addr = parsed[0]
    username, _, domain = ascii_email(addr).rpartition("@")
    return Address(display_name=display_name, username=username, domain=domain)


def _unsubscribe_url(unsubscribe: str | None, fallback: Address) -> str:
    """`mailto:` URL for List-Unsubscribe (RFC 2369): the configured one, else the reply address."""
    if unsubscribe:
        text = one_line(unsubscribe)
        if text.lower().startswith("mailto:"):
            target, has_query, query = text[len("mailto:") :].partition("?")
            addr = ascii_email(unquote(target))
            return f"mailto:{addr}?{query}" if has_query else f"mailto:{addr}?subject=unsubscribe"
        return f"mailto:{ascii_email(text)}?subject=unsubscribe"
    return f"mailto:{fallback.addr_spec}?subject=unsubscribe"


# --- the fast path -----------------------------------------------------------------------------------
#
# The stdlib parses every header it is given and folds every header it writes: about 1 ms a message,
# more than the two database commits that make a send safe. Most messages need none of that: the
# headers that differ per message are plain ASCII that fits on one line, and the rest belong to the
# campaign. For those, `prepare_message` writes the bytes itself, with the campaign's headers taken
# from the stdlib's own output (built once per campaign); anything else goes through `build_message`.
# tests/test_message.py holds the two byte-for-byte equal over generated input.

# A dot-atom address with a lower-case LDH domain of at least two labels: nothing in it can end,
# split or encode a header line, and the stdlib writes it unchanged.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)
# Printable ASCII that the header parser leaves as it is: no encoded-word opener (`=?`) to decode.
_PLAIN_TEXT = re.compile(r"[\x20-\x7e]*")
_MAX_LINE = 78  # email.policy.SMTP.max_line_length: longer lines are folded


@dataclass(frozen=True)
class PreparedMessage:
    """A message already in wire form: CRLF line endings, not yet dot-stuffed, 7-bit ASCII, so its
    bytes are the same whether or not the server offers SMTPUTF8."""

    wire: bytes
    message_id: str

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.message_id if name.lower() == "message-id" else default

    def as_bytes(self, linesep: str = "\r\n") -> bytes:
        # No header or body line holds a CR or LF of its own, so this changes line ends only.
        return self.wire if linesep == "\r\n" else self.wire.replace(b"\r\n", linesep.encode("ascii"))


Outgoing = EmailMessage | PreparedMessage


def prepare_message(
    *,
    from_addr: str,
    to_addr: str,
    subject: str,
    body: str,
    message_id: str,
    reply_to: str | None,
    unsubscribe: str | None,
    campaign: str,
    date: datetime | None = None,
) -> Outgoing:
    """What `build_message` builds, as wire bytes when every per-message part is plain, else the
    EmailMessage itself. Same errors as `build_message`."""
    subject = one_line(subject)
    mid = one_line(message_id)
    plain = (
        all(part.isascii() for part in (from_addr, reply_to or "", unsubscribe or "", campaign))
        and len(to_addr) <= 254
        and _PLAIN_ADDRESS.fullmatch(to_addr) is not None
        and len(to_addr.partition("@")[0]) <= 64
        and len(to_addr) + 4 <= _MAX_LINE
        and subject != ""  # the stdlib writes an empty header without the space after the colon
        and body != ""
        and _PLAIN_TEXT.fullmatch(subject) is not None
        and "=?" not in subject
        and len(subject) + 9 <= _MAX_LINE
        and _PLAIN_TEXT.fullmatch(mid) is not None
        and len(mid) + 12 <= _MAX_LINE
        and body.isascii()
    )
    lines = body.encode("ascii").splitlines() if plain else []
    if not plain or any(len(line) > _MAX_LINE for line in lines):
        return build_message(
            from_addr=from_addr, to_addr=to_addr, subject=subject, body=body, message_id=message_id,
            reply_to=reply_to, unsubscribe=unsubscribe, campaign=campaign, date=date,
        )  # fmt: skip
    head, tail = _campaign_headers(from_addr, reply_to, unsubscribe, campaign)
    date_text = format_datetime(date) if date is not None else _date_now()
    wire = b"".join(
        (
            head,
            b"To: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\n"
            % (to_addr.encode(), subject.encode(), date_text.encode(), mid.encode()),
            tail,
            b"".join(line + b"\r\n" for line in lines),
        )
    )
    return PreparedMessage(wire, mid)


_date_of_second: tuple[int, str] = (-1, "")


def _date_now() -> str:
    """The Date header for now. It has whole seconds, so it is formatted once a second."""
    global _date_of_second
    second = int(time.time())
    if _date_of_second[0] != second:
        _date_of_second = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date_of_second[1]


@functools.lru_cache(maxsize=64)
def _campaign_headers(
    from_addr: str, reply_to: str | None, unsubscribe: str | None, campaign: str
) -> tuple[bytes, bytes]:
    """The header lines before and after the per-message ones, exactly as the stdlib writes them for
    this campaign (folded, encoded), ending with the blank line before the body."""
    probe = build_message(
        from_addr=from_addr, to_addr="probe@example.com", subject="probe", body="probe\n",
        message_id="<probe@example.com>", reply_to=reply_to, unsubscribe=unsubscribe, campaign=campaign,
        date=datetime(2000, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    buf = io.BytesIO()
    BytesGenerator(buf, mangle_from_=False, policy=probe.policy).flatten(probe, linesep="\r\n")
    raw = buf.getvalue()
    first = raw.index(b"\r\nTo: probe@example.com\r\n") + 2
    last = raw.index(b"\r\nMessage-ID: <probe@example.com>\r\n") + len(
        b"\r\nMessage-ID: <probe@example.com>\r\n"
    )
    body = raw.index(b"\r\n\r\n") + 4
    return raw[:first], raw[last:body]
