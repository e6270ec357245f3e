"""``homemail doctor`` against live peers: knot serves the domain's records (as ``homemail dns`` printed them), the
reverse zone, blocklist zones and a domain blocklist; an HTTP echo service says which address the world sees; an
aiosmtpd stands for the big provider's MX of the port 25 test; the homemail under test serves its MX (STARTTLS with
a test CA's certificate) and MTA-STS over HTTPS.

The echo's answer moves the server between three addresses: a clean one with its own PTR (deliver directly), a
residential one (PBL, dynamic PTR: relay for the strict providers), a blocklisted one with port 25 closed (relay
everything). A second configuration points the host name at the aiosmtpd, an open relay without TLS, with a mail
domain on the domain blocklist.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deliverability_helpers import EchoServer, reverse_zone
from delivery_helpers import Homemail, Remote, loopback_block

from dnsserver import KnotServer
from harness import issue_certificate, to_toml

NET = loopback_block()
MX_IP, HOME_IP, LISTED_IP, PROBE_IP, ECHO_IP, CLOSED_IP = (
    NET + n for n in ("30", "31", "32", "40", "50", "41")
)
_, B, C = NET.rstrip(".").split(".")[:3]
DOMAIN, HOST, SPAMMY = "doc.test", "mx.doc.test", "spammy.test"
DYN_NAME = f"31-{C}-{B}-127.dyn.isp.test"
HOME_V6, DYN_V6_NAME = "2001:db8::31", "dyn-2001-db8--31.cable.isp.test"
V6_NIBBLES = ".".join(reversed(ipaddress.IPv6Address(HOME_V6).exploded.replace(":", "")))
ZONES: dict[str, list[str]] = {
    DOMAIN: [],  # what 'homemail dns' prints, filled in before knot starts
    reverse_zone(NET): [f"30 PTR {HOST}.", f"31 PTR {DYN_NAME}.", "32 PTR mail.listed.test."],
    "isp.test": [f"31-{C}-{B}-127.dyn A {HOME_IP}", f"dyn-2001-db8--31.cable AAAA {HOME_V6}"],
    "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa": [f"{V6_NIBBLES[:31]} PTR {DYN_V6_NAME}."],
    "echo.test": [f"@ A {ECHO_IP}", "@ AAAA ::1"],  # the echo service over both IP versions
    "listed.test": [f"mail A {LISTED_IP}"],
    "probe.test": [f"mx A {PROBE_IP}", f"closed A {CLOSED_IP}"],
    "zen.test": [f"31.{C}.{B}.127 A 127.0.0.11", f"32.{C}.{B}.127 A 127.0.0.4", f"{V6_NIBBLES} A 127.0.0.10"],
    "bl.test": [f"32.{C}.{B}.127 A 127.0.0.2", f'32.{C}.{B}.127 TXT "Listed for spam traps, see bl.test"'],
    "dbl.test": [f"{SPAMMY} A 127.0.1.2", "doc.test.blocked A 127.0.1.255"],
}


class World:
    def __init__(
        self, server: Homemail, echo: EchoServer, echo6: EchoServer | None, knot: KnotServer
    ) -> None:
        self.server, self.echo, self.echo6, self.knot = server, echo, echo6, knot

    def doctor(self, *args: str, config: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """``homemail doctor ARGS --json`` (with another configuration file when ``config`` is given)."""
        path = self.server.config_path
        if config is not None:
            path = self.server.root / "other.toml"
            path.write_text(to_toml(config))
        result = subprocess.run(
            [sys.executable, "-m", "homemail", "--config", str(path), "doctor", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode in (0, 1), result.stderr
        return result.returncode, json.loads(result.stdout)


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["checks"]}


def check(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    (found,) = [c for c in report["checks"] if c["id"] == check_id]
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work: Path = tmp_path_factory.mktemp("doctor")
    _, ca_file, cert_file, key_file = issue_certificate(work, HOST, f"mta-sts.{DOMAIN}")

    echo = EchoServer(ECHO_IP, MX_IP).start()
    try:  # the same service over IPv6, where the machine has ::1
        echo6: EchoServer | None = EchoServer("::1", HOME_V6, port=echo.port).start()
    except OSError:
        echo6 = None
    probe = Remote(PROBE_IP).start()
    knot = KnotServer(ZONES)
    server = Homemail(
        MX_IP,
        HOST,
        knot.nameserver,
        listeners=("smtp", "submission", "https"),
        config={
            "tls": {"cert": cert_file, "key": key_file},
            "public": {"ipv4": MX_IP},
            "public_ip": {"url": echo.url, "ipv6": False, "timeout": "3s"},
            "doctor": {
                "dnsbl": ["zen.test", "bl.test"],
                "pbl": "zen.test",
                "dbl": ["dbl.test"],
                "port25_probe": "mx.probe.test:25",
                "timeout": "3s",
            },
            "delivery": {
                "mta_sts_port": 0,  # replaced below: the https port is known only now
                "mta_sts_cafile": ca_file,
                "tls_cafile": ca_file,
            },
        },
    )
    server.config["delivery"]["mta_sts_port"] = server.port("https")
    server.config_path.write_text(to_toml(server.config))
    server.provision(
        [f"postmaster@{DOMAIN}", f"dmarc-reports@{DOMAIN}", f"tls-reports@{DOMAIN}"], domains=[SPAMMY]
    )
    try:
        server.cli("dkim", "keygen", DOMAIN)
        knot.zones[DOMAIN] = server.cli("dns", DOMAIN, "--zone").stdout.splitlines()
        knot.start()
        server.start()
        yield World(server, echo, echo6, knot)
    finally:
        server.stop()
        knot.stop()
        probe.stop()
        echo.stop()
        if echo6 is not None:
            echo6.stop()


def test_clean_address_delivers_directly(world: World) -> None:
    world.echo.answer = MX_IP
    code, report = world.doctor(DOMAIN)
    got = statuses(report)
    assert code == 0, [c for c in report["checks"] if c["status"] != "ok"]
    assert report["failed"] is False and report["addresses"]["ipv4"] == MX_IP
    expected_ok = [
        "public-ipv4",
        "ptr-ipv4",
        "fcrdns-ipv4",
        "residential-ipv4",
        "dnsbl-ipv4",
        "dbl",
        "port25",
        "address-ipv4",
        f"mx:{DOMAIN}",
        f"spf:{DOMAIN}",
        f"dkim:{DOMAIN}",
        f"dmarc:{DOMAIN}",
        f"mta-sts:{DOMAIN}",
        f"tls-rpt:{DOMAIN}",
        "tls",
        "open-relay",
    ]
    assert {k: got.get(k) for k in expected_ok} == dict.fromkeys(expected_ok, "ok")
    assert got["public-ipv6"] == "skip"
    assert check(report, "ptr-ipv4")["detail"] == f"{MX_IP} -> {HOST}"
    assert "names mx.doc.test, mta-sts.doc.test" in check(report, "tls")["detail"]
    assert "refuses to relay" in check(report, "open-relay")["detail"]
    assert "greets: 220" in check(report, "port25")["detail"]
    verdict = report["verdict"]
    assert verdict["kind"] == "direct" and verdict["dns"] == []
    assert "[warmup]\nenabled = true" in verdict["config"]  # the optional ramp for a new address

    text = world.server.cli("doctor", DOMAIN).stdout
    assert "Verdict: deliver directly." in text and "OK    Open relay" in text


def test_residential_address_relays_to_the_strict_providers(world: World) -> None:
    world.echo.answer = HOME_IP
    config = copy.deepcopy(world.server.config)
    if world.echo6 is not None:  # look for the IPv6 address too, asking echo.test over both versions
        config["public_ip"].update(url=f"http://echo.test:{world.echo.port}/", ipv6=True)
    code, report = world.doctor(DOMAIN, config=config)
    got = statuses(report)
    assert code == 1 and report["failed"] is True
    public = check(report, "public-ipv4")
    assert (
        public["status"] == "fail"
        and f"the world sees {HOME_IP}, but [public] ipv4 says {MX_IP}" in public["detail"]
    )
    residential = check(report, "residential-ipv4")
    assert (
        residential["status"] == "fail" and "Spamhaus PBL (127.0.0.11 from zen.test)" in residential["detail"]
    )
    assert got["dnsbl-ipv4"] == "ok"  # the PBL answer is not a spam listing
    ptr = check(report, "ptr-ipv4")
    assert (
        ptr["status"] == "warn"
        and DYN_NAME in ptr["detail"]
        and f"set its reverse DNS (PTR) to {HOST}" in ptr["fix"]
    )
    assert got["fcrdns-ipv4"] == "warn"  # confirmed, but not our name
    assert got["address-ipv4"] == "fail" and got[f"spf:{DOMAIN}"] == "fail"  # both name MX_IP
    verdict = report["verdict"]
    assert verdict["kind"] == "relay-some"
    assert any("Spamhaus PBL" in r for r in verdict["reasons"])
    config = verdict["config"]
    assert '[[route]]\nrelay = "smarthost"\ndomains = ["gmail.com", "googlemail.com", "outlook.com"' in config
    assert 'relay = "smarthost"\nafter_failures = 3' in config and "[[relay]]" in config
    # The public address the world sees, and the one mail leaves from ([delivery] source_ipv4).
    ip6 = f" ip6:{HOME_V6}" if world.echo6 is not None else ""
    spf = f'{DOMAIN}. TXT "v=spf1 mx ip4:{HOME_IP} ip4:{MX_IP}{ip6} include:spf.relay.example -all"'
    assert f"{spf}  (SPF: replaces the current one)" in verdict["dns"]
    assert f"{HOST}. A {HOME_IP} (or turn on [dyndns])" in verdict["dns"]
    assert any(d.startswith(f"Ask your provider (whoever gave you {HOME_IP})") for d in verdict["dns"])

    if world.echo6 is None:
        return
    # IPv6: the same checks for the address the echo service saw over IPv6.
    assert check(report, "public-ipv6") == {
        "id": "public-ipv6",
        "title": "Public IPv6",
        "status": "ok",
        "detail": f"{HOME_V6} (from http://echo.test:{world.echo.port}/)",
        "fix": "",
    }
    residential6 = check(report, "residential-ipv6")
    assert (
        residential6["status"] == "fail"
        and "Spamhaus PBL (127.0.0.10 from zen.test)" in residential6["detail"]
    )
    assert DYN_V6_NAME in check(report, "ptr-ipv6")["detail"] and got["fcrdns-ipv6"] == "warn"
    assert got["dnsbl-ipv6"] == "ok"
    assert check(report, "address-ipv6")["detail"] == f"{HOST} -> nothing, not the public address {HOME_V6}"
    assert f"{HOST}. AAAA {HOME_V6}" in verdict["dns"]


def test_listed_address_without_port_25_relays_everything(world: World) -> None:
    world.echo.answer = LISTED_IP
    config = copy.deepcopy(world.server.config)
    config["public"] = {"ipv4": LISTED_IP}
    config["delivery"].pop("source_ipv4")
    config["doctor"]["port25_probe"] = "closed.probe.test:25"  # nothing listens there
    code, report = world.doctor(DOMAIN, config=config)
    assert code == 1
    port25 = check(report, "port25")
    assert port25["status"] == "fail" and "probably blocks outgoing port 25" in port25["detail"]
    listed = check(report, "dnsbl-ipv4")
    assert listed["status"] == "fail"
    assert "zen.test (127.0.0.4)" in listed["detail"]
    assert "bl.test (127.0.0.2: Listed for spam traps, see bl.test)" in listed["detail"]
    verdict = report["verdict"]
    assert verdict["kind"] == "relay-all"
    assert verdict["config"].endswith('[[route]]\nrelay = "smarthost"\n')
    assert (
        f'{DOMAIN}. TXT "v=spf1 include:spf.relay.example -all"  (SPF: replaces the current one)'
        in verdict["dns"]
    )

    # With that plan applied (a relay for everything), the same problems hold no mail back: warnings.
    config["relay"] = [
        {
            "name": "up",
            "host": "relay.example",
            "username": "u",
            "password": "p",
            "spf_include": "spf.up.test",
        }
    ]
    config["route"] = [{"relay": "up"}]
    code, report = world.doctor(DOMAIN, config=config)
    assert check(report, "port25")["status"] == "warn" and check(report, "dnsbl-ipv4")["status"] == "warn"
    assert report["verdict"]["kind"] == "relay-all" and report["verdict"]["in_place"] is True
    assert "no include:spf.up.test for the relay" in check(report, f"spf:{DOMAIN}")["detail"]


def test_open_relay_and_domain_blocklist(world: World) -> None:
    """The host name points at the aiosmtpd: it takes mail for anywhere and offers no STARTTLS."""
    world.echo.answer = MX_IP
    config = copy.deepcopy(world.server.config)
    config["public"]["hostname"] = "mx.probe.test"
    code, report = world.doctor(SPAMMY, config=config)
    assert code == 1
    relay = check(report, "open-relay")
    assert relay["status"] == "fail" and "accepted mail for elsewhere" in relay["detail"]
    assert check(report, "tls")["status"] == "fail" and "offers no STARTTLS" in check(report, "tls")["detail"]
    dbl = check(report, "dbl")
    assert dbl["status"] == "fail" and f"{SPAMMY} on dbl.test (127.0.1.2)" in dbl["detail"]
    # knot does not serve spammy.test: it refuses, which is no answer (not "no such domain").
    mx = check(report, f"mx:{SPAMMY}")
    assert mx["status"] == "warn" and "lookup failed" in mx["detail"]


def test_public_address_by_stun(world: World) -> None:
    """A STUN server (RFC 5389) on UDP answers a Binding request with the address it saw; ours answers a fixed
    one, so the test knows what to expect."""
    from homemail.config import from_dict
    from homemail.dns import Resolver
    from homemail.doctor import publicip

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ECHO_IP, 0))
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                data, peer = sock.recvfrom(2048)
            except OSError:
                return
            seen.append(data)
            if len(seen) == 1:
                continue  # the first request is "lost": the client must send it again
            transaction = data[8:20]
            cookie = struct.pack("!I", publicip.STUN_MAGIC)
            raw = bytes(a ^ b for a, b in zip(socket.inet_aton(HOME_IP), cookie, strict=True))
            attr = struct.pack("!HH", 0x0020, 8) + b"\x00\x01" + struct.pack("!H", peer[1] ^ 0x2112) + raw
            sock.sendto(
                struct.pack("!HHI", 0x0101, len(attr), publicip.STUN_MAGIC) + transaction + attr, peer
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        config = from_dict(
            {"public_ip": {"source": "stun", "stun": f"{ECHO_IP}:{sock.getsockname()[1]}", "timeout": "5s"}}
        )
        found = asyncio.run(publicip.detect(config, Resolver(config.dns)))
    finally:
        sock.close()
    assert found.ipv4 == HOME_IP and found.source.startswith("stun:")
    assert len(seen) == 2 and seen[0][:2] == b"\x00\x01"
    assert "ipv6" in found.errors  # no IPv6 address for the STUN server's IPv4 literal
