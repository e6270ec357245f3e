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
import logging
import re
import ssl
import time
import urllib.request
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
            text = await asyncio.to_thread(self._fetch, domain)
            policy = parse_policy(text, policy_id, now)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            log.info("mta-sts %s: no usable policy: %s", domain, e)
            return cached
        log.info("mta-sts %s: policy %s, mode %s, mx %s", domain, policy.id, policy.mode, ",".join(policy.mx))
        self._cache[domain] = policy
        return policy

    def _fetch(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        port = "" if self.port == 443 else f":{self.port}"
        request = urllib.request.Request(f"https://{host}{port}/.well-known/mta-sts.txt")
        handler = urllib.request.HTTPSHandler(context=self.context)
        # RFC 8461 3.3: redirects must not be followed.
        opener = urllib.request.build_opener(handler, _NoRedirect())
        with opener.open(request, timeout=self.timeout) as response:
            if response.status != 200:
                raise ValueError(f"HTTP status {response.status}")
            ctype = response.headers.get("Content-Type", "")
            if not ctype.lower().startswith("text/plain"):
                raise ValueError(f"content type {ctype!r}, not text/plain")
            data: bytes = response.read(MAX_POLICY + 1)
        if len(data) > MAX_POLICY:
            raise ValueError("policy too large")
        return data.decode("utf-8")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        raise ValueError("redirects are not followed for MTA-STS policies")
