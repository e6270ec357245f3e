"""Delivery through a relay (smarthost), the hybrid mode: a real Postfix on NET.22 requiring STARTTLS and
AUTH (SASL by Dovecot's auth server) hands mail on to homemail B (NET.21); homemail A (NET.20) sends
two.test through it, three.test direct, four.test direct until two attempts failed and then through the relay.
Relays that lack TLS or AUTH, refuse the login or show a certificate A cannot verify keep the mail queued with
the reason; a relay's 5xx comes back as a report.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import pytest
from delivery_helpers import (
    Homemail,
    loopback_block,
    marker,
    parse,
    parse_dsn,
    received_fields,
    start_all,
    submit,
    verify_all_dkim,
    wait_for,
)
from postfix_relay import PostfixRelay

from dnsserver import KnotServer

NET = loopback_block()
A_IP, B_IP, RELAY_IP, DEAD_IP = NET + "20", NET + "21", NET + "22", NET + "29"
ZONES = {
    "one.test": ["@ MX 10 mx", f"mx A {A_IP}"],
    "two.test": ["@ MX 10 mx", f"mx A {B_IP}"],
    "three.test": ["@ MX 10 mx.two.test."],
    "four.test": ["@ MX 10 mx", f"mx A {DEAD_IP}"],  # nothing listens there: direct delivery fails
    "relay.test": [f"@ A {RELAY_IP}"],
}
ALICE = "alice@one.test"
RELAY_USER, RELAY_PASSWORD = "homemail-a", "relay secret 7"
REFUSED = "refuse@two.test"


def relay(name: str, port: int, ca: str | None, password: str = RELAY_PASSWORD) -> dict[str, object]:
    r: dict[str, object] = {
        "name": name,
        "host": "relay.test",
        "port": port,
        "tls": "starttls",
        "username": RELAY_USER,
        "password": password,
    }
    if ca is not None:
        r["cafile"] = ca
    return r


@pytest.fixture(scope="module")
def world(knot: KnotServer) -> Iterator[tuple[Homemail, Homemail, PostfixRelay]]:
    """Postfix starts (slowly, in a thread) while the two homemails are set up."""
    postfix = PostfixRelay(
        RELAY_IP,
        "relay.test",
        f"[{B_IP}]:25",
        RELAY_USER,
        RELAY_PASSWORD,
        refuse={REFUSED: "5.7.1 Refused by the relay (rule 9)"},
    ).prepare()
    ca = str(postfix.ca_file)
    a = Homemail(
        A_IP,
        "mx.one.test",
        knot.nameserver,
        config={
            # Connections stay pooled long enough for the next test message to find them.
            "delivery": {"idle_close": "5s"},
            "relay": [
                relay("smarthost", 587, ca),
                relay("no-tls", 2525, ca),
                relay("no-auth", 2526, ca),
                relay("bad-login", 587, ca, password="wrong"),
                relay("untrusted", 587, None),  # the system's CAs do not know the test CA
            ],
            "route": [
                {"relay": "smarthost", "domains": ["two.test"]},
                {"relay": "smarthost", "domains": ["four.test"], "after_failures": 2},
                {"relay": "no-tls", "domains": ["five.test"]},
                {"relay": "no-auth", "domains": ["six.test"]},
                {"relay": "bad-login", "domains": ["seven.test"]},
                {"relay": "untrusted", "domains": ["eight.test"]},
            ],
        },
    )
    b = Homemail(B_IP, "mx.two.test", knot.nameserver)
    servers = [a, b]
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = pool.submit(postfix.start)
            a.provision([ALICE])
            b.provision(["bob@two.test", "carol@three.test", "dave@four.test"])
            knot.set_zone("one.test", ZONES["one.test"] + a.dkim_keygen("one.test"))
            start_all(a, b)
            started.result()
        yield a, b, postfix
    finally:
        for server in servers:
            server.stop()
        postfix.stop()


@pytest.fixture(scope="module")
def postfix(world: tuple[Homemail, Homemail, PostfixRelay]) -> PostfixRelay:
    return world[2]


@pytest.fixture(scope="module")
def a(world: tuple[Homemail, Homemail, PostfixRelay]) -> Homemail:
    return world[0]


@pytest.fixture(scope="module")
def b(world: tuple[Homemail, Homemail, PostfixRelay]) -> Homemail:
    return world[1]


def via_postfix(message: bytes) -> bool:
    return any("by relay.test (Postfix)" in r for r in received_fields(message))


def test_only_the_routed_domain_goes_through_the_relay(
    knot: KnotServer, a: Homemail, b: Homemail, postfix: PostfixRelay
) -> None:
    mark = marker()
    submit(a, ALICE, ["bob@two.test", "carol@three.test"], mark)
    (relayed,) = b.wait_message("bob@two.test", mark)
    (direct,) = b.wait_message("carol@three.test", mark)

    received = received_fields(relayed)
    # B got it from Postfix, Postfix from A over TLS with A's login, A from the user.
    assert received[0].startswith("from relay.test") and f"[{RELAY_IP}]" in received[0], received[0]
    assert "by mx.two.test (homemail) with ESMTPS" in received[0]
    assert "by relay.test (Postfix) with ESMTPSA" in received[1], received[1]
    assert f"[{A_IP}]" in received[1] and "using TLS" in received[1]
    assert "by mx.one.test (homemail) with ESMTPSA" in received[2]
    assert f"sasl_username={RELAY_USER}" in postfix.log()

    assert not via_postfix(direct)
    assert (
        received_fields(direct)[0].startswith("from mx.one.test")
        and f"[{A_IP}]" in received_fields(direct)[0]
    )
    # The signatures survive the relay.
    for m in (relayed, direct):
        assert sorted(verify_all_dkim(m, (knot.host, knot.port))) == ["ed25519-sha256", "rsa-sha256"]
    log = a.log()
    assert f"<bob@two.test> delivered via relay.test [{RELAY_IP}]" in log
    assert f"<carol@three.test> delivered via mx.two.test [{B_IP}]" in log


def test_after_failures_falls_back_to_the_relay(a: Homemail, b: Homemail) -> None:
    mark = marker()
    submit(a, ALICE, ["dave@four.test"], mark)
    (message,) = b.wait_message("dave@four.test", mark, timeout=30)
    assert via_postfix(message)
    queue_lines = [
        line
        for line in a.log().splitlines()
        if "<dave@four.test>" in line and "homemail.delivery.queue" in line
    ]
    assert len(queue_lines) == 3, queue_lines
    assert "deferred (attempt 1)" in queue_lines[0] and DEAD_IP in queue_lines[0]
    assert "deferred (attempt 2)" in queue_lines[1]
    assert f"delivered via relay.test [{RELAY_IP}]" in queue_lines[2]


def test_relay_5xx_gives_a_failure_report(a: Homemail, b: Homemail) -> None:
    mark = marker()
    submit(a, ALICE, [REFUSED, "bob@two.test"], mark)
    b.wait_message("bob@two.test", mark)
    (notice,) = wait_for(
        lambda: [
            m
            for m in a.with_marker(ALICE, f"<{mark}@client.test>")
            if parse(m).get_content_type() == "multipart/report"
        ],
        message="the failure report",
    )
    (r,) = parse_dsn(notice).recipients
    assert r["final-recipient"] == f"rfc822; {REFUSED}"
    assert (r["action"], r["status"]) == ("failed", "5.7.1")
    assert r["remote-mta"] == f"dns; relay.test [{RELAY_IP}]"
    assert "554 5.7.1" in r["diagnostic-code"] and "Refused by the relay (rule 9)" in r["diagnostic-code"]
    assert a.queued_with(mark) == []


def test_a_pooled_relay_connection_is_not_lent_to_another_relay(a: Homemail, b: Homemail) -> None:
    """ "untrusted" names the same host, port and user as "smarthost" but no CA: it must open (and fail) its own
    connection, not take the verified one "smarthost" left in the pool."""
    first, second = marker(), marker()
    submit(a, ALICE, ["bob@two.test"], first)
    b.wait_message("bob@two.test", first)
    submit(a, ALICE, ["someone@eight.test"], second)
    (row,) = wait_for(
        lambda: (rows := a.queued_with(second)) and rows[0]["attempts"] >= 1 and rows,
        message="a failed attempt",
    )
    assert "TLS with relay.test failed" in row["last_error"], row["last_error"]
    a.cli("queue", "delete", str(row["message_id"]))


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        ("five.test", "relay.test does not offer STARTTLS, which is required"),
        ("six.test", "relay.test does not offer AUTH, which is required"),
        ("eight.test", "TLS with relay.test failed"),
        # Last: Dovecot slows down every login from an address with failed ones.
        ("seven.test", "relay.test refused our login: 535"),
    ],
)
def test_relay_without_tls_or_auth_keeps_the_mail_queued(
    a: Homemail, b: Homemail, postfix: PostfixRelay, domain: str, reason: str
) -> None:
    mark = marker()
    submit(a, ALICE, [f"someone@{domain}"], mark)
    (row,) = wait_for(
        lambda: (rows := a.queued_with(mark)) and rows[0]["attempts"] >= 1 and rows,
        message="a failed attempt",
    )
    assert row["state"] == "queued"
    assert row["last_error"].startswith("451 4.4.1 ") and reason in row["last_error"], row["last_error"]
    listing = a.cli("queue", "list").stdout
    assert reason in listing
    # Nothing was handed over, and the sender is not told (yet): it is a temporary failure.
    assert mark not in postfix.log()
    assert not any(parse(m).get_content_type() == "multipart/report" for m in a.with_marker(ALICE, mark))
    a.cli("queue", "delete", str(row["message_id"]))
    if domain == "seven.test":
        # One mechanism per attempt: a refused PLAIN is not followed by LOGIN with the same password.
        failures = [line for line in postfix.log().splitlines() if "authentication failed" in line]
        assert failures and all("SASL PLAIN" in line for line in failures), failures
