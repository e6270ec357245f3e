"""DMARC (homemail.mailauth.dmarc): organisational domains, alignment, record parsing, policy discovery over knot,
and the evaluation (pass/fail/none/temperror, p/sp/pct)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from auth_helpers import resolver_for

from dnsserver import KnotServer
from homemail.mailauth import dmarc
from homemail.mailauth.dkimverify import DKIMResult
from homemail.mailauth.dmarc import Discovery, Record


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("a.b.example.com", "example.com"),
        ("mail.example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),  # a public suffix is its own
        ("x.y.sender.test", "sender.test"),  # unknown TLDs: the default rule "*"
        ("Mail.Example.COM.", "example.com"),
        ("foo.bar.blogspot.com", "bar.blogspot.com"),  # the private section of the list counts
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert dmarc.organizational_domain(domain) == org


@pytest.mark.parametrize(
    ("a", "b", "mode", "expected"),
    [
        ("example.com", "example.com", "s", True),
        ("mail.example.com", "example.com", "r", True),
        ("mail.example.com", "example.com", "s", False),
        ("a.example.com", "b.example.com", "r", True),
        ("example.com", "example.net", "r", False),
        ("a.example.co.uk", "b.example.co.uk", "r", True),
        ("example1.co.uk", "example2.co.uk", "r", False),  # different registrations under one public suffix
    ],
)
def test_alignment(a: str, b: str, mode: str, expected: bool) -> None:
    assert dmarc.aligned(a, b, mode) is expected


def test_parse_record() -> None:
    r = dmarc.parse_record("v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=s; pct=50; rua=mailto:a@b.test")
    assert r == Record("reject", "quarantine", "s", "s", 50, r.text if r else "")
    r = dmarc.parse_record("v=DMARC1;p=quarantine")
    assert r is not None and (r.p, r.sp, r.adkim, r.aspf, r.pct) == (
        "quarantine",
        "quarantine",
        "r",
        "r",
        100,
    )
    # bad optional values fall back to their defaults; unknown tags are ignored
    r = dmarc.parse_record("v=DMARC1; p=none; adkim=x; pct=lots; future=1")
    assert r is not None and (r.adkim, r.pct) == ("r", 100)
    assert dmarc.parse_record("v=DMARC1; p=reject; pct=250") == Record(
        "reject", "reject", pct=100, text="v=DMARC1; p=reject; pct=250"
    )
    # not DMARC, or no valid p= without rua: no policy; with a rua: p=none (RFC 7489 6.6.3 step 6)
    assert dmarc.parse_record("v=spf1 -all") is None
    assert dmarc.parse_record("p=reject; v=DMARC1") is None
    assert dmarc.parse_record("v=DMARC1; p=block") is None
    r = dmarc.parse_record("v=DMARC1; p=block; rua=mailto:reports@x.test")
    assert r is not None and (r.p, r.sp) == ("none", "none")
    assert dmarc.parse_record("v=DMARC1; p=reject; sp=bogus") is None


def test_author_domains() -> None:
    assert dmarc.author_domains(["Alice <alice@Example.COM>"]) == ["example.com"]
    assert dmarc.author_domains(["a@x.test, b@y.test", "c@x.test"]) == ["x.test", "y.test"]
    assert dmarc.author_domains([]) == []
    assert dmarc.author_domains(["undisclosed-recipients:;"]) == []
    assert dmarc.author_domains(["Jörg <j@bücher.test>"]) == ["xn--bcher-kva.test"]


def sig(domain: str, result: str = "pass") -> DKIMResult:
    return DKIMResult(result, domain=domain, selector="s")


REJECT = Discovery(Record("reject", "reject"), "example.com")
STRICT = Discovery(Record("reject", "reject", adkim="s", aspf="s"), "example.com")


def test_evaluate_pass_by_dkim_or_spf() -> None:
    r = dmarc.evaluate("example.com", REJECT, [sig("other.test"), sig("mail.example.com")], None, None)
    assert (r.result, r.dkim_domain, r.policy, r.disposition) == (
        "pass",
        "mail.example.com",
        "reject",
        "none",
    )
    r = dmarc.evaluate("example.com", REJECT, [sig("example.com", "fail")], "pass", "bounces.example.com")
    assert (r.result, r.spf_domain) == ("pass", "bounces.example.com")
    # strict alignment wants the very domain
    r = dmarc.evaluate("example.com", STRICT, [sig("mail.example.com")], "pass", "bounces.example.com")
    assert (r.result, r.disposition) == ("fail", "reject")
    r = dmarc.evaluate("example.com", STRICT, [sig("example.com")], None, None)
    assert r.result == "pass"


def test_evaluate_fail_applies_policy() -> None:
    for result in ("fail", "permerror", "neutral", "none"):
        r = dmarc.evaluate("example.com", REJECT, [sig("example.com", result)], "softfail", "example.com")
        assert (r.result, r.disposition) == ("fail", "reject")
    # a pass for a domain that does not align counts for nothing
    r = dmarc.evaluate("example.com", REJECT, [sig("example.net")], "pass", "example.net")
    assert (r.result, r.disposition) == ("fail", "reject")


def test_evaluate_subdomain_policy() -> None:
    found_at_org = Discovery(Record("none", "reject"), "example.com")
    assert dmarc.evaluate("mail.example.com", found_at_org, [], None, None).disposition == "reject"
    assert dmarc.evaluate("example.com", found_at_org, [], None, None).disposition == "none"


def test_evaluate_pct_samples() -> None:
    sampled = Discovery(Record("reject", "reject", pct=30), "example.com")
    r = dmarc.evaluate("example.com", sampled, [], None, None, sample=lambda: 0.29)
    assert (r.disposition, r.sampled_out) == ("reject", False)
    r = dmarc.evaluate("example.com", sampled, [], None, None, sample=lambda: 0.30)
    assert (r.result, r.disposition, r.sampled_out) == ("fail", "quarantine", True)  # one step softer
    quarantine = Discovery(Record("quarantine", "quarantine", pct=0), "example.com")
    r = dmarc.evaluate("example.com", quarantine, [], None, None, sample=lambda: 0.0)
    assert (r.disposition, r.sampled_out) == ("none", True)
    assert "pct=0" in r.comment and "sampled_out" in r.comment


def test_evaluate_no_record_and_temperror() -> None:
    r = dmarc.evaluate("example.com", Discovery(None), [], None, None)
    assert (r.result, r.disposition, r.open) == ("none", "none", False)
    # the policy lookup failed: open, unless a strictly aligned pass settles it under any policy
    r = dmarc.evaluate("example.com", Discovery(None, error="timeout"), [sig("mail.example.com")], None, None)
    assert (r.result, r.open) == ("temperror", True)
    r = dmarc.evaluate("example.com", Discovery(None, error="timeout"), [sig("example.com")], None, None)
    assert (r.result, r.open) == ("temperror", False)
    # an aligned signature whose key could not be fetched leaves the outcome open; an unaligned one does not
    r = dmarc.evaluate("example.com", REJECT, [sig("example.com", "temperror")], None, None)
    assert (r.result, r.open) == ("temperror", True)
    r = dmarc.evaluate("example.com", REJECT, [sig("other.test", "temperror")], None, None)
    assert (r.result, r.open) == ("fail", False)
    r = dmarc.evaluate("example.com", REJECT, [], "temperror", "example.com")
    assert (r.result, r.open) == ("temperror", True)


def test_outcome_strictest_wins() -> None:
    out = dmarc.Outcome(
        [
            dmarc.DMARCResult("fail", "a.test", disposition="quarantine"),
            dmarc.DMARCResult("fail", "b.test", disposition="reject"),
            dmarc.DMARCResult("pass", "c.test"),
        ]
    )
    assert out.disposition == "reject" and not out.passed
    assert dmarc.Outcome([dmarc.DMARCResult("pass", "c.test")]).passed
    assert not dmarc.Outcome([]).passed


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    zones = {
        "policy.test": [
            '_dmarc TXT "v=DMARC1; p=reject; sp=quarantine"',
            '_dmarc.own TXT "v=DMARC1; p=none"',
            '_dmarc.twice TXT "v=DMARC1; p=reject"',
            '_dmarc.twice TXT "v=DMARC1; p=none"',
            '_dmarc.other TXT "some verification token"',
            '_dmarc.other TXT "v=DMARC1; p=quarantine; pct=20"',
            '_dmarc.split TXT "v=DMARC1; " "p=none"',  # strings of one record are joined
        ],
        "nothing.test": ['@ TXT "v=spf1 -all"'],
        "_dmarc.broken.test": ["@ TXT ( unterminated"],
        "broken.test": ['@ TXT "v=spf1 -all"'],
    }
    with KnotServer(zones) as server:
        yield server


def discover(knot: KnotServer, domain: str) -> Discovery:
    return asyncio.run(dmarc.discover(resolver_for(knot.nameserver), domain))


def test_discover_at_the_domain_and_its_org(knot: KnotServer) -> None:
    d = discover(knot, "policy.test")
    assert d.domain == "policy.test" and d.record is not None and d.record.p == "reject"
    d = discover(knot, "deep.sub.policy.test")  # NXDOMAIN below: the organisational domain's record
    assert d.domain == "policy.test" and d.record is not None and d.record.sp == "quarantine"
    d = discover(knot, "own.policy.test")  # a subdomain with its own record
    assert d.domain == "own.policy.test" and d.record is not None and d.record.p == "none"
    d = discover(knot, "other.policy.test")  # non-DMARC TXT records are ignored
    assert d.record is not None and (d.record.p, d.record.pct) == ("quarantine", 20)
    d = discover(knot, "split.policy.test")
    assert d.record is not None and d.record.p == "none"


def test_discover_several_records_means_none(knot: KnotServer) -> None:
    assert discover(knot, "twice.policy.test") == Discovery(None)


def test_discover_nothing(knot: KnotServer) -> None:
    assert discover(knot, "nothing.test") == Discovery(None)
    assert discover(knot, "www.nothing.test") == Discovery(None)


def test_discover_dns_failure(knot: KnotServer) -> None:
    d = discover(knot, "broken.test")
    assert d.record is None and d.error


def test_check_end_to_end(knot: KnotServer) -> None:
    resolver = resolver_for(knot.nameserver)
    out = asyncio.run(
        dmarc.check(
            resolver, ["policy.test", "sub.policy.test", "nothing.test"], [sig("policy.test")], None, None
        )
    )
    assert [(r.from_domain, r.result, r.disposition) for r in out.results] == [
        ("policy.test", "pass", "none"),
        ("sub.policy.test", "pass", "none"),
        ("nothing.test", "none", "none"),
    ]
    out = asyncio.run(dmarc.check(resolver, ["sub.policy.test"], [], "pass", "elsewhere.test"))
    assert [(r.result, r.policy, r.disposition) for r in out.results] == [
        ("fail", "quarantine", "quarantine")
    ]
