"""The queue worker is in charge of outgoing messages once they are queued: it attempts delivery (direct to the
recipients' MX hosts or through a relay), retries with backoff, and sends DSNs for failed or delayed deliveries.

Implementation notes:
- The queue lives in the store; this worker keeps no state that a restart would lose. Recipients being attempted
  are excluded from the next scan (``busy``), so no recipient is attempted twice at once.
- Each attempt is one transaction per (message, destination): recipients of one domain (or of one relay) share a
  connection and a DATA. Outcomes are committed right after the remote's replies, so a restart does not send
  again to a recipient that accepted the message (the window is the one of RFC 1047, as in every MTA).
- A DSN is stored (into the sender's mailbox when the sender is local, queued with the null reverse-path when not)
  before the outcome that calls for it is committed: a crash in between may repeat a notice, never lose one.
- Concurrency: at most ``queue.max_deliveries`` attempts at once, ``delivery.per_destination`` per domain or relay.
- Direct attempts pass the IP warm-up first (:mod:`~homemail.delivery.warmup`, ``[warmup]``): recipients over a
  provider's daily cap wait (not counted as an attempt) or go through the overflow relay; the outcomes are
  recorded for its brakes. A direct refusal about our address's reputation, for a domain whose ``[[route]]``
  has ``after_failures``, is not a failure: the recipient goes through that relay at once
  (:mod:`~homemail.delivery.reputation`, :func:`~homemail.delivery.routes.reputation_fallback`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from homemail import addresses
from homemail.config import RelayConfig
from homemail.delivery import dsn
from homemail.delivery.client import ConnectFailed, Connection, Message, Pool, Recipient, Reply, Target
from homemail.delivery.mtasts import MTASTS
from homemail.delivery.reputation import refused_for_reputation
from homemail.delivery.routes import RouteFailure, choose_relay, mx_hosts, reputation_fallback, resolve_hosts
from homemail.delivery.warmup import Warmup
from homemail.dns import get_resolver
from homemail.store import DeliveryTarget, QueuedMessage, QueuedRecipient, QueueRecipient, RecipientUpdate

if TYPE_CHECKING:
    from homemail.server import Services

log = logging.getLogger(__name__)

SCAN_LIMIT = 500


class QueueWorker:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self.store = services.store
        self.resolver = get_resolver(services)
        d = self.config.delivery
        self.pool = Pool(d.idle_close)
        self.mtasts = MTASTS(self.resolver, d.mta_sts_port, d.mta_sts_cafile) if d.mta_sts else None
        self.warmup = Warmup(self.config, self.store, self.resolver) if self.config.warmup.enabled else None
        self.wakeup = asyncio.Event()
        self.busy: set[int] = set()
        self.slots = asyncio.Semaphore(self.config.queue.max_deliveries)
        self.per_destination: dict[str, asyncio.Semaphore] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def kick(self) -> None:
        """New mail was queued: look now rather than at the next poll."""
        self.wakeup.set()

    async def run(self) -> None:
        poll = self.config.queue.poll_interval
        try:
            while True:
                self.wakeup.clear()
                now = time.time()
                for message in await self.store.queue_due(now, SCAN_LIMIT, exclude=self.busy):
                    for key, (relay, rcpts) in self._groups(message).items():
                        self.busy.update(r.id for r in rcpts)
                        task = asyncio.create_task(self._attempt(message, key, relay, rcpts))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                next_at = await self.store.queue_next_attempt()
                wait = poll if next_at is None else min(poll, max(0.05, next_at - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), wait)
                await self.pool.expire()
        finally:
            for task in list(self.tasks):
                task.cancel()
            await self.pool.expire(everything=True)

    def _groups(self, message: QueuedMessage) -> dict[str, tuple[RelayConfig | None, list[QueuedRecipient]]]:
        groups: dict[str, tuple[RelayConfig | None, list[QueuedRecipient]]] = {}
        for r in message.recipients:
            domain = r.address.rpartition("@")[2].lower()
            relay = choose_relay(self.config, domain, r.attempts)
            key = f"relay:{relay.name}" if relay else f"domain:{domain}"
            groups.setdefault(key, (relay, []))[1].append(r)
        return groups

    async def _attempt(
        self, message: QueuedMessage, key: str, relay: RelayConfig | None, rcpts: list[QueuedRecipient]
    ) -> None:
        try:
            limit = self.per_destination.setdefault(
                key, asyncio.Semaphore(self.config.delivery.per_destination)
            )
            async with self.slots, limit:
                await self._attempt_now(message, key, relay, rcpts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("queue %d: attempt for %s failed", message.id, key)
        finally:
            self.busy.difference_update(r.id for r in rcpts)

    async def _attempt_now(
        self, message: QueuedMessage, key: str, relay: RelayConfig | None, rcpts: list[QueuedRecipient]
    ) -> None:
        now = time.time()
        outcomes: dict[int, tuple[Reply, str]] = {}
        waits: list[RecipientUpdate] = []  # held back by the warm-up, or off to a relay now
        live = []
        for r in rcpts:
            if r.state == "bounce":
                outcomes[r.id] = (
                    Reply(550, "5.0.0 " + (r.last_error or "Returned by the administrator")),
                    "",
                )
            else:
                live.append(r)
        if live:
            data = without_return_path(await self.store.read_blob(message.blob_id))
            out = Message(
                message.sender, data, message.smtputf8, message.body8bit, message.envid, message.ret
            )
            if relay is None:
                outcomes.update(await self._direct(message, out, key.partition(":")[2], live, waits))
            else:
                outcomes.update(await self._deliver(out, "", relay, live))
        await self._settle(message, rcpts, outcomes, now)
        if waits:
            await self.store.queue_update(waits)
            self.kick()

    async def _direct(
        self,
        message: QueuedMessage,
        out: Message,
        domain: str,
        rcpts: list[QueuedRecipient],
        waits: list[RecipientUpdate],
    ) -> dict[int, tuple[Reply, str]]:
        """Direct delivery to ``domain``, within the warm-up limits, with the relay of a reputation refusal."""
        outcomes: dict[int, tuple[Reply, str]] = {}
        provider = await self.warmup.provider_of(domain) if self.warmup is not None else None
        if self.warmup is not None and provider is not None:
            admission = await self.warmup.admit(provider, len(rcpts))
            rcpts, held = rcpts[: admission.granted], rcpts[admission.granted :]
            overflow = self.warmup.overflow_relay
            for r in held:
                log.info("queue %d: <%s> %s", message.id, r.address, admission.reason)
            if held and overflow is not None:
                log.info(
                    "queue %d: warm-up overflow to %s goes through relay %s",
                    message.id,
                    provider,
                    overflow.name,
                )
                outcomes.update(await self._deliver(out, "", overflow, held))
            else:
                waits += [
                    RecipientUpdate(
                        r.id,
                        "queued",
                        next_attempt=admission.until,
                        last_error=admission.reason,
                        attempted=False,
                    )
                    for r in held
                ]
        if not rcpts:
            return outcomes
        direct = await self._deliver(out, domain, None, rcpts)
        if self.warmup is not None and provider is not None:
            await self.warmup.record(provider, list(direct.values()))
        fallback = reputation_fallback(self.config, domain)
        for r in rcpts:
            reply, remote = direct[r.id]
            if fallback is not None and refused_for_reputation(reply):
                relay, after = fallback
                log.info(
                    "queue %d: <%s> refused for our address's reputation (%s): through relay %s now",
                    message.id,
                    r.address,
                    reply,
                    relay.name,
                )
                waits.append(
                    RecipientUpdate(
                        r.id,
                        "queued",
                        next_attempt=time.time(),
                        last_error=f"{reply} (a refusal for the sending address's reputation: relay {relay.name} next)",
                        remote=remote,
                        min_attempts=after,
                    )
                )
            else:
                outcomes[r.id] = (reply, remote)
        return outcomes

    async def _deliver(
        self, message: Message, domain: str, relay: RelayConfig | None, rcpts: Sequence[QueuedRecipient]
    ) -> dict[int, tuple[Reply, str]]:
        """One attempt; each recipient's reply and the host that gave it."""
        d = self.config.delivery
        try:
            if relay is not None:
                hosts = await resolve_hosts(self.resolver, [relay.host], d.ipv4_only)
                targets = [
                    Target(h.name, ip, relay.port, relay.tls, relay.username, relay.secret(), relay.cafile)
                    for h in hosts
                    for ip in h.addresses
                ]
            else:
                targets = await self._direct_targets(domain)
        except RouteFailure as e:
            reply = Reply(554 if e.permanent else 451, f"{e.status} {str(e).partition(' ')[2]}")
            return {r.id: (reply, "") for r in rcpts}
        recipients = [Recipient(r.address, r.notify, r.orcpt) for r in rcpts]
        errors: list[str] = []
        refused = False  # a host refused the session (5xx greeting or EHLO)
        for target in targets:
            conn = self.pool.take(target)
            if conn is None:
                conn = Connection(
                    target,
                    self.config.hostname,
                    d.command_timeout,
                    d.source_ipv6 if ":" in target.ip else d.source_ipv4,
                )
                try:
                    await conn.open(d.connect_timeout)
                except ConnectFailed as e:
                    log.info("delivery: %s", e)
                    errors.append(str(e))
                    refused = refused or (e.permanent and relay is None)
                    continue
            results = await conn.send(message, recipients)
            self.pool.give(conn)
            remote = f"{target.host} [{target.ip}]"
            by_address = {r.address: r for r in rcpts}
            return {by_address[a].id: (reply, remote) for a, reply in results.items()}
        reply = Reply(
            451,
            "4.4.1 " + ("; ".join(errors[-3:]) or "No mail host could be reached"),
            session_refused=refused,
        )
        return {r.id: (reply, "") for r in rcpts}

    async def _direct_targets(self, domain: str) -> list[Target]:
        d = self.config.delivery
        names = await mx_hosts(self.resolver, domain)
        implicit = names == [addresses.domain_ascii(domain)]
        tls = "opportunistic"
        if self.mtasts is not None:
            policy = await self.mtasts.policy(addresses.domain_ascii(domain))
            if policy is not None and policy.enforced:
                names = [n for n in names if policy.allows(n)]
                if not names:
                    raise RouteFailure(
                        "4.7.5", f"No MX host of {domain} matches its MTA-STS policy", permanent=False
                    )
                tls = "verify"
        hosts = await resolve_hosts(self.resolver, names, d.ipv4_only, implicit=implicit)
        return [
            Target(h.name, ip, d.smtp_port, tls, cafile=d.tls_cafile) for h in hosts for ip in h.addresses
        ]

    def _next_attempt(self, attempts: int, now: float) -> float:
        schedule = self.config.queue.retry
        return now + schedule[min(attempts, len(schedule)) - 1] if attempts > 0 else now

    async def _settle(
        self,
        message: QueuedMessage,
        rcpts: Sequence[QueuedRecipient],
        outcomes: dict[int, tuple[Reply, str]],
        started: float,
    ) -> None:
        q = self.config.queue
        now = time.time()
        expired = now - message.created >= q.expire
        updates: list[RecipientUpdate] = []
        failed: list[dsn.Failure] = []
        delayed: list[dsn.Failure] = []
        for r in rcpts:
            if r.id not in outcomes:
                continue
            reply, remote = outcomes[r.id]
            status = dsn.status_of(reply.text, reply.permanent)
            text = str(reply)
            if reply.ok:
                log.info("queue %d: <%s> delivered via %s: %s", message.id, r.address, remote or "-", text)
                updates.append(RecipientUpdate(r.id, "sent", last_error="", remote=remote))
            elif reply.permanent or expired:
                if not reply.permanent:
                    # Failed for good now: the last reply's detail with the permanent class (RFC 3463 2).
                    text = f"{text} (gave up after {_duration(now - message.created)})"
                    status = "5" + status[1:]
                log.info("queue %d: <%s> failed: %s", message.id, r.address, text)
                updates.append(RecipientUpdate(r.id, "failed", last_error=text, remote=remote))
                if dsn.wants_notice(r.notify, "failed"):
                    failed.append(dsn.Failure(r.address, "failed", status, text, remote, r.orcpt))
            else:
                attempts = r.attempts + 1
                notify_delay = (
                    q.delay_notice > 0
                    and not r.delay_notified
                    and now - message.created >= q.delay_notice
                    and dsn.wants_notice(r.notify, "delayed")
                )
                log.info("queue %d: <%s> deferred (attempt %d): %s", message.id, r.address, attempts, text)
                updates.append(
                    RecipientUpdate(
                        r.id,
                        "queued",
                        next_attempt=self._next_attempt(attempts, now),
                        last_error=text,
                        remote=remote,
                        delay_notified=True if notify_delay else None,
                    )
                )
                if notify_delay:
                    delayed.append(dsn.Failure(r.address, "delayed", status, text, remote, r.orcpt))
        for report in (failed, delayed):
            if report:
                await self._notify(message, report)
        await self.store.queue_update(updates)

    async def _notify(self, message: QueuedMessage, failures: list[dsn.Failure]) -> None:
        if not message.sender:
            return  # RFC 5321 4.5.5: never a DSN for a DSN (or any null-sender message)
        original = await self.store.read_blob(message.blob_id)
        report = dsn.build(
            hostname=self.config.hostname,
            sender=message.sender,
            failures=failures,
            original=original,
            envid=message.envid,
            ret=message.ret,
            arrival=message.created,
        )
        await deliver_notice(self.services, message.sender, report)


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


def without_return_path(data: bytes) -> bytes:
    """RFC 5321 4.4: a relaying SMTP system should not send a Return-Path: field; a forwarded message's file
    starts with the one its local copies show."""
    if data[:12].lower() != b"return-path:":
        return data
    end = data.find(b"\r\n")
    while end >= 0 and data[end + 2 : end + 3] in (b" ", b"\t"):
        end = data.find(b"\r\n", end + 2)
    return data[end + 2 :] if end >= 0 else data


async def deliver_notice(services: Services, to: str, report: bytes) -> None:
    """Put a notice into the local mailbox of ``to``, or queue it with the null reverse-path for elsewhere."""
    store = services.store
    resolved = await store.resolve(to)
    head = f"Return-Path: <>\r\nDelivered-To: {to}\r\n".encode()
    if resolved is not None and resolved.accounts:
        await store.deliver(head + report, [DeliveryTarget(a.id) for a in resolved.accounts])
        log.info("notice to <%s> delivered locally", to)
        return
    await store.enqueue(report, "", [QueueRecipient(to)])
    worker = services.extras.get("queue")
    if isinstance(worker, QueueWorker):
        worker.kick()
    log.info("notice to <%s> queued", to)


async def start_worker(services: Services) -> asyncio.Task[None] | None:
    worker = QueueWorker(services)
    services.extras["queue"] = worker
    return asyncio.create_task(worker.run(), name="queue")
