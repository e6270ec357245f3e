"""MX recipients: accounts, aliases, catch-all, plus-addressing, unknown users, and no open relay."""

from __future__ import annotations

import re
import smtplib
import time
import uuid

import pytest
from smtp_helpers import find, inbox, swaks

from harness import ServerProcess, require_peer
from smtpclient import Raw


def send(mx: ServerProcess, sender: str, rcpts: list[str], marker: str) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=15) as c:
        return c.sendmail(sender, rcpts, f"Subject: {marker}\r\n\r\nbody {marker}\r\n".encode())


def marker() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def raw(mx: ServerProcess):
    client = Raw(mx.port("smtp"))
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.example>")[0] == 250
    yield client
    client.close()


def test_account_accepted_and_stored(mx: ServerProcess) -> None:
    m = marker()
    assert send(mx, "sender@remote.example", ["alice@example.org"], m) == {}
    assert len(find(inbox(mx, "alice@example.org"), m.encode())) == 1


def test_plus_addressing_and_case(mx: ServerProcess) -> None:
    m = marker()
    assert send(mx, "sender@remote.example", ["Alice+news@EXAMPLE.ORG"], m) == {}
    assert len(find(inbox(mx, "alice@example.org"), m.encode())) == 1


def test_alias_and_catch_all(mx: ServerProcess) -> None:
    m = marker()
    assert send(mx, "sender@remote.example", ["team@example.org", "whoever@catchall.test"], m) == {}
    assert len(find(inbox(mx, "alice@example.org"), m.encode())) == 1
    assert len(find(inbox(mx, "bob@example.org"), m.encode())) == 1
    assert len(find(inbox(mx, "carol@example.net"), m.encode())) == 1


def test_one_copy_per_account(mx: ServerProcess) -> None:
    m = marker()
    rcpts = [
        "alice@example.org",
        "team@example.org",
        "alice+x@example.org",
        "ALICE@example.org",
        "postmaster@example.org",
    ]
    assert send(mx, "sender@remote.example", rcpts, m) == {}
    assert len(find(inbox(mx, "alice@example.org"), m.encode())) == 1
    assert len(find(inbox(mx, "bob@example.org"), m.encode())) == 1


def test_null_sender(mx: ServerProcess) -> None:
    m = marker()
    assert send(mx, "", ["bob@example.org"], m) == {}
    (msg,) = find(inbox(mx, "bob@example.org"), m.encode())
    assert msg.startswith(b"Return-Path: <>\n")


def test_postmaster_without_domain(raw: Raw) -> None:
    assert raw.cmd("RCPT TO:<Postmaster>")[0] == 250  # RFC 5321 4.5.1


def test_unknown_user(raw: Raw) -> None:
    code, text = raw.cmd("RCPT TO:<nobody@example.org>")
    assert code == 550 and text.startswith("5.1.1")
    code, text = raw.cmd("RCPT TO:<nobody+tag@example.net>")
    assert code == 550 and text.startswith("5.1.1")


def test_alias_to_elsewhere_is_forwarded_through_the_queue(mx: ServerProcess) -> None:
    m = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", mx.port("smtp")) as c:
        refused = c.sendmail(
            "s@remote.example", ["fwd@example.org", "mixed@example.org"], f"Subject: {m}\r\n\r\nx\r\n"
        )
        assert refused == {}
    # one local copy (bob, through mixed@), the rest queued for the address elsewhere, in one commit
    assert len(find(inbox(mx, "bob@example.org"), m.encode())) == 1
    deadline = time.monotonic() + 10
    while "<someone@elsewhere.invalid>" not in mx.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(r"copies=1 forwarded=1", mx.log())
    assert "queue 1: <someone@elsewhere.invalid>" in mx.log()


@pytest.mark.parametrize(
    "address",
    [
        "someone@elsewhere.example",
        "alice@example.org.evil.example",
        "alice@sub.example.org",
        "alice@elsewhere.example.",
        "ALICE@ELSEWHERE.EXAMPLE",
        "@example.org:alice@elsewhere.example",  # source route through us: the final address decides
        "@example.org,@example.net:alice@elsewhere.example",
        "alice@[127.0.0.1]",
        "alice@[IPv6:::1]",
    ],
)
def test_no_relay(raw: Raw, address: str) -> None:
    code, text = raw.cmd(f"RCPT TO:<{address}>")
    assert code == 554 and text.startswith("5.7.1"), (address, code, text)


@pytest.mark.parametrize(
    "address",
    [
        "alice%elsewhere.example@example.org",  # % is not routing here
        '"alice@elsewhere.example"@example.org',  # a quoted @ is part of the local part
        "elsewhere.example!alice@example.org",  # nor is a bang path
    ],
)
def test_routing_tricks_stay_local(raw: Raw, address: str) -> None:
    code, text = raw.cmd(f"RCPT TO:<{address}>")
    assert code == 550 and text.startswith("5.1.1"), (address, code, text)


@pytest.mark.parametrize(
    "address",
    [
        "alice@elsewhere.example@example.org",
        "alice@@example.org",
        "<alice@example.org>",
        "alice@example..org",
    ],
)
def test_malformed_recipients(raw: Raw, address: str) -> None:
    code, text = raw.cmd(f"RCPT TO:<{address}>")
    assert code == 501 and text[:4] in ("5.1.", "5.5."), (address, code, text)


def test_local_domain_variants_accepted(raw: Raw) -> None:
    for address in ("alice@example.org.", "ALICE@EXAMPLE.ORG", "@elsewhere.example:alice@example.org"):
        code, text = raw.cmd(f"RCPT TO:<{address}>")
        assert code == 250, (address, code, text)


def test_catch_all_does_not_relay(raw: Raw) -> None:
    # the catch-all takes any local part of its domain, and nothing of other domains
    assert raw.cmd("RCPT TO:<a%b@catchall.test>")[0] == 250
    assert raw.cmd("RCPT TO:<a@catchall.test.evil.example>")[0] == 554


def test_swaks_delivers_and_is_refused_relay(mx: ServerProcess) -> None:
    require_peer("swaks")

    m = marker()
    ok = swaks(
        mx, "bob@example.org", "sender@remote.example", "--header", f"Subject: {m}", "--body", f"body {m}"
    )
    assert ok.returncode == 0, ok.stdout
    assert "250 2.0.0 Ok: delivered as" in ok.stdout
    assert len(find(inbox(mx, "bob@example.org"), m.encode())) == 1
    relay = swaks(mx, "x@elsewhere.example", "sender@remote.example")
    assert relay.returncode != 0
    assert "554 5.7.1" in relay.stdout
