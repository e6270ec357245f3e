"""Dynamic IP (``[dyndns]``): keep DNS pointing at this server when its public address changes.

Every ``interval`` the worker finds the public address (``[public_ip]``) and compares it with what the zone's
primary (``[dyndns] server``) publishes, asked directly (no cache, so a restart or a change made by hand is seen).
When they differ, one RFC 2136 dynamic update signed with TSIG (RFC 8945):

- replaces the A (AAAA) records of the public host name with the new address (``hostname = true``);
- in the SPF record of every local domain in the zone that names an old address (``ip4:OLD``/``ip6:OLD``), puts
  the new one in its place (``spf = true``); an SPF record that names it only through ``mx`` or ``a`` follows by
  itself.

Then the postmaster gets a notice in their mailbox: old and new address, the records changed, and what only they
can do (the reverse DNS of the new address is the provider's). A family that cannot be found now (no IPv6 route
today) is left as it is. ``homemail dyndns update`` runs one round.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update

from homemail import public
from homemail.config import Config
from homemail.dns import Resolver
from homemail.doctor import publicip
from homemail.store import Store

if TYPE_CHECKING:
    from homemail.server import Services

log = logging.getLogger(__name__)


class DynDNSError(Exception):
    """The round could not finish; the text says why."""


@dataclass(slots=True)
class Change:
    hostname: str
    old: dict[str, list[str]] = field(default_factory=dict)  # "A"/"AAAA" -> what was published
    new: dict[str, str] = field(default_factory=dict)  # "A"/"AAAA" -> the address found now
    updates: list[str] = field(default_factory=list)  # what was (or would be) changed, one line each
    applied: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.updates)


def _in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


async def _ask(config: Config, name: str, rdtype: str) -> tuple[list[Any], int]:
    """The records of ``rdtype`` at ``name`` straight from the primary, and their TTL."""
    server = config.dyndns.server
    assert server is not None
    query = dns.message.make_query(name.rstrip(".") + ".", dns.rdatatype.from_text(rdtype))
    timeout = config.dns.timeout
    try:
        response = await dns.asyncquery.udp(query, server.host, port=server.port, timeout=timeout)
        if response.flags & dns.flags.TC:
            response = await dns.asyncquery.tcp(query, server.host, port=server.port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as e:
        raise DynDNSError(f"cannot ask {server} for {name} {rdtype}: {e or type(e).__name__}") from None
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return [], 0
    if rcode != dns.rcode.NOERROR:
        raise DynDNSError(f"{server} answered {dns.rcode.to_text(rcode)} for {name} {rdtype}")
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.from_text(rdtype):
            return list(rrset), rrset.ttl
    return [], 0


def _txt_rdata(text: str) -> dns.rdtypes.ANY.TXT.TXT:
    data = text.encode("utf-8")
    strings = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)


def _spf_with(text: str, old: list[str], new: str, version: int) -> str | None:
    """The SPF text with ``ipN:OLD`` terms (and their qualifiers) made ``ipN:NEW``; None when none is named."""
    prefix = f"ip{version}:"
    terms = text.split(" ")
    changed = False
    out: list[str] = []
    for term in terms:
        qualifier = term[0] if term[:1] in "+-~?" and term[1:].lower().startswith(prefix) else ""
        body = term[len(qualifier) :]
        if body.lower().startswith(prefix):
            address = body[len(prefix) :]
            cidr = ""
            if "/" in address:
                address, _, mask = address.partition("/")
                cidr = "/" + mask
            if address in old and not cidr:
                term = f"{qualifier}{prefix}{new}"
                changed = True
                if term in out:
                    continue
        out.append(term)
    return " ".join(out) if changed else None


async def update_once(
    config: Config, store: Store, resolver: Resolver | None = None, dry_run: bool = False
) -> Change:
    """One round: find the address, compare, update. Raises DynDNSError when it cannot finish."""
    d = config.dyndns
    if not (d.zone and d.server and d.tsig_name and (d.tsig_secret or d.tsig_secret_file)):
        raise DynDNSError("[dyndns] needs zone, server, tsig_name and tsig_secret (or tsig_secret_file)")
    if config.public_ip.source == "config":
        raise DynDNSError('[public_ip] source = "config" cannot see the address change: use "http" or "stun"')
    zone = d.zone.lower().rstrip(".")
    host = public.public_hostname(config)
    if d.hostname and not _in_zone(host, zone):
        raise DynDNSError(f"the host name {host} is not in the zone {zone}")
    found = await publicip.detect(config, resolver or Resolver(config.dns))
    change = Change(host)
    addresses = {"A": found.ipv4, "AAAA": found.ipv6}
    if not any(addresses.values()):
        raise DynDNSError(f"no public address found: {'; '.join(found.errors.values())}")
    try:
        key = dns.tsig.Key(d.tsig_name, d.secret(), d.tsig_algorithm)
    except (ValueError, dns.exception.DNSException) as e:
        raise DynDNSError(f"[dyndns] TSIG key: {e}") from None
    update = dns.update.UpdateMessage(zone + ".", keyring=key)

    olds: dict[str, list[str]] = {}
    for rtype, address in addresses.items():
        if address is None:
            continue
        records, _ = await _ask(config, host, rtype)
        published = [r.address for r in records]
        olds[rtype] = published
        change.old[rtype] = published
        change.new[rtype] = address
        if d.hostname and published != [address]:
            update.replace(host + ".", d.ttl, rtype, address)
            change.updates.append(f"{host} {rtype} {', '.join(published) or '(none)'} -> {address}")

    if d.spf:
        domains = [dom.name for dom in await store.list_domains() if _in_zone(dom.name.lower(), zone)]
        for domain in domains:
            records, ttl = await _ask(config, domain, "TXT")
            for rdata in records:
                text = b"".join(rdata.strings).decode("utf-8", "replace")
                if not text.lower().startswith("v=spf1"):
                    continue
                new_text = text
                for rtype, version in (("A", 4), ("AAAA", 6)):
                    address = addresses[rtype]
                    stale = [a for a in olds.get(rtype, []) if a != address]
                    if address and stale:
                        new_text = _spf_with(new_text, stale, address, version) or new_text
                if new_text != text:
                    update.delete(domain + ".", rdata)
                    update.add(domain + ".", ttl or d.ttl, _txt_rdata(new_text))
                    change.updates.append(f'{domain} TXT "{text}" -> "{new_text}"')

    if not change.updates or dry_run:
        return change
    server = d.server
    assert server is not None
    try:
        response = await dns.asyncquery.tcp(update, server.host, port=server.port, timeout=config.dns.timeout)
    except dns.tsig.PeerError as e:
        raise DynDNSError(
            f"{server} refused the update: {e}: check [dyndns] tsig_name, tsig_algorithm and tsig_secret"
        ) from None
    except (dns.exception.DNSException, OSError) as e:
        raise DynDNSError(f"the update to {server} failed: {e or type(e).__name__}") from None
    if response.rcode() != dns.rcode.NOERROR:
        raise DynDNSError(f"{server} refused the update: {dns.rcode.to_text(response.rcode())}")
    change.applied = True
    log.warning("dyndns: public address changed; updated %s", "; ".join(change.updates))
    return change


# --- telling the postmaster ------------------------------------------------------------------------------------


async def postmaster(config: Config, store: Store) -> str | None:
    """Where notices go: ``[dyndns] notify`` (an address, or a local part at the zone's domain or the first local
    domain), when it is a local mailbox; None otherwise."""
    notify = config.dyndns.notify
    if "@" in notify:
        candidates = [notify]
    else:
        domains = [dom.name for dom in await store.list_domains()]
        zone = config.dyndns.zone.lower().rstrip(".")
        domains.sort(key=lambda name: name != zone)
        candidates = [f"{notify}@{name}" for name in domains]
    for address in candidates:
        resolved = await store.resolve(address)
        if resolved is not None and resolved.accounts:
            return address
    return None


def notice(config: Config, change: Change, to: str, now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    host = config.hostname
    new = ", ".join(change.new.values())
    body = [
        f"The public address of {change.hostname} changed.",
        "",
        *(
            f"  {rtype}: {', '.join(change.old.get(rtype, [])) or '(none)'} -> {address}"
            for rtype, address in change.new.items()
        ),
        "",
        "homemail updated these DNS records:",
        *(f"  {line}" for line in change.updates),
        "",
        f"What only you can do: ask the provider of {new} to set its reverse DNS (PTR) to {change.hostname},",
        "and run 'homemail doctor' to see whether the new address is on a blocklist or looks residential.",
        "",
    ]
    head = (
        f"From: homemail <MAILER-DAEMON@{host}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: Public address of {change.hostname} changed to {new}\r\n"
        f"Date: {email.utils.formatdate(now, localtime=True)}\r\n"
        f"Message-ID: <{int(now)}.{os.urandom(8).hex()}@{host}>\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
    )
    return (head + "\r\n".join(body)).encode("utf-8")


async def tell_postmaster(services: Services, change: Change) -> str | None:
    from homemail.delivery.queue import deliver_notice

    to = await postmaster(services.config, services.store)
    if to is None:
        log.warning(
            "dyndns: no local mailbox for [dyndns] notify = %r: no notice sent", services.config.dyndns.notify
        )
        return None
    await deliver_notice(services, to, notice(services.config, change, to))
    return to


# --- the worker ------------------------------------------------------------------------------------------------


async def _run(services: Services) -> None:
    config = services.config
    from homemail.dns import get_resolver

    resolver = get_resolver(services)
    while True:
        try:
            change = await update_once(config, services.store, resolver)
            if change.applied:
                await tell_postmaster(services, change)
        except DynDNSError as e:
            log.warning("dyndns: %s", e)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dyndns: round failed")
        await asyncio.sleep(config.dyndns.interval)


async def start_worker(services: Services) -> asyncio.Task[None] | None:
    if not services.config.dyndns.enabled:
        return None
    return asyncio.create_task(_run(services), name="dyndns")
