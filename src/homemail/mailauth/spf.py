"""SPF (RFC 7208): is the connecting IP allowed to send for the MAIL FROM (or HELO) domain?

:func:`check_mailfrom` and :func:`check_helo` run check_host() (RFC 7208 4) over the shared resolver
(:mod:`homemail.dns`, whose cache honours TTLs) and return an :class:`SPFResult`. The SMTP policy keeps them in
``envelope.state["spf"]`` (MAIL FROM identity) and ``envelope.state["spf_helo"]`` (HELO identity); Received-SPF
(RFC 7208 9.1) and Authentication-Results (RFC 8601) are made from them.

Rules:
- The record is the one TXT record at the domain that starts with ``v=spf1`` (4.5); none: "none", several:
  "permerror". Type SPF (99) records are never asked for (3.1). Strings of one TXT record are joined with nothing
  between them (3.3). A record with non-ASCII text is a "permerror" (3.1); other TXT records are ignored.
- The whole record is parsed before anything is evaluated, so a syntax error anywhere is a "permerror" (4.6).
- A malformed or single-label domain, or NXDOMAIN for it, is "none" (4.3); a DNS error (timeout, SERVFAIL) while
  fetching the record or evaluating a mechanism is "temperror" (4.4, 5), except where the RFC says the term just
  does not match (PTR lookups, 5.5) or is skipped (exp=, 6.2).
- Limits (4.6.4): at most 10 terms that cause DNS lookups (include, a, mx, ptr, exists, redirect) over the whole
  evaluation, includes and redirects counted together; more: "permerror". At most 2 void lookups (NXDOMAIN or
  no answer); more: "permerror". An mx term with more than 10 MX records: "permerror". A ptr term (and the p
  macro) checks at most 10 PTR names. The whole check is bounded by :data:`TIME_LIMIT` seconds ("temperror").
- The client address family picks the lookups: A for IPv4 (an IPv4-mapped IPv6 address is IPv4, 5/9), AAAA for
  IPv6; "exists" always asks for A (5.7).
- include (5.2): pass matches; fail, softfail, neutral do not; temperror is temperror; permerror and none are
  permerror. redirect (6.1): used only when no mechanism matched; a target without a record is "permerror".
- exp= (6.2) is looked at only for a "fail" that the record holding it produced (not one from inside an include,
  not the original record's after a redirect). Any problem with it (DNS error, no or several TXT records,
  non-ASCII, macro syntax) means no explanation; its lookup counts against no limit.
- Macros (7): letters s l o d i p h v, plus c r t in explanation text; a digit transformer of 0 is a syntax error;
  upper-case letters are URL-escaped (7.3); an expanded domain name longer than 253 characters loses labels from
  the left (7.3); a trailing dot is dropped from domain names, not from explanation text. IPv6 ``%{i}`` is the
  nibble form in upper case (as pyspf writes it; DNS names are case-insensitive).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol

from homemail.dns import NotFound, TemporaryError

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MAX_LOOKUPS = 10  # RFC 7208 4.6.4: terms causing DNS queries
MAX_VOID = 2  # RFC 7208 4.6.4: void lookups
MAX_MX = 10  # MX records looked at by one mx term
MAX_PTR = 10  # PTR names looked at by ptr / %{p}
TIME_LIMIT = 20.0  # RFC 7208 4.6.4: "at least 20 seconds"


@dataclass(frozen=True, slots=True)
class SPFResult:
    """The outcome of one check_host() evaluation (RFC 7208 2.6)."""

    result: str  # one of RESULTS
    domain: str  # the domain checked: the MAIL FROM domain, or the HELO name (scope "helo")
    scope: str  # "mailfrom" or "helo" (also for a null MAIL FROM, whose identity is the HELO name, 2.4)
    sender: str = ""  # the <sender> evaluated: the MAIL FROM address, or postmaster@helo
    client_ip: str = ""
    helo: str = ""
    mechanism: str = ""  # the term that decided ("-all", "ip4:192.0.2.0/24", "default", ...)
    explanation: str = ""  # for "fail": the domain's exp= text (RFC 7208 6.2), else ""
    reason: str = ""  # why, for logs and header comments

    @property
    def ok(self) -> bool:
        return self.result == "pass"

    def received_spf(self, receiver: str) -> str:
        """The Received-SPF field (RFC 7208 9.1), one line without CRLF."""
        comment = _comment(self, receiver)
        pairs = [f"receiver={_kv(receiver)}", f"client-ip={self.client_ip}"]
        if self.scope == "mailfrom":
            pairs.append(f"envelope-from={_kv(self.sender)}")
        if self.helo:
            pairs.append(f"helo={_kv(self.helo)}")
        pairs.append(f"identity={self.scope}")
        if self.mechanism and self.result not in ("none", "temperror", "permerror"):
            pairs.append(f"mechanism={_kv(self.mechanism)}")
        if self.result in ("temperror", "permerror") and self.reason:
            pairs.append(f"problem={_kv(self.reason)}")
        return f"Received-SPF: {self.result} ({comment}) " + "; ".join(pairs) + ";"


def _kv(value: str) -> str:
    """A key-value-pair value: dot-atom when it is one, else a quoted string (RFC 7208 9.1)."""
    value = re.sub(r"[\x00-\x1f\x7f]", "?", value)[:200]
    if re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(r: SPFResult, receiver: str) -> str:
    who = f"domain of {r.sender}" if r.scope == "mailfrom" else f"domain of {r.domain}"
    text = {
        "pass": f"{who} designates {r.client_ip} as permitted sender",
        "fail": f"{who} does not designate {r.client_ip} as permitted sender",
        "softfail": f"{who} does not designate {r.client_ip} as permitted sender (softfail)",
        "neutral": f"{r.client_ip} is neither permitted nor denied by {who}",
        "none": f"{who} does not publish SPF",
        "temperror": f"error in processing during lookup of {r.domain}",
        "permerror": f"permanent error in processing the SPF record of {r.domain}",
    }[r.result]
    text = f"{receiver}: {text}"
    return re.sub(r"[()\\\x00-\x1f\x7f]", "?", text)


# --- the resolver the checks use -------------------------------------------------------------------------------


class SPFResolver(Protocol):
    """The part of :class:`homemail.dns.Resolver` SPF uses (tests give a fake with the same behaviour)."""

    async def query(self, name: str, rdtype: str) -> list[Any]: ...

    async def txt(self, name: str) -> list[bytes]: ...


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


# --- record syntax (RFC 7208 4.6.1, 5, 6, 7.1, 12) -------------------------------------------------------------

_TOPLABEL_END = re.compile(
    r"\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\.?\Z"
)
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)", re.DOTALL)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z0-9]*)(.*)", re.DOTALL)
_CIDR_TAIL = re.compile(r"(.*?)(?:/(\d+))?(?://(\d+))?", re.DOTALL)
_IP4 = re.compile(r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")
_NUMBER = re.compile(r"0|[1-9]\d*")
_MACRO_EXPAND = re.compile(r"%(?:\{([A-Za-z])(\d*)([rR]?)([.\-+,/_=]*)\}|(%)|(_)|(-))")
_DOMAIN_LETTERS = frozenset("slodiphv")
_EXP_LETTERS = _DOMAIN_LETTERS | frozenset("crt")


@dataclass(frozen=True, slots=True)
class _Macro:
    letter: str  # lower case
    digits: int  # 0: all parts
    reverse: bool
    delimiters: str
    escape: bool  # upper-case letter: URL-escape


_Token = str | _Macro


def parse_macro_string(text: str, explain: bool = False) -> list[_Token]:
    """Tokens of a macro-string (7.1); ``explain``: an explanation string (spaces, c r t allowed)."""
    letters = _EXP_LETTERS if explain else _DOMAIN_LETTERS
    out: list[_Token] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "%":
            m = _MACRO_EXPAND.match(text, i)
            if m is None:
                raise _PermError(f"bad macro at {text[i : i + 6]!r}")
            if m.group(5):
                literal.append("%")
            elif m.group(6):
                literal.append(" ")
            elif m.group(7):
                literal.append("%20")
            else:
                letter = m.group(1)
                if letter.lower() not in letters:
                    raise _PermError(f"macro letter {letter!r} not allowed here")
                digits = int(m.group(2)) if m.group(2) else 0
                if m.group(2) and digits == 0:
                    raise _PermError("macro transformer digit must not be zero")
                if literal:
                    out.append("".join(literal))
                    literal = []
                out.append(
                    _Macro(letter.lower(), digits, bool(m.group(3)), m.group(4) or ".", letter.isupper())
                )
            i = m.end()
            continue
        o = ord(c)
        if not (0x21 <= o <= 0x7E or (explain and c == " ")):
            raise _PermError(f"character {c!r} not allowed in {'explanation' if explain else 'domain-spec'}")
        literal.append(c)
        i += 1
    if literal:
        out.append("".join(literal))
    return out


def _domain_spec(text: str) -> list[_Token]:
    """A domain-spec (7.1): a macro-string ending in a macro or in "." toplabel ["."]."""
    if not text:
        raise _PermError("empty domain-spec")
    tokens = parse_macro_string(text)
    if not _MACRO_EXPAND_END.search(text) and not _TOPLABEL_END.search(text):
        raise _PermError(f"invalid domain-spec {text!r}")
    return tokens


_MACRO_EXPAND_END = re.compile(r"(?:%\{[A-Za-z]\d*[rR]?[.\-+,/_=]*\}|%%|%_|%-)\Z")


@dataclass(slots=True)
class _Mechanism:
    qualifier: str  # "+", "-", "~", "?"
    name: str  # all include a mx ptr ip4 ip6 exists
    text: str  # the term as written, for Received-SPF
    spec: list[_Token] | None = None
    cidr4: int | None = None
    cidr6: int | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass(slots=True)
class _Record:
    mechanisms: list[_Mechanism] = field(default_factory=list)
    redirect: list[_Token] | None = None
    redirect_text: str = ""
    exp: list[_Token] | None = None


def _cidr(text: str | None, limit: int) -> int | None:
    if text is None:
        return None
    if not _NUMBER.fullmatch(text) or int(text) > limit:
        raise _PermError(f"bad CIDR length /{text}")
    return int(text)


def parse_record(text: str) -> _Record:
    """Parse a whole SPF record (its "v=spf1" already checked); _PermError on any syntax error."""
    record = _Record()
    terms = text.split(" ")[1:]
    for term in terms:
        if not term:
            continue  # 1*SP between terms, trailing spaces allowed (4.5, 12)
        m = _MODIFIER.fullmatch(term)
        if m:
            name, value = m.group(1).lower(), m.group(2)
            if name == "redirect":
                if record.redirect is not None:
                    raise _PermError("redirect= given twice")
                record.redirect = _domain_spec(value)
                record.redirect_text = term
            elif name == "exp":
                if record.exp is not None:
                    raise _PermError("exp= given twice")
                record.exp = _domain_spec(value)
            else:
                parse_macro_string(value)  # unknown modifiers are ignored, but must be well-formed (6)
            continue
        m = _MECHANISM.fullmatch(term)
        assert m is not None
        qualifier = m.group(1) or "+"
        name, rest = m.group(2).lower(), m.group(3)
        mech = _Mechanism(qualifier, name, term)
        if name == "all":
            if rest:
                raise _PermError(f"bad term {term!r}")
        elif name in ("include", "exists"):
            if not rest.startswith(":"):
                raise _PermError(f"{name} needs a domain: {term!r}")
            mech.spec = _domain_spec(rest[1:])
        elif name == "ptr":
            if rest:
                if not rest.startswith(":"):
                    raise _PermError(f"bad term {term!r}")
                mech.spec = _domain_spec(rest[1:])
        elif name in ("a", "mx"):
            tail = _CIDR_TAIL.fullmatch(rest)
            assert tail is not None
            spec, c4, c6 = tail.group(1), tail.group(2), tail.group(3)
            if spec:
                if not spec.startswith(":"):
                    raise _PermError(f"bad term {term!r}")
                mech.spec = _domain_spec(spec[1:])
            mech.cidr4 = _cidr(c4, 32)
            mech.cidr6 = _cidr(c6, 128)
        elif name == "ip4":
            if not rest.startswith(":"):
                raise _PermError(f"ip4 needs an address: {term!r}")
            addr, slash, length = rest[1:].partition("/")
            if not _IP4.fullmatch(addr):
                raise _PermError(f"bad IPv4 address in {term!r}")
            bits = _cidr(length, 32) if slash else 32
            assert bits is not None
            mech.network = ipaddress.IPv4Network(f"{addr}/{bits}", strict=False)
        elif name == "ip6":
            if not rest.startswith(":"):
                raise _PermError(f"ip6 needs an address: {term!r}")
            addr, slash, length = rest[1:].partition("/")
            if "%" in addr or not re.fullmatch(r"[0-9A-Fa-f:.]+", addr):
                raise _PermError(f"bad IPv6 address in {term!r}")
            try:
                ipaddress.IPv6Address(addr)
            except ValueError:
                raise _PermError(f"bad IPv6 address in {term!r}") from None
            bits = _cidr(length, 128) if slash else 128
            assert bits is not None
            mech.network = ipaddress.IPv6Network(f"{addr}/{bits}", strict=False)
        else:
            raise _PermError(f"unknown mechanism {term!r}")
        record.mechanisms.append(mech)
    return record


def _is_spf_record(raw: bytes) -> bool:
    return raw[:6].lower() == b"v=spf1" and (len(raw) == 6 or raw[6:7] == b" ")


# --- domain names --------------------------------------------------------------------------------------------


def valid_domain(name: str) -> bool:
    """A name that can be asked for: labels of 1-63 octets, at most 253 in all (RFC 1035 2.3.4)."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return False
    return all(0 < len(label.encode("utf-8", "replace")) <= 63 for label in name.split("."))


def _checkable_domain(name: str) -> bool:
    """<domain> for check_host(): well-formed, more than one label, not an address literal (4.3)."""
    if not valid_domain(name) or name.startswith("["):
        return False
    labels = name.rstrip(".").split(".")
    return len(labels) > 1 and not labels[-1].isdigit()


def _truncate(name: str) -> str:
    """RFC 7208 7.3: drop labels from the left until the name fits in 253 characters."""
    name = name[:-1] if name.endswith(".") else name
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    return name


def reverse_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv4Address):
        return ".".join(reversed(str(ip).split("."))) + ".in-addr.arpa"
    return ".".join(reversed(ip.exploded.replace(":", ""))) + ".ip6.arpa"


def _client_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(ip.strip("[]"))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # RFC 7208 5/9: an IPv4-mapped address is IPv4
    return addr


def _names(records: list[Any], attr: str) -> list[str]:
    out = []
    for r in records:
        target = getattr(r, attr)
        text = target.to_text(omit_final_dot=True) if hasattr(target, "to_text") else str(target).rstrip(".")
        out.append(text)
    return out


# --- evaluation ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    result: str
    mechanism: str = ""
    reason: str = ""
    exp: list[_Token] | None = None  # the exp= of the record that produced a fail
    exp_domain: str = ""


class _Check:
    """One check_host() run with its shared counters (the limits span includes and redirects)."""

    def __init__(
        self,
        resolver: SPFResolver,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        sender: str,
        helo: str,
        receiver: str,
    ) -> None:
        self.resolver = resolver
        self.ip = ip
        self.ipv6 = isinstance(ip, ipaddress.IPv6Address)
        self.sender = sender
        self.local, _, self.sender_domain = sender.rpartition("@")
        self.helo = helo
        self.receiver = receiver or "unknown"
        self.lookups = 0
        self.voids = 0
        self._validated: dict[str, str] = {}

    # - counters -

    def _count_lookup(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError(f"more than {MAX_LOOKUPS} DNS lookups (at {term})")

    def _void(self) -> None:
        self.voids += 1
        if self.voids > MAX_VOID:
            raise _PermError(f"more than {MAX_VOID} void DNS lookups")

    async def _query(self, name: str, rdtype: str, count_void: bool = True) -> list[Any]:
        """Records of a mechanism's lookup; NXDOMAIN and empty answers are void; DNS errors: _TempError."""
        if not valid_domain(name):
            return []  # no query can be made for it: nothing there (4.3, 4.8)
        try:
            records = await self.resolver.query(name, rdtype)
        except NotFound:
            records = []
        except TemporaryError as e:
            raise _TempError(str(e)) from None
        if not records and count_void:
            self._void()
        return records

    async def _addresses(self, name: str) -> list[str]:
        """A or AAAA (by the client's family) of a name found in DNS (MX target, PTR name)."""
        records = await self._query(name, "AAAA" if self.ipv6 else "A", count_void=False)
        return [r.address for r in records]

    # - macros (7) -

    async def expand(self, tokens: list[_Token], domain: str, explain: bool = False) -> str:
        parts: list[str] = []
        for tok in tokens:
            if isinstance(tok, str):
                parts.append(tok)
                continue
            value = await self._macro_value(tok.letter, domain)
            if tok.digits or tok.reverse or tok.delimiters != ".":
                pieces = re.split("[" + re.escape(tok.delimiters) + "]", value)
                if tok.reverse:
                    pieces.reverse()
                if tok.digits:
                    pieces = pieces[-tok.digits :]
                value = ".".join(pieces)
            if tok.escape:
                value = urllib.parse.quote(value, safe="")
            parts.append(value)
        text = "".join(parts)
        return text if explain else _truncate(text)

    async def _macro_value(self, letter: str, domain: str) -> str:
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.local
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if self.ipv6:
                return ".".join(self.ip.exploded.replace(":", "").upper())
            return str(self.ip)
        if letter == "c":
            return str(self.ip)
        if letter == "v":
            return "ip6" if self.ipv6 else "in-addr"
        if letter == "h":
            return self.helo
        if letter == "r":
            return self.receiver
        if letter == "t":
            return str(int(time.time()))
        if letter == "p":
            return await self._validated_name(domain)
        raise _PermError(f"unknown macro letter {letter}")

    async def _ptr_names(self, records: list[Any] | None = None) -> list[str]:
        """The validated names of the client (5.5): PTR names whose A/AAAA include its address."""
        if records is None:
            try:
                records = await self.resolver.query(reverse_name(self.ip), "PTR")
            except (NotFound, TemporaryError):
                return []
        names = [n.rstrip(".") for n in _names(records, "target")][:MAX_PTR]
        out = []
        for name in names:
            try:
                addresses = await self._addresses(name)
            except _TempError:
                continue  # 5.5: a DNS error for one name skips that name
            if any(ipaddress.ip_address(a) == self.ip for a in addresses):
                out.append(name)
        return out

    async def _validated_name(self, domain: str) -> str:
        """%{p} (7.3): a validated name, preferably <domain> or a subdomain of it; "unknown" if none."""
        key = domain.lower()
        if key not in self._validated:
            names = await self._ptr_names()
            best = next((n for n in names if n.lower() == key), None)
            best = best or next((n for n in names if n.lower().endswith("." + key)), None)
            self._validated[key] = best or (names[0] if names else "unknown")
        return self._validated[key]

    # - check_host() -

    async def check_host(self, domain: str, depth: int = 0) -> _Outcome:
        domain = domain.rstrip(".")
        if not _checkable_domain(domain):
            return _Outcome("none", reason=f"{domain!r} is not a valid domain name")
        try:
            records = await self.resolver.txt(domain)
        except NotFound:
            return _Outcome("none", reason=f"{domain}: no such domain")
        except TemporaryError as e:
            return _Outcome("temperror", reason=str(e))
        spf = [r for r in records if _is_spf_record(r)]
        if not spf:
            return _Outcome("none", reason=f"{domain}: no SPF record")
        if len(spf) > 1:
            return _Outcome("permerror", reason=f"{domain}: more than one SPF record")
        try:
            text = spf[0].decode("ascii")
        except UnicodeDecodeError:
            return _Outcome("permerror", reason=f"{domain}: SPF record is not ASCII")
        try:
            record = parse_record(text)
        except _PermError as e:
            return _Outcome("permerror", reason=f"{domain}: {e}")
        try:
            return await self._evaluate(record, domain, depth)
        except _PermError as e:
            return _Outcome("permerror", reason=f"{domain}: {e}")
        except _TempError as e:
            return _Outcome("temperror", reason=str(e))

    async def _evaluate(self, record: _Record, domain: str, depth: int) -> _Outcome:
        for mech in record.mechanisms:
            if await self._matches(mech, domain, depth):
                result = QUALIFIERS[mech.qualifier]
                return _Outcome(
                    result,
                    mech.text,
                    f"{domain}: matched {mech.text}",
                    record.exp if result == "fail" else None,
                    domain,
                )
        if record.redirect is not None:
            self._count_lookup(record.redirect_text)
            target = await self.expand(record.redirect, domain)
            if not _checkable_domain(target):
                raise _PermError(f"redirect to invalid domain {target!r}")
            outcome = await self.check_host(target, depth + 1)
            if outcome.result == "none":
                raise _PermError(f"redirect target {target} has no SPF record")
            return outcome
        return _Outcome("neutral", "default", f"{domain}: no mechanism matched")

    async def _matches(self, mech: _Mechanism, domain: str, depth: int) -> bool:
        name = mech.name
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            assert mech.network is not None
            return mech.network.version == self.ip.version and self.ip in mech.network
        self._count_lookup(mech.text)
        target = await self.expand(mech.spec, domain) if mech.spec is not None else domain
        if name == "include":
            outcome = await self.check_host(target, depth + 1)
            if outcome.result == "pass":
                return True
            if outcome.result in ("fail", "softfail", "neutral"):
                return False
            if outcome.result == "temperror":
                raise _TempError(outcome.reason)
            raise _PermError(f"include:{target} gave {outcome.result} ({outcome.reason})")
        if name == "exists":
            return bool(await self._query(target, "A"))
        if name == "a":
            records = await self._query(target, "AAAA" if self.ipv6 else "A")
            return self._in_any([r.address for r in records], mech)
        if name == "mx":
            hosts = [h for h in _names(await self._query(target, "MX"), "exchange")]
            if len(hosts) > MAX_MX:
                raise _PermError(f"mx:{target} has more than {MAX_MX} MX records")
            for host in hosts:
                if host in ("", ".") or not valid_domain(host):
                    continue  # a null MX (RFC 7505) has no addresses
                if self._in_any(await self._addresses(host), mech):
                    return True
            return False
        if name == "ptr":
            try:
                records = await self.resolver.query(reverse_name(self.ip), "PTR")
            except NotFound:
                records = []
            except TemporaryError:
                return False  # 5.5: a DNS error in the PTR lookup: no match
            if not records:
                self._void()
                return False
            target = target.lower()
            for name_ in await self._ptr_names(records):
                n = name_.lower()
                if n == target or n.endswith("." + target):
                    return True
            return False
        raise _PermError(f"unknown mechanism {name}")

    def _in_any(self, addresses: list[str], mech: _Mechanism) -> bool:
        bits = (
            (128 if mech.cidr6 is None else mech.cidr6)
            if self.ipv6
            else (32 if mech.cidr4 is None else mech.cidr4)
        )
        for a in addresses:
            try:
                net = ipaddress.ip_network(f"{a}/{bits}", strict=False)
            except ValueError:
                continue
            if net.version == self.ip.version and self.ip in net:
                return True
        return False

    async def explanation(self, outcome: _Outcome) -> str:
        """exp= text for a fail (6.2); "" whenever anything about it is wrong."""
        if outcome.exp is None:
            return ""
        try:
            name = await self.expand(outcome.exp, outcome.exp_domain)
            if not valid_domain(name):
                return ""
            records = await self.resolver.txt(name)
            if len(records) != 1:
                return ""
            text = records[0].decode("ascii")
            return await self.expand(parse_macro_string(text, explain=True), outcome.exp_domain, explain=True)
        except (NotFound, TemporaryError, UnicodeDecodeError, _PermError, _TempError):
            return ""


async def check_host(
    resolver: SPFResolver,
    ip: str,
    domain: str,
    sender: str,
    helo: str = "",
    receiver: str = "",
    scope: str = "mailfrom",
    time_limit: float = TIME_LIMIT,
) -> SPFResult:
    """RFC 7208 4: evaluate ``domain``'s policy for ``ip``; ``sender`` is ``local@domain`` (local part given)."""
    client = _client_ip(ip)
    check = _Check(resolver, client, sender, helo, receiver)
    try:
        async with asyncio.timeout(time_limit):
            outcome = await check.check_host(domain)
            explanation = await check.explanation(outcome) if outcome.result == "fail" else ""
    except TimeoutError:
        outcome, explanation = _Outcome("temperror", reason=f"SPF check took over {time_limit:g} s"), ""
    return SPFResult(
        result=outcome.result,
        domain=domain.rstrip(".").lower(),
        scope=scope,
        sender=sender,
        client_ip=str(client),
        helo=helo,
        mechanism=outcome.mechanism,
        explanation=explanation,
        reason=outcome.reason,
    )


async def check_mailfrom(
    resolver: SPFResolver, ip: str, sender: str, helo: str, receiver: str = "", time_limit: float = TIME_LIMIT
) -> SPFResult:
    """The MAIL FROM identity (RFC 7208 2.4). A null reverse-path is checked as postmaster@<HELO> and reported
    with scope "helo"; a sender without a local part gets "postmaster" (4.3)."""
    if not sender:
        return await check_helo(resolver, ip, helo, receiver, time_limit)
    local, _, domain = sender.rpartition("@")
    return await check_host(
        resolver,
        ip,
        domain,
        f"{local or 'postmaster'}@{domain}",
        helo,
        receiver,
        "mailfrom",
        time_limit,
    )


async def check_helo(
    resolver: SPFResolver, ip: str, helo: str, receiver: str = "", time_limit: float = TIME_LIMIT
) -> SPFResult:
    """The HELO identity (RFC 7208 2.3): the HELO name as <domain>, postmaster@<HELO> as <sender>. An address
    literal or a name that is not a multi-label domain gives "none" (4.3)."""
    return await check_host(resolver, ip, helo, f"postmaster@{helo}", helo, receiver, "helo", time_limit)
