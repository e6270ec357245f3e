"""The POP3 protocol engine: listeners (STLS on "plain", TLS from the first byte on "implicit"), the session
state machine of RFC 1939, line reading under limits, and multi-line responses streamed from the message file.

What a session sees and what QUIT changes is the maildrop's business (:mod:`homemail.pop3.maildrop`); this module
parses, answers and moves bytes. Each command handler returns its ``+OK`` text or raises
:class:`~homemail.pop3.errors.POP3Error`, which becomes the ``-ERR`` line (so no command can forget to answer).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from homemail import proxyproto
from homemail.pop3.errors import AUTH, IN_USE, SYS_TEMP, ConnectionLost, IdleTimeout, POP3Error
from homemail.pop3.maildrop import Entry, Maildrop, MaildropLocks
from homemail.store import Account

if TYPE_CHECKING:
    from homemail.config import Endpoint
    from homemail.server import Services

log = logging.getLogger(__name__)

AUTHORIZATION, TRANSACTION = "authorization", "transaction"
MAX_ERRORS = 20
MAX_CONNECTIONS_PER_IP = 20
CHUNK = 64 * 1024

Handler = Callable[["Session", str], Awaitable[str | None]]
COMMANDS: dict[str, tuple[Handler, tuple[str, ...]]] = {}


def command(name: str, *states: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = (fn, states)
        return fn

    return register


class Session:
    def __init__(
        self,
        services: Services,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: bool,
        stls: bool,
        peer_ip: str | None = None,
    ) -> None:
        self.services = services
        self.store = services.store
        self.auth = services.auth
        self.config = services.config.pop3
        self.reader = reader
        self.writer = writer
        self.tls = tls
        self.stls_allowed = stls
        if peer_ip is None:  # else the client's address, from a trusted proxy's PROXY header
            peer_ip = proxyproto.peer_address(writer)[0]
        self.peer_ip = peer_ip
        self.state = AUTHORIZATION
        self.user: str | None = None  # USER given, PASS expected next
        self.account: Account | None = None
        self.maildrop: Maildrop | None = None
        self.errors = 0
        self.closing = False
        locks = services.extras.get("pop3.locks")
        if not isinstance(locks, MaildropLocks):
            locks = MaildropLocks()
            services.extras["pop3.locks"] = locks
        self.locks = locks

    # --- I/O ---

    def write(self, data: bytes) -> None:
        if self.writer.transport.is_closing():
            # The client is gone (a reset in the middle of RETR, say); uvloop raises on such a write, asyncio
            # drops it. The next flush or read ends the session.
            return
        self.writer.write(data)

    async def flush(self) -> None:
        """Wait until the client took what was written. A client that stops reading (say in the middle of a
        RETR) meets the same autologout timer as one that stops writing."""
        transport = self.writer.transport
        if transport.get_write_buffer_size() == 0 and not transport.is_closing():
            return  # all sent: no need to wait (or to yield to the loop)
        try:
            await asyncio.wait_for(self.writer.drain(), self.config.idle_timeout)
        except TimeoutError:
            raise IdleTimeout(writing=True) from None
        except (ConnectionError, ssl.SSLError):
            raise ConnectionLost() from None

    async def read_line(self) -> bytes:
        limit = self.config.max_line_length
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), self.config.idle_timeout)
        except TimeoutError:
            raise IdleTimeout() from None
        except asyncio.LimitOverrunError:
            # Overlong: drop it up to its end, then say so.
            while True:
                try:
                    await asyncio.wait_for(self.reader.readuntil(b"\n"), self.config.idle_timeout)
                    break
                except asyncio.LimitOverrunError as e:
                    await self.reader.readexactly(e.consumed)
                except TimeoutError:
                    raise IdleTimeout() from None
                except (asyncio.IncompleteReadError, ConnectionError):
                    raise ConnectionLost() from None
            raise POP3Error("Line too long") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            raise ConnectionLost() from None
        if len(line) > limit:
            raise POP3Error("Line too long")
        return line.rstrip(b"\r\n")

    @property
    def plaintext_ok(self) -> bool:
        return self.auth.plaintext_allowed(self.tls, self.peer_ip)

    # --- the loop ---

    async def run(self) -> None:
        abort = False
        try:
            self.write(b"+OK homemail POP3 server ready\r\n")
            while not self.closing:
                await self.flush()
                line = await self.read_line_or_error()
                if line is None:
                    continue
                await self.execute(line)
        except (ConnectionLost, ConnectionError, ssl.SSLError):
            # Gone, maybe in the middle of a response (a reset while RETR streams): nothing to say or log.
            abort = True
        except IdleTimeout as e:
            # RFC 1939 3: the autologout timer; nothing marked deleted is removed.
            if not e.writing:
                self.write(b"-ERR [SYS/TEMP] Autologout: idle for too long\r\n")
            abort = e.writing
        except Exception:
            log.exception("pop3 %s: internal error", self.peer_ip)
            self.write(b"-ERR [SYS/TEMP] Internal error, closing\r\n")
        finally:
            if self.account is not None and self.maildrop is not None:
                self.locks.release(self.account.id)
            await self.close(abort)

    async def close(self, abort: bool) -> None:
        """Send what is left (briefly) and close; a connection that cannot take it is dropped at once."""
        if not abort:
            try:
                await asyncio.wait_for(self.writer.drain(), 5)
            except Exception:
                abort = True
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 5)

    async def read_line_or_error(self) -> bytes | None:
        try:
            return await self.read_line()
        except POP3Error as e:
            self.fail(e)
            return None

    def fail(self, e: POP3Error) -> None:
        self.write(e.line())
        if e.close:
            self.closing = True
            return
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            self.write(b"-ERR Too many errors, closing\r\n")
            self.closing = True

    async def execute(self, line: bytes) -> None:
        try:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise POP3Error("Command is not valid UTF-8") from None
            verb, _, arg = text.partition(" ")
            entry = COMMANDS.get(verb.upper())
            if entry is None or not verb:
                raise POP3Error(f"Unknown command: {verb[:20]!r}")
            handler, states = entry
            if self.state not in states:
                raise POP3Error(f"{verb.upper()} is not valid in the {self.state} state")
            result = await handler(self, arg)
            if result is not None:
                self.write(f"+OK {result}\r\n".encode())
        except POP3Error as e:
            self.fail(e)

    # --- multi-line responses ---

    async def send_message(self, entry: Entry, body_lines: int | None) -> None:
        """The message (all, or the header and ``body_lines`` lines of the body), byte-stuffed (RFC 1939 3)."""
        assert self.maildrop is not None
        f = await self.maildrop.open_message(entry)
        try:
            self.write(b"+OK message follows\r\n")
            carry = b""
            in_header = True
            lines_left = body_lines
            while True:
                chunk = await asyncio.to_thread(f.read, CHUNK)
                if not chunk:
                    break
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                data, carry = data[:cut], data[cut:]
                if body_lines is not None:
                    data, in_header, lines_left, done = _top(data, in_header, lines_left)
                    if done:
                        carry = b""
                        self._write_stuffed(data)
                        break
                self._write_stuffed(data)
                await self.flush()
            if carry and (body_lines is None or in_header or (lines_left or 0) > 0):
                self._write_stuffed(carry + b"\r\n")
            self.write(b".\r\n")
        finally:
            f.close()

    def _write_stuffed(self, data: bytes) -> None:
        """``data`` is whole lines; a line that begins with "." gets one more (RFC 1939 3)."""
        if data.startswith(b"."):
            data = b"." + data
        self.write(data.replace(b"\n.", b"\n.."))

    # --- login ---

    async def _logged_in(self, account: Account | None, username: str) -> str:
        if account is None:
            log.info("pop3 %s: login failed for %r", self.peer_ip, username)
            raise POP3Error("Authentication failed", AUTH)
        if not self.locks.acquire(account.id):
            raise POP3Error("The maildrop is in use by another session", IN_USE)
        try:
            self.maildrop = await Maildrop.open(self.store, account.id)
        except BaseException:
            self.locks.release(account.id)
            raise
        self.account = account
        self.state = TRANSACTION
        count, size = self.maildrop.stat()
        log.info("pop3 %s: %s logged in, %d messages", self.peer_ip, account.address, count)
        return f"Logged in, {count} messages ({size} octets)"


def _top(data: bytes, in_header: bool, lines_left: int | None) -> tuple[bytes, bool, int | None, bool]:
    """The part of ``data`` (whole lines) that TOP sends: all header lines, then ``lines_left`` body lines."""
    out = []
    pos = 0
    left = lines_left or 0
    while pos < len(data):
        end = data.find(b"\n", pos) + 1
        line = data[pos:end]
        pos = end
        if in_header:
            out.append(line)
            if line in (b"\r\n", b"\n"):
                in_header = False
            continue
        if left <= 0:
            return b"".join(out), in_header, 0, True
        out.append(line)
        left -= 1
    return b"".join(out), in_header, left, not in_header and left <= 0


def _number_arg(arg: str) -> str:
    arg = arg.strip(" ")
    if " " in arg:
        raise POP3Error("Too many arguments")
    return arg


# --- AUTHORIZATION -----------------------------------------------------------------------------------------


@command("CAPA", AUTHORIZATION, TRANSACTION)
async def cmd_capa(s: Session, arg: str) -> str | None:
    caps = [
        "TOP",
        "UIDL",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "EXPIRE NEVER",
        "IMPLEMENTATION homemail",
    ]
    if s.state == AUTHORIZATION:
        if s.plaintext_ok:
            caps += ["USER", "SASL PLAIN"]
        if s.stls_allowed and not s.tls:
            caps.append("STLS")
    s.write(b"+OK Capability list follows\r\n" + "".join(c + "\r\n" for c in caps).encode() + b".\r\n")
    return None


@command("STLS", AUTHORIZATION)
async def cmd_stls(s: Session, arg: str) -> str | None:
    if s.tls or not s.stls_allowed:
        raise POP3Error("Already using TLS" if s.tls else "STLS is not offered here")
    if s.reader._buffer:  # type: ignore[attr-defined]
        # RFC 2595 4: nothing may follow STLS before the handshake (plaintext command injection).
        raise POP3Error("Commands pipelined after STLS are refused", close=True)
    s.write(b"+OK Begin TLS negotiation\r\n")
    # No yield to the event loop between this reply and start_tls() pausing the reads: the client's
    # ClientHello, sent as soon as it sees the reply, would otherwise land in the plaintext buffer and the
    # handshake would never finish. (The reply is one short line: drain() does not wait for it.)
    await s.writer.drain()
    try:
        await s.writer.start_tls(s.services.tls)
    except (ssl.SSLError, OSError, TimeoutError) as e:
        log.info("pop3 %s: TLS handshake failed: %s", s.peer_ip, e)
        raise ConnectionLost() from None
    s.tls = True
    s.user = None
    return None


@command("USER", AUTHORIZATION)
async def cmd_user(s: Session, arg: str) -> str | None:
    if not s.plaintext_ok:
        raise POP3Error("Use STLS first: passwords are not accepted without TLS", AUTH)
    name = arg.strip(" ")
    if not name:
        raise POP3Error("USER needs a name")
    s.user = name
    return "Send PASS"


@command("PASS", AUTHORIZATION)
async def cmd_pass(s: Session, arg: str) -> str | None:
    if not s.plaintext_ok:
        raise POP3Error("Use STLS first: passwords are not accepted without TLS", AUTH)
    if s.user is None:
        raise POP3Error("Send USER first")
    username, s.user = s.user, None
    # RFC 1939 7: the password is the rest of the line and may contain spaces.
    account = await s.auth.login(username, arg, s.peer_ip)
    return await s._logged_in(account, username)


@command("APOP", AUTHORIZATION)
async def cmd_apop(s: Session, arg: str) -> str | None:
    raise POP3Error("APOP is not supported: passwords are stored hashed")


@command("AUTH", AUTHORIZATION)
async def cmd_auth(s: Session, arg: str) -> str | None:
    mechanism, _, initial = arg.strip(" ").partition(" ")
    if not mechanism:
        # RFC 5034 4: AUTH without a mechanism lists them (as Dovecot and common clients expect).
        s.write(b"+OK\r\n" + (b"PLAIN\r\n" if s.plaintext_ok else b"") + b".\r\n")
        return None
    if mechanism.upper() != "PLAIN":
        raise POP3Error("Unsupported authentication mechanism")
    if not s.plaintext_ok:
        raise POP3Error("Use STLS first: passwords are not accepted without TLS", AUTH)
    response = initial.strip(" ")
    if not response:
        s.write(b"+ \r\n")
        await s.flush()
        response = (await s.read_line()).decode("ascii", "replace").strip()
    if response == "*":
        raise POP3Error("Authentication cancelled")
    try:
        raw = b"" if response == "=" else base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        raise POP3Error("Invalid base64") from None
    parts = raw.split(b"\0")
    if len(parts) != 3:
        raise POP3Error("Malformed PLAIN response")
    authzid, authcid, password = (p.decode("utf-8", "replace") for p in parts)
    if authzid and authzid.lower() != authcid.lower():
        raise POP3Error("Authorization identity must be the authentication identity", AUTH)
    account = await s.auth.login(authcid, password, s.peer_ip)
    return await s._logged_in(account, authcid)


@command("QUIT", AUTHORIZATION, TRANSACTION)
async def cmd_quit(s: Session, arg: str) -> str | None:
    s.closing = True
    if s.state == TRANSACTION and s.maildrop is not None:
        # RFC 1939 6: the UPDATE state.
        removed = await s.maildrop.commit()
        left = len(s.maildrop.entries) - len(s.maildrop.deleted)
        return f"homemail POP3 server signing off ({removed} messages deleted, {left} left)"
    return "homemail POP3 server signing off"


# --- TRANSACTION -------------------------------------------------------------------------------------------


def _drop(s: Session) -> Maildrop:
    assert s.maildrop is not None
    return s.maildrop


@command("STAT", TRANSACTION)
async def cmd_stat(s: Session, arg: str) -> str | None:
    if arg.strip(" "):
        raise POP3Error("STAT takes no argument")
    count, size = _drop(s).stat()
    return f"{count} {size}"


@command("LIST", TRANSACTION)
async def cmd_list(s: Session, arg: str) -> str | None:
    drop = _drop(s)
    which = _number_arg(arg)
    if which:
        e = drop.get(which)
        return f"{e.number} {e.size}"
    count, size = drop.stat()
    lines = "".join(f"{e.number} {e.size}\r\n" for e in drop.visible())
    s.write(f"+OK {count} messages ({size} octets)\r\n{lines}.\r\n".encode())
    return None


@command("UIDL", TRANSACTION)
async def cmd_uidl(s: Session, arg: str) -> str | None:
    drop = _drop(s)
    which = _number_arg(arg)
    if which:
        e = drop.get(which)
        return f"{e.number} {drop.uidl(e)}"
    lines = "".join(f"{e.number} {drop.uidl(e)}\r\n" for e in drop.visible())
    s.write(f"+OK\r\n{lines}.\r\n".encode())
    return None


@command("RETR", TRANSACTION)
async def cmd_retr(s: Session, arg: str) -> str | None:
    drop = _drop(s)
    entry = drop.get(_number_arg(arg))
    await s.send_message(entry, None)
    drop.retrieved_whole(entry)
    return None


@command("TOP", TRANSACTION)
async def cmd_top(s: Session, arg: str) -> str | None:
    parts = arg.strip(" ").split(" ")
    if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 9:
        raise POP3Error("Syntax: TOP message lines")
    entry = _drop(s).get(parts[0])
    await s.send_message(entry, int(parts[1]))
    return None


@command("DELE", TRANSACTION)
async def cmd_dele(s: Session, arg: str) -> str | None:
    drop = _drop(s)
    entry = drop.get(_number_arg(arg))
    drop.delete(entry)
    return f"Message {entry.number} deleted"


@command("RSET", TRANSACTION)
async def cmd_rset(s: Session, arg: str) -> str | None:
    drop = _drop(s)
    drop.reset()
    count, size = drop.stat()
    return f"{count} messages ({size} octets)"


@command("NOOP", TRANSACTION)
async def cmd_noop(s: Session, arg: str) -> str | None:
    return "Nothing to do"


# --- listeners ---------------------------------------------------------------------------------------------


async def start_listener(services: Services, endpoint: Endpoint, mode: str) -> asyncio.AbstractServer:
    if mode not in ("plain", "implicit"):
        raise ValueError(f"unknown POP3 listener mode {mode!r}")
    implicit = mode == "implicit"
    per_ip: Counter[str] = services.extras.setdefault("pop3.connections_per_ip", Counter())

    refusal = POP3Error("Too many connections from your address", SYS_TEMP).line()

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: tuple[str, int]
    ) -> None:
        ip = client[0]  # the peer, or the client named by a trusted proxy's PROXY header
        await Session(services, reader, writer, tls=implicit, stls=not implicit, peer_ip=ip).run()

    return await proxyproto.start_stream_server(
        services,
        "pop3s" if implicit else "pop3",
        endpoint,
        proxyproto.limit_per_ip(per_ip, MAX_CONNECTIONS_PER_IP, refusal, handle),
        ssl=services.tls if implicit else None,
        limit=services.config.pop3.max_line_length + 2,
    )
