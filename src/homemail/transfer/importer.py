"""``homemail import``: mail from an mbox file (Gmail Takeout's too), a folder of mbox files, a Maildir++ tree or
a remote IMAP account, into an account's folders with their flags and internal dates.

A source yields batches of :class:`Item` (a message, the folders it goes to, its flags and date, and a key that
names it within the source). The importer creates the folders, skips messages whose key the store's import log
has for this source (brought in by an earlier run), and hands each batch to :meth:`Store.import_messages`: one
commit per batch, the log rows in the same commit, so an import that is interrupted and run again copies nothing
twice. While one batch is being written and committed the next one is read.

Folders are names ("Work/Projects") or special-use attributes ("\\Sent": the account's folder of that use,
whatever its name). A message the source cannot give whole (an empty or headerless mbox entry, an unreadable
file, a FETCH without a body) is reported as broken and skipped; it is not logged, so the next run tries again.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from homemail.store import DEFAULT_MAILBOXES, AlreadyExists, ImportedMessage, Invalid, Store
from homemail.transfer import maildir, mbox

BATCH_SIZE = 500
BATCH_BYTES = 64 * 1024 * 1024


class SourceError(Exception):
    """The source cannot be read (a connection lost, a login refused); the text is fit for the user."""


@dataclass(slots=True)
class Item:
    key: str  # names the message within its source ("" for broken ones)
    where: str  # where it is in the source, for reports
    folders: tuple[str, ...] = ()
    data: bytes = b""  # CRLF line ends
    flags: frozenset[str] = frozenset()
    internaldate: datetime | None = None
    broken: str | None = None  # why the message cannot be imported
    units: int = 1  # progress units it accounts for


@dataclass
class Summary:
    imported: int = 0  # messages
    copies: int = 0  # messages x folders
    skipped: int = 0  # there already (imported by an earlier run)
    broken: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    folders: set[str] = field(default_factory=set)  # the folders that got messages


class Source(abc.ABC):
    name: str  # recorded with each key in the import log
    unit: str = "messages"  # what progress counts: "messages" or "bytes"

    async def open(self) -> None:  # noqa: B027  (optional)
        """Connect, list what there is."""

    async def close(self) -> None:  # noqa: B027  (optional)
        pass

    @abc.abstractmethod
    def total(self) -> int:
        """Progress units in all (after open)."""

    def folders(self) -> list[str]:
        """Folders to create even when they hold nothing (after open)."""
        return []

    def subscriptions(self) -> list[str]:
        """Folders the source has subscribed (after the batches)."""
        return []

    @abc.abstractmethod
    def batches(self, known: set[str], size: int) -> AsyncIterator[list[Item]]:
        """The messages in batches of about ``size``. A message whose key is in ``known`` may come without data."""


Progress = Callable[[int], None]
Report = Callable[[str, str], None]


async def import_mail(
    store: Store,
    address: str,
    source: Source,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    on_broken: Report | None = None,
) -> Summary:
    account = await store.get_account(address)
    if account is None:
        raise LookupError(f"no such user: {address}")
    summary = Summary()
    folders = _Folders(store, account.id)
    known = await store.imported_keys(account.id, source.name)
    for spec in source.folders():
        await folders.resolve(spec)

    def broken(where: str, why: str) -> None:
        summary.broken.append((where, why))
        if on_broken:
            on_broken(where, why)

    async def finish(
        task: asyncio.Task[list[list[tuple[int, int]] | None]], batch: list[Item], units: int
    ) -> None:
        try:
            results = await task
        except Invalid:
            # Something in the batch the store refused: store one by one to tell which.
            results = []
            for item in batch:
                try:
                    results += await store.import_messages(account.id, source.name, [_message(item, folders)])
                except Invalid as e:
                    broken(item.where, str(e))
                    results.append([])
        for placed in results:
            if placed is None:
                summary.skipped += 1
            elif placed:
                summary.imported += 1
                summary.copies += len(placed)
                summary.folders.update(folders.names[mid] for mid, _ in placed)
        if progress:
            progress(units)

    pending: tuple[asyncio.Task[list[list[tuple[int, int]] | None]], list[Item], int] | None = None
    try:
        async for batch in source.batches(known, batch_size):
            todo: list[Item] = []
            units = 0
            for item in batch:
                units += item.units
                if item.broken:
                    broken(item.where, item.broken)
                elif item.key and item.key in known:
                    summary.skipped += 1
                else:
                    if item.key:
                        known.add(item.key)
                    for spec in item.folders:
                        await folders.resolve(spec)
                    todo.append(item)
            if pending:
                await finish(*pending)
                pending = None
            if todo:
                messages = [_message(item, folders) for item in todo]
                task = asyncio.ensure_future(store.import_messages(account.id, source.name, messages))
                pending = (task, todo, units)
            elif progress:
                progress(units)
        if pending:
            await finish(*pending)
            pending = None
    finally:
        if pending:
            # Interrupted: let the batch in flight finish (it is committed or not, never half).
            await asyncio.gather(pending[0], return_exceptions=True)
    for name in source.subscriptions():
        mid = folders.ids.get(name)
        if mid is not None:
            await store.set_subscribed(account.id, folders.names[mid], True)
    return summary


def _message(item: Item, folders: _Folders) -> ImportedMessage:
    ids = tuple(folders.ids[spec] for spec in item.folders)
    return ImportedMessage(item.data, ids, item.flags, item.internaldate, item.key)


class _Folders:
    """Folder names and special-use attributes -> mailbox ids, creating what is missing."""

    def __init__(self, store: Store, account_id: int) -> None:
        self.store = store
        self.account_id = account_id
        self.ids: dict[str, int] = {}
        self.names: dict[int, str] = {}

    async def resolve(self, spec: str) -> int:
        mid = self.ids.get(spec)
        if mid is not None:
            return mid
        mailbox = await self.store.get_mailbox(self.account_id, spec)
        if mailbox is None:
            special_use = None
            name = spec
            if spec.startswith("\\"):
                special_use = spec
                name = next((n for n, use in DEFAULT_MAILBOXES if use == spec), spec[1:])
                mailbox = await self.store.get_mailbox(self.account_id, name)
            if mailbox is None:
                try:
                    mailbox = await self.store.create_mailbox(self.account_id, name, special_use)
                except AlreadyExists:
                    mailbox = await self.store.get_mailbox(self.account_id, name)
                except Invalid as e:
                    raise Invalid(f"cannot make folder {name!r}: {e}") from None
        assert mailbox is not None
        self.ids[spec] = mailbox.id
        self.names[mailbox.id] = mailbox.name
        return mailbox.id


# --- mbox ----------------------------------------------------------------------------------------------------


class MboxSource(Source):
    """One mbox file, or a folder of them (``homemail export --format mbox``: DIR/Work/Projects.mbox is folder
    Work/Projects). In a single file, messages with X-Gmail-Labels (Gmail Takeout) go where their labels say;
    the others, and all of them when ``folder`` is given, to ``folder`` (default INBOX)."""

    unit = "bytes"

    def __init__(self, path: Path, folder: str | None = None) -> None:
        self.path = path.resolve()
        self.name = f"mbox:{self.path}"
        self.folder = mbox.folder_name(folder) if folder else None
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.rglob("*.mbox") if p.is_file())
            if not self.files:
                raise LookupError(f"{path}: no .mbox files in this folder")
        else:
            self.files = [self.path]

    def total(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def folders(self) -> list[str]:
        if self.path.is_dir() and self.folder is None:
            return [self._file_folder(p) for p in self.files]
        return [self.folder or "INBOX"]

    def _file_folder(self, path: Path) -> str:
        rel = path.relative_to(self.path)
        return mbox.folder_name("/".join([*rel.parts[:-1], rel.name[: -len(".mbox")]]))

    async def batches(self, known: set[str], size: int) -> AsyncIterator[list[Item]]:
        single = not self.path.is_dir()
        for path in self.files:
            rel = "" if single else str(path.relative_to(self.path))
            folder = self.folder or ("INBOX" if single else self._file_folder(path))
            gmail = single and self.folder is None
            seen: dict[str, int] = {}
            batch: list[Item] = []
            volume = 0
            for raw in mbox.read_mbox(path):
                item = _mbox_item(raw, rel, folder, gmail, seen)
                batch.append(item)
                volume += len(item.data)
                if len(batch) >= size or volume >= BATCH_BYTES:
                    yield batch
                    batch, volume = [], 0
                    await asyncio.sleep(0)
            if batch:
                yield batch


def _mbox_item(raw: mbox.RawMessage, rel: str, folder: str, gmail: bool, seen: dict[str, int]) -> Item:
    where = f"{rel or 'mbox'} message {raw.number} (byte {raw.offset})"
    data = mbox.unquote(raw.data)
    problem = mbox.looks_like_message(data)
    if problem:
        return Item("", where, broken=problem, units=raw.end - raw.offset)
    digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    n = seen[digest] = seen.get(digest, 0) + 1
    key = f"{rel}:{digest}#{n}"  # identical messages in one file stay distinct
    labels = mbox.gmail_labels(data) if gmail else None
    if labels is not None:
        folders, flags = mbox.gmail_placement(labels)
    else:
        data, flags = mbox.take_flags(data)
        folders = (folder,)
    when = raw.when or mbox.header_date(data)
    return Item(key, where, folders, data, flags, when, units=raw.end - raw.offset)


# --- Maildir -------------------------------------------------------------------------------------------------


class MaildirSource(Source):
    """A Maildir or Maildir++ tree (Dovecot's layout: the root is INBOX, ``.Work.Projects`` is Work/Projects)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.name = f"maildir:{self.root}"
        self._folders = maildir.folders(self.root)
        if not self._folders:
            raise LookupError(f"{root}: not a Maildir (no cur/ or new/, no .Folder directories)")
        self._files = [f for folder in self._folders for f in maildir.files(folder)]

    def total(self) -> int:
        return len(self._files)

    def folders(self) -> list[str]:
        return [f.name for f in self._folders]

    def subscriptions(self) -> list[str]:
        return maildir.subscriptions(self.root)

    async def batches(self, known: set[str], size: int) -> AsyncIterator[list[Item]]:
        for start in range(0, len(self._files), size):
            chunk = self._files[start : start + size]
            yield await asyncio.to_thread(self._read, chunk, known)

    def _read(self, chunk: list[maildir.MaildirFile], known: set[str]) -> list[Item]:
        items = []
        for f in chunk:
            key = f"{f.folder}/{f.unique}"
            where = str(f.path.relative_to(self.root))
            if key in known:
                items.append(Item(key, where))
                continue
            try:
                data, mtime = maildir.read_message(f.path)
            except FileNotFoundError:
                # Moved between new/ and cur/ (or its flags changed) since the listing: look again.
                found = [p for p in f.path.parent.parent.glob(f"*/{f.unique}*") if p.is_file()]
                if not found:
                    items.append(Item("", where, broken="the file went away during the import"))
                    continue
                data, mtime = maildir.read_message(found[0])
            except OSError as e:
                items.append(Item("", where, broken=f"cannot read it: {os.strerror(e.errno or 0) or e}"))
                continue
            problem = mbox.looks_like_message(data)
            if problem:
                items.append(Item("", where, broken=problem))
                continue
            items.append(Item(key, where, (f.folder,), data, f.flags, mtime))
        return items


def open_source(
    spec: str,
    folder: str | None = None,
    password: str | None = None,
    insecure: bool = False,
    cafile: str | None = None,
) -> Source:
    """The source a command-line SOURCE names: an imap:// or imaps:// URL, a Maildir, a folder of .mbox files,
    or an mbox file."""
    if spec.startswith(("imap://", "imaps://")):
        from homemail.transfer.imapsource import IMAPSource

        if password is None:
            raise ValueError("an IMAP source needs a password")
        return IMAPSource(spec, password, insecure=insecure, cafile=cafile)
    path = Path(spec)
    if not path.exists():
        raise LookupError(f"{spec}: no such file or folder")
    if path.is_dir():
        if maildir.is_maildir(path) or any(
            e.name.startswith(".") and e.is_dir() and maildir.is_maildir(Path(e.path))
            for e in os.scandir(path)
        ):
            return MaildirSource(path)
        return MboxSource(path, folder)
    return MboxSource(path, folder)
