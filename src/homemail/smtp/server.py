"""The SMTP protocol engine: listeners, the session state machine, the command parser and the data reader.

The session parses and answers; what to accept is decided by a :class:`~homemail.smtp.policy.Policy` (MX:
:mod:`homemail.smtp.inbound`). Errors raised anywhere below a command unwind to it as
:class:`~homemail.smtp.replies.SMTPError` and become its reply.

Implementation notes:
- One asyncio Protocol per connection feeds a bytearray; one task per session reads commands from it. Input is
  scanned with ``bytes.find`` (never byte by byte), message data is taken whole with one slice, dot-unstuffed and
  normalised with ``bytes.replace``.
- Replies are queued and written in one ``write()`` when the session is about to wait for input, so a pipelined
  group of commands (RFC 2920) gets its replies in one segment, and no reply is held while we wait (RFC 2920 3.2).
- Reading pauses when the unread input passes :data:`HIGH_WATER` (a client flooding commands), writing back
  pressure pauses the session (a client that never reads its replies).
- Line endings (RFC 5321 2.3.8). Commands may end in a bare LF (accepted as a line end, as Postfix 3.9 does with
  its default ``smtpd_forbid_bare_newline = normalize``); a bare CR inside a command is refused. In message data
  only CRLF.CRLF ends the data. A "." line delimited any other way (LF.LF, CRLF.LF, LF.CRLF, CR.CR, ...) is not
  an end: the data runs on to the real CRLF.CRLF and the message is then refused with 550 5.5.2, since such a
  message is how SMTP smuggling hides a second message from a less strict server (sec-consult, Dec 2023;
  CVE-2023-51764). Other bare LFs in data are taken as line ends and stored as CRLF; bare CRs are kept as they
  are. BDAT data has no end marker, so only the LF normalisation applies.
- Text lines within data are not limited to 1000 octets (RFC 5321 4.5.3.1.6): like Postfix we tolerate longer
  lines rather than refuse real-world mail; only the message size is limited.
- A message over the size limit is read to its end and discarded, then refused with 552 5.3.4: never stored
  truncated. The final 250 is sent only after the policy returned, i.e. after the store made it durable.
- After STARTTLS (RFC 3207 4.2) all state is forgotten; bytes pipelined after STARTTLS, before the handshake, are
  refused and the connection closed (the plaintext command injection of CVE-2011-0411).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import ssl
import time
from base64 import b32encode
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from homemail import addresses, proxyproto
from homemail import tls as tlsmod
from homemail.smtp.policy import Envelope, Policy, RcptTo
from homemail.smtp.replies import (
    BYE,
    OK,
    RCPT_OK_BYTES,
    SENDER_OK_BYTES,
    START_DATA,
    ConnectionLost,
    Reply,
    SMTPError,
)

if TYPE_CHECKING:
    from homemail.config import Endpoint, SMTPConfig
    from homemail.server import Services

log = logging.getLogger(__name__)

HIGH_WATER = 4 * 1024 * 1024  # unread input at which reading pauses
NON_SMTP_VERBS = frozenset({"GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS"})  # cross-protocol attempts
MAX_PATH = addresses.MAX_PATH
# A "." line delimited by anything but CRLF on both sides (the data is searched with CRLF prepended).
_SMUGGLED_DOT = re.compile(rb"[\r\n]\.[\r\n]")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_XTEXT_UTF8 = re.compile(
    r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e\u0080-\U0010ffff]|\+[0-9A-F]{2}|\\x\{[0-9A-F]{1,6}\})*"
)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_BDAT = re.compile(r"(\d{1,18})(?: +(LAST))? *", re.IGNORECASE)
_DOMAIN_LIKE = re.compile(r"[\w.\-]+|\[[\w.:\-]+\]")


class _Timeout(Exception):
    pass


class Connections:
    """Open SMTP connections in this process, in total and per client IP, shared by every SMTP listener."""

    def __init__(self) -> None:
        self.total = 0
        self.per_ip: dict[str, int] = {}

    def add(self, ip: str) -> None:
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1

    def remove(self, ip: str) -> None:
        self.total -= 1
        n = self.per_ip.get(ip, 0) - 1
        if n > 0:
            self.per_ip[ip] = n
        else:
            self.per_ip.pop(ip, None)


def _session_id() -> str:
    return b32encode(os.urandom(5)).decode("ascii")


def _received_ip(ip: str) -> str:
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def _is_ascii(s: str) -> bool:
    return s.isascii()


# --- command argument parsing ------------------------------------------------------------------------------


def split_path(text: str, what: str) -> tuple[str, str]:
    """``<path> params`` (after "FROM:"/"TO:") -> (path without brackets, parameter text).

    Quoted local parts may hold ">" and spaces; a path without brackets (Postfix accepts them) ends at a space.
    """
    text = text.lstrip(" ")
    if not text.startswith("<"):
        path, _, rest = text.partition(" ")
        if not path:
            raise SMTPError(501, "5.5.4", f"Syntax: {what}:<address>")
        return path, rest
    i, n, quoted = 1, len(text), False
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            rest = text[i + 1 :]
            if rest and not rest.startswith(" "):
                raise SMTPError(501, "5.5.4", f"Syntax: {what}:<address> [parameters]")
            return text[1:i], rest
        i += 1
    raise SMTPError(501, "5.5.4", f'Syntax: {what}:<address> (missing ">")')


def strip_source_route(path: str) -> str:
    """RFC 5321 4.1.1.3 / C: source routes ``@a,@b:user@c`` must be accepted and should be ignored."""
    if not path.startswith("@"):
        return path
    route, colon, mailbox = path.partition(":")
    if not colon or not all(re.fullmatch(r"@[\w.\-\[\]:]+", hop) for hop in route.split(",")):
        raise SMTPError(501, "5.1.3", "Bad source route syntax")
    return mailbox


def parse_params(text: str, utf8: bool) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not _KEYWORD.fullmatch(key) or (eq and not value):
            raise SMTPError(501, "5.5.4", f"Bad parameter syntax: {word[:40]}")
        if not utf8 and not value.isascii():
            raise SMTPError(501, "5.5.4", "Non-ASCII parameter value without SMTPUTF8")
        key = key.upper()
        if key in params:
            raise SMTPError(501, "5.5.4", f"Duplicate parameter {key}")
        params[key] = value if eq else None
    return params


def check_xtext(value: str | None, key: str, utf8: bool = False) -> str:
    """RFC 3461 4: xtext; with SMTPUTF8, RFC 6533 3 utf-8-addr-xtext."""
    if value is None or not (_XTEXT_UTF8 if utf8 else _XTEXT).fullmatch(value) or len(value) > 500:
        raise SMTPError(501, "5.5.4", f"Bad {key} parameter value")
    return value


def parse_address(path: str, utf8: bool, what: str) -> str:
    """A path (without brackets or source route) -> normalised ``local@domain``; SMTPError when unusable."""
    code = "5.1.7" if what == "sender" else "5.1.3"
    if len(path) > MAX_PATH:
        raise SMTPError(501, code, f"Bad {what} address syntax: path too long")
    if not path.isascii() and not utf8:
        # RFC 6531 3.7.4.1 (the SMTPUTF8 parameter was not given)
        raise SMTPError(553, "5.6.7", f"Non-ASCII {what} address needs the SMTPUTF8 parameter")
    local, at, domain = path.rpartition("@")
    if not at:
        raise SMTPError(501, code, f"Bad {what} address syntax: no domain")
    if domain.startswith("["):
        if what == "recipient":
            # No mailbox is reached by address literal here; the recipient policy would say relay anyway.
            raise SMTPError(554, "5.7.1", "Relay access denied: address literals are not accepted")
        if not re.fullmatch(r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]", domain):
            raise SMTPError(501, code, f"Bad {what} address syntax")
        try:
            return f"{addresses.check_local_part(local)}@{domain}"
        except ValueError:
            raise SMTPError(501, code, f"Bad {what} address syntax") from None
    try:
        return addresses.normalize(path)
    except ValueError:
        raise SMTPError(501, code, f"Bad {what} address syntax") from None


def normalize_data(raw: bytes) -> bytes:
    """Bare LF -> CRLF (RFC 5321 2.3.8: a message's lines end in CRLF). Bare CRs are left as they are."""
    n = raw.count(b"\n")
    if n and n != raw.count(b"\r\n"):
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw


def unstuff(raw: bytes) -> bytes:
    """RFC 5321 4.5.2: a line's leading "." is removed (the data has CRLF line ends already)."""
    if raw.startswith(b"."):
        raw = raw[1:]
    return raw.replace(b"\r\n.", b"\r\n")


def smuggled_dot(raw: bytes) -> bool:
    """A "." line not delimited by CRLF on both sides (raw is the data before the final CRLF.CRLF)."""
    if raw[:2] in (b".\r", b".\n"):
        return True
    # Most messages have no line starting with "." at all: two substring scans settle it without the regex.
    if b"\n." not in raw and b"\r." not in raw:
        return False
    return _SMUGGLED_DOT.search(raw) is not None


# --- the session ----------------------------------------------------------------------------------------------


class Listener:
    """One listening endpoint: its mode, policy and the shared limits."""

    def __init__(self, services: Services, mode: str, policy: Policy) -> None:
        self.services = services
        self.mode = mode
        self.policy = policy
        self.config: SMTPConfig = services.config.smtp
        self.hostname = services.config.hostname
        conns = services.extras.get("smtp.connections")
        if not isinstance(conns, Connections):
            conns = Connections()
            services.extras["smtp.connections"] = conns
        self.connections = conns
        self.sessions: set[Session] = set()


Handler = Callable[["Session", str], Awaitable[Reply | None]]


class Session(asyncio.Protocol):
    """One SMTP connection: the transport glue (buffering, flow control) and the command loop."""

    def __init__(self, listener: Listener, client: tuple[str, int] | None = None) -> None:
        self.listener = listener
        self._client = client  # the client's address from a PROXY header (see homemail.proxyproto)
        self.services = listener.services
        self.mode = listener.mode
        self.policy = listener.policy
        self.config = listener.config
        self.session_id = _session_id()
        self.peer_ip = ""
        self.peer_port = 0
        self.helo: str | None = None
        self.esmtp = False
        self.tls = ""
        self.authenticated: str | None = None
        self.state: dict[str, Any] = {}
        self.envelope: Envelope | None = None
        self.chunks: list[bytes] | None = None  # BDAT chunks of the current message
        self.chunks_size = 0
        self.errors = 0
        self.messages = 0
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._paused = False
        self._closing = False
        self._counted = False
        self._task: asyncio.Task[None] | None = None

    # --- transport callbacks ---

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, so no isinstance check here.
        self.transport = transport = cast(asyncio.Transport, base)
        self.peer_ip, self.peer_port = self._client or proxyproto.peer_address(transport)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.tls = tlsmod.describe(sslobj)
        conns = self.listener.connections
        if conns.total >= self.config.max_connections:
            log.warning("smtp %s: refusing %s: %d connections open", self.mode, self.peer_ip, conns.total)
            transport.write(
                Reply(
                    421, "4.7.0", f"{self.listener.hostname} Too many connections, try again later"
                ).encode()
            )
            transport.close()
            return
        if conns.per_ip.get(self.peer_ip, 0) >= self.config.max_connections_per_ip:
            log.warning("smtp %s: refusing %s: too many connections from it", self.mode, self.peer_ip)
            transport.write(
                Reply(
                    421,
                    "4.7.0",
                    f"{self.listener.hostname} Too many connections from your address, try again later",
                ).encode()
            )
            transport.close()
            return
        conns.add(self.peer_ip)
        self._counted = True
        self.listener.sessions.add(self)
        self._task = self._loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self._buf += data
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif len(self._buf) > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Plain TCP: keep the transport open so replies to what was read before EOF still go out.
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self._counted:
            self._counted = False
            self.listener.connections.remove(self.peer_ip)
        self.listener.sessions.discard(self)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- output ---

    def send(self, reply: Reply) -> None:
        """Queue a reply; it goes out with the next flush (before the session waits for input)."""
        self._out.append(reply.encode())
        if reply.code >= 400:
            self._count_error()

    def _count_error(self) -> None:
        self.errors += 1
        if self.errors >= self.config.max_errors and not self._closing:
            self._out.append(
                Reply(421, "4.7.0", f"{self.listener.hostname} Too many errors, closing").encode()
            )
            self._closing = True

    def flush(self) -> None:
        if self._out and self.transport is not None and not self._lost:
            self.transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()

    # --- input ---

    async def _fill(self, timeout: float) -> None:
        """Wait for more input (flushing replies first). Raises ConnectionLost or _Timeout."""
        self.flush()
        if self._eof:
            raise ConnectionLost()
        if self._drain is not None and not self._drain.done():
            await self._wait(self._drain, timeout)
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiter = fut
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        try:
            await self._wait(fut, timeout)
        finally:
            self._waiter = None
        if self._lost and not self._buf:
            raise ConnectionLost()

    async def _wait(self, fut: asyncio.Future[None], timeout: float) -> None:
        timer = self._loop.call_later(timeout, _expire, fut)
        try:
            await fut
        finally:
            timer.cancel()

    async def read_line(self) -> bytes:
        """The next line without its line end; SMTPError 500 when longer than the command line limit."""
        buf = self._buf
        limit = self.config.max_line_length
        scan = 0
        while True:
            i = buf.find(b"\n", scan)
            if i >= 0:
                if i + 1 > limit:
                    del buf[: i + 1]
                    raise SMTPError(500, "5.5.2", "Line too long")
                line = bytes(buf[:i])
                del buf[: i + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(buf) > limit:
                # Overlong: drop what we have and the rest of the line as it arrives, then say so.
                del buf[:]
                while True:
                    await self._fill(self.config.idle_timeout)
                    j = buf.find(b"\n")
                    if j >= 0:
                        del buf[: j + 1]
                        raise SMTPError(500, "5.5.2", "Line too long")
                    del buf[:]
            scan = len(buf)
            await self._fill(self.config.idle_timeout)

    async def _read_data(self) -> tuple[bytes, bool]:
        """The data after DATA up to CRLF.CRLF (excluded; the last line's CRLF included).

        Returns (raw data, too big); when too big the data was discarded as it came and is returned empty.
        """
        buf = self._buf
        timeout = self.config.data_timeout
        limit = self.config.max_message_size
        scan = 0
        too_big = False
        while True:
            # While nothing was discarded buf[0] is the first byte of the data, right after a CRLF.
            if not too_big and buf.startswith(b".\r\n"):
                del buf[:3]
                return b"", False
            i = buf.find(b"\r\n.\r\n", scan)
            if i >= 0:
                if too_big:
                    del buf[: i + 5]
                    return b"", True
                raw = bytes(buf[: i + 2])
                del buf[: i + 5]
                return raw, False
            n = len(buf)
            # Only what is surely message counts: the input may end in the first two bytes of the end marker
            # (".\r" after the last CRLF, not found above yet), and a leading "." and every "\n." may be a
            # stuffed dot. Counting those made a message of exactly the limit refused whenever a segment
            # happened to end between "\r" and "\n" of its end marker.
            if too_big or (n > limit + 2 and n - 2 - buf.count(b"\n.") - buf.startswith(b".") > limit):
                too_big = True
                if n > 4:
                    del buf[: n - 4]  # keep what may be the start of the end marker
            scan = max(0, len(buf) - 4)
            await self._fill(timeout)

    async def _read_chunk(self, size: int, keep: bool) -> bytes:
        buf = self._buf
        timeout = self.config.data_timeout
        if len(buf) >= size:
            chunk = bytes(buf[:size]) if keep else b""
            del buf[:size]
            return chunk
        parts: list[bytes] = []
        left = size
        while left:
            if not buf:
                await self._fill(timeout)
                continue
            take = min(left, len(buf))
            if keep:
                parts.append(bytes(buf[:take]))
            del buf[:take]
            left -= take
        return b"".join(parts)

    # --- the command loop ---

    async def _run(self) -> None:
        try:
            try:
                await self.policy.connect(self)
            except SMTPError as e:
                self._out.append(e.reply.encode())
                return
            self._out.append(Reply(220, "", f"{self.listener.hostname} ESMTP homemail").encode())
            while not self._closing:
                try:
                    line = await self.read_line()
                    await self._command(line)
                except SMTPError as e:
                    self.send(e.reply)
                    if e.close:
                        self._closing = True
        except ConnectionLost:
            pass
        except _Timeout:
            log.info("smtp %s %s: timeout, closing", self.session_id, self.peer_ip)
            self._out.append(Reply(421, "4.4.2", f"{self.listener.hostname} Timeout, closing").encode())
        except asyncio.CancelledError:
            self._out.append(Reply(421, "4.3.2", f"{self.listener.hostname} Shutting down").encode())
            raise
        except Exception:
            log.exception("smtp %s %s: internal error", self.session_id, self.peer_ip)
            self._out.append(
                Reply(421, "4.3.0", f"{self.listener.hostname} Internal error, closing").encode()
            )
        finally:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            try:
                self.policy.close(self)
            except Exception:
                log.exception("smtp policy close failed")

    async def _command(self, line: bytes) -> None:
        if b"\r" in line or b"\x00" in line:
            raise SMTPError(500, "5.5.2", "Invalid characters in command")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise SMTPError(500, "5.5.2", "Command is not valid UTF-8") from None
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        handler = _COMMANDS.get(verb)
        if handler is None:
            if verb in NON_SMTP_VERBS:
                log.info("smtp %s %s: non-SMTP command %s, closing", self.session_id, self.peer_ip, verb[:10])
                raise SMTPError(421, "4.7.0", "This is an SMTP server; closing", close=True)
            reply = await self.policy.command(self, verb, arg)
            if reply is None:
                raise SMTPError(500, "5.5.2", "Command unrecognized")
        else:
            reply = await handler(self, arg)
        if reply is not None:
            self.send(reply)

    def _reset(self) -> None:
        self.envelope = None
        self.chunks = None
        self.chunks_size = 0

    # --- commands: each returns its reply, or raises SMTPError ---

    async def cmd_helo(self, arg: str) -> Reply | None:
        return await self._hello(arg, esmtp=False)

    async def cmd_ehlo(self, arg: str) -> Reply | None:
        return await self._hello(arg, esmtp=True)

    async def _hello(self, arg: str, esmtp: bool) -> Reply:
        name = arg.strip(" ")
        if not name or " " in name:
            raise SMTPError(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
        await self.policy.helo(self, name)
        self._reset()  # RFC 5321 4.1.4: EHLO/HELO during a transaction resets it
        self.helo = name
        self.esmtp = esmtp
        host = self.listener.hostname
        if not esmtp:
            return Reply(250, "", host)
        lines = [
            host,
            "PIPELINING",
            f"SIZE {self.config.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
        ]
        if not self.tls:
            lines.append("STARTTLS")
        lines += self.policy.ehlo_keywords(self)
        return Reply(250, "", "\n".join(lines))

    async def cmd_mail(self, arg: str) -> Reply | None:
        if self.helo is None:
            raise SMTPError(503, "5.5.1", "Send HELO/EHLO first")
        if self.envelope is not None:
            raise SMTPError(503, "5.5.1", "Nested MAIL command")
        if arg[:5].upper() != "FROM:":
            raise SMTPError(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        path, rest = split_path(arg[5:], "MAIL FROM")
        params = parse_params(rest, utf8=True)
        env = Envelope(sender="")
        env.smtputf8 = "SMTPUTF8" in params
        extra = self.policy.extra_mail_params
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 18:
                    raise SMTPError(501, "5.5.4", "Bad SIZE parameter")
                env.size = int(value)
                if env.size > self.config.max_message_size:  # RFC 1870 6.1
                    raise SMTPError(
                        552,
                        "5.3.4",
                        f"Message size exceeds the limit of {self.config.max_message_size} bytes",
                    )
            elif key == "BODY":
                body = (value or "").upper()
                if body not in ("7BIT", "8BITMIME"):  # BINARYMIME is not offered
                    raise SMTPError(501, "5.5.4", "Bad BODY parameter (7BIT or 8BITMIME)")
                env.body = body
            elif key == "SMTPUTF8":
                if value is not None:
                    raise SMTPError(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key == "RET":
                ret = (value or "").upper()
                if ret not in ("FULL", "HDRS"):
                    raise SMTPError(501, "5.5.4", "Bad RET parameter (FULL or HDRS)")
                env.ret = ret
            elif key == "ENVID":
                env.envid = check_xtext(value, "ENVID")
                if len(env.envid) > 100:  # RFC 3461 4.4
                    raise SMTPError(501, "5.5.4", "ENVID too long")
            elif key in extra:
                env.params[key] = value
            else:
                raise SMTPError(555, "5.5.4", f"Unsupported MAIL parameter {key[:30]}")
        path = strip_source_route(path)
        if path:
            env.sender = parse_address(path, env.smtputf8, "sender")
        self.messages += 1
        env.id = f"{self.session_id}{self.messages}"
        reply = await self.policy.mail_from(self, env)
        self.envelope = env
        if reply is None:
            self._out.append(SENDER_OK_BYTES)
        return reply

    async def cmd_rcpt(self, arg: str) -> Reply | None:
        env = self.envelope
        if env is None:
            raise SMTPError(503, "5.5.1", "Need MAIL command first")
        if arg[:3].upper() != "TO:":
            raise SMTPError(501, "5.5.4", "Syntax: RCPT TO:<address>")
        path, rest = split_path(arg[3:], "RCPT TO")
        params = parse_params(rest, utf8=env.smtputf8)
        rcpt = RcptTo(address="")
        for key, value in params.items():
            if key == "NOTIFY":  # RFC 3461 4.1
                words = tuple((value or "").upper().split(","))
                if not words or not (
                    words == ("NEVER",)
                    or (set(words) <= {"SUCCESS", "FAILURE", "DELAY"} and len(set(words)) == len(words))
                ):
                    raise SMTPError(501, "5.5.4", "Bad NOTIFY parameter")
                rcpt.notify = words
            elif key == "ORCPT":  # RFC 3461 4.2
                addr_type, semi, xtext = (value or "").partition(";")
                if not semi or not _KEYWORD.fullmatch(addr_type):
                    raise SMTPError(501, "5.5.4", "Bad ORCPT parameter")
                check_xtext(xtext, "ORCPT", utf8=env.smtputf8)
                rcpt.orcpt = value
            else:
                raise SMTPError(555, "5.5.4", f"Unsupported RCPT parameter {key[:30]}")
        path = strip_source_route(path)
        if not path:
            raise SMTPError(501, "5.1.3", "Bad recipient address syntax: empty")
        if path.lower() == "postmaster":  # RFC 5321 4.5.1: must be accepted without a domain
            rcpt.address = "postmaster"
        else:
            rcpt.address = parse_address(path, env.smtputf8, "recipient")
        if len(env.recipients) >= self.config.max_recipients:  # RFC 5321 4.5.3.1.8
            raise SMTPError(452, "4.5.3", "Too many recipients")
        reply = await self.policy.rcpt_to(self, env, rcpt)
        if not any(r.address.lower() == rcpt.address.lower() for r in env.recipients):
            env.recipients.append(rcpt)
        if reply is None:
            self._out.append(RCPT_OK_BYTES)
        return reply

    async def cmd_data(self, arg: str) -> Reply | None:
        env = self.envelope
        if arg.strip(" "):
            raise SMTPError(501, "5.5.4", "Syntax: DATA")
        if env is None:
            raise SMTPError(503, "5.5.1", "Need MAIL command first")
        if self.chunks is not None:
            raise SMTPError(503, "5.5.1", "DATA in a BDAT transaction")
        if not env.recipients:
            raise SMTPError(554, "5.5.1", "No valid recipients")
        self.send(START_DATA)
        raw, too_big = await self._read_data()
        self._reset()
        if too_big:
            raise SMTPError(
                552,
                "5.3.4",
                f"Message exceeds the size limit of {self.config.max_message_size} bytes; not accepted",
            )
        if smuggled_dot(raw):
            log.warning(
                "smtp %s %s: refused message %s: '.' line with a bare CR or LF",
                self.session_id,
                self.peer_ip,
                env.id,
            )
            raise SMTPError(
                550,
                "5.5.2",
                'Message refused: a "." line ending in a bare CR or LF (RFC 5321 2.3.8); end lines with CRLF',
            )
        message = unstuff(normalize_data(raw))
        if len(message) > self.config.max_message_size:
            raise SMTPError(
                552,
                "5.3.4",
                f"Message exceeds the size limit of {self.config.max_message_size} bytes; not accepted",
            )
        return await self._deliver(env, message)

    async def cmd_bdat(self, arg: str) -> Reply | None:
        m = _BDAT.fullmatch(arg)
        if m is None:
            # The chunk size is unknown, so the rest of the input cannot be told apart from commands.
            raise SMTPError(501, "5.5.4", "Syntax: BDAT size [LAST]; closing", close=True)
        size, last = int(m.group(1)), m.group(2) is not None
        env = self.envelope
        error: SMTPError | None = None
        if env is None:
            error = SMTPError(503, "5.5.1", "Need MAIL command first")
        elif not env.recipients:
            error = SMTPError(554, "5.5.1", "No valid recipients")
        elif self.chunks_size + size > self.config.max_message_size:
            error = SMTPError(
                552,
                "5.3.4",
                f"Message exceeds the size limit of {self.config.max_message_size} bytes; not accepted",
            )
        chunk = await self._read_chunk(size, keep=error is None)
        if error is not None:
            if env is not None:
                self._reset()  # RFC 3030 4: after a failed chunk the transaction is over
            raise error
        assert env is not None
        if self.chunks is None:
            self.chunks = []
        self.chunks.append(chunk)
        self.chunks_size += size
        if not last:
            return Reply(250, "2.0.0", f"{size} bytes received")
        message = normalize_data(b"".join(self.chunks))
        self._reset()
        return await self._deliver(env, message)

    async def _deliver(self, env: Envelope, message: bytes) -> Reply:
        try:
            return await self.policy.data(self, env, message)
        except SMTPError:
            raise
        except Exception:
            log.exception("smtp %s: delivery of %s failed", self.session_id, env.id)
            raise SMTPError(451, "4.3.0", "Temporary failure storing the message; try again later") from None

    async def cmd_rset(self, arg: str) -> Reply | None:
        self._reset()
        return OK

    async def cmd_noop(self, arg: str) -> Reply | None:
        return OK

    async def cmd_quit(self, arg: str) -> Reply | None:
        self._closing = True
        return BYE

    async def cmd_vrfy(self, arg: str) -> Reply | None:
        if not arg.strip(" "):
            raise SMTPError(501, "5.5.4", "Syntax: VRFY address")
        # RFC 5321 3.5.3: 252 when we will not say
        return Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

    async def cmd_expn(self, arg: str) -> Reply | None:
        raise SMTPError(502, "5.5.1", "EXPN not available")

    async def cmd_help(self, arg: str) -> Reply | None:
        return Reply(
            214,
            "2.0.0",
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS\nSee RFC 5321",
        )

    async def cmd_starttls(self, arg: str) -> Reply | None:
        if self.tls:
            raise SMTPError(503, "5.5.1", "TLS already active")
        if arg.strip(" "):
            raise SMTPError(501, "5.5.4", "Syntax: STARTTLS")
        if self.helo is None:
            raise SMTPError(503, "5.5.1", "Send EHLO first")
        if self._buf:
            # Anything pipelined after STARTTLS would be taken as sent over TLS: refuse it (RFC 3207 5).
            log.warning("smtp %s %s: data pipelined after STARTTLS, closing", self.session_id, self.peer_ip)
            del self._buf[:]
            raise SMTPError(
                554, "5.5.1", "Command pipelining after STARTTLS is not allowed; closing", close=True
            )
        self._out.append(Reply(220, "2.0.0", "Ready to start TLS").encode())
        self.flush()
        assert self.transport is not None
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        try:
            transport = await self._loop.start_tls(
                self.transport,
                self,
                self.services.tls,
                server_side=True,
                ssl_handshake_timeout=min(60.0, self.config.idle_timeout),
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as e:
            log.info("smtp %s %s: TLS handshake failed: %s", self.session_id, self.peer_ip, e)
            self._lost = True
            raise ConnectionLost() from None
        if transport is None:
            raise ConnectionLost()
        self.transport = transport
        self.tls = tlsmod.describe(transport.get_extra_info("ssl_object")) or "TLS"
        # RFC 3207 4.2: forget everything learnt before TLS (the buffer was empty when the handshake began).
        self._reset()
        self.helo = None
        self.esmtp = False
        self.state.clear()
        return None

    # --- for policies ---

    def input_pending(self) -> bool:
        """Bytes from the client not read yet (before the greeting: a client talking out of turn)."""
        return bool(self._buf)

    def received_header(self, env: Envelope) -> bytes:
        """The trace field this server adds (RFC 5321 4.4, protocol names of RFC 3848 and RFC 6531)."""
        if env.smtputf8:
            proto = "UTF8SMTP"
        elif self.esmtp:
            proto = "ESMTP"
        else:
            proto = "SMTP"
        if self.tls:
            proto += "S"
        if self.authenticated:
            proto += "A"
        helo = self.helo or "unknown"
        if not _DOMAIN_LIKE.fullmatch(helo):
            helo = re.sub(r"[^\w.\-\[\]:]", "?", helo)[:100] or "unknown"
        rdns = self.state.get("reverse_name")
        tcp = f"{rdns} {_received_ip(self.peer_ip)}" if rdns else _received_ip(self.peer_ip)
        tls_info = f" ({self.tls})" if self.tls else ""
        for_clause = f"\r\n\tfor <{env.recipients[0].address}>" if len(env.recipients) == 1 else ""
        date = _date_now()
        return (
            f"Received: from {helo} ({tcp})\r\n\tby {self.listener.hostname} (homemail) with {proto}"
            f"{tls_info}\r\n\tid {env.id}{for_clause}; {date}\r\n"
        ).encode()


_date_cache: tuple[int, str] = (-1, "")


def _date_now() -> str:
    """RFC 5322 date of this second, for trace fields: formatted once per second, not per message."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return _date_cache[1]


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(_Timeout())


_COMMANDS: dict[str, Handler] = {
    "HELO": Session.cmd_helo,
    "EHLO": Session.cmd_ehlo,
    "MAIL": Session.cmd_mail,
    "RCPT": Session.cmd_rcpt,
    "DATA": Session.cmd_data,
    "BDAT": Session.cmd_bdat,
    "RSET": Session.cmd_rset,
    "NOOP": Session.cmd_noop,
    "QUIT": Session.cmd_quit,
    "VRFY": Session.cmd_vrfy,
    "EXPN": Session.cmd_expn,
    "HELP": Session.cmd_help,
    "STARTTLS": Session.cmd_starttls,
}


def make_policy(services: Services, mode: str) -> Policy:
    if mode == "mx":
        from homemail.smtp.inbound import InboundPolicy

        return InboundPolicy(services)
    from homemail.smtp.submission import SubmissionPolicy

    return SubmissionPolicy(services, mode)


async def start_listener(services: Services, endpoint: Endpoint, mode: str) -> asyncio.AbstractServer:
    """Listen on ``endpoint``: "mx" (port 25), "submission" (587, STARTTLS) or "submissions" (465, TLS)."""
    if mode not in ("mx", "submission", "submissions"):
        raise ValueError(f"unknown SMTP listener mode {mode!r}")
    listener = Listener(services, mode, make_policy(services, mode))
    return await proxyproto.start_server(
        services,
        "smtp" if mode == "mx" else mode,
        endpoint,
        lambda client: Session(listener, client),
        ssl=services.tls if mode == "submissions" else None,
        ssl_handshake_timeout=60.0,
        backlog=1024,
    )
