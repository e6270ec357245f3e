"""ARC (RFC 8617): validate the Authenticated Received Chain that forwarders and mailing lists add, and decide
whether a trusted one vouches for a message that fails DMARC because of the forwarding.

The keys of every ARC-Seal and ARC-Message-Signature are fetched first through the shared resolver; dkimpy's
``ARC.verify`` then checks the chain with those answers (RFC 8617 5.2: the newest AMS, every AS, the cv= values).

Rules:
- No ARC header fields: ``none``. A valid chain: ``pass``. Anything else (a broken seal or message signature, a
  missing key, a gap in the instances, a chain a sealer already marked ``cv=fail``): ``fail``. A key lookup that
  gets no answer: ``temperror`` (the caller decides whether the outcome depends on it).
- Override (RFC 8617 7.2, RFC 7489 6.7 local policy, reported as ``trusted_forwarder``): a DMARC failure is
  forgiven only when the chain passes, the newest ARC-Seal's ``d=`` is a configured trusted sealer (or a
  subdomain of one), and the ARC-Authentication-Results that sealer recorded shows the message authenticated for
  the From: domain on arrival there: ``dmarc=pass``, or a ``dkim=pass`` whose ``header.d`` aligns, or an
  ``spf=pass`` whose ``smtp.mailfrom`` domain aligns (relaxed alignment, RFC 7489 3.1).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from homemail.dns import Resolver, TemporaryError
from homemail.mailauth import results
from homemail.mailauth.dkimverify import INLINE_LIMIT, MIN_RSA_BITS, dns_name_ok, fetch_keys
from homemail.mailauth.dmarc import aligned

MAX_INSTANCES = 50  # RFC 8617 4.2.1

_quiet = logging.getLogger("homemail.dkimpy")

ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")


@dataclass(frozen=True, slots=True)
class ARCResult:
    result: str  # none, pass, fail, temperror
    instances: int = 0  # the newest i=
    sealer: str = ""  # d= of the newest ARC-Seal
    aar: str = ""  # the newest ARC-Authentication-Results value
    reason: str = ""
    cv: str = ""  # the cv= the newest ARC-Seal carries (what the last sealer found of the chain before it)

    @property
    def comment(self) -> str:
        if self.result == "none":
            return ""
        text = f"i={self.instances}"
        if self.sealer:
            text += f" d={self.sealer}"
        if self.cv:
            text += f" cv={self.cv}"
        if self.result != "pass" and self.reason:
            text += f"; {self.reason}"
        return text


def _arc_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower(), v) for n, v in headers if n.lower() in ARC_FIELDS]


def _instance(value: bytes) -> int:
    m = re.search(rb"(?:^|;)\s*i\s*=\s*(\d+)", value)
    return int(m.group(1)) if m else 0


def _key_names(fields: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    names = []
    for name, value in fields:
        if name == b"arc-authentication-results":
            continue
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            continue
        if b"s" in tags and b"d" in tags:
            name = tags[b"s"] + b"._domainkey." + tags[b"d"].rstrip(b".") + b"."
            if dns_name_ok(name):
                names.append(name)
    return names


def _newest(fields: Sequence[tuple[bytes, bytes]], instances: int) -> tuple[str, str, str]:
    """(d= and cv= of the newest ARC-Seal, value of the newest ARC-Authentication-Results)."""
    sealer, cv, aar = "", "", ""
    for name, value in fields:
        if _instance(value) != instances:
            continue
        if name == b"arc-seal":
            try:
                tags = parse_tag_value(value)
            except InvalidTagValueList:
                continue
            sealer = tags.get(b"d", b"").decode("ascii", "replace").lower().rstrip(".")
            cv = tags.get(b"cv", b"").decode("ascii", "replace").lower()
        elif name == b"arc-authentication-results":
            aar = re.sub(r"\s+", " ", value.decode("utf-8", "replace")).strip()
    return sealer, cv, aar


def _validate(message: bytes, keys: dict[bytes, bytes | TemporaryError | None]) -> tuple[str, str]:
    verifier = dkim.ARC(message, logger=_quiet, minkey=MIN_RSA_BITS)
    try:
        cv, _, reason = verifier.verify(dnsfunc=lambda name, timeout=5: keys.get(name))
    except dkim.DKIMException as e:
        return "fail", str(e)
    except (
        Exception
    ) as e:  # dkimpy trips over some malformed sets (IndexError, ...): a broken chain all the same
        return "fail", f"malformed ARC set ({type(e).__name__})"
    if cv == dkim.CV_Pass:
        return "pass", ""
    return "fail", str(reason)


async def verify(message: bytes, headers: Sequence[tuple[bytes, bytes]], resolver: Resolver) -> ARCResult:
    """The chain of ``message``; ``headers`` are its parsed header fields (dkimpy's ``rfc822_parse``)."""
    fields = _arc_headers(headers)
    if not fields:
        return ARCResult("none")
    instances = max(_instance(v) for _, v in fields)
    sealer, cv, aar = _newest(fields, instances)
    if not 0 < instances <= MAX_INSTANCES:
        return ARCResult("fail", instances, sealer, aar, "bad instance numbers", cv)
    keys = await fetch_keys(resolver, _key_names(fields))
    problem = next((v for v in keys.values() if isinstance(v, TemporaryError)), None)
    if problem is not None:
        return ARCResult("temperror", instances, sealer, aar, f"key unavailable: {problem}", cv)
    if len(message) <= INLINE_LIMIT:
        result, reason = _validate(message, keys)
    else:
        result, reason = await asyncio.to_thread(_validate, message, keys)
    return ARCResult(result, instances, sealer, aar, reason, cv)


def trusted(sealer: str, sealers: Sequence[str]) -> bool:
    """Whether ``sealer`` is one of ``sealers`` or a subdomain of one."""
    return bool(sealer) and any(sealer == t or sealer.endswith("." + t) for t in sealers)


def vouches(arc: ARCResult, sealers: Sequence[str], from_domain: str) -> bool:
    """Whether a trusted sealer's valid chain says the message was authentic for ``from_domain`` on arrival."""
    if arc.result != "pass" or not trusted(arc.sealer, sealers):
        return False
    _, found = results.parse(arc.aar)
    for r in found:
        if r.result != "pass":
            continue
        if r.method == "dmarc":
            header_from = r.props.get("header.from", from_domain)
            if header_from.lower().rstrip(".") == from_domain:
                return True
        elif r.method == "dkim":
            d = r.props.get("header.d") or r.props.get("header.i", "").rpartition("@")[2]
            if d and aligned(d, from_domain, "r"):
                return True
        elif r.method == "spf":
            mailfrom = r.props.get("smtp.mailfrom", "").rpartition("@")[2]
            if mailfrom and aligned(mailfrom, from_domain, "r"):
                return True
    return False
