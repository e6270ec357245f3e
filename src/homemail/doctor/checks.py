"""``homemail doctor``: why mail from this server would be junked or refused, checked against the live state, and
what to do about it.

Each check ends ok, warn or fail (or skip: nothing to check) with one line saying why, and a fix when there is
one. What is checked:

- the public addresses (``[public_ip]``: an HTTP echo service, STUN, or ``[public] ipv4``/``ipv6``), and that they
  are what ``[public]`` says;
- per address: a PTR record naming the host name, forward-confirmed (FCrDNS); a residential or dynamic look (PTR
  names with words such as dyn, pool, dsl, cable, dhcp, ppp, or the address's numbers in them; the Spamhaus PBL,
  127.0.0.10/11 from ``[doctor] pbl``); the DNS blocklists of ``[doctor] dnsbl``;
- the mail domains on the domain blocklists of ``[doctor] dbl``;
- that outbound port 25 is open (a connection to ``[doctor] port25_probe``, a big provider's MX, and its greeting);
- per mail domain, against what ``homemail dns`` says to publish (:mod:`homemail.doctor.records`): MX, the host
  name's A/AAAA, SPF (evaluated for the public addresses), every DKIM key, DMARC, MTA-STS (the record's id and the
  policy fetched over HTTPS), TLS-RPT;
- our MX as the world sees it (the host name's address, port 25): its certificate (trusted, covering the host
  name, not about to expire), and that it refuses to relay for an outsider.

Then the verdict and the plan (:class:`Plan`): deliver directly, or through a relay for all mail (port 25 blocked,
the address blocklisted) or only for the providers that refuse such addresses (residential, no or generic reverse
DNS), with the ``[[relay]]``/``[[route]]`` lines and the DNS changes that go with them. Problems a configured
relay already routes around are warnings, not failures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import re
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from homemail import public
from homemail.config import Config, RelayConfig, RouteConfig
from homemail.delivery.mtasts import MTASTS, parse_policy, parse_txt
from homemail.delivery.routes import choose_relay
from homemail.dns import DNSError, NotFound, Resolver, TemporaryError
from homemail.doctor import publicip, records
from homemail.doctor.smtpprobe import Probe, ProbeError
from homemail.mailauth import dnsbl, iprev, spf
from homemail.store import Store

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
CERT_WARN_DAYS = 14
PBL_CODES = frozenset({"127.0.0.10", "127.0.0.11"})
FOREIGN_DOMAIN = "relay-test.homemail.invalid"  # RFC 2606: never anyone's

# Where a listing is looked up and removed, by blocklist domain.
DELIST = {
    "spamhaus.org": "https://check.spamhaus.org/",
    "spamcop.net": "https://www.spamcop.net/bl.shtml",
    "barracudacentral.org": "https://www.barracudacentral.org/rbl/removal-request",
    "surriel.com": "https://psbl.org/remove",
    "mailspike.net": "https://mailspike.io/ip_verify",
    "uceprotect.net": "https://www.uceprotect.net/en/rblcheck.php",
}

# PTR name words that mark an end-user (residential, dynamically assigned) address.
DYNAMIC_WORDS = frozenset(
    {
        "dyn",
        "dynamic",
        "dynip",
        "dip",
        "pool",
        "dsl",
        "adsl",
        "vdsl",
        "xdsl",
        "sdsl",
        "cable",
        "dhcp",
        "ppp",
        "pppoe",
        "dial",
        "dialup",
        "dialin",
        "broadband",
        "residential",
        "res",
        "cpe",
        "ftth",
        "fios",
    }
)


@dataclass(slots=True)
class Check:
    id: str  # "ptr-ipv4", "spf:example.com", ...
    title: str
    status: str  # ok, warn, fail, skip
    detail: str  # one line: why
    fix: str = ""  # one line: what to do


@dataclass(slots=True)
class Plan:
    kind: str  # "direct", "relay-some", "relay-all"
    summary: str
    reasons: list[str] = field(default_factory=list)
    config: str = ""  # TOML to add to homemail.toml ("" when nothing changes)
    dns: list[str] = field(default_factory=list)  # DNS changes, one per line
    in_place: bool = False  # the configuration does this already


@dataclass(slots=True)
class Report:
    hostname: str
    domains: list[str]
    addresses: publicip.Found
    checks: list[Check]
    plan: Plan

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)


# --- helpers ---------------------------------------------------------------------------------------------------


def _family(ip: str) -> str:
    return f"ipv{ipaddress.ip_address(ip).version}"


def every_message_relayed(config: Config) -> RelayConfig | None:
    """The relay all mail goes through, when a [[route]] without domains or after_failures says so."""
    for route in config.route:
        if not route.domains:
            if route.after_failures == 0:
                return next(r for r in config.relay if r.name == route.relay)
            return None
    return None


def strict_providers_relayed(config: Config) -> bool:
    """Whether mail to every strict provider goes through a relay, at once or when refused (a route with
    after_failures: reputation refusals go to its relay at once, see homemail.delivery.reputation)."""
    return all(choose_relay(config, d, 1_000_000) is not None for d in config.doctor.strict_providers)


def residential_name(name: str, ip: str) -> tuple[str, str] | None:
    """(status, why) when a PTR name looks like an end-user address: dynamic words fail, the address's numbers
    alone (a generic name) warn; None when it looks like a server's own name."""
    name = name.lower().rstrip(".")
    tokens = {re.sub(r"^\d+|\d+$", "", t) for t in re.split(r"[^a-z0-9]+", name)}
    words = sorted(tokens & DYNAMIC_WORDS)
    if words:
        return FAIL, f"{name} looks like a dynamic or residential address ({', '.join(words)})"
    if _has_address_numbers(name, ip):
        return WARN, f"{name} is a generic name made of the address's numbers"
    return None


def _has_address_numbers(name: str, ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv4Address):
        octets = str(address).split(".")
        for order in (octets, octets[::-1]):
            if re.search(r"(?<!\d)" + r"\D{1,3}".join(order) + r"(?!\d)", name):
                return True
        return "".join(f"{int(o):03d}" for o in octets) in name or address.packed.hex() in name
    groups = [g.lstrip("0") or "0" for g in address.exploded.split(":")]
    compact = re.sub(r"[^0-9a-f]", "", name)
    return "".join(address.exploded.split(":")[4:]) in compact or "-".join(groups[4:]) in name


def _zone_name_matches(zone: str, suffix: str) -> bool:
    return zone == suffix or zone.endswith("." + suffix)


def _delist_hint(zone: str) -> str:
    for suffix, url in DELIST.items():
        if _zone_name_matches(zone, suffix):
            return url
    return f"the {zone} web site"


# --- the doctor ------------------------------------------------------------------------------------------------


class Doctor:
    def __init__(self, config: Config, store: Store, resolver: Resolver | None = None) -> None:
        self.config = config
        self.store = store
        self.resolver = resolver or Resolver(config.dns)
        self.hostname = public.public_hostname(config)
        self.timeout = config.doctor.timeout
        self.addresses: dict[str, str] = {}  # "ipv4"/"ipv6" -> the public address used by the checks
        self._zone_cache: dict[tuple[str, str], asyncio.Future[tuple[str, tuple[str, ...], str]]] = {}
        self._mitigated: set[str] = set()  # failures a configured relay routes around (now warnings)

    async def run(self, domain: str | None = None) -> Report:
        if domain:
            domains = [domain.strip().rstrip(".").lower()]
            if not await self.store.is_local_domain(domains[0]):
                raise LookupError(f"unknown domain {domains[0]}: add it first with 'homemail domain add'")
        else:
            domains = [d.name for d in await self.store.list_domains()]
        found = await publicip.detect(self.config, self.resolver)
        checks = self._public_ip_checks(found)

        groups: list[Awaitable[list[Check]]] = []
        for key, ip in self.addresses.items():
            groups.append(self._guard(f"reverse-dns-{key}", self._address_checks(key, ip)))
        groups.append(self._guard("port25", self._port25()))
        groups.append(self._guard("dbl", self._dbl([*domains, self.hostname])))
        groups.append(self._guard("address", self._hostname_addresses()))
        for d in domains:
            groups.append(self._guard(f"records:{d}", self._domain_checks(d)))
        groups.append(self._guard("tls", self._own_mx()))
        for result in await asyncio.gather(*groups):
            checks += result
        if not domains:
            checks.append(
                Check(
                    "domains",
                    "Mail domains",
                    WARN,
                    "no mail domains yet: nothing to check in DNS",
                    "add one with 'homemail domain add'",
                )
            )
        self._mitigate(checks)
        plan = self._plan(checks, domains)
        return Report(self.hostname, domains, found, checks, plan)

    async def _guard(self, name: str, work: Awaitable[list[Check]]) -> list[Check]:
        """A check group that raises or hangs turns into one warning instead of stopping the doctor."""
        try:
            async with asyncio.timeout(self.timeout * 4):
                return await work
        except TimeoutError:
            return [Check(name, name, WARN, f"could not finish within {self.timeout * 4:g} s")]
        except (DNSError, OSError, ProbeError, ValueError) as e:
            return [Check(name, name, WARN, f"could not check: {e}")]

    # --- public addresses ---

    def _public_ip_checks(self, found: publicip.Found) -> list[Check]:
        checks = []
        where = "[public] ipv4/ipv6" if found.source == "config" else found.source
        for key, configured in (("ipv4", self.config.public.ipv4), ("ipv6", self.config.public.ipv6)):
            seen: str | None = getattr(found, key)
            title = f"Public {key.replace('ip', 'IP')}"
            if seen is not None:
                self.addresses[key] = seen
                if configured is not None and configured != seen:
                    checks.append(
                        Check(
                            f"public-{key}",
                            title,
                            FAIL,
                            f"the world sees {seen}, but [public] {key} says {configured} (what 'homemail dns' "
                            "tells to publish)",
                            f'set [public] {key} = "{seen}", or turn on [dyndns] if the address changes',
                        )
                    )
                elif found.source == "config" and not ipaddress.ip_address(seen).is_global:
                    checks.append(
                        Check(
                            f"public-{key}", title, WARN, f"{seen} ([public] {key}) is not a public address"
                        )
                    )
                else:
                    checks.append(Check(f"public-{key}", title, OK, f"{seen} (from {where})"))
                continue
            why = found.errors.get(key, "not found")
            if configured is not None:
                self.addresses[key] = configured
                checks.append(
                    Check(
                        f"public-{key}",
                        title,
                        WARN,
                        f"could not confirm [public] {key} {configured}: {why}",
                        "check [public_ip] (source, url or stun)",
                    )
                )
            elif key == "ipv4":
                checks.append(
                    Check(
                        "public-ipv4",
                        title,
                        FAIL,
                        f"no public IPv4 address found: {why}",
                        "most mail hosts are reachable over IPv4 only: check [public_ip], or set [public] ipv4",
                    )
                )
            else:
                checks.append(Check("public-ipv6", title, SKIP, f"none ({why}); mail goes over IPv4"))
        return checks

    # --- per address: reverse DNS, residential, blocklists ---

    async def _zone(self, ip: str, zone: str) -> tuple[str, tuple[str, ...], str]:
        """("listed" | "clean" | "refused" | "error", codes, reason) of one blocklist for one address."""
        key = (ip, zone)
        if key not in self._zone_cache:
            self._zone_cache[key] = asyncio.ensure_future(self._ask_zone(dnsbl.query_name(ip, zone), zone))
        return await self._zone_cache[key]

    async def _ask_zone(self, name: str, zone: str) -> tuple[str, tuple[str, ...], str]:
        try:
            answers = [ipaddress.ip_address(r.address) for r in await self.resolver.query(name, "A")]
        except NotFound:
            return "clean", (), ""
        except TemporaryError as e:
            return "error", (), str(e)
        refused = tuple(str(a) for a in answers if a in dnsbl.REFUSED)
        codes = tuple(str(a) for a in answers if a in dnsbl.LISTED and a not in dnsbl.REFUSED)
        if not codes:
            return ("refused", refused, "") if refused else ("clean", (), "")
        reason = ""
        try:
            texts = await self.resolver.txt(name)
            if texts:
                reason = re.sub(r"[^\x20-\x7e]", "?", texts[0].decode("utf-8", "replace"))[:160]
        except DNSError:
            pass
        return "listed", codes, reason

    async def _address_checks(self, key: str, ip: str) -> list[Check]:
        label = key.replace("ip", "IP")
        rev, pbl, lists = await asyncio.gather(
            iprev.check(self.resolver, ip),
            self._zone(ip, self.config.doctor.pbl) if self.config.doctor.pbl else _clean(),
            self._dnsbl(key, ip),
        )
        checks: list[Check] = []
        host = self.hostname
        ask = f"ask your provider (whoever gave you {ip}) to set its reverse DNS (PTR) to {host}"
        if rev.result == "temperror" and not rev.ptr_names:
            checks.append(
                Check(f"ptr-{key}", f"Reverse DNS ({label})", WARN, f"PTR lookup failed: {rev.reason}")
            )
        elif not rev.ptr_names:
            checks.append(
                Check(
                    f"ptr-{key}",
                    f"Reverse DNS ({label})",
                    FAIL,
                    f"{ip} has no PTR record: Gmail, Microsoft and most others refuse or junk such mail",
                    ask,
                )
            )
        elif host in rev.ptr_names:
            checks.append(Check(f"ptr-{key}", f"Reverse DNS ({label})", OK, f"{ip} -> {host}"))
        else:
            checks.append(
                Check(
                    f"ptr-{key}",
                    f"Reverse DNS ({label})",
                    WARN,
                    f"{ip} -> {', '.join(rev.ptr_names)}, not {host} (the name homemail greets with)",
                    ask,
                )
            )
        if rev.result == "pass":
            confirmed = rev.name or ""
            status = OK if confirmed == host else WARN
            detail = f"{ip} -> {confirmed} -> {ip}" + (
                "" if status == OK else f" (confirmed, but not {host})"
            )
            checks.append(Check(f"fcrdns-{key}", f"Forward-confirmed reverse DNS ({label})", status, detail))
        elif rev.ptr_names:
            status = WARN if rev.result == "temperror" else FAIL
            checks.append(
                Check(
                    f"fcrdns-{key}",
                    f"Forward-confirmed reverse DNS ({label})",
                    status,
                    rev.reason or "the PTR name does not lead back to the address",
                    f"make {host} resolve to {ip} and {ask}",
                )
            )

        # Residential or dynamic: the PBL first, then the PTR names (other than our own host name).
        title = f"Residential or dynamic address ({label})"
        pbl_state, pbl_codes, _ = pbl
        pbl_hits = sorted(set(pbl_codes) & PBL_CODES) if pbl_state == "listed" else []
        names = [n for n in rev.ptr_names if n != host]
        by_name = [r for r in (residential_name(n, ip) for n in names) if r is not None]
        if pbl_hits:
            checks.append(
                Check(
                    f"residential-{key}",
                    title,
                    FAIL,
                    f"{ip} is in the Spamhaus PBL ({', '.join(pbl_hits)} from {self.config.doctor.pbl}): an "
                    "end-user range its provider says should not send mail directly",
                    "send through a relay (see the plan), or get a static address meant for servers",
                )
            )
        elif by_name:
            status, why = max(by_name, key=lambda r: r[0] == FAIL)
            checks.append(
                Check(
                    f"residential-{key}",
                    title,
                    status,
                    why,
                    ask
                    if status == WARN
                    else "send through a relay (see the plan), or get a business address",
                )
            )
        elif pbl_state in ("error", "refused"):
            checks.append(Check(f"residential-{key}", title, WARN, f"could not ask {self.config.doctor.pbl}"))
        else:
            checks.append(
                Check(f"residential-{key}", title, OK, "not in the PBL, no dynamic-looking PTR name")
            )
        checks.append(lists)
        return checks

    async def _dnsbl(self, key: str, ip: str) -> Check:
        zones = self.config.doctor.dnsbl
        title = f"Blocklists ({key.replace('ip', 'IP')})"
        if not zones:
            return Check(f"dnsbl-{key}", title, SKIP, "no [doctor] dnsbl zones")
        answers = await asyncio.gather(*(self._zone(ip, z) for z in zones))
        listed, refused, errors = [], [], []
        for zone, (state, codes, reason) in zip(zones, answers, strict=True):
            if state == "listed" and zone == self.config.doctor.pbl:
                codes = tuple(c for c in codes if c not in PBL_CODES)  # the residential check says those
                if not codes:
                    continue
            if state == "listed":
                listed.append((zone, codes, reason))
            elif state == "refused":
                refused.append(f"{zone} ({', '.join(codes)})")
            elif state == "error":
                errors.append(zone)
        if listed:
            detail = "; ".join(
                f"{zone} ({', '.join(codes)}{': ' + reason if reason else ''})"
                for zone, codes, reason in listed
            )
            fix = "find out why and ask for removal: " + ", ".join(
                dict.fromkeys(_delist_hint(z) for z, _, _ in listed)
            )
            return Check(f"dnsbl-{key}", title, FAIL, f"{ip} is listed: {detail}", fix)
        if refused:
            return Check(
                f"dnsbl-{key}",
                title,
                WARN,
                f"refused the query: {', '.join(refused)}",
                "blocklists refuse queries through public resolvers: point [dns] nameservers at your own",
            )
        if errors:
            return Check(f"dnsbl-{key}", title, WARN, f"no answer from {', '.join(errors)}")
        return Check(f"dnsbl-{key}", title, OK, f"{ip} is on none of {len(zones)} lists ({', '.join(zones)})")

    async def _dbl(self, names: list[str]) -> list[Check]:
        zones = self.config.doctor.dbl
        if not zones:
            return [Check("dbl", "Domain blocklists", SKIP, "no [doctor] dbl zones")]
        names = list(dict.fromkeys(names))
        listed, refused = [], []
        for name in names:
            answers = await asyncio.gather(*(self._ask_zone(f"{name}.{z}", z) for z in zones))
            for zone, (state, codes, reason) in zip(zones, answers, strict=True):
                # 127.0.1.255 from the DBL: "IP queries prohibited", not a listing.
                codes = tuple(c for c in codes if c != "127.0.1.255")
                if state == "listed" and codes:
                    listed.append(f"{name} on {zone} ({', '.join(codes)}{': ' + reason if reason else ''})")
                elif state == "refused":
                    refused.append(zone)
        if listed:
            return [
                Check(
                    "dbl",
                    "Domain blocklists",
                    FAIL,
                    "; ".join(listed),
                    "mail naming a listed domain is refused wherever it comes from: ask the list for removal "
                    + ", ".join(dict.fromkeys(_delist_hint(z) for z in zones)),
                )
            ]
        if refused:
            return [
                Check(
                    "dbl", "Domain blocklists", WARN, f"refused the query: {', '.join(sorted(set(refused)))}"
                )
            ]
        return [Check("dbl", "Domain blocklists", OK, f"{', '.join(names)}: on none of {', '.join(zones)}")]

    # --- outbound port 25 ---

    async def _port25(self) -> list[Check]:
        target = self.config.doctor.port25_probe
        title = "Outbound port 25"
        try:
            ips = await self.resolver.addresses(target.host, ipv4_only=self.config.delivery.ipv4_only)
        except DNSError as e:
            return [Check("port25", title, WARN, f"cannot look up {target.host}: {e}")]
        if not ips:
            return [Check("port25", title, WARN, f"{target.host} has no address")]
        ips.sort(key=lambda a: ":" in a)  # IPv4 first: what most of the world's mail goes over
        d = self.config.delivery
        probe = Probe(self.timeout)
        try:
            ip = ips[0]
            code, text = await probe.open(ip, target.port, d.source_ipv6 if ":" in ip else d.source_ipv4)
        except ProbeError as e:
            return [
                Check(
                    "port25",
                    title,
                    FAIL,
                    f"{target} [{ips[0]}]: {e}: your provider probably blocks outgoing port 25",
                    "ask the provider to open port 25, or send all mail through a relay (see the plan)",
                )
            ]
        finally:
            await probe.close()
        if code == 220:
            return [Check("port25", title, OK, f"{target} [{ip}] greets: {code} {text[:80]}")]
        return [
            Check(
                "port25",
                title,
                FAIL if code >= 500 else WARN,
                f"{target} [{ip}] connects but refuses us at the greeting: {code} {text[:120]}",
                "the address is blocked there: see the blocklist checks and the plan",
            )
        ]

    # --- DNS records of a domain, against what 'homemail dns' says ---

    async def _hostname_addresses(self) -> list[Check]:
        host = self.hostname
        out = []
        for key, rtype in (("ipv4", "A"), ("ipv6", "AAAA")):
            try:
                published = [r.address for r in await self.resolver.query(host, rtype)]
            except NotFound:
                published = []
            except TemporaryError as e:
                out.append(Check(f"address-{key}", f"{rtype} of {host}", WARN, f"lookup failed: {e}"))
                continue
            ip = self.addresses.get(key)
            title = f"{rtype} record of {host}"
            if ip is None:
                if published:
                    out.append(
                        Check(
                            f"address-{key}",
                            title,
                            FAIL if key == "ipv6" else WARN,
                            f"{host} has {rtype} {', '.join(published)}, but the server has no public {key} here",
                            f"remove the {rtype} record of {host}, or fix [public_ip]",
                        )
                    )
                continue
            if ip in published:
                extra = [a for a in published if a != ip]
                status = WARN if extra else OK
                detail = f"{host} -> {ip}" + (f" (and {', '.join(extra)})" if extra else "")
                out.append(Check(f"address-{key}", title, status, detail))
            else:
                found = ", ".join(published) or "nothing"
                out.append(
                    Check(
                        f"address-{key}",
                        title,
                        FAIL,
                        f"{host} -> {found}, not the public address {ip}",
                        f"publish {host}. {rtype} {ip}" + (" (or turn on [dyndns])" if published else ""),
                    )
                )
        return out

    async def _txt(self, name: str) -> list[str] | None:
        """The TXT texts at ``name`` ([] when none), None when the lookup failed for now."""
        try:
            return [t.decode("utf-8", "replace") for t in await self.resolver.txt(name)]
        except NotFound:
            return []
        except TemporaryError:
            return None

    def _as_seen(self) -> Config:
        """The configuration with the public addresses the world sees, for what 'homemail dns' says to publish."""
        seen = dataclasses.replace(
            self.config.public,
            ipv4=self.addresses.get("ipv4", self.config.public.ipv4),
            ipv6=self.addresses.get("ipv6", self.config.public.ipv6),
        )
        return dataclasses.replace(self.config, public=seen)

    async def _domain_checks(self, domain: str) -> list[Check]:
        expected = await records.domain_records(self._as_seen(), self.store, domain)
        domain = expected.domain
        by_type: dict[str, list[records.Record]] = {}
        for r in expected.records:
            by_type.setdefault(r.type, []).append(r)
        results = await asyncio.gather(
            self._mx(domain),
            self._spf(domain, next(r.value for r in expected.records if r.value.startswith("v=spf1"))),
            self._dkim(domain, [r for r in by_type.get("TXT", []) if "._domainkey." in r.name]),
            self._dmarc(domain, next(r.value for r in expected.records if r.name.startswith("_dmarc."))),
            self._mta_sts(domain),
            self._tls_rpt(domain),
        )
        return list(results)

    async def _mx(self, domain: str) -> Check:
        title = f"MX of {domain}"
        try:
            mx = await self.resolver.mx(domain)
        except NotFound:
            return Check(
                f"mx:{domain}", title, FAIL, f"{domain} does not exist in DNS", "register it, or fix DNS"
            )
        except TemporaryError as e:
            return Check(f"mx:{domain}", title, WARN, f"lookup failed: {e}")
        fix = f"publish {domain}. MX 10 {self.hostname}."
        hosts = [m.host for m in mx]
        if not mx:
            return Check(
                f"mx:{domain}", title, FAIL, "no MX record: senders try the domain's own address", fix
            )
        if self.hostname not in hosts:
            return Check(
                f"mx:{domain}", title, FAIL, f"mail goes to {', '.join(hosts) or 'nowhere (null MX)'}", fix
            )
        others = [h for h in hosts if h != self.hostname]
        return Check(
            f"mx:{domain}", title, OK, f"{self.hostname}" + (f" (and {', '.join(others)})" if others else "")
        )

    async def _spf(self, domain: str, suggested: str) -> Check:
        title = f"SPF of {domain}"
        texts = await self._txt(domain)
        if texts is None:
            return Check(f"spf:{domain}", title, WARN, "TXT lookup failed for now")
        found = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
        fix = f'publish {domain}. TXT "{suggested}"'
        if not found:
            return Check(
                f"spf:{domain}",
                title,
                FAIL,
                "no SPF record: receivers cannot tell our mail from forgeries",
                fix,
            )
        if len(found) > 1:
            return Check(f"spf:{domain}", title, FAIL, "several SPF records (a permerror everywhere)", fix)
        relayed = every_message_relayed(self.config)
        problems = []
        if relayed is None:
            for ip in self.addresses.values():
                result = await spf.check_host(self.resolver, ip, domain, f"postmaster@{domain}")
                if result.result != "pass":
                    problems.append(f"{result.result} for {ip}")
        needed = [f"include:{r.spf_include}" for r in self.config.relay if r.spf_include and self._routed(r)]
        missing = [i for i in needed if i.lower() not in found[0].lower().split()]
        if missing:
            problems.append(f"no {', '.join(missing)} for the relay")
        if problems:
            return Check(f"spf:{domain}", title, FAIL, f'"{found[0]}": {"; ".join(problems)}', fix)
        return Check(f"spf:{domain}", title, OK, f'"{found[0]}" passes for our addresses')

    def _routed(self, relay: RelayConfig) -> bool:
        return any(route.relay == relay.name for route in self.config.route)

    async def _dkim(self, domain: str, keys: list[records.Record]) -> Check:
        title = f"DKIM of {domain}"
        if not keys:
            return Check(
                f"dkim:{domain}",
                title,
                FAIL,
                "no DKIM keys: mail goes out unsigned",
                f"homemail dkim keygen {domain}",
            )
        bad, retired_missing, good = [], [], []
        for key in keys:
            selector = key.name.split("._domainkey.")[0]
            texts = await self._txt(key.name)
            want = _tag(key.value, "p")
            have = [_tag(t, "p") for t in (texts or []) if "p=" in t]
            active = "(signing key)" in key.purpose
            if texts is None:
                bad.append(f"{selector}: lookup failed")
            elif want in have:
                good.append(selector)
            elif active:
                bad.append(f"{selector}: {'another key is published' if have else 'not published'}")
            else:
                retired_missing.append(selector)
        if bad:
            return Check(
                f"dkim:{domain}",
                title,
                FAIL,
                "; ".join(bad),
                f"publish the records 'homemail dkim show {domain}' prints",
            )
        if retired_missing:
            return Check(
                f"dkim:{domain}",
                title,
                WARN,
                f"retired key(s) {', '.join(retired_missing)} not published: older mail no longer verifies",
                f"remove them with 'homemail dkim remove {domain} SELECTOR' once their mail is old",
            )
        return Check(f"dkim:{domain}", title, OK, f"published and matching: {', '.join(good)}")

    async def _dmarc(self, domain: str, suggested: str) -> Check:
        title = f"DMARC of {domain}"
        texts = await self._txt(f"_dmarc.{domain}")
        fix = f'publish _dmarc.{domain}. TXT "{suggested}"'
        if texts is None:
            return Check(f"dmarc:{domain}", title, WARN, "TXT lookup failed for now")
        found = [t for t in texts if t.replace(" ", "").lower().startswith("v=dmarc1")]
        if not found:
            return Check(
                f"dmarc:{domain}",
                title,
                WARN,
                "no DMARC record: Gmail and Yahoo ask every sender for one, and forgers go unchecked",
                fix,
            )
        if len(found) > 1:
            return Check(
                f"dmarc:{domain}", title, FAIL, "several DMARC records (receivers ignore them all)", fix
            )
        policy = _tag(found[0], "p")
        if policy not in ("none", "quarantine", "reject"):
            return Check(f"dmarc:{domain}", title, FAIL, f'"{found[0]}": no valid p= tag', fix)
        if policy == "none":
            return Check(
                f"dmarc:{domain}",
                title,
                WARN,
                f'"{found[0]}": p=none only asks for reports',
                "move to p=quarantine once the reports show only your own mail",
            )
        return Check(f"dmarc:{domain}", title, OK, f'"{found[0]}"')

    async def _mta_sts(self, domain: str) -> Check:
        title = f"MTA-STS of {domain}"
        texts = await self._txt(f"_mta-sts.{domain}")
        if texts is None:
            return Check(f"mta-sts:{domain}", title, WARN, "TXT lookup failed for now")
        raw = [t.encode() for t in texts]
        policy_id = parse_txt(raw)
        want_id = public.mta_sts_id(self.config)
        if not public.web_enabled(self.config):
            if policy_id is not None:
                return Check(
                    f"mta-sts:{domain}",
                    title,
                    FAIL,
                    "a _mta-sts record is published but homemail serves no policy (no listen.https/http)",
                    f"turn on listen.https, or remove _mta-sts.{domain}",
                )
            return Check(
                f"mta-sts:{domain}",
                title,
                WARN,
                "not published (optional: it makes senders use TLS to you)",
                "turn on listen.https and publish what 'homemail dns' prints",
            )
        fix = f'publish _mta-sts.{domain}. TXT "v=STSv1; id={want_id}"'
        if policy_id is None:
            what = (
                "no valid _mta-sts record" if any(r.startswith(b"v=STSv1") for r in raw) else "not published"
            )
            return Check(f"mta-sts:{domain}", title, WARN, what, fix)
        d = self.config.delivery
        fetcher = MTASTS(self.resolver, d.mta_sts_port, d.mta_sts_cafile, timeout=self.timeout)
        try:
            text = await fetcher._fetch(domain)
            served = parse_policy(text, policy_id, 0)
        except (OSError, ValueError, UnicodeDecodeError, DNSError) as e:
            return Check(
                f"mta-sts:{domain}",
                title,
                FAIL,
                f"the policy at https://mta-sts.{domain}/.well-known/mta-sts.txt cannot be fetched: {e}",
                f"mta-sts.{domain} must reach this server's https listener with a certificate for that name",
            )
        expected = parse_policy(public.mta_sts_policy(self.config), policy_id, 0)
        if (served.mode, served.mx, served.max_age) != (expected.mode, expected.mx, expected.max_age):
            return Check(
                f"mta-sts:{domain}",
                title,
                FAIL,
                f"the served policy (mode {served.mode}, mx {', '.join(served.mx)}) is not homemail's",
                f"mta-sts.{domain} must point at this server",
            )
        if policy_id != want_id:
            return Check(
                f"mta-sts:{domain}",
                title,
                WARN,
                f"id {policy_id} is not the current policy's ({want_id}): senders keep an old copy",
                fix,
            )
        if served.mode == "none":
            return Check(f"mta-sts:{domain}", title, WARN, "mode none: the policy is withdrawn")
        if not served.allows(self.hostname):
            return Check(
                f"mta-sts:{domain}", title, FAIL, f"the policy's mx patterns leave out {self.hostname}"
            )
        return Check(f"mta-sts:{domain}", title, OK, f"mode {served.mode}, id {policy_id}, served over HTTPS")

    async def _tls_rpt(self, domain: str) -> Check:
        title = f"TLS-RPT of {domain}"
        texts = await self._txt(f"_smtp._tls.{domain}")
        rua = public.report_address(self.config.public.tls_reports, domain)
        fix = f'publish _smtp._tls.{domain}. TXT "v=TLSRPTv1; rua=mailto:{rua}"'
        if texts is None:
            return Check(f"tls-rpt:{domain}", title, WARN, "TXT lookup failed for now")
        found = [t for t in texts if t.replace(" ", "").startswith("v=TLSRPTv1")]
        if not found:
            return Check(
                f"tls-rpt:{domain}", title, WARN, "not published (optional: reports of TLS failures)", fix
            )
        if len(found) > 1 or "rua=" not in found[0]:
            return Check(f"tls-rpt:{domain}", title, FAIL, f"not valid: {'; '.join(found)}", fix)
        return Check(f"tls-rpt:{domain}", title, OK, f'"{found[0]}"')

    # --- our MX as the world sees it: certificate, open relay ---

    async def _own_mx(self) -> list[Check]:
        host = self.hostname
        port = self.config.delivery.smtp_port
        try:
            ips = await self.resolver.addresses(host)
        except DNSError as e:
            return [Check("tls", "TLS certificate", WARN, f"cannot look up {host}: {e}")]
        public_ips = set(self.addresses.values())
        ips.sort(key=lambda a: (a not in public_ips, ":" in a))
        if not ips:
            why = f"{host} has no address: cannot reach our own MX"
            return [Check("tls", "TLS certificate", FAIL, why), Check("open-relay", "Open relay", SKIP, why)]
        ip = ips[0]
        tls_check = await self._certificate(ip, port)
        relay_check = await self._open_relay(ip, port)
        return [tls_check, relay_check]

    async def _session(self, ip: str, port: int) -> tuple[Probe, list[str]]:
        probe = Probe(self.timeout)
        try:
            code, text = await probe.open(ip, port)
            if code != 220:
                raise ProbeError(f"greeting {code} {text[:100]}")
            code, keywords = await probe.ehlo(self.hostname)
            if code != 250:
                raise ProbeError(f"EHLO answered {code}")
        except BaseException:
            await probe.close()
            raise
        return probe, keywords

    async def _certificate(self, ip: str, port: int) -> Check:
        host = self.hostname
        title = "TLS certificate"
        where = f"{host} [{ip}]:{port}"
        cafile = self.config.delivery.tls_cafile
        verifying = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        problem = ""
        der = b""
        try:
            probe, keywords = await self._session(ip, port)
        except ProbeError as e:
            return Check(
                "tls",
                title,
                FAIL,
                f"cannot reach our MX at {where}: {e}",
                "is homemail running, port 25 open?",
            )
        try:
            if "STARTTLS" not in keywords:
                return Check(
                    "tls", title, FAIL, f"{where} offers no STARTTLS", "turn on TLS ([tls] cert and key)"
                )
            try:
                await probe.starttls(verifying, host)
            except ProbeError as e:
                return Check("tls", title, FAIL, f"{where}: {e}")
            except ssl.SSLCertVerificationError as e:
                problem = e.verify_message or str(e)
            except (ssl.SSLError, OSError) as e:
                return Check("tls", title, FAIL, f"TLS handshake with {where} failed: {e}")
            if probe.ssl_object is not None:
                der = probe.ssl_object.getpeercert(binary_form=True) or b""
        finally:
            await probe.close()
        if problem:
            # Once more without verification, for the certificate's names and dates.
            unverified = ssl.create_default_context()
            unverified.check_hostname = False
            unverified.verify_mode = ssl.CERT_NONE
            try:
                probe, _ = await self._session(ip, port)
                try:
                    await probe.starttls(unverified, host)
                    if probe.ssl_object is not None:
                        der = probe.ssl_object.getpeercert(binary_form=True) or b""
                finally:
                    await probe.close()
            except (ProbeError, ssl.SSLError, OSError):
                pass
        names, not_after = _certificate_facts(der)
        left = (not_after - dt.datetime.now(dt.UTC)) if not_after else None
        facts = f"names {', '.join(names) or '?'}" + (
            f", valid until {not_after:%Y-%m-%d}" if not_after else ""
        )
        if left is not None and left.total_seconds() <= 0:
            return Check("tls", title, FAIL, f"expired ({facts})", "renew the certificate")
        if problem:
            status = (
                FAIL if self.config.mta_sts.mode == "enforce" and public.web_enabled(self.config) else WARN
            )
            return Check(
                "tls",
                title,
                status,
                f"not trusted: {problem} ({facts})",
                f"use a certificate from a public CA (e.g. Let's Encrypt) covering {host} in [tls]",
            )
        if left is not None and left.days < CERT_WARN_DAYS:
            return Check(
                "tls", title, WARN, f"expires in {left.days} days ({facts})", "renew the certificate"
            )
        return Check("tls", title, OK, f"trusted, {facts}")

    async def _open_relay(self, ip: str, port: int) -> Check:
        title = "Open relay"
        where = f"{self.hostname} [{ip}]:{port}"
        try:
            probe, _ = await self._session(ip, port)
        except ProbeError as e:
            return Check("open-relay", title, WARN, f"cannot reach our MX at {where}: {e}")
        first_domain = next(iter(d.name for d in await self.store.list_domains()), self.hostname)
        tries = [
            f"postmaster@{FOREIGN_DOMAIN}",
            f"postmaster%{FOREIGN_DOMAIN}@{first_domain}",
            f'"postmaster@{FOREIGN_DOMAIN}"@{first_domain}',
        ]
        accepted, deferred = [], []
        try:
            code, text = await probe.command("MAIL FROM:<>")
            if code != 250:
                return Check("open-relay", title, WARN, f"MAIL FROM:<> answered {code} {text[:100]}")
            for rcpt in tries:
                code, text = await probe.command(f"RCPT TO:<{rcpt}>")
                if 200 <= code < 300:
                    accepted.append(rcpt)
                elif code < 500:
                    deferred.append(f"{rcpt}: {code} {text[:60]}")
            await probe.command("RSET")
        except ProbeError as e:
            return Check("open-relay", title, WARN, f"the test did not finish: {e}")
        finally:
            await probe.close()
        if accepted:
            return Check(
                "open-relay",
                title,
                FAIL,
                f"{where} accepted mail for elsewhere from an outsider: {', '.join(accepted)}",
                "an open relay is abused and blocklisted within hours: stop the server and fix this first",
            )
        if deferred:
            return Check("open-relay", title, WARN, f"not refused for sure: {'; '.join(deferred)}")
        return Check(
            "open-relay", title, OK, f"{where} refuses to relay for an outsider ({len(tries)} tries)"
        )

    # --- verdict and plan ---

    def _mitigate(self, checks: list[Check]) -> None:
        """Address problems a configured relay routes around are warnings: they no longer hold mail back."""
        relay = every_message_relayed(self.config)
        strict = strict_providers_relayed(self.config)
        for c in checks:
            if c.status != FAIL:
                continue
            kind = c.id.split("-")[0]
            if relay is not None and kind in ("port25", "ptr", "fcrdns", "residential", "dnsbl"):
                c.detail += f" (every message goes through relay {relay.name}: this holds none back)"
            elif strict and kind in ("ptr", "fcrdns", "residential"):
                c.detail += " (the providers that refuse such mail get it through a relay)"
            else:
                continue
            c.status = WARN
            self._mitigated.add(c.id)

    def _plan(self, checks: list[Check], domains: list[str]) -> Plan:
        def problems(*kinds: str) -> list[Check]:
            return [
                c
                for c in checks
                if c.id.split("-")[0] in kinds and (c.status == FAIL or c.id in self._mitigated)
            ]

        relay_all = problems("port25", "dnsbl")
        relay_some = problems("ptr", "fcrdns", "residential")
        if relay_all:
            plan = Plan(
                "relay-all",
                "send all mail through a relay",
                [f"{c.title}: {c.detail}" for c in relay_all],
            )
        elif relay_some:
            plan = Plan(
                "relay-some",
                "send through a relay only to the providers that will refuse you; the rest directly",
                [f"{c.title}: {c.detail}" for c in relay_some],
            )
        else:
            plan = Plan("direct", "deliver directly")
        self._plan_changes(plan, checks, domains)
        return plan

    def _plan_changes(self, plan: Plan, checks: list[Check], domains: list[str]) -> None:
        config = self.config
        existing = config.relay[0] if config.relay else None
        name = existing.name if existing else "smarthost"
        relay_lines = (
            []
            if existing
            else [
                "[[relay]]",
                f'name = "{name}"',
                'host = "smtp.relay.example"          # your relay provider\'s submission host',
                "port = 587",
                'username = "your-login"',
                'password_file = "/etc/homemail/relay-password"',
                'spf_include = "spf.relay.example"    # the SPF domain the provider tells you to include',
            ]
        )
        route_lines: list[str] = []
        new_routes: list[RouteConfig] = []
        if plan.kind == "relay-all":
            plan.in_place = every_message_relayed(config) is not None
            new_routes = [RouteConfig(relay=name)]
            route_lines = ["[[route]]", f'relay = "{name}"']
        elif plan.kind == "relay-some":
            plan.in_place = strict_providers_relayed(config)
            strict = config.doctor.strict_providers
            new_routes = [
                RouteConfig(relay=name, domains=list(strict)),
                RouteConfig(relay=name, after_failures=3),
            ]
            route_lines = [
                "# the providers that refuse mail from this address: through the relay",
                "[[route]]",
                f'relay = "{name}"',
                "domains = [" + ", ".join(f'"{d}"' for d in strict) + "]",
                "",
                "# everyone else: directly; a refusal for the address's reputation, or 3 failed tries: the relay",
                "[[route]]",
                f'relay = "{name}"',
                "after_failures = 3",
            ]
        if plan.in_place:
            plan.config = ""
            plan.summary += " (configured already)"
        elif route_lines:
            plan.config = "\n".join([*relay_lines, *([""] if relay_lines else []), *route_lines]) + "\n"
        if plan.kind == "direct" and not config.warmup.enabled:
            plan.config = (
                "# optional, for an address new to sending: ramp up the volume to each big provider\n"
                f'[warmup]\nenabled = true\nstart = "{dt.date.today().isoformat()}"\n'
            )
        # DNS: the SPF record the plan needs (from 'homemail dns'), the PTR to ask for.
        if not plan.in_place and new_routes:
            relays = list(config.relay) or [
                RelayConfig(
                    name=name,
                    host="smtp.relay.example",
                    username="your-login",
                    password="-",
                    spf_include="spf.relay.example",
                )
            ]
            planned = dataclasses.replace(config, relay=relays, route=new_routes)
            addresses = public.PublicAddresses(self.addresses.get("ipv4"), self.addresses.get("ipv6"))
            spf_text, _ = records.spf_record(planned, addresses)
            for d in domains:
                plan.dns.append(f'{d}. TXT "{spf_text}"  (SPF: replaces the current one)')
        for c in checks:
            if c.id.startswith("spf:") and plan.dns and not plan.in_place and new_routes:
                continue  # the plan's SPF record above replaces it
            if c.status == FAIL and c.fix.startswith("publish "):
                plan.dns.append(c.fix[len("publish ") :])
        if plan.kind != "relay-all":
            for c in checks:
                if c.id.startswith("ptr-") and c.status in (FAIL, WARN) and c.fix:
                    plan.dns.append(c.fix[0].upper() + c.fix[1:])
        plan.dns = list(dict.fromkeys(plan.dns))


async def _clean() -> tuple[str, tuple[str, ...], str]:
    return "clean", (), ""


def _tag(record: str, name: str) -> str:
    """A tag's value in a tag=value; list (DKIM, DMARC); "" when absent."""
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == name:
            return re.sub(r"\s+", "", value) if name == "p" else value.strip().lower()
    return ""


def _certificate_facts(der: bytes) -> tuple[list[str], dt.datetime | None]:
    if not der:
        return [], None
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return [], None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names, cert.not_valid_after_utc


# --- output ----------------------------------------------------------------------------------------------------


def as_json(report: Report) -> dict[str, Any]:
    return {
        "hostname": report.hostname,
        "domains": report.domains,
        "addresses": {
            "ipv4": report.addresses.ipv4,
            "ipv6": report.addresses.ipv6,
            "source": report.addresses.source,
            "errors": report.addresses.errors,
        },
        "checks": [dataclasses.asdict(c) for c in report.checks],
        "verdict": dataclasses.asdict(report.plan),
        "failed": report.failed,
    }


def text(report: Report) -> str:
    lines = [
        f"homemail doctor: {report.hostname}" + (f" ({', '.join(report.domains)})" if report.domains else "")
    ]
    lines.append("")
    width = max((len(c.title) for c in report.checks), default=10)
    for c in report.checks:
        lines.append(f"  {c.status.upper():<4}  {c.title:<{width}}  {c.detail}")
        if c.fix and c.status in (FAIL, WARN):
            lines.append(f"  {'':<4}  {'':<{width}}  -> {c.fix}")
    plan = report.plan
    lines += ["", f"Verdict: {plan.summary}."]
    lines += [f"  because {r}" for r in plan.reasons]
    if plan.config:
        lines += ["", "Add to the configuration file:", ""]
        lines += [f"    {line}" if line else "" for line in plan.config.rstrip("\n").split("\n")]
    if plan.dns:
        lines += ["", "DNS:"]
        lines += [f"  - {d}" for d in plan.dns]
    counts = {s: sum(c.status == s for c in report.checks) for s in (OK, WARN, FAIL)}
    lines += ["", f"{counts[OK]} ok, {counts[WARN]} warnings, {counts[FAIL]} failed"]
    return "\n".join(lines) + "\n"


async def run(config: Config, store: Store, domain: str | None = None) -> Report:
    return await Doctor(config, store).run(domain)
