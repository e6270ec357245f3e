"""The SMTP client side of delivery: one connection to one remote host, its TLS, AUTH and mail transactions,
and a pool that keeps connections open for the next message to the same host.

aiosmtplib does the wire protocol; this module decides what is sent and how each reply counts. MAIL and RCPT go
through ``execute_command`` so the exact path and parameters are ours (the null reverse-path, DSN parameters of
RFC 3461, SMTPUTF8 of RFC 6531).

Rules:
- TLS modes: ``opportunistic`` (STARTTLS when offered, certificate not checked: RFC 7435), ``verify`` (STARTTLS
  required, certificate valid for the host name: MTA-STS enforce, RFC 8461 4.2), ``starttls`` and ``implicit``
  (relays: TLS required and verified, then AUTH required).
- A reply to MAIL applies to every recipient; a reply to RCPT to its recipient; the reply to DATA to every
  recipient RCPT accepted. A connection lost mid-transaction is a temporary failure for whoever has no answer yet.
- A connection goes back to the pool only after a completed transaction and a successful RSET-free state; it is
  closed after ``idle_close`` seconds unused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

log = logging.getLogger(__name__)


class ConnectFailed(Exception):
    """No usable session with this host (connect, greeting, EHLO, TLS or AUTH failed): try the next one.

    ``permanent`` is set when the host answered with a 5xx that is about us or the whole session."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


TargetKey = tuple[str, str, int, str, str | None, str | None, Path | None]


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to connect."""

    host: str  # the name (MX host or relay), for TLS verification and logs
    ip: str
    port: int
    tls: str  # "opportunistic", "verify", "starttls", "implicit"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: Path | None = None

    @property
    def key(self) -> TargetKey:
        """What a pooled connection must match to be reused: everything that decided how it was opened (two
        relays on one host with other credentials or another CA do not share connections)."""
        return (self.host, self.ip, self.port, self.tls, self.username, self.password, self.cafile)


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str
    # The host refused the whole session (a 5xx greeting or EHLO reply), before any transaction: code and text
    # are then our summary of the attempt (see homemail.delivery.reputation).
    session_refused: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass(slots=True)
class Message:
    sender: str
    data: bytes  # CRLF line endings
    smtputf8: bool = False
    body8bit: bool = False
    envid: str | None = None
    ret: str | None = None


class Connection:
    def __init__(self, target: Target, hostname: str, timeout: float, source: str | None) -> None:
        self.target = target
        self.hostname = hostname
        self.timeout = timeout
        self.source = source
        self.smtp: aiosmtplib.SMTP | None = None
        self.last_used = time.monotonic()
        self.tls_info = ""

    def _context(self, verify: bool) -> ssl.SSLContext:
        if verify:
            ctx = ssl.create_default_context(cafile=str(self.target.cafile) if self.target.cafile else None)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def _session(self, connect_timeout: float, implicit: bool, verify: bool) -> aiosmtplib.SMTP:
        """A connected session up to the greeting. We make the socket ourselves so that we connect to the chosen
        address (and from the configured source) while TLS checks the certificate against the host's name."""
        t = self.target
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in t.ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if self.source and (":" in self.source) == (family == socket.AF_INET6):
                sock.bind((self.source, 0))
            await asyncio.wait_for(loop.sock_connect(sock, (t.ip, t.port)), connect_timeout)
        except BaseException:
            sock.close()
            raise
        smtp = aiosmtplib.SMTP(
            hostname=t.host,
            sock=sock,
            local_hostname=self.hostname,
            timeout=self.timeout,
            use_tls=implicit,
            start_tls=False,
            tls_context=self._context(verify) if implicit else None,
        )
        try:
            await smtp.connect(timeout=connect_timeout)
        except BaseException:
            sock.close()
            raise
        return smtp

    async def open(self, connect_timeout: float) -> None:
        t = self.target
        implicit = t.tls == "implicit"
        verify = t.tls in ("verify", "starttls", "implicit")
        smtp: aiosmtplib.SMTP | None = None
        try:
            smtp = await self._session(connect_timeout, implicit, verify)
            await smtp.ehlo()
            if not implicit:
                if smtp.supports_extension("starttls"):
                    try:
                        await smtp.starttls(tls_context=self._context(verify))
                    except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as e:
                        if verify:
                            raise ConnectFailed(f"TLS with {t.host} failed: {e}") from None
                        # Opportunistic (RFC 7435): a failed handshake leaves the session unusable; start again
                        # without TLS rather than not deliver.
                        log.info("delivery: STARTTLS with %s [%s] failed (%s); plaintext", t.host, t.ip, e)
                        smtp.close()
                        smtp = await self._session(connect_timeout, False, False)
                    await smtp.ehlo()
                elif verify:
                    raise ConnectFailed(f"{t.host} does not offer STARTTLS, which is required")
            if t.username is not None:
                if not smtp.supports_extension("auth"):
                    raise ConnectFailed(f"{t.host} does not offer AUTH, which is required")
                # One mechanism, one try: aiosmtplib's login() would go on to the next mechanism after a 535, so
                # a wrong password counted as two or three failures at the relay (and its lockout or penalty).
                offered = smtp.server_auth_methods
                if "plain" in offered:
                    authenticate = smtp.auth_plain
                elif "login" in offered:
                    authenticate = smtp.auth_login
                else:
                    raise ConnectFailed(
                        f"{t.host} offers no AUTH mechanism homemail uses (PLAIN, LOGIN): {' '.join(offered)}"
                    )
                try:
                    await authenticate(t.username, t.password or "")
                except aiosmtplib.SMTPAuthenticationError as e:
                    raise ConnectFailed(
                        f"{t.host} refused our login: {e.code} {e.message}", e.code >= 500
                    ) from None
        except BaseException as e:
            if smtp is not None:
                smtp.close()
            if isinstance(e, ConnectFailed):
                raise
            if isinstance(e, aiosmtplib.SMTPResponseException):
                raise ConnectFailed(f"{t.host} [{t.ip}] said {e.code} {e.message}", e.code >= 500) from None
            if isinstance(e, aiosmtplib.SMTPException | OSError | TimeoutError | ssl.SSLError):
                raise ConnectFailed(
                    f"cannot talk to {t.host} [{t.ip}]:{t.port}: {e or type(e).__name__}"
                ) from None
            raise
        self.smtp = smtp
        sslobj = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
        if sslobj is not None:
            self.tls_info = f"{sslobj.version()} {sslobj.cipher()[0]}"

    @property
    def alive(self) -> bool:
        return self.smtp is not None and self.smtp.is_connected

    def supports(self, extension: str) -> bool:
        return self.smtp is not None and self.smtp.supports_extension(extension)

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> dict[str, Reply]:
        """One transaction. Returns each recipient's final reply (2xx: accepted by the remote)."""
        smtp = self.smtp
        assert smtp is not None
        self.last_used = time.monotonic()
        results: dict[str, Reply] = {}
        pending = [r.address for r in recipients]
        try:
            if message.smtputf8 and not smtp.supports_extension("smtputf8"):
                # RFC 6531 3.7.5: no downgrade here; the remote cannot take this message.
                reply = Reply(553, "5.6.7 The remote server does not support SMTPUTF8")
                return {r.address: reply for r in recipients}
            dsn = smtp.supports_extension("dsn")
            options = []
            if smtp.supports_extension("size"):
                options.append(f"SIZE={len(message.data)}")
            if message.body8bit and smtp.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
            if message.smtputf8:
                options.append("SMTPUTF8")
            if dsn and message.ret:
                options.append(f"RET={message.ret}")
            if dsn and message.envid:
                options.append(f"ENVID={message.envid}")
            enc = "utf-8" if message.smtputf8 else "ascii"
            response = await smtp.execute_command(
                b"MAIL", b"FROM:<" + message.sender.encode(enc) + b">", *(o.encode(enc) for o in options)
            )
            if response.code != 250:
                reply = Reply(response.code, response.message)
                await self._rset()
                return {r.address: reply for r in recipients}
            accepted = []
            for r in recipients:
                rcpt_options = []
                if dsn and r.notify:
                    rcpt_options.append("NOTIFY=" + ",".join(r.notify))
                if dsn and r.orcpt:
                    rcpt_options.append("ORCPT=" + r.orcpt)
                response = await smtp.execute_command(
                    b"RCPT", b"TO:<" + r.address.encode(enc) + b">", *(o.encode(enc) for o in rcpt_options)
                )
                results[r.address] = Reply(response.code, response.message)
                pending.remove(r.address)
                if response.code in (250, 251):
                    accepted.append(r.address)
            if not accepted:
                await self._rset()
                return results
            pending = list(accepted)
            try:
                response = await smtp.data(message.data)
                reply = Reply(response.code, response.message)
            except aiosmtplib.SMTPResponseException as e:
                reply = Reply(e.code, e.message)
            for address in accepted:
                results[address] = reply
            pending = []
            self.last_used = time.monotonic()
            return results
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            lost = Reply(451, f"4.4.2 Connection with {self.target.host} lost: {e or type(e).__name__}")
            for address in pending:
                results[address] = lost
            self.close()
            return results

    async def _rset(self) -> None:
        try:
            assert self.smtp is not None
            await self.smtp.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.close()

    def close(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(Exception):
                self.smtp.close()
            self.smtp = None

    async def quit(self) -> None:
        if self.smtp is not None and self.smtp.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.smtp.quit(), 5)
        self.close()


class Pool:
    """Idle connections by target, for the next message to the same host."""

    def __init__(self, idle_close: float) -> None:
        self.idle_close = idle_close
        self._idle: dict[TargetKey, list[Connection]] = {}

    def take(self, target: Target) -> Connection | None:
        conns = self._idle.get(target.key)
        while conns:
            conn = conns.pop()
            if conn.alive and time.monotonic() - conn.last_used < self.idle_close:
                return conn
            conn.close()
        return None

    def give(self, conn: Connection) -> None:
        if conn.alive:
            conn.last_used = time.monotonic()
            self._idle.setdefault(conn.target.key, []).append(conn)

    async def expire(self, everything: bool = False) -> None:
        now = time.monotonic()
        for key, conns in list(self._idle.items()):
            keep = []
            for conn in conns:
                if everything or not conn.alive or now - conn.last_used >= self.idle_close:
                    await conn.quit()
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
