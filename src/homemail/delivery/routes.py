"""Where a recipient's mail goes: straight to the domain's MX hosts, or through a configured relay (smarthost).

Rules:
- ``[[route]]`` entries are tried in order; the first whose ``domains`` list names the recipient's domain (or a
  parent of it), or that has no list, decides. With ``after_failures = N`` the route applies only once N direct
  attempts have failed: mail goes direct first, then through the relay (the hybrid mode). A direct refusal about
  our address's reputation (:mod:`homemail.delivery.reputation`) counts as all N at once: the next attempt goes
  through the relay right away instead of the mail bouncing.
- Direct: the MX records by preference, hosts of equal preference in random order (RFC 5321 5.1); a domain with no
  MX is its own MX (implicit MX, 5.1); a null MX (RFC 7505) fails at once with 5.1.10; a domain that does not
  exist fails with 5.1.2; a DNS failure is temporary.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from homemail.addresses import domain_ascii
from homemail.config import Config, RelayConfig
from homemail.dns import NotFound, Resolver, TemporaryError


class RouteFailure(Exception):
    """No destination now; ``permanent`` says whether to give up (5xx) or try later (4xx)."""

    def __init__(self, status: str, message: str, permanent: bool) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    addresses: tuple[str, ...]


def choose_relay(config: Config, domain: str, failed_attempts: int) -> RelayConfig | None:
    """The relay for mail to ``domain`` after ``failed_attempts`` failed tries; None means direct."""
    domain = domain.lower()
    for route in config.route:
        if route.domains and not any(domain == d or domain.endswith("." + d) for d in route.domains):
            continue
        if failed_attempts < route.after_failures:
            return None
        return next(r for r in config.relay if r.name == route.relay)
    return None


def reputation_fallback(config: Config, domain: str) -> tuple[RelayConfig, int] | None:
    """The relay a route with ``after_failures`` holds in reserve for ``domain``, and that number: a direct
    refusal about our address's reputation sends the mail there at once (homemail.delivery.reputation)."""
    domain = domain.lower()
    for route in config.route:
        if route.domains and not any(domain == d or domain.endswith("." + d) for d in route.domains):
            continue
        if route.after_failures == 0:
            return None  # this route relays from the first attempt
        return next(r for r in config.relay if r.name == route.relay), route.after_failures
    return None


def _ordered(records: Sequence[tuple[int, str]]) -> list[str]:
    by_pref: dict[int, list[str]] = {}
    for pref, host in records:
        by_pref.setdefault(pref, []).append(host)
    out: list[str] = []
    for pref in sorted(by_pref):
        hosts = by_pref[pref]
        random.shuffle(hosts)
        out += hosts
    return out


async def mx_hosts(resolver: Resolver, domain: str) -> list[str]:
    """The host names to try for ``domain``, best first."""
    name = domain_ascii(domain)
    try:
        records = await resolver.mx(name)
    except NotFound:
        raise RouteFailure("5.1.2", f"Domain {domain} does not exist", permanent=True) from None
    except TemporaryError as e:
        raise RouteFailure("4.4.3", f"DNS lookup of {domain} failed: {e}", permanent=False) from None
    if any(r.host == "" for r in records):
        # RFC 7505 3: a null MX says the domain accepts no mail.
        raise RouteFailure("5.1.10", f"Domain {domain} accepts no mail (null MX)", permanent=True)
    if not records:
        return [name]
    return _ordered([(r.preference, r.host) for r in records])


async def resolve_hosts(
    resolver: Resolver, names: Sequence[str], ipv4_only: bool, implicit: bool = False
) -> list[Host]:
    """Addresses for each name; names without any are left out. A DNS failure of every name is temporary; an
    implicit MX (the domain itself) without addresses is permanent: the domain has no mail host at all."""
    hosts = []
    temporary = None
    for name in names:
        try:
            addrs = await resolver.addresses(name, ipv4_only=ipv4_only)
        except NotFound:
            continue
        except TemporaryError as e:
            temporary = e
            continue
        if addrs:
            hosts.append(Host(name, tuple(addrs)))
    if not hosts:
        if temporary is not None:
            raise RouteFailure("4.4.3", f"DNS lookup failed: {temporary}", permanent=False)
        if implicit:
            raise RouteFailure("5.1.2", f"{names[0]} has no MX and no address record", permanent=True)
        raise RouteFailure(
            "4.4.4", "No address found for the mail hosts " + ", ".join(names), permanent=False
        )
    return hosts
