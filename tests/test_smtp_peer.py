"""The SMTP peer the integration tests trust: prove it counts exactly and applies faults as documented."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from tests.smtp_peer import Received, SmtpPeer

# The fixtures come from tests/conftest.py: pytest_plugins = ["tests.smtp_peer"].


def _message(n: int, campaign: str = "spring") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "ana@example.com"
    msg["To"] = f"lead{n}@example.com"
    msg["Subject"] = f"hello {n}"
    msg["Message-ID"] = f"<m{n}.{campaign}@sendguard.test>"
    msg["X-Sendguard-Campaign"] = campaign
    msg.set_content("Hi there.\n.\nA line that is only a dot, to check transparency.\n")
    return msg


def _client(peer: SmtpPeer, timeout: float = 5.0) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", peer.port, timeout=timeout)


def test_fixture_counts_per_campaign_and_recipient(smtp_peer: SmtpPeer) -> None:
    assert smtp_peer.url == f"smtp://127.0.0.1:{smtp_peer.port}"
    before = time.time()
    with _client(smtp_peer) as client:
        for n in range(5):
            client.send_message(_message(n), "ana@example.com", [f"Lead{n % 2}@Example.com"])
        client.send_message(_message(9, campaign="autumn"), "ana@example.com", ["lead0@example.com"])

    assert smtp_peer.wait_for(6, timeout=5)
    assert smtp_peer.count() == 6
    assert smtp_peer.count("spring") == 5
    assert smtp_peer.count("autumn") == 1
    assert smtp_peer.count("nope") == 0
    assert smtp_peer.per_recipient() == {"lead0@example.com": 4, "lead1@example.com": 2}
    first = smtp_peer.received()[0]
    assert first == Received("lead0@example.com", "<m0.spring@sendguard.test>", "spring", first.at)
    assert before <= first.at <= time.time()
    assert smtp_peer.connections() == 1


def test_wait_for_times_out_without_messages(smtp_peer: SmtpPeer) -> None:
    started = time.monotonic()
    assert smtp_peer.wait_for(1, timeout=0.2) is False
    assert 0.15 <= time.monotonic() - started < 2


def test_wait_for_wakes_up_when_a_message_arrives(smtp_peer: SmtpPeer) -> None:
    def send_later() -> None:
        time.sleep(0.1)
        with _client(smtp_peer) as client:
            client.send_message(_message(1), "ana@example.com", ["lead1@example.com"])

    thread = threading.Thread(target=send_later)
    thread.start()
    assert smtp_peer.wait_for(1, timeout=5)
    thread.join()


def test_rcpt_faults_use_the_nth_counter_per_recipient(
    smtp_peer_factory: Callable[..., SmtpPeer],
) -> None:
    calls: list[tuple[str, str, int]] = []

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        calls.append((rcpt, phase, nth))
        if rcpt == "busy@example.com" and phase == "rcpt" and nth == 1:
            return "452"
        if rcpt == "gone@example.com" and phase == "rcpt":
            return "550"
        return None

    peer = smtp_peer_factory(faults)
    with _client(peer) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.send_message(_message(1), "ana@example.com", ["Busy@example.com"])
        assert refused.value.recipients["Busy@example.com"][0] == 452
        client.send_message(_message(1), "ana@example.com", ["busy@example.com"])
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.send_message(_message(2), "ana@example.com", ["gone@example.com"])
        assert refused.value.recipients["gone@example.com"][0] == 550

    assert peer.per_recipient() == {"busy@example.com": 1}
    assert ("busy@example.com", "rcpt", 1) in calls
    assert ("busy@example.com", "rcpt", 2) in calls
    assert ("busy@example.com", "data_end", 1) in calls


def test_data_end_reply_faults_store_nothing(smtp_peer_factory: Callable[..., SmtpPeer]) -> None:
    codes = {"temp@example.com": "452", "perm@example.com": "550"}
    peer = smtp_peer_factory(lambda rcpt, phase, nth: codes.get(rcpt) if phase == "data_end" else None)
    with _client(peer) as client:
        for rcpt, code in (("temp@example.com", 452), ("perm@example.com", 550)):
            with pytest.raises(smtplib.SMTPDataError) as err:
                client.send_message(_message(1), "ana@example.com", [rcpt])
            assert err.value.smtp_code == code
        client.send_message(_message(2), "ana@example.com", ["fine@example.com"])
    assert peer.per_recipient() == {"fine@example.com": 1}


def test_421_replies_and_closes_the_connection(smtp_peer_factory: Callable[..., SmtpPeer]) -> None:
    peer = smtp_peer_factory(lambda rcpt, phase, nth: "421" if phase == "rcpt" and nth == 1 else None)
    client = _client(peer)
    client.ehlo()
    client.mail("ana@example.com")
    code, _ = client.rcpt("lead@example.com")
    assert code == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    client.close()
    assert peer.count() == 0


def test_drop_after_data_stores_then_disconnects(smtp_peer_factory: Callable[..., SmtpPeer]) -> None:
    peer = smtp_peer_factory(lambda rcpt, phase, nth: "drop_after_data" if phase == "data_end" else None)
    with _client(peer) as client, pytest.raises(smtplib.SMTPServerDisconnected):
        client.send_message(_message(1), "ana@example.com", ["lead@example.com"])
    assert peer.per_recipient() == {"lead@example.com": 1}


def test_hang_after_data_stores_and_never_replies(smtp_peer_factory: Callable[..., SmtpPeer]) -> None:
    peer = smtp_peer_factory(lambda rcpt, phase, nth: "hang_after_data" if phase == "data_end" else None)
    client = _client(peer, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        client.send_message(_message(1), "ana@example.com", ["lead@example.com"])
    assert time.monotonic() - started >= 0.45
    client.close()
    assert peer.wait_for(1, timeout=5)
    assert peer.per_recipient() == {"lead@example.com": 1}


def test_broken_fault_hook_is_reported_not_swallowed() -> None:
    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        raise RuntimeError("bug in the test's hook")

    with SmtpPeer(faults) as peer, _client(peer) as client:
        client.send_message(_message(1), "ana@example.com", ["lead@example.com"])
    # Asked at RCPT and at the end of DATA; it behaved normally both times but kept the errors.
    assert [str(e) for e in peer.errors] == ["bug in the test's hook"] * 2
    assert peer.count() == 1


_CLIENT = textwrap.dedent(
    """
    import smtplib, sys
    from email.message import EmailMessage
    port, count, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for i in range(count):
            msg = EmailMessage()
            msg["Message-ID"] = f"<{tag}.{i}@sendguard.test>"
            msg["X-Sendguard-Campaign"] = tag
            msg.set_content("hi")
            client.send_message(msg, "ana@example.com", [f"{tag}.{i}@example.com"])
    """
)


def test_takes_many_messages_from_six_concurrent_processes(smtp_peer: SmtpPeer) -> None:
    per_process = 150
    procs = [
        subprocess.Popen([sys.executable, "-c", _CLIENT, str(smtp_peer.port), str(per_process), f"p{k}"])
        for k in range(6)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    assert smtp_peer.wait_for(6 * per_process, timeout=10)
    assert smtp_peer.count() == 6 * per_process
    assert all(smtp_peer.count(f"p{k}") == per_process for k in range(6))
    counts = smtp_peer.per_recipient()
    assert len(counts) == 6 * per_process and set(counts.values()) == {1}
    assert smtp_peer.connections() == 6


def test_the_readiness_probe_neither_counts_nor_takes_a_connect_fault(
    smtp_peer_factory: Callable[..., SmtpPeer],
) -> None:
    """start() connects once to check the server is up. Faults are armed before it (a client may
    connect while start() runs), so the probe is told apart by its source port: the first client,
    not the probe, gets the first-connection fault."""
    peer = smtp_peer_factory(lambda rcpt, phase, nth: "421" if phase == "connect" and nth == 1 else None,
                             phases=("connect",))  # fmt: skip
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", peer.port, timeout=5)
    assert refused.value.smtp_code == 421
    with smtplib.SMTP("127.0.0.1", peer.port, timeout=5) as client:
        assert client.noop()[0] == 250
    assert peer.connections() == 2 and peer.errors == []
