"""The one DNS resolver: every lookup homemail makes (MX, A/AAAA, TXT for DKIM, SPF, MTA-STS) goes through it.

It wraps dnspython's async resolver, pointed at ``[dns] nameservers`` (``host`` or ``host:port``; none: the
system's /etc/resolv.conf), with an answer cache that honours TTLs. Results come back as plain Python values, and
failures as two typed errors, because mail handling only ever asks one question of a failure: is it permanent
(the name does not exist: bounce) or temporary (SERVFAIL, timeout: try again later)?

- :class:`NotFound` (NXDOMAIN): the name does not exist. A name that exists without records of the asked type is
  not an error: the result is empty.
- :class:`TemporaryError`: no usable answer now (timeout, SERVFAIL, refused, no nameserver reachable).

One :class:`Resolver` per process, shared through ``services.extras["dns"]`` (:func:`get_resolver`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from homemail.config import DNSConfig

if TYPE_CHECKING:
    from homemail.server import Services

log = logging.getLogger(__name__)


class DNSError(Exception):
    """Base of the resolver's errors."""


class NotFound(DNSError):
    """NXDOMAIN: the name does not exist (a permanent answer)."""


class TemporaryError(DNSError):
    """No answer now: timeout, SERVFAIL, refused. Try again later."""


@dataclass(frozen=True, slots=True)
class MX:
    preference: int
    host: str  # without the trailing dot, lower-case; "" for a null MX (RFC 7505)


CACHE_SIZE = 20_000
MAX_TTL = 86_400.0


# RFC 2308 5 says a negative answer without an SOA should not be cached. Some resolvers send them (for the
# loopback PTR, say), and asking again for every connection gets a busy client rate-limited by them; a few
# seconds of memory spares that and is too short to matter for a name just added.
NEGATIVE_WITHOUT_SOA = 5.0


def _negative_ttl(responses: list[Any]) -> float:
    """RFC 2308 5: a negative answer is kept for the SOA's TTL, at most its minimum field."""
    for response in responses:
        for rrset in getattr(response, "authority", ()):
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return float(min(rrset.ttl, rrset[0].minimum))
    return NEGATIVE_WITHOUT_SOA


class Resolver:
    def __init__(self, config: DNSConfig | None = None, cache: bool = True) -> None:
        config = config or DNSConfig()
        if config.nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in config.nameservers]
        else:
            r = dns.asyncresolver.Resolver()
        r.lifetime = config.timeout
        r.timeout = min(config.timeout, 2.0)
        self._resolver = r
        # Answers by (name, type): the records, or the NotFound to raise again, until the TTL runs out. In front
        # of dnspython (not its own cache) because a hit here costs a dict lookup, not a walk through its
        # resolution machinery, and negative answers are kept too (RFC 2308 5: for the SOA's minimum TTL).
        self._cache: OrderedDict[tuple[str, str], tuple[float, list[Any] | NotFound]] | None = (
            OrderedDict() if cache else None
        )
        # Lookups in flight: a second asker of the same question waits for the first answer.
        self._pending: dict[tuple[str, str], asyncio.Future[list[Any]]] = {}

    async def query(self, name: str, rdtype: str) -> list[Any]:
        """The records of ``rdtype`` at ``name`` (absolute), as dnspython rdata; [] when there are none."""
        key = (name.rstrip(".").lower(), rdtype)
        cache = self._cache
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                if hit[0] > time.monotonic():
                    if isinstance(hit[1], NotFound):
                        raise NotFound(str(hit[1]))
                    return list(hit[1])
                del cache[key]
        pending = self._pending.get(key)
        if pending is not None:
            await asyncio.wait([pending])
            if not pending.cancelled():  # the first asker was cancelled: ask again below
                return list(pending.result())
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            records = await self._lookup(key[0], rdtype)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # marked as retrieved: there may be nobody else waiting
            raise
        else:
            fut.set_result(records)
            return list(records)
        finally:
            if self._pending.get(key) is fut:
                del self._pending[key]

    def _keep(self, key: tuple[str, str], ttl: float, value: list[Any] | NotFound) -> None:
        cache = self._cache
        if cache is None or ttl <= 0:
            return
        cache[key] = (time.monotonic() + min(ttl, MAX_TTL), value)
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)

    async def _lookup(self, name: str, rdtype: str) -> list[Any]:
        key = (name, rdtype)
        try:
            answer = await self._resolver.resolve(name + ".", rdtype, search=False)
        except dns.resolver.NXDOMAIN as e:
            missing = NotFound(f"{name}: no such domain (NXDOMAIN)")
            self._keep(key, _negative_ttl(list(e.responses().values())), missing)
            raise missing from None
        except dns.resolver.NoAnswer as e:
            response = e.kwargs.get("response")
            self._keep(key, _negative_ttl([response] if response is not None else []), [])
            return []
        except dns.resolver.NoNameservers as e:
            raise TemporaryError(f"{name} {rdtype}: no nameserver answered ({e})") from None
        except dns.exception.Timeout:
            raise TemporaryError(f"{name} {rdtype}: DNS timeout") from None
        except dns.exception.DNSException as e:
            raise TemporaryError(f"{name} {rdtype}: {e}") from None
        records = list(answer)
        self._keep(key, answer.rrset.ttl if answer.rrset is not None else 0, records)
        return records

    async def mx(self, domain: str) -> list[MX]:
        """MX records by preference (ties in answer order). A null MX is ``MX(0, "")`` (RFC 7505 3)."""
        records = [
            MX(r.preference, r.exchange.to_text(omit_final_dot=True).lower())
            for r in await self.query(domain, "MX")
        ]
        records = [MX(m.preference, "" if m.host in ("", ".") else m.host) for m in records]
        return sorted(records, key=lambda m: m.preference)

    async def addresses(self, host: str, ipv4_only: bool = False) -> list[str]:
        """IPv6 then IPv4 addresses of ``host`` (an IP literal is returned as it is); [] when it has none.

        NotFound only when neither lookup found the name; a temporary failure of one family is ignored when the
        other answered.
        """
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        families = ("A",) if ipv4_only else ("AAAA", "A")
        out: list[str] = []
        errors: list[DNSError] = []
        for rdtype in families:
            try:
                out += [r.address for r in await self.query(host, rdtype)]
            except DNSError as e:
                errors.append(e)
        if not out and errors:
            if all(isinstance(e, NotFound) for e in errors):
                raise errors[0]
            raise next(e for e in errors if isinstance(e, TemporaryError))
        return out

    async def txt(self, name: str) -> list[bytes]:
        """Each TXT record's strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(r.strings) for r in await self.query(name, "TXT")]

    async def dkim_txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """A TXT lookup in the shape dkimpy's ``dnsfunc`` has (first record, None when absent)."""
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        try:
            records = await self.txt(name)
        except NotFound:
            return None
        return records[0] if records else None


def get_resolver(services: Services) -> Resolver:
    """The process's resolver, made on first use from ``[dns]``."""
    resolver = services.extras.get("dns")
    if not isinstance(resolver, Resolver):
        resolver = Resolver(services.config.dns)
        services.extras["dns"] = resolver
    return resolver
