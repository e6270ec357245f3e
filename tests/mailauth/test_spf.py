"""SPF against the OpenSPF RFC 7208 test suite (every scenario of rfc7208-tests.yml), plus the result fields and
the Received-SPF field the SMTP policy records.

Each scenario's zone data is served by :class:`ZoneResolver`, an in-memory stand-in with the interface and the
error behaviour of :class:`homemail.dns.Resolver` (``query``/``txt``; NXDOMAIN -> NotFound, a TIMEOUT entry ->
TemporaryError). It reads the zone data the way the suite's reference driver (pyspf's testspf.py) does: SPF-type
records are copied to TXT unless the name has TXT records of its own (or "TXT: NONE"), and a TIMEOUT entry times
out a query for a type that has no records before it.
"""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
import yaml

from harness import require_peer
from homemail.dns import NotFound, TemporaryError
from homemail.mailauth import spf

SUITE = Path("/usr/share/doc/python3-spf/rfc7208-tests.yml.gz")


class ZoneResolver:
    """Zone data of one scenario, answering like homemail.dns.Resolver."""

    def __init__(self, zonedata: dict[str, list[Any]]) -> None:
        self.zones: dict[str, list[Any]] = {}
        for name, entries in zonedata.items():
            out: list[Any] = []
            generated: list[tuple[str, Any]] = []
            has_txt = False
            for entry in entries:
                if entry == "TIMEOUT":
                    out.append("TIMEOUT")
                    continue
                ((rtype, value),) = entry.items()
                if rtype in ("TXT", "SPF") and isinstance(value, str):
                    value = [value]
                if rtype == "TXT":
                    has_txt = True
                elif rtype == "SPF":
                    generated.append(("TXT", value))
                if value != ["NONE"]:
                    out.append((rtype, value))
            if not has_txt:
                out += generated
            self.zones[name.lower().rstrip(".")] = out
        self.queries: list[tuple[str, str]] = []

    def _records(self, name: str, rtype: str, depth: int = 0) -> list[Any]:
        key = name.lower().rstrip(".")
        self.queries.append((key, rtype))
        if key not in self.zones:
            raise NotFound(f"{name}: no such domain (NXDOMAIN)")
        out: list[Any] = []
        seen = False
        for entry in self.zones[key]:
            if entry == "TIMEOUT":
                if not seen:
                    raise TemporaryError(f"{name} {rtype}: DNS timeout")
                break
            t, value = entry
            if t == "CNAME" and rtype != "CNAME":
                if depth > 8:
                    raise TemporaryError(f"{name}: CNAME loop")
                return self._records(value, rtype, depth + 1)
            if t == rtype:
                seen = True
                out.append(value)
        return out

    async def query(self, name: str, rdtype: str) -> list[Any]:
        out = []
        for value in self._records(name, rdtype):
            if rdtype == "MX":
                pref, host = value
                text = f"{pref} {host.rstrip('.') + '.' if host else '.'}"
            elif rdtype in ("PTR", "CNAME"):
                text = value.rstrip(".") + "."
            else:
                text = str(value)
            out.append(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text))
        return out

    async def txt(self, name: str) -> list[bytes]:
        return [b"".join(s.encode("utf-8") for s in strings) for strings in self._records(name, "TXT")]


def _cases() -> list[Any]:
    if not SUITE.exists():
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason=f"{SUITE} is not installed"))]
    with gzip.open(SUITE, "rb") as f:
        scenarios = list(yaml.safe_load_all(f))
    cases = []
    for scenario in scenarios:
        for name, test in scenario["tests"].items():
            cases.append(pytest.param(scenario["zonedata"], name, test, id=f"{name}"))
    return cases


CASES = _cases()


def test_whole_suite_is_collected() -> None:
    require_peer(str(SUITE))  # Debian's python3-spf ships it; in CI a missing suite is a failure
    assert len(CASES) >= 200  # the 2014.04 release: 203 cases in 16 scenarios


@pytest.mark.parametrize(("zonedata", "name", "test"), CASES)
def test_openspf_suite(zonedata: dict[str, Any], name: str, test: dict[str, Any]) -> None:
    resolver = ZoneResolver(zonedata)
    result = asyncio.run(
        spf.check_mailfrom(resolver, test["host"], test["mailfrom"], test["helo"], receiver="mx.example.test")
    )
    expected = test["result"]
    allowed = expected if isinstance(expected, list) else [expected]
    assert result.result in allowed, f"{name}: {result.result} ({result.reason}), expected {expected}"
    if "explanation" in test:
        assert (result.explanation or "DEFAULT") == test["explanation"]
    assert result.result in spf.RESULTS


# --- the result as the policy uses it ---------------------------------------------------------------------


ZONE = {
    "example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all exp=why.example.org"}],
    "why.example.org": [{"TXT": "%{i} may not send for %{d}"}],
    "soft.example.org": [{"TXT": "v=spf1 ~all"}],
    "mail.example.org": [{"TXT": "v=spf1 a -all"}, {"A": "192.0.2.9"}],
    "slow.example.org": ["TIMEOUT"],
}


def run(coro: Any) -> spf.SPFResult:
    return asyncio.run(coro)


def test_mailfrom_pass_and_fields() -> None:
    r = run(spf.check_mailfrom(ZoneResolver(ZONE), "192.0.2.7", "Alice@Example.org", "mail.example.org"))
    assert (r.result, r.domain, r.scope, r.sender, r.client_ip) == (
        "pass",
        "example.org",
        "mailfrom",
        "Alice@Example.org",
        "192.0.2.7",
    )
    assert r.ok and r.mechanism == "ip4:192.0.2.0/24"
    header = r.received_spf("mx.example.test")
    assert header.startswith(
        "Received-SPF: pass (mx.example.test: domain of Alice@Example.org designates 192.0.2.7"
    )
    assert "client-ip=192.0.2.7;" in header and "identity=mailfrom;" in header
    assert 'envelope-from="Alice@Example.org";' in header and "helo=mail.example.org;" in header


def test_fail_carries_explanation() -> None:
    r = run(spf.check_mailfrom(ZoneResolver(ZONE), "198.51.100.1", "bob@example.org", "x.example.net"))
    assert r.result == "fail" and r.mechanism == "-all"
    assert r.explanation == "198.51.100.1 may not send for example.org"


def test_null_sender_is_the_helo_identity() -> None:
    r = run(spf.check_mailfrom(ZoneResolver(ZONE), "192.0.2.9", "", "mail.example.org"))
    assert (r.result, r.scope, r.domain, r.sender) == (
        "pass",
        "helo",
        "mail.example.org",
        "postmaster@mail.example.org",
    )
    h = run(spf.check_helo(ZoneResolver(ZONE), "192.0.2.10", "mail.example.org"))
    assert (h.result, h.scope) == ("fail", "helo")
    assert run(spf.check_helo(ZoneResolver(ZONE), "192.0.2.10", "[192.0.2.10]")).result == "none"


def test_temperror_and_time_limit() -> None:
    r = run(spf.check_mailfrom(ZoneResolver(ZONE), "192.0.2.7", "a@slow.example.org", "h.example.net"))
    assert r.result == "temperror" and "timeout" in r.reason
    assert "problem=" in r.received_spf("mx.example.test")

    class Hanging(ZoneResolver):
        async def txt(self, name: str) -> list[bytes]:
            await asyncio.sleep(5)
            return []

    r = run(spf.check_mailfrom(Hanging(ZONE), "192.0.2.7", "a@example.org", "h", time_limit=0.05))
    assert r.result == "temperror"


def test_received_spf_quotes_hostile_values() -> None:
    r = run(spf.check_mailfrom(ZoneResolver(ZONE), "192.0.2.7", '"x;y)(z"@soft.example.org', "evil;helo"))
    header = r.received_spf("mx.example.test")
    assert r.result == "softfail"
    assert 'envelope-from="\\"x;y)(z\\"@soft.example.org";' in header
    assert 'helo="evil;helo";' in header
    assert "\r" not in header and "\n" not in header
