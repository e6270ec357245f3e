"""Greylisting (optional, ``[greylist] enabled``): a sender we do not know yet is asked to try again later.

The unit is the triplet (client network, envelope sender, recipient), judged at RCPT. Legitimate MTAs retry a
451 (RFC 5321 4.5.4.1); most spam software does not. State is kept in the store (table ``greylist``), so a
restart neither forgets accepted senders nor makes waiting ones start over.

Rules:
- First sight of a triplet: 451 4.7.1 with the time to wait. A retry before ``delay``: 451 again (the wait is
  counted from the first attempt, not restarted). A retry after ``delay`` and within ``retry_window``: accepted,
  and the triplet is accepted from then on. A retry later than ``retry_window`` starts over.
- Auto-allowlist: a client network whose triplet passed once (``auto_allowlist``) is not greylisted again for
  any sender or recipient; entries unseen for ``expire`` are forgotten.
- Never greylisted: clients in ``[greylist] allowlist``, and mail whose SPF result is "pass" for a known sender
  domain: one that earlier got mail through greylisting with SPF pass. SPF pass proves the client may send for
  the domain, so the large sender pools of known correspondents (which retry from another address) are not
  delayed. :meth:`Greylist.known_domain` lets the DATA stage apply the same exemption to a DKIM-verified domain.
- The client network is the /24 of an IPv4 client and the /64 of an IPv6 one (configurable), because big senders
  retry from another host of the same pool.
- Keys: ``t:<net>|<sender>|<recipient>`` (sender ``<>`` when null, both lower-case), ``c:<net>``, ``d:<domain>``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from homemail.config import GreylistConfig
from homemail.mailauth.ratelimit import client_key, in_networks
from homemail.mailauth.spf import SPFResult
from homemail.store import GreylistEntry, Store

log = logging.getLogger(__name__)

TOUCH_INTERVAL = 3600.0  # last_seen of accepted entries is refreshed at most this often (one write per hour)
EXPIRE_INTERVAL = 3600.0  # old entries are swept at most this often


@dataclass(frozen=True, slots=True)
class Decision:
    defer: bool
    reason: str  # "new", "too early", "retried", "accepted before", "client allowlisted", "known sender", ...
    retry_in: float = 0.0  # seconds until a retry can pass (defer only)


class Greylist:
    def __init__(self, store: Store, config: GreylistConfig) -> None:
        self.store = store
        self.config = config
        self._expired_at = 0.0

    def network(self, ip: str) -> str:
        return client_key(ip, self.config.ipv4_prefix, self.config.ipv6_prefix)

    def triplet(self, ip: str, sender: str, recipient: str) -> str:
        return f"t:{self.network(ip)}|{sender.lower() or '<>'}|{recipient.lower()}"

    def _fresh(self, entry: GreylistEntry | None, now: float) -> bool:
        """An accepted entry (triplet, client, domain) still remembered."""
        return entry is not None and entry.passes > 0 and now - entry.last_seen <= self.config.expire

    async def known_domain(self, domain: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        key = f"d:{domain.lower()}"
        return self._fresh((await self.store.greylist_get([key])).get(key), now)

    async def learn_domain(self, domain: str, now: float | None = None) -> None:
        """Remember an authenticated sender domain whose mail was accepted."""
        now = time.time() if now is None else now
        key = f"d:{domain.lower()}"
        entry = (await self.store.greylist_get([key])).get(key)
        await self._touch(entry, key, now)

    async def _touch(self, entry: GreylistEntry | None, key: str, now: float) -> None:
        """Record one more acceptance (writes at most once per TOUCH_INTERVAL for an entry already accepted)."""
        if entry is None or entry.passes == 0 or not self._fresh(entry, now):
            await self.store.greylist_put([GreylistEntry(key, now, now, 1)])
        elif now - entry.last_seen > TOUCH_INTERVAL:
            await self.store.greylist_put([GreylistEntry(key, entry.first_seen, now, entry.passes + 1)])

    async def check(
        self, ip: str, sender: str, recipient: str, spf: SPFResult | None = None, now: float | None = None
    ) -> Decision:
        """The verdict for one recipient of a transaction (and the state change it implies)."""
        now = time.time() if now is None else now
        if in_networks(ip, self.config.allowlist):
            return Decision(False, "allowlisted network")
        await self._expire(now)
        t_key = self.triplet(ip, sender, recipient)
        c_key = f"c:{self.network(ip)}"
        spf_domain = spf.domain.lower() if spf is not None and spf.result == "pass" and spf.domain else ""
        d_key = f"d:{spf_domain}" if spf_domain else ""
        entries = await self.store.greylist_get([k for k in (t_key, c_key, d_key) if k])
        triplet, client, domain = entries.get(t_key), entries.get(c_key), entries.get(d_key)

        async def accepted(reason: str) -> Decision:
            await self._touch(triplet, t_key, now)
            if d_key:
                await self._touch(domain, d_key, now)
            return Decision(False, reason)

        if d_key and self._fresh(domain, now):
            return await accepted("known sender (SPF pass)")
        if self._fresh(client, now):
            assert client is not None
            await self._touch(client, c_key, now)
            return await accepted("client allowlisted")
        if triplet is not None and triplet.passes > 0 and self._fresh(triplet, now):
            return await accepted("accepted before")
        if triplet is None or triplet.passes > 0 or now - triplet.first_seen > self.config.retry_window:
            await self.store.greylist_put([GreylistEntry(t_key, now, now, 0)])
            return Decision(True, "new", self.config.delay)
        waited = now - triplet.first_seen
        if waited < self.config.delay:
            return Decision(True, "too early", self.config.delay - waited)
        if self.config.auto_allowlist:
            await self._touch(client, c_key, now)
        return await accepted("retried")

    async def _expire(self, now: float) -> None:
        if now - self._expired_at < EXPIRE_INTERVAL:
            return
        self._expired_at = now
        gone = await self.store.greylist_expire(now - self.config.retry_window, now - self.config.expire)
        if gone:
            log.info("greylist: %d old entries removed", gone)
