"""Build the RFC 5322 message for one send.

Header injection is impossible by construction: every header value goes through `one_line` (so no
CR/LF or other line separator survives), and address headers are rebuilt from a parsed, validated
address rather than pasted in as text.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
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
    domain = _parse_single(from_addr).domain.lower()
    return f"<sg.c{campaign_id}.l{lead_id}.s{step}@{domain}>"


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
) -> EmailMessage:
    """The message ready for `bytes(msg)`; ValueError if an address is not exactly one valid address."""
    sender = _parse_single(from_addr)
    reply = _parse_single(reply_to) if reply_to else None
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    msg["To"] = _parse_single(to_addr)
    msg["Subject"] = one_line(subject)
    msg["Date"] = format_datetime(datetime.now(UTC))
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
