"""The server's public addresses as the world sees them (``[public_ip]``): asked of an HTTP echo service, of a STUN
server, or taken from ``[public] ipv4``/``ipv6``.

- HTTP: ``GET url`` once over IPv4 and once over IPv6 (the URL's host names are looked up with homemail's
  resolver, and only addresses of the family being asked are used); the body is the address (plain text, or the
  first address-looking word of a JSON or HTML answer).
- STUN (RFC 5389 7.2.1): a Binding request over UDP, retransmitted after 0.5, 1, 2... seconds until the timeout;
  the answer's XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS from an RFC 3489 server) is the address.
- A family that cannot be asked (no IPv6 route, the service has no address of that family) has no address; that
  is an answer, not an error: :class:`Found` says why in ``errors``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import ssl
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from homemail.config import Config, Endpoint
from homemail.dns import DNSError, Resolver

MAX_BODY = 64 * 1024
STUN_MAGIC = 0x2112A442
STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_SUCCESS = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_XOR_MAPPED_ADDRESS_OLD = 0x8020  # some servers still send the draft's number


class LookupFailed(Exception):
    """This family's address could not be found; the text says why."""


@dataclass(slots=True)
class Found:
    ipv4: str | None = None
    ipv6: str | None = None
    source: str = ""  # "http://...", "stun:host:port" or "config"
    errors: dict[str, str] = field(default_factory=dict)  # "ipv4"/"ipv6" -> why it has no address


async def detect(config: Config, resolver: Resolver) -> Found:
    """Both families at once, by ``[public_ip] source``."""
    p = config.public_ip
    if p.source == "config":
        found = Found(config.public.ipv4, config.public.ipv6, "config")
        if found.ipv4 is None:
            found.errors["ipv4"] = "[public] ipv4 is not set"
        if found.ipv6 is None:
            found.errors["ipv6"] = "[public] ipv6 is not set"
        return found
    if p.source == "stun":
        found = Found(source=f"stun:{p.stun}")

        async def ask(version: int) -> str:
            return await stun_address(resolver, p.stun, version, p.timeout)

    else:
        found = Found(source=p.url)

        async def ask(version: int) -> str:
            return await http_address(resolver, p.url, version, p.timeout)

    versions = (4, 6) if p.ipv6 else (4,)
    results = await asyncio.gather(*(ask(v) for v in versions), return_exceptions=True)
    for version, result in zip(versions, results, strict=True):
        key = f"ipv{version}"
        if isinstance(result, str):
            setattr(found, key, result)
        elif isinstance(result, LookupFailed | OSError | TimeoutError | DNSError | ValueError):
            found.errors[key] = str(result) or type(result).__name__
        elif isinstance(result, BaseException):
            raise result
    if not p.ipv6:
        found.errors["ipv6"] = "not looked for ([public_ip] ipv6 = false)"
    return found


def _address_of(text: str, version: int) -> str:
    words = re.findall(r"[0-9A-Fa-f:.]{2,45}", text)
    for word in words:
        try:
            address = ipaddress.ip_address(word.strip(".:") if version == 4 else word)
        except ValueError:
            continue
        if address.version == version:
            return str(address)
    raise LookupFailed(f"the answer names no IPv{version} address: {text[:80]!r}")


async def _addresses_of(resolver: Resolver, host: str, version: int) -> list[str]:
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        if literal.version != version:
            raise LookupFailed(f"{host} is not an IPv{version} address")
        return [str(literal)]
    records = await resolver.query(host, "A" if version == 4 else "AAAA")
    if not records:
        raise LookupFailed(f"{host} has no IPv{version} address")
    return [r.address for r in records]


# --- HTTP ------------------------------------------------------------------------------------------------------


async def http_address(resolver: Resolver, url: str, version: int, timeout: float) -> str:
    """The address the echo service at ``url`` sees when asked over IPv``version``."""
    try:
        body = await http_get(resolver, url, version, timeout)
    except TimeoutError:
        raise LookupFailed(f"no answer from {url} over IPv{version} within {timeout:g} s") from None
    return _address_of(body.decode("utf-8", "replace"), version)


async def http_get(resolver: Resolver, url: str, version: int, timeout: float) -> bytes:
    """A GET of ``url`` over the given IP version; the body of a 200 answer (no redirects)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with asyncio.timeout(timeout):
        addresses = await _addresses_of(resolver, host, version)
        context = ssl.create_default_context() if tls else None
        error: Exception | None = None
        for ip in addresses:
            try:
                reader, writer = await asyncio.open_connection(
                    ip, port, ssl=context, server_hostname=host if tls else None
                )
            except OSError as e:
                error = e
                continue
            try:
                host_header = f"[{host}]" if ":" in host else host
                if parts.port:
                    host_header += f":{parts.port}"
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: homemail\r\n"
                    "Accept: text/plain, */*\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                data = await reader.read(MAX_BODY)
                while len(data) < MAX_BODY:
                    chunk = await reader.read(MAX_BODY - len(data))
                    if not chunk:
                        break
                    data += chunk
            finally:
                writer.close()
            return _http_body(data, url)
        raise LookupFailed(f"cannot connect to {url} over IPv{version}: {error}")


def _http_body(data: bytes, url: str) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise LookupFailed(f"{url}: not an HTTP answer")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split()
    if len(status) < 2 or not status[0].startswith("HTTP/"):
        raise LookupFailed(f"{url}: not an HTTP answer")
    if status[1] != "200":
        raise LookupFailed(f"{url} answered HTTP {' '.join(status[1:])}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2 :]
        return out
    if "content-length" in headers and headers["content-length"].isdigit():
        return body[: int(headers["content-length"])]
    return body


# --- STUN ------------------------------------------------------------------------------------------------------


def stun_request(transaction: bytes) -> bytes:
    """A Binding request without attributes (RFC 5389 6)."""
    return struct.pack("!HHI", STUN_BINDING_REQUEST, 0, STUN_MAGIC) + transaction


def parse_stun_response(data: bytes, transaction: bytes) -> str | None:
    """The mapped address of a Binding success response to ``transaction``; None when ``data`` is not one."""
    if len(data) < 20:
        return None
    kind, length, magic = struct.unpack("!HHI", data[:8])
    if kind != STUN_BINDING_SUCCESS or magic != STUN_MAGIC or data[8:20] != transaction:
        return None
    attrs = data[20 : 20 + length]
    mapped: str | None = None
    while len(attrs) >= 4:
        atype, alen = struct.unpack("!HH", attrs[:4])
        value = attrs[4 : 4 + alen]
        attrs = attrs[4 + ((alen + 3) & ~3) :]
        if len(value) < 8:
            continue
        family = value[1]
        raw = value[4:8] if family == 1 else value[4:20]
        if family not in (1, 2) or len(raw) != (4 if family == 1 else 16):
            continue
        if atype in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_OLD):
            key = struct.pack("!I", STUN_MAGIC) + transaction
            raw = bytes(b ^ k for b, k in zip(raw, key, strict=False))
            return str(ipaddress.ip_address(raw))
        if atype == ATTR_MAPPED_ADDRESS and mapped is None:
            mapped = str(ipaddress.ip_address(raw))
    return mapped


class _STUNClient(asyncio.DatagramProtocol):
    def __init__(self, transaction: bytes) -> None:
        self.transaction = transaction
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        address = parse_stun_response(data, self.transaction)
        if address is not None and not self.answer.done():
            self.answer.set_result(address)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def stun_address(resolver: Resolver, server: Endpoint, version: int, timeout: float) -> str:
    """The address a STUN server sees for us over IPv``version``."""
    try:
        return await _stun_address(resolver, server, version, timeout)
    except TimeoutError:
        raise LookupFailed(
            f"no answer from STUN server {server} over IPv{version} within {timeout:g} s"
        ) from None


async def _stun_address(resolver: Resolver, server: Endpoint, version: int, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        ip = (await _addresses_of(resolver, server.host, version))[0]
        transaction = os.urandom(12)
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _STUNClient(transaction), remote_addr=(ip, server.port), family=family
        )
        try:
            wait = 0.5
            while True:
                transport.sendto(stun_request(transaction))
                done, _ = await asyncio.wait({protocol.answer}, timeout=wait)
                if done:
                    address = protocol.answer.result()
                    if ipaddress.ip_address(address).version != version:
                        raise LookupFailed(f"the STUN server answered {address} over IPv{version}")
                    return address
                wait = min(wait * 2, 4.0)
        finally:
            transport.close()
