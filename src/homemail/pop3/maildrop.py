"""The maildrop: a POP3 session's view of the account's INBOX, and what QUIT does to it.

This is the policy half of POP3 (the engine is :mod:`homemail.pop3.server`): which messages a session sees,
how they are numbered and named (UIDL), what DELE, RSET and RETR leave to do, and the one store transaction
each of those becomes at QUIT. It knows nothing of sockets, so it is tested with a store alone.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from homemail.pop3.errors import SYS_TEMP, POP3Error
from homemail.store import FlagOp, MessageInfo, Store, StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    """One message as numbered in this session."""

    number: int  # 1-based, fixed for the session (RFC 1939 5)
    uid: int
    size: int  # octets with CRLF line ends: the stored file's size (RFC 1939 11)
    blob_id: str


class MaildropLocks:
    """The maildrops open in this process (RFC 1939 8: exclusive access), by account id."""

    def __init__(self) -> None:
        self._held: set[int] = set()

    def acquire(self, account_id: int) -> bool:
        if account_id in self._held:
            return False
        self._held.add(account_id)
        return True

    def release(self, account_id: int) -> None:
        self._held.discard(account_id)

    def held(self, account_id: int) -> bool:
        return account_id in self._held


def uidl(uidvalidity: int, uid: int) -> str:
    """RFC 1939 7: a unique-id of 1 to 70 characters in 0x21..0x7E that never changes for the message.

    UIDVALIDITY.UID does not: a UID is never reused within a UIDVALIDITY, and the pair names the message for
    as long as it is in INBOX, whichever protocol looks at it.
    """
    return f"{uidvalidity}.{uid}"


class Maildrop:
    """The snapshot of INBOX taken at login, with this session's DELE and RETR marks."""

    def __init__(
        self, store: Store, account_id: int, mailbox_id: int, uidvalidity: int, infos: Sequence[MessageInfo]
    ) -> None:
        self.store = store
        self.account_id = account_id
        self.mailbox_id = mailbox_id
        self.uidvalidity = uidvalidity
        self.entries = [Entry(i + 1, m.uid, m.size, m.blob_id) for i, m in enumerate(infos)]
        self._seen = {m.uid for m in infos if "\\Seen" in m.flags}
        self.deleted: set[int] = set()  # message numbers
        self.retrieved: set[int] = set()  # message numbers RETR'd, to be marked \Seen at QUIT

    @classmethod
    async def open(cls, store: Store, account_id: int) -> Maildrop:
        mailbox = await store.get_mailbox(account_id, "INBOX")
        if mailbox is None:
            raise POP3Error("The account has no INBOX", SYS_TEMP)
        infos = await store.messages(account_id, mailbox.id)
        return cls(store, account_id, mailbox.id, mailbox.uidvalidity, infos)

    # --- what the TRANSACTION state shows ---

    def visible(self) -> list[Entry]:
        """The messages not marked deleted (RFC 1939 5: those are not listed or counted)."""
        return [e for e in self.entries if e.number not in self.deleted]

    def stat(self) -> tuple[int, int]:
        shown = self.visible()
        return len(shown), sum(e.size for e in shown)

    def get(self, arg: str) -> Entry:
        """The message numbered ``arg``; POP3Error when it is not a number, does not exist or is deleted."""
        # ASCII digits only: str.isdigit() also takes "²" or "١", which int() refuses or reads.
        if not (arg.isascii() and arg.isdigit()) or len(arg) > 10:
            raise POP3Error(f"Invalid message number: {arg[:20]!r}" if arg else "Message number required")
        n = int(arg)
        if not 1 <= n <= len(self.entries):
            count = len(self.entries)
            raise POP3Error(
                f"No such message: {n} (the maildrop has {count} message{'s' if count != 1 else ''})"
            )
        if n in self.deleted:
            raise POP3Error(f"Message {n} is already deleted")
        return self.entries[n - 1]

    def uidl(self, entry: Entry) -> str:
        return uidl(self.uidvalidity, entry.uid)

    # --- marks ---

    def delete(self, entry: Entry) -> None:
        self.deleted.add(entry.number)

    def retrieved_whole(self, entry: Entry) -> None:
        self.retrieved.add(entry.number)

    def reset(self) -> None:
        """RSET (RFC 1939 5): unmark the deleted messages; the \\Seen marks of RETR are forgotten too."""
        self.deleted.clear()
        self.retrieved.clear()

    # --- message data ---

    async def open_message(self, entry: Entry) -> BinaryIO:
        """The message file, opened in a worker thread. An open file stays readable if the message is
        expunged meanwhile. POP3Error when it is gone already."""
        path = self.store.blob_path(entry.blob_id)
        try:
            return await asyncio.to_thread(_open, path)
        except FileNotFoundError:
            pass
        # Committed by another process but not yet moved into place, or expunged over IMAP.
        try:
            data = await self.store.read_blob(entry.blob_id)
        except (FileNotFoundError, StoreError):
            raise POP3Error(f"Message {entry.number} was removed by another client") from None
        return io.BytesIO(data)

    # --- UPDATE state ---

    async def commit(self) -> int:
        """RFC 1939 6: remove the messages marked deleted and mark the retrieved ones \\Seen, durably.
        Returns how many were removed (messages expunged by another client meanwhile do not count)."""
        seen = [self.entries[n - 1].uid for n in sorted(self.retrieved - self.deleted)]
        seen = [uid for uid in seen if uid not in self._seen]
        doomed = [self.entries[n - 1].uid for n in sorted(self.deleted)]
        try:
            if seen:
                await self.store.store_flags(self.account_id, self.mailbox_id, seen, FlagOp.ADD, ["\\Seen"])
            removed = (
                await self.store.remove_messages(self.account_id, self.mailbox_id, doomed) if doomed else []
            )
        except StoreError as e:
            log.error("pop3: update of account %d failed: %s", self.account_id, e)
            raise POP3Error(
                "Some deleted messages were not removed; try again", SYS_TEMP, close=True
            ) from None
        return len(removed)


def _open(path: str) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY)
    return os.fdopen(fd, "rb")
