"""Settings: one TOML file turned into typed, validated dataclasses.

Every setting has a default, so ``homemail serve`` runs without a file. A wrong key, type or value raises
:class:`ConfigError` whose text is one line naming the file, the key and what is wrong.

Sections are plain dataclasses; the loader walks their type hints, so adding a setting is adding a field.
Field metadata may carry a ``check`` callable that converts/validates the value (raising ``ValueError``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_FILE = "homemail.toml"


class ConfigError(Exception):
    """A problem with the configuration; ``str()`` is a single line fit for the user."""


# --- value types with their own parsing ---------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A listening or connecting address, written ``host:port`` (IPv6 as ``[::1]:25``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> Endpoint:
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
        if default_port is not None and ":" in text and not text.startswith("["):
            try:  # a bare IPv6 address, no port
                return cls(str(ipaddress.IPv6Address(text)), default_port)
            except ValueError:
                pass
        if m:
            host = m.group(1) or m.group(3)
            port = int(m.group(2) or m.group(4))
        elif default_port is not None and re.fullmatch(r"[^:\[\]\s]+|\[[0-9A-Fa-f:.]+\]", text):
            host, port = text.strip("[]"), default_port
        else:
            raise ValueError(f'expected "host:port", got {text!r}')
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range 1-65535")
        return cls(host, port)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


_N = TypeVar("_N", int, float)


def _quantity(value: object, convert: type[_N], units: dict[str, int], expected: str) -> _N:
    """``value`` in base units, never negative: a number (a whole one unless ``convert`` is float), or a string
    of one and one of the ``units``."""
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int) or (convert is float and isinstance(value, float)):
        n = convert(value)
    elif isinstance(value, str):
        number = r"\d+(?:\.\d+)?" if convert is float else r"\d+"
        m = re.fullmatch(rf"\s*({number})\s*([A-Za-z]*)\s*", value)
        if not m or m.group(2).lower() not in units:
            raise ValueError(f"{expected}, got {value!r}")
        n = convert(m.group(1)) * units[m.group(2).lower()]
    else:
        raise ValueError(expected)
    if n < 0:
        raise ValueError("must not be negative")
    return n


def parse_size(value: object) -> int:
    """Bytes, as an integer or a string such as ``"25MB"``."""
    return _quantity(value, int, _SIZE_UNITS, 'expected a size such as 26214400 or "25MB"')


def parse_duration(value: object) -> float:
    """Seconds, as a number or a string such as ``"5m"``, ``"4h"``, ``"5d"``."""
    return _quantity(value, float, _DURATION_UNITS, 'expected a duration such as 300 or "5m"')


def _endpoint(value: object) -> Endpoint:
    if not isinstance(value, str):
        raise ValueError('expected a string "host:port"')
    return Endpoint.parse(value)


def _hostname(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(
        r"(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
        value,
    ):
        raise ValueError(f"not a valid host name: {value!r}")
    return value.lower()


def _existing_file(value: object) -> Path:
    if not isinstance(value, str):
        raise ValueError("expected a file path string")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file: {value}")
    return path


def _path(value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a path string")
    return Path(value).expanduser()


def _nameservers(value: object) -> list[Endpoint]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('expected a list of "host" or "host:port" strings')
    return [Endpoint.parse(v, default_port=53) for v in value]


def _networks(value: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if not isinstance(value, list):
        raise ValueError("expected a list of addresses or networks")
    try:
        return [ipaddress.ip_network(str(v), strict=False) for v in value]
    except ValueError as e:
        raise ValueError(str(e)) from None


def _one_of(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return str(value)

    return check


def _positive(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _with(
    check: Callable[[object], Any], default: Any = None, factory: Callable[[], Any] | None = None
) -> Any:
    """A field whose TOML value is converted by ``check``."""
    if factory is not None:
        return field(default_factory=factory, metadata={"check": check})
    return field(default=default, metadata={"check": check})


# --- sections -----------------------------------------------------------------------------------------


@dataclass
class ListenConfig:
    """Listening addresses; a listener left out is off."""

    smtp: Endpoint | None = _with(_endpoint)
    submission: Endpoint | None = _with(_endpoint)
    submissions: Endpoint | None = _with(_endpoint)
    imap: Endpoint | None = _with(_endpoint)
    imaps: Endpoint | None = _with(_endpoint)
    pop3: Endpoint | None = _with(_endpoint)
    pop3s: Endpoint | None = _with(_endpoint)
    http: Endpoint | None = _with(_endpoint)
    https: Endpoint | None = _with(_endpoint)  # the same web service over TLS (MTA-STS policies need HTTPS)


@dataclass
class TLSConfig:
    """Certificate and key (PEM). Absent: a self-signed certificate for ``hostname`` is made in data_dir."""

    cert: Path | None = _with(_existing_file)
    key: Path | None = _with(_existing_file)


@dataclass
class AuthConfig:
    # Plaintext logins (IMAP LOGIN, POP3 USER/PASS, SMTP AUTH PLAIN) without TLS are refused, except from
    # loopback clients when this is on.
    allow_plaintext_on_loopback: bool = False
    # Failed logins: each failure is answered after a delay; after `max_failures` within `failure_window`
    # from one IP or for one account, further attempts are refused until the window passes.
    failure_delay: float = _with(parse_duration, 1.0)
    max_failures: int = _with(_positive, 10)
    failure_window: float = _with(parse_duration, 300.0)


@dataclass
class SMTPConfig:
    max_message_size: int = _with(parse_size, 50 * 1024 * 1024)
    max_recipients: int = _with(_positive, 100)
    max_line_length: int = _with(_positive, 4096)  # RFC 5321 4.5.3.1: at least 512 (commands) / 1000 (text)
    max_errors: int = _with(_positive, 20)
    max_connections: int = _with(_positive, 1000)
    max_connections_per_ip: int = _with(_positive, 20)
    idle_timeout: float = _with(
        parse_duration, 300.0
    )  # RFC 5321 4.5.3.2.7: server timeout at least 5 minutes
    # Longest wait for the next bytes of a message (DATA or BDAT); RFC 5321 4.5.3.2.6 gives the client 10
    # minutes for the final reply, 3 minutes per data block.
    data_timeout: float = _with(parse_duration, 300.0)


@dataclass
class IMAPConfig:
    max_literal: int = _with(parse_size, 64 * 1024 * 1024)
    max_line_length: int = _with(_positive, 64 * 1024)
    idle_timeout: float = _with(parse_duration, 1800.0)  # RFC 9051 5.4: at least 30 minutes
    max_commands_per_second: int = _with(_positive, 500)
    max_connections_per_ip: int = _with(_positive, 50)


@dataclass
class POP3Config:
    max_line_length: int = _with(_positive, 1024)
    idle_timeout: float = _with(parse_duration, 600.0)  # RFC 1939 3: at least 10 minutes


@dataclass
class DNSConfig:
    """The one resolver. Empty ``nameservers`` means the system's (/etc/resolv.conf)."""

    nameservers: list[Endpoint] = _with(_nameservers, factory=list)
    timeout: float = _with(parse_duration, 5.0)


def _durations(value: object) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ValueError('expected a non-empty list of durations such as ["5m", "10m", "1h"]')
    out = [parse_duration(v) for v in value]
    if any(v <= 0 for v in out):
        raise ValueError("every interval must be more than zero")
    return out


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"expected a port 1-65535, got {value!r}")
    return value


def _ip_address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


def _domains(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError('expected a list of domains such as ["gmail.com", "outlook.com"]')
    return [v.strip().rstrip(".").lower() for v in value]


@dataclass
class QueueConfig:
    """The outbound queue: when to retry, when to give up, when to tell the sender of a delay."""

    # Waits between attempts; after the last, it repeats until `expire` (default: 5m, 10m, 30m, 1h, 2h, 4h).
    retry: list[float] = _with(_durations, factory=lambda: [300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0])
    expire: float = _with(parse_duration, 5 * 86400.0)  # then a failure DSN (RFC 5321 4.5.4.1: 4-5 days)
    delay_notice: float = _with(parse_duration, 4 * 3600.0)  # a "delayed" DSN after this; 0 = never
    # How often the worker looks for work others (the CLI) scheduled.
    poll_interval: float = _with(parse_duration, 5.0)
    max_deliveries: int = _with(_positive, 50)  # SMTP transactions in flight at once


@dataclass
class DeliveryConfig:
    """Direct delivery to the recipients' MX hosts, and TLS policy for it."""

    smtp_port: int = _with(_port, 25)  # the remote port; tests point it elsewhere
    source_ipv4: str | None = _with(_ip_address)
    source_ipv6: str | None = _with(_ip_address)
    ipv4_only: bool = False
    per_destination: int = _with(_positive, 4)  # connections at once to one destination domain or relay
    connect_timeout: float = _with(parse_duration, 30.0)
    # RFC 5321 4.5.3.2: 5 minutes per command, 10 for the end of data.
    command_timeout: float = _with(parse_duration, 300.0)
    idle_close: float = _with(parse_duration, 5.0)  # keep a connection this long for further messages
    # RFC 8461 MTA-STS: fetch and obey policies; the HTTPS port and CA file are settable for tests.
    mta_sts: bool = True
    mta_sts_port: int = _with(_port, 443)
    mta_sts_cafile: Path | None = _with(_existing_file)
    # CA file for verifying MX certificates where a policy requires it (default: the system's).
    tls_cafile: Path | None = _with(_existing_file)
    dkim_sign: bool = True


@dataclass
class RelayConfig:
    """A smarthost: mail routed to it is handed over with TLS and AUTH, both required."""

    name: str = ""
    host: str = ""
    port: int = _with(_port, 587)
    tls: str = _with(_one_of("starttls", "implicit"), "starttls")
    username: str = ""
    password: str = field(default="", repr=False)
    password_file: Path | None = _with(_existing_file)
    cafile: Path | None = _with(_existing_file)  # CA for the relay's certificate (default: the system's)
    # The relay provider's SPF domain ("spf.relay.example"): `homemail dns` puts include:<it> in the SPF record.
    spf_include: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.host:
            raise ValueError("a [[relay]] needs name and host")
        if not self.username or not (self.password or self.password_file):
            raise ValueError(f"relay {self.name}: username and password (or password_file) are required")

    def secret(self) -> str:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password


@dataclass
class RouteConfig:
    """Which recipients go through a relay: all (no domains), or the listed domains; with
    ``after_failures = N`` direct delivery is tried first and the relay takes over after N failed attempts."""

    relay: str = ""
    domains: list[str] = _with(_domains, factory=list)
    after_failures: int = 0

    def __post_init__(self) -> None:
        if not self.relay:
            raise ValueError("a [[route]] needs relay")
        if self.after_failures < 0:
            raise ValueError("route after_failures must not be negative")


_LISTENER_KEYS = tuple(f.name for f in dataclasses.fields(ListenConfig))


def _listener_keys(value: object) -> list[str]:
    if not isinstance(value, list) or not all(v in _LISTENER_KEYS for v in value):
        raise ValueError(f"expected a list of listener names ({', '.join(_LISTENER_KEYS)}), got {value!r}")
    return [str(v) for v in value]


@dataclass
class ProxyConfig:
    """PROXY protocol (haproxy's, versions 1 and 2) from the load balancers or proxies in front of homemail.

    A connection from a ``trusted`` address to one of ``listeners`` must start with a PROXY header (else it is
    closed); the client address in it then stands for the connection's everywhere (trace fields, limits, logs).
    Connections from other addresses are served as they are: a PROXY header from them is just a bad command."""

    trusted: list[Any] = _with(_networks, factory=list)
    listeners: list[str] = _with(_listener_keys, factory=lambda: list(_LISTENER_KEYS))
    timeout: float = _with(parse_duration, 5.0)  # for the header; the spec asks for at least 3 seconds


def _optional_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise ValueError(f"expected a port 1-65535, or 0 for a service not offered, got {value!r}")
    return value


def _optional_hostname(value: object) -> str:
    return "" if value == "" else _hostname(value)


def _ip_of_version(version: int) -> Callable[[object], str]:
    def check(value: object) -> str:
        try:
            address = ipaddress.ip_address(str(value))
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
        if address.version != version:
            raise ValueError(f"not an IPv{version} address: {value!r}")
        return str(address)

    return check


def _mailbox_name(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[^@\s\"]+(@[A-Za-z0-9.-]+)?", value):
        raise ValueError(f'expected a local part ("dmarc-reports") or an address, got {value!r}')
    return value


@dataclass
class PublicConfig:
    """How the world sees this server, where that differs from [listen] (NAT, port forwarding, a proxy in front):
    what ``homemail dns`` tells to publish and what client autoconfiguration advertises. A port left out is the
    [listen] one (a listener that is off: not offered); 0 means not offered."""

    hostname: str = _with(_optional_hostname, "")  # default: `hostname`
    ipv4: str | None = _with(_ip_of_version(4))
    ipv6: str | None = _with(_ip_of_version(6))
    submission: int | None = _with(_optional_port)
    submissions: int | None = _with(_optional_port)
    imap: int | None = _with(_optional_port)
    imaps: int | None = _with(_optional_port)
    pop3: int | None = _with(_optional_port)
    pop3s: int | None = _with(_optional_port)
    # The DMARC policy to publish, and where aggregate DMARC and TLS reports go: a local part at each domain
    # (no outside authorisation record needed) or a whole address.
    dmarc_policy: str = _with(_one_of("none", "quarantine", "reject"), "quarantine")
    dmarc_reports: str = _with(_mailbox_name, "dmarc-reports")
    tls_reports: str = _with(_mailbox_name, "tls-reports")


def _max_age(value: object) -> int:
    seconds = int(parse_duration(value))
    if not 0 < seconds <= 31_557_600:
        raise ValueError("max_age must be more than 0 and at most 31557600 seconds (RFC 8461 3.2)")
    return seconds


def _mx_patterns(value: object) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", v)
        for v in value
    ):
        raise ValueError('expected a list of host names or "*.domain" patterns')
    return [v.lower() for v in value]


@dataclass
class MTASTSConfig:
    """The MTA-STS policy (RFC 8461) served at https://mta-sts.<domain>/.well-known/mta-sts.txt for every local
    domain. Start with "testing" (senders report failures but deliver anyway) and move to "enforce" once TLS
    reports are clean; "none" withdraws a policy."""

    mode: str = _with(_one_of("enforce", "testing", "none"), "testing")
    max_age: int = _with(_max_age, 604800)  # seconds (or "7d"); senders cache the policy this long
    mx: list[str] = _with(_mx_patterns, factory=list)  # default: the public host name


@dataclass
class StorageConfig:
    backend: str = _with(_one_of("sqlite"), "sqlite")
    # fsync message files and the database before acknowledging; turn off only for throwaway test servers.
    fsync: bool = True


def _non_negative(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number, 0 or more, got {value!r}")
    return value


_LOOPBACK = ["127.0.0.0/8", "::1/128"]


@dataclass
class SPFConfig:
    """SPF (RFC 7208) of the MAIL FROM and HELO identities of mail arriving at the MX. A fail refuses nothing by
    itself (DMARC decides after DATA); a DNS failure for the MAIL FROM identity is 451 4.7.24 (try again)."""

    enabled: bool = True
    helo: bool = True  # also check the HELO identity (RFC 7208 2.3)
    timeout: float = _with(parse_duration, 20.0)  # a whole check; over it: temperror (RFC 7208 4.6.4)


@dataclass
class DNSBLConfig:
    """DNS blocklists the MX asks about each client (RFC 5782); a listed client's recipients get 554 5.7.1."""

    zones: list[str] = _with(_domains, factory=lambda: ["zen.spamhaus.org"])
    allowlist: list[Any] = _with(_networks, factory=lambda: _networks(_LOOPBACK))  # never looked up


@dataclass
class GreylistConfig:
    """Greylisting of (client network, sender, recipient) triplets at the MX: the first attempt gets 451 4.7.1,
    a retry after ``delay`` (and within ``retry_window``) is accepted and remembered."""

    enabled: bool = False
    delay: float = _with(parse_duration, 300.0)
    retry_window: float = _with(parse_duration, 2 * 86400.0)  # a retry later than this starts over
    expire: float = _with(parse_duration, 35 * 86400.0)  # accepted triplets and clients unseen this long
    auto_allowlist: bool = True  # a client that retried once is not greylisted again (until `expire`)
    ipv4_prefix: int = _with(_non_negative, 24)  # client network of a triplet: /24 (a pool of outbound hosts)
    ipv6_prefix: int = _with(_non_negative, 64)
    allowlist: list[Any] = _with(_networks, factory=list)  # clients never greylisted

    def __post_init__(self) -> None:
        if self.ipv4_prefix > 32 or self.ipv6_prefix > 128:
            raise ValueError("greylist ipv4_prefix must be at most 32 and ipv6_prefix at most 128")


@dataclass
class LimitsConfig:
    """Per-client limits at the MX (IPv6 clients counted per /64). 0: no limit."""

    connections_per_minute: int = _with(_non_negative, 60)  # over it: 421 4.7.0 at the greeting
    messages_per_minute: int = _with(_non_negative, 120)  # MAIL commands; over it: 451 4.7.1
    # Before the greeting the MX waits this long for a client it has not seen lately; one that talks first is
    # dropped with 554 (RFC 5321 3.1: the client waits for the greeting).
    greet_pause: float = _with(parse_duration, 1.0)
    exempt: list[Any] = _with(_networks, factory=lambda: _networks(_LOOPBACK))  # no limits, no greet pause


def _http_url(value: object) -> str:
    if not isinstance(value, str) or (
        value and not re.fullmatch(r"http://[^/\s:]+(:\d{1,5})?(/\S*)?", value)
    ):
        raise ValueError(f'expected "" or an URL such as "http://127.0.0.1:11333", got {value!r}')
    return value.rstrip("/")


def _optional_score(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


@dataclass
class DMARCConfig:
    """DKIM verification, ARC and DMARC (RFC 7489) for mail arriving at the MX: p=reject failures get 550 5.7.1
    after DATA, p=quarantine failures go to the recipients' Junk folder; a DNS failure that leaves the outcome
    open is 451 (try again)."""

    enabled: bool = True
    # Forwarders and mailing lists (ARC sealer domains, RFC 8617) whose valid ARC chain forgives a DMARC failure
    # when they recorded the message as authentic on arrival.
    trusted_arc_sealers: list[str] = _with(_domains, factory=list)


@dataclass
class RspamdConfig:
    """An rspamd normal worker that scans mail arriving at the MX (off while ``url`` is empty)."""

    url: str = _with(_http_url, "")
    timeout: float = _with(parse_duration, 20.0)
    # rspamd unreachable or too slow: "accept" delivers as if it had found nothing (and logs), "tempfail"
    # answers 451 so the sender retries.
    on_error: str = _with(_one_of("accept", "tempfail"), "accept")
    # Stricter than rspamd's own actions: at these scores the message is refused / goes to Junk.
    reject_score: float | None = _with(_optional_score)
    junk_score: float | None = _with(_optional_score)


def _web_url(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(
        r"https?://(\[[0-9A-Fa-f:.]+\]|[^/\s:\[\]]+)(:\d{1,5})?(/\S*)?", value
    ):
        raise ValueError(f'expected an URL such as "https://api64.ipify.org", got {value!r}')
    return value


@dataclass
class PublicIPConfig:
    """How homemail finds the address the world sees it at (``homemail doctor``, ``[dyndns]``). "http": an echo
    service answering with the caller's address (``url``), asked once over IPv4 and once over IPv6; "stun": a STUN
    binding request (RFC 5389) over UDP; "config": ``[public] ipv4``/``ipv6`` as they are (nothing is asked)."""

    source: str = _with(_one_of("http", "stun", "config"), "http")
    url: str = _with(_web_url, "https://api64.ipify.org")
    stun: Endpoint = _with(lambda v: Endpoint.parse(str(v), 3478), Endpoint("stun.l.google.com", 19302))
    ipv6: bool = True  # look for a public IPv6 address too
    timeout: float = _with(parse_duration, 10.0)


@dataclass
class DoctorConfig:
    """What ``homemail doctor`` asks: the blocklists, and the "big provider" MX that tells whether outbound port 25
    is open."""

    dnsbl: list[str] = _with(
        _domains,
        factory=lambda: [
            "zen.spamhaus.org",
            "bl.spamcop.net",
            "b.barracudacentral.org",
            "psbl.surriel.com",
            "bl.mailspike.net",
        ],
    )
    pbl: str = "zen.spamhaus.org"  # answers 127.0.0.10/11 here mean "end-user (residential) range"
    dbl: list[str] = _with(_domains, factory=lambda: ["dbl.spamhaus.org"])  # domain blocklists
    port25_probe: Endpoint = _with(
        lambda v: Endpoint.parse(str(v), 25), Endpoint("gmail-smtp-in.l.google.com", 25)
    )
    timeout: float = _with(parse_duration, 10.0)  # each network check
    # The mail domains of the providers that refuse mail from residential or badly named addresses: where the
    # plan "relay only to the providers that will refuse you" sends mail through the relay.
    strict_providers: list[str] = _with(
        _domains,
        factory=lambda: [
            "gmail.com",
            "googlemail.com",
            "outlook.com",
            "hotmail.com",
            "live.com",
            "msn.com",
            "yahoo.com",
            "aol.com",
            "icloud.com",
            "me.com",
            "gmx.net",
            "gmx.de",
            "web.de",
        ],
    )


_TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")


@dataclass
class DynDNSConfig:
    """Dynamic IP: a worker looks up the public address every ``interval`` (``[public_ip]``); when it changed, it
    updates the A/AAAA records of the public host name, and the SPF records of the local domains in ``zone`` that
    list the old address, by RFC 2136 dynamic update signed with TSIG, and tells the postmaster by mail."""

    enabled: bool = False
    interval: float = _with(parse_duration, 300.0)
    zone: str = _with(_optional_hostname, "")  # the zone holding the host name
    server: Endpoint | None = _with(lambda v: Endpoint.parse(str(v), 53))  # its primary, taking updates
    tsig_name: str = ""
    tsig_algorithm: str = _with(_one_of(*_TSIG_ALGORITHMS), "hmac-sha256")
    tsig_secret: str = field(default="", repr=False)  # base64
    tsig_secret_file: Path | None = _with(_existing_file)
    ttl: int = _with(_positive, 300)
    hostname: bool = True  # keep the A/AAAA records of the public host name
    spf: bool = True  # replace the old address in SPF records that list it
    notify: str = _with(_mailbox_name, "postmaster")  # a local part at the first local domain, or an address

    def __post_init__(self) -> None:
        if self.enabled and not (
            self.zone and self.server and self.tsig_name and (self.tsig_secret or self.tsig_secret_file)
        ):
            raise ValueError("with enabled = true, set zone, server, tsig_name and tsig_secret (or _file)")

    def secret(self) -> str:
        if self.tsig_secret_file is not None:
            return self.tsig_secret_file.read_text().strip()
        return self.tsig_secret


def _date(value: object) -> str:
    import datetime as dt

    text = value.isoformat() if isinstance(value, dt.date) else value
    if not isinstance(text, str):
        raise ValueError("expected a date such as 2025-03-01")
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"expected a date such as 2025-03-01, got {value!r}") from None


def _overflow(value: object) -> str:
    if not isinstance(value, str) or not (value == "wait" or re.fullmatch(r"relay:\S+", value)):
        raise ValueError(f'expected "wait" or "relay:<name of a [[relay]]>", got {value!r}')
    return value


def _providers(value: object) -> dict[str, list[str]]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ValueError('expected a table such as {google = ["*.google.com", "*.googlemail.com"]}')
    return {str(k).lower(): _mx_patterns(v) for k, v in value.items()}


def _growth(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1.0 <= value <= 10.0:
        raise ValueError(f"expected a factor from 1 to 10, got {value!r}")
    return float(value)


def _rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ValueError(f"expected a fraction more than 0 and at most 1, got {value!r}")
    return float(value)


@dataclass
class WarmupConfig:
    """IP warm-up: direct mail to each big provider (recognised by its MX host names) is capped per day, starting
    at ``initial`` messages on ``start`` and growing ``growth`` times a day until ``until``; mail over the cap
    waits for the next day or goes through a relay (``overflow``). Rate-limit answers and a high deferral or
    bounce rate brake the ramp for that provider."""

    enabled: bool = False
    start: str = _with(_date, "")  # the first day of the ramp (default: the day the warm-up first sends)
    initial: int = _with(_positive, 50)  # messages (recipients) per provider on the first day
    growth: float = _with(_growth, 1.5)
    until: int = _with(_positive, 10000)  # a provider whose cap reaches this is warmed up: no more limit
    overflow: str = _with(_overflow, "wait")  # "wait" or "relay:<name>"
    # Added to (or replacing, by name) the built-in table; an empty list removes a provider.
    providers: dict[str, list[str]] = _with(_providers, factory=dict)
    max_deferral_rate: float = _with(_rate, 0.3)  # over it (deferred + bounced / attempts): brake
    min_sample: int = _with(_positive, 10)  # attempts in a day before the rate counts


@dataclass
class Config:
    hostname: str = _with(_hostname, "")
    data_dir: Path = _with(_path, Path("homemail-data"))
    log_level: str = _with(_one_of("debug", "info", "warning", "error"), "info")
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    pop3: POP3Config = field(default_factory=POP3Config)
    dns: DNSConfig = field(default_factory=DNSConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    relay: list[RelayConfig] = field(default_factory=list)
    route: list[RouteConfig] = field(default_factory=list)
    spf: SPFConfig = field(default_factory=SPFConfig)
    dnsbl: DNSBLConfig = field(default_factory=DNSBLConfig)
    greylist: GreylistConfig = field(default_factory=GreylistConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    dmarc: DMARCConfig = field(default_factory=DMARCConfig)
    rspamd: RspamdConfig = field(default_factory=RspamdConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    public: PublicConfig = field(default_factory=PublicConfig)
    mta_sts: MTASTSConfig = field(default_factory=MTASTSConfig)
    public_ip: PublicIPConfig = field(default_factory=PublicIPConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    dyndns: DynDNSConfig = field(default_factory=DynDNSConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    source: Path | None = field(default=None, metadata={"internal": True})

    def __post_init__(self) -> None:
        if not self.hostname:
            self.hostname = socket.getfqdn().lower() or "localhost"
        relays = {r.name for r in self.relay}
        if len(relays) != len(self.relay):
            raise ValueError("two [[relay]] entries have the same name")
        for route in self.route:
            if route.relay not in relays:
                raise ValueError(f"route: no [[relay]] named {route.relay!r}")
        if self.warmup.overflow.startswith("relay:") and self.warmup.overflow[6:] not in relays:
            raise ValueError(f"warmup overflow: no [[relay]] named {self.warmup.overflow[6:]!r}")


# --- loading ------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        Path: "a path string",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Convert a TOML value to the annotated type ``tp`` (no custom check)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return _build(typing.cast(type, tp), value, key + ".")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value).expanduser()
    if tp is Any:
        return value
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, table: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for raw_key, value in table.items():
        name = raw_key.replace("-", "_")
        key = prefix + raw_key
        if name not in fields:
            raise ConfigError(f"{key}: unknown setting")
        f = fields[name]
        check = f.metadata.get("check")
        if check is not None:
            try:
                kwargs[name] = check(value)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
        else:
            kwargs[name] = _convert(hints[name], value, key)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def from_dict(table: dict[str, Any], source: Path | None = None) -> Config:
    where = str(source) if source else "config"
    try:
        config: Config = _build(Config, table)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    config.source = source
    if (config.tls.cert is None) != (config.tls.key is None):
        raise ConfigError(f"{where}: tls: set both cert and key, or neither")
    return config


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path``; without one, ``./homemail.toml`` if present, else all defaults."""
    if path is None:
        if not Path(DEFAULT_FILE).is_file():
            return Config()
        path = DEFAULT_FILE
    p = Path(path)
    try:
        with p.open("rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    config = from_dict(table, p)
    # A relative data_dir is relative to the file that names it, so the server finds the same folder from any
    # working directory.
    if "data_dir" in table and not config.data_dir.is_absolute():
        config.data_dir = (p.parent / config.data_dir).resolve()
    return config
