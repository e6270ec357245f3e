"""A raw IMAP client for tests: sends exact bytes, returns every response line (literals inline) and checks
each against the response grammar's outline (RFC 9051 9: continue-req / response-data / response-tagged)."""

from __future__ import annotations

import itertools
import re
import socket
import zlib

from harness import no_verify

_TAGGED = re.compile(
    rb"^[^(){ \x00-\x1f\x7f%*\"\\+]+ (OK|NO|BAD)( \[[^\]\r\n]*(\][^\r\n]*)?)? ?[^\r\n]*\r\n$"
)
_UNTAGGED = re.compile(rb"^\* [^\r\n]*\r\n$", re.DOTALL)
_LITERAL_END = re.compile(rb"~?\{(\d+)\}\r\n$")


def well_formed(line: bytes, tag: bytes | None = None) -> bool:
    """A complete response (with its literals) looks like an IMAP response."""
    head = line
    # Drop literal contents before checking the outline.
    out = b""
    pos = 0
    while True:
        m = re.compile(rb"~?\{(\d+)\}\r\n").search(head, pos)
        if not m:
            out += head[pos:]
            break
        out += head[pos : m.start()] + b"{}"
        pos = m.end() + int(m.group(1))
    if out.startswith(b"+ ") or out == b"+\r\n":
        return out.endswith(b"\r\n")
    if out.startswith(b"* "):
        return out.endswith(b"\r\n") and out.count(b"\r\n") == 1
    return bool(_TAGGED.match(out)) and (tag is None or out.startswith(tag + b" "))


class Raw:
    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        tls: bool = False,
        timeout: float = 10,
        source: str | None = None,
    ) -> None:
        sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        # A command and its CRLF may go out in two writes: without this, Nagle holds the second for ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock = no_verify().wrap_socket(sock)
        self.sock: socket.socket = sock
        self.buf = b""
        self.n = 0
        self.inflate: zlib._Decompress | None = None
        self.deflate: zlib._Compress | None = None
        self.greeting = self.response()

    # --- bytes -----------------------------------------------------------------------------------------------

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        if self.inflate is not None:
            data = self.inflate.decompress(data)
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._recv()
        i = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._recv()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self) -> bytes:
        """One whole response: a line and any literals it announces, with the lines that follow them."""
        line = self._line()
        while m := _LITERAL_END.search(line):
            line += self._take(int(m.group(1)))
            line += self._line()
        return line

    def send(self, data: bytes) -> None:
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    # --- commands --------------------------------------------------------------------------------------------

    def tag(self) -> bytes:
        self.n += 1
        return b"t%d" % self.n

    def cmd(self, text: str | bytes, check: bool = True) -> tuple[list[bytes], bytes]:
        """Send ``tag text`` (synchronising literals are sent after the server's continuation); return the
        untagged responses and the tagged one."""
        tag = self.tag()
        data = text.encode() if isinstance(text, str) else text
        pieces = re.split(rb"(\{\d+\}\r\n)", data)
        self.send(tag + b" " + pieces[0])
        i = 1
        untagged: list[bytes] = []
        while i < len(pieces):
            self.send(pieces[i])
            resp = self.response()
            while not resp.startswith(b"+"):
                if resp.startswith(tag + b" "):
                    return untagged, resp
                untagged.append(resp)
                resp = self.response()
            self.send(pieces[i + 1])
            i += 2
        self.send(b"\r\n")
        return self.until(tag, untagged, check)

    def until(
        self, tag: bytes, untagged: list[bytes] | None = None, check: bool = True
    ) -> tuple[list[bytes], bytes]:
        untagged = untagged if untagged is not None else []
        while True:
            resp = self.response()
            if check:
                assert well_formed(resp), resp
            if resp.startswith(tag + b" "):
                return untagged, resp
            untagged.append(resp)

    def ok(self, text: str | bytes) -> list[bytes]:
        untagged, tagged = self.cmd(text)
        assert b" OK" in tagged[:20], (text, tagged, untagged)
        return untagged

    def login(self, user: str, password: str = "password") -> None:
        self.ok(f'LOGIN "{user}" "{password}"')

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


_sources = itertools.count(2)


def new_source() -> str:
    """A loopback address no connection of these tests has come from yet (127.0.x.y)."""
    n = next(_sources)
    return f"127.0.{n // 250 + 1}.{n % 250 + 2}"


class RawFrom(Raw):
    """Raw, connected from a chosen loopback address, or a new one (Linux routes all of 127/8 to lo)."""

    def __init__(self, port: int, source: str | None = None, tls: bool = False) -> None:
        super().__init__(port, tls=tls, source=source or new_source())
