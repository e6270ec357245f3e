"""One IMAP connection's session: the state machine of RFC 9051 3 (not authenticated, authenticated, selected,
logout), the command table, and every command's handler.

A handler parses its arguments with :class:`~homemail.imap.parser.Parser`, works through the store, writes its
untagged responses and returns the text (and response code) of its tagged OK. Failures are raised
(:class:`No`, :class:`Bad`) and answered once, in :meth:`Session.execute`. Before each tagged answer the
session brings its view of the selected mailbox up to date (:meth:`Session.sync`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from homemail import utf7
from homemail.imap import encode, fetch, mailboxes, search, sort
from homemail.imap.errors import Bad, Bye, IMAPError, LineTooLong, LiteralRefused, No, ParseError
from homemail.imap.parser import Parser, SeqSet
from homemail.imap.selected import Selected, open_view
from homemail.imap.wire import Conn
from homemail.message.imap import string
from homemail.store import (
    SYSTEM_FLAGS,
    Account,
    AlreadyExists,
    FlagOp,
    FlagUpdate,
    Invalid,
    Mailbox,
    MessageInfo,
    NotFound,
    StoreError,
)

if TYPE_CHECKING:
    from homemail.server import Services

log = logging.getLogger(__name__)
T = TypeVar("T")

VERSION = "0.1.0"
NOT_AUTH, AUTH, SELECTED, LOGOUT = "not authenticated", "authenticated", "selected", "logout"
PREAUTH_TIMEOUT = 120.0
MAX_BAD_COMMANDS = 30
NON_APPEND_LITERAL = 1024 * 1024  # literals of commands other than APPEND (search strings, passwords)
ENABLABLE = ("CONDSTORE", "QRESYNC", "IMAP4REV2")

Result = tuple[bytes | None, str] | None
Handler = Callable[["Session", bytes, Parser, bool], Awaitable[Result]]


@dataclass(frozen=True)
class Command:
    handler: Handler
    states: tuple[str, ...]
    uid: bool = False  # has a UID form
    # RFC 9051 7.5.1: no EXPUNGE while answering FETCH, STORE or SEARCH (their UID forms excepted).
    expunge_ok: bool = True


COMMANDS: dict[str, Command] = {}


def command(
    name: str, *states: str, uid: bool = False, expunge_ok: bool = True
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(fn, states, uid, expunge_ok)
        return fn

    return register


ANY = (NOT_AUTH, AUTH, SELECTED)
AUTHED = (AUTH, SELECTED)


_UNSAFE_TEXT = re.compile(r"[^\x20-\x7e]")


def resp_text(text: str) -> bytes:
    """A response's human-readable text. RFC 9051 9: text is TEXT-CHARs (no CR, LF or NUL), 7-bit unless
    IMAP4rev2 is enabled; texts can carry what a client sent (a charset name, a mailbox name), so anything else is
    escaped: a CRLF there would end the response early and start a line of the client's choosing."""
    escaped = _UNSAFE_TEXT.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return escaped.encode("ascii")


class Session:
    def __init__(self, services: Services, conn: Conn, starttls_allowed: bool) -> None:
        self.services = services
        self.store = services.store
        self.config = services.config.imap
        self.conn = conn
        self.starttls_allowed = starttls_allowed
        self.state = NOT_AUTH
        self.account: Account | None = None
        self.selected: Selected | None = None
        self._unwatch: Callable[[], None] | None = None
        self.wake = asyncio.Event()
        self.condstore = False
        self.qresync = False
        self.rev2 = False
        self.bad_count = 0
        self._rate_window = 0.0
        self._rate_count = 0
        self._literal_total = 0

    # --- the connection loop ---------------------------------------------------------------------------------

    def capabilities(self) -> bytes:
        caps = ["IMAP4rev1", "IMAP4rev2"]
        if self.state == NOT_AUTH:
            if self.starttls_allowed and not self.conn.tls:
                caps.append("STARTTLS")
            if self.services.auth.plaintext_allowed(self.conn.tls, self.conn.peer_ip()):
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                caps.append("LOGINDISABLED")
        caps += [
            "LITERAL+",
            "SASL-IR",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "ID",
            "UIDPLUS",
            "MOVE",
            "UNSELECT",
            "CHILDREN",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "CONDSTORE",
            "QRESYNC",
            "ESEARCH",
            "SEARCHRES",
            "WITHIN",
            "SORT",
            "SORT=DISPLAY",
            "THREAD=REFERENCES",
            "STATUS=SIZE",
            "BINARY",
            f"APPENDLIMIT={self.config.max_literal}",
        ]
        if not self.conn.compressed:
            caps.append("COMPRESS=DEFLATE")
        return " ".join(caps).encode()

    def untagged(self, line: bytes) -> None:
        self.conn.write(b"* " + line + b"\r\n")

    async def run(self) -> None:
        conn = self.conn
        try:
            conn.write(b"* OK [CAPABILITY " + self.capabilities() + b"] homemail IMAP ready\r\n")
            await conn.flush()
            while self.state != LOGOUT:
                try:
                    data = await self._read_command()
                except LineTooLong:
                    conn.write(b"* BYE line too long\r\n")
                    break
                except LiteralRefused as e:
                    code = b"[" + e.code + b"] " if e.code else b""
                    conn.write(e.tag + b" " + e.status + b" " + code + resp_text(e.text) + b"\r\n")
                    if e.close:
                        conn.write(b"* BYE literal too large\r\n")
                        break
                    await conn.flush()
                    continue
                except TimeoutError:
                    conn.write(b"* BYE autologout; idle for too long\r\n")
                    break
                if data is None:
                    break
                await self._throttle()
                await self.execute(data)
                await conn.flush()
        except Bye as e:
            conn.write(b"* BYE " + resp_text(e.text) + b"\r\n")
        except LineTooLong:
            # Inside a command (the line that ends IDLE, an AUTHENTICATE response): as between commands.
            conn.write(b"* BYE line too long\r\n")
        except TimeoutError:
            # RFC 9051 5.4: the autologout timer ran out inside a command (an AUTHENTICATE exchange).
            conn.write(b"* BYE autologout; idle for too long\r\n")
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The server is shutting down: RFC 9051 7.1.5 BYE, sent by the close below.
            conn.write(b"* BYE server shutting down\r\n")
            raise
        finally:
            self.unselect()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _read_command(self) -> bytes | None:
        self._literal_total = 0
        timeout = (
            self.config.idle_timeout
            if self.state != NOT_AUTH
            else min(self.config.idle_timeout, PREAUTH_TIMEOUT)
        )
        async with asyncio.timeout(timeout):
            return await self.conn.read_command(self.config.max_line_length, self._on_literal)

    async def _on_literal(self, parts: list[bytes], size: int, sync: bool) -> None:
        first = parts[0]
        words = first.split(b" ", 3)
        # The tag as the command loop would read it; without one the answer is an untagged BAD (RFC 9051 7.1.3).
        try:
            tag = Parser(first).tag()
        except ParseError:
            tag = b"*"
        name = words[1].upper() if len(words) > 1 else b""
        if name == b"UID" and len(words) > 2:
            name = words[2].upper()
        limit = (
            self.config.max_literal
            if name == b"APPEND" and self.state != NOT_AUTH
            else min(NON_APPEND_LITERAL, self.config.max_literal)
        )
        self._literal_total += size
        if size > limit or self._literal_total > limit:
            if tag == b"*":
                raise LiteralRefused(tag, b"BAD", "literal too large", b"TOOBIG", close=not sync)
            if name == b"APPEND":
                # RFC 7889 4: a message over APPENDLIMIT is refused with TOOBIG before it is sent.
                raise LiteralRefused(tag, b"NO", "message too large", b"TOOBIG", close=not sync)
            # RFC 7888 4: a non-synchronising literal over the limit: BAD, and the connection closes.
            raise LiteralRefused(
                tag, b"BAD" if not sync else b"NO", "literal too large", b"TOOBIG", close=not sync
            )
        if sync:
            self.conn.write(b"+ Ready for literal data\r\n")
            await self.conn.flush()

    async def _throttle(self) -> None:
        now = time.monotonic()
        if now - self._rate_window >= 1.0:
            self._rate_window = now
            self._rate_count = 0
        self._rate_count += 1
        if self._rate_count > self.config.max_commands_per_second:
            await asyncio.sleep(max(0.0, 1.0 - (now - self._rate_window)))

    async def execute(self, data: bytes) -> None:
        p = Parser(data)
        try:
            tag = p.tag()
        except ParseError:
            self.conn.write(b"* BAD syntax error: no tag\r\n")
            await self._count_bad()
            return
        name = ""
        try:
            p.sp()
            name = p.atom().upper()
            uid = False
            if name == "UID":
                p.sp()
                name = p.atom().upper()
                uid = True
            cmd = COMMANDS.get(name)
            if cmd is None or (uid and not cmd.uid):
                raise Bad(f"unknown command {'UID ' if uid else ''}{name}")
            if self.state not in cmd.states:
                raise Bad(f"{name} is not allowed in the {self.state} state")
            result = await cmd.handler(self, tag, p, uid)
            await self.sync(cmd.expunge_ok or uid)
            code, text = result if result is not None else (None, f"{name} completed")
            code_text = b"[" + code + b"] " if code else b""
            self.conn.write(tag + b" OK " + code_text + resp_text(text) + b"\r\n")
            self.bad_count = 0
        except IMAPError as e:
            if isinstance(e, No) and name in COMMANDS:
                with contextlib.suppress(IMAPError):
                    await self.sync(COMMANDS[name].expunge_ok)
            code = b"[" + e.code + b"] " if e.code else b""
            self.conn.write(tag + b" " + e.status + b" " + code + resp_text(e.text) + b"\r\n")
            if e.status == b"BAD":
                await self._count_bad()
        except StoreError as e:
            self.conn.write(tag + b" NO [SERVERBUG] " + resp_text(str(e)) + b"\r\n")
        except _Answered:
            self.bad_count = 0
        except (Bye, LineTooLong, ConnectionError, OSError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("IMAP command %s failed", name)
            self.conn.write(tag + b" NO [SERVERBUG] internal error\r\n")

    async def _count_bad(self) -> None:
        self.bad_count += 1
        if self.bad_count >= MAX_BAD_COMMANDS:
            raise Bye("too many bad commands")

    # --- the selected mailbox ----------------------------------------------------------------------------

    @property
    def view(self) -> Selected:
        if self.selected is None:
            raise Bad("no mailbox selected")
        return self.selected

    @property
    def account_id(self) -> int:
        assert self.account is not None
        return self.account.id

    def _on_change(self, mailbox_id: int) -> None:
        if self.selected is not None and self.selected.mailbox.id == mailbox_id:
            self.selected.dirty = True
            self.wake.set()

    def unselect(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.selected = None
        if self.state == SELECTED:
            self.state = AUTH

    def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 3.1). The first one issued with a mailbox selected reports that
        mailbox's HIGHESTMODSEQ, the point from which the session's FETCH responses carry MODSEQ."""
        if self.condstore:
            return
        self.condstore = True
        if self.selected is not None:
            self.untagged(b"OK [HIGHESTMODSEQ %d] highest modseq" % self.selected.modseq)

    def flags_of(self, view: Selected, info: MessageInfo) -> bytes:
        if not self.rev2 and info.uid in view.recent:
            return encode.flag_list(info.flags | {"\\Recent"})
        return encode.flag_list(info.flags)

    def _flags_response(self, view: Selected) -> list[bytes]:
        keywords = sorted({f for m in view.info.values() for f in m.flags if not f.startswith("\\")})
        flags = " ".join([*SYSTEM_FLAGS, *keywords]).encode()
        perm = b"()" if view.readonly else b"(" + flags + b" \\*)"
        return [b"FLAGS (" + flags + b")", b"OK [PERMANENTFLAGS " + perm + b"] flags permitted"]

    async def sync(self, allow_expunge: bool) -> None:
        """Announce what changed in the selected mailbox since the session last looked (RFC 9051 7.5.1)."""
        view = self.selected
        if view is None or (not view.dirty and not (allow_expunge and view.gone)):
            return
        new: list[MessageInfo] = []
        if view.dirty:
            view.dirty = False
            try:
                ch = await self.store.changes(self.account_id, view.mailbox.id, view.modseq)
            except NotFound:
                self.unselect()
                raise Bye("the selected mailbox was deleted") from None
            last = view.uids[-1] if view.uids else 0
            lines: list[bytes] = []
            # RFC 9051 7.3.5: FLAGS again only when a keyword new to the mailbox appears; the system flags are
            # always in the list.
            known = {f for m in view.info.values() for f in m.flags if not f.startswith("\\")}
            new_flags = False
            for m in ch.changed:
                old = view.info.get(m.uid)
                if old is None:
                    if m.uid > last:
                        new.append(m)
                        new_flags = new_flags or any(f not in known and f[:1] != "\\" for f in m.flags)
                    continue
                if m.modseq <= old.modseq:
                    continue
                view.info[m.uid] = m
                new_flags = new_flags or any(f not in known and f[:1] != "\\" for f in m.flags)
                if m.uid in view.gone or (m.flags == old.flags and not self.condstore):
                    continue
                items = b"UID %d FLAGS %s" % (m.uid, self.flags_of(view, m))
                if self.condstore:
                    items += b" MODSEQ (%d)" % m.modseq
                lines.append(b"* %d FETCH (%s)\r\n" % (view.seq(m.uid), items))
            for u in ch.expunged:
                if u in view.info:
                    view.gone.add(u)
            view.modseq = max(view.modseq, ch.highestmodseq)
            if new_flags:
                for line in self._flags_response(view if not new else _with(view, new)):
                    self.untagged(line)
            for line in lines:
                self.conn.write(line)
        if allow_expunge and view.gone:
            for line in view.expunge_lines(list(view.gone), self.qresync):
                self.conn.write(line)
        if new:
            view.add(new)
            if not self.rev2 and not view.readonly:
                first = await self.store.claim_recent(self.account_id, view.mailbox.id)
                view.recent.update(m.uid for m in new if m.uid >= first)
            self.untagged(b"%d EXISTS" % view.exists)
            if not self.rev2:
                self.untagged(b"%d RECENT" % len(view.recent))

    # --- helpers --------------------------------------------------------------------------------------------

    def decode_mailbox(self, raw: bytes) -> str:
        """A mailbox name from the client: UTF-8 under IMAP4rev2 (RFC 9051 5.1), else modified UTF-7."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Bad("mailbox name is not valid UTF-8") from None
        if not self.rev2 and text.isascii():
            try:
                text = utf7.decode(text)
            except ValueError:
                raise No("mailbox name is not valid modified UTF-7", code=b"CANNOT") from None
        if text.upper() == "INBOX":
            return "INBOX"
        if text[:6].upper() == "INBOX/":
            return "INBOX" + text[5:]
        return text

    def mailbox_name(self, name: str) -> bytes:
        return encode.mailbox_name(name, self.rev2)

    async def get_mailbox(self, name: str, trycreate: bool = False) -> Mailbox:
        mb = await self.store.get_mailbox(self.account_id, name) if not name.startswith("\\") else None
        if mb is None:
            if trycreate:
                raise No("no such mailbox", code=b"TRYCREATE")
            raise No("no such mailbox", code=b"NONEXISTENT")
        return mb


def _with(view: Selected, new: list[MessageInfo]) -> Selected:
    """A throwaway view that also holds ``new`` (to compute the FLAGS response before they are added)."""
    info = dict(view.info)
    for m in new:
        info[m.uid] = m
    return Selected(view.mailbox, view.readonly, [], info, view.modseq)


def store_errors(e: StoreError) -> IMAPError:
    if isinstance(e, NotFound):
        return No(str(e), code=b"NONEXISTENT")
    if isinstance(e, AlreadyExists):
        return No(str(e), code=b"ALREADYEXISTS")
    if isinstance(e, Invalid):
        return No(str(e), code=b"CANNOT")
    return No(str(e), code=b"SERVERBUG")


async def _checked(call: Awaitable[T]) -> T:
    """What the store ``call`` returns; a store error is answered with the NO it stands for."""
    try:
        return await call
    except StoreError as e:
        raise store_errors(e) from None


# ================================================================================================================
# Any state (RFC 9051 6.1)
# ================================================================================================================


@command("CAPABILITY", *ANY)
async def cmd_capability(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.end()
    s.untagged(b"CAPABILITY " + s.capabilities())
    return None


@command("NOOP", *ANY)
async def cmd_noop(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.end()
    return None


@command("LOGOUT", *ANY)
async def cmd_logout(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.end()
    s.untagged(b"BYE homemail logging out")
    s.unselect()
    s.state = LOGOUT
    return None


@command("ID", *ANY)
async def cmd_id(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    # RFC 2971 3.1: id_params_list = "(" *(string SP nstring) ")" / nil
    p.sp()
    if not p.take(b"NIL"):
        p.expect(b"(")
        count = 0
        if not p.take(b")"):
            while True:
                p.string()
                p.sp()
                p.nstring()
                count += 1
                if p.take(b")"):
                    break
                p.sp()
        if count > 30:
            raise Bad("too many ID fields")
    p.end()
    s.untagged(b'ID ("name" "homemail" "version" "' + VERSION.encode() + b'")')
    return None


@command("ENABLE", *AUTHED)
async def cmd_enable(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    enabled: list[str] = []
    p.sp()
    names = [p.atom().upper()]
    while not p.at_end():
        p.sp()
        names.append(p.atom().upper())
    p.end()
    was_condstore = s.condstore
    for name in names:
        if name == "CONDSTORE" and not s.condstore:
            s.condstore = True
            enabled.append("CONDSTORE")
        elif name == "QRESYNC" and not s.qresync:
            # RFC 7162 3.2.3: QRESYNC implies CONDSTORE.
            s.qresync = s.condstore = True
            enabled.append("QRESYNC")
        elif name == "IMAP4REV2" and not s.rev2:
            s.rev2 = True
            enabled.append("IMAP4rev2")
    s.untagged(b"ENABLED" + b"".join(b" " + n.encode() for n in enabled))
    if s.selected is not None and ("CONDSTORE" in enabled or "QRESYNC" in enabled) and not was_condstore:
        s.untagged(b"OK [HIGHESTMODSEQ %d] highest modseq" % s.selected.modseq)
    return None


# ================================================================================================================
# Not authenticated (RFC 9051 6.2)
# ================================================================================================================


@command("STARTTLS", NOT_AUTH)
async def cmd_starttls(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.end()
    if not s.starttls_allowed or s.conn.tls:
        raise Bad("TLS is already active" if s.conn.tls else "STARTTLS is not offered here")
    s.conn.write(tag + b" OK Begin TLS negotiation now\r\n")
    try:
        await s.conn.start_tls(s.services.tls)
    except (TimeoutError, OSError, ConnectionError) as e:
        raise Bye(f"TLS negotiation failed: {e}") from None
    raise _Answered()


class _Answered(Exception):
    """The handler has written its tagged answer itself (STARTTLS, COMPRESS, IDLE)."""


async def _logged_in(s: Session, account: Account) -> Result:
    s.account = account
    s.state = AUTH
    return (b"CAPABILITY " + s.capabilities(), "Logged in")


@command("LOGIN", NOT_AUTH)
async def cmd_login(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    user = p.astring()
    p.sp()
    password = p.astring()
    p.end()
    if not s.services.auth.plaintext_allowed(s.conn.tls, s.conn.peer_ip()):
        raise No("LOGIN is disabled until TLS is active (STARTTLS)", code=b"PRIVACYREQUIRED")
    return await _login(s, user.decode("utf-8", "replace"), password.decode("utf-8", "replace"))


async def _login(s: Session, user: str, password: str) -> Result:
    account = await s.services.auth.login(user, password, s.conn.peer_ip())
    if account is None:
        raise No("authentication failed", code=b"AUTHENTICATIONFAILED")
    return await _logged_in(s, account)


def _b64(line: bytes) -> bytes:
    text = line.strip()
    if text == b"*":
        raise Bad("authentication cancelled")
    if text == b"=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Bad("invalid base64 in the SASL response") from None


async def _sasl_line(s: Session, challenge: bytes) -> bytes:
    s.conn.write(b"+ " + base64.b64encode(challenge) + b"\r\n")
    await s.conn.flush()
    async with asyncio.timeout(min(s.config.idle_timeout, PREAUTH_TIMEOUT)):
        line = await s.conn.readline(s.config.max_line_length)
    if line is None:
        raise Bye("connection closed during authentication")
    return _b64(line)


@command("AUTHENTICATE", NOT_AUTH)
async def cmd_authenticate(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    mech = p.atom().upper()
    initial: bytes | None = None
    if not p.at_end():
        # RFC 4959: SASL-IR, the initial response on the command line ("=" for an empty one).
        p.sp()
        m = p._match(_B64_TOKEN, "a base64 initial response")
        initial = _b64(m)
    p.end()
    if mech not in ("PLAIN", "LOGIN"):
        raise No(f"unsupported mechanism {mech}", code=b"CANNOT")
    if not s.services.auth.plaintext_allowed(s.conn.tls, s.conn.peer_ip()):
        raise No("cleartext authentication is disabled until TLS is active", code=b"PRIVACYREQUIRED")
    if mech == "PLAIN":
        # RFC 4616: [authzid] NUL authcid NUL passwd
        response = initial if initial is not None else await _sasl_line(s, b"")
        fields = response.split(b"\x00")
        if len(fields) != 3:
            raise Bad("malformed PLAIN response")
        authz, user, password = (f.decode("utf-8", "replace") for f in fields)
        if authz and authz.lower() != user.lower():
            raise No("authorization identity must be the login", code=b"AUTHORIZATIONFAILED")
        return await _login(s, user, password)
    user_b = initial if initial is not None else await _sasl_line(s, b"Username:")
    password_b = await _sasl_line(s, b"Password:")
    return await _login(s, user_b.decode("utf-8", "replace"), password_b.decode("utf-8", "replace"))


_B64_TOKEN = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=")


# ================================================================================================================
# Authenticated (RFC 9051 6.3)
# ================================================================================================================


async def _select(s: Session, tag: bytes, p: Parser, readonly: bool) -> Result:
    p.sp()
    name = s.decode_mailbox(p.astring())
    condstore = False
    qresync: tuple[int, int, SeqSet | None] | None = None
    if p.take(b" ("):
        while True:
            if p.take(b"CONDSTORE"):
                condstore = True
            elif p.take(b"QRESYNC ("):
                # RFC 7162 3.2.5: QRESYNC (uidvalidity mod-sequence [known-uids [seq-match-data]])
                if not s.qresync:
                    raise Bad("QRESYNC must be enabled first (ENABLE QRESYNC)")
                uidvalidity = p.number(nz=True)
                p.sp()
                modseq = p.number64(nz=True)
                known: SeqSet | None = None
                if p.take(b" "):
                    if p.next_byte() != b"(":
                        known = p.seq_set(allow_saved=False)
                        p.take(b" ")
                    if p.take(b"("):
                        p.seq_set(allow_saved=False)
                        p.sp()
                        p.seq_set(allow_saved=False)
                        p.expect(b")")
                p.expect(b")")
                qresync = (uidvalidity, modseq, known)
            else:
                raise p.error("CONDSTORE or QRESYNC")
            if p.take(b")"):
                break
            p.sp()
    p.end()
    if s.selected is not None:
        s.unselect()
        # RFC 7162 3.2.11 / RFC 9051 7.1: the previous mailbox is closed.
        s.untagged(b"OK [CLOSED] previous mailbox closed")
    if condstore:
        s.condstore = True
    mb = await s.get_mailbox(name)
    view = Selected(mb, readonly, [], {}, mb.highestmodseq)
    s.selected = view
    s._unwatch = s.store.watch(mb.id, s._on_change)
    try:
        view = await open_view(s.store, s.account_id, mb, readonly, claim_recent=not readonly and not s.rev2)
    except BaseException:
        s.unselect()
        raise
    if readonly and not s.rev2:
        status = await s.store.mailbox_status(s.account_id, mb.id)
        if status.recent:
            view.recent = set(view.uids[-status.recent :])
    view.dirty = s.selected.dirty
    s.selected = view
    s.state = SELECTED
    for line in s._flags_response(view):
        s.untagged(line)
    s.untagged(b"%d EXISTS" % view.exists)
    if s.rev2:
        # RFC 9051 6.3.2: a LIST response with the mailbox name and its accurate attributes.
        attrs = mailboxes.attributes(mb, await s.store.list_mailboxes(s.account_id))
        s.untagged(b"LIST (" + " ".join(attrs).encode() + b') "/" ' + s.mailbox_name(mb.name))
    else:
        s.untagged(b"%d RECENT" % len(view.recent))
        unseen = next((i + 1 for i, u in enumerate(view.uids) if "\\Seen" not in view.info[u].flags), 0)
        if unseen:
            s.untagged(b"OK [UNSEEN %d] first unseen message" % unseen)
    uidnext = max(mb.uidnext, (view.uids[-1] + 1) if view.uids else 1)
    s.untagged(b"OK [UIDVALIDITY %d] UIDs valid" % mb.uidvalidity)
    s.untagged(b"OK [UIDNEXT %d] predicted next UID" % uidnext)
    s.untagged(b"OK [HIGHESTMODSEQ %d] highest modseq" % view.modseq)
    if qresync is not None and qresync[0] == mb.uidvalidity:
        await _qresync_catchup(s, view, qresync[1], qresync[2])
    return (b"READ-ONLY" if readonly else b"READ-WRITE", ("EXAMINE" if readonly else "SELECT") + " completed")


async def _qresync_catchup(s: Session, view: Selected, since: int, known: SeqSet | None) -> None:
    """RFC 7162 3.2.5.2: VANISHED (EARLIER) for what went since ``since``, then FETCH for what changed."""
    ch = await s.store.changes(s.account_id, view.mailbox.id, since)
    largest = max(view.uids[-1] if view.uids else 0, max(ch.expunged, default=0))
    gone = [u for u in ch.expunged if u not in view.info and (known is None or known.contains(u, largest))]
    if gone:
        s.untagged(b"VANISHED (EARLIER) " + encode.seq_set(gone))
    for m in ch.changed:
        cur = view.info.get(m.uid)
        if cur is None:
            continue
        s.untagged(
            b"%d FETCH (UID %d FLAGS %s MODSEQ (%d))"
            % (view.seq(m.uid), m.uid, s.flags_of(view, cur), cur.modseq)
        )
        await s.conn.maybe_flush()


@command("SELECT", *AUTHED)
async def cmd_select(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    return await _select(s, tag, p, readonly=False)


@command("EXAMINE", *AUTHED)
async def cmd_examine(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    # RFC 9051 6.3.3: EXAMINE is SELECT read-only; \Recent is not taken.
    return await _select(s, tag, p, readonly=True)


# RFC 6154 2: the special uses a mailbox can be created with (\All and \Flagged would be virtual views).
CREATABLE_SPECIAL_USE = ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")


@command("CREATE", *AUTHED)
async def cmd_create(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    name = s.decode_mailbox(p.astring())
    uses: list[str] = []
    if p.take(b" (USE ("):
        # RFC 6154 6: create-params = SP "(" "USE" SP "(" [use-attr *(SP use-attr)] ")" ")"
        while not p.take(b")"):
            if uses:
                p.sp()
            uses.append(p.flag())
        p.expect(b")")
    p.end()
    special: str | None = None
    for attr in uses:
        canon = next((a for a in CREATABLE_SPECIAL_USE if a.lower() == attr.lower()), None)
        if canon is None or (special is not None and special != canon):
            # RFC 6154 3: a special use the server cannot give (\All and \Flagged are virtual views here;
            # one mailbox holds one special use) is refused with USEATTR.
            raise No(f"{attr} cannot be given to a mailbox here", code=b"USEATTR")
        special = canon
    # RFC 9051 6.3.4: a trailing delimiter says the client means to create names below.
    name = name.rstrip(mailboxes.SEP)
    if name == "INBOX":
        raise No("INBOX exists already", code=b"ALREADYEXISTS")
    await _checked(s.store.create_mailbox(s.account_id, name, special))
    return None


@command("DELETE", *AUTHED)
async def cmd_delete(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    name = s.decode_mailbox(p.astring())
    p.end()
    if name == "INBOX":
        raise No("INBOX cannot be deleted", code=b"CANNOT")
    if s.selected is not None:
        # By id: the selected mailbox may have been renamed since it was selected.
        target = await s.store.get_mailbox(s.account_id, name)
        if target is not None and target.id == s.selected.mailbox.id:
            s.unselect()
    try:
        await s.store.delete_mailbox(s.account_id, name)
    except NotFound:
        prefix = name + mailboxes.SEP
        if any(m.name.startswith(prefix) for m in await s.store.list_mailboxes(s.account_id)):
            # RFC 9051 6.3.5: deleting a \Noselect name that has inferior names is an error (RFC 5530).
            raise No("the name has inferior mailboxes and is not a mailbox", code=b"HASCHILDREN") from None
        raise No("no such mailbox", code=b"NONEXISTENT") from None
    except StoreError as e:
        raise store_errors(e) from None
    return None


@command("RENAME", *AUTHED)
async def cmd_rename(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    old = s.decode_mailbox(p.astring())
    p.sp()
    new = s.decode_mailbox(p.astring()).rstrip(mailboxes.SEP)
    p.end()
    if new == "INBOX":
        raise No("INBOX exists already", code=b"ALREADYEXISTS")
    await _checked(s.store.rename_mailbox(s.account_id, old, new))
    return None


async def _set_subscribed(s: Session, p: Parser, subscribed: bool) -> Result:
    p.sp()
    name = s.decode_mailbox(p.astring())
    p.end()
    await _checked(s.store.set_subscribed(s.account_id, name, subscribed))
    return None


@command("SUBSCRIBE", *AUTHED)
async def cmd_subscribe(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    return await _set_subscribed(s, p, True)


@command("UNSUBSCRIBE", *AUTHED)
async def cmd_unsubscribe(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    return await _set_subscribed(s, p, False)


_STATUS_ITEMS = (
    "MESSAGES",
    "RECENT",
    "UIDNEXT",
    "UIDVALIDITY",
    "UNSEEN",
    "SIZE",
    "DELETED",
    "HIGHESTMODSEQ",
    "APPENDLIMIT",
)


def _status_items(p: Parser) -> list[str]:
    p.expect(b"(", "a list of status items")
    items = [p.atom().upper()]
    while not p.take(b")"):
        p.sp()
        items.append(p.atom().upper())
    for item in items:
        if item not in _STATUS_ITEMS:
            raise Bad(f"unknown status item {item}")
    return items


async def _status_line(s: Session, mb: Mailbox, items: list[str]) -> bytes:
    st = await s.store.mailbox_status(s.account_id, mb.id)
    values = {
        "MESSAGES": st.messages,
        "RECENT": st.recent,
        "UIDNEXT": st.uidnext,
        "UIDVALIDITY": st.uidvalidity,
        "UNSEEN": st.unseen,
        "SIZE": st.size,
        "DELETED": st.deleted,
        "HIGHESTMODSEQ": st.highestmodseq,
        "APPENDLIMIT": s.config.max_literal,
    }
    view = s.selected
    if view is not None and view.mailbox.id == mb.id and not s.rev2:
        values["RECENT"] = max(st.recent, len(view.recent))
    parts = b" ".join(b"%s %d" % (i.encode(), values[i]) for i in items)
    return b"STATUS " + s.mailbox_name(mb.name) + b" (" + parts + b")"


@command("STATUS", *AUTHED)
async def cmd_status(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    name = s.decode_mailbox(p.astring())
    p.sp()
    items = _status_items(p)
    p.end()
    if "HIGHESTMODSEQ" in items:
        s.enable_condstore()  # RFC 7162 3.1: a CONDSTORE-enabling command
    mb = await s.get_mailbox(name)
    s.untagged(await _status_line(s, mb, items))
    return None


def _list_patterns(s: Session, p: Parser) -> list[str]:
    if p.take(b"("):
        pats = [p.list_mailbox()]
        while not p.take(b")"):
            p.sp()
            pats.append(p.list_mailbox())
        return [_decode_pattern(s, x) for x in pats]
    return [_decode_pattern(s, p.list_mailbox())]


def _decode_pattern(s: Session, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Bad("pattern is not valid UTF-8") from None
    if not s.rev2 and text.isascii():
        with contextlib.suppress(ValueError):
            text = utf7.decode(text)
    return text


@command("LIST", *AUTHED)
async def cmd_list(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    opts = mailboxes.ListOptions(extended=s.rev2)
    if p.take(b"("):
        # RFC 5258 3: list-select-opts
        opts.extended = True
        while not p.take(b")"):
            p.take(b" ")
            word = p.atom().upper()
            if word == "SUBSCRIBED":
                opts.subscribed = True
            elif word == "RECURSIVEMATCH":
                opts.recursive = True
            elif word == "SPECIAL-USE":
                opts.special_use_only = True
            elif word == "REMOTE":
                pass
            else:
                raise Bad(f"unknown LIST selection option {word}")
        p.sp()
        if opts.recursive and not opts.subscribed and not opts.special_use_only:
            raise Bad("RECURSIVEMATCH needs another selection option")
    reference = _decode_pattern(s, p.astring() if p.next_byte() != b"{" else p.string())
    p.sp()
    patterns = _list_patterns(s, p)
    status_items: list[str] | None = None
    if p.take(b" RETURN ("):
        opts.extended = True
        while not p.take(b")"):
            p.take(b" ")
            word = p.atom().upper()
            if word == "SUBSCRIBED":
                opts.return_subscribed = True
            elif word in ("CHILDREN", "SPECIAL-USE", "MYRIGHTS"):
                pass
            elif word == "STATUS":
                p.sp()
                status_items = _status_items(p)
            else:
                raise Bad(f"unknown LIST return option {word}")
    p.end()
    if len(patterns) == 1 and patterns[0] == "":
        # RFC 9051 6.3.9: an empty pattern asks for the delimiter and the root of the reference.
        s.untagged(b'LIST (\\Noselect) "/" ""')
        return None
    full = [mailboxes.canonical_pattern(reference, pat) for pat in patterns]
    boxes = await s.store.list_mailboxes(s.account_id)
    subs = await s.store.list_subscriptions(s.account_id)
    for item in mailboxes.list_mailboxes(boxes, subs, full, opts):
        line = b"LIST (" + " ".join(item.attributes).encode() + b') "/" ' + s.mailbox_name(item.name)
        if item.child_info:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        s.untagged(line)
        if status_items and item.mailbox is not None:
            # RFC 5819: the STATUS of each selectable mailbox listed, right after its LIST.
            s.untagged(await _status_line(s, item.mailbox, status_items))
        await s.conn.maybe_flush()
    return None


@command("LSUB", *AUTHED)
async def cmd_lsub(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    reference = _decode_pattern(s, p.astring())
    p.sp()
    pattern = _decode_pattern(s, p.list_mailbox())
    p.end()
    boxes = await s.store.list_mailboxes(s.account_id)
    subs = await s.store.list_subscriptions(s.account_id)
    for item in mailboxes.lsub(subs, boxes, [mailboxes.canonical_pattern(reference, pattern)]):
        s.untagged(b"LSUB (" + " ".join(item.attributes).encode() + b') "/" ' + s.mailbox_name(item.name))
    return None


@command("NAMESPACE", *AUTHED)
async def cmd_namespace(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.end()
    # RFC 2342 5: one personal namespace, the root, delimiter "/"; no other users' or shared namespaces.
    s.untagged(b'NAMESPACE (("" "/")) NIL NIL')
    return None


@command("APPEND", *AUTHED)
async def cmd_append(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    name = s.decode_mailbox(p.astring())
    p.sp()
    flags: list[str] = []
    when: datetime | None = None
    if p.next_byte() == b"(":
        flags = _check_flags(p.flag_list())
        p.sp()
    if p.next_byte() == b'"':
        when = p.date_time()
        p.sp()
    data = p.literal(allow8=True)
    p.end()
    if not data:
        raise No("an empty message cannot be appended", code=b"CANNOT")
    if len(data) > s.config.max_literal:
        raise No("message too large", code=b"TOOBIG")
    mb = await s.get_mailbox(name, trycreate=True)
    uidvalidity, new_uid = await _checked(s.store.append(s.account_id, mb.id, data, flags, when))
    # RFC 4315 3: APPENDUID uidvalidity uid
    return (b"APPENDUID %d %d" % (uidvalidity, new_uid), "APPEND completed")


def _check_flags(flags: list[str]) -> list[str]:
    out = []
    for f in flags:
        if f.startswith("\\"):
            canon = next((sf for sf in SYSTEM_FLAGS if sf.lower() == f.lower()), None)
            if canon is None:
                if f.lower() == "\\recent":
                    continue  # session state; cannot be stored (RFC 3501 2.3.2)
                raise Bad(f"unknown system flag {f}")
            out.append(canon)
        elif f == "\\*":
            raise Bad("\\* is not a flag")
        else:
            out.append(f)
    return out


@command("IDLE", *AUTHED)
async def cmd_idle(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.end()
    conn = s.conn
    conn.write(b"+ idling\r\n")
    await s.sync(True)
    await conn.flush()
    deadline = time.monotonic() + s.config.idle_timeout
    reader = asyncio.ensure_future(conn.readline(s.config.max_line_length))
    try:
        while True:
            s.wake.clear()
            if s.selected is not None and s.selected.dirty:
                await s.sync(True)
                await conn.flush()
                continue
            waiter = asyncio.ensure_future(s.wake.wait())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiter.cancel()
                raise Bye("autologout; idle for too long")
            done, _ = await asyncio.wait(
                {reader, waiter}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in done:
                waiter.cancel()
            if reader in done:
                break
            await s.sync(True)
            await conn.flush()
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
    line = reader.result()
    if line is None:
        raise ConnectionError("closed during IDLE")
    if line.strip().upper() != b"DONE":
        raise Bad("expected DONE to end IDLE")
    return (None, "IDLE terminated")


@command("COMPRESS", *AUTHED)
async def cmd_compress(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.sp()
    mech = p.atom().upper()
    p.end()
    if s.conn.compressed:
        raise No("compression is already on", code=b"COMPRESSIONACTIVE")
    if mech != "DEFLATE":
        raise Bad(f"unknown compression mechanism {mech}")
    await s.sync(True)
    s.conn.write(tag + b" OK DEFLATE active\r\n")
    await s.conn.flush()
    s.conn.start_deflate()
    raise _Answered()


# ================================================================================================================
# Selected (RFC 9051 6.4)
# ================================================================================================================


@command("CHECK", SELECTED)
async def cmd_check(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.end()
    return None


@command("CLOSE", SELECTED)
async def cmd_close(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.end()
    view = s.view
    s.unselect()
    if not view.readonly:
        # RFC 9051 6.4.1: messages marked \Deleted are removed, without untagged EXPUNGE responses.
        removed = await s.store.expunge(s.account_id, view.mailbox.id)
        if removed and s.qresync:
            # RFC 7162 3.2.8: the mailbox's new HIGHESTMODSEQ goes in the tagged OK.
            highest = await _modseq_after_close(s, view, removed)
            if highest is not None:
                return (b"HIGHESTMODSEQ %d" % highest, "CLOSE completed")
    return None


async def _modseq_after_close(s: Session, view: Selected, removed: list[int]) -> int | None:
    """The HIGHESTMODSEQ a client closing ``view`` may keep: the mailbox's, when every change up to it is one
    the client knows of (its own, or the expunge it just asked for); None when other changes came meanwhile."""
    ch = await s.store.changes(s.account_id, view.mailbox.id, view.modseq)
    if not set(ch.expunged) <= set(removed):
        return None
    for m in ch.changed:
        known = view.info.get(m.uid)
        if known is None or known.modseq < m.modseq:
            return None
    return ch.highestmodseq


@command("UNSELECT", SELECTED)
async def cmd_unselect(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    p.end()
    s.unselect()
    return None


@command("EXPUNGE", SELECTED, uid=True)
async def cmd_expunge(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    view = s.view
    uids: list[int] | None = None
    if uid:
        # RFC 4315 2.1: UID EXPUNGE sequence-set
        p.sp()
        uids = view.resolve(p.seq_set(), uid=True)
    p.end()
    if view.readonly:
        raise No("the mailbox is read-only", code=b"READ-ONLY")
    if uids is not None and not uids:
        return None
    removed = await s.store.expunge(s.account_id, view.mailbox.id, uids)
    view.gone.update(u for u in removed if u in view.info)
    if removed and s.qresync:
        # RFC 7162 3.2.7 / 3.2.9: announce now, and give the new HIGHESTMODSEQ in the tagged OK.
        view.dirty = True
        await s.sync(True)
        return (b"HIGHESTMODSEQ %d" % view.modseq, "EXPUNGE completed")
    return None


async def _fetch_items(
    s: Session, p: Parser, uid: bool
) -> tuple[list[int], list[fetch.Item], int | None, bool]:
    view = s.view
    p.sp()
    seqs = p.seq_set()
    p.sp()
    items = fetch.parse_items(p)
    changedsince: int | None = None
    vanished = False
    if p.take(b" ("):
        # RFC 7162 3.1.4 / 3.2.6: fetch-modifiers
        while True:
            if p.take(b"CHANGEDSINCE "):
                changedsince = p.number64()
            elif p.take(b"VANISHED"):
                vanished = True
            else:
                raise p.error("CHANGEDSINCE or VANISHED")
            if p.take(b")"):
                break
            p.sp()
    p.end()
    if vanished and (not uid or changedsince is None or not s.qresync):
        raise Bad("VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC enabled")
    uids = view.resolve(seqs, uid)
    if vanished and changedsince is not None:
        ch = await s.store.changes(s.account_id, view.mailbox.id, changedsince)
        largest = max(max(ch.expunged, default=0), view.uids[-1] if view.uids else 0)
        gone = [u for u in ch.expunged if u not in view.info and seqs.contains(u, largest)]
        if gone:
            s.untagged(b"VANISHED (EARLIER) " + encode.seq_set(gone))
    return uids, items, changedsince, vanished


@command("FETCH", SELECTED, uid=True, expunge_ok=False)
async def cmd_fetch(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    view = s.view
    uids, items, changedsince, _ = await _fetch_items(s, p, uid)
    names = {i.kind for i in items}
    if changedsince is not None or "MODSEQ" in names:
        s.enable_condstore()  # RFC 7162 3.1: CONDSTORE-enabling
    if changedsince is not None:
        uids = [u for u in uids if view.info[u].modseq > changedsince]
        if "MODSEQ" not in names:
            items.append(fetch.Item("MODSEQ", label=b"MODSEQ"))
    if uid and "UID" not in names:
        items.insert(0, fetch.Item("UID", label=b"UID"))
    # \Seen is set by BODY[...] and friends in a read-write mailbox (RFC 9051 6.4.5).
    seen_changed: set[int] = set()
    if not view.readonly and any(i.sets_seen for i in items):
        unseen = [u for u in uids if "\\Seen" not in view.info[u].flags]
        if unseen and any(i.kind == "BINARY" and i.part for i in items):
            # RFC 3516 4.3: BINARY of a part in an unknown encoding fails with NO [UNKNOWN-CTE] and returns
            # no data, so it must fail before \Seen is set.
            blobs = [view.info[u].blob_id for u in unseen]
            for pm in (await fetch.SUMMARIES.get_many(s.store, blobs)).values():
                fetch.check_binary(items, pm)
        if unseen:
            res = await s.store.store_flags(s.account_id, view.mailbox.id, unseen, FlagOp.ADD, ["\\Seen"])
            seen_changed = _apply_flag_updates(view, res.updated)
    missing = await render_fetch(s, view, uids, items, seen_changed)
    if missing:
        raise No("some messages were expunged by another session", code=b"EXPUNGEISSUED")
    return None


def _apply_flag_updates(view: Selected, updated: Iterable[FlagUpdate]) -> set[int]:
    """Takes the new flags and MODSEQ of the messages the view holds into it; returns their UIDs."""
    changed: set[int] = set()
    for upd in updated:
        old = view.info.get(upd.uid)
        if old is not None:
            view.info[upd.uid] = MessageInfo(
                upd.uid, upd.flags, old.internaldate, old.size, upd.modseq, old.blob_id
            )
            changed.add(upd.uid)
    return changed


async def render_fetch(
    s: Session, view: Selected, uids: list[int], items: list[fetch.Item], seen_changed: set[int]
) -> int:
    """Write ``* n FETCH (...)`` for each UID; returns how many could not be rendered (files gone)."""
    need_summary = any(i.needs_summary for i in items)
    need_data = any(i.needs_data for i in items)
    has_flags = any(i.kind == "FLAGS" for i in items)
    has_modseq = any(i.kind == "MODSEQ" for i in items)
    has_uid = any(i.kind == "UID" for i in items)
    conn = s.conn
    missing = 0
    batch = 500 if need_data else 5000
    for start in range(0, len(uids), batch):
        chunk = uids[start : start + batch]
        infos = [view.info[u] for u in chunk]
        summaries = (
            await fetch.SUMMARIES.get_many(s.store, [m.blob_id for m in infos]) if need_summary else {}
        )
        datas = await fetch.read_messages(s.store, [m.blob_id for m in infos]) if need_data else {}
        out: list[bytes] = []
        for m in infos:
            pm = summaries.get(m.blob_id)
            data = datas.get(m.blob_id)
            if (need_summary and pm is None) or (need_data and data is None):
                missing += 1
                continue
            parts: list[bytes] = []
            for item in items:
                kind = item.kind
                if kind == "UID":
                    parts.append(b"UID %d" % m.uid)
                elif kind == "FLAGS":
                    parts.append(b"FLAGS " + s.flags_of(view, m))
                elif kind == "MODSEQ":
                    parts.append(b"MODSEQ (%d)" % m.modseq)
                else:
                    parts.append(fetch.render_item(item, m, pm, data, m.blob_id, s.rev2))
            if m.uid in seen_changed and not has_flags:
                parts.append(b"FLAGS " + s.flags_of(view, m))
            if s.condstore and m.uid in seen_changed and not has_uid:
                parts.insert(0, b"UID %d" % m.uid)  # RFC 7162 3.1: \Seen set implicitly: UID and MODSEQ
            if s.condstore and (has_flags or m.uid in seen_changed) and not has_modseq:
                parts.append(b"MODSEQ (%d)" % m.modseq)
            out.append(b"* %d FETCH (%s)\r\n" % (view.seq(m.uid), b" ".join(parts)))
        conn.write(b"".join(out))
        await conn.maybe_flush()
    return missing


@command("STORE", SELECTED, uid=True, expunge_ok=False)
async def cmd_store(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    view = s.view
    p.sp()
    seqs = p.seq_set()
    p.sp()
    unchangedsince: int | None = None
    if p.take(b"("):
        p.expect(b"UNCHANGEDSINCE ", "UNCHANGEDSINCE")
        unchangedsince = p.number64()
        p.expect(b")")
        p.sp()
        s.enable_condstore()
    op = FlagOp.ADD if p.take(b"+") else FlagOp.REMOVE if p.take(b"-") else FlagOp.SET
    p.expect(b"FLAGS", "FLAGS, +FLAGS or -FLAGS")
    silent = p.take(b".SILENT")
    p.sp()
    flags = _check_flags(p.flag_list(parens_optional=True))
    p.end()
    uids = view.resolve(seqs, uid)
    if view.readonly:
        raise No("the mailbox is read-only", code=b"READ-ONLY")
    live = [u for u in uids if u not in view.gone]
    res = await s.store.store_flags(s.account_id, view.mailbox.id, live, op, flags, unchangedsince)
    known = {f for m in view.info.values() for f in m.flags} if op is not FlagOp.REMOVE else set()
    changed = _apply_flag_updates(view, res.updated)
    modified = set(res.modified)
    if changed and any(not f.startswith("\\") and f not in known for f in flags) and op is not FlagOp.REMOVE:
        # RFC 9051 7.3.5: a keyword new to the mailbox is announced in FLAGS (and PERMANENTFLAGS).
        for line in s._flags_response(view):
            s.untagged(line)
    out: list[bytes] = []
    for u in live:
        if u in modified or u not in view.info:
            continue
        m = view.info[u]
        if silent:
            # RFC 7162 3.1.3: with CONDSTORE on, .SILENT still reports the new MODSEQ of changed messages.
            if s.condstore and u in changed:
                out.append(b"* %d FETCH (UID %d MODSEQ (%d))\r\n" % (view.seq(u), u, m.modseq))
            continue
        items = b"FLAGS " + s.flags_of(view, m)
        if uid or s.condstore:
            # RFC 7162 3.1: once CONDSTORE is on, the FETCH responses a STORE causes carry UID and MODSEQ.
            items = b"UID %d " % u + items
        if s.condstore:
            items += b" MODSEQ (%d)" % m.modseq
        out.append(b"* %d FETCH (%s)\r\n" % (view.seq(u), items))
    s.conn.write(b"".join(out))
    if modified:
        numbers = sorted(modified) if uid else sorted(view.seq(u) for u in modified)
        return (b"MODIFIED " + encode.seq_set(numbers), "conditional STORE failed for some messages")
    return None


async def _copy_or_move(s: Session, p: Parser, uid: bool, move: bool) -> Result:
    view = s.view
    p.sp()
    seqs = p.seq_set()
    p.sp()
    name = s.decode_mailbox(p.astring())
    p.end()
    uids = view.resolve(seqs, uid)
    dest = await s.get_mailbox(name, trycreate=True)
    if move and view.readonly:
        raise No("the mailbox is read-only", code=b"READ-ONLY")
    if not uids:
        return None
    transfer = s.store.move if move else s.store.copy
    res = await _checked(transfer(s.account_id, view.mailbox.id, uids, dest.id))
    if not res.pairs:
        if uids and all(u in view.gone for u in uids):
            raise No("the messages were expunged by another session", code=b"EXPUNGEISSUED")
        return None
    code = b"COPYUID %d %s %s" % (
        res.uidvalidity,
        encode.seq_list(a for a, _ in res.pairs),
        encode.seq_list(b for _, b in res.pairs),
    )
    if len(res.pairs) > 1:
        code = b"COPYUID %d %s %s" % (
            res.uidvalidity,
            encode.seq_set(a for a, _ in res.pairs),
            encode.seq_set(b for _, b in res.pairs),
        )
    if not move:
        return (code, "COPY completed")
    # RFC 6851 4.3: the COPYUID goes in an untagged OK before the expunges.
    s.untagged(b"OK [" + code + b"] moved")
    view.gone.update(a for a, _ in res.pairs if a in view.info)
    view.dirty = True
    await s.sync(True)
    if s.qresync:
        # RFC 7162 3.2.7 as for EXPUNGE: the new HIGHESTMODSEQ once the moved messages are announced gone.
        return (b"HIGHESTMODSEQ %d" % view.modseq, "MOVE completed")
    return (None, "MOVE completed")


@command("COPY", SELECTED, uid=True)
async def cmd_copy(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    return await _copy_or_move(s, p, uid, move=False)


@command("MOVE", SELECTED, uid=True)
async def cmd_move(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    return await _copy_or_move(s, p, uid, move=True)


# --- SEARCH / SORT / THREAD ---------------------------------------------------------------------------------


_RETURN_OPTS = ("MIN", "MAX", "ALL", "COUNT", "SAVE")


def _return_options(p: Parser) -> list[str] | None:
    if not p.take(b"RETURN "):
        return None
    # RFC 4466 2.6: search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"
    p.expect(b"(")
    opts: list[str] = []
    while not p.take(b")"):
        if opts:
            p.sp()
        word = p.atom().upper()
        if word not in _RETURN_OPTS:
            raise Bad(f"unknown SEARCH return option {word}")
        opts.append(word)
    p.sp()
    return opts or ["ALL"]


async def _candidates(s: Session, view: Selected, q: search.Query) -> list[search.Candidate]:
    cands = [search.Candidate(i + 1, view.info[u], u in view.recent) for i, u in enumerate(view.uids)]
    if q.needs_summary:
        summaries = await fetch.SUMMARIES.get_many(s.store, [c.info.blob_id for c in cands])
        for c in cands:
            c.summary = summaries.get(c.info.blob_id)
    if q.needs_data:
        for start in range(0, len(cands), 500):
            chunk = cands[start : start + 500]
            datas = await fetch.read_messages(s.store, [c.info.blob_id for c in chunk])
            for c in chunk:
                c.data = datas.get(c.info.blob_id)
    return cands


async def _search_matches(s: Session, view: Selected, q: search.Query) -> list[search.Candidate]:
    largest = view.uids[-1] if view.uids else 0
    match = search.matcher(q.key, view.exists, largest, view.saved, search.now_utc())
    cands = await _candidates(s, view, q)
    if q.uses_modseq:
        s.enable_condstore()
    return await search.run_async(cands, match, q.needs_data)


@command("SEARCH", SELECTED, uid=True, expunge_ok=False)
async def cmd_search(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    view = s.view
    p.sp()
    ret = _return_options(p)
    try:
        q = search.parse_query(p)
    except No:
        if ret is not None and "SAVE" in ret:
            # RFC 5182 2.1: a SEARCH with SAVE that fails with NO empties the saved result.
            view.saved = []
        raise
    p.end()
    found = await _search_matches(s, view, q)
    numbers = [c.info.uid if uid else c.seq for c in found]
    if ret is None and not s.rev2:
        line = b"SEARCH" + b"".join(b" %d" % n for n in numbers)
        if q.uses_modseq and numbers:
            # RFC 7162 3.1.5: the highest MODSEQ of the messages found
            line += b" (MODSEQ %d)" % max(c.info.modseq for c in found)
        s.untagged(line)
        return None
    opts = ret or ["ALL"]
    # RFC 4731 3.2 / RFC 5182 2.4: with MIN and/or MAX but neither ALL nor COUNT, only the MIN and MAX
    # messages count: they are what SAVE keeps and whose highest mod-sequence MODSEQ gives.
    chosen = found
    if found and "ALL" not in opts and "COUNT" not in opts and ("MIN" in opts or "MAX" in opts):
        chosen = ([found[0]] if "MIN" in opts else []) + ([found[-1]] if "MAX" in opts else [])
    if "SAVE" in opts:
        # RFC 5182 2.1: SAVE keeps the result for "$"; alone it returns nothing.
        view.saved = sorted({c.info.uid for c in chosen})
        opts = [o for o in opts if o != "SAVE"]
        if not opts:
            return None
    # RFC 4731 3.1 / RFC 9051 7.3.4: ESEARCH (TAG "x") [UID] MIN n MAX n ALL set COUNT n
    line = b"ESEARCH (TAG " + string(tag) + b")"
    if uid:
        line += b" UID"
    if numbers:
        if "MIN" in opts:
            line += b" MIN %d" % numbers[0]
        if "MAX" in opts:
            line += b" MAX %d" % numbers[-1]
        if "ALL" in opts:
            line += b" ALL " + encode.seq_set(numbers)
    if "COUNT" in opts:
        line += b" COUNT %d" % len(numbers)
    if q.uses_modseq and chosen:
        line += b" MODSEQ %d" % max(c.info.modseq for c in chosen)
    s.untagged(line)
    return None


async def _entries(s: Session, view: Selected, q: search.Query) -> list[sort.Entry]:
    q.needs_summary = True
    found = await _search_matches(s, view, q)
    return [sort.Entry(c.seq, c.info, c.summary) for c in found]


def _charset_and_query(p: Parser) -> search.Query:
    """What SORT and THREAD end with: a charset (RFC 5256 3: required), then search keys."""
    charset = p.astring().decode("utf-8", "replace").upper()
    p.sp()
    q = search.parse_query(p, allow_charset=False)
    p.end()
    # The whole command is parsed first, so a syntax error is BAD even with an unknown charset.
    if charset not in search.CHARSETS:
        raise No(f"charset {charset} is not supported", code=b"BADCHARSET (UTF-8 US-ASCII)")
    return q


@command("SORT", SELECTED, uid=True, expunge_ok=False)
async def cmd_sort(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    view = s.view
    p.sp()
    criteria = sort.parse_criteria(p)
    p.sp()
    q = _charset_and_query(p)
    entries = sort.sort(await _entries(s, view, q), criteria)
    line = b"SORT" + b"".join(b" %d" % (e.info.uid if uid else e.seq) for e in entries)
    if q.uses_modseq and entries:
        # RFC 7162 3.1.5 / 7: sort-data = "SORT" [1*(SP nz-number) SP search-sort-mod-seq]
        line += b" (MODSEQ %d)" % max(e.info.modseq for e in entries)
    s.untagged(line)
    return None


@command("THREAD", SELECTED, uid=True, expunge_ok=False)
async def cmd_thread(s: Session, tag: bytes, p: Parser, uid: bool) -> Result:
    view = s.view
    p.sp()
    algorithm = p.atom().upper()
    if algorithm != "REFERENCES":
        raise Bad(f"unknown threading algorithm {algorithm}")
    p.sp()
    q = _charset_and_query(p)
    roots = sort.thread_references(await _entries(s, view, q))
    s.untagged(b"THREAD " + sort.render_threads(roots, uid) if roots else b"THREAD")
    return None


def now() -> datetime:
    return datetime.now(UTC)
