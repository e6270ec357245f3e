"""DMARC (RFC 7489): does the From: domain's owner vouch for this message, and what does it ask us to do if not?

The pieces are separate so each can be tested alone: :func:`author_domains` (the RFC5322.From domains),
:func:`organizational_domain` (the public suffix list bundled with ``publicsuffixlist``; never fetched at run
time), :func:`parse_record`, :func:`discover` (the DNS part), :func:`evaluate` (alignment and policy, no I/O) and
:func:`check` (all of it).

Rules (section numbers are RFC 7489):
- Policy discovery (6.6.3): TXT records at ``_dmarc.<From domain>`` that start with ``v=DMARC1``; none there: the
  same at ``_dmarc.<organizational domain>`` when that differs. More than one record, or none at either place:
  no policy, result ``none``. NXDOMAIN is "no record". A DNS failure is ``temperror``.
- A record with a bad ``p=`` (or ``sp=``) counts as ``p=none`` when it has a ``rua=`` (6.6.3 step 6), else as no
  record. Unknown tags are ignored (6.3); bad ``adkim``/``aspf``/``pct`` fall back to their defaults.
- Organizational domain (3.2): the public suffix plus one label; a name that is itself a public suffix is its own.
- Alignment (3.1): relaxed (the default) when both domains have the same organizational domain, strict when they
  are equal. DKIM: any ``pass`` signature whose ``d=`` aligns. SPF: a ``pass`` for the MAIL FROM domain (for the
  null reverse-path that is the HELO name, RFC 7208 2.4) that aligns.
- Result: ``pass`` when either aligns; else ``temperror`` when an aligned DKIM signature or the aligned SPF check
  could not be evaluated for a DNS failure (the outcome is open); else ``fail``.
- Policy (6.3, 6.6.4): ``p=`` for the From domain itself, ``sp=`` (default ``p=``) when the record was found at the
  organizational domain for a subdomain. ``pct=`` samples: a failing message outside the sample is handled one
  step softer (reject -> quarantine, quarantine -> none).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from homemail.dns import NotFound, Resolver, TemporaryError
from homemail.mailauth.dkimverify import DKIMResult, dns_name_ok

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

POLICIES = ("none", "quarantine", "reject")
RESULTS = ("pass", "fail", "none", "temperror", "permerror")


@functools.cache
def _psl() -> PublicSuffixList:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the registered domain (public suffix + one label); a public suffix itself is returned as is."""
    domain = domain.rstrip(".").lower()
    return _psl().privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: str) -> bool:
    """RFC 7489 3.1.1/3.1.2: strict ("s") means equal, relaxed ("r") the same organizational domain."""
    a, b = a.rstrip(".").lower(), b.rstrip(".").lower()
    if a == b:
        return True
    return mode != "s" and organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True, slots=True)
class Record:
    """A DMARC policy record (RFC 7489 6.3)."""

    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    text: str = ""


def parse_record(text: str) -> Record | None:
    """The record, or None when it is not a usable DMARC record (6.6.3 steps 2 and 6)."""
    parts = [p.strip() for p in text.split(";")]
    if not parts or not re.fullmatch(r"v\s*=\s*DMARC1", parts[0]):
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq:
            continue
        name = name.strip().lower()
        if name not in tags:
            tags[name] = value.strip()
    p = tags.get("p", "").lower()
    sp = tags.get("sp", p).lower()
    if p not in POLICIES or sp not in POLICIES:
        if re.search(r"mailto:[^,\s]+@", tags.get("rua", ""), re.I):
            p = sp = "none"
        else:
            return None
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return Record(
        p=p,
        sp=sp,
        adkim=adkim if adkim in ("r", "s") else "r",
        aspf=aspf if aspf in ("r", "s") else "r",
        pct=min(max(pct, 0), 100),
        text=text,
    )


@dataclass(frozen=True, slots=True)
class Discovery:
    record: Record | None
    domain: str = ""  # where the record was found
    error: str = ""  # a DNS failure: the outcome is temperror


async def _records_at(resolver: Resolver, domain: str) -> list[str]:
    try:
        answers = await resolver.txt(f"_dmarc.{domain}")
    except NotFound:
        return []
    texts = [a.decode("utf-8", "replace") for a in answers]
    return [t for t in texts if re.match(r"v\s*=\s*DMARC1\s*(;|$)", t)]


async def discover(resolver: Resolver, from_domain: str) -> Discovery:
    """6.6.3: the policy record for ``from_domain``."""
    org = organizational_domain(from_domain)
    try:
        found = await _records_at(resolver, from_domain)
        where = from_domain
        if not found and org != from_domain:
            found = await _records_at(resolver, org)
            where = org
    except TemporaryError as e:
        return Discovery(None, error=str(e))
    if len(found) != 1:
        return Discovery(None)
    return Discovery(parse_record(found[0]), where)


@dataclass(frozen=True, slots=True)
class DMARCResult:
    result: str  # one of RESULTS
    from_domain: str
    policy: str = "none"  # the policy the record asks for this domain (p= or sp=), "none" without a record
    disposition: str = "none"  # what to do: none, quarantine, reject (after pct)
    record_domain: str = ""  # where the record was found
    record: Record | None = None
    dkim_domain: str = ""  # the aligned DKIM d= that passed
    spf_domain: str = ""  # the aligned SPF domain that passed
    sampled_out: bool = False  # pct= spared this message from the policy
    reason: str = ""
    open: bool = False  # temperror that an answer could turn into a refusal: try again later

    @property
    def comment(self) -> str:
        """The Authentication-Results comment, in the form common receivers use."""
        if self.record is None:
            return self.reason
        parts = [f"p={self.record.p}", f"sp={self.record.sp}", f"dis={self.disposition}"]
        if self.record.pct != 100:
            parts.append(f"pct={self.record.pct}")
        if self.sampled_out:
            parts.append("sampled_out")
        return " ".join(parts)


def evaluate(
    from_domain: str,
    discovery: Discovery,
    dkim: Sequence[DKIMResult],
    spf_result: str | None,
    spf_domain: str | None,
    sample: Callable[[], float] = random.random,
) -> DMARCResult:
    """Alignment and policy (3.1, 6.3, 6.6.2, 6.6.4) for one author domain; no I/O."""
    from_domain = from_domain.rstrip(".").lower()
    if discovery.error:
        # The policy is unknown; but a pass aligned even strictly passes under any record there may be.
        settled = any(s.result == "pass" and s.domain == from_domain for s in dkim) or (
            spf_result == "pass" and (spf_domain or "").lower() == from_domain
        )
        return DMARCResult(
            "temperror", from_domain, reason=f"DNS failure: {discovery.error}", open=not settled
        )
    record = discovery.record
    if record is None:
        return DMARCResult("none", from_domain, reason="no DMARC record")
    policy = record.p if discovery.domain == from_domain else record.sp
    common: dict[str, Any] = {"policy": policy, "record_domain": discovery.domain, "record": record}
    for sig in dkim:
        if sig.result == "pass" and aligned(sig.domain, from_domain, record.adkim):
            return DMARCResult("pass", from_domain, dkim_domain=sig.domain, **common)
    if spf_result == "pass" and spf_domain and aligned(spf_domain, from_domain, record.aspf):
        return DMARCResult("pass", from_domain, spf_domain=spf_domain.lower(), **common)
    open_dkim = [s for s in dkim if s.result == "temperror" and aligned(s.domain, from_domain, record.adkim)]
    open_spf = (
        spf_result == "temperror" and bool(spf_domain) and aligned(spf_domain or "", from_domain, record.aspf)
    )
    if open_dkim or open_spf:
        what = f"DKIM key of {open_dkim[0].domain}" if open_dkim else f"SPF of {spf_domain}"
        return DMARCResult("temperror", from_domain, reason=f"DNS failure: {what}", open=True, **common)
    disposition, sampled_out = policy, False
    if policy != "none" and record.pct < 100 and sample() * 100 >= record.pct:
        disposition, sampled_out = ("quarantine" if policy == "reject" else "none"), True
    return DMARCResult(
        "fail", from_domain, disposition=disposition, sampled_out=sampled_out, reason="not aligned", **common
    )


# A display name without quotes, comments or commas and one angle-addr, or a bare addr-spec.
_SIMPLE_FROM = re.compile(
    r'\s*(?:[^"(),:;<>@\\]*<([^\s"(),:;<>@\\]+@[^\s"(),:;<>@\\]+)>|([^\s"(),:;<>@\\]+@[^\s"(),:;<>@\\]+))\s*'
)


def author_domains(from_values: Sequence[str]) -> list[str]:
    """The distinct domains of the addresses in the From: fields (6.6.1), lower-case, in order; [] when there is
    no usable address (no From:, group syntax only, or an address without a domain)."""
    out: list[str] = []
    simple = [_SIMPLE_FROM.fullmatch(v) for v in from_values]
    if all(simple):  # the usual "Name <local@domain>" or "local@domain": no RFC 5322 parser needed
        addresses = [m.group(1) or m.group(2) for m in simple if m]
    else:
        addresses = [addr for _, addr in email.utils.getaddresses(list(from_values))]
    for addr in addresses:
        domain = addr.rpartition("@")[2].strip().rstrip(".").lower() if "@" in addr else ""
        if domain.startswith("[") or not domain:
            continue
        try:
            domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
        except UnicodeError:
            continue
        if not dns_name_ok("_dmarc." + domain):  # nothing DNS could be asked about: no author domain
            continue
        if domain not in out:
            out.append(domain)
    return out


@dataclass
class Outcome:
    """DMARC for every author domain of a message: the strictest disposition wins (6.6.1)."""

    results: list[DMARCResult] = field(default_factory=list)

    @property
    def disposition(self) -> str:
        order = {p: i for i, p in enumerate(POLICIES)}
        return max(
            (r.disposition for r in self.results if r.result == "fail"), key=order.__getitem__, default="none"
        )

    @property
    def open(self) -> DMARCResult | None:
        """A result a DNS failure left open (the message should be tried again later), if any."""
        return next((r for r in self.results if r.open), None)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.result == "pass" for r in self.results)


async def check(
    resolver: Resolver,
    domains: Sequence[str],
    dkim: Sequence[DKIMResult],
    spf_result: str | None,
    spf_domain: str | None,
    sample: Callable[[], float] = random.random,
) -> Outcome:
    """DMARC for each author domain (at most 5; more are ignored)."""
    domains = list(domains)[:5]
    found = await asyncio.gather(*(discover(resolver, d) for d in domains))
    return Outcome(
        [evaluate(d, f, dkim, spf_result, spf_domain, sample) for d, f in zip(domains, found, strict=True)]
    )
