"""IP warm-up: a new sending address earns the big providers' trust by volume that grows day by day. Too much
mail at once from an address they have not seen is throttled, junked or refused.

Rules:
- Destinations are grouped by provider from their MX host names (:data:`PROVIDERS`, changed and extended by
  ``[warmup] providers``): ``*.google.com`` is Google whatever the recipient's domain (Gmail, or any Google
  Workspace domain). Mail to domains of no provider in the table is not limited.
- Each provider has a daily cap (UTC days) counted in recipients: ``initial`` on the first day of the ramp
  (``[warmup] start``, or the day mail first went to that provider), ``growth`` times more each day after, never
  more than the calendar allows (``initial * growth ** days``). A provider whose cap reaches ``until`` is warmed
  up: no more limit.
- Before a direct attempt, the worker asks for as many places as the attempt has recipients; those over the cap
  wait for the next UTC day (queued, with the reason as last_error, the attempt not counted) or, with
  ``overflow = "relay:<name>"``, go through that relay at once.
- Brakes: a rate-limit answer (421, 4xx 4.7.x, "too many"...; see :mod:`homemail.delivery.reputation`), or a day
  whose deferrals and bounces pass ``max_deferral_rate`` of at least ``min_sample`` attempts, stops sending to
  the provider for the rest of the day and halves its cap; the next day holds that cap (no growth), and growth
  resumes the day after a clean one.
- Attempts that reached no server of the provider (no connection) give their places back.
- State lives in the store (table ``warmup``), written at every change: a restart keeps caps and counts. The
  worker is the only writer; ``homemail warmup status`` only reads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from homemail.config import Config, RelayConfig
from homemail.delivery.client import Reply
from homemail.delivery.reputation import is_rate_limit
from homemail.dns import DNSError, Resolver
from homemail.store import Store, WarmupState

log = logging.getLogger(__name__)

# The big providers by their MX host names. "*.name" is any host under name; a bare name only that host.
PROVIDERS: dict[str, list[str]] = {
    "google": ["*.google.com", "*.googlemail.com"],
    "microsoft": ["*.outlook.com", "*.hotmail.com", "*.olc.protection.outlook.com"],
    "yahoo": ["*.yahoodns.net", "*.yahoo.com", "*.aol.com"],
    "apple": ["*.icloud.com", "*.me.com", "*.mac.com"],
    "gmx-webde": ["*.gmx.net", "*.gmx.com", "*.web.de"],
    "yandex": ["*.yandex.net", "*.yandex.ru"],
    "mailru": ["*.mail.ru"],
    "zoho": ["*.zoho.com", "*.zoho.eu", "*.zohomail.com"],
    "proton": ["*.protonmail.ch", "*.proton.ch"],
    "fastmail": ["*.messagingengine.com"],
    "comcast": ["*.comcast.net"],
}


def provider_table(config: Config) -> dict[str, list[str]]:
    table = {name: list(patterns) for name, patterns in PROVIDERS.items()}
    for name, patterns in config.warmup.providers.items():
        if patterns:
            table[name] = list(patterns)
        else:
            table.pop(name, None)
    return table


def provider_of_host(table: dict[str, list[str]], host: str) -> str | None:
    host = host.lower().rstrip(".")
    for name, patterns in table.items():
        for pattern in patterns:
            if (pattern.startswith("*.") and host.endswith(pattern[1:])) or host == pattern:
                return name
    return None


def utc_day(ts: float) -> dt.date:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date()


def next_day(ts: float) -> float:
    """The start of the next UTC day."""
    tomorrow = utc_day(ts) + dt.timedelta(days=1)
    return dt.datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=dt.UTC).timestamp()


@dataclass(frozen=True, slots=True)
class Admission:
    granted: int  # recipients that may go now
    until: float = 0.0  # when the others may try again
    reason: str = ""  # why the others wait (an SMTP-like text for last_error)


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    provider: str
    day: str
    cap: int | None  # None: warmed up, no limit
    used: int
    sent: int
    deferred: int
    failed: int
    throttled: int
    health: str  # "ok", "braked: ...", "held: ...", "warmed up"


class Warmup:
    def __init__(self, config: Config, store: Store, resolver: Resolver | None = None) -> None:
        self.config = config
        self.settings = config.warmup
        self.store = store
        self.resolver = resolver
        self.table = provider_table(config)
        self._states: dict[str, WarmupState] | None = None
        self._lock = asyncio.Lock()
        name = config.warmup.overflow.removeprefix("relay:")
        self.overflow_relay: RelayConfig | None = next(
            (r for r in config.relay if r.name == name and config.warmup.overflow.startswith("relay:")), None
        )

    # --- the ramp ---

    def scheduled(self, started: str, day: dt.date) -> float:
        """The calendar's cap for ``day``: ``initial`` on the ramp's first day, ``growth`` times more a day."""
        first = dt.date.fromisoformat(self.settings.start or started)
        days = max(0, (day - first).days)
        cap = float(self.settings.initial)
        for _ in range(days):
            cap *= self.settings.growth
            if cap >= self.settings.until:
                break
        return cap

    def warmed_up(self, state: WarmupState) -> bool:
        return state.cap >= self.settings.until

    def rolled(self, state: WarmupState | None, provider: str, now: float) -> WarmupState:
        """The provider's state for the day of ``now``: a new one, or the stored one carried over to today."""
        today = utc_day(now)
        if state is None:
            started = today.isoformat()
            return WarmupState(provider, started, started, self.scheduled(started, today), updated=now)
        if state.day == today.isoformat():
            return state
        last = dt.date.fromisoformat(state.day)
        elapsed = max(1, (today - last).days)
        braked, note, cap = state.braked, state.note, state.cap
        attempts = state.sent + state.deferred + state.failed
        bad = state.deferred + state.failed
        if (
            not braked
            and attempts >= self.settings.min_sample
            and bad / attempts > self.settings.max_deferral_rate
        ):
            braked, cap = True, max(1.0, cap / 2)
            note = f"{bad} of {attempts} attempts deferred or bounced on {state.day}"
        if braked:
            # Held: the cap the brake left, no growth for the day after a brake.
            note = f"held after a brake on {state.day} ({note})" if not note.startswith("held") else note
        else:
            cap = min(self.scheduled(state.started, today), cap * self.settings.growth**elapsed)
            note = ""
        return WarmupState(provider, state.started, today.isoformat(), cap, note=note, updated=now)

    def _brake(self, state: WarmupState, why: str, now: float) -> None:
        if state.braked:
            return
        state.braked = True
        state.cap = max(1.0, state.cap / 2)
        state.note = why
        state.updated = now
        log.warning(
            "warm-up %s: braking (%s): no more mail today, cap now %d", state.provider, why, state.cap
        )

    async def _load(self) -> dict[str, WarmupState]:
        if self._states is None:
            self._states = {s.provider: s for s in await self.store.warmup_states()}
        return self._states

    # --- what the queue worker asks ---

    async def provider_of(self, domain: str) -> str | None:
        """The provider whose MX hosts serve ``domain``, or None (not a provider of the table, or unknown now)."""
        if self.resolver is None:
            return None
        try:
            records = await self.resolver.mx(domain)
        except DNSError:
            return None
        for record in records:
            provider = provider_of_host(self.table, record.host) if record.host else None
            if provider is not None:
                return provider
        return None

    async def admit(self, provider: str, wanted: int, now: float | None = None) -> Admission:
        """Places for ``wanted`` recipients to ``provider`` now; those granted count against today's cap."""
        now = time.time() if now is None else now
        async with self._lock:
            states = await self._load()
            state = self.rolled(states.get(provider), provider, now)
            if self.warmed_up(state):
                if states.get(provider) is not state:
                    states[provider] = state
                    await self.store.warmup_put([state])
                return Admission(wanted)
            remaining = 0 if state.braked else max(0, int(state.cap) - state.used)
            granted = min(wanted, remaining)
            state = replace(state, used=state.used + granted, updated=now)
            states[provider] = state
            await self.store.warmup_put([state])
        if granted == wanted:
            return Admission(granted)
        until = next_day(now)
        when = dt.datetime.fromtimestamp(until, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if state.braked:
            why = f"4.7.0 Warm-up: {provider} asked us to slow down ({state.note}); next attempt {when}"
        else:
            why = f"4.7.0 Warm-up: today's {int(state.cap)} messages to {provider} are used; next attempt {when}"
        return Admission(granted, until, why)

    async def record(
        self, provider: str, outcomes: Sequence[tuple[Reply, str]], now: float | None = None
    ) -> None:
        """The replies of an attempt (each with the host that gave it, "" when none did)."""
        now = time.time() if now is None else now
        async with self._lock:
            states = await self._load()
            state = replace(self.rolled(states.get(provider), provider, now), updated=now)
            for reply, remote in outcomes:
                if not remote and not reply.ok:
                    state.used = max(0, state.used - 1)  # never reached the provider
                elif reply.ok:
                    state.sent += 1
                elif reply.permanent:
                    state.failed += 1
                else:
                    state.deferred += 1
                    if is_rate_limit(reply):
                        state.throttled += 1
                        self._brake(state, f"{reply.code} {reply.text[:120]}", now)
            attempts = state.sent + state.deferred + state.failed
            bad = state.deferred + state.failed
            if attempts >= self.settings.min_sample and bad / attempts > self.settings.max_deferral_rate:
                self._brake(state, f"{bad} of {attempts} attempts today deferred or bounced", now)
            states[provider] = state
            await self.store.warmup_put([state])

    # --- homemail warmup status ---

    async def status(self, now: float | None = None) -> list[ProviderStatus]:
        """Every provider of the table, as of ``now`` (nothing is written)."""
        now = time.time() if now is None else now
        states = {s.provider: s for s in await self.store.warmup_states()}
        out = []
        for provider in sorted({*self.table, *states}):
            state = self.rolled(states.get(provider), provider, now)
            if self.warmed_up(state):
                health = "warmed up"
            elif state.braked:
                health = f"braked: {state.note}"
            elif state.note:
                health = state.note
            else:
                health = "ok"
            out.append(
                ProviderStatus(
                    provider,
                    state.day,
                    None if self.warmed_up(state) else int(state.cap),
                    state.used,
                    state.sent,
                    state.deferred,
                    state.failed,
                    state.throttled,
                    health,
                )
            )
        return out
