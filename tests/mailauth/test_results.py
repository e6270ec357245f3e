"""Authentication-Results (homemail.mailauth.results) and the decisions of homemail.mailauth.checks and .arc that
need no network: forged-field removal, rendering that the authres package parses back, ARC vouching, the order
of refusals."""

from __future__ import annotations

import authres
import pytest

from homemail.mailauth import arc, checks, dmarc, results
from homemail.mailauth.dkimverify import DKIMResult
from homemail.mailauth.dmarc import Record

BODY = b"\r\nAuthentication-Results: mx.example.test; dkim=pass (this line is body text)\r\n"


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: mx.example.test; dkim=pass\r\n",
        b"Authentication-Results: MX.Example.Test; spf=pass\r\n",
        b'authentication-results: "mx.example.test"; none\r\n',
        b"Authentication-Results: (forged) mx.example.test 1;\r\n\tdmarc=pass header.from=x.test\r\n",
        b"Authentication-Results:mx.example.test;dkim=pass\r\n",
    ],
)
def test_forged_fields_with_our_id_removed(field: bytes) -> None:
    message = b"From: a@x.test\r\n" + field + b"Subject: s\r\n" + BODY
    cleaned, n = results.remove_ours(message, "mx.example.test")
    assert n == 1 and cleaned == b"From: a@x.test\r\nSubject: s\r\n" + BODY


def test_other_ids_and_the_body_are_kept() -> None:
    message = (
        b"Authentication-Results: mx.example.test.evil; dkim=pass\r\n"
        b"Authentication-Results: other.example; spf=pass\r\n"
        b"X-Authentication-Results: mx.example.test; dkim=pass\r\n"
        b"ARC-Authentication-Results: i=1; mx.example.test; dkim=pass\r\n"
        b"Subject: s\r\n" + BODY
    )
    assert results.remove_ours(message, "mx.example.test") == (message, 0)
    headerless = b"\r\nAuthentication-Results: mx.example.test; none\r\n"
    assert results.remove_ours(headerless, "mx.example.test") == (headerless, 0)


def test_parse_results_and_arc_results() -> None:
    server, found = results.parse(
        'i=2; lists.test (comment; with = signs);\r\n dkim=pass (good) header.d=a.test header.s="s1";'
        " spf=fail smtp.mailfrom=x@b.test; dmarc=pass header.from=a.test"
    )
    assert server == "lists.test"
    assert [(r.method, r.result, r.props) for r in found] == [
        ("dkim", "pass", {"header.d": "a.test", "header.s": "s1"}),
        ("spf", "fail", {"smtp.mailfrom": "x@b.test"}),
        ("dmarc", "pass", {"header.from": "a.test"}),
    ]
    assert results.authserv_id(" (c) Host.Example; none") == "host.example"


def test_rendered_field_parses_with_authres() -> None:
    entries = [
        results.Entry("iprev", "pass", "client.example", (("policy.iprev", "192.0.2.1"),)),
        results.Entry("spf", "pass", "ip4:192.0.2.0/24 matched", (("smtp.mailfrom", "a+b@x.test"),)),
        results.Entry(
            "dkim",
            "permerror",
            "RSA key too short (512 bits)",
            (("header.d", "x.test"), ("header.b", "Ab/+9=")),
        ),
        results.Entry("dmarc", "fail", "p=reject; odd ) paren", (("header.from", "x.test"),)),
        results.Entry("dkim", "none"),
    ]
    raw = results.header("mx.example.test", entries).decode()
    assert raw.endswith("\r\n") and all(len(line) < 998 for line in raw.split("\r\n"))
    parsed = authres.AuthenticationResultsHeader.parse(raw.rstrip("\r\n"))
    assert parsed.authserv_id == "mx.example.test"
    assert [(r.method, r.result) for r in parsed.results] == [
        ("iprev", "pass"),
        ("spf", "pass"),
        ("dkim", "permerror"),
        ("dmarc", "fail"),
        ("dkim", "none"),
    ]
    assert {p.name: p.value for p in parsed.results[2].properties} == {"d": "x.test", "b": "Ab/+9="}
    assert results.header("mx.example.test", []) == b"Authentication-Results: mx.example.test; none\r\n"


PASSED = arc.ARCResult("pass", 1, "lists.test", "i=1; lists.test; dkim=pass header.d=author.test; spf=none")


@pytest.mark.parametrize(
    ("chain", "sealers", "expected"),
    [
        (PASSED, ["lists.test"], True),
        (PASSED, ["test"], True),  # a subdomain of a trusted name
        (PASSED, ["other.test"], False),
        (arc.ARCResult("fail", 1, "lists.test", PASSED.aar), ["lists.test"], False),
        (
            arc.ARCResult("pass", 1, "lists.test", "i=1; lists.test; dkim=pass header.d=elsewhere.test"),
            ["lists.test"],
            False,
        ),
        (
            arc.ARCResult("pass", 1, "lists.test", "i=1; lists.test; dmarc=pass header.from=author.test"),
            ["lists.test"],
            True,
        ),
        (
            arc.ARCResult("pass", 1, "lists.test", "i=1; lists.test; dmarc=fail header.from=author.test"),
            ["lists.test"],
            False,
        ),
        (
            arc.ARCResult(
                "pass", 1, "lists.test", "i=1; lists.test; spf=pass smtp.mailfrom=b@mail.author.test"
            ),
            ["lists.test"],
            True,
        ),
    ],
)
def test_arc_vouches(chain: arc.ARCResult, sealers: list[str], expected: bool) -> None:
    assert arc.vouches(chain, sealers, "author.test") is expected


def _outcome(result: str, disposition: str = "none", open_: bool = False) -> dmarc.Outcome:
    record = Record("reject", "reject")
    return dmarc.Outcome(
        [
            dmarc.DMARCResult(
                result, "author.test", policy="reject", disposition=disposition, record=record, open=open_
            )
        ]
    )


NO_ARC = arc.ARCResult("none")


def test_decide_order() -> None:
    decide = checks._decide
    assert decide(_outcome("fail", "reject"), [], NO_ARC, [], {}) == (
        550,
        "5.7.1",
        "Message refused: it fails the DMARC policy of author.test (p=reject): no aligned SPF or DKIM pass",
    )
    # a trusted chain forgives, and says so
    overridden: dict[str, str] = {}
    assert decide(_outcome("fail", "reject"), [], PASSED, ["lists.test"], overridden) is None
    assert overridden == {"author.test": "lists.test"}
    # open outcome: 451 before anything else
    assert decide(_outcome("temperror", open_=True), [], NO_ARC, [], {})[:2] == (451, "4.7.5")
    # a trusted sealer's key unreachable while the policy would refuse: 451
    waiting = arc.ARCResult("temperror", 1, "lists.test", PASSED.aar, "key unavailable")
    assert decide(_outcome("fail", "quarantine"), [], waiting, ["lists.test"], {})[:2] == (451, "4.7.5")
    assert decide(_outcome("fail", "quarantine"), [], waiting, ["other.test"], {}) is None
    # a third-party signature whose key is unreachable: 451 unless DMARC passed anyway
    unrelated = [DKIMResult("temperror", domain="esp.test")]
    assert decide(_outcome("fail"), unrelated, NO_ARC, [], {})[:2] == (451, "4.7.5")
    assert decide(_outcome("pass"), unrelated, NO_ARC, [], {}) is None
    # but a definite reject is not postponed by it
    assert decide(_outcome("fail", "reject"), unrelated, NO_ARC, [], {})[0] == 550
