"""`sendguard sink`: the local capture server, run in-process (a thread, or the main thread + a signal)."""

from __future__ import annotations

import mailbox
import os
import re
import signal
import smtplib
import socket
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from sender.errors import UsageError
from sender.sink import is_loopback, run_sink

START_LINE = re.compile(r"^sink: listening on smtp://127\.0\.0\.1:(\d+), writing to (.+)$", re.M)


def _message(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "ana@example.com"
    msg["To"] = "lead@example.com"
    msg["Subject"] = f"hello {n}"
    msg["Message-ID"] = f"<c1.lead{n}.s0@sendguard.test>"
    msg.set_content("Hi.\n.\nbye\n")
    return msg


class SinkThread:
    def __init__(self, maildir: Path) -> None:
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(str(maildir),), daemon=True)

    def _run(self, maildir: str) -> None:
        try:
            run_sink("127.0.0.1", 0, maildir, ready=self.ready.set, stop=self.stop)
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()


@pytest.fixture
def sink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[int, Path, SinkThread]]:
    maildir = tmp_path / "maildir"
    s = SinkThread(maildir)
    s.thread.start()
    assert s.ready.wait(10), "sink never became ready"
    assert s.error is None, s.error
    match = START_LINE.search(capsys.readouterr().out)
    assert match, "no start line"
    assert match[2] == str(maildir)
    yield int(match[1]), maildir, s
    s.stop.set()
    s.thread.join(10)
    assert not s.thread.is_alive()


def test_stores_messages_in_maildir_and_prints_them(
    sink: tuple[int, Path, SinkThread], capsys: pytest.CaptureFixture[str]
) -> None:
    port, maildir, s = sink
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.send_message(_message(1), "ana@example.com", ["lead@example.com"])
        client.send_message(_message(2), "ana@example.com", ["a@example.com", "b@example.com"])

    box = mailbox.Maildir(str(maildir), create=False)
    stored = sorted(box, key=lambda m: m["Subject"])
    assert [m["Message-ID"] for m in stored] == [
        "<c1.lead1.s0@sendguard.test>",
        "<c1.lead2.s0@sendguard.test>",
    ]
    assert stored[0]["Return-Path"] == "<ana@example.com>"
    assert stored[1].get_all("Delivered-To") == ["a@example.com", "b@example.com"]
    assert stored[0].get_payload() == "Hi.\n.\nbye\n"
    assert len(os.listdir(maildir / "new")) == 2

    s.stop.set()
    s.thread.join(10)
    assert not s.thread.is_alive() and s.error is None
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "sink: <c1.lead1.s0@sendguard.test> -> lead@example.com",
        "sink: <c1.lead2.s0@sendguard.test> -> a@example.com, b@example.com",
        "sink: stopped (2 message(s) stored)",
    ]
    # Stopped means the port is released.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_offers_pipelining_and_answers_pipelined_commands(sink: tuple[int, Path, SinkThread]) -> None:
    """MAIL, RCPT and DATA in one write get their three replies in order, and the message that follows
    is stored. (Without TCP_NODELAY on the sink's side the last two wait 40 ms for the client's delayed
    ACK: bench/throughput.py --transport smtp shows it, a timed test would not.)"""
    port, maildir, _ = sink
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.ehlo()
        assert client.has_extn("pipelining")
        client.send(b"MAIL FROM:<ana@example.com>\r\nRCPT TO:<lead@example.com>\r\nDATA\r\n")
        codes = [client.getreply()[0] for _ in range(3)]
        assert codes == [250, 250, 354]
        client.send(b"Message-ID: <p1@sendguard.test>\r\nSubject: p\r\n\r\nHi.\r\n.\r\n")
        assert client.getreply()[0] == 250
    stored = list(mailbox.Maildir(str(maildir), create=False))
    assert [m["Message-ID"] for m in stored] == ["<p1@sendguard.test>"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal_in_the_main_thread(
    signum: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signum)
    # The signal arrives while the sink runs; run_sink must return normally, not raise.
    run_sink("127.0.0.1", 0, str(tmp_path / "md"), ready=lambda: os.kill(os.getpid(), signum))
    out = capsys.readouterr().out
    assert START_LINE.search(out)
    assert "sink: stopped (0 message(s) stored)" in out
    assert signal.getsignal(signum) is before


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_refuses_non_loopback_hosts(host: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a loopback address"):
        run_sink(host, 0, str(tmp_path / "md"))
    assert not (tmp_path / "md").exists()


def test_loopback_detection() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "localhost.example.com", ""))


def test_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
            run_sink("127.0.0.1", port, str(tmp_path / "md"))


def test_unusable_maildir_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match="cannot use .* as a Maildir"):
        run_sink("127.0.0.1", 0, str(blocker))
