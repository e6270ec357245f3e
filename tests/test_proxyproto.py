"""The PROXY protocol parser and the header reader (haproxy's "The PROXY protocol, versions 1 & 2")."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest

from homemail import proxyproto
from homemail.proxyproto import ProxyError, ProxyHeader, parse

SIG = proxyproto.V2_SIGNATURE


def v2(command: int = 1, fam: int = 0x11, block: bytes = b"", tlvs: bytes = b"", version: int = 2) -> bytes:
    body = block + tlvs
    return SIG + bytes([(version << 4) | command, fam]) + struct.pack("!H", len(body)) + body


def v4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def v6_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# --- version 1 -------------------------------------------------------------------------------------------


def test_v1_tcp4() -> None:
    line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n"
    h = parse(line + b"EHLO x\r\n")
    assert h == ProxyHeader(1, len(line), ("192.0.2.7", 56324), ("198.51.100.1", 25))


def test_v1_tcp6_is_normalised() -> None:
    line = b"PROXY TCP6 2001:DB8:0:0::7 2001:db8::1 65535 993\r\n"
    h = parse(line)
    assert h is not None
    assert h.source == ("2001:db8::7", 65535)
    assert h.destination == ("2001:db8::1", 993)
    assert h.length == len(line)


def test_v1_unknown_short_and_long() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, 15)
    # Anything after UNKNOWN is ignored, up to the worst case of 107 bytes with the CRLF.
    full = b"ffff:" * 7 + b"ffff"
    longest = b"PROXY UNKNOWN " + full + b" " + full + b" 65535 65535\r\n"
    assert len(longest) == 107
    h = parse(longest + b"more")
    assert h is not None and h.source is None and h.length == 107


def test_v1_no_crlf_within_107_bytes() -> None:
    too_long = b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"
    assert len(too_long) == 108
    with pytest.raises(ProxyError, match="107"):
        parse(too_long)
    assert parse(too_long[:106]) is None  # could still end in time


@pytest.mark.parametrize(
    "partial",
    [
        b"",
        b"P",
        b"PROXY",
        b"PROXY ",
        b"PROXY TCP4 192.0.2.7 198.51",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r",
    ],
)
def test_v1_incomplete(partial: bytes) -> None:
    assert parse(partial) is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\n",  # bare LF
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\r\n",  # a CR inside
        b"PROXY TCP4 192.0.2.07 198.51.100.1 56324 25\r\n",  # leading zero in an address
        b"PROXY TCP4 192.0.2.7 198.51.100.1 056324 25\r\n",  # leading zero in a port
        b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",  # port out of range
        b"PROXY TCP4 192.0.2.256 198.51.100.1 1 25\r\n",
        b"PROXY TCP4  192.0.2.7 198.51.100.1 56324 25\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25 extra\r\n",
        b"PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n",  # family and addresses disagree
        b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",  # no scope ids
        b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
        b"PROXY \r\n",
        b"PROXY tcp4 192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\u00e9\r\n".encode(),
    ],
)
def test_v1_invalid(line: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(line)


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO client.example\r\n",
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"proxy TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
        b"\r\n\r\n\x00\r\nQUIX\n",
    ],
)
def test_not_a_proxy_header(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(data)


# --- version 2 -------------------------------------------------------------------------------------------


def test_v2_tcp4_with_tlvs() -> None:
    tlvs = tlv(proxyproto.PP2_TYPE_AUTHORITY, b"mx.example.org") + tlv(proxyproto.PP2_TYPE_NOOP, b"\0\0\0")
    tlvs += tlv(proxyproto.PP2_TYPE_SSL, b"\x01\0\0\0\0" + tlv(0x21, b"TLSv1.3"))
    data = v2(block=v4_block("203.0.113.9", "192.0.2.1", 40000, 587), tlvs=tlvs)
    h = parse(data + b"payload")
    assert h is not None
    assert h.version == 2 and h.length == len(data) and not h.local
    assert h.source == ("203.0.113.9", 40000)
    assert h.destination == ("192.0.2.1", 587)
    assert h.tlv(proxyproto.PP2_TYPE_AUTHORITY) == b"mx.example.org"
    assert h.tlv(proxyproto.PP2_TYPE_UNIQUE_ID) is None
    assert h.client_tls
    assert [t for t, _ in h.tlvs] == [0x02, 0x04, 0x20]


def test_v2_tcp6() -> None:
    data = v2(fam=0x21, block=v6_block("2001:db8::9", "2001:db8::1", 1, 993))
    h = parse(data)
    assert h is not None
    assert h.source == ("2001:db8::9", 1) and h.destination == ("2001:db8::1", 993)
    assert not h.client_tls


def test_v2_local_uses_the_connection() -> None:
    h = parse(v2(command=0, fam=0x00))
    assert h == ProxyHeader(2, 16, local=True)
    # LOCAL with an address block: skipped whole, addresses ignored.
    h = parse(v2(command=0, fam=0x11, block=v4_block("192.0.2.1", "192.0.2.2", 1, 2)))
    assert h is not None and h.local and h.source is None and h.length == 28


@pytest.mark.parametrize(
    ("fam", "block"),
    [
        (0x00, b""),  # UNSPEC
        (0x00, b"junk that is not parsed"),
        (0x12, v4_block("192.0.2.1", "192.0.2.2", 1, 2)),  # UDP
        (0x22, v6_block("2001:db8::1", "2001:db8::2", 1, 2)),
        (0x31, b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")),  # UNIX stream
    ],
)
def test_v2_other_families_fall_back_to_the_connection(fam: int, block: bytes) -> None:
    h = parse(v2(fam=fam, block=block))
    assert h is not None and h.source is None and not h.local and h.length == 16 + len(block)


def test_v2_crc32c() -> None:
    assert proxyproto.crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    block = v4_block("203.0.113.9", "192.0.2.1", 40000, 25)
    blank = v2(block=block, tlvs=tlv(proxyproto.PP2_TYPE_CRC32C, b"\0\0\0\0"))
    crc = proxyproto.crc32c(blank)
    good = blank[:-4] + struct.pack("!I", crc)
    h = parse(good)
    assert h is not None and h.source == ("203.0.113.9", 40000)
    bad = blank[:-4] + struct.pack("!I", crc ^ 1)
    with pytest.raises(ProxyError, match="CRC32C"):
        parse(bad)


@pytest.mark.parametrize("cut", [1, 5, 12, 13, 15, 16, 20, 27])
def test_v2_truncated_is_incomplete(cut: int) -> None:
    data = v2(block=v4_block("192.0.2.1", "192.0.2.2", 1, 2))
    assert len(data) == 28
    assert parse(data[:cut]) is None


@pytest.mark.parametrize(
    "data",
    [
        v2(version=1, block=v4_block("192.0.2.1", "192.0.2.2", 1, 2)),
        v2(version=3),
        v2(command=2, block=v4_block("192.0.2.1", "192.0.2.2", 1, 2)),
        v2(fam=0x41),  # unknown family
        v2(fam=0x13),  # unknown protocol
        v2(fam=0x11, block=b"\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01"),  # address block too short
        v2(fam=0x21, block=v4_block("192.0.2.1", "192.0.2.2", 1, 2)),
        v2(block=v4_block("192.0.2.1", "192.0.2.2", 1, 2), tlvs=b"\x02\x00"),  # truncated TLV
        v2(block=v4_block("192.0.2.1", "192.0.2.2", 1, 2), tlvs=b"\x02\x00\x09abc"),  # TLV past the end
        v2(block=v4_block("192.0.2.1", "192.0.2.2", 1, 2), tlvs=tlv(proxyproto.PP2_TYPE_CRC32C, b"\0\0")),
    ],
)
def test_v2_invalid(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(data)


def test_trusted_networks() -> None:
    nets = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("2001:db8::/32")]
    assert proxyproto.is_trusted("127.0.0.1", nets)
    assert proxyproto.is_trusted("::ffff:127.0.0.1", nets)  # IPv4 proxy on a dual-stack socket
    assert proxyproto.is_trusted("2001:db8::5", nets)
    assert not proxyproto.is_trusted("127.0.0.2", nets)
    assert not proxyproto.is_trusted("", nets)


# --- reading from a socket ---------------------------------------------------------------------------------


async def _read(chunks: list[bytes], then_close: bool = False, delay: float = 0.02) -> tuple[object, bytes]:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:

        async def feed() -> None:
            for chunk in chunks:
                b.sendall(chunk)
                await asyncio.sleep(delay)
            if then_close:
                b.shutdown(socket.SHUT_WR)

        feeder = asyncio.create_task(feed())
        try:
            header: object = await asyncio.wait_for(proxyproto.read_header(a), 5)
        except ProxyError as e:
            header = e
        await feeder
        await asyncio.sleep(0.02)
        try:
            rest = a.recv(65536)
        except BlockingIOError:
            rest = b""
        return header, rest
    finally:
        a.close()
        b.close()


def test_read_header_leaves_what_follows() -> None:
    # A TLS ClientHello sent in the same segment as the header stays in the socket for the handshake.
    hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x42" * 40
    line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 465\r\n"
    header, rest = asyncio.run(_read([line + hello]))
    assert isinstance(header, ProxyHeader) and header.source == ("192.0.2.7", 56324)
    assert rest == hello
    data = v2(block=v4_block("192.0.2.8", "198.51.100.1", 1234, 993), tlvs=tlv(4, b"pad"))
    header, rest = asyncio.run(_read([data + hello]))
    assert isinstance(header, ProxyHeader) and header.source == ("192.0.2.8", 1234)
    assert rest == hello


def test_read_header_in_fragments() -> None:
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 25\r\nEHLO x\r\n"
    header, rest = asyncio.run(_read([line[:3], line[3:20], line[20:44], line[44:]]))
    assert isinstance(header, ProxyHeader) and header.source == ("2001:db8::7", 4000)
    assert rest == b"EHLO x\r\n"
    data = v2(fam=0x21, block=v6_block("2001:db8::9", "2001:db8::1", 5, 6)) + b"A1 NOOP\r\n"
    header, rest = asyncio.run(_read([data[:10], data[10:16], data[16:30], data[30:]]))
    assert isinstance(header, ProxyHeader) and header.source == ("2001:db8::9", 5)
    assert rest == b"A1 NOOP\r\n"


def test_read_header_errors() -> None:
    header, _ = asyncio.run(_read([b"PROXY TCP4 192.0.2.7"], then_close=True))
    assert isinstance(header, ProxyError) and "closed" in str(header)
    header, _ = asyncio.run(_read([b"EHLO client\r\n"]))
    assert isinstance(header, ProxyError)
    header, _ = asyncio.run(_read([v2()[:14]], then_close=True))
    assert isinstance(header, ProxyError)
