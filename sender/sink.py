"""`sendguard sink`: a local capture SMTP server that stores every message in a Maildir.

For demos and manual testing: point SENDGUARD_SMTP_URL at it and look at what would have been sent.
It accepts anything from anyone, so by default it only listens on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import ipaddress
import mailbox
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from sender.errors import UsageError

__all__ = ["is_loopback", "run_sink"]

# How often the waiting thread looks at the stop event and the signal flag; only shutdown latency.
_POLL_SECONDS = 0.2


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback IP literals; any other name could resolve anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _MaildirHandler:
    def __init__(self, box: mailbox.Maildir) -> None:
        self.box = box
        self.stored = 0
        self._headers = email.parser.BytesHeaderParser(policy=email.policy.compat32)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd reads commands in order from one stream, so pipelined ones (RFC 2920) work; it just
        # does not say so. Saying it lets a client send MAIL, RCPT and DATA in one round trip.
        session.host_name = hostname  # what aiosmtpd does itself without this hook
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        # The envelope is not in the headers; record it the way a local delivery agent would.
        prefix = f"Return-Path: <{envelope.mail_from}>\n" + "".join(
            f"Delivered-To: {rcpt}\n" for rcpt in envelope.rcpt_tos
        )
        # Maildir files use local line endings, as mail readers and mailbox.Maildir expect.
        data = prefix.encode("utf-8") + content.replace(b"\r\n", b"\n")
        try:
            # Blocking disk I/O on the event loop: acceptable for a single-user demo sink.
            self.box.add(data)
        except OSError as exc:
            print(f"sink: cannot store message: {exc}", flush=True)
            return "451 4.3.0 Cannot store message"
        self.stored += 1
        message_id = str(self._headers.parsebytes(content).get("Message-ID", "(no Message-ID)")).strip()
        print(f"sink: {message_id} -> {', '.join(envelope.rcpt_tos)}", flush=True)
        return "250 2.0.0 Ok: stored"


class _SinkSMTP(SMTP):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio turns Nagle off only for sockets it made itself with proto IPPROTO_TCP, not for those
        # accepted on our pre-bound one. With Nagle, the second of two pipelined replies waits for the
        # client's delayed ACK: 40 ms a message.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class _SinkController(Controller):
    """Serves on a socket bound before start: bind errors surface here, and port 0 works."""

    def __init__(self, handler: _MaildirHandler, sock: socket.socket) -> None:
        self._sock = sock
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, server_hostname="sendguard-sink")

    def factory(self) -> SMTP:
        return _SinkSMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        return socket.create_server(address, family=family)
    except OSError as exc:
        raise UsageError(f"sink: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _open_maildir(path: str) -> mailbox.Maildir:
    try:
        # mailbox.Maildir only creates tmp/new/cur for a directory that does not exist yet.
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        return mailbox.Maildir(path, create=False)
    except OSError as exc:
        raise UsageError(f"sink: cannot use {path} as a Maildir: {exc.strerror or exc}") from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run_sink(
    host: str,
    port: int,
    maildir: str,
    ready: Callable[[], None] | None = None,
    *,
    allow_remote: bool = False,
    stop: threading.Event | None = None,
) -> None:
    """Capture mail into `maildir` until SIGINT/SIGTERM (or until `stop` is set), then return.

    `ready` is called once the server accepts connections. Signal handlers are installed only when
    called from the main thread (Python allows no other); from another thread, use `stop`.
    Raises UsageError for a non-loopback host without `allow_remote`, a port that cannot be bound
    or a Maildir that cannot be created.
    """
    if not allow_remote and not is_loopback(host):
        raise UsageError(
            f"sink: refusing to listen on {host}: not a loopback address "
            "(the sink accepts mail from anyone; it is meant for local demos)"
        )
    box = _open_maildir(maildir)
    handler = _MaildirHandler(box)
    sock = _bind(host, port)
    controller = _SinkController(handler, sock)

    stop_event = stop if stop is not None else threading.Event()
    signalled: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only record it: setting an Event from a signal handler can deadlock on its lock.
        signalled.append(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        try:
            controller.start()
        except OSError as exc:
            sock.close()
            raise UsageError(f"sink: cannot start on {host}:{port}: {exc.strerror or exc}") from None
        try:
            bound_port = sock.getsockname()[1]
            print(
                f"sink: listening on smtp://{_url_host(host)}:{bound_port}, writing to {maildir}",
                flush=True,
            )
            if ready is not None:
                ready()
            while not signalled and not stop_event.wait(_POLL_SECONDS):
                pass
        finally:
            controller.stop()
        print(f"sink: stopped ({handler.stored} message(s) stored)", flush=True)
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
