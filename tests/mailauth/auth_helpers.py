"""Shared pieces of the mail authentication tests: DKIM keys and their DNS records, signing with dkimpy (also
with tags dkimpy's signer does not offer, such as x=), zone lines for knot, a resolver pointed at knot."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import parse_pem_private_key

from homemail.config import DNSConfig, Endpoint
from homemail.dns import Resolver

# RSA keys under 1024 bits cannot be made with `cryptography`; this one came from `openssl genrsa 512`.
RSA_512 = b"""-----BEGIN RSA PRIVATE KEY-----
MIIBOwIBAAJBAK462LrzF2WocIwl/vsfR3vBtn6u3d1rxEach8c9gCx2247YFFOY
n08jOOcQuI1SR1d6XSC+djzA8tMFGf38FKkCAwEAAQJBAJA3J4R/iSNdbGOlY8yr
lHjs3Ek6J22LMXkdQgp6bqjeD2FrhccKCoiXf3bsmJB6a4KD6R9NCnjY1S+k++RZ
pU0CIQDcrk8CY+mviUic569YOG2ucHBg+ILgwj6WL9dYZsUjTwIhAModWzottnhs
JbqGF9SnWc/Lx3hfrprdF0eEVpffLKqHAiBRO2ih/J08nFA6UZ5d3weguorjZxbm
HRpktl+SjuHqSQIgMILPTK2AKHM8swJQYfgw9FEi9V9x1zXNypqW9ijY3a0CIQCq
SpQ5fffH4Mp+OiKY/2B5pQtM/OVSGUE+LOGtg2YKNg==
-----END RSA PRIVATE KEY-----
"""


@dataclass(frozen=True)
class Key:
    """A DKIM key: ``private`` as dkimpy's signer takes it, ``record`` the TXT value for DNS."""

    kind: str  # "rsa" or "ed25519"
    private: bytes
    record: str

    @property
    def algorithm(self) -> bytes:
        return b"ed25519-sha256" if self.kind == "ed25519" else b"rsa-sha256"


def rsa_key(bits: int = 2048, pem: bytes | None = None) -> Key:
    if pem is None:
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    loaded = serialization.load_pem_private_key(pem, None)
    public = loaded.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key("rsa", pem, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")


def ed25519_key() -> Key:
    private = ed25519.Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Key(
        "ed25519", base64.b64encode(seed), f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    )


def txt(name: str, text: str) -> str:
    """A zone line for a TXT record of any length (strings of at most 255 characters)."""
    strings = " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))
    return f"{name} TXT {strings}"


def sign(message: bytes, selector: str, domain: str, key: Key, length: bool = False) -> bytes:
    """``message`` with a DKIM-Signature by dkimpy on top (relaxed/relaxed)."""
    field = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key.private,
        signature_algorithm=key.algorithm,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        length=length,
    )
    return field + message


def sign_tags(
    message: bytes,
    selector: str,
    domain: str,
    key: Key,
    headers: Sequence[bytes] = (b"from", b"to", b"subject"),
    algorithm: bytes = b"rsa-sha256",
    **extra: str,
) -> bytes:
    """An RSA signature with chosen tags (``t``, ``x``, ``i``...; a value of "" leaves the tag out), made with
    dkimpy's own header hashing, for the cases its signer refuses to make."""
    assert key.kind == "rsa"
    verifier = dkim.DKIM(message, signature_algorithm=algorithm)
    canon = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    body = canon.canonicalize_body(verifier.body)
    hasher = hashlib.sha1 if algorithm == b"rsa-sha1" else hashlib.sha256
    verifier.hasher = hasher
    tags = {
        "v": "1",
        "a": algorithm.decode(),
        "c": "relaxed/relaxed",
        "d": domain,
        "s": selector,
        "t": str(int(time.time())),
        "h": ":".join(h.decode() for h in headers),
        "bh": base64.b64encode(hasher(body).digest()).decode(),
    }
    tags.update(extra)
    fields = [(k.encode(), v.encode()) for k, v in tags.items() if v] + [(b"b", b"")]
    value = verifier.gen_header(
        fields, list(headers), canon, b"DKIM-Signature", parse_pem_private_key(key.private)
    )
    return b"DKIM-Signature: " + value + message


def resolver_for(nameserver: str) -> Resolver:
    return Resolver(DNSConfig(nameservers=[Endpoint.parse(nameserver, default_port=53)], timeout=3.0))
