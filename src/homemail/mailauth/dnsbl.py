"""DNS blocklists (RFC 5782): is the connecting address listed in one of the configured zones?

The address is asked for as ``<reversed address>.<zone>`` A (IPv4: octets reversed; IPv6: nibbles reversed,
RFC 5782 2.4); the TXT record at the same name is the list's reason, quoted in our refusal.

Rules:
- Listed: an A answer in 127.0.0.0/8 (RFC 5782 2.1), other than 127.255.255.0/24, which Spamhaus uses to say
  "this query was refused" (127.255.255.252: wrong zone name, .254: asked through a public/open resolver, .255:
  too many queries). Such an answer means the list could not be consulted: it is reported (so the operator can fix
  the resolver) and does not count as listed. Answers outside 127.0.0.0/8 (a resolver that rewrites NXDOMAIN) are
  ignored the same way.
- NXDOMAIN or no A record: not listed. A DNS failure (timeout, SERVFAIL) is reported as an error; the caller
  answers 451 4.7.1 rather than let the client through unchecked.
- Addresses on the allowlist are never looked up; every zone is asked at once.
- The decision (554 5.7.1 with the reason, at RCPT) is taken in :mod:`homemail.smtp.inbound`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from homemail.dns import NotFound, TemporaryError
from homemail.mailauth.iprev import client_address

LISTED = ipaddress.ip_network("127.0.0.0/8")
REFUSED = ipaddress.ip_network("127.255.255.0/24")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DNSBLResolver(Protocol):
    async def query(self, name: str, rdtype: str) -> list[Any]: ...

    async def txt(self, name: str) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class Listing:
    zone: str
    codes: tuple[str, ...]  # the 127.0.0.x answers
    reason: str  # the zone's TXT text (sanitised), or a generic text


@dataclass(slots=True)
class DNSBLResult:
    ip: str
    listed: Listing | None = None  # the first zone (in configured order) that lists the address
    errors: list[str] = field(default_factory=list)  # zones that could not be asked now
    refused: list[str] = field(default_factory=list)  # zones that refused the query (127.255.255.x)

    @property
    def temporary_failure(self) -> bool:
        """No zone lists the address, but at least one could not be asked: the answer is not known yet."""
        return self.listed is None and bool(self.errors)


def query_name(ip: str, zone: str) -> str:
    addr = client_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        reversed_ip = ".".join(reversed(str(addr).split(".")))
    else:
        reversed_ip = ".".join(reversed(addr.exploded.replace(":", "")))
    return f"{reversed_ip}.{zone.strip('.')}"


def allowed(ip: str, allowlist: Iterable[Network]) -> bool:
    addr = client_address(ip)
    return any(addr.version == net.version and addr in net for net in allowlist)


def _clean_reason(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    text = re.sub(r"[^\x20-\x7e]", "?", text).strip()
    return text[:200]


async def _ask(resolver: DNSBLResolver, ip: str, zone: str) -> tuple[str, tuple[str, ...] | None, str]:
    """(state, codes, reason) for one zone: state "listed", "clean", "refused" or "error"."""
    name = query_name(ip, zone)
    try:
        records = await resolver.query(name, "A")
    except NotFound:
        return "clean", None, ""
    except TemporaryError as e:
        return "error", None, str(e)
    answers = [ipaddress.ip_address(r.address) for r in records]
    codes = tuple(str(a) for a in answers if a in LISTED and a not in REFUSED)
    if not codes:
        if any(a in REFUSED for a in answers):
            return "refused", tuple(str(a) for a in answers), ""
        return "clean", None, ""
    reason = ""
    try:
        texts = await resolver.txt(name)
        if texts:
            reason = _clean_reason(texts[0])
    except (NotFound, TemporaryError):
        pass
    return "listed", codes, reason or f"listed by {zone} ({', '.join(codes)})"


async def check(resolver: DNSBLResolver, ip: str, zones: Sequence[str]) -> DNSBLResult:
    """Ask every zone about ``ip`` at once."""
    result = DNSBLResult(str(client_address(ip)))
    if not zones:
        return result
    answers = await asyncio.gather(*(_ask(resolver, ip, zone) for zone in zones))
    for zone, (state, codes, reason) in zip(zones, answers, strict=True):
        if state == "listed" and result.listed is None:
            assert codes is not None
            result.listed = Listing(zone, codes, reason)
        elif state == "error":
            result.errors.append(f"{zone}: {reason}")
        elif state == "refused":
            result.refused.append(f"{zone} ({', '.join(codes or ())})")
    return result
