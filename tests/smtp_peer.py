"""A real SMTP server for the tests: aiosmtpd on 127.0.0.1, run in a background thread.

It records what it accepted (thread-safely) and can inject faults per recipient and phase, so the
integration tests can prove what actually reached the wire, not what the sender believes it sent.

Also a pytest plugin: `pytest_plugins = ["tests.smtp_peer"]` provides the fixtures `smtp_peer`
(a started, fault-free peer) and `smtp_peer_factory` (start peers with faults).
"""

from __future__ import annotations

import asyncio
import collections
import email.parser
import email.policy
import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger(__name__)

__all__ = ["BoundController", "Received", "SmtpPeer", "smtp_peer", "smtp_peer_factory"]

FaultHook = Callable[[str, str, int], "str | None"]

# "connect" (before the greeting; the hook gets recipient "" and nth = the peer's nth connection) and
# "mail" (MAIL FROM; the recipient is not known yet, so the hook gets the envelope sender) come
# before "rcpt" and "data_end". A hook is asked about "connect" and "mail" only when the peer is
# started with `phases=PHASES` (older hooks answer every call without looking at the phase).
PHASES = ("connect", "mail", "rcpt", "data_end")
DEFAULT_PHASES = ("rcpt", "data_end")
ACTIONS = (
    "452",
    "451",
    "550",
    "554_policy",
    "421",
    "drop_after_data",
    "reset_after_data",
    "hang_after_data",
)
_REPLIES = {
    "452": "452 4.2.2 Mailbox full, try again later (injected)",
    "451": "451 4.3.0 Temporary local problem, try again later (injected)",
    "550": "550 5.1.1 No such user here (injected)",
    # A content/policy rejection: the address is fine, the message is not.
    "554_policy": "554 5.7.1 Message rejected by content policy (injected)",
    "421": "421 4.7.0 Service shutting down, closing channel (injected)",
}


class BoundController(Controller):
    """An aiosmtpd Controller on a socket bound before start, so port 0 works without a race.

    aiosmtpd's own Controller needs a known port up front (it connects to it to check readiness);
    "find a free port, close it, hope nobody takes it" is flaky under parallel test runs.
    `smtp_class` lets a test substitute an SMTP subclass that misbehaves on purpose.
    """

    def __init__(
        self,
        handler: Any,
        *,
        smtp_class: type[SMTP] = SMTP,
        host: str = "127.0.0.1",
        port: int = 0,
        **smtp_kwargs: Any,
    ) -> None:
        self._sock = socket.create_server((host, port), backlog=256)
        try:
            bound_port = self._sock.getsockname()[1]
            # A fixed banner name: otherwise every connection pays for socket.getfqdn().
            smtp_kwargs.setdefault("server_hostname", "smtp-peer.test")
            super().__init__(handler, hostname=host, port=bound_port, **smtp_kwargs)
        except BaseException:
            self._sock.close()
            raise
        self._smtp_class = smtp_class
        self.probe_port: int | None = None  # source port of start()'s readiness probe

    @property
    def url(self) -> str:
        return f"smtp://{self.hostname}:{self.port}"

    def _trigger_server(self) -> None:
        """aiosmtpd's readiness probe (connect, read the greeting), from a source port noted in
        `probe_port`: a client may connect while start() runs, and the peer must tell them apart."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((self.hostname, 0))
            self.probe_port = s.getsockname()[1]
            s.settimeout(1.0)
            s.connect((self.hostname, self.port))
            s.recv(1024)

    def is_probe(self, transport: asyncio.BaseTransport) -> bool:
        peername = transport.get_extra_info("peername")
        return peername is not None and peername[1] == self.probe_port

    def factory(self) -> SMTP:
        return self._smtp_class(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(
            self._factory_invoker, sock=self._sock, ssl=self.ssl_context, backlog=256
        )

    def start(self) -> None:
        try:
            super().start()
        except BaseException:
            self._sock.close()
            raise

    def stop(self, no_assert: bool = False) -> None:
        super().stop(no_assert=no_assert)
        # The asyncio server normally closes it; this covers a controller that never started.
        self._sock.close()


@dataclass(frozen=True)
class Received:
    recipient: str
    message_id: str
    campaign: str
    at: float


class _PeerSMTP(SMTP):
    """Counts client connections (the tests assert on reconnects)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        peer = getattr(self.event_handler, "peer", None)
        if first and isinstance(peer, SmtpPeer) and not self._probe():
            peer._connected()

    def _probe(self) -> bool:
        """The controller's own readiness probe: neither counted nor given faults."""
        controller = getattr(self.event_handler, "controller", None)
        return self.transport is not None and controller is not None and controller.is_probe(self.transport)

    async def _handle_client(self) -> None:
        # The "connect" phase: only "421" is valid here (a greeting refusal, RFC 5321 3.1).
        peer = getattr(self.event_handler, "peer", None)
        action = None
        if isinstance(peer, SmtpPeer) and "connect" in peer._phases and not self._probe():
            action = peer._fault("", "connect")
        if action is None:
            await super()._handle_client()
            return
        assert isinstance(peer, SmtpPeer) and self.transport is not None
        if action != "421":
            peer._error(ValueError(f"action {action!r} is not valid in phase 'connect'"))
        await self.push(_REPLIES["421"])
        self.transport.close()


class _PeerHandler:
    def __init__(self, peer: SmtpPeer) -> None:
        self.peer = peer
        self.controller: BoundController | None = None

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does without this hook
        if not self.peer.pipelining:
            return responses
        # As `sendguard sink` does: Nagle off (two pipelined replies in a row otherwise wait 40 ms for
        # the client's delayed ACK), and PIPELINING offered.
        assert server.transport is not None
        sock = server.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        action = self.peer._fault(address, "mail") if "mail" in self.peer._phases else None
        if action is None:
            # What aiosmtpd does without a MAIL hook.
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            return "250 OK"
        if action not in _REPLIES:
            self.peer._error(ValueError(f"action {action!r} is not valid in phase 'mail'"))
            return "451 4.3.0 bad fault action (see SmtpPeer.errors)"
        return self._reply(server, action)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        action = self.peer._fault(address, "rcpt")
        if action is None:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return "250 2.1.5 Ok"
        if action not in _REPLIES:
            self.peer._error(ValueError(f"action {action!r} is not valid in phase 'rcpt'"))
            return "451 4.3.0 bad fault action (see SmtpPeer.errors)"
        return self._reply(server, action)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        # Every recipient gets asked (so the nth counters advance for all); the first action wins.
        actions = [self.peer._fault(rcpt, "data_end") for rcpt in envelope.rcpt_tos]
        action = next((a for a in actions if a is not None), None)
        if action is not None and action not in ACTIONS:
            self.peer._error(ValueError(f"unknown fault action {action!r}"))
            return "451 4.3.0 bad fault action (see SmtpPeer.errors)"
        if action in _REPLIES:
            return self._reply(server, action)

        self.peer._store(envelope.rcpt_tos, content)
        if action == "drop_after_data":
            assert server.transport is not None
            server.transport.close()
            # Never return: a returned status would be written after the close. The task is
            # cancelled by connection_lost.
            await asyncio.Event().wait()
        elif action == "reset_after_data":
            # Stored, then a TCP RST instead of a reply (a crashed or killed server): with SO_LINGER 0
            # the close sends RST, not FIN.
            assert server.transport is not None
            sock = server.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            server.transport.abort()
            await asyncio.Event().wait()
        elif action == "hang_after_data":
            # Until the client gives up and disconnects (which cancels us) or the peer stops.
            await asyncio.Event().wait()
        return f"250 2.0.0 Ok: queued as {self.peer._next_queue_id()}"

    @staticmethod
    def _reply(server: SMTP, action: str) -> str:
        if action == "421":
            # 421 means the server closes the channel; close right after the reply is written
            # (the write happens before this callback runs, and close() flushes it).
            assert server.transport is not None
            asyncio.get_running_loop().call_soon(server.transport.close)
        return _REPLIES[action]


class SmtpPeer:
    """aiosmtpd on 127.0.0.1 (free port) in a background thread; thread-safe record of what it accepted."""

    def __init__(
        self,
        faults: FaultHook | None = None,
        *,
        port: int = 0,
        phases: tuple[str, ...] = DEFAULT_PHASES,
        smtp_kwargs: dict[str, Any] | None = None,
        pipelining: bool = False,
    ) -> None:
        """`smtp_kwargs` go to aiosmtpd's SMTP, e.g. an `authenticator` with `auth_require_tls=False`.
        `pipelining` offers PIPELINING (RFC 2920) in the EHLO reply, as `sendguard sink` and most real
        servers do."""
        self.pipelining = pipelining
        self._smtp_kwargs = dict(smtp_kwargs or {})
        unknown = set(phases) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown phases {sorted(unknown)} (known: {PHASES})")
        self._faults = faults
        self._phases = phases
        self._port = port  # 0: any free port
        self._cond = threading.Condition()
        self._received: list[Received] = []
        self._seen: collections.Counter[tuple[str, str]] = collections.Counter()
        self._connections = 0
        self._queue_ids = itertools.count(1)
        self._parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
        self._controller: BoundController | None = None
        self.errors: list[BaseException] = []
        self.url = ""

    def __repr__(self) -> str:
        return f"SmtpPeer({self.url or 'not started'}, received={self.count()})"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SmtpPeer:
        if self._controller is not None:
            raise RuntimeError("SmtpPeer already started")
        handler = _PeerHandler(self)
        controller = BoundController(handler, smtp_class=_PeerSMTP, port=self._port, **self._smtp_kwargs)
        # Faults apply from the first client on, even one that connects while start() runs (a sender
        # retrying on this port); start()'s own readiness probe is told apart by its source port.
        handler.controller = controller
        controller.start()
        self._controller = controller
        self.url = controller.url
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> SmtpPeer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("SmtpPeer not started")
        return self._controller.port

    # -- what it saw --------------------------------------------------------------------------

    def received(self) -> list[Received]:
        with self._cond:
            return list(self._received)

    def count(self, campaign: str | None = None) -> int:
        with self._cond:
            if campaign is None:
                return len(self._received)
            return sum(1 for r in self._received if r.campaign == campaign)

    def per_recipient(self) -> collections.Counter[str]:
        with self._cond:
            return collections.Counter(r.recipient for r in self._received)

    def connections(self) -> int:
        """Client connections accepted so far (a reconnect shows up here)."""
        with self._cond:
            return self._connections

    def wait_for(self, n: int, timeout: float) -> bool:
        """Block until at least n messages were accepted; False if the deadline passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._received) >= n, timeout)

    # -- called from the server thread -------------------------------------------------------

    def _fault(self, recipient: str, phase: str) -> str | None:
        recipient = recipient.lower()
        with self._cond:
            self._seen[(recipient, phase)] += 1
            nth = self._seen[(recipient, phase)]
        if self._faults is None:
            return None
        try:
            return self._faults(recipient, phase, nth)
        except Exception as exc:  # a broken hook must fail the test, not kill the server
            self._error(exc)
            return None

    def _error(self, exc: BaseException) -> None:
        log.error("SmtpPeer fault hook: %r", exc)
        with self._cond:
            self.errors.append(exc)

    def _store(self, recipients: list[str], content: bytes) -> None:
        headers = self._parser.parsebytes(content)
        message_id = str(headers.get("Message-ID", "")).strip()
        campaign = str(headers.get("X-Sendguard-Campaign", "")).strip()
        now = time.time()
        with self._cond:
            for rcpt in recipients:
                self._received.append(Received(rcpt.lower(), message_id, campaign, now))
            self._cond.notify_all()

    def _connected(self) -> None:
        with self._cond:
            self._connections += 1

    def _next_queue_id(self) -> str:
        return f"Q{next(self._queue_ids):06d}"


@pytest.fixture
def smtp_peer() -> Iterator[SmtpPeer]:
    """A started, fault-free SmtpPeer; `smtp_peer.url` is the SMTP URL to send to."""
    with SmtpPeer() as peer:
        yield peer
    assert not peer.errors, f"SmtpPeer fault hook errors: {peer.errors}"


@pytest.fixture
def smtp_peer_factory() -> Iterator[Callable[..., SmtpPeer]]:
    """Call with a faults hook to get a started SmtpPeer; all are stopped after the test."""
    peers: list[SmtpPeer] = []

    def make(
        faults: FaultHook | None = None,
        *,
        port: int = 0,
        phases: tuple[str, ...] = DEFAULT_PHASES,
        smtp_kwargs: dict[str, Any] | None = None,
        pipelining: bool = False,
    ) -> SmtpPeer:
        peer = SmtpPeer(
            faults, port=port, phases=phases, smtp_kwargs=smtp_kwargs, pipelining=pipelining
        ).start()
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.stop()
    errors = [e for peer in peers for e in peer.errors]
    assert not errors, f"SmtpPeer fault hook errors: {errors}"
