"""Hybrid routing on policy refusals: a domain with a ``[[route]]`` that has ``after_failures`` goes through the
relay at once when its MX refuses us for our address's reputation (554 5.7.1 "... blocked using Spamhaus PBL", or
a 5xx greeting), instead of bouncing; other refusals (no such user) and domains without such a route bounce as
before.

Homemail A (NET.20) sends; the relay (aiosmtpd, STARTTLS and AUTH required) is on NET.22; pbl.test's MX (NET.30)
and plain.test's MX (NET.31) refuse with the PBL text, greet.test's MX (NET.32) refuses every session at the
greeting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deliverability_helpers import RefusingServer, SmartRelay, start_relay
from delivery_helpers import Homemail, Remote, loopback_block, marker, parse, parse_dsn, submit, wait_for

from dnsserver import KnotServer

NET = loopback_block()
A_IP, RELAY_IP, PBL_IP, PLAIN_IP, GREET_IP = (NET + n for n in ("20", "22", "30", "31", "32"))
ZONES = {
    "one.test": ["@ MX 10 mx", f"mx A {A_IP}"],
    "pbl.test": ["@ MX 10 mx", f"mx A {PBL_IP}"],
    "plain.test": ["@ MX 10 mx", f"mx A {PLAIN_IP}"],
    "greet.test": ["@ MX 10 mx", f"mx A {GREET_IP}"],
    "relay.test": [f"@ A {RELAY_IP}"],
}
ALICE = "alice@one.test"
PBL_REFUSAL = (
    f"554 5.7.1 Service unavailable; Client host [{A_IP}] blocked using Spamhaus PBL; see spamhaus.org"
)


def refuse(address: str) -> str:
    if address.startswith("nobody@"):
        return "550 5.1.1 <nobody>: Recipient address rejected: User unknown"
    return PBL_REFUSAL


class World:
    def __init__(
        self, a: Homemail, relay: SmartRelay, pbl: Remote, plain: Remote, greet: RefusingServer
    ) -> None:
        self.a, self.relay, self.pbl, self.plain, self.greet = a, relay, pbl, plain, greet


@pytest.fixture(scope="module")
def world(knot: KnotServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work: Path = tmp_path_factory.mktemp("reputation")
    relay, relay_table = start_relay(RELAY_IP, work)
    pbl = Remote(PBL_IP, rcpt_reply=refuse).start()
    plain = Remote(PLAIN_IP, rcpt_reply=refuse).start()
    greet = RefusingServer(
        GREET_IP, "554 5.7.1 mx.greet.test: your IP address is listed at Spamhaus PBL"
    ).start()
    a = Homemail(
        A_IP,
        "mx.one.test",
        knot.nameserver,
        config={
            "relay": [relay_table],
            "route": [{"relay": "smart", "domains": ["pbl.test", "greet.test"], "after_failures": 3}],
        },
    )
    a.provision([ALICE])
    a.start()
    try:
        yield World(a, relay, pbl, plain, greet)
    finally:
        a.stop()
        greet.stop()
        plain.stop()
        pbl.stop()
        relay.stop()


def test_a_reputation_refusal_goes_through_the_relay_at_once(world: World) -> None:
    mark = marker()
    submit(world.a, ALICE, ["carol@pbl.test"], mark)
    (relayed,) = wait_for(lambda: world.relay.with_marker(mark), message="the message at the relay")
    assert relayed.recipients == ["carol@pbl.test"]
    assert world.pbl.attempts["carol@pbl.test"] == 1  # one direct try, not after_failures = 3
    log = world.a.log()
    assert "<carol@pbl.test> refused for our address's reputation" in log and "through relay smart now" in log
    assert f"<carol@pbl.test> delivered via relay.test [{RELAY_IP}]" in log
    assert world.a.queued_with(mark) == []
    assert world.a.with_marker(ALICE, mark) == []  # no report to the sender


def test_a_refused_session_goes_through_the_relay(world: World) -> None:
    before = world.greet.connections
    mark = marker()
    submit(world.a, ALICE, ["dave@greet.test"], mark)
    wait_for(lambda: world.relay.with_marker(mark), message="the message at the relay")
    assert world.greet.connections == before + 1


def test_other_refusals_still_bounce(world: World) -> None:
    """No such user at a routed domain, and the PBL refusal at a domain without a route: failure reports."""
    mark = marker()
    submit(world.a, ALICE, ["nobody@pbl.test", "erin@plain.test"], mark)
    notices = wait_for(
        lambda: (
            (
                found := [
                    m
                    for m in world.a.with_marker(ALICE, mark)
                    if parse(m).get_content_type() == "multipart/report"
                ]
            )
            and len(found) == 2
            and found
        ),
        message="the failure reports (one per destination)",
    )
    by_rcpt = {r["final-recipient"]: r for n in notices for r in parse_dsn(n).recipients}
    assert set(by_rcpt) == {"rfc822; nobody@pbl.test", "rfc822; erin@plain.test"}
    assert by_rcpt["rfc822; nobody@pbl.test"]["status"] == "5.1.1"
    assert by_rcpt["rfc822; erin@plain.test"]["status"] == "5.7.1"
    assert "blocked using Spamhaus PBL" in by_rcpt["rfc822; erin@plain.test"]["diagnostic-code"]
    assert world.relay.with_marker(mark) == []
