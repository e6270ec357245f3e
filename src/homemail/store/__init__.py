"""The store is in charge of all persistent state: domains, accounts, aliases, mailboxes, messages and flags,
the outbound queue and DKIM keys.

It is the only seam between the protocols and disk: SMTP, IMAP, POP3 and the CLI call the :class:`Store`
interface and never touch SQL or files. The embedded backend is :mod:`homemail.store.sqlite`.

Rules every backend keeps (the protocols rely on them):
- A coroutine that changes messages returns only once the change is durable (message file and database rows
  fsync'd). Deliveries that arrive together commit together (group commit).
- A message file is written once and never rewritten; copies share it. A crash leaves no partial message visible.
- UIDs grow strictly within a mailbox and are never reused within one UIDVALIDITY (RFC 3501 2.3.1.1).
- Every change to a mailbox's messages (new, flags, expunge) takes a new MODSEQ, greater than any before in that
  mailbox (RFC 7162 3.1); expunged UIDs are remembered with their MODSEQ for QRESYNC VANISHED.
- Every method that takes a mailbox or message takes the account too and refuses anything of another account.
- Listeners registered with :meth:`Store.watch` are called (on the event loop) after a change is committed; they
  are hints to look again, the database is the truth.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homemail.message import ParsedMessage


class StoreError(Exception):
    """Base of the errors the store raises; the text is fit for a user."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Invalid(StoreError):
    pass


# RFC 6154 special-use attributes of the folders every new account gets, in LIST order.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Archive", "\\Archive"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
)

# IMAP system flags (RFC 3501 2.3.2). \Recent is session state, not stored with the message.
SYSTEM_FLAGS: tuple[str, ...] = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
HIERARCHY_DELIMITER = "/"


class FlagOp(enum.Enum):
    SET = "set"
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class Domain:
    id: int
    name: str


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str  # local@domain, lower-case domain; the login name
    password_hash: str = field(default="", repr=False)  # argon2id (PHC string)
    scram_sha256: str = field(default="", repr=False)  # SCRAM verifier, see homemail.auth


@dataclass(frozen=True, slots=True)
class Alias:
    source: str  # local@domain, or @domain for a catch-all
    target: str


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str  # Unicode, hierarchy separated by HIERARCHY_DELIMITER; "INBOX" is always spelled so
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None  # RFC 6154 attribute such as "\\Sent"
    subscribed: bool


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    messages: int
    unseen: int
    deleted: int
    size: int
    recent: int  # messages not yet claimed by a session (see Store.claim_recent)
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    first_unseen_uid: int | None


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """A message's per-mailbox state. ``flags`` holds system flags and keywords, as IMAP spells them."""

    uid: int
    flags: frozenset[str]
    internaldate: datetime  # timezone-aware
    size: int
    modseq: int
    blob_id: str


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in a mailbox after a given MODSEQ."""

    highestmodseq: int
    changed: list[MessageInfo]  # new messages and messages whose flags changed, by UID
    expunged: list[int]  # UIDs expunged, ascending


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """Where one copy of a delivered message goes: an account's mailbox, by name or special-use."""

    account_id: int
    mailbox: str = "INBOX"  # a name, or a special-use attribute such as "\\Junk"
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Recipient:
    """What a recipient address resolves to: local accounts and addresses elsewhere (alias targets)."""

    accounts: tuple[Account, ...]
    external: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    uid: int
    flags: frozenset[str]
    modseq: int


@dataclass(frozen=True, slots=True)
class StoreResult:
    updated: list[FlagUpdate]
    modified: list[int]  # UIDs refused by UNCHANGEDSINCE (RFC 7162 3.1.3)


@dataclass(frozen=True, slots=True)
class CopyResult:
    uidvalidity: int
    pairs: list[tuple[int, int]]  # (source uid, destination uid), ascending by source uid


@dataclass(frozen=True, slots=True)
class ImportedMessage:
    """A message brought in by ``homemail import``: one message file, a copy in each of ``mailbox_ids``."""

    data: bytes  # CRLF line endings
    mailbox_ids: tuple[int, ...]
    flags: frozenset[str] = frozenset()
    internaldate: datetime | None = None
    key: str = ""  # names the message within its source; "" records nothing


@dataclass(frozen=True, slots=True)
class QueueRecipient:
    """A recipient handed to the outbound queue, with its DSN parameters (RFC 3461 4.1, 4.2)."""

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    id: int
    message_id: int
    address: str
    notify: tuple[str, ...] | None
    orcpt: str | None
    state: str  # "queued", "sent", "failed", "bounce" (a failure DSN was asked for by the administrator)
    attempts: int
    next_attempt: float  # Unix time
    last_error: str
    remote: str
    delay_notified: bool


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    sender: str  # "" for the null reverse-path
    blob_id: str
    size: int
    created: float
    account_id: int | None
    envid: str | None
    ret: str | None
    smtputf8: bool
    body8bit: bool
    recipients: tuple[QueuedRecipient, ...]


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """The outcome of an attempt for one queued recipient."""

    id: int
    state: str  # "queued" (try again at next_attempt), "sent" or "failed"
    next_attempt: float = 0.0
    last_error: str = ""
    remote: str = ""
    attempted: bool = True  # counts as an attempt
    delay_notified: bool | None = None  # set when a delay DSN went out
    min_attempts: int = 0  # raise attempts to at least this (a route's after_failures, reached at once)


@dataclass(frozen=True, slots=True)
class DKIMKey:
    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"
    private_key: str = field(repr=False)  # PKCS#8 PEM
    active: bool = True
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class GreylistEntry:
    """One greylisting record (see homemail.mailauth.greylist for what the keys mean)."""

    key: str
    first_seen: float  # Unix time
    last_seen: float
    passes: int = 0  # accepted deliveries; 0 while a triplet waits for its retry


@dataclass(slots=True)
class WarmupState:
    """One provider's day in the IP warm-up (homemail.delivery.warmup): its cap and what was sent against it."""

    provider: str
    started: str  # the day (ISO date, UTC) mail first went to the provider
    day: str  # the day the counters are for
    cap: float  # messages allowed that day
    used: int = 0  # recipients let through (attempted) that day
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    throttled: int = 0  # rate-limit answers
    braked: bool = False  # no more that day; the cap does not grow the next
    note: str = ""  # why the last brake
    updated: float = 0.0


Listener = Callable[[int], None]  # called with a mailbox id


class Store(abc.ABC):
    """The interface every backend implements. All methods are coroutines unless noted."""

    # --- life cycle ---
    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema, recover from a crash, start background workers."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # --- domains, accounts, aliases ---
    @abc.abstractmethod
    async def add_domain(self, name: str) -> Domain: ...
    @abc.abstractmethod
    async def remove_domain(self, name: str) -> None: ...
    @abc.abstractmethod
    async def list_domains(self) -> list[Domain]: ...
    @abc.abstractmethod
    async def is_local_domain(self, name: str) -> bool: ...
    @abc.abstractmethod
    async def add_account(self, address: str, password_hash: str, scram_sha256: str = "") -> Account:
        """Create the account and its default mailboxes (DEFAULT_MAILBOXES). Its domain must exist."""

    @abc.abstractmethod
    async def set_password(self, address: str, password_hash: str, scram_sha256: str = "") -> None: ...
    @abc.abstractmethod
    async def remove_account(self, address: str) -> None: ...
    @abc.abstractmethod
    async def get_account(self, address: str) -> Account | None: ...
    @abc.abstractmethod
    async def get_account_by_id(self, account_id: int) -> Account | None: ...
    @abc.abstractmethod
    async def list_accounts(self, domain: str | None = None) -> list[Account]: ...
    @abc.abstractmethod
    async def add_alias(self, source: str, targets: Sequence[str]) -> None: ...
    @abc.abstractmethod
    async def remove_alias(self, source: str, target: str | None = None) -> None: ...
    @abc.abstractmethod
    async def list_aliases(self) -> list[Alias]: ...
    @abc.abstractmethod
    async def resolve(self, address: str) -> Recipient | None:
        """Resolve a recipient: account, ``user+tag``, alias (recursively), catch-all ``@domain``.

        None when the domain is local but nothing matches; Recipient((), ()) is never returned.
        """

    # --- mailboxes ---
    @abc.abstractmethod
    async def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    @abc.abstractmethod
    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        """By name ("INBOX" in any case is the inbox) or, when ``name`` starts with a backslash, special-use."""

    @abc.abstractmethod
    async def create_mailbox(self, account_id: int, name: str, special_use: str | None = None) -> Mailbox: ...
    @abc.abstractmethod
    async def delete_mailbox(self, account_id: int, name: str) -> None:
        """Delete the mailbox and its messages (not its children). INBOX cannot be deleted."""

    @abc.abstractmethod
    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """Rename with its children (RFC 3501 6.3.5); renaming INBOX moves its messages to a new mailbox."""

    @abc.abstractmethod
    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None: ...
    @abc.abstractmethod
    async def list_subscriptions(self, account_id: int) -> list[str]: ...
    @abc.abstractmethod
    async def mailbox_status(self, account_id: int, mailbox_id: int) -> MailboxStatus: ...
    @abc.abstractmethod
    async def mailbox_keywords(self, account_id: int, mailbox_id: int) -> list[str]:
        """Keywords ever used in the mailbox (for the IMAP FLAGS response)."""

    # --- messages ---
    @abc.abstractmethod
    async def deliver(
        self, data: bytes, targets: Sequence[DeliveryTarget], internaldate: datetime | None = None
    ) -> list[tuple[int, int]]:
        """Store one message (CRLF line endings) in each target's mailbox, durably. Returns (mailbox id, uid)."""

    @abc.abstractmethod
    async def append(
        self,
        account_id: int,
        mailbox_id: int,
        data: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime | None = None,
    ) -> tuple[int, int]:
        """IMAP APPEND: returns (uidvalidity, uid)."""

    @abc.abstractmethod
    async def list_uids(self, account_id: int, mailbox_id: int) -> list[int]: ...
    @abc.abstractmethod
    async def messages(
        self, account_id: int, mailbox_id: int, uids: Sequence[int] | None = None
    ) -> list[MessageInfo]:
        """Per-mailbox state of the given UIDs (all when None), ascending by UID; missing UIDs are skipped."""

    @abc.abstractmethod
    async def parsed(self, blob_ids: Sequence[str]) -> dict[str, ParsedMessage]:
        """The summary parsed at delivery, by blob id."""

    @abc.abstractmethod
    async def read_blob(self, blob_id: str) -> bytes: ...
    @abc.abstractmethod
    def blob_path(self, blob_id: str) -> str:
        """Path of the message file, for readers that stream or mmap it (not a coroutine)."""

    @abc.abstractmethod
    async def changes(self, account_id: int, mailbox_id: int, since_modseq: int) -> Changes: ...
    @abc.abstractmethod
    async def claim_recent(self, account_id: int, mailbox_id: int) -> int:
        """Take the \\Recent messages (RFC 3501 2.3.2): returns the lowest UID that is recent for the caller;
        UIDs from there up to the mailbox's uidnext are recent for the caller and for no later caller."""

    @abc.abstractmethod
    async def store_flags(
        self,
        account_id: int,
        mailbox_id: int,
        uids: Sequence[int],
        op: FlagOp,
        flags: Iterable[str],
        unchangedsince: int | None = None,
    ) -> StoreResult:
        """Change flags. ``updated`` lists every message whose flags changed (with the new MODSEQ)."""

    @abc.abstractmethod
    async def copy(
        self, account_id: int, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int
    ) -> CopyResult: ...
    @abc.abstractmethod
    async def move(
        self, account_id: int, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int
    ) -> CopyResult:
        """Copy then expunge the sources, atomically (RFC 6851)."""

    @abc.abstractmethod
    async def expunge(self, account_id: int, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove messages flagged \\Deleted (only among ``uids`` when given). Returns the UIDs removed."""

    @abc.abstractmethod
    async def remove_messages(self, account_id: int, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """Remove the messages whatever their flags (POP3 DELE at QUIT). Returns the UIDs removed."""

    # --- importing ---
    @abc.abstractmethod
    async def import_messages(
        self, account_id: int, source: str, messages: Sequence[ImportedMessage]
    ) -> list[list[tuple[int, int]] | None]:
        """Store a batch of messages in one durable commit, and record each message's key under ``source`` in
        that same commit: an import interrupted and run again copies nothing twice. A message whose key is
        recorded already is skipped. Returns, per message, the (mailbox id, uid) of its copies, or None when
        skipped. Raises Invalid (and stores nothing) when a message cannot be parsed or a mailbox is not the
        account's."""

    @abc.abstractmethod
    async def imported_keys(self, account_id: int, source: str) -> set[str]:
        """The keys recorded by :meth:`import_messages` for ``source``."""

    # --- the outbound queue ---
    # Rules: a queued message holds one reference to its blob until every recipient is sent or failed; a
    # recipient's success is committed right after the remote's reply, so a restart never sends it twice.
    @abc.abstractmethod
    async def enqueue(
        self,
        data: bytes,
        sender: str,
        recipients: Sequence[QueueRecipient],
        local_targets: Sequence[DeliveryTarget] = (),
        account_id: int | None = None,
        envid: str | None = None,
        ret: str | None = None,
        smtputf8: bool = False,
        body8bit: bool = False,
    ) -> tuple[int, list[tuple[int, int]]]:
        """Queue the message for ``recipients`` and deliver it to ``local_targets``, in one durable commit with
        one message file. Returns (queue id, 0 without recipients; (mailbox id, uid) of the local copies)."""

    @abc.abstractmethod
    async def queue_due(self, now: float, limit: int, exclude: Iterable[int] = ()) -> list[QueuedMessage]:
        """Messages with recipients due (state queued or bounce, next_attempt <= now), each with only those
        recipients, oldest first. Recipient ids in ``exclude`` (attempts in progress) are left out."""

    @abc.abstractmethod
    async def queue_next_attempt(self) -> float | None:
        """The earliest next_attempt of a waiting recipient (None: the queue is empty)."""

    @abc.abstractmethod
    async def queue_update(self, updates: Sequence[RecipientUpdate]) -> None:
        """Record attempt outcomes in one commit; a message whose recipients are all done leaves the queue."""

    @abc.abstractmethod
    async def queue_list(self) -> list[QueuedMessage]:
        """Every queued message with all its recipients."""

    @abc.abstractmethod
    async def queue_get(self, message_id: int) -> QueuedMessage | None: ...
    @abc.abstractmethod
    async def queue_reschedule(self, message_id: int | None, when: float) -> int:
        """Move waiting recipients (of one message, or all) to ``when``. Returns how many."""

    @abc.abstractmethod
    async def queue_bounce(self, message_id: int, reason: str) -> int:
        """Mark the waiting recipients for a failure DSN at the worker's next pass. Returns how many."""

    @abc.abstractmethod
    async def queue_delete(self, message_id: int) -> None:
        """Drop the message from the queue without any notice."""

    # --- DKIM keys ---
    @abc.abstractmethod
    async def dkim_keys(self, domain: str | None = None) -> list[DKIMKey]:
        """Keys of a domain (all when None), newest first."""

    @abc.abstractmethod
    async def add_dkim_keys(self, keys: Sequence[DKIMKey], retire_active: bool = False) -> None:
        """Add keys (all active); with ``retire_active`` the domain's keys active before stop signing."""

    @abc.abstractmethod
    async def remove_dkim_key(self, domain: str, selector: str) -> None: ...

    # --- greylisting ---
    @abc.abstractmethod
    async def greylist_get(self, keys: Sequence[str]) -> dict[str, GreylistEntry]:
        """The entries that exist among ``keys``."""

    @abc.abstractmethod
    async def greylist_put(self, entries: Sequence[GreylistEntry]) -> None:
        """Insert or replace entries."""

    @abc.abstractmethod
    async def greylist_expire(self, waiting_before: float, passed_before: float) -> int:
        """Drop entries still waiting (passes 0) last seen before ``waiting_before`` and the others last seen
        before ``passed_before``. Returns how many went."""

    # --- IP warm-up ---
    @abc.abstractmethod
    async def warmup_states(self) -> list[WarmupState]:
        """Every provider's warm-up state, by provider name."""

    @abc.abstractmethod
    async def warmup_put(self, states: Sequence[WarmupState]) -> None:
        """Insert or replace providers' states."""

    # --- change notification (not coroutines) ---
    @abc.abstractmethod
    def watch(self, mailbox_id: int, listener: Listener) -> Callable[[], None]:
        """Call ``listener(mailbox_id)`` after each committed change to the mailbox. Returns an unwatch function."""
