"""sender.transport against real aiosmtpd servers on 127.0.0.1.

Every test checks both what the transport reports and what the server actually stored: the
classification is what keeps delivery at-most-once, so "SENT" must mean stored, "DEFERRED"/"FAILED"
must mean not stored, and "UNKNOWN" is reserved for the window after the final dot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import logging
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from hypothesis import strategies as st

from sender import transport as transport_mod
from sender.errors import UsageError
from sender.transport import (
    DryRunTransport,
    InFlight,
    NullTransport,
    Outcome,
    SendResult,
    SmtpTransport,
    make_transport,
    redact_url,
)
from sender.transport import Envelope as Opened
from tests.smtp_peer import BoundController, SmtpPeer

SENDER = "ana@example.com"


def _message(n: int = 1, body: str = "Hello.\n", to: str = "lead@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = to
    msg["Subject"] = f"message {n}"
    msg["Message-ID"] = f"<c1.lead{n}.s0@sendguard.test>"
    msg["X-Sendguard-Campaign"] = "c1"
    msg.set_content(body)
    return msg


# ------------------------------------------------------------------------------- test servers


class Recorder:
    """Stores what it accepts; `mail`/`rcpt`/`data_end` map the nth such command (1-based, across
    connections) to a reply. A data_end reply starting with 2xx or a non-digit is sent after storing
    the message; a 4xx/5xx one instead of storing it."""

    def __init__(
        self,
        *,
        mail: dict[int, str] | None = None,
        rcpt: dict[int, str] | None = None,
        data_end: dict[int, str] | None = None,
    ) -> None:
        self.replies = {"mail": mail or {}, "rcpt": rcpt or {}, "data_end": data_end or {}}
        self.calls = {"mail": 0, "rcpt": 0, "data_end": 0}
        self.lock = threading.Lock()
        self.messages: list[bytes] = []
        self.envelopes: list[tuple[str, list[str], list[str]]] = []
        self.connections = 0
        self.idle_closed = threading.Event()
        self.auth_attempts: list[tuple[str, bytes]] = []

    pipelining = False  # set by the `serve` fixture: offer PIPELINING (RFC 2920) in the EHLO reply

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does without this hook
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    def _reply(self, phase: str, server: SMTP) -> str | None:
        with self.lock:
            self.calls[phase] += 1
            reply = self.replies[phase].get(self.calls[phase])
        if reply is not None and reply.startswith("421"):
            assert server.transport is not None
            asyncio.get_running_loop().call_soon(server.transport.close)
        return reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self._reply("mail", server)
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self._reply("rcpt", server)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self._reply("data_end", server)
        if reply is not None and reply[:1] in ("4", "5"):
            return reply
        assert isinstance(envelope.content, bytes) and envelope.mail_from is not None
        with self.lock:
            self.messages.append(envelope.content)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), list(envelope.mail_options)))
        return reply or "250 2.0.0 Ok: queued"

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


class CountingSMTP(SMTP):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as `sendguard sink`: pipelined replies must not wait on Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        if first:
            with self.event_handler.lock:
                self.event_handler.connections += 1

    def _timeout_cb(self) -> None:
        super()._timeout_cb()
        self.event_handler.idle_closed.set()


class DropOnSecondMailSMTP(CountingSMTP):
    """Closes the connection, without a reply, when a connection's second MAIL arrives: a server
    that died while we held the connection idle, discovered only when we use it."""

    mails_on_this_connection = 0

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.mails_on_this_connection += 1
        if self.mails_on_this_connection == 2:
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_MAIL(arg)


class DataCommandRefusedSMTP(CountingSMTP):
    async def smtp_DATA(self, arg: str) -> None:
        await self.push("451 4.3.0 Try DATA again later")


class ResetDuringPayloadSMTP(CountingSMTP):
    """Says 354, stops reading, then resets the connection while the client is still sending."""

    async def smtp_DATA(self, arg: str) -> None:
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        assert self.transport is not None
        self.transport.pause_reading()
        self.loop.call_later(0.3, self.transport.abort)
        await asyncio.Event().wait()


Serve = Callable[..., tuple[BoundController, Recorder]]


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def serve(request: pytest.FixtureRequest) -> Iterator[Serve]:
    """Every test runs against a server that offers PIPELINING and one that does not: the transport
    then sends MAIL, RCPT and DATA in one write, and every outcome must stay the same."""
    controllers: list[BoundController] = []

    def start(
        handler: Recorder | None = None, smtp_class: type[SMTP] = CountingSMTP, **kwargs: Any
    ) -> tuple[BoundController, Recorder]:
        handler = handler or Recorder()
        handler.pipelining = request.param
        controller = BoundController(handler, smtp_class=smtp_class, **kwargs)
        controller.start()
        controllers.append(controller)
        with handler.lock:
            handler.connections = 0  # not the controller's own readiness probe
        return controller, handler

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def transports() -> Iterator[Callable[..., SmtpTransport]]:
    made: list[SmtpTransport] = []

    def make(url: str, timeout: float = 5.0) -> SmtpTransport:
        t = make_transport(url, timeout=timeout)
        assert isinstance(t, SmtpTransport)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


# ----------------------------------------------------------------------------------- happy path


def test_an_abandoned_envelope_sends_nothing_and_the_connection_goes_on(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    """What the sender does when a gate refuses a message whose envelope is already out: RSET; or,
    with PIPELINING, where DATA went out with the envelope, close the connection."""
    controller, rec = serve()
    t = transports(controller.url)
    assert not t.connected
    assert t.send(_message(1), SENDER, "lead1@example.com").outcome is Outcome.SENT
    opened = t.open_envelope(_message(2), SENDER, "lead2@example.com")
    assert isinstance(opened, Opened)
    assert rec.calls["mail"] == 2 and rec.calls["rcpt"] == 2  # the server has seen the envelope...
    t.abandon(opened)
    assert rec.count() == 1  # ...and no message
    # The same connection carries the next message, with its own envelope only.
    opened = t.open_envelope(_message(3), SENDER, "lead3@example.com")
    assert isinstance(opened, Opened)
    assert t.send_data(opened).outcome is Outcome.SENT
    assert rec.connections == (2 if rec.pipelining else 1)
    assert [e[1] for e in rec.envelopes] == [["lead1@example.com"], ["lead3@example.com"]]


def test_an_envelope_refused_at_rcpt_is_the_attempt_s_result(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(Recorder(rcpt={1: "550 5.1.1 no such user"}))
    t = transports(controller.url)
    opened = t.open_envelope(_message(1), SENDER, "gone@example.com")
    assert isinstance(opened, SendResult)
    assert (opened.outcome, opened.code, opened.phase, opened.hard_bounce) == (
        Outcome.FAILED,
        550,
        "rcpt",
        True,
    )
    assert rec.count() == 0


def test_sends_over_one_reused_connection(serve: Serve, transports: Callable[..., SmtpTransport]) -> None:
    controller, rec = serve()
    t = transports(controller.url)
    body = "Hi.\n.\n..two dots\n.leading dot\nlast line without newline"
    r1 = t.send(_message(1, body), SENDER, "lead1@example.com")
    r2 = t.send(_message(2), SENDER, "lead2@example.com")

    assert r1 == SendResult(Outcome.SENT, 250, "250 2.0.0 Ok: queued", "reply")
    assert r2.outcome is Outcome.SENT
    assert rec.count() == 2
    assert rec.connections == 1
    assert [e[1] for e in rec.envelopes] == [["lead1@example.com"], ["lead2@example.com"]]
    stored = email.message_from_bytes(rec.messages[0].replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert stored["Message-ID"] == "<c1.lead1.s0@sendguard.test>"
    assert isinstance(stored, EmailMessage)
    assert stored.get_content().rstrip("\n") == body


def test_non_ascii_body_and_address(serve: Serve, transports: Callable[..., SmtpTransport]) -> None:
    controller, rec = serve()
    t = transports(controller.url)
    result = t.send(_message(1, "Zażółć gęślą jaźń\n"), SENDER, "łukasz@example.com")
    assert result.outcome is Outcome.SENT
    assert rec.envelopes[0][1] == ["łukasz@example.com"]
    assert "SMTPUTF8" in rec.envelopes[0][2]


def test_envelope_address_with_newline_is_refused_without_network(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve()
    t = transports(controller.url)
    result = t.send(_message(), SENDER, "lead@example.com\r\nRCPT TO:<other@example.com>")
    assert (result.outcome, result.phase) == (Outcome.FAILED, "mail")
    assert rec.connections == 0 and rec.count() == 0


# --------------------------------------------------------------------- failures before the payload


def test_connection_refused_is_deferred(transports: Callable[..., SmtpTransport]) -> None:
    # A bound but not listening socket: connections to its port are refused, and nobody else can
    # start listening there while we hold it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        t = transports(f"smtp://127.0.0.1:{port}")
        result = t.send(_message(), SENDER, "lead@example.com")
    assert result.outcome is Outcome.DEFERRED
    assert result.phase == "connect"
    assert result.code is None
    assert "refused" in result.reply.lower()


def test_452_at_rcpt_is_deferred_and_connection_reset_for_the_next(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(Recorder(rcpt={1: "452 4.2.2 Mailbox full"}))
    t = transports(controller.url)
    r1 = t.send(_message(1), SENDER, "full@example.com")
    r2 = t.send(_message(2), SENDER, "lead@example.com")
    assert r1 == SendResult(Outcome.DEFERRED, 452, "452 4.2.2 Mailbox full", "rcpt")
    assert r2.outcome is Outcome.SENT
    assert rec.count() == 1 and rec.envelopes[0][1] == ["lead@example.com"]
    assert rec.connections == 1  # RSET, not reconnect


def test_550_at_rcpt_is_a_hard_bounce(serve: Serve, transports: Callable[..., SmtpTransport]) -> None:
    controller, rec = serve(Recorder(rcpt={1: "550 5.1.1 No such user"}))
    t = transports(controller.url)
    result = t.send(_message(), SENDER, "gone@example.com")
    assert result == SendResult(Outcome.FAILED, 550, "550 5.1.1 No such user", "rcpt", hard_bounce=True)
    assert rec.count() == 0
    assert t.send(_message(2), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert rec.count() == 1


def test_5xx_at_mail_fails_without_hard_bounce(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(Recorder(mail={1: "553 5.7.1 Sender address rejected"}))
    t = transports(controller.url)
    result = t.send(_message(), SENDER, "lead@example.com")
    assert result == SendResult(Outcome.FAILED, 553, "553 5.7.1 Sender address rejected", "mail")
    assert rec.count() == 0


def test_421_at_mail_is_deferred_and_drops_the_connection(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(Recorder(mail={1: "421 4.3.2 Shutting down"}))
    t = transports(controller.url)
    result = t.send(_message(1), SENDER, "lead@example.com")
    assert result == SendResult(Outcome.DEFERRED, 421, "421 4.3.2 Shutting down", "mail")
    assert rec.count() == 0
    assert t.send(_message(2), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert rec.count() == 1
    assert rec.connections == 2


def test_4xx_at_data_command_is_deferred(serve: Serve, transports: Callable[..., SmtpTransport]) -> None:
    controller, rec = serve(smtp_class=DataCommandRefusedSMTP)
    t = transports(controller.url)
    result = t.send(_message(), SENDER, "lead@example.com")
    assert result == SendResult(Outcome.DEFERRED, 451, "451 4.3.0 Try DATA again later", "data")
    assert rec.count() == 0


def test_connection_reset_during_payload_is_deferred(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(smtp_class=ResetDuringPayloadSMTP)
    t = transports(controller.url)
    # Twice the largest client send buffer (tcp_wmem max is 4 MiB by default) plus a fixed, small
    # server receive buffer (inherited from the listening socket): the reset lands mid-sendall.
    controller._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    big = ("x" * 76 + "\n") * (8 * 1024 * 1024 // 77)
    result = t.send(_message(1, big), SENDER, "lead@example.com")
    assert result.outcome is Outcome.DEFERRED
    assert result.phase == "payload"
    assert rec.count() == 0


def test_starttls_required_but_not_offered_never_sends_credentials(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    rec = Recorder()

    def authenticator(*args: Any) -> AuthResult:
        rec.auth_attempts.append(("called", b""))
        return AuthResult(success=True)

    controller, _ = serve(rec, auth_require_tls=False, authenticator=authenticator)
    t = transports(f"smtp://user:secret@127.0.0.1:{controller.port}?starttls=true")
    result = t.send(_message(), SENDER, "lead@example.com")
    assert (result.outcome, result.phase) == (Outcome.DEFERRED, "connect")
    assert "STARTTLS" in result.reply
    assert rec.auth_attempts == [] and rec.count() == 0


# ---------------------------------------------------------------------- after the payload was sent


def test_554_policy_after_data_fails_without_hard_bounce(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    # 5.7.1 judges the message, not the address: failed, but the address is not suppressed.
    controller, rec = serve(Recorder(data_end={1: "554 5.7.1 Rejected as spam", 2: "550 5.1.1 No such user"}))
    t = transports(controller.url)
    result = t.send(_message(), SENDER, "lead@example.com")
    assert result == SendResult(Outcome.FAILED, 554, "554 5.7.1 Rejected as spam", "reply", hard_bounce=False)
    assert rec.count() == 0
    # An addressing code after the dot is a hard bounce.
    result = t.send(_message(2), SENDER, "gone@example.com")
    assert result == SendResult(Outcome.FAILED, 550, "550 5.1.1 No such user", "reply", hard_bounce=True)
    assert t.send(_message(3), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert rec.connections == 1


def test_451_after_data_is_deferred(serve: Serve, transports: Callable[..., SmtpTransport]) -> None:
    controller, rec = serve(Recorder(data_end={1: "451 4.3.0 Local error"}))
    t = transports(controller.url)
    result = t.send(_message(), SENDER, "lead@example.com")
    assert result == SendResult(Outcome.DEFERRED, 451, "451 4.3.0 Local error", "reply")
    assert rec.count() == 0


def test_421_after_data_is_deferred_and_reconnects(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(Recorder(data_end={1: "421 4.3.2 Going down"}))
    t = transports(controller.url)
    assert t.send(_message(1), SENDER, "lead@example.com").outcome is Outcome.DEFERRED
    assert t.send(_message(2), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert rec.count() == 1 and rec.connections == 2


def test_connection_dropped_after_payload_is_unknown(transports: Callable[..., SmtpTransport]) -> None:
    with SmtpPeer(
        lambda rcpt, phase, nth: (
            "drop_after_data" if rcpt == "lead@example.com" and phase == "data_end" else None
        )
    ) as peer:
        t = transports(peer.url)
        result = t.send(_message(1), SENDER, "lead@example.com")
        assert result.outcome is Outcome.UNKNOWN
        assert result.phase == "reply"
        assert result.code is None
        assert result.reply.startswith("connection lost after DATA payload")
        # The server did take it: this is exactly why UNKNOWN must never be retried automatically.
        assert peer.count() == 1
        # The next message goes out on a new connection.
        assert t.send(_message(2), SENDER, "other@example.com").outcome is Outcome.SENT
        assert peer.per_recipient() == {"lead@example.com": 1, "other@example.com": 1}
        assert peer.connections() == 2


def test_no_reply_to_the_final_dot_times_out_as_unknown(transports: Callable[..., SmtpTransport]) -> None:
    with SmtpPeer(lambda rcpt, phase, nth: "hang_after_data" if phase == "data_end" else None) as peer:
        t = transports(f"{peer.url}?timeout=1")
        started = time.monotonic()
        result = t.send(_message(), SENDER, "lead@example.com")
        elapsed = time.monotonic() - started
        assert (result.outcome, result.phase, result.code) == (Outcome.UNKNOWN, "reply", None)
        assert "timed out" in result.reply
        assert 0.9 <= elapsed < 3
        assert peer.count() == 1


def test_garbage_reply_after_payload_is_unknown(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(Recorder(data_end={1: "ok, I guess"}))
    t = transports(controller.url)
    result = t.send(_message(), SENDER, "lead@example.com")
    assert (result.outcome, result.phase, result.code) == (Outcome.UNKNOWN, "reply", None)
    assert rec.count() == 1


# ------------------------------------------------------------------------------------ reconnects


def test_idle_connection_closed_by_server_reconnects_and_sends_once(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(timeout=0.3)
    t = transports(controller.url)
    assert t.send(_message(1), SENDER, "lead1@example.com").outcome is Outcome.SENT
    assert rec.idle_closed.wait(5), "server never timed the idle connection out"
    result = t.send(_message(2), SENDER, "lead2@example.com")
    assert result.outcome is Outcome.SENT
    assert [e[1] for e in rec.envelopes] == [["lead1@example.com"], ["lead2@example.com"]]
    assert rec.connections == 2


def test_connection_dead_at_mail_reconnects_once_and_sends_once(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(smtp_class=DropOnSecondMailSMTP)
    t = transports(controller.url)
    assert t.send(_message(1), SENDER, "lead1@example.com").outcome is Outcome.SENT
    result = t.send(_message(2), SENDER, "lead2@example.com")
    assert result.outcome is Outcome.SENT
    assert [e[1] for e in rec.envelopes] == [["lead1@example.com"], ["lead2@example.com"]]
    assert rec.connections == 2


def test_421_on_a_reused_connection_reconnects_once(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    # What servers say when their idle timer fires just as we reuse the connection.
    controller, rec = serve(Recorder(mail={2: "421 4.4.2 Timeout exceeded"}))
    t = transports(controller.url)
    assert t.send(_message(1), SENDER, "lead1@example.com").outcome is Outcome.SENT
    assert t.send(_message(2), SENDER, "lead2@example.com").outcome is Outcome.SENT
    assert rec.count() == 2 and rec.connections == 2


def test_reconnect_happens_only_once(serve: Serve, transports: Callable[..., SmtpTransport]) -> None:
    controller, rec = serve(Recorder(mail={2: "421 4.4.2 Timeout", 3: "421 4.3.2 Still down"}))
    t = transports(controller.url)
    assert t.send(_message(1), SENDER, "lead1@example.com").outcome is Outcome.SENT
    result = t.send(_message(2), SENDER, "lead2@example.com")
    assert result == SendResult(Outcome.DEFERRED, 421, "421 4.3.2 Still down", "mail")
    assert rec.count() == 1 and rec.connections == 2


# ------------------------------------------------------------------------------------------ AUTH

USER = "ana"
PASSWORD = "S3cr3t p@ss:w/rd%"
PASSWORD_IN_URL = "S3cr3t%20p%40ss%3Aw%2Frd%25"


def _authenticating(rec: Recorder) -> Callable[..., AuthResult]:
    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        rec.auth_attempts.append((auth_data.login.decode(), auth_data.password))
        ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)

    return authenticator


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_auth_over_plain_smtp(serve: Serve, transports: Callable[..., SmtpTransport]) -> None:
    rec = Recorder()
    controller, _ = serve(rec, auth_require_tls=False, auth_required=True, authenticator=_authenticating(rec))
    t = transports(f"smtp://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{controller.port}")
    assert t.send(_message(1), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert t.send(_message(2), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert rec.count() == 2
    assert rec.auth_attempts == [(USER, PASSWORD.encode())]  # once per connection


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_wrong_password_is_auth_failed_and_never_leaks(
    serve: Serve, transports: Callable[..., SmtpTransport], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()
    controller, _ = serve(rec, auth_require_tls=False, auth_required=True, authenticator=_authenticating(rec))
    wrong = "Wr0ng-Pa55word"
    t = transports(f"smtp://{USER}:{wrong}@127.0.0.1:{controller.port}")
    result = t.send(_message(), SENDER, "lead@example.com")
    assert result.outcome is Outcome.DEFERRED
    assert result.auth_failed is True
    assert result.phase == "auth"
    assert result.code == 535
    assert rec.count() == 0
    t.close()
    for text in (repr(result), str(result), result.reply, repr(t), t.url, caplog.text):
        assert wrong not in text
    assert t.url == f"smtp://{USER}:***@127.0.0.1:{controller.port}"


def test_auth_not_offered_is_auth_failed(serve: Serve, transports: Callable[..., SmtpTransport]) -> None:
    controller, rec = serve()
    t = transports(f"smtp://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{controller.port}")
    result = t.send(_message(), SENDER, "lead@example.com")
    assert (result.outcome, result.phase, result.auth_failed) == (Outcome.DEFERRED, "auth", True)
    assert rec.count() == 0


# ------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def trust_test_cert(tls_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    cert, key = tls_files
    # The client keeps full verification; it just trusts our throwaway CA instead of the system's.
    monkeypatch.setattr(transport_mod, "_tls_context", lambda: ssl.create_default_context(cafile=cert))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    return server_ctx


def test_starttls_then_auth(
    serve: Serve, transports: Callable[..., SmtpTransport], trust_test_cert: ssl.SSLContext
) -> None:
    rec = Recorder()
    # auth_require_tls defaults to True: AUTH only works if STARTTLS really happened.
    controller, _ = serve(rec, tls_context=trust_test_cert, authenticator=_authenticating(rec))
    t = transports(f"smtp://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{controller.port}?starttls=true")
    assert t.send(_message(1), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert t.send(_message(2), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert rec.count() == 2 and rec.connections == 1
    assert rec.auth_attempts == [(USER, PASSWORD.encode())]


def test_smtps(
    serve: Serve, transports: Callable[..., SmtpTransport], trust_test_cert: ssl.SSLContext
) -> None:
    controller, rec = serve(ssl_context=trust_test_cert)
    t = transports(f"smtps://127.0.0.1:{controller.port}")
    assert t.send(_message(1), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert t.send(_message(2), SENDER, "lead@example.com").outcome is Outcome.SENT
    assert rec.count() == 2 and rec.connections == 1


def test_untrusted_certificate_is_deferred(
    serve: Serve, transports: Callable[..., SmtpTransport], tls_files: tuple[str, str]
) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    controller, rec = serve(ssl_context=server_ctx)
    t = transports(f"smtps://127.0.0.1:{controller.port}")
    result = t.send(_message(), SENDER, "lead@example.com")
    assert (result.outcome, result.phase) == (Outcome.DEFERRED, "connect")
    assert "CERTIFICATE_VERIFY_FAILED" in result.reply
    assert rec.count() == 0


class HoldingRecorder(Recorder):
    """Holds its reply to the first message's final dot until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.holding, self.release = threading.Event(), threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.holding.is_set():
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 10)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
def test_arrived_sees_a_reply_through_starttls_and_only_once_it_is_here(
    serve: Serve, transports: Callable[..., SmtpTransport], trust_test_cert: ssl.SSLContext
) -> None:
    """Under TLS the socket turning readable says nothing about the reply (it may be a session
    ticket), so `arrived` looks at decrypted data: no before the server answers, yes after."""
    rec = HoldingRecorder()
    controller, _ = serve(rec, tls_context=trust_test_cert)
    t = transports(f"smtp://127.0.0.1:{controller.port}?starttls=true")
    try:
        first = _in_flight(t, 1)
        assert rec.holding.wait(10)
        assert not first.arrived()
        rec.release.set()
        _until_arrived(first)
        assert (first.result().outcome, first.result().code) == (Outcome.SENT, 250)
        assert t.send(_message(2), SENDER, "lead2@example.com").outcome is Outcome.SENT
    finally:
        rec.release.set()
    assert rec.count() == 2 and rec.connections == 1


# ------------------------------------------------------------------------- configuration and URLs


def test_no_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as err:
        make_transport(None, None)
    assert str(err.value) == "no SMTP URL: set SENDGUARD_SMTP_URL or use --dry-run DIR"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://ana:TopSecret1@127.0.0.1",
        "ana:TopSecret1@127.0.0.1",
        "smtp://ana:TopSecret1@127.0.0.1:99999",
        "smtp://ana:TopSecret1@127.0.0.1:abc",
        "smtp://ana:TopSecret1@127.0.0.1/path",
        "smtp://ana:TopSecret1@127.0.0.1?startls=true",
        "smtp://ana:TopSecret1@127.0.0.1?starttls=maybe",
        "smtp://ana:TopSecret1@127.0.0.1?timeout=0",
        "smtps://ana:TopSecret1@127.0.0.1?starttls=true",
        "smtp://ana:TopSecret1@",
        "smtp://ana@127.0.0.1",
    ],
)
def test_bad_urls_are_usage_errors_without_the_password(url: str) -> None:
    with pytest.raises(UsageError) as err:
        make_transport(url)
    message = str(err.value)
    assert "Secret1" not in message and "Secret1" not in repr(err.value)
    assert "\n" not in message
    assert redact_url(url) in message


def test_url_parsing() -> None:
    t = make_transport("smtp://mail.example.com")
    assert isinstance(t, SmtpTransport)
    s = t._settings
    assert (s.host, s.port, s.username, s.password, s.starttls, s.implicit_tls, s.timeout) == (
        "mail.example.com",
        25,
        None,
        None,
        False,
        False,
        30.0,
    )
    s = SmtpTransport(
        f"SMTP://{USER}:{PASSWORD_IN_URL}@[::1]:587/?starttls=TRUE&timeout=2.5", timeout=9
    )._settings
    assert (s.host, s.port, s.username, s.password, s.starttls, s.timeout) == (
        "::1",
        587,
        USER,
        PASSWORD,
        True,
        2.5,
    )
    assert PASSWORD not in repr(s)
    s = SmtpTransport("smtps://h")._settings
    assert (s.port, s.implicit_tls) == (465, True)
    assert isinstance(make_transport("null://"), NullTransport)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("smtp://ana:pw@host:25", "smtp://ana:***@host:25"),
        ("smtp://host:25", "smtp://host:25"),
        ("smtp://ana@host", "smtp://ana@host"),
        ("smtp://ana:p@ss/w@host?starttls=true", "smtp://ana:***@host?starttls=true"),
        ("ana:pw@host", "ana:***@host"),
        ("null://", "null://"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_null_transport_accepts_everything() -> None:
    t = make_transport("null://")
    assert t.send(_message(), SENDER, "lead@example.com").outcome is Outcome.SENT
    t.close()


def test_dry_run_writes_eml_atomically_and_never_opens_a_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("dry run opened a socket")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    directory = tmp_path / "out" / "nested"
    # The dry-run directory wins even when an SMTP URL is configured.
    t = make_transport("smtp://127.0.0.1:1", str(directory))
    assert isinstance(t, DryRunTransport)
    msg = _message(1, "Witaj, świecie\n")
    msg.replace_header("Message-ID", "<../c1/lead1.s0@sendguard.test>")
    result = t.send(msg, SENDER, "lead@example.com")
    assert result.outcome is Outcome.SENT and result.code == 250
    files = os.listdir(directory)
    assert files == ["_c1_lead1.s0@sendguard.test.eml"]
    stored = email.message_from_bytes((directory / files[0]).read_bytes(), policy=email.policy.default)
    assert stored["Message-ID"] == "<../c1/lead1.s0@sendguard.test>"
    assert stored["Delivered-To"] == "lead@example.com"
    assert isinstance(stored, EmailMessage)
    assert stored.get_content() == "Witaj, świecie\n"
    # Same Message-ID again: replaced, never a second file or a leftover temp file.
    assert t.send(msg, SENDER, "lead@example.com").outcome is Outcome.SENT
    assert os.listdir(directory) == files
    t.close()


def test_dry_run_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match="cannot create dry-run directory"):
        make_transport(None, str(blocker / "sub"))


# ------------------------------------------------------------------------------ PIPELINING (RFC 2920)


class PipelineWatcher(Recorder):
    """Notes, at each MAIL, whether RCPT and DATA were already waiting behind it: one write, one round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.batched: list[bool] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        waiting = bytes(server._reader._buffer).lower()  # type: ignore[attr-defined]
        self.batched.append(b"rcpt to:" in waiting and b"data\r\n" in waiting)
        return await super().handle_MAIL(server, session, envelope, address, options)


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
def test_with_pipelining_mail_rcpt_and_data_go_in_one_write(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(PipelineWatcher())
    assert isinstance(rec, PipelineWatcher)
    t = transports(controller.url)
    for n in (1, 2):
        assert t.send(_message(n), SENDER, f"lead{n}@example.com").outcome is Outcome.SENT
    assert t.pipelining
    assert rec.batched == [True, True]
    assert rec.count() == 2 and rec.connections == 1


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
def test_an_open_data_kept_waiting_too_long_is_never_used(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    """The gate waited on the database: the server may have timed the open DATA out, and a message sent
    into a closed connection would be of unknown outcome. It goes out on a fresh connection instead."""
    controller, rec = serve()
    t = transports(controller.url)
    opened = t.open_envelope(_message(1), SENDER, "lead1@example.com")
    assert isinstance(opened, Opened) and opened.data_open
    stale = dataclasses.replace(opened, opened_at=opened.opened_at - 60)
    assert t.send_data(stale).outcome is Outcome.SENT
    assert rec.count() == 1 and rec.connections == 2
    assert [e[1] for e in rec.envelopes] == [["lead1@example.com"]]


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
def test_an_envelope_written_ahead_is_read_after_and_survives_a_dead_connection(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    """`write_envelope` writes now and reads the replies later (the sender commits its gate between);
    a reused connection found dead at that read is replaced, and the message goes out once."""
    controller, rec = serve(smtp_class=DropOnSecondMailSMTP)
    t = transports(controller.url)
    assert t.send(_message(1), SENDER, "lead1@example.com").outcome is Outcome.SENT
    ahead = t.write_envelope(_message(2), SENDER, "lead2@example.com")
    opened = ahead.result()
    assert isinstance(opened, Opened) and opened.data_open
    assert ahead.result() is opened  # read once
    assert t.send_data(opened).outcome is Outcome.SENT
    assert [e[1] for e in rec.envelopes] == [["lead1@example.com"], ["lead2@example.com"]]
    assert rec.connections == 2


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
def test_an_envelope_written_ahead_and_refused_at_rcpt_keeps_the_connection(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(Recorder(rcpt={2: "550 5.1.1 no such user"}))
    t = transports(controller.url)
    assert t.send(_message(1), SENDER, "lead1@example.com").outcome is Outcome.SENT
    refused = t.write_envelope(_message(2), SENDER, "gone@example.com").result()
    assert isinstance(refused, SendResult)
    assert (refused.outcome, refused.code, refused.phase, refused.hard_bounce) == (
        Outcome.FAILED,
        550,
        "rcpt",
        True,
    )
    assert t.send(_message(3), SENDER, "lead3@example.com").outcome is Outcome.SENT
    assert rec.count() == 2 and rec.connections == 1  # DATA was refused too (503): RSET, not reconnect


# -- a payload left in flight (PIPELINING): the next envelope goes behind it, its reply read later --


def _in_flight(t: SmtpTransport, n: int) -> InFlight:
    opened = t.open_envelope(_message(n), SENDER, f"lead{n}@example.com")
    assert isinstance(opened, Opened) and opened.data_open
    inflight = t.write_payload(opened)
    assert isinstance(inflight, InFlight)
    return inflight


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
def test_the_next_envelope_goes_behind_a_payload_in_flight_and_its_replies_are_read_in_order(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    """What the sender does while a hand-over commits: the server works on one message while the next
    envelope waits behind it on the same connection; the payload's reply is read first, then the
    envelope's, and nothing is read twice."""
    controller, rec = serve(PipelineWatcher())
    t = transports(controller.url)
    first = _in_flight(t, 1)
    ahead = t.write_envelope(_message(2), SENDER, "lead2@example.com")
    opened = ahead.result()  # reads the first payload's reply on the way
    assert isinstance(opened, Opened)
    result = first.result()
    assert (result.outcome, result.code) == (Outcome.SENT, 250)
    assert first.result() is result
    second = t.write_payload(opened)
    assert isinstance(second, InFlight) and second.result().outcome is Outcome.SENT
    assert rec.count() == 2 and rec.connections == 1
    assert [e[1] for e in rec.envelopes] == [["lead1@example.com"], ["lead2@example.com"]]


def _until_arrived(inflight: InFlight) -> None:
    deadline = time.monotonic() + 10
    while not inflight.arrived():  # a poll with a deadline: the reply is on its way
        assert time.monotonic() < deadline, "the reply never counted as arrived"
        time.sleep(0.005)


def test_arrived_tells_a_reply_already_in_from_one_still_on_its_way(
    smtp_peer_factory: Callable[..., SmtpPeer],
) -> None:
    """The sender skips its second read of a gate when the previous reply is already in, so `arrived`
    must never say yes while the server is still working on the message, and must say yes once the
    reply is here (without consuming it)."""
    holding, release = threading.Event(), threading.Event()

    def hold_the_first(rcpt: str, phase: str, nth: int) -> str | None:
        if (phase, rcpt) == ("data_end", "lead1@example.com"):
            holding.set()
            release.wait(10)
        return None

    peer = smtp_peer_factory(hold_the_first, pipelining=True)
    t = SmtpTransport(peer.url, timeout=10)
    try:
        first = _in_flight(t, 1)
        assert holding.wait(10)
        assert not first.arrived()
        release.set()
        _until_arrived(first)
        assert (first.result().outcome, first.result().code) == (Outcome.SENT, 250)
        assert first.arrived()
    finally:
        release.set()
        t.close()
    assert peer.count() == 1


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
def test_a_refused_payload_with_an_envelope_behind_it_sends_no_rset(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    """The final dot ends the transaction whatever the reply: an RSET here would be read as the reply
    to the MAIL already waiting behind the payload. The next message goes on the same connection."""
    controller, rec = serve(Recorder(data_end={1: "550 5.7.1 rejected"}))
    t = transports(controller.url)
    first = _in_flight(t, 1)
    ahead = t.write_envelope(_message(2), SENDER, "lead2@example.com")
    result = first.result()
    assert (result.outcome, result.code, result.phase) == (Outcome.FAILED, 550, "reply")
    opened = ahead.result()
    assert isinstance(opened, Opened)
    assert t.send_data(opened).outcome is Outcome.SENT
    assert rec.count() == 1 and rec.connections == 1
    assert [e[1] for e in rec.envelopes] == [["lead2@example.com"]]


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
def test_a_421_to_a_payload_in_flight_sends_the_envelope_behind_it_on_a_fresh_connection(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    controller, rec = serve(Recorder(data_end={1: "421 4.7.0 shutting down"}))
    t = transports(controller.url)
    first = _in_flight(t, 1)
    ahead = t.write_envelope(_message(2), SENDER, "lead2@example.com")
    opened = ahead.result()  # the server closed after its 421: the envelope is opened again
    assert isinstance(opened, Opened)
    result = first.result()
    assert (result.outcome, result.code) == (Outcome.DEFERRED, 421)
    assert t.send_data(opened).outcome is Outcome.SENT
    assert [e[1] for e in rec.envelopes] == [["lead2@example.com"]]
    assert rec.connections == 2


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
@pytest.mark.parametrize("then", ["abandon", "close", "send"])
def test_a_reply_in_flight_is_read_before_the_connection_is_used_or_closed(
    serve: Serve, transports: Callable[..., SmtpTransport], then: str
) -> None:
    """Giving up the next envelope closes the connection (its DATA is open), closing the transport
    sends QUIT, a new envelope expects its own replies: each would lose or misread the reply still on
    its way, leaving a delivered message `unknown`. Each reads it first."""
    controller, rec = serve()
    t = transports(controller.url)
    first = _in_flight(t, 1)
    if then == "abandon":
        opened = t.write_envelope(_message(2), SENDER, "lead2@example.com").result()
        assert isinstance(opened, Opened)
        t.abandon(opened)
    elif then == "close":
        t.close()
    else:
        assert t.send(_message(2), SENDER, "lead2@example.com").outcome is Outcome.SENT
    assert (first.result().outcome, first.result().code) == (Outcome.SENT, 250)
    assert rec.count() == (2 if then == "send" else 1)


def test_write_payload_without_open_data_is_a_whole_send(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    """Without PIPELINING there is no open DATA to write into: `write_payload` sends DATA, the payload
    and reads the verdict, as `send_data` does."""
    controller, rec = serve()
    t = transports(controller.url)
    opened = t.open_envelope(_message(1), SENDER, "lead1@example.com")
    assert isinstance(opened, Opened)
    written = t.write_payload(opened)
    if opened.data_open:
        assert isinstance(written, InFlight)
        written = written.result()
    assert isinstance(written, SendResult) and written.outcome is Outcome.SENT
    assert rec.count() == 1


@pytest.mark.parametrize("serve", [True], ids=["pipelining"], indirect=True)
def test_a_payload_is_never_written_into_an_open_data_kept_waiting_too_long(
    serve: Serve, transports: Callable[..., SmtpTransport]
) -> None:
    """As `send_data` (above): the hand-over retried through a database outage, the server may have
    timed the open DATA out. The message goes out whole on a fresh connection, its reply read."""
    controller, rec = serve()
    t = transports(controller.url)
    opened = t.open_envelope(_message(1), SENDER, "lead1@example.com")
    assert isinstance(opened, Opened) and opened.data_open
    stale = dataclasses.replace(opened, opened_at=opened.opened_at - 60)
    written = t.write_payload(stale)
    assert isinstance(written, SendResult) and written.outcome is Outcome.SENT
    assert rec.count() == 1 and rec.connections == 2
    assert [e[1] for e in rec.envelopes] == [["lead1@example.com"]]


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    st.one_of(
        st.from_regex(transport_mod._PLAIN_ADDRESS, fullmatch=True),
        st.text(alphabet='ab.@<>"()%+- ,;:\\', max_size=12),
        st.emails(),
    )
)
def test_quoted_addresses_are_what_smtplib_would_send(address: str) -> None:
    """The pipelined commands quote plain addresses without parsing them: byte for byte what
    `smtplib.quoteaddr` (which `smtp.mail`/`smtp.rcpt` use) gives, for those and for anything else."""
    assert transport_mod._quoted(address) == smtplib.quoteaddr(address)
