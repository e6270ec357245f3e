"""Authentication for every protocol: password hashing (argon2id), SCRAM verifiers, and login throttling.

SMTP AUTH, IMAP LOGIN/AUTHENTICATE and POP3 USER/PASS/AUTH all go through :class:`Authenticator`, so one
account's failures count the same whichever door they knock on.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import argon2
import scramp

from homemail.config import AuthConfig
from homemail.store import Account, Store

_hasher = argon2.PasswordHasher()  # argon2id, RFC 9106 second recommended parameters
SCRAM_ITERATIONS = 4096  # RFC 7677 4: at least 4096


def hash_password(password: str) -> tuple[str, str]:
    """Returns (argon2id hash, SCRAM-SHA-256 verifier) for storing with the account."""
    if not password:
        raise ValueError("the password is empty")
    salt, stored_key, server_key, iterations = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=SCRAM_ITERATIONS
    )
    scram = "$".join(
        [str(iterations), *(base64.b64encode(x).decode() for x in (salt, stored_key, server_key))]
    )
    return _hasher.hash(password), scram


def scram_auth_info(verifier: str) -> tuple[bytes, bytes, bytes, int] | None:
    """The (salt, stored_key, server_key, iterations) scramp wants, from a stored verifier."""
    try:
        iterations, salt, stored_key, server_key = verifier.split("$")
        return (
            base64.b64decode(salt),
            base64.b64decode(stored_key),
            base64.b64decode(server_key),
            int(iterations),
        )
    except ValueError:
        return None


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def is_loopback(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass
class _Failures:
    count: int
    first: float


class Throttle:
    """Counts failures per key within a window; over the limit, the key is refused until the window passes."""

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def blocked(self, key: str) -> bool:
        f = self._failures.get(key)
        if f is None:
            return False
        if time.monotonic() - f.first > self.window:
            del self._failures[key]
            return False
        return f.count >= self.limit

    def fail(self, key: str) -> None:
        now = time.monotonic()
        f = self._failures.get(key)
        if f is None or now - f.first > self.window:
            self._failures[key] = _Failures(1, now)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            f.count += 1

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)


class Authenticator:
    """Checks logins against the store, with a failure delay and per-IP and per-account throttles."""

    def __init__(self, store: Store, config: AuthConfig) -> None:
        self.store = store
        self.config = config
        self.throttle = Throttle(config.max_failures, config.failure_window)
        # Successful verifications, keyed by an HMAC of the password under a per-process key, so a client that
        # logs in every minute does not pay argon2's cost each time (the hash itself stays the check's anchor).
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[tuple[str, bytes], str] = OrderedDict()

    def plaintext_allowed(self, tls: bool, peer_ip: str | None) -> bool:
        """Cleartext passwords only over TLS, or from loopback when the config allows it."""
        return tls or (self.config.allow_plaintext_on_loopback and is_loopback(peer_ip))

    def blocked(self, username: str, peer_ip: str | None) -> bool:
        return self.throttle.blocked("ip:" + (peer_ip or "")) or self.throttle.blocked(
            "user:" + username.lower()
        )

    async def login(self, username: str, password: str, peer_ip: str | None) -> Account | None:
        """The account when the password is right; None (after the failure delay) otherwise."""
        if self.blocked(username, peer_ip):
            await asyncio.sleep(self.config.failure_delay)
            return None
        account = await self.store.get_account(username) if "@" in username else None
        ok = False
        if account is not None:
            ok = await self._check(account, password)
        else:
            # Spend the same time as a real check, so timing does not tell which accounts exist.
            await asyncio.to_thread(verify_password, _dummy_hash(), password)
        if ok:
            self.throttle.forget("user:" + username.lower())
            return account
        await self.failed(username, peer_ip)
        return None

    async def failed(self, username: str, peer_ip: str | None) -> None:
        """Count a failure (also for mechanisms verified elsewhere, such as SCRAM) and wait the delay."""
        self.throttle.fail("ip:" + (peer_ip or ""))
        self.throttle.fail("user:" + username.lower())
        await asyncio.sleep(self.config.failure_delay)

    async def _check(self, account: Account, password: str) -> bool:
        key = (account.address.lower(), hmac.new(self._cache_key, password.encode(), hashlib.sha256).digest())
        if self._verified.get(key) == account.password_hash:
            return True
        if not await asyncio.to_thread(verify_password, account.password_hash, password):
            return False
        self._verified[key] = account.password_hash
        if len(self._verified) > 10_000:
            self._verified.popitem(last=False)
        return True


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))
