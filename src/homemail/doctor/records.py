"""The DNS records a mail domain needs, as this server's configuration and store say they should be.

:func:`domain_records` gathers them; :func:`zone_text`, :func:`table_text` and :func:`as_json` render them
(``homemail dns DOMAIN``). The zone text is valid zone-file syntax (absolute names, TXT values split into
strings of at most 255 characters, RFC 1035 5.1 / 3.3.14); a value that only the user can supply (a public
address not configured) is written as a comment, not as a record.

What is published, and why:
- MX of the domain -> the public host name; A/AAAA of that name (``[public] ipv4``/``ipv6``).
- SPF (RFC 7208): ``mx`` plus the server's public and outgoing addresses, ``include:`` of the relays that carry
  mail (``spf_include`` of a ``[[relay]]``); only the relay's include when every message goes through it.
- DKIM (RFC 6376): every key in the store, signing or retired (a retired key stays published for the mail it
  signed until it is removed).
- DMARC (RFC 7489) with reports to a mailbox of the domain itself (no outside authorisation record needed).
- MTA-STS (RFC 8461): the ``_mta-sts`` TXT record whose id is a hash of the policy served by the web
  listener, and ``mta-sts.<domain>`` pointing at this server; TLS-RPT (RFC 8460) ``_smtp._tls``.
- SRV (RFC 6186, RFC 8314 for submissions): implicit TLS preferred over STARTTLS; a service not offered gets
  the "decidedly not available" record (port 0, target ".", RFC 2782).
- ``autoconfig``/``autodiscover`` names for mail clients, when the web listener is on.
- The PTR (reverse DNS) is not the domain owner's to publish: a note says what to ask the provider for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from homemail import addresses as addr
from homemail import public
from homemail.config import Config
from homemail.mailauth import dkim
from homemail.store import Store

TTL = 3600


@dataclass(frozen=True, slots=True)
class Record:
    name: str  # absolute, with the trailing dot
    type: str
    value: str  # TXT: the text itself; others: the RDATA in zone syntax
    purpose: str
    placeholder: bool = False  # the value is for the user to fill in: written as a comment in zone text

    @property
    def rdata(self) -> str:
        return txt_rdata(self.value) if self.type == "TXT" else self.value


@dataclass(slots=True)
class DomainRecords:
    domain: str
    hostname: str
    records: list[Record] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def txt_rdata(text: str) -> str:
    """TXT RDATA: quoted character-strings of at most 255 octets each, in parentheses when there are several."""
    data = text.encode("utf-8")
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    quoted = []
    for chunk in chunks:
        s = ""
        for b in chunk:
            c = chr(b)
            if c in '"\\':
                s += "\\" + c
            elif 0x20 <= b < 0x7F:
                s += c
            else:
                s += f"\\{b:03d}"
        quoted.append(f'"{s}"')
    return quoted[0] if len(quoted) == 1 else "( " + " ".join(quoted) + " )"


def _fqdn(name: str) -> str:
    return name.rstrip(".") + "."


def spf_record(config: Config, addresses: public.PublicAddresses) -> tuple[str, list[str]]:
    """The SPF policy text, and notes about it."""
    notes: list[str] = []
    relays = {r.name: r for r in config.relay}
    includes: list[str] = []
    for name in dict.fromkeys(r.relay for r in config.route):
        include = relays[name].spf_include.strip()
        if include:
            includes.append(f"include:{include}")
        else:
            notes.append(
                f"SPF: mail goes out through relay {name!r}, which has no spf_include: ask the relay provider for "
                "its SPF domain, set spf_include in its [[relay]] section, and run this again"
            )
    every_message_relayed = any(not r.domains and r.after_failures == 0 for r in config.route)
    terms: list[str] = []
    if not every_message_relayed or not includes:
        # This server sends mail itself: its MX host, and the addresses mail leaves from.
        terms.append("mx")
        v4 = dict.fromkeys(a for a in (addresses.ipv4, config.delivery.source_ipv4) if a)
        v6 = dict.fromkeys(a for a in (addresses.ipv6, config.delivery.source_ipv6) if a)
        terms += [f"ip4:{a}" for a in v4] + [f"ip6:{a}" for a in v6]
    return "v=spf1 " + " ".join([*terms, *dict.fromkeys(includes), "-all"]), notes


async def domain_records(config: Config, store: Store, domain: str) -> DomainRecords:
    """Every record to publish for ``domain`` (a local domain; LookupError otherwise)."""
    given = domain.strip().rstrip(".").lower()
    if not await store.is_local_domain(given):
        raise LookupError(f"unknown domain {given}: add it first with 'homemail domain add'")
    unicode_name = addr.normalize_domain(given)
    domain = addr.domain_ascii(unicode_name)  # DNS names are A-labels (an IDN domain is xn--...)
    host = public.public_hostname(config)
    d, h = _fqdn(domain), _fqdn(host)
    out = DomainRecords(domain, host)
    add = out.records.append
    addresses = await public.public_addresses(config)

    add(Record(d, "MX", f"10 {h}", f"mail for {domain} is delivered to {host}"))
    for rtype, address, what in (("A", addresses.ipv4, "IPv4"), ("AAAA", addresses.ipv6, "IPv6")):
        if address:
            add(Record(h, rtype, address, f"the {what} address of {host}"))
        elif rtype == "A":
            add(Record(h, "A", "<your public IPv4>", f"the {what} address of {host}", placeholder=True))
            out.notes.append(
                f"Set [public] ipv4 (and ipv6, if the server has one) to fill in the A/AAAA records of {host}."
            )

    spf, notes = spf_record(config, addresses)
    add(Record(d, "TXT", spf, "SPF: the hosts that may send mail from this domain"))
    out.notes += notes

    keys = list(
        {
            k.selector: k for name in {given, unicode_name, domain} for k in await store.dkim_keys(name)
        }.values()
    )
    for key in keys:
        state = "signing key" if key.active else "retired key, keep until its mail is old, then remove"
        add(
            Record(
                f"{key.selector}._domainkey.{d}",
                "TXT",
                dkim.dns_record(key.private_key),
                f"DKIM {key.algorithm} ({state})",
            )
        )
    if not keys:
        out.notes.append(
            f"No DKIM keys yet: create them with 'homemail dkim keygen {domain}' and run this again."
        )

    dmarc_rua = public.report_address(config.public.dmarc_reports, domain)
    add(
        Record(
            f"_dmarc.{d}",
            "TXT",
            f"v=DMARC1; p={config.public.dmarc_policy}; rua=mailto:{dmarc_rua}",
            "DMARC: what receivers do with mail that fails SPF and DKIM, where their reports go",
        )
    )
    tls_rua = public.report_address(config.public.tls_reports, domain)
    if public.web_enabled(config):
        add(
            Record(
                f"_mta-sts.{d}",
                "TXT",
                f"v=STSv1; id={public.mta_sts_id(config)}",
                f"MTA-STS: senders must use TLS to {host} ({config.mta_sts.mode} mode); the id follows the policy",
            )
        )
        add(Record(f"mta-sts.{d}", "CNAME", h, "MTA-STS: where senders fetch the policy (over HTTPS)"))
        if config.listen.https is None:
            out.notes.append(
                "MTA-STS: senders fetch https://mta-sts."
                f"{domain}/.well-known/mta-sts.txt on port 443: put a TLS proxy in front of listen.http or "
                "turn on listen.https, with a certificate that covers that name."
            )
        else:
            out.notes.append(
                f"MTA-STS: the certificate served on port 443 must cover mta-sts.{domain} (and autoconfig.{domain})."
            )
    else:
        out.notes.append(
            "MTA-STS: turn on listen.https (or listen.http behind a TLS proxy) to publish a policy."
        )
    add(
        Record(f"_smtp._tls.{d}", "TXT", f"v=TLSRPTv1; rua=mailto:{tls_rua}", "TLS-RPT: where TLS reports go")
    )

    for service, label, implicit in public.CLIENT_SERVICES:
        port = public.public_port(config, service)
        if port is None:
            add(Record(f"{label}.{d}", "SRV", "0 0 0 .", f"{service}: not offered (RFC 6186)"))
            continue
        how = "implicit TLS" if implicit else "STLS" if service == "pop3" else "STARTTLS"
        priority = 0 if implicit else 10  # RFC 8314 5.1: implicit TLS first
        add(Record(f"{label}.{d}", "SRV", f"{priority} 1 {port} {h}", f"{service} ({how}) for mail clients"))

    if public.web_enabled(config):
        add(Record(f"autoconfig.{d}", "CNAME", h, "Thunderbird autoconfiguration"))
        add(Record(f"autodiscover.{d}", "CNAME", h, "Outlook Autodiscover"))

    for address in (dmarc_rua, tls_rua):
        if address.endswith("@" + domain) and await store.resolve(address) is None:
            out.notes.append(
                f"Reports go to {address}, which does not exist yet: create it with 'homemail user add' or "
                f"'homemail alias add {address} <you>@{domain}'."
            )
    known = [a for a in (addresses.ipv4, addresses.ipv6) if a]
    for address in known:
        out.notes.append(f"Ask your provider to set the reverse DNS (PTR) of {address} to {host}.")
    if not known:
        out.notes.append(
            f"Ask your provider to set the reverse DNS (PTR) of your public IP address(es) to {host}."
        )
    return out


def zone_text(dr: DomainRecords) -> str:
    width = max((len(r.name) for r in dr.records), default=0)
    lines = [f"; DNS records for {dr.domain} (homemail dns)"]
    for r in dr.records:
        line = f"{r.name:<{width}} {TTL} IN {r.type:<5} {r.rdata}"
        lines.append(f"; {line}  ; fill in" if r.placeholder else line)
    lines += [f"; {note}" for note in dr.notes]
    return "\n".join(lines) + "\n"


def table_text(dr: DomainRecords) -> str:
    rows = [(r.name, r.type, r.value, r.purpose) for r in dr.records]
    widths = [max(len(row[i]) for row in [("NAME", "TYPE", "VALUE", "FOR"), *rows]) for i in range(2)]
    lines = []
    for name, rtype, value, purpose in [("NAME", "TYPE", "VALUE", "FOR"), *rows]:
        lines.append(f"{name:<{widths[0]}}  {rtype:<{widths[1]}}  {value}")
        if name != "NAME":
            lines.append(f"{'':<{widths[0]}}  {'':<{widths[1]}}  -> {purpose}")
    if dr.notes:
        lines.append("")
        lines += [f"* {note}" for note in dr.notes]
    return "\n".join(lines) + "\n"


def as_json(dr: DomainRecords) -> dict[str, Any]:
    return {
        "domain": dr.domain,
        "hostname": dr.hostname,
        "ttl": TTL,
        "records": [{**asdict(r), "rdata": r.rdata} for r in dr.records],
        "notes": dr.notes,
    }
