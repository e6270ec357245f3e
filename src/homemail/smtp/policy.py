"""The seam between the SMTP protocol engine and the decisions: the envelope, and the hooks a policy implements.

The session (:mod:`homemail.smtp.server`) parses commands, keeps the state machine and answers; everything about
*what* to accept goes through a :class:`Policy`: the MX policy (:mod:`homemail.smtp.inbound`) accepts mail for
local recipients, a submission policy accepts mail from authenticated users for anywhere. A hook refuses by raising
:class:`~homemail.smtp.replies.SMTPError`; returning ``None`` means the engine's default success reply.

Hooks receive the :class:`SessionInfo` (who is talking, over what) and the :class:`Envelope` being built; a policy
may keep its own per-transaction notes in ``envelope.state``. Policies are shared by all sessions of a listener,
so per-session data belongs in ``session.state``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from homemail.smtp.replies import Reply, SMTPError

if TYPE_CHECKING:
    from homemail.server import Services


@dataclass(slots=True)
class RcptTo:
    """One accepted recipient, with its DSN parameters (RFC 3461 4.1, 4.2) kept for the outbound queue."""

    address: str  # normalised local@domain
    notify: tuple[str, ...] | None = None  # ("NEVER",) or a subset of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None  # "addr-type;xtext" as received


@dataclass(slots=True)
class Envelope:
    """One mail transaction: MAIL, its RCPTs, and what the policy learnt about them."""

    sender: str  # normalised; "" is the null reverse-path <>
    id: str = ""  # this transaction's id, for the Received header, logs and the final reply
    size: int | None = None  # SIZE= (RFC 1870), what the client declared
    body: str | None = None  # BODY= 7BIT or 8BITMIME (RFC 6152)
    smtputf8: bool = False  # RFC 6531 3.4
    ret: str | None = None  # RET= FULL or HDRS (RFC 3461 4.3)
    envid: str | None = None  # ENVID= xtext as received (RFC 3461 4.4)
    params: dict[str, str | None] = field(default_factory=dict)  # parameters a policy asked for (AUTH=)
    recipients: list[RcptTo] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # the policy's notes (resolved accounts...)


class SessionInfo(Protocol):
    """What a policy may know and do about the session (implemented by the engine's Session)."""

    services: Services
    mode: str  # "mx", "submission", "submissions"
    session_id: str
    peer_ip: str
    peer_port: int
    helo: str | None
    esmtp: bool
    tls: str  # homemail.tls.describe() of the connection, "" without TLS
    authenticated: str | None  # the account logged in with AUTH (submission), None otherwise
    envelope: Envelope | None  # the mail transaction in progress (RFC 5321 3.3), None between transactions
    state: dict[str, Any]

    def received_header(self, envelope: Envelope) -> bytes: ...
    def input_pending(self) -> bool: ...
    def send(self, reply: Reply) -> None: ...
    async def read_line(self) -> bytes: ...


class Policy:
    """Base policy: accepts the protocol, refuses mail. Subclasses override the hooks they decide on."""

    # MAIL FROM parameters (upper-case keywords) the policy handles beyond those of the engine, e.g. AUTH.
    extra_mail_params: frozenset[str] = frozenset()

    async def connect(self, session: SessionInfo) -> None:
        """A new connection, before the greeting; raise SMTPError (554 or 421) to refuse it."""

    def ehlo_keywords(self, session: SessionInfo) -> list[str]:
        """EHLO keywords the policy adds (e.g. "AUTH PLAIN LOGIN")."""
        return []

    async def helo(self, session: SessionInfo, name: str) -> None:
        """HELO/EHLO with the client's name."""

    async def mail_from(self, session: SessionInfo, envelope: Envelope) -> Reply | None:
        raise SMTPError(550, "5.7.1", "Mail is not accepted here")

    async def rcpt_to(self, session: SessionInfo, envelope: Envelope, rcpt: RcptTo) -> Reply | None:
        raise SMTPError(550, "5.7.1", "Mail is not accepted here")

    async def data(self, session: SessionInfo, envelope: Envelope, message: bytes) -> Reply:
        """The complete message (dot-unstuffed, CRLF line endings, no trace header yet). Return the final reply
        only once the message is durably stored or queued (RFC 5321 6.1)."""
        raise SMTPError(554, "5.7.1", "Mail is not accepted here")

    async def command(self, session: SessionInfo, verb: str, arg: str) -> Reply | None:
        """A command the engine does not know (AUTH for submission). None: the engine says 500 unrecognised."""
        return None

    def close(self, session: SessionInfo) -> None:
        """The connection ended."""
