"""How the world sees this server: its public host name, addresses and service ports, and the MTA-STS policy it
publishes. One place for what ``homemail dns`` tells to publish and what the web listener serves (autoconfig,
MTA-STS), so the two never disagree.

``[public]`` overrides what ``[listen]`` says where the two differ (NAT, port forwarding, a proxy in front).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from homemail.config import Config

# Mail services a client may be told about, with their RFC 6186 / RFC 8314 SRV labels and whether TLS starts
# at once (implicit) or by STARTTLS/STLS.
CLIENT_SERVICES: tuple[tuple[str, str, bool], ...] = (
    ("submissions", "_submissions._tcp", True),
    ("submission", "_submission._tcp", False),
    ("imaps", "_imaps._tcp", True),
    ("imap", "_imap._tcp", False),
    ("pop3s", "_pop3s._tcp", True),
    ("pop3", "_pop3._tcp", False),
)


def public_hostname(config: Config) -> str:
    """The name clients and other servers use for this server: the MX target, the PTR, the autoconfig host."""
    return config.public.hostname or config.hostname


@dataclass(frozen=True, slots=True)
class PublicAddresses:
    ipv4: str | None  # None: not known (the user fills it in)
    ipv6: str | None


async def public_addresses(config: Config) -> PublicAddresses:
    """The server's public addresses as far as they are known: from ``[public]`` for now."""
    return PublicAddresses(config.public.ipv4, config.public.ipv6)


def public_port(config: Config, key: str) -> int | None:
    """The port the world reaches the ``[listen]`` service ``key`` on, or None when it is not offered."""
    port: int | None = getattr(config.public, key, None)
    if port is not None:
        return port or None
    endpoint = getattr(config.listen, key)
    return endpoint.port if endpoint is not None else None


def web_enabled(config: Config) -> bool:
    return config.listen.http is not None or config.listen.https is not None


def mta_sts_mx(config: Config) -> list[str]:
    return list(config.mta_sts.mx) or [public_hostname(config)]


def mta_sts_policy(config: Config) -> str:
    """The policy text (RFC 8461 3.2); the same for every local domain, since they share the MX hosts."""
    lines = ["version: STSv1", f"mode: {config.mta_sts.mode}"]
    lines += [f"mx: {mx}" for mx in mta_sts_mx(config)]
    lines.append(f"max_age: {config.mta_sts.max_age}")
    return "\r\n".join(lines) + "\r\n"


def mta_sts_id(config: Config) -> str:
    """The ``id`` of the ``_mta-sts`` TXT record (RFC 8461 3.1: 1-32 letters and digits): it changes exactly when
    the policy text does, so senders refetch a changed policy."""
    return hashlib.sha256(mta_sts_policy(config).encode("ascii")).hexdigest()[:20]


def report_address(local_or_address: str, domain: str) -> str:
    """A ``[public] dmarc_reports``/``tls_reports`` value as an address at ``domain`` (unless it names one)."""
    return local_or_address if "@" in local_or_address else f"{local_or_address}@{domain}"
