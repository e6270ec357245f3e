"""The IMAP connection's byte stream: buffered reading of lines and literals under limits, output batching,
the STARTTLS upgrade and COMPRESS=DEFLATE (RFC 4978) on both directions.

Output is collected with :meth:`Conn.write` and sent by :meth:`Conn.flush` in one transport write, so a FETCH of
thousands of messages costs a handful of system calls, not one per line.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from homemail.imap.errors import LineTooLong

# A line that announces a literal ends with {n}, {n+} (RFC 7888) or ~{n} (literal8, RFC 3516 / RFC 9051).
LITERAL_AT_END = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\r\n\Z")
FLUSH_AT = 256 * 1024
MAX_INFLATE_CHUNK = 1 << 20


class Conn:
    """One client connection. ``reader``/``writer`` are asyncio streams (or objects with the same methods)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: Any, tls: bool, peer_ip: str | None = None
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.tls = tls
        self._peer_ip = peer_ip  # the client's address when a proxy in front said it (else the peer's)
        self.buf = bytearray()
        self._out: list[bytes] = []
        self.out_size = 0
        self._inflate: Any = None
        self._deflate: Any = None
        self._inflate_tail = b""
        self.eof = False

    @property
    def compressed(self) -> bool:
        return self._deflate is not None

    # --- input -----------------------------------------------------------------------------------------

    async def _fill(self) -> bool:
        if self._inflate is not None and self._inflate_tail:
            tail, self._inflate_tail = self._inflate_tail, b""
            data = self._inflate.decompress(tail, MAX_INFLATE_CHUNK)
            self._inflate_tail = self._inflate.unconsumed_tail
            self.buf += data
            return True
        if self.eof:
            return False
        data = await self.reader.read(65536)
        if not data:
            self.eof = True
            return False
        if self._inflate is not None:
            try:
                # Bounded output per call: a small compressed input cannot balloon in memory at once.
                data = self._inflate.decompress(data, MAX_INFLATE_CHUNK)
            except zlib.error:
                self.eof = True
                return False
            self._inflate_tail = self._inflate.unconsumed_tail
        self.buf += data
        return True

    async def readline(self, limit: int) -> bytes | None:
        """One line ending in CRLF (a bare LF is taken as CRLF); None at end of input."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                if i + 1 > limit + 2:
                    raise LineTooLong()
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                if not line.endswith(b"\r\n"):
                    line = line[:-1] + b"\r\n"
                return line
            if len(self.buf) > limit + 2:
                raise LineTooLong()
            start = len(self.buf)
            if not await self._fill():
                return None

    async def readexactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not await self._fill():
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def read_command(
        self, max_line: int, on_literal: Callable[[list[bytes], int, bool], Awaitable[None]]
    ) -> bytes | None:
        """One command: its lines and the literals they announce, as one buffer the parser reads.

        ``on_literal(parts so far, size, synchronising)`` is called before each literal is read: it refuses
        the literal by raising, or sends the continuation request for a synchronising one.
        """
        parts: list[bytes] = []
        while True:
            line = await self.readline(max_line)
            if line is None:
                return None
            parts.append(line)
            m = LITERAL_AT_END.search(line)
            if m is None:
                return b"".join(parts)
            size = int(m.group(2))
            await on_literal(parts, size, not m.group(3))
            data = await self.readexactly(size)
            if data is None:
                return None
            parts.append(data)

    def discard_input(self) -> None:
        """Forget buffered input: after STARTTLS nothing sent in cleartext may be taken as protected."""
        self.buf.clear()

    # --- output ------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._out.append(data)
        self.out_size += len(data)

    async def flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        self.out_size = 0
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.writer.write(data)
        await self.writer.drain()

    async def maybe_flush(self) -> None:
        if self.out_size >= FLUSH_AT:
            await self.flush()

    # --- transport changes --------------------------------------------------------------------------------

    async def start_tls(self, context: ssl.SSLContext) -> None:
        await self.flush()
        self.discard_input()
        await self.writer.start_tls(context)
        self.tls = True

    def start_deflate(self) -> None:
        """RFC 4978 3: raw DEFLATE (no zlib header) from the next octet on, both directions."""
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        pending, self.buf = bytes(self.buf), bytearray()
        if pending:
            self.buf += self._inflate.decompress(pending, MAX_INFLATE_CHUNK)
            self._inflate_tail = self._inflate.unconsumed_tail

    def peer_ip(self) -> str | None:
        if self._peer_ip is not None:
            return self._peer_ip
        peer = self.writer.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return None

    async def close(self) -> None:
        try:
            await self.flush()
        except (ConnectionError, RuntimeError, OSError):
            pass
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError, RuntimeError):
            pass
