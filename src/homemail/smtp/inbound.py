"""The MX policy: which recipients mail from the Internet may reach, and delivery into local mailboxes.

Rules:
- A recipient is accepted only in a local domain and only when the store resolves it (account, ``user+tag``,
  alias, catch-all). Unknown local user: 550 5.1.1. Any other domain: 554 5.7.1, since an unauthenticated client
  may never relay. The address is judged only by its final ``local@domain`` (source routes are stripped by the
  engine); ``%``, ``!`` and quoted ``@`` in the local part are never routing (RFC 5321 3.6.1 / 4.1.1.3).
- Alias targets outside our domains are forwarded: the message is queued for them with its original envelope
  sender (as Postfix forwards), in the same commit as the local copies.
- One copy per account per message, however many recipients lead to it.
- The final reply comes after :meth:`Store.deliver` returned: the file and rows are durable for every account.

Connection, HELO and MAIL FROM checks (the decisions; the checks live in :mod:`homemail.mailauth`):
- Connect: a client over ``[limits] connections_per_minute`` gets 421 4.7.0. The reverse DNS (forward-confirmed,
  :mod:`~homemail.mailauth.iprev`) and the blocklist lookups (:mod:`~homemail.mailauth.dnsbl`) run while the
  greeting waits; a client not seen lately also waits ``greet_pause``. A client that sends anything before the
  greeting is dropped with 554 5.5.1 (RFC 5321 3.1, 4.3.1: the client waits for the greeting). The names go into
  ``session.state``: ``reverse_name`` (forward-confirmed, for Received:) and ``iprev`` (RFC 8601 result).
- Blocklists are enforced at RCPT rather than at the greeting, so the refused envelope is logged: a listed client
  gets 554 5.7.1 with the list's reason for every recipient; a blocklist that could not be asked (DNS failure)
  gives 451 4.7.1, never a silent pass. A list that refuses our queries (127.255.255.x) is logged and ignored.
- SPF (:mod:`~homemail.mailauth.spf`) of the HELO name runs from EHLO/HELO, that of MAIL FROM at MAIL; the
  results go to ``envelope.state["spf_helo"]`` and ``envelope.state["spf"]``. A fail refuses nothing here: DMARC
  after DATA decides, and the result is recorded. A temperror of the MAIL FROM identity (for a null sender, the
  HELO identity) is 451 4.7.24 (RFC 7208 8.6, RFC 7372 3.2): the answer is not known, so the client retries
  rather than the mail passing unchecked.
- ``[limits] messages_per_minute`` counts MAIL commands per client: over it, 451 4.7.1.
- Greylisting (:mod:`~homemail.mailauth.greylist`, off by default) is decided per valid recipient: 451 4.7.1.
- Networks in ``[limits] exempt`` (loopback by default) get no rate limits, greeting pause, pre-greeting check or
  greylisting; ``[dnsbl] allowlist`` (loopback by default) is never looked up in blocklists.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from homemail.dns import get_resolver
from homemail.mailauth import checks, dnsbl, iprev, rspamd, spf
from homemail.mailauth.greylist import Greylist
from homemail.mailauth.ratelimit import RateLimiter, client_key, in_networks
from homemail.smtp.policy import Envelope, Policy, RcptTo, SessionInfo
from homemail.smtp.replies import Reply, SMTPError
from homemail.store import Account, DeliveryTarget, QueueRecipient, Recipient, StoreError

if TYPE_CHECKING:
    from homemail.server import Services

log = logging.getLogger(__name__)

DOMAIN_CACHE_SECONDS = 5.0
RECIPIENT_CACHE_SIZE = 10_000
GREETED_MEMORY = 86400.0  # a client that waited for the greeting is not paused again for this long
GREETED_MAX = 100_000


@dataclass(slots=True)
class _Client:
    """What the connection checks found out about one connection (kept across STARTTLS, which clears
    ``session.state``)."""

    exempt: bool
    key: str  # the rate-limit key: the address, or the /64 of an IPv6 client
    iprev: iprev.IPRevResult | None = None
    dnsbl: dnsbl.DNSBLResult | None = None
    helo: str | None = None
    helo_spf: asyncio.Task[spf.SPFResult] | None = None


class InboundPolicy(Policy):
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store
        config = services.config
        self.hostname = config.hostname
        self._domains: frozenset[str] = frozenset()
        self._domains_at = 0.0
        self._recipients: dict[str, tuple[float, Recipient]] = {}
        self.limits = config.limits
        self.spf = config.spf
        self.dnsbl = config.dnsbl
        self.connection_rate = RateLimiter(config.limits.connections_per_minute)
        self.message_rate = RateLimiter(config.limits.messages_per_minute)
        self.greylist = Greylist(self.store, config.greylist) if config.greylist.enabled else None
        self._clients: weakref.WeakKeyDictionary[SessionInfo, _Client] = weakref.WeakKeyDictionary()
        self._greeted: dict[str, float] = {}

    # --- connection checks ---

    async def connect(self, session: SessionInfo) -> None:
        ip = session.peer_ip
        try:
            exempt = in_networks(ip, self.limits.exempt)
            key = client_key(ip)
        except ValueError:  # no IP peer (a test transport): nothing to check
            return
        client = _Client(exempt, key)
        self._clients[session] = client
        if not exempt and not self.connection_rate.hit(key):
            log.warning("smtp %s %s: connection rate limit, refused", session.session_id, ip)
            raise SMTPError(
                421, "4.7.0", f"{self.hostname} Too many connections from your address; try later"
            )
        resolver = get_resolver(self.services)
        now = time.monotonic()
        pause = 0.0
        if not exempt and now - self._greeted.get(key, -GREETED_MEMORY) >= GREETED_MEMORY:
            pause = self.limits.greet_pause
        lookup_dnsbl = bool(self.dnsbl.zones) and not dnsbl.allowed(ip, self.dnsbl.allowlist)
        rev, listing, _ = await asyncio.gather(
            iprev.check(resolver, ip),
            dnsbl.check(resolver, ip, self.dnsbl.zones) if lookup_dnsbl else _none(),
            asyncio.sleep(pause),
        )
        client.iprev, client.dnsbl = rev, listing
        self._remember(session, client)
        if not exempt and session.input_pending():
            log.warning("smtp %s %s: talked before the greeting, dropped", session.session_id, ip)
            raise SMTPError(554, "5.5.1", f"{self.hostname} Protocol error: you talked before the greeting")
        if pause:
            if len(self._greeted) >= GREETED_MAX:
                self._greeted.clear()
            self._greeted[key] = now
        if listing is not None and (listing.listed or listing.errors or listing.refused):
            if listing.refused:
                log.error(
                    "smtp %s %s: blocklist refused our query: %s (use a resolver of your own, not a public one)",
                    session.session_id,
                    ip,
                    "; ".join(listing.refused),
                )
            if listing.listed:
                log.info(
                    "smtp %s %s: listed by %s (%s)",
                    session.session_id,
                    ip,
                    listing.listed.zone,
                    listing.listed.reason,
                )
            if listing.errors:
                log.warning(
                    "smtp %s %s: blocklist lookup failed: %s", session.session_id, ip, listing.errors[0]
                )

    def _remember(self, session: SessionInfo, client: _Client) -> None:
        """The connection facts in session.state (also after STARTTLS cleared it)."""
        rev = client.iprev
        if rev is not None:
            session.state["iprev"] = rev.result
            session.state["iprev_result"] = rev
            if rev.name:
                session.state["reverse_name"] = rev.name
        if client.dnsbl is not None:
            session.state["dnsbl"] = client.dnsbl

    async def helo(self, session: SessionInfo, name: str) -> None:
        client = self._clients.get(session)
        if client is None:
            return
        if "iprev" not in session.state:
            self._remember(session, client)
        if not self.spf.enabled or not self.spf.helo or name == client.helo:
            return
        if client.helo_spf is not None:
            client.helo_spf.cancel()
        client.helo = name
        # Runs while the client sends its next command; MAIL waits for it.
        client.helo_spf = asyncio.get_running_loop().create_task(
            spf.check_helo(
                get_resolver(self.services), session.peer_ip, name, self.hostname, self.spf.timeout
            )
        )

    def close(self, session: SessionInfo) -> None:
        client = self._clients.pop(session, None)
        if client is not None and client.helo_spf is not None and not client.helo_spf.done():
            client.helo_spf.cancel()

    async def is_local_domain(self, domain: str) -> bool:
        """Cached: local domains are looked up at most every few seconds; a miss asks the store itself, so a
        domain added a moment ago is found."""
        now = time.monotonic()
        if now - self._domains_at > DOMAIN_CACHE_SECONDS:
            self._domains = frozenset(d.name for d in await self.store.list_domains())
            self._domains_at = now
        if domain in self._domains:
            return True
        if await self.store.is_local_domain(domain):
            self._domains_at = 0.0
            return True
        return False

    async def _resolve(self, address: str) -> Recipient | None:
        """The store's answer, remembered for a few seconds when it found someone: a busy address costs no
        database read per message. Unknown addresses are always asked again, so a new account gets mail at
        once; a removed one may still be accepted for those seconds (its delivery then fails with a 4xx)."""
        now = time.monotonic()
        key = address.lower()
        hit = self._recipients.get(key)
        if hit is not None and now - hit[0] < DOMAIN_CACHE_SECONDS:
            return hit[1]
        resolved = await self.store.resolve(address)
        if resolved is not None:
            if len(self._recipients) >= RECIPIENT_CACHE_SIZE:
                self._recipients.clear()
            self._recipients[key] = (now, resolved)
        return resolved

    async def mail_from(self, session: SessionInfo, envelope: Envelope) -> Reply | None:
        # Any syntactically valid reverse-path, the null one too (RFC 5321 4.5.5: bounces must get through).
        envelope.state["accounts"] = {}
        envelope.state["external"] = []
        client = self._clients.get(session)
        if client is None:
            return None
        if not client.exempt and not self.message_rate.hit(client.key):
            log.warning("smtp %s %s: message rate limit, MAIL deferred", session.session_id, session.peer_ip)
            raise SMTPError(451, "4.7.1", "Too much mail from your address; slow down and try again later")
        if self.spf.enabled:
            result = await self._spf(session, client, envelope)
            if result.result == "temperror":
                log.info(
                    "smtp %s %s: SPF temperror for <%s>: %s",
                    session.session_id,
                    session.peer_ip,
                    envelope.sender,
                    result.reason,
                )
                raise SMTPError(
                    451, "4.7.24", f"SPF check of {result.domain} failed for now (DNS); try again later"
                )
        return None

    async def _spf(self, session: SessionInfo, client: _Client, envelope: Envelope) -> spf.SPFResult:
        helo_result: spf.SPFResult | None = None
        if client.helo_spf is not None and client.helo == session.helo:
            try:
                helo_result = await asyncio.shield(client.helo_spf)
            except asyncio.CancelledError:
                if not client.helo_spf.cancelled():
                    raise
        if helo_result is not None:
            envelope.state["spf_helo"] = helo_result
        helo = session.helo or ""
        if not envelope.sender and helo_result is not None:
            result = helo_result  # a null sender's identity is the HELO one (RFC 7208 2.4)
        else:
            sender = envelope.sender
            local, _, domain = sender.rpartition("@")
            if not domain.isascii():
                try:
                    sender = f"{local}@{domain.encode('idna').decode('ascii')}"
                except UnicodeError:
                    pass  # not a name DNS can hold: check_host() says "none"
            result = await spf.check_mailfrom(
                get_resolver(self.services), session.peer_ip, sender, helo, self.hostname, self.spf.timeout
            )
        envelope.state["spf"] = result
        log.debug(
            "smtp %s %s: spf=%s (%s) for %s",
            session.session_id,
            session.peer_ip,
            result.result,
            result.scope,
            result.domain,
        )
        return result

    async def _postmaster(self) -> str | None:
        """RFC 5321 4.5.1: <postmaster> without a domain reaches the postmaster of our first domain."""
        domains = [d.name for d in await self.store.list_domains()]
        if self.hostname in domains:
            domains.remove(self.hostname)
            domains.insert(0, self.hostname)
        for d in domains:
            if await self.store.resolve(f"postmaster@{d}") is not None:
                return f"postmaster@{d}"
        return None

    def _check_dnsbl(self, session: SessionInfo, envelope: Envelope, rcpt: RcptTo) -> None:
        client = self._clients.get(session)
        result = client.dnsbl if client is not None else None
        if result is None:
            return
        if result.listed is not None:
            listing = result.listed
            log.info(
                "smtp %s %s: blocklisted (%s): <%s> -> <%s> refused",
                session.session_id,
                session.peer_ip,
                listing.zone,
                envelope.sender,
                rcpt.address,
            )
            raise SMTPError(
                554,
                "5.7.1",
                f"Service unavailable; client [{result.ip}] blocked using {listing.zone}; {listing.reason}",
            )
        if result.temporary_failure:
            raise SMTPError(451, "4.7.1", "Cannot check your address against blocklists now; try again later")

    async def _check_greylist(self, session: SessionInfo, envelope: Envelope, address: str) -> None:
        client = self._clients.get(session)
        if self.greylist is None or client is None or client.exempt:
            return
        try:
            decision = await self.greylist.check(
                session.peer_ip, envelope.sender, address, envelope.state.get("spf")
            )
        except StoreError as e:
            log.error("smtp %s: greylist state unavailable: %s", session.session_id, e)
            raise SMTPError(451, "4.3.0", "Temporary failure; try again later") from None
        envelope.state.setdefault("greylist", {})[address] = decision.reason
        if decision.defer:
            log.info(
                "smtp %s %s: greylisted (%s): <%s> -> <%s>",
                session.session_id,
                session.peer_ip,
                decision.reason,
                envelope.sender,
                address,
            )
            raise SMTPError(
                451, "4.7.1", f"Greylisted: please try again in {int(decision.retry_in) + 1} seconds"
            )

    async def rcpt_to(self, session: SessionInfo, envelope: Envelope, rcpt: RcptTo) -> Reply | None:
        self._check_dnsbl(session, envelope, rcpt)
        address = rcpt.address
        if address == "postmaster":
            found = await self._postmaster()
            if found is None:
                raise SMTPError(550, "5.1.1", "No postmaster here")
            address = found
        domain = address.rpartition("@")[2]
        if not await self.is_local_domain(domain):
            log.info(
                "smtp %s %s: relay refused: <%s> -> <%s>",
                session.session_id,
                session.peer_ip,
                envelope.sender,
                address,
            )
            raise SMTPError(554, "5.7.1", f"Relay access denied for <{address}>")
        resolved = await self._resolve(address)
        if resolved is None:
            raise SMTPError(550, "5.1.1", f"No such user here: <{address}>")
        await self._check_greylist(session, envelope, address)
        accounts: dict[int, Account] = envelope.state.setdefault("accounts", {})
        for acc in resolved.accounts:
            accounts[acc.id] = acc
        if resolved.external:
            external: list[str] = envelope.state.setdefault("external", [])
            for ext in resolved.external:
                if ext not in external:
                    external.append(ext)
        return None

    async def data(self, session: SessionInfo, envelope: Envelope, message: bytes) -> Reply:
        accounts: dict[int, Account] = envelope.state.get("accounts", {})
        external: list[str] = envelope.state.get("external") or []
        if not accounts and not external:
            raise SMTPError(554, "5.5.1", "No valid recipients")
        # DKIM, ARC, DMARC, rspamd and Authentication-Results: homemail.mailauth.checks.
        checked = await self._assess(session, envelope, message)
        if checked.refusal is not None:
            code, enhanced, text = checked.refusal
            log.info(
                "smtp %s: refused %s from=<%s> %s: %d %s %s",
                session.session_id,
                envelope.id,
                envelope.sender,
                checked.summary,
                code,
                enhanced,
                text,
            )
            raise SMTPError(code, enhanced, text)
        message = checked.message
        mailbox = "\\Junk" if checked.junk else "INBOX"
        targets = [DeliveryTarget(account_id, mailbox) for account_id in accounts]
        trace = (
            b"Return-Path: <"
            + envelope.sender.encode("utf-8")
            + b">\r\n"
            + session.received_header(envelope)
            + checked.header
        )
        try:
            if external:
                # One file for the local copies and the forwarded ones; the queue drops the Return-Path: before
                # sending (RFC 5321 4.4).
                _, placed = await self.store.enqueue(
                    trace + message,
                    envelope.sender,
                    [QueueRecipient(a) for a in external],
                    targets,
                    smtputf8=envelope.smtputf8,
                    body8bit=envelope.body == "8BITMIME" or not message.isascii(),
                )
                kick = getattr(self.services.extras.get("queue"), "kick", None)
                if callable(kick):
                    kick()
            else:
                placed = await self.store.deliver(trace + message, targets)
        except StoreError as e:
            log.error("smtp %s: storing %s failed: %s", session.session_id, envelope.id, e)
            raise SMTPError(451, "4.3.0", "Temporary failure storing the message; try again later") from None
        log.info(
            "smtp %s: delivered %s from=<%s> to=%s size=%d copies=%d forwarded=%d%s %s",
            session.session_id,
            envelope.id,
            envelope.sender,
            ",".join(f"<{r.address}>" for r in envelope.recipients),
            len(message),
            len(placed),
            len(external),
            " junk" if checked.junk else "",
            checked.summary,
        )
        return Reply(250, "2.0.0", f"Ok: delivered as {envelope.id}")

    async def _assess(self, session: SessionInfo, envelope: Envelope, message: bytes) -> checks.Assessment:
        config = self.services.config
        spam = self.services.extras.get("rspamd")
        if spam is None and config.rspamd.url:
            spam = self.services.extras["rspamd"] = rspamd.Client(config.rspamd.url, config.rspamd.timeout)
        context = checks.Context(
            peer_ip=session.peer_ip,
            helo=session.helo or "",
            sender=envelope.sender,
            recipients=[r.address for r in envelope.recipients],
            queue_id=envelope.id,
            spf=envelope.state.get("spf"),
            spf_helo=envelope.state.get("spf_helo"),
            iprev=session.state.get("iprev"),
            reverse_name=session.state.get("reverse_name"),
        )
        return await checks.assess(message, context, config, get_resolver(self.services), spam)


async def _none() -> None:
    return None
