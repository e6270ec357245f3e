"""Dynamic IP: knot takes RFC 2136 updates signed with its TSIG key; an HTTP echo service plays the "what is my
address" service and the test changes its answer. The worker (every half second) moves the host name's A record
and the SPF record that names the old address, and the postmaster finds a notice in their INBOX; then, with the
server stopped, ``homemail dyndns update`` does the same once (``--dry-run`` first), and a wrong key is refused.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from deliverability_helpers import EchoServer
from delivery_helpers import Homemail, loopback_block, parse, wait_for

from dnsserver import TSIG_NAME, KnotServer
from harness import to_toml

NET = loopback_block()
HM_IP, NEW_IP, THIRD_IP, ECHO_IP = NET + "60", NET + "61", NET + "62", NET + "50"
DOMAIN, HOST = "dyn.test", "mx.dyn.test"
POSTMASTER = f"postmaster@{DOMAIN}"
ZONES = {
    DOMAIN: [
        "@ MX 10 mx",
        f"mx A {HM_IP}",
        f'@ TXT "v=spf1 mx ip4:{HM_IP} ip4:192.0.2.0/24 -all"',
        '@ TXT "site-verification=abc"',
    ]
}


def spf(knot: KnotServer) -> list[str]:
    return [t for t in knot.query(DOMAIN, "TXT") if "v=spf1" in t]


@pytest.fixture(scope="module")
def world(knot: KnotServer) -> Iterator[tuple[Homemail, EchoServer]]:
    echo = EchoServer(ECHO_IP, HM_IP).start()
    server = Homemail(
        HM_IP,
        HOST,
        knot.nameserver,
        listeners=("smtp",),
        config={
            "public_ip": {"url": echo.url, "ipv6": False, "timeout": "3s"},
            "dyndns": {
                "enabled": True,
                "interval": "0.5s",
                "zone": DOMAIN,
                "server": knot.nameserver,
                "tsig_name": TSIG_NAME,
                "tsig_secret": knot.tsig_secret,
                "ttl": 120,
            },
        },
    )
    server.provision([POSTMASTER])
    server.start()
    try:
        yield server, echo
    finally:
        server.stop()
        echo.stop()


def test_the_worker_follows_a_new_address(knot: KnotServer, world: tuple[Homemail, EchoServer]) -> None:
    server, echo = world
    wait_for(lambda: echo.requests >= 2, message="two rounds of the worker")
    assert knot.query(HOST, "A") == [HM_IP]  # unchanged: nothing to do
    assert server.messages(POSTMASTER) == []

    echo.answer = NEW_IP
    wait_for(lambda: knot.query(HOST, "A") == [NEW_IP], message="the new A record")
    assert spf(knot) == [f'"v=spf1 mx ip4:{NEW_IP} ip4:192.0.2.0/24 -all"']
    assert '"site-verification=abc"' in knot.query(DOMAIN, "TXT")  # other TXT records stay
    (notice,) = wait_for(lambda: server.messages(POSTMASTER), message="the postmaster's notice")
    msg = parse(notice)
    assert msg["Subject"] == f"Public address of {HOST} changed to {NEW_IP}"
    body = msg.get_content()
    assert f"A: {HM_IP} -> {NEW_IP}" in body and f"ask the provider of {NEW_IP}" in body
    assert f'{DOMAIN} TXT "v=spf1 mx ip4:{HM_IP} ip4:192.0.2.0/24 -all" -> "v=spf1 mx ip4:{NEW_IP}' in body
    # Later rounds see DNS up to date: one notice only.
    seen = echo.requests
    wait_for(lambda: echo.requests >= seen + 2, message="two more rounds")
    assert len(server.messages(POSTMASTER)) == 1


def test_one_update_from_the_command_line(knot: KnotServer, world: tuple[Homemail, EchoServer]) -> None:
    server, echo = world
    server.stop()
    wait_for(lambda: knot.query(HOST, "A") == [NEW_IP], message="the first test's address")
    echo.answer = THIRD_IP

    dry = server.cli("dyndns", "update", "--dry-run").stdout
    assert f"would update: {HOST} A {NEW_IP} -> {THIRD_IP}" in dry
    assert knot.query(HOST, "A") == [NEW_IP]

    bad = copy.deepcopy(server.config)
    bad["dyndns"]["tsig_secret"] = "d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCB3cm9uZyE="
    bad_path = server.root / "bad-key.toml"
    bad_path.write_text(to_toml(bad))
    refused = server.cli("--config", str(bad_path), "dyndns", "update", check=False)
    assert refused.returncode == 1 and "refused the update" in refused.stderr, refused.stderr
    assert knot.query(HOST, "A") == [NEW_IP]

    done = server.cli("dyndns", "update").stdout
    assert f"updated: {HOST} A {NEW_IP} -> {THIRD_IP}" in done and f"notice sent to {POSTMASTER}" in done
    assert knot.query(HOST, "A") == [THIRD_IP]
    assert spf(knot) == [f'"v=spf1 mx ip4:{THIRD_IP} ip4:192.0.2.0/24 -all"']
    assert len(server.messages(POSTMASTER)) == 2
    assert "DNS is up to date" in server.cli("dyndns", "update").stdout
