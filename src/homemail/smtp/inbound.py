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
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from homemail.smtp.policy import Envelope, Policy, RcptTo, SessionInfo
from homemail.smtp.replies import Reply, SMTPError
from homemail.store import Account, DeliveryTarget, QueueRecipient, StoreError

if TYPE_CHECKING:
    from homemail.server import Services

log = logging.getLogger(__name__)

DOMAIN_CACHE_SECONDS = 5.0


class InboundPolicy(Policy):
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store
        self.hostname = services.config.hostname
        self._domains: frozenset[str] = frozenset()
        self._domains_at = 0.0

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

    async def mail_from(self, session: SessionInfo, envelope: Envelope) -> Reply | None:
        # Any syntactically valid reverse-path, the null one too (RFC 5321 4.5.5: bounces must get through).
        envelope.state["accounts"] = {}
        envelope.state["external"] = []
        return None

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

    async def rcpt_to(self, session: SessionInfo, envelope: Envelope, rcpt: RcptTo) -> Reply | None:
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
        resolved = await self.store.resolve(address)
        if resolved is None:
            raise SMTPError(550, "5.1.1", f"No such user here: <{address}>")
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
        targets = [DeliveryTarget(account_id) for account_id in accounts]
        trace = (
            b"Return-Path: <" + envelope.sender.encode("utf-8") + b">\r\n" + session.received_header(envelope)
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
            "smtp %s: delivered %s from=<%s> to=%s size=%d copies=%d forwarded=%d",
            session.session_id,
            envelope.id,
            envelope.sender,
            ",".join(f"<{r.address}>" for r in envelope.recipients),
            len(message),
            len(placed),
            len(external),
        )
        return Reply(250, "2.0.0", f"Ok: delivered as {envelope.id}")
