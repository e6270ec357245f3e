"""The PROXY protocol (haproxy's "The PROXY protocol, versions 1 & 2"): a load balancer or proxy in front of
homemail prepends the client's address to each connection it relays.

Two parts:

- :func:`parse`: the header, version 1 (one text line, at most 107 bytes with its CRLF) or version 2 (binary,
  16 bytes then the address block and TLVs). Anything that does not match exactly is an error.
- :func:`start_server`: the listening socket every protocol listener uses. A connection from a trusted proxy
  (``[proxy] trusted``, for the listeners in ``[proxy] listeners``) must begin with a valid header within
  ``[proxy] timeout``, or it is closed (spec 2: the receiver must not guess whether a header is there); the
  header is read straight from the socket, peeking so that not one byte after it is consumed, and only then does
  the connection get its transport, TLS included: on an implicit-TLS port the header comes before the handshake.
  Other addresses are served as they are. The protocol object is made by ``factory(client)``, ``client`` being
  the address from the header, or None when the connection's own peer address stands (no proxy, a v2 LOCAL
  health check, v1 UNKNOWN, an address family other than TCP over IPv4/IPv6).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import re
import socket
import ssl as ssl_mod
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homemail.config import Endpoint
    from homemail.server import Services

log = logging.getLogger(__name__)

Address = tuple[str, int]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16
MAX_HEADER = V2_HEADER + 0xFFFF

# v2 TLV types (spec 2.2)
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_CLIENT_SSL = 0x01

_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zeros (spec 2.1)
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")


class ProxyError(ValueError):
    """Not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    length: int  # bytes the header took on the wire
    source: Address | None = None  # the client; None: use the connection's own addresses
    destination: Address | None = None
    local: bool = False  # v2 LOCAL: the proxy's own connection (a health check)
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, kind: int) -> bytes | None:
        for t, value in self.tlvs:
            if t == kind:
                return value
        return None

    @property
    def client_tls(self) -> bool:
        """The proxy says the client connected to it over TLS (v2 PP2_TYPE_SSL with PP2_CLIENT_SSL)."""
        value = self.tlv(PP2_TYPE_SSL)
        return value is not None and len(value) >= 5 and bool(value[0] & PP2_CLIENT_SSL)


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None while it may still be one but is incomplete.

    Raises :class:`ProxyError` as soon as ``data`` cannot be the start of a valid header."""
    if data[:12] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data) if len(data) >= V2_HEADER else None
    if data[:6] == V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    raise ProxyError("no PROXY protocol signature")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyError("v1: no CRLF within the first 107 bytes")
        if b"\r" in data[:-1]:
            raise ProxyError("v1: a CR not followed by LF")
        return None
    if end == 0 or data[end - 1] != 0x0D:
        raise ProxyError("v1: the line must end in CRLF")
    line = data[: end - 1]
    if b"\r" in line:
        raise ProxyError("v1: a CR not followed by LF")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("v1: not US-ASCII") from None
    parts = text.split(" ")
    length = end + 1
    if parts[0] != "PROXY" or len(parts) < 2:
        raise ProxyError("v1: malformed line")
    family = parts[1]
    if family == "UNKNOWN":
        # The rest of the line is to be ignored; the connection's own addresses stand.
        return ProxyHeader(1, length)
    if family not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProxyError(f"v1: expected TCP4, TCP6 or UNKNOWN and four fields, got {text[:60]!r}")
    source = _v1_address(family, parts[2], parts[4])
    destination = _v1_address(family, parts[3], parts[5])
    return ProxyHeader(1, length, source, destination)


def _v1_address(family: str, host: str, port: str) -> Address:
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise ProxyError(f"v1: bad port {port[:10]!r}")
    if family == "TCP4":
        if not _IPV4.fullmatch(host):
            raise ProxyError(f"v1: bad IPv4 address {host[:45]!r}")
        return host, int(port)
    if not _IPV6.fullmatch(host):
        raise ProxyError(f"v1: bad IPv6 address {host[:45]!r}")
    try:
        return str(ipaddress.IPv6Address(host)), int(port)
    except ValueError:
        raise ProxyError(f"v1: bad IPv6 address {host[:45]!r}") from None


def _parse_v2(data: bytes) -> ProxyHeader | None:
    ver_cmd, fam = data[12], data[13]
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"v2: version {ver_cmd >> 4}, expected 2")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyError(f"v2: unknown command {command}")
    family, transport = fam >> 4, fam & 0x0F
    if family > 3 or transport > 2:
        raise ProxyError(f"v2: unknown address family/protocol 0x{fam:02x}")
    length = V2_HEADER + int.from_bytes(data[14:16], "big")
    if len(data) < length:
        return None
    block = data[V2_HEADER:length]
    if command == 0:
        # LOCAL: the proxy's own connection (a health check); the rest of the block is skipped unread.
        return ProxyHeader(2, length, local=True)
    size = _address_size(fam, len(block))
    source = destination = None
    if fam == 0x11:  # TCP over IPv4
        source = (str(ipaddress.IPv4Address(block[0:4])), int.from_bytes(block[8:10], "big"))
        destination = (str(ipaddress.IPv4Address(block[4:8])), int.from_bytes(block[10:12], "big"))
    elif fam == 0x21:  # TCP over IPv6
        source = (str(ipaddress.IPv6Address(block[0:16])), int.from_bytes(block[32:34], "big"))
        destination = (str(ipaddress.IPv6Address(block[16:32])), int.from_bytes(block[34:36], "big"))
    # Any other family or protocol (UNSPEC, UDP, UNIX): the connection's own addresses stand (spec 2.2); with
    # UNSPEC the block is not known to hold TLVs, so it is skipped whole.
    tlvs = _tlvs(data, length, size) if size is not None else ()
    return ProxyHeader(2, length, source, destination, tlvs=tlvs)


def _address_size(fam: int, available: int) -> int | None:
    family, transport = fam >> 4, fam & 0x0F
    if family == 0 or transport == 0:
        return None
    size = {1: 12, 2: 36, 3: 216}[family]
    if available < size:
        raise ProxyError(f"v2: address block of {available} bytes, family 0x{fam:02x} needs {size}")
    return size


def _tlvs(data: bytes, length: int, address_size: int) -> tuple[tuple[int, bytes], ...]:
    out = []
    i = V2_HEADER + address_size
    crc_at = -1
    while i < length:
        if i + 3 > length:
            raise ProxyError("v2: truncated TLV")
        kind, size = data[i], int.from_bytes(data[i + 1 : i + 3], "big")
        if i + 3 + size > length:
            raise ProxyError("v2: a TLV runs past the end of the header")
        if kind == PP2_TYPE_CRC32C:
            if size != 4:
                raise ProxyError("v2: a CRC32C TLV must hold 4 bytes")
            crc_at = i + 3
        out.append((kind, bytes(data[i + 3 : i + 3 + size])))
        i += 3 + size
    if crc_at >= 0:
        # Spec 2.2.3: the checksum covers the whole header with its own field zeroed.
        header = bytearray(data[:length])
        expected = int.from_bytes(header[crc_at : crc_at + 4], "big")
        header[crc_at : crc_at + 4] = b"\0\0\0\0"
        if crc32c(bytes(header)) != expected:
            raise ProxyError("v2: CRC32C checksum mismatch")
    return tuple(out)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, RFC 4960 appendix B)."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- reading a header from a socket ----------------------------------------------------------------------


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def read_header(sock: socket.socket) -> ProxyHeader:
    """Read the header from a non-blocking socket, consuming exactly its bytes: what follows (a TLS ClientHello,
    a pipelined command) stays in the socket for the protocol."""
    loop = asyncio.get_running_loop()
    taken = b""
    while True:
        await _readable(loop, sock)
        try:
            peeked = sock.recv(MAX_HEADER - len(taken), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peeked:
            raise ProxyError("connection closed before a complete PROXY header")
        header = parse(taken + peeked)
        if header is not None:
            _consume(sock, header.length - len(taken))
            return header
        # Incomplete: everything seen so far is header, so it can all be taken; wait for the rest.
        taken += _consume(sock, len(peeked))


def _consume(sock: socket.socket, n: int) -> bytes:
    data = sock.recv(n)
    if len(data) != n:  # the bytes were peeked, so they are there
        raise ProxyError("short read of a peeked PROXY header")
    return data


# --- listening --------------------------------------------------------------------------------------------


def is_trusted(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 proxy seen on a dual-stack socket
    return any(address in net for net in networks)


Factory = Callable[[Address | None], asyncio.BaseProtocol]


async def start_server(
    services: Services,
    key: str,
    endpoint: Endpoint,
    factory: Factory,
    *,
    ssl: ssl_mod.SSLContext | None = None,
    ssl_handshake_timeout: float | None = None,
    backlog: int = 100,
) -> asyncio.AbstractServer:
    """Listen on ``endpoint`` for the ``[listen]`` entry ``key``; each connection's protocol is
    ``factory(client)`` (see the module text)."""
    loop = asyncio.get_running_loop()
    proxy = services.config.proxy
    tls_args: dict[str, Any] = {"ssl": ssl}
    if ssl is not None:
        tls_args["ssl_handshake_timeout"] = ssl_handshake_timeout
    if not proxy.trusted or key not in proxy.listeners:
        return await loop.create_server(
            lambda: factory(None),
            endpoint.host,
            endpoint.port,
            reuse_address=True,
            backlog=backlog,
            **tls_args,
        )
    server = ProxyListener(key, factory, proxy.trusted, proxy.timeout, tls_args)
    await server.listen(endpoint, backlog)
    return server


StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Address], Awaitable[None]]


async def start_stream_server(
    services: Services,
    key: str,
    endpoint: Endpoint,
    handler: StreamHandler,
    *,
    ssl: ssl_mod.SSLContext | None = None,
    limit: int = 2**16,
    backlog: int = 100,
) -> asyncio.AbstractServer:
    """:func:`start_server` for asyncio streams: ``handler(reader, writer, client)`` with the client's address
    (from the PROXY header, else the peer's)."""

    def factory(client: Address | None) -> asyncio.BaseProtocol:
        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
            return handler(reader, writer, client or peer_address(writer))

        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=limit), connected)

    return await start_server(services, key, endpoint, factory, ssl=ssl, backlog=backlog)


def limit_per_ip(counts: Counter[str], limit: int, refusal: bytes, handler: StreamHandler) -> StreamHandler:
    """A :func:`start_stream_server` handler that runs ``handler`` for at most ``limit`` connections at a time
    from one client address, counted in ``counts`` (which the listeners of one service share); a client over the
    limit is sent ``refusal`` and its connection closed."""

    async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: Address) -> None:
        ip = client[0]  # the peer, or the client named by a trusted proxy's PROXY header
        if counts[ip] >= limit:
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(refusal)
                await writer.drain()
                writer.close()
            return
        counts[ip] += 1
        try:
            await handler(reader, writer, client)
        finally:
            counts[ip] -= 1
            if counts[ip] <= 0:
                del counts[ip]

    return limited


def peer_address(transport: asyncio.BaseTransport | asyncio.StreamWriter) -> Address:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return "", 0


class ProxyListener(asyncio.AbstractServer):
    """Listening sockets whose connections from trusted proxies begin with a PROXY header (what
    :func:`start_server` returns when the listener has proxies); closes like an :class:`asyncio.Server`."""

    def __init__(
        self,
        key: str,
        factory: Factory,
        trusted: list[Any],
        timeout: float,
        tls_args: dict[str, Any],
    ) -> None:
        self.key = key
        self.factory = factory
        self.trusted = trusted
        self.timeout = timeout
        self.tls_args = tls_args
        self._loop = asyncio.get_running_loop()
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._serving = False

    async def listen(self, endpoint: Endpoint, backlog: int) -> None:
        infos = await self._loop.getaddrinfo(
            endpoint.host or None,
            endpoint.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError:
            for sock in self._sockets:
                sock.close()
            raise
        self._serving = True
        self._accepting = [self._loop.create_task(self._accept(sock)) for sock in self._sockets]

    async def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, address = await self._loop.sock_accept(sock)
            except (ConnectionAbortedError, InterruptedError, BlockingIOError):
                continue
            except OSError as e:
                if not self._serving:
                    return
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("%s: cannot accept connections: %s; pausing for a second", self.key, e)
                    await asyncio.sleep(1)
                else:
                    log.warning("%s: accept failed: %s", self.key, e)
                    await asyncio.sleep(0.1)
                continue
            task = self._loop.create_task(self._connection(conn, address))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connection(self, conn: socket.socket, address: Any) -> None:
        conn.setblocking(False)
        peer = (str(address[0]), int(address[1])) if isinstance(address, tuple) else ("", 0)
        client: Address | None = None
        try:
            if is_trusted(peer[0], self.trusted):
                try:
                    header = await asyncio.wait_for(read_header(conn), self.timeout)
                except (ProxyError, TimeoutError, OSError) as e:
                    reason = "no PROXY header in time" if isinstance(e, TimeoutError) else str(e)
                    log.warning("%s: closing a connection from proxy %s: %s", self.key, peer[0], reason)
                    conn.close()
                    return
                client = header.source
                if client is not None:
                    log.debug("%s: %s port %d via proxy %s", self.key, client[0], client[1], peer[0])
            protocol = self.factory(client)
            await self._loop.connect_accepted_socket(lambda: protocol, conn, **self.tls_args)
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, ssl_mod.SSLError, TimeoutError) as e:
            # A TLS handshake that failed or timed out, a client gone: as asyncio.Server would, drop it quietly.
            log.debug("%s: connection from %s: %s", self.key, client or peer, e)
            conn.close()
        except Exception:
            log.exception("%s: connection from %s failed", self.key, client or peer)
            conn.close()

    # --- asyncio.AbstractServer ---

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        for task in (*self._accepting, *self._pending):
            task.cancel()
        for sock in self._sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._pending, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        pass

    async def serve_forever(self) -> None:
        while self._serving:
            await asyncio.sleep(3600)
