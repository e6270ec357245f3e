"""The shared resolver against a real DNS server (knot on loopback): answers, the TTL cache in front of dnspython
(positive answers for their TTL, negative ones for the SOA minimum, RFC 2308 5), and one lookup for many askers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from dnsserver import KnotServer
from homemail.config import DNSConfig, Endpoint
from homemail.dns import MX, NotFound, Resolver, TemporaryError


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    server = KnotServer(
        {
            "cache.test": [
                "@ MX 10 mx",
                "@ MX 20 mx2",
                "mx 30 A 127.0.0.2",
                "mx2 AAAA ::1",
                'txt 1 TXT "short" " lived"',
                "changing 300 A 127.0.0.5",
            ],
            "null.test": ["@ MX 0 ."],
        }
    )
    server.start()
    yield server
    server.stop()


def resolver(knot: KnotServer, cache: bool = True) -> Resolver:
    return Resolver(DNSConfig(nameservers=[Endpoint("127.0.0.1", knot.port)], timeout=2.0), cache=cache)


def test_answers(knot: KnotServer) -> None:
    async def run() -> None:
        r = resolver(knot)
        assert await r.mx("cache.test") == [MX(10, "mx.cache.test"), MX(20, "mx2.cache.test")]
        assert await r.mx("null.test") == [MX(0, "")]
        assert await r.addresses("mx.cache.test") == ["127.0.0.2"]
        assert await r.addresses("mx2.cache.test") == ["::1"]
        assert await r.txt("txt.cache.test") == [b"short lived"]
        assert await r.query("mx.cache.test", "TXT") == []  # the name exists, without records of that type
        with pytest.raises(NotFound):
            await r.query("nowhere.cache.test", "A")

    asyncio.run(run())


def test_cache_keeps_answers_for_their_ttl(knot: KnotServer) -> None:
    async def run() -> None:
        r = resolver(knot)
        assert await r.addresses("changing.cache.test") == ["127.0.0.5"]
        with pytest.raises(NotFound):
            await r.query("later.cache.test", "A")
        assert await r.query("mx.cache.test", "TXT") == []
        knot.set_zone(
            "cache.test",
            [
                "@ MX 10 mx",
                "mx 30 A 127.0.0.2",
                "changing 300 A 127.0.0.6",
                "later A 127.0.0.7",
                'mx TXT "x"',
            ],
        )
        # Within the TTLs the resolver answers from its cache: the same answers, negative ones too.
        assert await r.addresses("changing.cache.test") == ["127.0.0.5"]
        with pytest.raises(NotFound):
            await r.query("later.cache.test", "A")
        assert await r.query("mx.cache.test", "TXT") == []
        # A resolver without a cache sees the new zone at once: the cache, not the server, kept the old answers.
        fresh = resolver(knot, cache=False)
        assert await fresh.addresses("changing.cache.test") == ["127.0.0.6"]
        assert await fresh.addresses("later.cache.test") == ["127.0.0.7"]
        # An expired entry is asked again.
        r._cache[("changing.cache.test", "A")] = (0.0, [])  # type: ignore[index]
        assert await r.addresses("changing.cache.test") == ["127.0.0.6"]

    asyncio.run(run())


def test_concurrent_askers_share_one_lookup(knot: KnotServer) -> None:
    async def run() -> None:
        r = resolver(knot, cache=False)
        calls = 0
        real = r._lookup

        async def counting(name: str, rdtype: str) -> list[object]:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            return await real(name, rdtype)

        r._lookup = counting  # type: ignore[method-assign]
        answers = await asyncio.gather(*(r.addresses("mx.cache.test") for _ in range(20)))
        assert answers == [["127.0.0.2"]] * 20
        assert calls == 2  # AAAA and A, once each
        missing = await asyncio.gather(
            *(r.query("gone.cache.test", "A") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(e, NotFound) for e in missing) and calls == 3

    asyncio.run(run())


def test_unreachable_server_is_a_temporary_error() -> None:
    async def run() -> None:
        r = Resolver(DNSConfig(nameservers=[Endpoint("127.0.0.1", 9)], timeout=0.5))
        with pytest.raises(TemporaryError):
            await r.query("cache.test", "MX")

    asyncio.run(run())
