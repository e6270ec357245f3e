"""Per-client rate limits: connections and messages per minute from one address (or one IPv6 /64).

A token bucket per client: ``limit`` events per ``window`` seconds on average, with bursts of up to ``limit``.
State lives in memory only: a restart forgets it, which at worst lets a client start over with a full bucket.

Rules:
- IPv4 clients are counted per address, IPv6 clients per /64 (one subscriber usually holds a whole /64, so
  counting single addresses would make the limit meaningless).
- A limit of 0 is no limit. Exempt networks (``[limits] exempt``, loopback by default) are not counted.
- Buckets of clients idle for a whole window are dropped, so memory stays bounded by the active clients.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Iterable

from homemail.mailauth.iprev import client_address

IPV6_PREFIX = 64
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)  # once per connection and per message; addresses repeat
def client_key(ip: str, ipv4_prefix: int = 32, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """The address an IPv4 client is counted under, or the network of an IPv6 client."""
    addr = client_address(ip)
    prefix = ipv4_prefix if addr.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def in_networks(ip: str, networks: Iterable[Network]) -> bool:
    addr = client_address(ip)
    return any(addr.version == net.version and addr in net for net in networks)


class RateLimiter:
    """``limit`` events per ``window`` seconds per key (0: unlimited)."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time of last update)
        self._swept = 0.0

    def hit(self, key: str, now: float | None = None) -> bool:
        """Count one event; False when the key is over its limit (the event is then not counted)."""
        if self.limit <= 0:
            return True
        now = time.monotonic() if now is None else now
        if now - self._swept > self.window:
            self._sweep(now)
        rate = self.limit / self.window
        tokens, last = self._buckets.get(key, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until the key may have one more event."""
        if self.limit <= 0 or key not in self._buckets:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets[key]
        tokens = min(float(self.limit), tokens + (now - last) * self.limit / self.window)
        return max(0.0, (1.0 - tokens) * self.window / self.limit)

    def _sweep(self, now: float) -> None:
        self._swept = now
        idle = [k for k, (_, last) in self._buckets.items() if now - last >= self.window]
        for k in idle:
            del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)
