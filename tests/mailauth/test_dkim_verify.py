"""DKIM verification (homemail.mailauth.dkimverify) of messages signed with dkimpy, keys served by knot.

Each signature is judged alone: RSA and Ed25519, l=, x=, short keys, missing/revoked/unreachable keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from auth_helpers import RSA_512, ed25519_key, resolver_for, rsa_key, sign, sign_tags, txt

from dnsserver import KnotServer
from homemail.config import Config
from homemail.mailauth import checks, dkimverify
from homemail.mailauth import dkim as homemail_dkim
from homemail.mailauth.dkimverify import DKIMResult

MESSAGE = (
    b"From: Alice <alice@signer.test>\r\nTo: bob@example.org\r\nSubject: hello  there\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@signer.test>\r\n\r\nHello\r\nworld\r\n"
)
KEYS = {"rsa": rsa_key(), "ed": ed25519_key(), "short": rsa_key(pem=RSA_512)}
HOMEMAIL_RSA = homemail_dkim.generate_key(homemail_dkim.RSA)


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    ed = KEYS["ed"]
    records = [
        txt("rsa._domainkey", KEYS["rsa"].record),
        txt("ed._domainkey", ed.record),
        txt("short._domainkey", KEYS["short"].record),
        txt("revoked._domainkey", "v=DKIM1; k=rsa; p="),
        txt("wrongtype._domainkey", ed.record),  # an Ed25519 key for RSA signatures
        txt("testing._domainkey", KEYS["rsa"].record + "; t=y"),
        txt("strict._domainkey", KEYS["rsa"].record + "; t=s"),
        txt("sha1only._domainkey", KEYS["rsa"].record + "; h=sha1"),
        txt("garbage._domainkey", "v=DKIM1; k=rsa; p=!!notbase64!!"),
        txt("hm._domainkey", homemail_dkim.dns_record(HOMEMAIL_RSA)),
    ]
    server = KnotServer(
        {
            "signer.test": records,
            # a zone knot cannot load: every name in it is SERVFAIL
            "_domainkey.broken.test": ["@ TXT ( unterminated"],
            "broken.test": ['@ TXT "v=spf1 -all"'],
        }
    )
    with server:
        yield server


def verify(knot: KnotServer, message: bytes) -> list[DKIMResult]:
    return asyncio.run(dkimverify.verify(message, resolver_for(knot.nameserver)))


def only(knot: KnotServer, message: bytes) -> DKIMResult:
    (result,) = verify(knot, message)
    return result


def test_unsigned_message_has_no_results(knot: KnotServer) -> None:
    assert verify(knot, MESSAGE) == []


@pytest.mark.parametrize("selector", ["rsa", "ed"])
def test_dkimpy_signatures_pass(knot: KnotServer, selector: str) -> None:
    r = only(knot, sign(MESSAGE, selector, "signer.test", KEYS[selector]))
    assert (r.result, r.domain, r.selector) == ("pass", "signer.test", selector)
    assert r.algorithm == ("ed25519-sha256" if selector == "ed" else "rsa-sha256")
    assert r.key_bits == (256 if selector == "ed" else 2048)


def test_several_signatures_each_judged(knot: KnotServer) -> None:
    signed = sign(sign(MESSAGE, "rsa", "signer.test", KEYS["rsa"]), "ed", "signer.test", KEYS["ed"])
    # homemail's own signer (relaxed, over-signed fields) on top, and one by a domain without the key
    signed = (
        homemail_dkim.sign(signed, [homemail_dkim.SigningKey("signer.test", "hm", HOMEMAIL_RSA)]) + signed
    )
    signed = sign(signed, "nokey", "signer.test", KEYS["rsa"])
    results = verify(knot, signed)
    assert [(r.selector, r.result) for r in results] == [
        ("nokey", "permerror"),
        ("hm", "pass"),
        ("ed", "pass"),
        ("rsa", "pass"),
    ]
    assert results[0].reason == "no key for signature"


def test_relaxed_canonicalisation_survives_refolding(knot: KnotServer) -> None:
    signed = sign(MESSAGE, "rsa", "signer.test", KEYS["rsa"])
    refolded = signed.replace(b"Subject: hello  there", b"Subject: hello\r\n there").replace(
        b"world", b"world  "
    )
    assert only(knot, refolded).result == "pass"


@pytest.mark.parametrize("selector", ["rsa", "ed"])
def test_changed_body_fails(knot: KnotServer, selector: str) -> None:
    signed = sign(MESSAGE, selector, "signer.test", KEYS[selector]).replace(b"world", b"w0rld")
    r = only(knot, signed)
    assert (r.result, r.reason) == ("fail", "body hash did not verify")


@pytest.mark.parametrize("selector", ["rsa", "ed"])
def test_changed_signed_header_fails(knot: KnotServer, selector: str) -> None:
    signed = sign(MESSAGE, selector, "signer.test", KEYS[selector]).replace(
        b"bob@example.org", b"eve@example.org"
    )
    r = only(knot, signed)
    assert r.result == "fail" and r.reason.startswith("signature did not verify")


def test_added_from_field_fails(knot: KnotServer) -> None:
    signed = sign(MESSAGE, "rsa", "signer.test", KEYS["rsa"])
    forged = signed.replace(b"\r\n\r\nHello", b"\r\nFrom: mallory@evil.test\r\n\r\nHello")
    assert only(knot, forged).result == "fail"


def test_body_length_tag(knot: KnotServer) -> None:
    signed = sign(MESSAGE, "rsa", "signer.test", KEYS["rsa"], length=True)
    assert b"l=" in signed.split(b"\r\n\r\n")[0]
    assert only(knot, signed).result == "pass"
    # A mailing list footer after the signed part: still a pass, with the unsigned octets noted.
    footer = signed + b"--\r\nlist footer\r\n"
    r = only(knot, footer)
    assert r.result == "pass" and "17 body octets not signed" in r.reason
    # The signed part changed: fail. The body cut short of l=: permerror.
    assert only(knot, footer.replace(b"Hello", b"Howdy")).result == "fail"
    r = only(knot, signed.replace(b"Hello\r\nworld\r\n", b"Hello\r\n"))
    assert (r.result, r.reason) == ("permerror", "l= is longer than the body")


def test_expired_signature(knot: KnotServer) -> None:
    now = int(time.time())
    expired = sign_tags(MESSAGE, "rsa", "signer.test", KEYS["rsa"], t=str(now - 7200), x=str(now - 3600))
    r = only(knot, expired)
    assert (r.result, r.reason) == ("permerror", "signature expired")
    valid = sign_tags(MESSAGE, "rsa", "signer.test", KEYS["rsa"], t=str(now - 7200), x=str(now + 3600))
    assert only(knot, valid).result == "pass"
    future = sign_tags(MESSAGE, "rsa", "signer.test", KEYS["rsa"], t=str(now + 86400))
    assert only(knot, future).result == "permerror"


def test_short_rsa_key_refused(knot: KnotServer) -> None:
    signed = sign(MESSAGE, "short", "signer.test", KEYS["short"])
    r = only(knot, signed)
    assert (r.result, r.reason) == ("permerror", "RSA key too short (512 bits)")


@pytest.mark.parametrize(
    ("selector", "reason"),
    [
        ("revoked", "key revoked"),
        ("wrongtype", "inappropriate key algorithm"),
        ("sha1only", "inappropriate hash algorithm"),
        ("garbage", "key syntax error"),
    ],
)
def test_unusable_key_records(knot: KnotServer, selector: str, reason: str) -> None:
    r = only(knot, sign(MESSAGE, selector, "signer.test", KEYS["rsa"]))
    assert (r.result, r.reason) == ("permerror", reason)


def test_key_in_test_mode_failing_is_neutral(knot: KnotServer) -> None:
    signed = sign(MESSAGE, "testing", "signer.test", KEYS["rsa"])
    assert only(knot, signed).result == "pass"
    r = only(knot, signed.replace(b"world", b"w0rld"))
    assert r.result == "neutral" and r.testing


def test_strict_key_refuses_subdomain_identity(knot: KnotServer) -> None:
    ok = sign_tags(MESSAGE, "strict", "signer.test", KEYS["rsa"], i="alice@signer.test")
    assert only(knot, ok).result == "pass"
    sub = sign_tags(MESSAGE, "strict", "signer.test", KEYS["rsa"], i="alice@sub.signer.test")
    assert only(knot, sub).result == "permerror"


@pytest.mark.parametrize(
    ("tags", "headers", "reason"),
    [
        ({"i": "alice@elsewhere.test"}, (b"from", b"to"), "i= is not in the d= domain"),
        ({}, (b"to", b"subject"), "From field not signed"),
        ({"v": "2"}, (b"from",), "incompatible version"),
        ({"a": "rsa-sha1"}, (b"from",), "rsa-sha1 is not accepted (RFC 8301)"),
    ],
)
def test_bad_signature_fields(
    knot: KnotServer, tags: dict[str, str], headers: tuple[bytes, ...], reason: str
) -> None:
    algorithm = tags.get("a", "rsa-sha256").encode()
    signed = sign_tags(
        MESSAGE, "rsa", "signer.test", KEYS["rsa"], headers=headers, algorithm=algorithm, **tags
    )
    r = only(knot, signed)
    assert (r.result, r.reason) == ("permerror", reason)


def test_missing_tags_and_garbage(knot: KnotServer) -> None:
    no_bh = MESSAGE.replace(
        b"From:", b"DKIM-Signature: v=1; a=rsa-sha256; d=signer.test; s=rsa; h=from; b=AAAA\r\nFrom:"
    )
    assert only(knot, no_bh).result == "permerror"
    garbage = MESSAGE.replace(b"From:", b"DKIM-Signature: this is not a tag list\r\nFrom:")
    assert only(knot, garbage).result == "permerror"


def test_key_lookup_failure_is_temperror(knot: KnotServer) -> None:
    signed = sign(MESSAGE, "sel", "broken.test", KEYS["rsa"])
    r = only(knot, signed)
    assert r.result == "temperror" and r.domain == "broken.test"


def test_signature_count_is_limited(knot: KnotServer) -> None:
    signed = MESSAGE
    for _ in range(dkimverify.MAX_SIGNATURES + 3):
        signed = sign(signed, "ed", "signer.test", KEYS["ed"])
    results = verify(knot, signed)
    assert len(results) == dkimverify.MAX_SIGNATURES and all(r.result == "pass" for r in results)


def test_big_message_verified_in_a_thread(knot: KnotServer) -> None:
    big = MESSAGE + b"".join(b"line %d of a long body\r\n" % i for i in range(20000))
    assert len(big) > dkimverify.INLINE_LIMIT
    signed = sign(big, "ed", "signer.test", KEYS["ed"])
    assert only(knot, signed).result == "pass"
    assert only(knot, signed + b"more\r\n").result == "fail"


def test_header_b_is_unique_prefix() -> None:
    a = DKIMResult("pass", b="ABCDEFGHIJKLmnop")
    b = DKIMResult("pass", b="ABCDEFGHxyz12345")
    c = DKIMResult("pass", b="zzzzzzzzzzzz")
    assert dkimverify.header_b(a, [a, b, c]) == "ABCDEFGHIJKL"
    assert dkimverify.header_b(c, [a, b, c]) == "zzzzzzzz"


MALFORMED = [
    b"DKIM-Signature: v=1; a=rsa-sha256; d=\xff\xfe; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=" + b"x" * 64 + b".test; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=signer.test; s=rsa; h=from; bh=AAAA; b=AAAA; l=99999999999999999999\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; c=bogus; d=signer.test; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=signer.test; s=rsa; h=from; bh=!!; b=!!\r\n",
    b"DKIM-Signature: ;;;===\r\n",
    # an ARC set dkimpy cannot even index ("i=1 ;"), one without its other fields, absurd instance numbers
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=signer.test; s=rsa; b=AAAA\r\n"
    b"ARC-Message-Signature: i=1 ; a=rsa-sha256; d=signer.test; s=rsa; h=from; bh=AAAA; b=AAAA\r\n"
    b"ARC-Authentication-Results: i=1; signer.test; none\r\n",
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=signer.test; s=rsa; b=AAAA\r\n",
    b"ARC-Seal: i=99999999999999999999999; d=x\r\n",
    b"From: someone@" + b"y" * 70 + b".test\r\n",
]


@pytest.mark.parametrize("fields", MALFORMED)
def test_malformed_fields_are_results_not_crashes(knot: KnotServer, fields: bytes) -> None:
    context = checks.Context(peer_ip="192.0.2.1", sender="a@signer.test")
    verdict = asyncio.run(
        checks.assess(fields + MESSAGE, context, Config(hostname="mx.test"), resolver_for(knot.nameserver))
    )
    # never a DNS question about a name DNS cannot hold (that would be a temporary error: 451 for ever)
    assert verdict.refusal is None, verdict.refusal
    assert "pass" not in verdict.summary.replace("dmarc=none", "")
