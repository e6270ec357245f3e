"""Reverse DNS of a client, forward-confirmed: the "iprev" method of Authentication-Results (RFC 8601 3, RFC 8601
2.7.3) and the name in our Received: field (RFC 5321 4.4: "TCP-info" with the name the address resolves to).

Rules:
- The PTR names of the address are asked for; each (at most :data:`MAX_NAMES`, in answer order) is looked up
  forward (A for an IPv4 client, AAAA for IPv6) and the first one whose addresses include the client's is the
  confirmed name: "pass". A PTR name that does not lead back is never shown as the client's name.
- "fail": no PTR record (NXDOMAIN or an empty answer), or none of the names leads back to the address.
- "temperror": the PTR lookup failed for now, or a forward lookup failed and no other name confirmed.
- The result is recorded, not acted on: a missing or broken reverse DNS is common among legitimate small senders,
  so it refuses nothing by itself.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

from homemail.dns import NotFound, TemporaryError

MAX_NAMES = 10  # PTR names checked, as SPF does (RFC 7208 4.6.4)


class IPRevResolver(Protocol):
    async def query(self, name: str, rdtype: str) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class IPRevResult:
    result: str  # "pass", "fail" or "temperror"
    ip: str
    name: str | None = None  # the forward-confirmed name (pass only), without the trailing dot, lower-case
    ptr_names: tuple[str, ...] = ()
    reason: str = ""


@functools.lru_cache(maxsize=4096)
def reverse_name(ip: str) -> str:
    """The in-addr.arpa / ip6.arpa name of an address."""
    addr = client_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return ".".join(reversed(str(addr).split("."))) + ".in-addr.arpa"
    return ".".join(reversed(addr.exploded.replace(":", ""))) + ".ip6.arpa"


@functools.lru_cache(maxsize=4096)  # asked several times per connection; addresses repeat
def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client's address; an IPv4-mapped IPv6 address (a dual-stack listener) is the IPv4 address."""
    addr = ipaddress.ip_address(ip.strip("[]"))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


async def check(resolver: IPRevResolver, ip: str) -> IPRevResult:
    addr = client_address(ip)
    try:
        records = await resolver.query(reverse_name(ip), "PTR")
    except NotFound:
        return IPRevResult("fail", str(addr), reason="no PTR record (NXDOMAIN)")
    except TemporaryError as e:
        return IPRevResult("temperror", str(addr), reason=str(e))
    names = []
    for r in records:
        name = r.target.to_text(omit_final_dot=True).lower()
        if name and name not in names:
            names.append(name)
    if not names:
        return IPRevResult("fail", str(addr), reason="no PTR record")
    rdtype = "A" if isinstance(addr, ipaddress.IPv4Address) else "AAAA"
    errors = []
    for name in names[:MAX_NAMES]:
        try:
            forward = await resolver.query(name, rdtype)
        except NotFound:
            continue
        except TemporaryError as e:
            errors.append(str(e))
            continue
        if any(ipaddress.ip_address(f.address) == addr for f in forward):
            return IPRevResult("pass", str(addr), name, tuple(names))
    if errors:
        return IPRevResult("temperror", str(addr), None, tuple(names), errors[0])
    return IPRevResult(
        "fail", str(addr), None, tuple(names), f"{', '.join(names[:3])} does not resolve to {addr}"
    )
