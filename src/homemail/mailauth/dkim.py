"""DKIM signing (RFC 6376) with RSA-SHA256 and Ed25519-SHA256 (RFC 8463), and the keys behind it.

dkimpy does the canonicalisation, header selection, folding and tag syntax; the public-key step is done here with
``cryptography``, because dkimpy's RSA is pure Python (several times slower) and its Ed25519 needs PyNaCl.

Rules:
- Canonicalisation is relaxed/relaxed: it survives the header refolding and trailing-space changes that relays make.
- Every signature covers the fields in :data:`SIGNED_FIELDS` that the message has, and "over-signs" the ones in
  :data:`OVERSIGNED_FIELDS` (names them once more than they occur), so a relay cannot add a second From: or
  Subject: without breaking the signature (RFC 6376 8.15).
- Private keys are PKCS#8 PEM in the store; the DNS record carries the public key: for RSA the DER
  SubjectPublicKeyInfo, for Ed25519 the raw 32 bytes (RFC 8463 4.2).
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
ALGORITHMS = (RSA, ED25519)
RSA_BITS = 2048

SIGNED_FIELDS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "in-reply-to",
    "references",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
OVERSIGNED_FIELDS = frozenset({"from", "subject", "date", "to", "cc", "reply-to", "message-id"})
_CANON = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def generate_key(algorithm: str) -> str:
    """A new private key as PKCS#8 PEM."""
    key: PrivateKey
    if algorithm == RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    elif algorithm == ED25519:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r}")
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


@functools.lru_cache(maxsize=256)
def load_key(pem: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError("a DKIM key must be RSA or Ed25519")
    return key


def algorithm_of(pem: str) -> str:
    return ED25519 if isinstance(load_key(pem), ed25519.Ed25519PrivateKey) else RSA


def public_key_data(pem: str) -> str:
    """The p= value of the DNS record."""
    public = load_key(pem).public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def dns_record(pem: str) -> str:
    """The TXT record to publish at ``<selector>._domainkey.<domain>``."""
    k = "ed25519" if algorithm_of(pem) == ED25519 else "rsa"
    return f"v=DKIM1; k={k}; p={public_key_data(pem)}"


def zone_line(selector: str, domain: str, pem: str) -> str:
    """The record as a zone-file line; long values are split into strings of at most 255 characters."""
    record = dns_record(pem)
    strings = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    return f"{selector}._domainkey.{domain}. IN TXT ( {strings} )"


@dataclass(frozen=True, slots=True)
class SigningKey:
    domain: str
    selector: str
    private_key: str  # PKCS#8 PEM


def _split(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    headers, body = dkim.rfc822_parse(message)
    return [(bytes(name), bytes(value)) for name, value in headers], body


def _field_list(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    counts: dict[bytes, int] = {}
    for raw_name, _ in headers:
        lower = raw_name.lower()
        counts[lower] = counts.get(lower, 0) + 1
    out: list[bytes] = []
    for field in SIGNED_FIELDS:
        key = field.encode("ascii")
        n = counts.get(key, 0) + (1 if field in OVERSIGNED_FIELDS else 0)
        out += [key] * n
    return out


def sign(message: bytes, keys: Sequence[SigningKey], now: float | None = None) -> bytes:
    """DKIM-Signature header fields (CRLF-terminated, folded) for ``message``, one per key, to be prepended.

    ``message`` has CRLF line endings. The body hash is computed once per message.
    """
    if not keys:
        return b""
    headers, body = _split(message)
    if not any(name.lower() == b"from" for name, _ in headers):
        raise ValueError("a message without a From: field cannot be DKIM-signed")
    fields = _field_list(headers)
    canonical_headers = _CANON.canonicalize_headers(headers)
    body_hash = base64.b64encode(hashes_sha256(_CANON.canonicalize_body(body)))
    timestamp = str(int(now if now is not None else time.time())).encode("ascii")
    out = []
    for key in keys:
        private = load_key(key.private_key)
        algorithm = ED25519 if isinstance(private, ed25519.Ed25519PrivateKey) else RSA
        tags = [
            (b"v", b"1"),
            (b"a", algorithm.encode("ascii")),
            (b"c", b"relaxed/relaxed"),
            (b"d", key.domain.encode("idna")),
            (b"s", key.selector.encode("ascii")),
            (b"t", timestamp),
            (b"h", b":".join(fields)),
            (b"bh", body_hash),
        ]
        # b= goes last, on a line of its own, and starts empty: the signature covers the field with an empty
        # b= (RFC 6376 3.7).
        value = (
            dkim.fold(b"; ".join(b"=".join(t) for t in tags), namelen=len(b"DKIM-Signature")) + b";\r\n\tb="
        )
        sig_field = (b"DKIM-Signature", b" " + value)
        digest = _header_digest(canonical_headers, fields, sig_field)
        if isinstance(private, ed25519.Ed25519PrivateKey):
            signature = private.sign(digest)  # RFC 8463 3: Ed25519 over the SHA-256 hash
        else:
            signature = private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        b64 = base64.b64encode(signature)
        # Fold b= into lines of 72 so no receiver needs to refold it.
        folded = b"\r\n\t ".join(b64[i : i + 70] for i in range(0, len(b64), 70))
        out.append(b"DKIM-Signature:" + sig_field[1] + folded + b"\r\n")
    return b"".join(out)


def hashes_sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def _header_digest(
    canonical_headers: list[tuple[bytes, bytes]], fields: list[bytes], sig_field: tuple[bytes, bytes]
) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    for name, value in dkim.select_headers(canonical_headers, fields):
        h.update(name + b":" + value)
    # The signature field itself, canonicalised, without its trailing CRLF (RFC 6376 3.7).
    ((name, value),) = _CANON.canonicalize_headers([sig_field])
    h.update(name + b":" + value.rstrip(b"\r\n"))
    return h.finalize()
