"""MTA-STS (RFC 8461): a domain's published promise that its MX hosts speak TLS with valid certificates.

Rules:
- A policy is looked for only when ``_mta-sts.<domain>`` has exactly one ``v=STSv1`` TXT record (RFC 8461 3.1);
  it is then fetched over HTTPS from ``mta-sts.<domain>``, with a certificate valid for that name (3.3).
- Policies are cached for their ``max_age`` and refetched when the TXT record's ``id`` changes (5.1). A fetch that
  fails while a cached policy is still valid keeps the cached one; with no policy at all, mail goes as without
  MTA-STS (5.1: a failed fetch is not a reason to refuse delivery).
- In ``enforce`` mode, only MX hosts matching the policy's ``mx`` patterns are used, and only over TLS with a
  certificate that validates for the MX host name (4.1, 4.2); ``testing`` and ``none`` change nothing.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from homemail.dns import DNSError, Resolver

log = logging.getLogger(__name__)

MAX_POLICY = 64 * 1024  # RFC 8461 3.3: policies are small; refuse anything large
MAX_AGE_CAP = 31_557_600  # RFC 8461 3.2
_ID = re.compile(r"[A-Za-z0-9]{1,32}")


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    mode: str  # "enforce", "testing" or "none"
    mx: tuple[str, ...]
    max_age: int
    fetched: float

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    def expired(self, now: float) -> bool:
        return now > self.fetched + self.max_age

    def allows(self, mx_host: str) -> bool:
        """RFC 8461 4.1: a pattern matches the host exactly or, as ``*.suffix``, with one more leftmost label."""
        host = mx_host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_txt(records: list[bytes]) -> str | None:
    """The policy id of the one ``v=STSv1`` record, or None (none, several, or malformed)."""
    found = [r for r in records if r.startswith(b"v=STSv1")]
    if len(found) != 1:
        return None
    fields = dict(_fields(found[0].decode("ascii", "replace"), ";", "="))
    policy_id = fields.get("id", "")
    return policy_id if _ID.fullmatch(policy_id) else None


def _fields(text: str, sep: str, eq: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(sep):
        key, found, value = part.partition(eq)
        if found:
            out.append((key.strip(), value.strip()))
    return out


def parse_policy(text: str, policy_id: str, now: float) -> Policy:
    """RFC 8461 3.2; raises ValueError when it is not a usable policy."""
    version = mode = None
    mx: list[str] = []
    max_age = None
    for line in text.replace("\r\n", "\n").split("\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "version":
            version = value
        elif key == "mode":
            mode = value
        elif key == "mx":
            mx.append(value.lower().rstrip("."))
        elif key == "max_age" and value.isdigit():
            max_age = min(int(value), MAX_AGE_CAP)
    if version != "STSv1" or mode not in ("enforce", "testing", "none") or max_age is None:
        raise ValueError("not an STSv1 policy (version, mode and max_age are required)")
    if mode != "none" and not mx:
        raise ValueError("a policy in enforce or testing mode must list mx patterns")
    return Policy(policy_id, mode, tuple(mx), max_age, now)


class MTASTS:
    """Looks up, fetches and caches policies for the delivery worker."""

    def __init__(
        self, resolver: Resolver, port: int = 443, cafile: Path | None = None, timeout: float = 30.0
    ) -> None:
        self.resolver = resolver
        self.port = port
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._cache: dict[str, Policy] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def policy(self, domain: str) -> Policy | None:
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:
            return await self._policy(domain)

    async def _policy(self, domain: str) -> Policy | None:
        now = time.time()
        cached = self._cache.get(domain)
        if cached is not None and cached.expired(now):
            del self._cache[domain]
            cached = None
        try:
            policy_id = parse_txt(await self.resolver.txt(f"_mta-sts.{domain}"))
        except DNSError:
            policy_id = None
        if policy_id is None or (cached is not None and cached.id == policy_id):
            # RFC 8461 5.1: with no record, a cached policy stays in force until it expires.
            return cached
        try:
            text = await self._fetch(domain)
            policy = parse_policy(text, policy_id, now)
        except (OSError, ValueError, UnicodeDecodeError, DNSError) as e:
            log.info("mta-sts %s: no usable policy: %s", domain, e)
            return cached
        log.info("mta-sts %s: policy %s, mode %s, mx %s", domain, policy.id, policy.mode, ",".join(policy.mx))
        self._cache[domain] = policy
        return policy

    async def _fetch(self, domain: str) -> str:
        """The policy text from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``. The host's addresses come
        from homemail's resolver like every other lookup (not the system's), the certificate is checked for the
        host name."""
        host = f"mta-sts.{domain}"
        addresses = await self.resolver.addresses(host)
        if not addresses:
            raise OSError(f"{host} has no address")
        return await asyncio.to_thread(self._fetch_from, host, addresses)

    def _fetch_from(self, host: str, addresses: list[str]) -> str:
        error: OSError | None = None
        for ip in addresses:
            conn = _HTTPSTo(ip, host, self.port, self.context, self.timeout)
            try:
                # RFC 8461 3.3: redirects are not followed (http.client never does), anything but 200 fails.
                conn.request("GET", "/.well-known/mta-sts.txt")
                response = conn.getresponse()
                if response.status != 200:
                    raise ValueError(f"HTTP status {response.status}")
                ctype = response.getheader("Content-Type", "")
                if not ctype.lower().startswith("text/plain"):
                    raise ValueError(f"content type {ctype!r}, not text/plain")
                data = response.read(MAX_POLICY + 1)
            except OSError as e:
                error = e
                continue
            finally:
                conn.close()
            if len(data) > MAX_POLICY:
                raise ValueError("policy too large")
            return data.decode("utf-8")
        assert error is not None
        raise error


class _HTTPSTo(http.client.HTTPSConnection):
    """HTTPS to a chosen address, with the host name for the Host header, SNI and the certificate check."""

    def __init__(self, ip: str, host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._ip = ip
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
