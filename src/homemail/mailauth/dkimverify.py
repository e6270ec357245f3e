"""DKIM verification (RFC 6376, RFC 8463 Ed25519, RFC 8301 algorithm and key-size rules) of received mail.

Every DKIM-Signature field gets its own :class:`DKIMResult` (RFC 6376 4.2: signatures are independent). The key
records are fetched first, concurrently, through the shared resolver (:mod:`homemail.dns`); then dkimpy does the
canonicalisation and the cryptography in a worker thread with those answers (its ``dnsfunc`` only reads them).

Rules (section numbers are RFC 6376 unless another RFC is named):
- At most :data:`MAX_SIGNATURES` signatures are looked at (6.1: verifiers may limit them against denial of
  service); the rest are ignored.
- Results are those of RFC 8601 2.7.1: ``pass``; ``fail`` when the body hash or the signature does not verify
  (6.1.3); ``temperror`` when the key lookup gets no answer (6.1.2: TEMPFAIL, key unavailable); ``permerror`` for
  every other PERMFAIL: a syntax error or missing tag, ``v=`` not 1, an ``i=`` outside ``d=``, ``h=`` without
  From (6.1.1), an expired ``x=`` (6.1.1, no slack beyond :data:`CLOCK_SLACK`), a ``t=`` far in the future, no
  key record, a key record that does not parse or was revoked (empty ``p=``), a key of the wrong type for
  ``a=`` or whose ``h=`` excludes the hash (6.1.2), with ``t=s`` an ``i=`` in a subdomain (3.6.1), rsa-sha1
  (RFC 8301 3.1) and RSA keys under 1024 bits (RFC 8301 3.2); ``neutral`` when a key in test mode (``t=y``) does
  not verify, since such a signature must count as no signature (3.6.1).
- ``l=`` (3.5) is honoured: the signature covers only that much of the canonical body, and the result notes how
  many octets were left unsigned; an ``l=`` longer than the body is a ``permerror``.
- Only the first TXT record at the key name is used (6.1.2 allows any choice among several).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from homemail.dns import NotFound, Resolver, TemporaryError
from homemail.mailauth import results

MAX_SIGNATURES = 8
MIN_RSA_BITS = 1024  # RFC 8301 3.2
CLOCK_SLACK = 300  # seconds of disagreement between the signer's clock and ours that t= and x= are allowed
ACCEPTED_ALGORITHMS = {b"rsa-sha256": b"rsa", b"ed25519-sha256": b"ed25519"}
# Messages up to this size are verified on the event loop; bigger ones in a worker thread.
INLINE_LIMIT = 256 * 1024

_LABELS = re.compile(rb"[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")


def dns_name_ok(name: bytes | str) -> bool:
    """Whether ``name`` can be asked about at all: LDH (and _) labels of 1-63 octets, 253 in all."""
    raw = name.encode("ascii", "replace") if isinstance(name, str) else name
    return len(raw.rstrip(b".")) <= 253 and _LABELS.fullmatch(raw) is not None


_quiet = logging.getLogger("homemail.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
_quiet.setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class DKIMResult:
    """The outcome of one DKIM-Signature field."""

    result: str  # pass, fail, neutral, temperror, permerror (RFC 8601 2.7.1)
    domain: str = ""  # d= (lower-case), "" when the field could not be parsed
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    identity: str = ""  # i= (default "@" + d=)
    b: str = ""  # the signature's b= value, whitespace removed (header.b is a prefix of it, RFC 6008)
    reason: str = ""  # why, for logs and the Authentication-Results comment
    key_bits: int = 0
    testing: bool = False  # the key record has t=y

    @property
    def ok(self) -> bool:
        return self.result == "pass"


class _Invalid(Exception):
    """A PERMFAIL found before any cryptography: (result, reason)."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


def _text(value: bytes) -> str:
    return re.sub(rb"\s+", b"", value).decode("ascii", "replace")


def _check_signature(tags: dict[bytes, bytes], now: float) -> None:
    """The checks of 6.1.1 (and RFC 8301 3.1) that need neither DNS nor the body."""
    for tag in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s"):
        if tag not in tags:
            raise _Invalid("permerror", f"signature missing required tag {tag.decode()}=")
    if tags[b"v"] != b"1":
        raise _Invalid("permerror", "incompatible version")
    algorithm = tags[b"a"].lower()
    if algorithm == b"rsa-sha1":
        raise _Invalid("permerror", "rsa-sha1 is not accepted (RFC 8301)")
    if algorithm not in ACCEPTED_ALGORITHMS:
        raise _Invalid("permerror", f"unknown algorithm {algorithm.decode('ascii', 'replace')}")
    if not re.fullmatch(rb"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", tags[b"s"]):
        raise _Invalid("permerror", "s= is not a selector")
    domain = tags[b"d"].lower()
    if not dns_name_ok(domain) or not dns_name_ok(key_name(tags)):
        raise _Invalid("permerror", "d= is not a domain name")
    identity = tags.get(b"i")
    if identity is not None:
        i_domain = identity.rpartition(b"@")[2].lower().rstrip(b".")
        if b"@" not in identity or not (
            i_domain == domain.rstrip(b".") or i_domain.endswith(b"." + domain.rstrip(b"."))
        ):
            raise _Invalid("permerror", "i= is not in the d= domain")
    signed = [h.strip().lower() for h in tags[b"h"].split(b":")]
    if b"from" not in signed:
        raise _Invalid("permerror", "From field not signed")
    if b"l" in tags and not re.fullmatch(rb"\d{1,76}", tags[b"l"]):
        raise _Invalid("permerror", "l= is not a number")
    try:
        CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        raise _Invalid("permerror", "unknown canonicalization") from None
    signed_at: int | None = None
    if b"t" in tags:
        if not re.fullmatch(rb"\d{1,12}", tags[b"t"]):
            raise _Invalid("permerror", "t= is not a number")
        signed_at = int(tags[b"t"])
        if signed_at > now + CLOCK_SLACK:
            raise _Invalid("permerror", "signed in the future (t=)")
    if b"x" in tags:
        if not re.fullmatch(rb"\d{1,12}", tags[b"x"]):
            raise _Invalid("permerror", "x= is not a number")
        expires = int(tags[b"x"])
        if signed_at is not None and expires < signed_at:
            raise _Invalid("permerror", "x= is before t=")
        if expires + CLOCK_SLACK < now:
            raise _Invalid("permerror", "signature expired")


def key_name(tags: dict[bytes, bytes]) -> bytes:
    """The name dkimpy asks its ``dnsfunc`` for: ``<s>._domainkey.<d>.``."""
    return tags[b"s"] + b"._domainkey." + tags[b"d"].rstrip(b".") + b"."


def _check_key(record: bytes | None, tags: dict[bytes, bytes]) -> tuple[int, bool]:
    """The key record checks of 6.1.2, 3.6.1 and RFC 8301 3.2: (key bits, testing)."""
    if record is None:
        raise _Invalid("permerror", "no key for signature")
    try:
        key_tags = parse_tag_value(record)
    except InvalidTagValueList:
        raise _Invalid("permerror", "key syntax error") from None
    if key_tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise _Invalid("permerror", "key syntax error (v=)")
    if b"p" not in key_tags:
        raise _Invalid("permerror", "key syntax error (no p=)")
    if not re.sub(rb"\s+", b"", key_tags[b"p"]):
        raise _Invalid("permerror", "key revoked")
    key_type = key_tags.get(b"k", b"rsa").lower()
    if ACCEPTED_ALGORITHMS[tags[b"a"].lower()] != key_type:
        raise _Invalid("permerror", "inappropriate key algorithm")
    if b"h" in key_tags:
        allowed = [h.strip().lower() for h in key_tags[b"h"].split(b":")]
        if b"sha256" not in allowed:
            raise _Invalid("permerror", "inappropriate hash algorithm")
    services = [s.strip() for s in key_tags.get(b"s", b"*").split(b":")]
    if b"*" not in services and b"email" not in services:
        raise _Invalid("permerror", "key not for email")
    flags = [f.strip().lower() for f in key_tags.get(b"t", b"").split(b":")]
    if b"s" in flags and b"i" in tags:
        i_domain = tags[b"i"].rpartition(b"@")[2].lower().rstrip(b".")
        if i_domain != tags[b"d"].lower().rstrip(b"."):
            raise _Invalid("permerror", "i= is a subdomain of d= but the key has t=s")
    try:
        _, bits, _, _ = dkim.evaluate_pk(b"", record)
    except (dkim.DKIMException, ValueError, TypeError):
        raise _Invalid("permerror", "key syntax error") from None
    if key_type == b"rsa" and (bits or 0) < MIN_RSA_BITS:
        raise _Invalid("permerror", f"RSA key too short ({bits} bits)")
    return int(bits or 0), b"y" in flags


async def fetch_keys(
    resolver: Resolver, names: Sequence[bytes]
) -> dict[bytes, bytes | TemporaryError | None]:
    """Each key name's first TXT record (None when there is none), or the TemporaryError its lookup raised."""

    async def one(name: bytes) -> bytes | TemporaryError | None:
        try:
            records = await resolver.txt(name.decode("ascii"))
        except NotFound:
            return None
        except TemporaryError as e:
            return e
        return records[0] if records else None

    unique = list(dict.fromkeys(names))
    answers = await asyncio.gather(*(one(n) for n in unique))
    return dict(zip(unique, answers, strict=True))


def _verify_one(
    verifier: dkim.DKIM,
    index: int,
    value: bytes,
    keys: dict[bytes, bytes | TemporaryError | None],
    body_length: int,
    now: float,
) -> DKIMResult:
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList:
        return DKIMResult("permerror", reason="signature syntax error")
    domain = tags.get(b"d", b"").lower().rstrip(b".").decode("ascii", "replace")
    partial = {
        "domain": domain,
        "selector": tags.get(b"s", b"").decode("ascii", "replace"),
        "algorithm": tags.get(b"a", b"").lower().decode("ascii", "replace"),
        "identity": tags.get(b"i", b"@" + domain.encode()).decode("utf-8", "replace"),
        "b": _text(tags.get(b"b", b"")),
    }
    try:
        _check_signature(tags, now)
        name = key_name(tags)
        record = keys.get(name)
        if isinstance(record, TemporaryError):
            return DKIMResult("temperror", reason=f"key unavailable: {record}", **partial)
        bits, testing = _check_key(record, tags)
    except _Invalid as e:
        return DKIMResult(e.result, reason=e.reason, **partial)
    note = ""
    if b"l" in tags:
        length = int(tags[b"l"])
        if length > body_length:
            return DKIMResult("permerror", reason="l= is longer than the body", key_bits=bits, **partial)
        if length < body_length:
            note = f"; {body_length - length} body octets not signed (l={length})"
    try:
        ok = verifier.verify(idx=index, dnsfunc=lambda name, timeout=5: keys.get(name))
        reason = "signature verified" if ok else "signature did not verify"
    except dkim.ValidationError as e:
        ok = False
        reason = "body hash did not verify" if "body hash" in str(e) else f"signature did not verify ({e})"
    except dkim.DKIMException as e:
        return DKIMResult("permerror", reason=str(e), key_bits=bits, testing=testing, **partial)
    if ok:
        return DKIMResult("pass", reason="ok" + note, key_bits=bits, testing=testing, **partial)
    if testing:
        return DKIMResult(
            "neutral", reason=reason + "; key in test mode", key_bits=bits, testing=True, **partial
        )
    return DKIMResult("fail", reason=reason, key_bits=bits, **partial)


def _canonical_body_length(verifier: dkim.DKIM, tags: dict[bytes, bytes]) -> int:
    policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    return len(policy.canonicalize_body(verifier.body))


def parse(message: bytes) -> dkim.DKIM:
    """The message split into header fields and body, ready for :func:`verify_with_keys`."""
    return dkim.DKIM(message, logger=_quiet, minkey=MIN_RSA_BITS)


def key_names(fields: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The key names the message's signatures need (those that parse); ``fields`` are its header fields."""
    names = []
    for value in [v for n, v in fields if n.lower() == b"dkim-signature"][:MAX_SIGNATURES]:
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            continue
        if b"s" in tags and b"d" in tags and dns_name_ok(key_name(tags)):
            names.append(key_name(tags))
    return names


def verify_with_keys(
    verifier: dkim.DKIM, keys: dict[bytes, bytes | TemporaryError | None], now: float | None = None
) -> list[DKIMResult]:
    """Verify every signature (up to MAX_SIGNATURES) with key records already fetched; no DNS, CPU only."""
    now = time.time() if now is None else now
    out = []
    lengths: dict[bytes, int] = {}
    values = [bytes(v) for n, v in verifier.headers if n.lower() == b"dkim-signature"][:MAX_SIGNATURES]
    for index, value in enumerate(values):
        body_length = 0
        try:
            tags = parse_tag_value(value)
            if b"l" in tags:
                c = tags.get(b"c", b"simple/simple")
                if c not in lengths:
                    lengths[c] = _canonical_body_length(verifier, tags)
                body_length = lengths[c]
        except (InvalidTagValueList, InvalidCanonicalizationPolicyError):
            pass
        try:
            out.append(_verify_one(verifier, index, value, keys, body_length, now))
        except Exception as e:  # dkimpy on input it did not expect: a signature nobody can verify
            out.append(DKIMResult("permerror", reason=f"unverifiable signature ({type(e).__name__})"))
    return out


async def verify(
    message: bytes,
    resolver: Resolver,
    now: float | None = None,
    fields: Sequence[tuple[bytes, bytes]] | None = None,
) -> list[DKIMResult]:
    """Every DKIM signature of ``message`` (CRLF line endings), top first; [] when it has none. ``fields``: its
    header fields as :func:`homemail.mailauth.results.fields` gives them, when the caller has them already.

    The key records are fetched on the event loop; dkimpy's parsing and hashing run there too for a small
    message, in a worker thread for a big one."""
    if fields is None:
        fields = results.fields(message)
    if not any(n.lower() == b"dkim-signature" for n, _ in fields):
        return []
    keys = await fetch_keys(resolver, key_names(fields))
    if len(message) <= INLINE_LIMIT:
        return verify_with_keys(parse(message), keys, now)
    return await asyncio.to_thread(lambda: verify_with_keys(parse(message), keys, now))


def header_b(result: DKIMResult, others: Sequence[DKIMResult]) -> str:
    """The header.b value (RFC 6008 4): at least 8 characters of b=, more when another signature starts alike."""
    n = 8
    while n < len(result.b) and any(o is not result and o.b[:n] == result.b[:n] for o in others):
        n += 4
    return result.b[:n]
