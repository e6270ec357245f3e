"""The submission policy (RFC 6409): mail from our own users, authenticated, to anywhere.

Rules:
- AUTH (RFC 4954) with PLAIN (RFC 4616), LOGIN and SCRAM-SHA-256 (RFC 5802, RFC 7677). Mechanisms that carry the
  password are offered only over TLS (or from loopback where the config allows it); before that AUTH gets
  ``538 5.7.11`` (RFC 4954 6). Failures are delayed and throttled per IP and per account (:mod:`homemail.auth`).
- Nothing is accepted before AUTH: MAIL gets ``530 5.7.0``.
- The envelope sender and every address in ``From:`` must be the user's own: the account's address (with any
  ``+tag``), or an alias that leads to the account (a catch-all alias gives the whole domain). Otherwise
  ``553 5.7.1``. ``Sender:``, when present, must be the user's too.
- Message fix-ups (RFC 6409 8): ``Date:`` and ``Message-ID:`` are added when missing. Then the message is
  DKIM-signed for the ``From:`` domain with every active key of that domain.
- Local recipients get their copy at once; the others are queued; both in one durable commit before the ``250``.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import os
from typing import TYPE_CHECKING

import scramp

from homemail import addresses
from homemail.auth import scram_auth_info
from homemail.mailauth import dkim
from homemail.message.headers import header_fields, parse_addresses, unfold
from homemail.smtp.policy import Envelope, Policy, RcptTo, SessionInfo
from homemail.smtp.replies import Reply, SMTPError
from homemail.store import Account, DeliveryTarget, QueueRecipient, StoreError

if TYPE_CHECKING:
    from homemail.server import Services

log = logging.getLogger(__name__)

MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
MAX_AUTH_LINE = 12 * 1024  # a SASL response line (base64) of any sane length
_SCRAM = scramp.ScramMechanism("SCRAM-SHA-256")


def _b64decode(text: str) -> bytes:
    if text == "*":
        raise SMTPError(501, "5.0.0", "Authentication cancelled")
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SMTPError(501, "5.5.2", "Invalid base64 in the SASL response") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class SubmissionPolicy(Policy):
    extra_mail_params = frozenset({"AUTH"})  # RFC 4954 5: accepted; we do not relay it further

    def __init__(self, services: Services, mode: str) -> None:
        self.services = services
        self.store = services.store
        self.auth = services.auth
        self.mode = mode

    # --- authentication ---

    def _may_authenticate(self, session: SessionInfo) -> bool:
        return self.auth.plaintext_allowed(bool(session.tls), session.peer_ip)

    def ehlo_keywords(self, session: SessionInfo) -> list[str]:
        if session.authenticated or not self._may_authenticate(session):
            return []
        return ["AUTH " + " ".join(MECHANISMS)]

    async def command(self, session: SessionInfo, verb: str, arg: str) -> Reply | None:
        if verb != "AUTH":
            return None
        if session.helo is None:
            raise SMTPError(503, "5.5.1", "Send EHLO first")
        if session.authenticated:
            raise SMTPError(503, "5.5.1", "Already authenticated")
        if session.envelope is not None:
            raise SMTPError(503, "5.5.1", "AUTH is not allowed during a mail transaction")
        if not self._may_authenticate(session):
            raise SMTPError(538, "5.7.11", "Encryption required for requested authentication mechanism")
        mechanism, _, initial = arg.strip(" ").partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise SMTPError(504, "5.5.4", "Unrecognized authentication type")
        if initial == "":
            initial_response: str | None = None
        else:
            initial_response = initial.strip(" ")
        if mechanism == "PLAIN":
            account, username = await self._plain(session, initial_response)
        elif mechanism == "LOGIN":
            account, username = await self._login(session, initial_response)
        else:
            account, username = await self._scram(session, initial_response)
        if account is None:
            log.info(
                "submission %s %s: authentication failed for %r",
                session.session_id,
                session.peer_ip,
                username,
            )
            raise SMTPError(535, "5.7.8", "Authentication credentials invalid")
        session.authenticated = account.address
        session.state["account"] = account
        log.info(
            "submission %s %s: authenticated as %s", session.session_id, session.peer_ip, account.address
        )
        return Reply(235, "2.7.0", "Authentication successful")

    async def _challenge(self, session: SessionInfo, data: bytes) -> str:
        session.send(Reply(334, "", _b64(data) if data else ""))
        line = await session.read_line()
        if len(line) > MAX_AUTH_LINE:
            raise SMTPError(500, "5.5.6", "Authentication exchange line is too long")
        return line.decode("ascii", "replace").strip()

    def _blocked(self, session: SessionInfo, username: str) -> bool:
        return self.auth.blocked(username, session.peer_ip)

    async def _check(self, session: SessionInfo, username: str, password: str) -> Account | None:
        return await self.auth.login(username, password, session.peer_ip)

    async def _plain(self, session: SessionInfo, initial: str | None) -> tuple[Account | None, str]:
        raw = _b64decode(initial if initial is not None else await self._challenge(session, b""))
        parts = raw.split(b"\0")
        if len(parts) != 3:
            raise SMTPError(501, "5.5.2", "Malformed PLAIN response")
        authzid, authcid, password = (p.decode("utf-8", "replace") for p in parts)
        if authzid and authzid.lower() != authcid.lower():
            raise SMTPError(535, "5.7.8", "Authorization identity must be the authentication identity")
        return await self._check(session, authcid, password), authcid

    async def _login(self, session: SessionInfo, initial: str | None) -> tuple[Account | None, str]:
        user_b64 = initial if initial is not None else await self._challenge(session, b"Username:")
        username = _b64decode(user_b64).decode("utf-8", "replace")
        password = _b64decode(await self._challenge(session, b"Password:")).decode("utf-8", "replace")
        return await self._check(session, username, password), username

    async def _scram(self, session: SessionInfo, initial: str | None) -> tuple[Account | None, str]:
        client_first = _b64decode(initial if initial is not None else await self._challenge(session, b""))
        text = client_first.decode("utf-8", "replace")
        # The username (n=) is needed before scramp asks for it: fetch the account first (async), then hand
        # scramp its verifier from memory.
        username = ""
        for attr in text.split(",")[2:]:
            if attr.startswith("n="):
                username = attr[2:].replace("=2C", ",").replace("=3D", "=")
                break
        account = await self.store.get_account(username) if "@" in username else None
        info = scram_auth_info(account.scram_sha256) if account and account.scram_sha256 else None
        if self._blocked(session, username) or info is None:
            info = (
                os.urandom(16),
                os.urandom(32),
                os.urandom(32),
                4096,
            )  # fail after the exchange, not before
            account = None
        fake = info

        server = _SCRAM.make_server(lambda _user: fake)
        try:
            server.set_client_first(text)
            final = await self._challenge(session, server.get_server_first().encode())
            server.set_client_final(_b64decode(final).decode("utf-8", "replace"))
            server_final = server.get_server_final()
        except scramp.ScramException:
            await self.auth.failed(username, session.peer_ip)
            return None, username
        if account is None:
            await self.auth.failed(username, session.peer_ip)
            return None, username
        # RFC 5802 5: the server's final message proves it knows the verifier; the client answers with an
        # empty line before the 235.
        answer = await self._challenge(session, server_final.encode())
        if answer not in ("", "="):
            raise SMTPError(501, "5.5.2", "Unexpected SCRAM response")
        return account, username

    # --- the transaction ---

    def _account(self, session: SessionInfo) -> Account:
        account = session.state.get("account")
        if not session.authenticated or not isinstance(account, Account):
            raise SMTPError(530, "5.7.0", "Authentication required")
        return account

    async def owns(self, account: Account, address: str) -> bool:
        """Whether the user may send as ``address``."""
        try:
            local, domain = addresses.split(addresses.normalize(address))
        except ValueError:
            return False
        own_local, own_domain = addresses.split(account.address)
        if domain == own_domain and local.split("+", 1)[0].lower() == own_local.lower():
            return True
        resolved = await self.store.resolve(f"{local}@{domain}")
        return resolved is not None and any(a.id == account.id for a in resolved.accounts)

    async def mail_from(self, session: SessionInfo, envelope: Envelope) -> Reply | None:
        account = self._account(session)
        if not envelope.sender or not await self.owns(account, envelope.sender):
            raise SMTPError(553, "5.7.1", f"Sender address <{envelope.sender}> is not yours to send as")
        envelope.state["local"] = {}
        envelope.state["remote"] = []
        return None

    async def rcpt_to(self, session: SessionInfo, envelope: Envelope, rcpt: RcptTo) -> Reply | None:
        self._account(session)
        address = rcpt.address
        if address == "postmaster":
            raise SMTPError(550, "5.1.1", "Give <postmaster> a domain")
        domain = address.rpartition("@")[2]
        if await self.store.is_local_domain(domain):
            resolved = await self.store.resolve(address)
            if resolved is None:
                raise SMTPError(550, "5.1.1", f"No such user here: <{address}>")
            local: dict[int, Account] = envelope.state["local"]
            for acc in resolved.accounts:
                local[acc.id] = acc
            for ext in resolved.external:
                envelope.state["remote"].append(RcptTo(ext))
        else:
            envelope.state["remote"].append(rcpt)
        return None

    async def _check_headers(self, account: Account, message: bytes) -> str:
        """The From: domain, after checking that From: and Sender: are the user's."""
        fields = header_fields(message)
        from_addrs = []
        for name, value in fields:
            lower = name.lower()
            if lower not in ("from", "sender"):
                continue
            for addr in parse_addresses(unfold(value)):
                if addr.mailbox is None or addr.host is None:
                    continue  # group markers
                address = f"{addr.mailbox}@{addr.host}"
                if not await self.owns(account, address):
                    raise SMTPError(553, "5.7.1", f"{name}: <{address}> is not yours to send as")
                if lower == "from":
                    from_addrs.append(address)
        if not from_addrs:
            raise SMTPError(550, "5.6.0", "The message has no From: address")
        return addresses.normalize(from_addrs[0]).rpartition("@")[2]

    async def data(self, session: SessionInfo, envelope: Envelope, message: bytes) -> Reply:
        account = self._account(session)
        from_domain = await self._check_headers(account, message)
        message = self._fix_up(message)
        if self.services.config.delivery.dkim_sign:
            keys = [
                dkim.SigningKey(k.domain, k.selector, k.private_key)
                for k in await self.store.dkim_keys(from_domain)
                if k.active
            ]
            if keys:
                message = dkim.sign(message, keys) + message
        trace = session.received_header(envelope)
        data = trace + message
        local: dict[int, Account] = envelope.state.get("local", {})
        remote: list[RcptTo] = envelope.state.get("remote", [])
        try:
            queue_id, placed = await self.store.enqueue(
                data,
                envelope.sender,
                [QueueRecipient(r.address, r.notify, r.orcpt) for r in remote],
                [DeliveryTarget(account_id) for account_id in local],
                account_id=account.id,
                envid=envelope.envid,
                ret=envelope.ret,
                smtputf8=envelope.smtputf8,
                body8bit=envelope.body == "8BITMIME" or not data.isascii(),
            )
        except StoreError as e:
            log.error("submission %s: storing %s failed: %s", session.session_id, envelope.id, e)
            raise SMTPError(451, "4.3.0", "Temporary failure storing the message; try again later") from None
        if remote:
            worker = self.services.extras.get("queue")
            kick = getattr(worker, "kick", None)
            if callable(kick):
                kick()
        log.info(
            "submission %s: accepted %s from=<%s> by %s local=%d queued=%d (queue id %d)",
            session.session_id,
            envelope.id,
            envelope.sender,
            account.address,
            len(placed),
            len(remote),
            queue_id,
        )
        return Reply(250, "2.0.0", f"Ok: queued as {envelope.id}")

    def _fix_up(self, message: bytes) -> bytes:
        """RFC 6409 8.2, 8.3: add Date: and Message-ID: when the client did not."""
        names = {name.lower() for name, _ in header_fields(message)}
        extra = b""
        if "date" not in names:
            extra += f"Date: {email.utils.formatdate(localtime=True)}\r\n".encode()
        if "message-id" not in names:
            extra += f"Message-ID: <{os.urandom(12).hex()}@{self.services.config.hostname}>\r\n".encode()
        return extra + message

    def close(self, session: SessionInfo) -> None:
        session.state.pop("account", None)
