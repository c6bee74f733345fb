"""Transports: how one rendered message leaves the process, and what we can say about its fate.

The classification here is what keeps delivery at-most-once (DESIGN.md, "SMTP phases"): a failure
before the payload's final dot was handed to the socket means the server cannot have accepted the
message, so retrying is safe (DEFERRED / FAILED); once the dot has left, only a reply proves the
outcome, and a lost reply is UNKNOWN, which the caller must never retry on its own.
"""

from __future__ import annotations

import contextlib
import copy
import email.generator
import email.message
import enum
import functools
import io
import logging
import os
import re
import select
import smtplib
import socket
import ssl
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, unquote

from sender import failpoints as fp
from sender.errors import UsageError
from sender.message import Outgoing, PreparedMessage

log = logging.getLogger(__name__)

__all__ = [
    "DryRunTransport",
    "InFlight",
    "NullTransport",
    "Outcome",
    "SendResult",
    "SmtpTransport",
    "Transport",
    "make_transport",
    "redact_url",
]


class Outcome(enum.StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    code: int | None
    reply: str
    phase: str
    hard_bounce: bool = False
    auth_failed: bool = False


class Transport(Protocol):
    def send(self, msg: Outgoing, sender: str, recipient: str) -> SendResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Envelope:
    """An SMTP transaction whose MAIL FROM and RCPT TO were accepted: no byte of the message has left.

    With PIPELINING, DATA went out with them and was accepted too (`data_open`): the server waits for
    the message, so the connection can carry nothing else; giving the envelope up closes it."""

    wire: bytes
    sender: str = ""
    recipient: str = ""
    smtputf8: bool = False
    data_open: bool = False
    opened_at: float = 0.0


class Ahead:
    """An envelope opened ahead of its gate (`SmtpTransport.write_envelope`). `result()` gives what
    `open_envelope` would have: with `unread`, the replies are still on their way and read then."""

    def __init__(
        self, transport: SmtpTransport, opened: Envelope | SendResult, *, unread: bool = False
    ) -> None:
        self._transport, self._opened, self._unread = transport, opened, unread

    def result(self) -> Envelope | SendResult:
        if self._unread:
            assert isinstance(self._opened, Envelope)
            self._unread = False
            self._opened = self._transport._read_ahead(self._opened)
        return self._opened


class InFlight:
    """A message whose payload and final dot have left (`SmtpTransport.write_payload`): only the
    server's reply, read by `result()`, tells its fate. Until then the connection may carry the next
    envelope (PIPELINING: the message content may open a group), and whatever else needs the
    connection reads this reply first, so a verdict on its way is never thrown away."""

    def __init__(self, transport: SmtpTransport, smtp: smtplib.SMTP) -> None:
        self._transport, self._smtp = transport, smtp
        self._result: SendResult | None = None

    def result(self) -> SendResult:
        if self._result is None:
            self._result = self._transport._read_inflight(self, self._smtp)
        return self._result

    def arrived(self) -> bool:
        """Is the whole reply already here, so that `result()` waits on nobody? Never blocks: a
        non-blocking peek into smtplib's read buffer. Under TLS only decrypted application data
        counts, so a TLS record that carries none (a session ticket) or half a record is "not yet".
        Callers treat False as "the server may still be working", the conservative side."""
        if self._result is not None:
            return True
        sock, file = self._smtp.sock, self._smtp.file
        if sock is None or file is None:
            return False
        timeout = sock.gettimeout()
        try:
            sock.settimeout(0.0)
            buffered = file.peek(1)  # what is buffered, or what one read finds: never consumed
        except (OSError, ValueError):  # ssl.SSLWantReadError: no whole record yet; or a closed socket
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
        # Replies come in order and every earlier one was read: the first final line is this reply's.
        return any(line[3:4] != b"-" for line in buffered.split(b"\n")[:-1])


# An open DATA is only used this soon after the 354: a server under load may time out a client that
# keeps it waiting (Postfix drops to 10 s under stress), and the payload must never go into a
# connection the server may have closed, where its reply would be lost and the outcome unknown.
_DATA_OPEN_SECONDS = 5.0


# Long enough for a useful server diagnostic, short enough for a log line and a DB column.
_MAX_REPLY = 300


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REPLY else text[: _MAX_REPLY - 3] + "..."


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _decode(resp: bytes | str) -> str:
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp


# An RFC 3463 enhanced status code at the start of the reply text: class.subject.detail.
_ENHANCED_RE = re.compile(r"^\s*[245]\.(\d{1,3})\.(\d{1,3})\b")


def _address_bounce(resp: bytes | str) -> bool:
    """Does a 5xx to RCPT or to the final dot say the *address* is bad (suppress it for good)?

    With an enhanced code, only X.1.x (addressing) and X.2.1 (mailbox disabled) are about the
    address; X.7.x (policy, e.g. "rejected as spam"), X.6.x (content), X.3.x (system) judge this
    message or this sender, and suppressing a valid address for them would silently drop the lead
    from every later campaign. Without one, keep treating the rejection as a hard bounce.
    """
    m = _ENHANCED_RE.match(_decode(resp))
    if m is None:
        return True
    subject, detail = int(m[1]), int(m[2])
    return subject == 1 or (subject == 2 and detail == 1)


# --------------------------------------------------------------------------------------------- URLs

_SCHEME_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)


def redact_url(url: str) -> str:
    """Hide the password of `url` for logs and errors: smtp://user:***@host:port.

    Works on malformed URLs too (an unencoded '/' or '@' in the password), because the URLs we must
    redact most are exactly the ones we failed to parse.
    """
    m = _SCHEME_RE.match(url)
    prefix, rest = (f"{m['scheme']}://", m["rest"]) if m else ("", url)
    # The last '@' ends the userinfo even when the password holds an unencoded '@'; over-redacting a
    # query that contains '@' is the safe direction to err in.
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    return f"{prefix}{user}:***@{hostpart}" if colon else f"{prefix}{user}@{hostpart}"


@dataclass(frozen=True)
class _SmtpSettings:
    implicit_tls: bool
    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    starttls: bool
    timeout: float
    redacted: str


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_smtp_url(url: str, timeout: float) -> _SmtpSettings:
    redacted = redact_url(url)

    def bad(reason: str) -> UsageError:
        return UsageError(f"bad SMTP URL {redacted}: {reason}")

    m = _SCHEME_RE.match(url.strip())
    if not m:
        raise bad("expected smtp://[user:pass@]host[:port], smtps://... or null://")
    scheme = m["scheme"].lower()
    if scheme not in ("smtp", "smtps"):
        raise bad(f"unsupported scheme {scheme!r} (use smtp, smtps or null)")
    rest = m["rest"]
    userinfo, at, hostpart = rest.rpartition("@")
    if "#" in hostpart:
        raise bad("fragments are not allowed")
    authority, _, query = hostpart.partition("?")
    if authority.endswith("/"):
        authority = authority[:-1]
    if "/" in authority:
        raise bad("a path is not allowed (percent-encode '/' in the password as %2F)")

    username = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        username = unquote(raw_user)
        password = unquote(raw_password) if colon else None
        if not username:
            raise bad("empty user name")
        if password is None:
            raise bad("user name without a password")

    if authority.startswith("["):
        host, bracket, port_text = authority[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise bad("malformed IPv6 host")
        port_text = port_text[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        raise bad("missing host")
    port = 465 if scheme == "smtps" else 25
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise bad(f"invalid port {port_text!r}")
        port = int(port_text)

    starttls = False
    try:
        params = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise bad("malformed query string") from None
    for key, value in params:
        lowered = value.strip().lower()
        if key == "starttls":
            if lowered not in _TRUE | _FALSE:
                raise bad(f"starttls must be true or false, not {value!r}")
            starttls = lowered in _TRUE
        elif key == "timeout":
            try:
                timeout = float(value)
            except ValueError:
                raise bad(f"timeout must be a number of seconds, not {value!r}") from None
        else:
            # A typo such as ?startls=true must not silently send credentials in clear text.
            raise bad(f"unknown parameter {key!r} (known: starttls, timeout)")
    if not timeout > 0:
        raise bad("timeout must be positive")
    if starttls and scheme == "smtps":
        raise bad("starttls makes no sense with smtps:// (already TLS)")
    return _SmtpSettings(
        implicit_tls=scheme == "smtps",
        host=host,
        port=port,
        username=username,
        password=password,
        starttls=starttls,
        timeout=timeout,
        redacted=redacted,
    )


# ------------------------------------------------------------------------------------ serialization

_EOL_RE = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT_RE = re.compile(rb"(?m)^\.")


def _message_bytes(
    msg: email.message.Message | PreparedMessage, *, smtputf8: bool, linesep: str = "\r\n"
) -> bytes:
    """The message as smtplib.send_message would put it on the wire, before dot-stuffing."""
    if isinstance(msg, PreparedMessage):
        return msg.as_bytes(linesep)  # 7-bit already: the same bytes with or without SMTPUTF8
    if "Bcc" in msg or "Resent-Bcc" in msg:
        # Same as send_message: blind copies must not reveal themselves in the delivered header.
        msg = copy.copy(msg)
        del msg["Bcc"]
        del msg["Resent-Bcc"]
    policy = msg.policy.clone(linesep=linesep)
    if smtputf8 and hasattr(policy, "utf8"):
        policy = policy.clone(utf8=True)
    buf = io.BytesIO()
    email.generator.BytesGenerator(buf, mangle_from_=False, policy=policy).flatten(msg, linesep=linesep)
    return buf.getvalue()


def _dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency plus the terminating <CRLF>.<CRLF>."""
    data = _LEADING_DOT_RE.sub(b"..", _EOL_RE.sub(b"\r\n", data))
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


# Addresses `smtplib.quoteaddr` returns unchanged inside <>. It parses every address with
# email.utils.parseaddr (30 us each: a twentieth of a pipelined message's CPU); these need no parsing,
# anything else still goes through it (tests/test_transport.py holds the two equal).
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+")


def _quoted(address: str) -> str:
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _bad_address(address: str) -> bool:
    # A CR/LF would let an address smuggle SMTP commands; smtplib raises ValueError much later.
    return not address or any(c in address for c in "\r\n\0")


# ------------------------------------------------------------------------------------------- SMTP


class _StaleConnection(Exception):
    """The reused connection died before any byte of this message left: reconnecting is safe."""


@functools.cache
def _helo_name() -> str:
    # smtplib would call getfqdn() on every connect, which can stall on a broken resolver.
    return socket.getfqdn()


def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class SmtpTransport:
    """One SMTP connection, reused across messages, with every phase driven by hand.

    Not thread-safe: a sender process owns one transport.
    """

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self._settings = _parse_smtp_url(url, timeout)
        self._smtp: smtplib.SMTP | None = None
        self._inflight: InFlight | None = None  # a payload whose reply is still unread

    def __repr__(self) -> str:
        return f"SmtpTransport({self._settings.redacted!r})"

    @property
    def url(self) -> str:
        """The redacted URL: safe to log."""
        return self._settings.redacted

    # -- results ------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        # Belt and braces: no server or exception text we relay may ever carry the password.
        password = self._settings.password
        if password and password in text:
            text = text.replace(password, "***")
        return _short(text)

    def _result(
        self,
        outcome: Outcome,
        code: int | None,
        reply: str,
        phase: str,
        *,
        hard_bounce: bool = False,
        auth_failed: bool = False,
    ) -> SendResult:
        return SendResult(outcome, code, self._scrub(reply), phase, hard_bounce, auth_failed)

    def _reply_result(self, code: int, resp: bytes | str, phase: str) -> SendResult:
        """Classify an SMTP error reply received before the payload was sent: never delivered."""
        text = f"{code} {_decode(resp)}"
        if code == 421:
            # The server is closing the channel (RFC 5321 3.8); nothing more can be said on it.
            self._drop()
            return self._result(Outcome.DEFERRED, code, text, phase)
        if 400 <= code < 500:
            self._reset()
            return self._result(Outcome.DEFERRED, code, text, phase)
        if 500 <= code < 600:
            self._reset()
            return self._result(
                Outcome.FAILED, code, text, phase, hard_bounce=phase == "rcpt" and _address_bounce(resp)
            )
        # Out of protocol (e.g. 250 to DATA): we do not know what state the server is in.
        self._drop()
        return self._result(Outcome.DEFERRED, code if code >= 0 else None, f"unexpected reply {text}", phase)

    def _lost(self, phase: str, exc: BaseException) -> SendResult:
        """A network failure before the payload's final dot was handed over: not delivered."""
        self._drop()
        return self._result(Outcome.DEFERRED, None, f"connection lost at {phase}: {exc}", phase)

    # -- connection ---------------------------------------------------------------------------

    def _settle_inflight(self) -> None:
        """Read the reply of a payload still in flight before the connection is used for anything else
        (replies come in order) or closed (its verdict would be lost, the outcome unknown)."""
        if self._inflight is not None:
            self._inflight.result()

    def _drop(self) -> None:
        self._settle_inflight()
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    def _reset(self) -> None:
        """RSET so the next message starts clean; if even that fails the connection is not worth keeping."""
        self._settle_inflight()
        smtp = self._smtp
        if smtp is None:
            return
        try:
            code, _ = smtp.rset()
        except (smtplib.SMTPException, OSError):
            code = -1
        if code != 250:
            self._drop()

    def _idle_connection_alive(self, smtp: smtplib.SMTP) -> bool:
        """Cheap check that an idle connection was not closed by the server while we were away.

        A healthy idle SMTP connection has nothing to read; EOF or an unsolicited line (typically
        "421 timeout") both mean the server has given up on it. Costs no round trip.
        """
        sock = smtp.sock
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        if not isinstance(sock, ssl.SSLSocket):
            return False
        # Under TLS, readable may only mean a late TLS 1.3 session ticket, which carries no SMTP
        # data: a non-blocking read tells that apart from EOF or an unsolicited reply.
        try:
            sock.setblocking(False)
            sock.recv(1)
        except ssl.SSLWantReadError:
            return True
        except (OSError, ValueError):
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self._settings.timeout)
        return False

    def _open(self) -> SendResult | None:
        """Connect, EHLO, STARTTLS, AUTH. Returns a result only on failure."""
        s = self._settings
        try:
            if s.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.host, s.port, local_hostname=_helo_name(), timeout=s.timeout, context=_tls_context()
                )
            else:
                smtp = smtplib.SMTP(s.host, s.port, local_hostname=_helo_name(), timeout=s.timeout)
        except smtplib.SMTPConnectError as exc:
            # A greeting refusal is about this server, not this message: DEFERRED lets the caller's
            # backoff and attempt limit deal with it instead of failing every lead of a campaign.
            return self._result(
                Outcome.DEFERRED, exc.smtp_code, f"{exc.smtp_code} {_decode(exc.smtp_error)}", "connect"
            )
        except (smtplib.SMTPException, OSError) as exc:
            return self._result(
                Outcome.DEFERRED, None, f"cannot connect to {s.host}:{s.port}: {_describe(exc)}", "connect"
            )
        self._smtp = smtp
        try:
            smtp.ehlo_or_helo_if_needed()
            if s.starttls:
                if not smtp.has_extn("starttls"):
                    # Never fall back to clear text: the next step would send the password.
                    self._drop()
                    return self._result(Outcome.DEFERRED, None, "server does not offer STARTTLS", "connect")
                code, resp = smtp.starttls(context=_tls_context())
                if code != 220:
                    self._drop()
                    return self._result(
                        Outcome.DEFERRED, code, f"STARTTLS refused: {code} {_decode(resp)}", "connect"
                    )
                smtp.ehlo()
        except smtplib.SMTPHeloError as exc:
            self._drop()
            return self._result(
                Outcome.DEFERRED, exc.smtp_code, f"{exc.smtp_code} {_decode(exc.smtp_error)}", "connect"
            )
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            return self._result(Outcome.DEFERRED, None, f"connect failed: {_describe(exc)}", "connect")

        if s.username is not None:
            failure = self._login(smtp)
            if failure is not None:
                self._drop()
                return failure
        return None

    def _login(self, smtp: smtplib.SMTP) -> SendResult | None:
        s = self._settings
        assert s.username is not None and s.password is not None
        try:
            smtp.login(s.username, s.password)
        except smtplib.SMTPAuthenticationError as exc:
            code = exc.smtp_code
            text = f"{code} {_decode(exc.smtp_error)}"
            # 4xx (454 temporary failure, 421) may heal by itself; anything else means wrong
            # credentials or policy, and repeating it only gets the account locked.
            temporary = 400 <= code < 500
            return self._result(Outcome.DEFERRED, code, text, "auth", auth_failed=not temporary)
        except smtplib.SMTPServerDisconnected as exc:
            return self._result(Outcome.DEFERRED, None, f"connection lost at auth: {exc}", "auth")
        except smtplib.SMTPNotSupportedError:
            return self._result(
                Outcome.DEFERRED,
                None,
                "server does not offer AUTH on this connection",
                "auth",
                auth_failed=True,
            )
        except smtplib.SMTPException as exc:
            # e.g. "No suitable authentication method found."
            return self._result(Outcome.DEFERRED, None, f"auth failed: {exc}", "auth", auth_failed=True)
        except OSError as exc:
            return self._result(Outcome.DEFERRED, None, f"connection lost at auth: {exc}", "auth")
        return None

    # -- sending ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A connection is open (it may still turn out dead on reuse: `open_envelope` handles that)."""
        return self._smtp is not None

    @property
    def pipelining(self) -> bool:
        """The open connection's server offered PIPELINING (RFC 2920)."""
        return self._smtp is not None and bool(self._smtp.has_extn("pipelining"))

    def send(self, msg: Outgoing, sender: str, recipient: str) -> SendResult:
        opened = self.open_envelope(msg, sender, recipient)
        return opened if isinstance(opened, SendResult) else self.send_data(opened)

    def open_envelope(self, msg: Outgoing, sender: str, recipient: str) -> Envelope | SendResult:
        """The first half of a send: connect if needed, MAIL FROM and RCPT TO, and DATA with them when
        the server offers PIPELINING. An Envelope when all were accepted (nothing of the message has
        left yet: `send_data` sends it, `abandon` gives it up), else the attempt's final result."""
        prepared = self._prepare(msg, sender, recipient)
        if isinstance(prepared, SendResult):
            return prepared
        wire, smtputf8 = prepared
        return self._start(wire, sender, recipient, smtputf8, pipeline=True)

    def _prepare(self, msg: Outgoing, sender: str, recipient: str) -> tuple[bytes, bool] | SendResult:
        """The message as it goes on the wire, and whether it needs SMTPUTF8; or why it cannot go."""
        if _bad_address(sender) or _bad_address(recipient):
            return self._result(Outcome.FAILED, None, "invalid envelope address", "mail")
        smtputf8 = not (sender.isascii() and recipient.isascii())
        try:
            return _dot_stuffed(_message_bytes(msg, smtputf8=smtputf8)), smtputf8
        except Exception as exc:  # any serialization error makes the message unsendable
            return self._result(Outcome.FAILED, None, f"cannot serialize message: {exc!r}", "payload")

    def _start(
        self, wire: bytes, sender: str, recipient: str, smtputf8: bool, *, pipeline: bool
    ) -> Envelope | SendResult:
        """Connect if needed, then the envelope (with DATA, if `pipeline` and the server offers it)."""
        self._settle_inflight()
        if self._smtp is not None and not self._idle_connection_alive(self._smtp):
            log.info("SMTP connection to %s went away while idle; reconnecting", self._settings.redacted)
            self._drop()
        while True:
            fresh = self._smtp is None
            if fresh:
                failure = self._open()
                if failure is not None:
                    return failure
            smtp = self._smtp
            assert smtp is not None
            data_open = pipeline and smtp.has_extn("pipelining")
            try:
                if data_open:
                    refused = self._pipelined(smtp, wire, sender, recipient, smtputf8, fresh=fresh)
                else:
                    refused = self._envelope(smtp, wire, sender, recipient, smtputf8, fresh=fresh)
            except _StaleConnection:
                # Only a reused connection raises this, and the retry runs on a fresh one, so this
                # loop reconnects at most once.
                log.info("SMTP connection to %s was dead on reuse; reconnecting", self._settings.redacted)
                self._drop()
                continue
            if refused is not None:
                return refused
            return Envelope(wire, sender, recipient, smtputf8, data_open, time.monotonic())

    def send_data(self, envelope: Envelope) -> SendResult:
        """The second half of a send: DATA (unless pipelined already), the payload, the server's verdict."""
        self._settle_inflight()
        smtp = self._smtp
        if smtp is None:  # cannot happen after an accepted envelope; never send without one
            return self._result(Outcome.DEFERRED, None, "connection lost before DATA", "data")
        if not envelope.data_open:
            refused = self._data_command(smtp)
            return refused if refused is not None else self._message(smtp, envelope.wire)
        if self._stale(smtp, envelope):
            return self._afresh(envelope)
        return self._message(smtp, envelope.wire)

    def _afresh(self, envelope: Envelope) -> SendResult:
        """The whole send again on a fresh connection (`_stale` dropped the old one), one by one."""
        e = envelope
        opened = self._start(e.wire, e.sender, e.recipient, e.smtputf8, pipeline=False)
        return opened if isinstance(opened, SendResult) else self.send_data(opened)

    def _stale(self, smtp: smtplib.SMTP, envelope: Envelope) -> bool:
        """An open DATA kept waiting (the gate retried through a database outage) or a server that
        spoke meanwhile: nothing of the message has left, so drop the connection and start over."""
        waited = time.monotonic() - envelope.opened_at
        if waited <= _DATA_OPEN_SECONDS and self._idle_connection_alive(smtp):
            return False
        log.info("open DATA on %s is stale; reconnecting", self._settings.redacted)
        self._drop()
        return True

    def write_payload(self, envelope: Envelope) -> InFlight | SendResult:
        """`send_data` without waiting for the verdict, on an envelope whose DATA is open (PIPELINING):
        the payload and its dot leave now and `InFlight.result()` reads the reply, so the caller can
        commit its next hand-over while the server works. Any other envelope goes as `send_data`."""
        self._settle_inflight()
        smtp = self._smtp
        if smtp is None or not envelope.data_open:
            return self.send_data(envelope)
        if self._stale(smtp, envelope):
            return self._afresh(envelope)
        written = self._write_message(smtp, envelope.wire)
        if written is not None:
            return written
        self._inflight = InFlight(self, smtp)
        return self._inflight

    def _read_inflight(self, inflight: InFlight, smtp: smtplib.SMTP) -> SendResult:
        if self._inflight is inflight:
            self._inflight = None  # first: reading it may drop the connection, which settles in-flights
        if smtp is not self._smtp:  # unreachable: every path that drops the connection reads it first
            return self._result(Outcome.UNKNOWN, None, "connection closed before the reply was read", "reply")
        # No RSET after a refusal: the final dot ends the transaction whatever the reply (RFC 5321
        # 4.1.1.4), and the next envelope may already be on its way behind it.
        return self._verdict(smtp, reset=False)

    def abandon(self, envelope: Envelope) -> None:
        """Give up an accepted envelope without sending the message: RSET, or with DATA already open,
        close the connection (a server never delivers a message whose end it did not receive). Either
        reads a reply still in flight first."""
        if envelope.data_open:
            self._drop()
        else:
            self._reset()

    def _envelope(
        self, smtp: smtplib.SMTP, wire: bytes, sender: str, recipient: str, smtputf8: bool, *, fresh: bool
    ) -> SendResult | None:
        """MAIL FROM and RCPT TO: None when both were accepted, else the attempt's result."""
        options = self._mail_options(smtp, wire, smtputf8)
        if isinstance(options, SendResult):
            return options

        # MAIL: the first command of the transaction. If a reused connection fails here, nothing of
        # this message has reached the server, so a transparent reconnect cannot duplicate it.
        try:
            code, resp = smtp.mail(sender, options)
        except smtplib.SMTPServerDisconnected as exc:
            if not fresh and not isinstance(exc.__context__, TimeoutError):
                raise _StaleConnection from exc
            return self._lost("mail", exc)
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            return self._lost("mail", exc)
        if code == 421 and not fresh:
            # What servers say when they time out an idle connection just as we reuse it.
            raise _StaleConnection
        if not 200 <= code < 300:
            return self._reply_result(code, resp, "mail")

        try:
            code, resp = smtp.rcpt(recipient)
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            return self._lost("rcpt", exc)
        if not 200 <= code < 300:
            return self._reply_result(code, resp, "rcpt")
        return None

    def _pipelined(
        self, smtp: smtplib.SMTP, wire: bytes, sender: str, recipient: str, smtputf8: bool, *, fresh: bool
    ) -> SendResult | None:
        """MAIL FROM, RCPT TO and DATA in one write (RFC 2920, the server offered PIPELINING), then
        their replies in order: one round trip instead of three. None when DATA was accepted
        (354: the server now waits for the message), else the attempt's result."""
        refused = self._write_pipelined(smtp, wire, sender, recipient, smtputf8, fresh=fresh)
        return refused if refused is not None else self._read_pipelined(smtp, fresh=fresh)

    def _write_pipelined(
        self, smtp: smtplib.SMTP, wire: bytes, sender: str, recipient: str, smtputf8: bool, *, fresh: bool
    ) -> SendResult | None:
        options = self._mail_options(smtp, wire, smtputf8)
        if isinstance(options, SendResult):
            return options
        mail_args = (" " + " ".join(options)) if options else ""
        commands = f"mail FROM:{_quoted(sender)}{mail_args}\r\nrcpt TO:{_quoted(recipient)}\r\ndata\r\n"
        try:
            smtp.send(commands.encode("utf-8" if smtputf8 else "ascii"))
        except smtplib.SMTPServerDisconnected as exc:
            if not fresh:
                raise _StaleConnection from exc
            return self._lost("mail", exc)
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            return self._lost("mail", exc)
        return None

    def _read_pipelined(self, smtp: smtplib.SMTP, *, fresh: bool) -> SendResult | None:
        try:
            code, resp = smtp.getreply()
        except smtplib.SMTPServerDisconnected as exc:
            # As with MAIL alone: nothing of this message reached a dead reused connection.
            if not fresh and not isinstance(exc.__context__, TimeoutError):
                raise _StaleConnection from exc
            return self._lost("mail", exc)
        except (smtplib.SMTPException, OSError) as exc:
            return self._lost("mail", exc)
        if code == 421 and not fresh:
            raise _StaleConnection
        replies = [(code, resp)]
        try:
            if code != 421:  # a server that closes says nothing more
                replies.append(smtp.getreply())
                replies.append(smtp.getreply())
        except (smtplib.SMTPException, OSError) as exc:
            return self._lost("rcpt" if len(replies) == 1 else "data", exc)
        codes = [c for c, _ in replies] + [None, None]
        accepted = [200 <= code < 300, codes[1] is not None and 200 <= codes[1] < 300, codes[2] == 354]
        if accepted == [True, True, True]:
            return None
        if accepted[2]:
            # DATA opened although the envelope was refused (a server that should have said 503):
            # the next line would be taken as the message. Never send one on it.
            self._drop()
        for (code, resp), phase, ok in zip(replies, ("mail", "rcpt", "data"), accepted, strict=False):
            if not ok:
                return self._reply_result(code, resp, phase)
        raise AssertionError(replies)  # unreachable: one of them was refused

    # -- writing ahead (PIPELINING): the server reads the envelope while the caller commits the gate --

    def write_envelope(self, msg: Outgoing, sender: str, recipient: str) -> Ahead:
        """`open_envelope` in two halves: on a reused PIPELINING connection write MAIL, RCPT and DATA
        now and read their replies in `Ahead.result()`, with no thread; otherwise open it now."""
        prepared = self._prepare(msg, sender, recipient)
        if isinstance(prepared, SendResult):
            return Ahead(self, prepared)
        wire, smtputf8 = prepared
        smtp = self._smtp
        # Behind a payload in flight the connection is busy, not idle: its reply may already be here.
        behind = self._inflight is not None
        if (
            smtp is None
            or not smtp.has_extn("pipelining")
            or not (behind or self._idle_connection_alive(smtp))
        ):
            return Ahead(self, self._start(wire, sender, recipient, smtputf8, pipeline=True))
        try:
            refused = self._write_pipelined(smtp, wire, sender, recipient, smtputf8, fresh=False)
        except _StaleConnection:
            self._drop()
            return Ahead(self, self._start(wire, sender, recipient, smtputf8, pipeline=True))
        if refused is not None:
            return Ahead(self, refused)
        return Ahead(self, Envelope(wire, sender, recipient, smtputf8, True, time.monotonic()), unread=True)

    def _read_ahead(self, envelope: Envelope) -> Envelope | SendResult:
        self._settle_inflight()  # the payload ahead of this envelope is answered first
        smtp = self._smtp
        if smtp is None:
            return self._start(
                envelope.wire, envelope.sender, envelope.recipient, envelope.smtputf8, pipeline=True
            )
        try:
            refused = self._read_pipelined(smtp, fresh=False)
        except _StaleConnection:
            log.info("SMTP connection to %s was dead on reuse; reconnecting", self._settings.redacted)
            self._drop()
            e = envelope
            return self._start(e.wire, e.sender, e.recipient, e.smtputf8, pipeline=True)
        return refused if refused is not None else envelope

    def _mail_options(self, smtp: smtplib.SMTP, wire: bytes, smtputf8: bool) -> list[str] | SendResult:
        options: list[str] = []
        if smtputf8:
            if not smtp.has_extn("smtputf8"):
                self._reset()
                return self._result(
                    Outcome.FAILED, None, "server does not support SMTPUTF8 (non-ASCII address)", "mail"
                )
            options.append("SMTPUTF8")
        if smtp.has_extn("8bitmime") and not wire.isascii():
            options.append("BODY=8BITMIME")
        return options

    def _data_command(self, smtp: smtplib.SMTP) -> SendResult | None:
        """DATA on its own: None when the server waits for the message (354)."""
        try:
            smtp.putcmd("data")
            code, resp = smtp.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            return self._lost("data", exc)
        if code != 354:
            return self._reply_result(code, resp, "data")
        return None

    def _message(self, smtp: smtplib.SMTP, wire: bytes) -> SendResult:
        """The payload and its terminating dot, then the server's verdict."""
        written = self._write_message(smtp, wire)
        return written if written is not None else self._verdict(smtp, reset=True)

    def _write_message(self, smtp: smtplib.SMTP, wire: bytes) -> SendResult | None:
        """The payload and its terminating dot: None once the dot has left, else why it did not."""
        sock = smtp.sock
        if sock is None:
            return self._lost("payload", smtplib.SMTPServerDisconnected("socket closed"))
        try:
            if fp.ENABLED:
                wire = fp.mid_payload(sock.sendall, wire)  # half the payload is out, the dot is not
            sock.sendall(wire)
        except OSError as exc:
            # sendall only raises while bytes remain unsent, and the terminating dot is the last of
            # them: the server cannot have accepted the message. The connection is mid-DATA, so it
            # must not carry anything else.
            self._drop()
            return self._result(
                Outcome.DEFERRED,
                None,
                f"connection lost while sending the DATA payload: {_describe(exc)}",
                "payload",
            )
        return None

    def _verdict(self, smtp: smtplib.SMTP, *, reset: bool) -> SendResult:
        """The reply to a payload whose dot has left: the server may have accepted the message, so only
        this reply tells. `reset`: RSET after a refusal, when nothing was written behind the payload."""
        try:
            code, resp = smtp.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            return self._result(
                Outcome.UNKNOWN, None, f"connection lost after DATA payload: {_describe(exc)}", "reply"
            )
        text = f"{code} {_decode(resp)}"
        if 200 <= code < 300:
            return self._result(Outcome.SENT, code, text, "reply")
        if code == 421:
            self._drop()
            return self._result(Outcome.DEFERRED, code, text, "reply")
        if 400 <= code < 500:
            if reset:
                self._reset()
            return self._result(Outcome.DEFERRED, code, text, "reply")
        if 500 <= code < 600:
            if reset:
                self._reset()
            # FAILED either way (never retried); only an address problem suppresses the address.
            return self._result(Outcome.FAILED, code, text, "reply", hard_bounce=_address_bounce(resp))
        # Garbage (smtplib reports -1) or an out-of-protocol code: it may or may not have been queued.
        self._drop()
        return self._result(
            Outcome.UNKNOWN, code if code >= 0 else None, f"unintelligible reply: {text}", "reply"
        )

    def close(self) -> None:
        self._settle_inflight()
        smtp = self._smtp
        if smtp is None:
            return
        try:
            # QUIT is a courtesy; do not let a stuck server hold up a shutdown for the full timeout.
            if smtp.sock is not None:
                smtp.sock.settimeout(min(self._settings.timeout, 5.0))
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            self._drop()


# ------------------------------------------------------------------------------ dry run and null

_UNSAFE_FILENAME_RE = re.compile(r"[^A-Za-z0-9._@+=-]")


def _filename_for(message_id: str | None) -> str:
    raw = (message_id or "").strip().strip("<>")
    if not raw:
        # Without a Message-ID there is nothing deterministic to name the file after.
        raw = f"no-message-id-{uuid.uuid4().hex}"
    name = _UNSAFE_FILENAME_RE.sub("_", raw).lstrip(".")
    if len(name) > 200:
        # Keep names within filesystem limits; the hash keeps long distinct IDs distinct.
        name = f"{name[:180]}-{uuid.uuid5(uuid.NAMESPACE_URL, raw).hex[:16]}"
    return (name or "_") + ".eml"


class DryRunTransport:
    """Writes each message to DIR/<Message-ID>.eml instead of sending it. Never opens a socket."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.fspath(directory)
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create dry-run directory {self.directory}: {exc.strerror or exc}"
            ) from None

    def __repr__(self) -> str:
        return f"DryRunTransport({self.directory!r})"

    def send(self, msg: Outgoing, sender: str, recipient: str) -> SendResult:
        if _bad_address(sender) or _bad_address(recipient):
            return SendResult(Outcome.FAILED, None, "invalid envelope address", "mail")
        try:
            # Local files get local line endings: tools (and Python's parser) read them as-is.
            body = _message_bytes(
                msg, smtputf8=not (sender.isascii() and recipient.isascii()), linesep=os.linesep
            )
        except Exception as exc:  # any serialization error makes the message unsendable
            return SendResult(Outcome.FAILED, None, _short(f"cannot serialize message: {exc!r}"), "payload")
        # Record the envelope the way a local delivery agent would, since it is not in the headers.
        envelope = f"Return-Path: <{sender}>{os.linesep}Delivered-To: {recipient}{os.linesep}".encode()
        path = os.path.join(self.directory, _filename_for(msg.get("Message-ID")))
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".eml")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(envelope + body)
                    fh.flush()
                    os.fsync(fh.fileno())
                # Atomic: a reader (or a crash) sees either no file or the whole message.
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            return SendResult(Outcome.DEFERRED, None, _short(f"cannot write {path}: {exc}"), "payload")
        return SendResult(Outcome.SENT, 250, _short(f"250 written to {path}"), "reply")

    def close(self) -> None:
        pass


class NullTransport:
    """Accepts and discards every message (benchmarks only: measures everything but the network)."""

    def __repr__(self) -> str:
        return "NullTransport()"

    def send(self, msg: Outgoing, sender: str, recipient: str) -> SendResult:
        return SendResult(Outcome.SENT, 250, "250 discarded by null://", "reply")

    def close(self) -> None:
        pass


def make_transport(smtp_url: str | None, dry_run_dir: str | None = None, timeout: float = 30.0) -> Transport:
    """The transport for this configuration. Connects lazily: bad config fails here, network later.

    A dry-run directory wins over a URL: asking not to send must never be overridden by the
    environment. A `timeout=` in the URL overrides `timeout`.
    """
    if dry_run_dir:
        return DryRunTransport(dry_run_dir)
    if smtp_url is None or not smtp_url.strip():
        raise UsageError("no SMTP URL: set SENDGUARD_SMTP_URL or use --dry-run DIR")
    if not timeout > 0:
        raise UsageError(f"SMTP timeout must be positive, not {timeout}")
    m = _SCHEME_RE.match(smtp_url.strip())
    if m and m["scheme"].lower() == "null":
        return NullTransport()
    return SmtpTransport(smtp_url.strip(), timeout=timeout)
