"""DKIM signing: signatures made with ``cryptography`` verify with dkimpy, for RSA-2048 and Ed25519 (RFC 8463)."""

from __future__ import annotations

import base64

import dkim
import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key

from homemail.mailauth import dkim as dk

MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi  there\r\n  folded\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello  \r\nworld\r\n\r\n\r\n"
)


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {"rsa1": dk.generate_key(dk.RSA), "ed1": dk.generate_key(dk.ED25519)}


def _dns(keys: dict[str, str]):  # type: ignore[no-untyped-def]
    def lookup(name: bytes, timeout: float = 5) -> bytes:
        selector = name.split(b".")[0].decode()
        assert name == f"{selector}._domainkey.example.org.".encode()
        return dk.dns_record(keys[selector]).encode()

    return lookup


def _sign(keys: dict[str, str], message: bytes = MESSAGE) -> bytes:
    return dk.sign(message, [dk.SigningKey("example.org", s, pem) for s, pem in keys.items()]) + message


def test_both_signatures_verify_with_dkimpy(keys: dict[str, str]) -> None:
    signed = _sign(keys)
    assert signed.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in signed and b"a=ed25519-sha256" in signed
    verifier = dkim.DKIM(signed)
    assert [verifier.verify(idx=i, dnsfunc=_dns(keys)) for i in range(2)] == [True, True]


def test_relaxed_canonicalisation_survives_refolding(keys: dict[str, str]) -> None:
    signed = _sign(keys).replace(b"Subject: hi  there\r\n  folded", b"Subject: hi there folded")
    signed = signed.replace(b"Hello  \r\n", b"Hello\r\n")
    verifier = dkim.DKIM(signed)
    assert [verifier.verify(idx=i, dnsfunc=_dns(keys)) for i in range(2)] == [True, True]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.replace(b"world", b"w0rld"),  # body
        lambda m: m.replace(b"To: bob@example.net", b"To: eve@example.net"),  # signed field
        lambda m: m.replace(b"\r\n\r\nHello", b"\r\nFrom: eve@evil.example\r\n\r\nHello"),  # added From:
        lambda m: m.replace(b"\r\n\r\nHello", b"\r\nSubject: other\r\n\r\nHello"),  # added Subject:
    ],
)
def test_changes_break_every_signature(keys: dict[str, str], tamper) -> None:  # type: ignore[no-untyped-def]
    verifier = dkim.DKIM(tamper(_sign(keys)))
    for i in range(2):
        try:
            ok = verifier.verify(idx=i, dnsfunc=_dns(keys))
        except dkim.ValidationError:
            ok = False
        assert ok is False


def test_signed_fields_and_tags(keys: dict[str, str]) -> None:
    header = dk.sign(MESSAGE, [dk.SigningKey("example.org", "rsa1", keys["rsa1"])], now=1700000000)
    unfolded = header.replace(b"\r\n\t", b"").replace(b"\r\n ", b" ").replace(b" ", b"")
    assert b"c=relaxed/relaxed;d=example.org;s=rsa1;t=1700000000;" in unfolded
    # present fields once each, over-signed ones once more; absent over-signed fields named once
    h = unfolded.split(b"h=")[1].split(b";")[0].split(b":")
    assert h.count(b"from") == 2 and h.count(b"subject") == 2 and h.count(b"message-id") == 2
    assert h.count(b"reply-to") == 1 and b"content-type" not in h
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))


def test_dns_records(keys: dict[str, str]) -> None:
    rsa_record = dk.dns_record(keys["rsa1"])
    assert rsa_record.startswith("v=DKIM1; k=rsa; p=")
    public = load_der_public_key(base64.b64decode(rsa_record.split("p=")[1]))
    assert public.key_size == 2048  # type: ignore[union-attr]
    ed_record = dk.dns_record(keys["ed1"])
    assert ed_record.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed_record.split("p=")[1])) == 32


def test_message_without_from_is_refused(keys: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        dk.sign(b"Subject: x\r\n\r\nbody\r\n", [dk.SigningKey("example.org", "rsa1", keys["rsa1"])])
