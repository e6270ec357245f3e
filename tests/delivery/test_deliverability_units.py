"""The deliverability pieces without servers: which refusals are about our address's reputation, which answers
are rate limits, residential-looking PTR names, the STUN and HTTP answer parsers, SPF rewriting for a new
address, the warm-up ramp and brakes (with a real SQLite store, across a reopen), and the doctor's plan."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import struct
from pathlib import Path

import pytest

from homemail.config import from_dict
from homemail.delivery.client import Reply
from homemail.delivery.reputation import about_reputation, is_rate_limit, refused_for_reputation
from homemail.delivery.routes import reputation_fallback
from homemail.delivery.warmup import Warmup, next_day, provider_of_host, provider_table
from homemail.doctor import checks, publicip
from homemail.doctor.dyndns import _spf_with
from homemail.store.sqlite import SQLiteStore

REPUTATION = [
    "5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org",
    "5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus PBL",
    "5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Our systems have detected that this IP is on "
    "our block list (S3150)",
    "5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list",
    "5.7.1 The IP you're using to send mail is not authorized to send email directly to our servers.",
    "5.7.25 The IP address sending this message does not have a PTR record setup",
    "Your IP has a poor reputation",
    "5.7.1 Mail from dynamic/residential IP ranges is not accepted",
]
NOT_REPUTATION = [
    "5.1.1 The email account that you tried to reach does not exist",
    "5.2.2 Mailbox full",
    "5.7.26 Unauthenticated email from example.com is not accepted due to its DMARC policy",
    "5.7.1 Relaying denied",
    "5.7.1 Message rejected: spam content detected (listed URL)",
    "5.7.0 SPF check failed",
]


@pytest.mark.parametrize("text", REPUTATION)
def test_reputation_refusals(text: str) -> None:
    assert about_reputation(text), text
    assert refused_for_reputation(Reply(554, text))
    assert not refused_for_reputation(Reply(451, text))  # temporary: the after_failures count decides


@pytest.mark.parametrize("text", NOT_REPUTATION)
def test_other_refusals(text: str) -> None:
    assert not about_reputation(text), text


def test_a_refused_session_counts_whatever_it_says() -> None:
    assert refused_for_reputation(Reply(451, "4.4.1 mx [192.0.2.1] said 554 go away", session_refused=True))


@pytest.mark.parametrize(
    ("reply", "limit"),
    [
        (Reply(421, "4.7.0 Try again later, closing connection"), True),
        (Reply(450, "4.7.28 Our system has detected an unusual rate of unsolicited mail"), True),
        (Reply(451, "4.7.500 Server busy. Please try again later (S77719)"), True),
        (Reply(452, "4.5.3 Too many recipients"), True),
        (Reply(451, "4.7.1 Greylisted: please try again in 300 seconds"), False),
        (Reply(451, "4.3.0 Temporary failure"), False),
        (Reply(550, "5.7.1 rate limited"), False),
        (Reply(250, "OK"), False),
    ],
)
def test_rate_limits(reply: Reply, limit: bool) -> None:
    assert is_rate_limit(reply) is limit


@pytest.mark.parametrize(
    ("name", "ip", "status"),
    [
        ("dsl-203-0-113-5.isp.example", "203.0.113.5", checks.FAIL),
        ("pool-71-1-2-3.nycmny.fios.verizon.net", "71.1.2.3", checks.FAIL),
        ("p5b0a1234.dip0.t-ipconnect.de", "91.10.18.52", checks.FAIL),
        ("cpe-1-2-3-4.socal.res.rr.com", "1.2.3.4", checks.FAIL),
        ("5.113.0.203.static.hosting.example", "203.0.113.5", checks.WARN),
        ("host203000113005.example", "203.0.113.5", checks.WARN),
        ("ec2-203-0-113-5.compute-1.amazonaws.com", "203.0.113.5", checks.WARN),
        ("2001-db8-0-0-0-0-0-1.v6.isp.example", "2001:db8::1", checks.WARN),
        ("mail.example.com", "203.0.113.5", None),
        ("mx1.poolside-hotel.example", "203.0.113.5", None),
    ],
)
def test_residential_names(name: str, ip: str, status: str | None) -> None:
    found = checks.residential_name(name, ip)
    assert (found[0] if found else None) == status, found


def test_stun_answers() -> None:
    transaction = os.urandom(12)
    request = publicip.stun_request(transaction)
    assert len(request) == 20 and request[:2] == b"\x00\x01" and request[8:] == transaction
    cookie = struct.pack("!I", publicip.STUN_MAGIC)
    # XOR-MAPPED-ADDRESS 198.51.100.7 port 4242 (RFC 5389 15.2), after an unknown attribute.
    raw = bytes(b ^ k for b, k in zip(bytes([198, 51, 100, 7]), cookie, strict=True))
    xport = struct.pack("!H", 4242 ^ 0x2112)
    attrs = struct.pack("!HH", 0x8022, 3) + b"abc\x00"
    attrs += struct.pack("!HH", 0x0020, 8) + b"\x00\x01" + xport + raw
    answer = struct.pack("!HHI", 0x0101, len(attrs), publicip.STUN_MAGIC) + transaction + attrs
    assert publicip.parse_stun_response(answer, transaction) == "198.51.100.7"
    assert publicip.parse_stun_response(answer, os.urandom(12)) is None
    # IPv6, XORed with the cookie and the transaction id.
    address = bytes.fromhex("20010db8000000000000000000000042")
    key = cookie + transaction
    attrs = (
        struct.pack("!HH", 0x0020, 20)
        + b"\x00\x02"
        + xport
        + bytes(a ^ b for a, b in zip(address, key, strict=True))
    )
    answer = struct.pack("!HHI", 0x0101, len(attrs), publicip.STUN_MAGIC) + transaction + attrs
    assert publicip.parse_stun_response(answer, transaction) == "2001:db8::42"
    # An RFC 3489 server's plain MAPPED-ADDRESS.
    attrs = struct.pack("!HH", 0x0001, 8) + b"\x00\x01\x10\x92" + bytes([192, 0, 2, 9])
    answer = struct.pack("!HHI", 0x0101, len(attrs), publicip.STUN_MAGIC) + transaction + attrs
    assert publicip.parse_stun_response(answer, transaction) == "192.0.2.9"


def test_http_answers() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n203.0.113.5\nextra"
    assert publicip._address_of(publicip._http_body(ok, "u").decode(), 4) == "203.0.113.5"
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n{"ip":"2001:db8\r\n5\r\n::5"}\r\n0\r\n\r\n'
    assert publicip._address_of(publicip._http_body(chunked, "u").decode(), 6) == "2001:db8::5"
    with pytest.raises(publicip.LookupFailed, match="HTTP 503"):
        publicip._http_body(b"HTTP/1.1 503 Busy\r\n\r\n", "u")
    with pytest.raises(publicip.LookupFailed, match="no IPv6"):
        publicip._address_of("203.0.113.5", 6)


def test_spf_rewrite() -> None:
    old = "v=spf1 mx ip4:192.0.2.1 ~ip4:192.0.2.1 ip4:198.51.100.0/24 ip6:2001:db8::1 -all"
    assert (
        _spf_with(old, ["192.0.2.1"], "203.0.113.9", 4)
        == "v=spf1 mx ip4:203.0.113.9 ~ip4:203.0.113.9 ip4:198.51.100.0/24 ip6:2001:db8::1 -all"
    )
    assert _spf_with("v=spf1 mx -all", ["192.0.2.1"], "203.0.113.9", 4) is None
    assert _spf_with(old, ["2001:db8::1"], "2001:db8::2", 6) == old.replace("2001:db8::1", "2001:db8::2")


def test_provider_table_and_fallback_route() -> None:
    config = from_dict(
        {
            "relay": [{"name": "r", "host": "relay.example", "username": "u", "password": "p"}],
            "route": [
                {"relay": "r", "domains": ["always.example"]},
                {"relay": "r", "domains": ["hybrid.example"], "after_failures": 2},
            ],
            "warmup": {"providers": {"google": ["*.google.test"], "apple": []}},
        }
    )
    table = provider_table(config)
    assert provider_of_host(table, "MX1.Google.Test.") == "google"
    assert provider_of_host(table, "gmail-smtp-in.l.google.com") is None  # replaced
    assert provider_of_host(table, "example-com.mail.protection.outlook.com") == "microsoft"
    assert provider_of_host(table, "mx01.mail.icloud.com") is None  # removed
    assert provider_of_host(table, "mx.example.org") is None
    assert reputation_fallback(config, "always.example") is None  # relayed from the start
    fallback = reputation_fallback(config, "sub.hybrid.example")
    assert fallback is not None and fallback[0].name == "r" and fallback[1] == 2
    assert reputation_fallback(config, "elsewhere.example") is None


def test_warmup_ramp_brakes_and_restart(tmp_path: Path) -> None:
    day0 = dt.datetime(2030, 5, 1, 12, tzinfo=dt.UTC).timestamp()
    config = from_dict(
        {
            "data_dir": str(tmp_path),
            "storage": {"fsync": False},
            "warmup": {"enabled": True, "start": "2030-05-01", "initial": 4, "growth": 2.0, "until": 30},
        }
    )

    async def run() -> None:
        store = SQLiteStore(tmp_path, fsync=False)
        await store.open()
        w = Warmup(config, store)
        a = await w.admit("google", 3, day0)
        assert a.granted == 3
        a = await w.admit("google", 3, day0 + 60)
        assert a.granted == 1 and a.until == next_day(day0) and "today's 4 messages to google" in a.reason
        await w.record("google", [(Reply(250, "ok"), "mx")] * 3 + [(Reply(451, "4.4.1 no host"), "")], day0)
        await store.close()

        # A restart keeps the day's count: the place given back by the unreached attempt is free again.
        store = SQLiteStore(tmp_path, fsync=False)
        await store.open()
        w = Warmup(config, store)
        assert (await w.admit("google", 5, day0 + 120)).granted == 1
        (google,) = [s for s in await w.status(day0 + 130) if s.provider == "google"]
        assert (google.cap, google.used, google.sent, google.health) == (4, 4, 3, "ok")

        # Day 2: twice the cap. A rate-limit answer brakes: nothing more today, half the cap.
        day1 = day0 + 86400
        assert (await w.admit("google", 20, day1)).granted == 8
        await w.record(
            "google", [(Reply(250, "ok"), "mx"), (Reply(421, "4.7.0 Try again later"), "mx")], day1
        )
        a = await w.admit("google", 1, day1 + 10)
        assert a.granted == 0 and "asked us to slow down" in a.reason and "421 4.7.0" in a.reason
        (google,) = [s for s in await w.status(day1 + 20) if s.provider == "google"]
        assert google.cap == 4 and google.throttled == 1 and google.health.startswith("braked")
        # Day 3 holds the braked cap; day 4 grows again; by day 6 the calendar says warmed up.
        day2 = day1 + 86400
        assert (await w.admit("google", 20, day2)).granted == 4
        (google,) = [s for s in await w.status(day2) if s.provider == "google"]
        assert google.health.startswith("held after a brake")
        assert (await w.admit("google", 20, day2 + 86400)).granted == 8
        assert (await w.admit("google", 100, day2 + 4 * 86400)).granted == 100
        (google,) = [s for s in await w.status(day2 + 4 * 86400) if s.provider == "google"]
        assert google.cap is None and google.health == "warmed up"

        # Too many deferrals and bounces in a day brake too.
        outcomes = [(Reply(250, "ok"), "mx")] * 6 + [(Reply(550, "5.1.1 no such user"), "mx")] * 4
        assert (await w.admit("microsoft", 10, day0)).granted == 4
        await w.record("microsoft", outcomes, day0)
        (ms,) = [s for s in await w.status(day0) if s.provider == "microsoft"]
        assert ms.health.startswith("braked: 4 of 10 attempts")
        await store.close()

    asyncio.run(run())


def test_plan_for_a_residential_address() -> None:
    config = from_dict({"hostname": "mx.example.test", "public": {"ipv4": "192.0.2.1"}})
    doctor = checks.Doctor(config, store=None)  # type: ignore[arg-type]
    doctor.addresses = {"ipv4": "192.0.2.1"}
    found = [
        checks.Check("residential-ipv4", "Residential", checks.FAIL, "in the PBL"),
        checks.Check("port25", "Port 25", checks.OK, "open"),
    ]
    plan = doctor._plan(found, ["example.test"])
    assert plan.kind == "relay-some"
    assert '[[route]]\nrelay = "smarthost"\ndomains = ["gmail.com"' in plan.config
    assert "after_failures = 3" in plan.config and "[[relay]]" in plan.config
    (spf,) = [d for d in plan.dns if "SPF" in d]
    assert "v=spf1 mx ip4:192.0.2.1 include:spf.relay.example -all" in spf
    # The same problems with every message relayed already: warnings, the plan in place.
    relayed = from_dict(
        {
            "hostname": "mx.example.test",
            "relay": [{"name": "up", "host": "relay.example", "username": "u", "password": "p"}],
            "route": [{"relay": "up"}],
        }
    )
    doctor = checks.Doctor(relayed, store=None)  # type: ignore[arg-type]
    found = [checks.Check("port25", "Port 25", checks.FAIL, "blocked")]
    doctor._mitigate(found)
    assert found[0].status == checks.WARN and "relay up" in found[0].detail
    plan = doctor._plan(found, [])
    assert plan.kind == "relay-all" and plan.in_place and plan.config == ""
