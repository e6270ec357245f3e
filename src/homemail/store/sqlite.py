"""The embedded store: SQLite in WAL mode plus immutable message files, in the data folder.

Implementation notes:
- One writer thread owns the only writing connection. Write jobs queue up; the writer takes every job waiting,
  runs each in its own SAVEPOINT inside one transaction and commits once (group commit), so N deliveries that
  arrive together cost one WAL fsync. A job that fails rolls back alone (a job alone needs no SAVEPOINT).
- A new message is parsed and its file written and fsync'd by one of a few file threads, which then queues the
  write job itself: the event loop hands the message over once and wakes once, at the commit. The writer fsyncs
  the incoming/ directory once per batch before COMMIT when a file there is new (files written into spare files,
  whose names are durable already, need none), moves the files into place after it (blobs.py), and removes the
  file of a job that did not commit.
- Reads run in a few reader threads, each with its own connection, fed from one queue and answering through
  call_soon_threadsafe (no executor futures); WAL gives each read a consistent snapshot.
- After a commit, listeners of the touched mailboxes are called on the event loop. Another process writing the
  same database (the CLI importing mail) is noticed by polling a change counter once a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from homemail import addresses
from homemail.store import (
    DEFAULT_MAILBOXES,
    HIERARCHY_DELIMITER,
    Account,
    Alias,
    AlreadyExists,
    Changes,
    CopyResult,
    DeliveryTarget,
    DKIMKey,
    Domain,
    FlagOp,
    FlagUpdate,
    GreylistEntry,
    ImportedMessage,
    Invalid,
    Listener,
    Mailbox,
    MailboxStatus,
    MessageInfo,
    NotFound,
    QueuedMessage,
    QueuedRecipient,
    QueueRecipient,
    Recipient,
    RecipientUpdate,
    Store,
    StoreError,
    StoreResult,
    WarmupState,
)
from homemail.store.blobs import BlobFiles
from homemail.store.schema import migrate

if TYPE_CHECKING:
    from homemail.message import ParsedMessage

log = logging.getLogger(__name__)
T = TypeVar("T")

FLAG_BITS: dict[str, int] = {"\\seen": 1, "\\answered": 2, "\\flagged": 4, "\\deleted": 8, "\\draft": 16}
BIT_FLAGS: tuple[tuple[int, str], ...] = (
    (1, "\\Seen"),
    (2, "\\Answered"),
    (4, "\\Flagged"),
    (8, "\\Deleted"),
    (16, "\\Draft"),
)
SEEN, DELETED = 1, 8
MAX_BATCH = 500
FILE_THREADS = 4  # threads parsing and writing new message files (fsyncs in parallel share journal commits)
MAX_ALIAS_DEPTH = 10


def split_flags(flags: Iterable[str]) -> tuple[int, list[str]]:
    """System flags to bits, keywords kept in order without duplicates. \\Recent is session state: dropped."""
    bits = 0
    keywords: list[str] = []
    for f in flags:
        bit = FLAG_BITS.get(f.lower())
        if bit is not None:
            bits |= bit
        elif f.startswith("\\"):
            continue
        elif f not in keywords:
            keywords.append(f)
    return bits, keywords


def join_flags(bits: int, keywords: str) -> frozenset[str]:
    flags = [name for bit, name in BIT_FLAGS if bits & bit]
    if keywords:
        flags.extend(keywords.split(" "))
    return frozenset(flags)


def _tz_minutes(dt: datetime) -> int:
    off = dt.utcoffset()
    return int(off.total_seconds() // 60) if off is not None else 0


def _datetime(ts: int, tz_minutes: int) -> datetime:
    return datetime.fromtimestamp(ts, timezone(timedelta(minutes=tz_minutes)))


_MAILBOX_NAME_BAD = re.compile(r"[\x00-\x1f\x7f]")


def check_mailbox_name(name: str) -> str:
    """Validate a mailbox name; "inbox" in any case becomes "INBOX" (RFC 3501 5.1)."""
    if not name or len(name) > 512 or _MAILBOX_NAME_BAD.search(name):
        raise Invalid("invalid mailbox name")
    parts = name.split(HIERARCHY_DELIMITER)
    if any(p == "" for p in parts):
        raise Invalid("invalid mailbox name: empty hierarchy level")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return HIERARCHY_DELIMITER.join(parts)


@dataclass
class _JobContext:
    """What a write job asks the writer to do around its commit."""

    new_blobs: list[str] = field(default_factory=list)
    trash: list[str] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    blob_id: str | None = None  # the job's new message file: removed by the writer if not committed


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _reply(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], result: Any, exc: BaseException | None
) -> None:
    """Settle ``fut`` from a store thread; nothing to do when its loop is gone."""
    try:
        loop.call_soon_threadsafe(_settle, fut, result, exc)
    except RuntimeError:  # the loop was closed
        pass


def _connect(path: Path, fsync: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'OFF'}")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=30000")
    db.execute("PRAGMA cache_size=-16000")
    return db


class SQLiteStore(Store):
    def __init__(self, data_dir: Path | str, fsync: bool = True, readers: int = 4) -> None:
        self.data_dir = Path(data_dir)
        self.fsync = fsync
        self.db_path = self.data_dir / "homemail.db"
        self._reader_count = readers
        self._readers: list[threading.Thread] = []
        self._reads: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._reader_conns: list[sqlite3.Connection] = []
        self._filers: list[threading.Thread] = []
        self._files: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closing = False
        self._writer: threading.Thread | None = None
        self._writer_db: sqlite3.Connection | None = None
        self._watchers: dict[int, set[Listener]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._own_commits = 0
        self._pending_trash: list[str] = []
        self.blobs: BlobFiles

    # --- life cycle -------------------------------------------------------------------------------------

    async def open(self) -> None:
        self._closing = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobFiles(self.data_dir, fsync=self.fsync)
        # Recovery only when no other process has the store open: a running server's incoming/ holds the
        # files of its commits in progress, which recovery would delete or move under it (blobs.py).
        alone = self.blobs.lock()
        try:
            db = _connect(self.db_path, self.fsync)
        except BaseException:
            self.blobs.unlock()
            raise
        try:
            migrate(db)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('change_seq', '0')")
            if alone:
                self._recover(db)
                self.blobs.share()
        except BaseException:
            db.close()
            self.blobs.unlock()
            raise
        self._writer_db = db
        for i in range(self._reader_count):
            conn = _connect(self.db_path, self.fsync)
            conn.execute("PRAGMA query_only=1")
            self._reader_conns.append(conn)
            self._readers.append(
                threading.Thread(target=self._reader_loop, args=(conn,), name=f"store-read-{i}", daemon=True)
            )
        for i in range(FILE_THREADS):
            self._filers.append(threading.Thread(target=self._file_loop, name=f"store-file-{i}", daemon=True))
        self._writer = threading.Thread(target=self._writer_loop, name="store-write", daemon=True)
        for t in (*self._readers, *self._filers, self._writer):
            t.start()

    def _recover(self, db: sqlite3.Connection) -> None:
        def committed(names: list[str]) -> set[str]:
            rows = db.execute(
                "SELECT id FROM blob WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(names),)
            )
            return {r[0] for r in rows}

        published, deleted = self.blobs.recover(committed)
        trash = [r[0] for r in db.execute("SELECT id FROM blob_trash")]
        self.blobs.delete(trash)
        db.execute("DELETE FROM blob_trash")
        if published or deleted or trash:
            log.info(
                "store recovery: %d files published, %d unacknowledged removed, %d deleted",
                published,
                deleted,
                len(trash),
            )

    async def close(self) -> None:
        self._closing = True  # no new jobs from here on
        if self._poller:
            self._poller.cancel()
            self._poller = None
        # Files first: their threads hand jobs to the writer, which runs everything queued before it stops.
        threads = [(self._files, self._filers), (self._jobs, [self._writer] if self._writer else [])]
        threads.append((self._reads, self._readers))
        for jobs, workers in threads:
            for _ in workers:
                jobs.put(None)
            for t in workers:
                await asyncio.to_thread(t.join)
            while True:  # whatever came after the last thread stopped
                try:
                    left = jobs.get_nowait()
                except queue.Empty:
                    break
                if left is not None:
                    _settle(left.future, None, StoreError("store closed"))
        self._filers = []
        self._writer = None
        self._readers = []
        if hasattr(self, "blobs"):
            self.blobs.stop_spares()
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()
        if self._writer_db:
            self._writer_db.close()
            self._writer_db = None
        if hasattr(self, "blobs"):
            self.blobs.unlock()

    # --- plumbing -----------------------------------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._readers or self._closing:
            raise StoreError("store not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._reads.put(_Job(fn, args, fut, loop))
        return await fut

    def _reader_loop(self, db: sqlite3.Connection) -> None:
        """One reader thread: each read in its own transaction, so it sees one snapshot."""
        while True:
            job = self._reads.get()
            if job is None:
                return
            if job.future.done():  # the caller went away
                continue
            try:
                db.execute("BEGIN")
                try:
                    result = job.fn(db, *job.args)
                finally:
                    db.execute("COMMIT")
            except BaseException as e:
                _reply(job.loop, job.future, None, e)
            else:
                _reply(job.loop, job.future, result, None)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        if self._writer is None or self._closing:
            raise StoreError("store not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, args, fut, loop))
        return await fut

    def _writer_loop(self) -> None:
        db = self._writer_db
        assert db is not None
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(db, batch)
            if stop:
                return

    def _run_batch(self, db: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        ctx = _JobContext()
        # A job alone needs no SAVEPOINT: when it fails, the whole transaction is its own to roll back.
        alone = len(batch) == 1
        pending_trash = self._pending_trash
        try:
            db.execute("BEGIN IMMEDIATE")
            if pending_trash:
                db.execute(
                    "DELETE FROM blob_trash WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(pending_trash),),
                )
                self._pending_trash = []
            for job in batch:
                job_ctx = _JobContext()
                if not alone:
                    db.execute("SAVEPOINT job")
                try:
                    result = job.fn(db, job_ctx, *job.args)
                except BaseException as e:  # the job's own error goes back to its caller
                    if alone:
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        self._pending_trash = pending_trash
                    else:
                        db.execute("ROLLBACK TO job")
                        db.execute("RELEASE job")
                    if job.blob_id is not None:
                        self.blobs.discard_incoming(job.blob_id)
                    if alone:
                        _reply(job.loop, job.future, None, e)
                        return
                    results.append((job, None, e))
                    continue
                if not alone:
                    db.execute("RELEASE job")
                results.append((job, result, None))
                ctx.new_blobs += job_ctx.new_blobs
                ctx.trash += job_ctx.trash
                ctx.touched |= job_ctx.touched
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'change_seq'")
            if any(not self.blobs.name_durable(b) for b in ctx.new_blobs):
                self.blobs.sync_incoming_dir()
            db.execute("COMMIT")
            self._own_commits += 1
        except BaseException as e:
            log.exception("store commit failed")
            if db.in_transaction:
                db.execute("ROLLBACK")
            error = StoreError(f"database write failed: {e}")
            for job in batch:
                if job.blob_id is not None:
                    self.blobs.discard_incoming(job.blob_id)
                _reply(job.loop, job.future, None, error)
            return
        self.blobs.publish(ctx.new_blobs)
        if ctx.trash:
            self.blobs.delete(ctx.trash)
            self._pending_trash = ctx.trash
        loops: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
        for r in results:
            loops.setdefault(r[0].loop, []).append(r)
        for loop, items in loops.items():
            try:
                loop.call_soon_threadsafe(self._after_commit, items, ctx.touched)
            except RuntimeError:  # the loop was closed
                pass

    def _after_commit(self, items: list[tuple[_Job, Any, BaseException | None]], touched: set[int]) -> None:
        self._notify(touched)
        for job, result, exc in items:
            _settle(job.future, result, exc)

    def _notify(self, mailbox_ids: Iterable[int]) -> None:
        for mid in mailbox_ids:
            for listener in list(self._watchers.get(mid, ())):
                try:
                    listener(mid)
                except Exception:
                    log.exception("store listener failed")

    def watch(self, mailbox_id: int, listener: Listener) -> Callable[[], None]:
        self._watchers.setdefault(mailbox_id, set()).add(listener)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_other_writers())

        def unwatch() -> None:
            listeners = self._watchers.get(mailbox_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._watchers[mailbox_id]

        return unwatch

    async def _poll_other_writers(self) -> None:
        """Notify every watcher when another process committed (the CLI, a second server)."""

        def read_seq(db: sqlite3.Connection) -> int:
            return int(db.execute("SELECT value FROM meta WHERE key = 'change_seq'").fetchone()[0])

        last_seq = await self._read(read_seq)
        last_own = self._own_commits
        while True:
            await asyncio.sleep(1.0)
            if not self._watchers:
                continue
            try:
                seq = await self._read(read_seq)
            except Exception:
                log.exception("store change poll failed")
                continue
            own = self._own_commits
            if seq - last_seq > own - last_own:
                self._notify(list(self._watchers))
            last_seq, last_own = seq, own

    # --- domains, accounts, aliases -----------------------------------------------------------------------

    async def add_domain(self, name: str) -> Domain:
        domain = addresses.normalize_domain(name)

        def job(db: sqlite3.Connection, ctx: _JobContext) -> Domain:
            try:
                cur = db.execute(
                    "INSERT INTO domain (name, created) VALUES (?, ?)", (domain, int(time.time()))
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"domain {domain} exists already") from None
            return Domain(int(cur.lastrowid or 0), domain)

        return await self._write(job)

    async def remove_domain(self, name: str) -> None:
        domain = addresses.normalize_domain(name)

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            row = db.execute("SELECT id FROM domain WHERE name = ?", (domain,)).fetchone()
            if row is None:
                raise NotFound(f"no such domain: {domain}")
            (n,) = db.execute("SELECT count(*) FROM account WHERE domain_id = ?", (row[0],)).fetchone()
            if n:
                raise Invalid(f"domain {domain} still has {n} account(s); remove them first")
            db.execute("DELETE FROM alias WHERE source LIKE ? ESCAPE '\\'", ("%@" + _like_escape(domain),))
            db.execute("DELETE FROM domain WHERE id = ?", (row[0],))

        await self._write(job)

    async def list_domains(self) -> list[Domain]:
        return await self._read(
            lambda db: [Domain(r[0], r[1]) for r in db.execute("SELECT id, name FROM domain ORDER BY name")]
        )

    async def is_local_domain(self, name: str) -> bool:
        try:
            domain = addresses.normalize_domain(name)
        except ValueError:
            return False
        return await self._read(
            lambda db: db.execute("SELECT 1 FROM domain WHERE name = ?", (domain,)).fetchone() is not None
        )

    async def add_account(self, address: str, password_hash: str, scram_sha256: str = "") -> Account:
        addr = addresses.normalize(address)
        domain = addr.rpartition("@")[2]

        def job(db: sqlite3.Connection, ctx: _JobContext) -> Account:
            row = db.execute("SELECT id FROM domain WHERE name = ?", (domain,)).fetchone()
            if row is None:
                raise NotFound(f"unknown domain {domain}: add it first with 'homemail domain add {domain}'")
            try:
                cur = db.execute(
                    "INSERT INTO account (address, domain_id, password_hash, scram_sha256, created)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (addr, row[0], password_hash, scram_sha256, int(time.time())),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"user {addr} exists already") from None
            account_id = int(cur.lastrowid or 0)
            for name, special_use in DEFAULT_MAILBOXES:
                _create_mailbox(db, account_id, name, special_use)
                db.execute("INSERT INTO subscription VALUES (?, ?)", (account_id, name))
            return Account(account_id, addr, password_hash, scram_sha256)

        return await self._write(job)

    async def set_password(self, address: str, password_hash: str, scram_sha256: str = "") -> None:
        addr = addresses.normalize(address)

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            cur = db.execute(
                "UPDATE account SET password_hash = ?, scram_sha256 = ? WHERE address = ?",
                (password_hash, scram_sha256, addr),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no such user: {addr}")

        await self._write(job)

    async def remove_account(self, address: str) -> None:
        addr = addresses.normalize(address)

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            row = db.execute("SELECT id FROM account WHERE address = ?", (addr,)).fetchone()
            if row is None:
                raise NotFound(f"no such user: {addr}")
            for (mid,) in db.execute("SELECT id FROM mailbox WHERE account_id = ?", (row[0],)).fetchall():
                _drop_mailbox_messages(db, ctx, mid)
            db.execute("DELETE FROM account WHERE id = ?", (row[0],))
            db.execute("DELETE FROM alias WHERE target = ?", (addr,))

        await self._write(job)

    async def get_account(self, address: str) -> Account | None:
        try:
            addr = addresses.normalize(address)
        except ValueError:
            return None

        return await self._read(_account_where, "address", addr)

    async def get_account_by_id(self, account_id: int) -> Account | None:
        return await self._read(_account_where, "id", account_id)

    async def list_accounts(self, domain: str | None = None) -> list[Account]:
        def read(db: sqlite3.Connection) -> list[Account]:
            if domain is None:
                rows = db.execute(_ACCOUNT_SELECT + " ORDER BY address")
            else:
                rows = db.execute(
                    "SELECT a.id, a.address, a.password_hash, a.scram_sha256 FROM account a JOIN domain d ON d.id = a.domain_id"
                    " WHERE d.name = ? ORDER BY a.address",
                    (addresses.normalize_domain(domain),),
                )
            return [Account(*r) for r in rows]

        return await self._read(read)

    async def add_alias(self, source: str, targets: Sequence[str]) -> None:
        src = addresses.normalize_alias_source(source)
        dests = [addresses.normalize(t) for t in targets]
        if not dests:
            raise Invalid("an alias needs at least one target")
        domain = src.rpartition("@")[2]

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            if db.execute("SELECT 1 FROM domain WHERE name = ?", (domain,)).fetchone() is None:
                raise NotFound(f"unknown domain {domain}: add it first with 'homemail domain add {domain}'")
            for dest in dests:
                if dest == src:
                    raise Invalid(f"alias {src} cannot point to itself")
                db.execute("INSERT OR IGNORE INTO alias VALUES (?, ?)", (src, dest))

        await self._write(job)

    async def remove_alias(self, source: str, target: str | None = None) -> None:
        src = addresses.normalize_alias_source(source)
        dest = addresses.normalize(target) if target else None

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            if dest is None:
                cur = db.execute("DELETE FROM alias WHERE source = ?", (src,))
            else:
                cur = db.execute("DELETE FROM alias WHERE source = ? AND target = ?", (src, dest))
            if cur.rowcount == 0:
                raise NotFound(f"no such alias: {src}" + (f" -> {dest}" if dest else ""))

        await self._write(job)

    async def list_aliases(self) -> list[Alias]:
        return await self._read(
            lambda db: [
                Alias(*r) for r in db.execute("SELECT source, target FROM alias ORDER BY source, target")
            ]
        )

    async def resolve(self, address: str) -> Recipient | None:
        try:
            addr = addresses.normalize(address)
        except ValueError:
            return None
        return await self._read(_resolve, addr)

    # --- mailboxes ------------------------------------------------------------------------------------------

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        return await self._read(
            lambda db: [
                _mailbox(r)
                for r in db.execute(
                    _MAILBOX_SELECT + " WHERE m.account_id = ? ORDER BY m.name", (account_id,)
                )
            ]
        )

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        return await self._read(_get_mailbox, account_id, name)

    async def create_mailbox(self, account_id: int, name: str, special_use: str | None = None) -> Mailbox:
        name = check_mailbox_name(name)

        def job(db: sqlite3.Connection, ctx: _JobContext) -> Mailbox:
            if _get_mailbox(db, account_id, name) is not None:
                raise AlreadyExists("mailbox exists already")
            parts = name.split(HIERARCHY_DELIMITER)
            for i in range(1, len(parts)):  # RFC 3501 6.3.3: create superior names as needed
                parent = HIERARCHY_DELIMITER.join(parts[:i])
                if _get_mailbox(db, account_id, parent) is None:
                    _create_mailbox(db, account_id, parent, None)
            _create_mailbox(db, account_id, name, special_use)
            mailbox = _get_mailbox(db, account_id, name)
            assert mailbox is not None
            return mailbox

        return await self._write(job)

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        name = check_mailbox_name(name)

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            if name == "INBOX":
                raise Invalid("INBOX cannot be deleted")
            mailbox = _get_mailbox(db, account_id, name)
            if mailbox is None:
                raise NotFound("no such mailbox")
            _drop_mailbox_messages(db, ctx, mailbox.id)
            db.execute("DELETE FROM mailbox WHERE id = ?", (mailbox.id,))
            ctx.touched.add(mailbox.id)

        await self._write(job)

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        old = check_mailbox_name(old)
        new = check_mailbox_name(new)

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            src = _get_mailbox(db, account_id, old)
            if src is None:
                raise NotFound("no such mailbox")
            if _get_mailbox(db, account_id, new) is not None:
                raise AlreadyExists("a mailbox with the new name exists already")
            # INBOX's inferiors stay where they are when it is renamed (RFC 9051 6.3.6), so INBOX may go below
            # itself; any other mailbox cannot.
            if new == old or (old != "INBOX" and new.startswith(old + HIERARCHY_DELIMITER)):
                raise Invalid("cannot rename a mailbox into itself")
            parts = new.split(HIERARCHY_DELIMITER)
            for i in range(1, len(parts)):
                parent = HIERARCHY_DELIMITER.join(parts[:i])
                if _get_mailbox(db, account_id, parent) is None:
                    _create_mailbox(db, account_id, parent, None)
            if old == "INBOX":
                # RFC 3501 6.3.5: renaming INBOX moves its messages to a new mailbox and leaves INBOX empty.
                dest_id = _create_mailbox(db, account_id, new, None)
                uids = [r[0] for r in db.execute("SELECT uid FROM message WHERE mailbox_id = ?", (src.id,))]
                _copy(db, ctx, src.id, uids, dest_id, move=True)
                return
            prefix = old + HIERARCHY_DELIMITER
            rows = db.execute(
                "SELECT id, name FROM mailbox WHERE account_id = ? AND (name = ? OR substr(name, 1, ?) = ?)",
                (account_id, old, len(prefix), prefix),
            ).fetchall()
            for mid, name in rows:
                renamed = new + name[len(old) :]
                db.execute("UPDATE mailbox SET name = ? WHERE id = ?", (renamed, mid))
                db.execute(
                    "UPDATE subscription SET name = ? WHERE account_id = ? AND name = ?",
                    (renamed, account_id, name),
                )
                ctx.touched.add(mid)

        await self._write(job)

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        name = check_mailbox_name(name)

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            if subscribed:
                db.execute("INSERT OR IGNORE INTO subscription VALUES (?, ?)", (account_id, name))
            else:
                db.execute("DELETE FROM subscription WHERE account_id = ? AND name = ?", (account_id, name))

        await self._write(job)

    async def list_subscriptions(self, account_id: int) -> list[str]:
        return await self._read(
            lambda db: [
                r[0]
                for r in db.execute(
                    "SELECT name FROM subscription WHERE account_id = ? ORDER BY name", (account_id,)
                )
            ]
        )

    async def mailbox_status(self, account_id: int, mailbox_id: int) -> MailboxStatus:
        def read(db: sqlite3.Connection) -> MailboxStatus:
            mb = _own_mailbox(db, account_id, mailbox_id)
            first_recent = db.execute(
                "SELECT first_recent_uid FROM mailbox WHERE id = ?", (mailbox_id,)
            ).fetchone()[0]
            row = db.execute(
                "SELECT count(*), total(flags & 1 = 0), total(flags & 8 != 0), total(size), total(uid >= ?),"
                " min(CASE WHEN flags & 1 = 0 THEN uid END) FROM message WHERE mailbox_id = ?",
                (first_recent, mailbox_id),
            ).fetchone()
            return MailboxStatus(
                messages=row[0],
                unseen=int(row[1]),
                deleted=int(row[2]),
                size=int(row[3]),
                recent=int(row[4]),
                uidnext=mb.uidnext,
                uidvalidity=mb.uidvalidity,
                highestmodseq=mb.highestmodseq,
                first_unseen_uid=row[5],
            )

        return await self._read(read)

    async def mailbox_keywords(self, account_id: int, mailbox_id: int) -> list[str]:
        return await self._mailbox_column(
            account_id, mailbox_id, "SELECT name FROM keyword WHERE mailbox_id = ? ORDER BY name"
        )

    async def _mailbox_column(self, account_id: int, mailbox_id: int, sql: str) -> list[Any]:
        """The first column of the rows ``sql`` selects with the mailbox id as its one parameter; NotFound
        unless the mailbox is the account's."""

        def read(db: sqlite3.Connection) -> list[Any]:
            _own_mailbox(db, account_id, mailbox_id)
            return [r[0] for r in db.execute(sql, (mailbox_id,))]

        return await self._read(read)

    # --- messages ----------------------------------------------------------------------------------------

    async def _store_new(self, data: bytes, job: Callable[..., T], *args: Any) -> T:
        """Parse and write the file in a file thread, which hands the write job straight to the writer: the
        event loop wakes once per message, when it is committed."""
        if self._writer is None or self._closing:
            raise StoreError("store not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._files.put(_Job(job, (data, *args), fut, loop))
        return await fut

    def _file_loop(self) -> None:
        """One file thread: parse once, write the file with fsync (blobs.py: a spare file or a new one in
        incoming/), queue the write job."""
        from homemail.message import parse

        while True:
            job = self._files.get()
            if job is None:
                return
            if job.future.done():  # the caller went away before anything was written
                continue
            data, *args = job.args
            try:
                parsed = parse(data).to_json()
                sha = hashlib.sha256(data).hexdigest()
                blob_id = self.blobs.write_new(data)
            except BaseException as e:
                _reply(job.loop, job.future, None, e)
                continue
            self._jobs.put(
                _Job(job.fn, (blob_id, len(data), parsed, sha, *args), job.future, job.loop, blob_id)
            )

    async def deliver(
        self, data: bytes, targets: Sequence[DeliveryTarget], internaldate: datetime | None = None
    ) -> list[tuple[int, int]]:
        if not targets:
            raise Invalid("no delivery targets")
        when = internaldate or datetime.now(UTC).astimezone()
        return await self._store_new(data, _deliver_job, list(targets), when)

    async def append(
        self,
        account_id: int,
        mailbox_id: int,
        data: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime | None = None,
    ) -> tuple[int, int]:
        when = internaldate or datetime.now(UTC).astimezone()
        bits, keywords = split_flags(flags)
        return await self._store_new(data, _append_job, account_id, mailbox_id, bits, keywords, when)

    async def list_uids(self, account_id: int, mailbox_id: int) -> list[int]:
        return await self._mailbox_column(
            account_id, mailbox_id, "SELECT uid FROM message WHERE mailbox_id = ? ORDER BY uid"
        )

    async def messages(
        self, account_id: int, mailbox_id: int, uids: Sequence[int] | None = None
    ) -> list[MessageInfo]:
        def read(db: sqlite3.Connection) -> list[MessageInfo]:
            _own_mailbox(db, account_id, mailbox_id)
            if uids is None:
                rows = db.execute(_MESSAGE_SELECT + " WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,))
            else:
                rows = db.execute(
                    _MESSAGE_SELECT
                    + " WHERE mailbox_id = ? AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
                    (mailbox_id, json.dumps(list(uids))),
                )
            return [_message(r) for r in rows]

        return await self._read(read)

    async def parsed(self, blob_ids: Sequence[str]) -> dict[str, ParsedMessage]:
        from homemail.message import ParsedMessage

        def read(db: sqlite3.Connection) -> dict[str, ParsedMessage]:
            rows = db.execute(
                "SELECT id, parsed FROM blob WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(blob_ids)),),
            )
            return {r[0]: ParsedMessage.from_json(r[1]) for r in rows}

        return await self._read(read)

    async def read_blob(self, blob_id: str) -> bytes:
        return await asyncio.to_thread(self.blobs.read, blob_id)

    def blob_path(self, blob_id: str) -> str:
        return self.blobs.path(blob_id)

    async def changes(self, account_id: int, mailbox_id: int, since_modseq: int) -> Changes:
        def read(db: sqlite3.Connection) -> Changes:
            mb = _own_mailbox(db, account_id, mailbox_id)
            changed = [
                _message(r)
                for r in db.execute(
                    _MESSAGE_SELECT + " WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
                    (mailbox_id, since_modseq),
                )
            ]
            expunged = [
                r[0]
                for r in db.execute(
                    "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
                    (mailbox_id, since_modseq),
                )
            ]
            return Changes(mb.highestmodseq, changed, expunged)

        return await self._read(read)

    async def claim_recent(self, account_id: int, mailbox_id: int) -> int:
        def job(db: sqlite3.Connection, ctx: _JobContext) -> int:
            _own_mailbox(db, account_id, mailbox_id)
            first, uidnext = db.execute(
                "SELECT first_recent_uid, uidnext FROM mailbox WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if first != uidnext:
                db.execute("UPDATE mailbox SET first_recent_uid = uidnext WHERE id = ?", (mailbox_id,))
            return int(first)

        return await self._write(job)

    async def store_flags(
        self,
        account_id: int,
        mailbox_id: int,
        uids: Sequence[int],
        op: FlagOp,
        flags: Iterable[str],
        unchangedsince: int | None = None,
    ) -> StoreResult:
        bits, keywords = split_flags(flags)
        return await self._write(
            _store_job, account_id, mailbox_id, list(uids), op, bits, keywords, unchangedsince
        )

    async def copy(
        self, account_id: int, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int
    ) -> CopyResult:
        return await self._write(_copy_job, account_id, mailbox_id, list(uids), dest_mailbox_id, False)

    async def move(
        self, account_id: int, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int
    ) -> CopyResult:
        return await self._write(_copy_job, account_id, mailbox_id, list(uids), dest_mailbox_id, True)

    async def expunge(self, account_id: int, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        return await self._write(
            _expunge_job, account_id, mailbox_id, None if uids is None else list(uids), True
        )

    async def remove_messages(self, account_id: int, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        return await self._write(_expunge_job, account_id, mailbox_id, list(uids), False)

    # --- importing -----------------------------------------------------------------------------------------

    async def import_messages(
        self, account_id: int, source: str, messages: Sequence[ImportedMessage]
    ) -> list[list[tuple[int, int]] | None]:
        """The files are parsed and written (each fsync'd) by a few threads at once, then one write job stores
        the whole batch: one commit, one fsync of incoming/, one WAL fsync for all of it."""
        if self._writer is None:
            raise StoreError("store not open")
        if not messages:
            return []
        step = -(-len(messages) // IMPORT_THREADS)
        parts = [messages[i : i + step] for i in range(0, len(messages), step)]
        results = await asyncio.gather(
            *(asyncio.to_thread(self._write_files, part) for part in parts), return_exceptions=True
        )
        files: list[tuple[str, int, bytes, str]] = []
        failure: BaseException | None = None
        for r in results:
            if isinstance(r, BaseException):
                failure = failure or r
            else:
                files += r
        if failure is not None:
            for f in files:
                self.blobs.discard_incoming(f[0])
            if isinstance(failure, StoreError):
                raise failure
            if isinstance(failure, OSError):  # the disk, not a message: the import cannot go on
                raise StoreError(f"cannot write message files: {failure}") from failure
            raise Invalid(f"cannot store a message: {failure}") from failure
        try:
            placed = await self._write(_import_job, account_id, source, list(messages), files)
        except Exception:
            # Not committed. (A cancelled caller leaves the files alone: its job may still commit.)
            for f in files:
                self.blobs.discard_incoming(f[0])
            raise
        for f, where in zip(files, placed, strict=True):
            if where is None:
                self.blobs.discard_incoming(f[0])
        return placed

    def _write_files(self, messages: Sequence[ImportedMessage]) -> list[tuple[str, int, bytes, str]]:
        """Parse and write message files to incoming/ (a worker thread): (blob id, size, parsed JSON, sha256).
        On an error the files written so far are removed."""
        from homemail.message import parse

        out: list[tuple[str, int, bytes, str]] = []
        try:
            for m in messages:
                parsed = parse(m.data).to_json()
                sha = hashlib.sha256(m.data).hexdigest()
                out.append((self.blobs.write_incoming(m.data), len(m.data), parsed, sha))
        except BaseException:
            for f in out:
                self.blobs.discard_incoming(f[0])
            raise
        return out

    async def imported_keys(self, account_id: int, source: str) -> set[str]:
        def read(db: sqlite3.Connection) -> set[str]:
            return {
                r[0]
                for r in db.execute(
                    "SELECT key FROM import_log WHERE account_id = ? AND source = ?", (account_id, source)
                )
            }

        return await self._read(read)

    # --- the outbound queue --------------------------------------------------------------------------------

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
        if not recipients and not local_targets:
            raise Invalid("nothing to deliver or queue")
        head = (sender, account_id, envid, ret, smtputf8, body8bit, time.time())
        when = datetime.now(UTC).astimezone()
        return await self._store_new(data, _enqueue_job, head, list(recipients), list(local_targets), when)

    async def queue_due(self, now: float, limit: int, exclude: Iterable[int] = ()) -> list[QueuedMessage]:
        skip = json.dumps(list(exclude))

        def read(db: sqlite3.Connection) -> list[QueuedMessage]:
            rows = db.execute(
                _RCPT_SELECT + " WHERE state IN ('queued', 'bounce') AND next_attempt <= ?"
                " AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY message_id, id LIMIT ?",
                (now, skip, limit),
            ).fetchall()
            return _queued_messages(db, [_queued_recipient(r) for r in rows])

        return await self._read(read)

    async def queue_next_attempt(self) -> float | None:
        def read(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT min(next_attempt) FROM queue_recipient WHERE state IN ('queued', 'bounce')"
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._read(read)

    async def queue_update(self, updates: Sequence[RecipientUpdate]) -> None:
        if updates:
            await self._write(_queue_update_job, list(updates))

    async def queue_list(self) -> list[QueuedMessage]:
        def read(db: sqlite3.Connection) -> list[QueuedMessage]:
            rows = db.execute(_RCPT_SELECT + " ORDER BY message_id, id").fetchall()
            return _queued_messages(db, [_queued_recipient(r) for r in rows])

        return await self._read(read)

    async def queue_get(self, message_id: int) -> QueuedMessage | None:
        def read(db: sqlite3.Connection) -> QueuedMessage | None:
            rows = db.execute(_RCPT_SELECT + " WHERE message_id = ? ORDER BY id", (message_id,)).fetchall()
            found = _queued_messages(db, [_queued_recipient(r) for r in rows])
            return found[0] if found else None

        return await self._read(read)

    async def queue_reschedule(self, message_id: int | None, when: float) -> int:
        def job(db: sqlite3.Connection, ctx: _JobContext) -> int:
            if message_id is None:
                cur = db.execute(
                    "UPDATE queue_recipient SET next_attempt = ? WHERE state = 'queued'", (when,)
                )
            else:
                _queue_message_exists(db, message_id)
                cur = db.execute(
                    "UPDATE queue_recipient SET next_attempt = ? WHERE state = 'queued' AND message_id = ?",
                    (when, message_id),
                )
            return cur.rowcount

        return await self._write(job)

    async def queue_bounce(self, message_id: int, reason: str) -> int:
        def job(db: sqlite3.Connection, ctx: _JobContext) -> int:
            _queue_message_exists(db, message_id)
            cur = db.execute(
                "UPDATE queue_recipient SET state = 'bounce', next_attempt = 0, last_error = ?"
                " WHERE state = 'queued' AND message_id = ?",
                (reason, message_id),
            )
            return cur.rowcount

        return await self._write(job)

    async def queue_delete(self, message_id: int) -> None:
        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            _queue_message_exists(db, message_id)
            _drop_queue_message(db, ctx, message_id)

        await self._write(job)

    # --- DKIM keys ---------------------------------------------------------------------------------------

    async def dkim_keys(self, domain: str | None = None) -> list[DKIMKey]:
        def read(db: sqlite3.Connection) -> list[DKIMKey]:
            sql = "SELECT domain, selector, algorithm, private_key, active, created FROM dkim_key"
            if domain is None:
                rows = db.execute(sql + " ORDER BY domain, created DESC, selector")
            else:
                rows = db.execute(
                    sql + " WHERE domain = ? ORDER BY created DESC, selector",
                    (addresses.normalize_domain(domain),),
                )
            return [DKIMKey(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

        return await self._read(read)

    async def add_dkim_keys(self, keys: Sequence[DKIMKey], retire_active: bool = False) -> None:
        items = [(addresses.normalize_domain(k.domain), k) for k in keys]

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            if retire_active:
                for domain in {d for d, _ in items}:
                    db.execute("UPDATE dkim_key SET active = 0 WHERE domain = ?", (domain,))
            for domain, k in items:
                try:
                    db.execute(
                        "INSERT INTO dkim_key VALUES (?, ?, ?, ?, 1, ?)",
                        (domain, k.selector, k.algorithm, k.private_key, k.created or time.time()),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyExists(f"selector {k.selector} of {domain} exists already") from None

        await self._write(job)

    async def remove_dkim_key(self, domain: str, selector: str) -> None:
        d = addresses.normalize_domain(domain)

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            cur = db.execute("DELETE FROM dkim_key WHERE domain = ? AND selector = ?", (d, selector))
            if cur.rowcount == 0:
                raise NotFound(f"no DKIM key {selector} for {d}")

        await self._write(job)

    # --- greylisting -------------------------------------------------------------------------------------

    async def greylist_get(self, keys: Sequence[str]) -> dict[str, GreylistEntry]:
        wanted = list(keys)

        def read(db: sqlite3.Connection) -> dict[str, GreylistEntry]:
            rows = db.execute(
                "SELECT key, first_seen, last_seen, passes FROM greylist"
                " WHERE key IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            )
            return {r[0]: GreylistEntry(r[0], r[1], r[2], r[3]) for r in rows}

        return await self._read(read) if wanted else {}

    async def greylist_put(self, entries: Sequence[GreylistEntry]) -> None:
        rows = [(e.key, e.first_seen, e.last_seen, e.passes) for e in entries]

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            db.executemany("INSERT OR REPLACE INTO greylist VALUES (?, ?, ?, ?)", rows)

        if rows:
            await self._write(job)

    async def greylist_expire(self, waiting_before: float, passed_before: float) -> int:
        def job(db: sqlite3.Connection, ctx: _JobContext) -> int:
            cur = db.execute(
                "DELETE FROM greylist WHERE (passes = 0 AND last_seen < ?) OR last_seen < ?",
                (waiting_before, passed_before),
            )
            return cur.rowcount

        return await self._write(job)

    # --- IP warm-up ----------------------------------------------------------------------------------------

    async def warmup_states(self) -> list[WarmupState]:
        def read(db: sqlite3.Connection) -> list[WarmupState]:
            rows = db.execute(
                "SELECT provider, started, day, cap, used, sent, deferred, failed, throttled, braked, note,"
                " updated FROM warmup ORDER BY provider"
            )
            return [
                WarmupState(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9]), r[10], r[11])
                for r in rows
            ]

        return await self._read(read)

    async def warmup_put(self, states: Sequence[WarmupState]) -> None:
        rows = [
            (
                s.provider,
                s.started,
                s.day,
                s.cap,
                s.used,
                s.sent,
                s.deferred,
                s.failed,
                s.throttled,
                int(s.braked),
                s.note,
                s.updated,
            )
            for s in states
        ]

        def job(db: sqlite3.Connection, ctx: _JobContext) -> None:
            db.executemany("INSERT OR REPLACE INTO warmup VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

        if rows:
            await self._write(job)


# --- SQL helpers (run in the reader or writer threads) --------------------------------------------------------

_ACCOUNT_SELECT = "SELECT id, address, password_hash, scram_sha256 FROM account"
_MAILBOX_SELECT = (
    "SELECT m.id, m.account_id, m.name, m.uidvalidity, m.uidnext, m.highestmodseq, m.special_use,"
    " EXISTS (SELECT 1 FROM subscription s WHERE s.account_id = m.account_id AND s.name = m.name)"
    " FROM mailbox m"
)
_MESSAGE_SELECT = (
    "SELECT uid, flags, keywords, internaldate, internaldate_tz, size, modseq, blob_id FROM message"
)


def _account_where(db: sqlite3.Connection, column: str, value: object) -> Account | None:
    """The account whose ``column`` (address or id) is ``value``."""
    row = db.execute(f"{_ACCOUNT_SELECT} WHERE {column} = ?", (value,)).fetchone()
    return Account(*row) if row else None


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _mailbox(r: Sequence[Any]) -> Mailbox:
    return Mailbox(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]))


def _message(r: Sequence[Any]) -> MessageInfo:
    return MessageInfo(r[0], join_flags(r[1], r[2]), _datetime(r[3], r[4]), r[5], r[6], r[7])


def _get_mailbox(db: sqlite3.Connection, account_id: int, name: str) -> Mailbox | None:
    if name.startswith("\\"):
        row = db.execute(
            _MAILBOX_SELECT + " WHERE m.account_id = ? AND m.special_use = ? COLLATE NOCASE"
            " ORDER BY m.id LIMIT 1",
            (account_id, name),
        ).fetchone()
    else:
        if name.upper() == "INBOX":
            name = "INBOX"
        elif name[:6].upper() == "INBOX" + HIERARCHY_DELIMITER:
            name = "INBOX" + name[5:]
        row = db.execute(
            _MAILBOX_SELECT + " WHERE m.account_id = ? AND m.name = ?", (account_id, name)
        ).fetchone()
    return _mailbox(row) if row else None


def _own_mailbox(db: sqlite3.Connection, account_id: int, mailbox_id: int) -> Mailbox:
    row = db.execute(
        _MAILBOX_SELECT + " WHERE m.id = ? AND m.account_id = ?", (mailbox_id, account_id)
    ).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    return _mailbox(row)


def _next_uidvalidity(db: sqlite3.Connection) -> int:
    # Time-based and strictly increasing, so a mailbox deleted and made again never repeats a UIDVALIDITY.
    row = db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
    value = max(int(row[0]) + 1 if row else 1, int(time.time()) & 0x7FFFFFFF)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('uidvalidity', ?)", (str(value),))
    return value


def _create_mailbox(db: sqlite3.Connection, account_id: int, name: str, special_use: str | None) -> int:
    cur = db.execute(
        "INSERT INTO mailbox (account_id, name, uidvalidity, special_use) VALUES (?, ?, ?, ?)",
        (account_id, name, _next_uidvalidity(db), special_use),
    )
    return int(cur.lastrowid or 0)


def _bump(db: sqlite3.Connection, mailbox_id: int, new_uids: int = 0) -> tuple[int, int]:
    """Take ``new_uids`` UIDs and one new MODSEQ in the mailbox: returns (first new uid, modseq)."""
    row = db.execute(
        "UPDATE mailbox SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1 WHERE id = ?"
        " RETURNING uidnext - ?, highestmodseq",
        (new_uids, mailbox_id, new_uids),
    ).fetchone()
    return int(row[0]), int(row[1])


def _add_keywords(db: sqlite3.Connection, mailbox_id: int, keywords: Iterable[str]) -> None:
    rows = [(mailbox_id, k) for k in keywords]
    if rows:
        db.executemany("INSERT OR IGNORE INTO keyword VALUES (?, ?)", rows)


def _insert_blob(
    db: sqlite3.Connection, ctx: _JobContext, blob_id: str, size: int, parsed: bytes, sha: str, refcount: int
) -> None:
    db.execute(
        "INSERT INTO blob VALUES (?, ?, ?, ?, ?, ?)", (blob_id, size, sha, refcount, parsed, int(time.time()))
    )
    ctx.new_blobs.append(blob_id)


def _insert_message(
    db: sqlite3.Connection,
    ctx: _JobContext,
    mailbox_id: int,
    uid: int,
    blob_id: str,
    bits: int,
    keywords: Sequence[str],
    when: datetime,
    size: int,
    modseq: int,
) -> None:
    db.execute(
        "INSERT INTO message VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            mailbox_id,
            uid,
            blob_id,
            bits,
            " ".join(keywords),
            int(when.timestamp()),
            _tz_minutes(when),
            size,
            modseq,
        ),
    )
    _add_keywords(db, mailbox_id, keywords)
    ctx.touched.add(mailbox_id)


def _target_mailbox(db: sqlite3.Connection, account_id: int, name: str) -> int | None:
    """The id of a delivery target's mailbox; the usual one, INBOX, in one short query."""
    if name == "INBOX":
        row = db.execute(
            "SELECT id FROM mailbox WHERE account_id = ? AND name = 'INBOX'", (account_id,)
        ).fetchone()
        return int(row[0]) if row else None
    mailbox = _get_mailbox(db, account_id, name)
    return mailbox.id if mailbox else None


def _deliver_job(
    db: sqlite3.Connection,
    ctx: _JobContext,
    blob_id: str,
    size: int,
    parsed: bytes,
    sha: str,
    targets: list[DeliveryTarget],
    when: datetime,
) -> list[tuple[int, int]]:
    if len(targets) == 1 and targets[0].mailbox == "INBOX":
        # The usual delivery, one copy into an INBOX: its UID and MODSEQ taken in the statement that finds it.
        t = targets[0]
        row = db.execute(
            "UPDATE mailbox SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
            " WHERE account_id = ? AND name = 'INBOX' RETURNING id, uidnext - 1, highestmodseq",
            (t.account_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no account with id {t.account_id}")
        inbox_id, uid, modseq = int(row[0]), int(row[1]), int(row[2])
        _insert_blob(db, ctx, blob_id, size, parsed, sha, 1)
        bits, keywords = split_flags(t.flags)
        _insert_message(db, ctx, inbox_id, uid, blob_id, bits, keywords, when, size, modseq)
        return [(inbox_id, uid)]
    placed: list[tuple[int, int]] = []
    seen: set[int] = set()
    resolved: list[tuple[int, DeliveryTarget]] = []
    for t in targets:
        mailbox_id = _target_mailbox(db, t.account_id, t.mailbox) or _target_mailbox(
            db, t.account_id, "INBOX"
        )
        if mailbox_id is None:
            raise NotFound(f"no account with id {t.account_id}")
        if mailbox_id not in seen:
            seen.add(mailbox_id)
            resolved.append((mailbox_id, t))
    _insert_blob(db, ctx, blob_id, size, parsed, sha, len(resolved))
    for mailbox_id, t in resolved:
        bits, keywords = split_flags(t.flags)
        uid, modseq = _bump(db, mailbox_id, 1)
        _insert_message(db, ctx, mailbox_id, uid, blob_id, bits, keywords, when, size, modseq)
        placed.append((mailbox_id, uid))
    return placed


def _append_job(
    db: sqlite3.Connection,
    ctx: _JobContext,
    blob_id: str,
    size: int,
    parsed: bytes,
    sha: str,
    account_id: int,
    mailbox_id: int,
    bits: int,
    keywords: list[str],
    when: datetime,
) -> tuple[int, int]:
    mb = _own_mailbox(db, account_id, mailbox_id)
    _insert_blob(db, ctx, blob_id, size, parsed, sha, 1)
    uid, modseq = _bump(db, mailbox_id, 1)
    _insert_message(db, ctx, mailbox_id, uid, blob_id, bits, keywords, when, size, modseq)
    return mb.uidvalidity, uid


def _store_job(
    db: sqlite3.Connection,
    ctx: _JobContext,
    account_id: int,
    mailbox_id: int,
    uids: list[int],
    op: FlagOp,
    bits: int,
    keywords: list[str],
    unchangedsince: int | None,
) -> StoreResult:
    _own_mailbox(db, account_id, mailbox_id)
    rows = db.execute(
        "SELECT uid, flags, keywords, modseq FROM message WHERE mailbox_id = ?"
        " AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
        (mailbox_id, json.dumps(uids)),
    ).fetchall()
    updated: list[FlagUpdate] = []
    modified: list[int] = []
    modseq = 0
    changes: list[tuple[int, str, int, int, int]] = []
    for uid, old_bits, old_kw, old_modseq in rows:
        if unchangedsince is not None and old_modseq > unchangedsince:
            modified.append(uid)  # RFC 7162 3.1.3: changed since the client looked; not touched
            continue
        old_keywords = old_kw.split(" ") if old_kw else []
        if op is FlagOp.SET:
            new_bits, new_keywords = bits, keywords
        elif op is FlagOp.ADD:
            new_bits = old_bits | bits
            new_keywords = old_keywords + [k for k in keywords if k not in old_keywords]
        else:
            new_bits = old_bits & ~bits
            new_keywords = [k for k in old_keywords if k not in keywords]
        if new_bits == old_bits and set(new_keywords) == set(old_keywords):
            continue  # nothing changed: the MODSEQ stays (RFC 7162 3.1.3)
        if not modseq:
            _, modseq = _bump(db, mailbox_id)
        changes.append((new_bits, " ".join(new_keywords), modseq, mailbox_id, uid))
        updated.append(FlagUpdate(uid, join_flags(new_bits, " ".join(new_keywords)), modseq))
    if changes:
        db.executemany(
            "UPDATE message SET flags = ?, keywords = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?", changes
        )
        if op is not FlagOp.REMOVE:
            _add_keywords(db, mailbox_id, keywords)
        ctx.touched.add(mailbox_id)
    return StoreResult(updated, modified)


def _copy(
    db: sqlite3.Connection, ctx: _JobContext, mailbox_id: int, uids: list[int], dest_id: int, move: bool
) -> CopyResult:
    rows = db.execute(
        "SELECT uid, blob_id, flags, keywords, internaldate, internaldate_tz, size FROM message"
        " WHERE mailbox_id = ? AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
        (mailbox_id, json.dumps(uids)),
    ).fetchall()
    uidvalidity = db.execute("SELECT uidvalidity FROM mailbox WHERE id = ?", (dest_id,)).fetchone()[0]
    if not rows:
        return CopyResult(uidvalidity, [])
    first, modseq = _bump(db, dest_id, len(rows))
    pairs = []
    inserts = []
    keywords: set[str] = set()
    for i, (uid, blob_id, bits, kw, date, tz, size) in enumerate(rows):
        pairs.append((uid, first + i))
        inserts.append((dest_id, first + i, blob_id, bits, kw, date, tz, size, modseq))
        if kw:
            keywords.update(kw.split(" "))
    db.executemany("INSERT INTO message VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", inserts)
    _add_keywords(db, dest_id, keywords)
    ctx.touched.add(dest_id)
    if move:
        _remove(db, ctx, mailbox_id, [(uid, blob_id) for uid, blob_id, *_ in rows], adjust_refs=False)
    else:
        db.executemany("UPDATE blob SET refcount = refcount + 1 WHERE id = ?", [(r[1],) for r in rows])
    return CopyResult(uidvalidity, pairs)


def _copy_job(
    db: sqlite3.Connection,
    ctx: _JobContext,
    account_id: int,
    mailbox_id: int,
    uids: list[int],
    dest_id: int,
    move: bool,
) -> CopyResult:
    _own_mailbox(db, account_id, mailbox_id)
    _own_mailbox(db, account_id, dest_id)
    # RFC 6851 3.3: MOVE has the effect of UID COPY, STORE +FLAGS \Deleted and UID EXPUNGE, and COPY may target
    # the selected mailbox, so a MOVE into the mailbox the messages are in gives them new UIDs there (mbsync
    # does this when it trashes deleted messages of its Trash folder).
    return _copy(db, ctx, mailbox_id, uids, dest_id, move)


def _remove(
    db: sqlite3.Connection,
    ctx: _JobContext,
    mailbox_id: int,
    victims: list[tuple[int, str]],
    adjust_refs: bool = True,
) -> None:
    """Delete message rows, remember the UIDs as expunged, release their files."""
    if not victims:
        return
    _, modseq = _bump(db, mailbox_id)
    db.executemany(
        "DELETE FROM message WHERE mailbox_id = ? AND uid = ?", [(mailbox_id, u) for u, _ in victims]
    )
    db.executemany(
        "INSERT OR REPLACE INTO expunged VALUES (?, ?, ?)", [(mailbox_id, u, modseq) for u, _ in victims]
    )
    if adjust_refs:
        _release_blobs(db, ctx, [b for _, b in victims])
    ctx.touched.add(mailbox_id)


def _release_blobs(db: sqlite3.Connection, ctx: _JobContext, blob_ids: list[str]) -> None:
    counts: dict[str, int] = {}
    for b in blob_ids:
        counts[b] = counts.get(b, 0) + 1
    db.executemany(
        "UPDATE blob SET refcount = refcount - ? WHERE id = ?", [(n, b) for b, n in counts.items()]
    )
    dead = [
        r[0]
        for r in db.execute(
            "SELECT id FROM blob WHERE refcount <= 0 AND id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(counts)),),
        )
    ]
    if dead:
        db.executemany("DELETE FROM blob WHERE id = ?", [(b,) for b in dead])
        db.executemany("INSERT OR IGNORE INTO blob_trash VALUES (?)", [(b,) for b in dead])
        ctx.trash += dead


def _expunge_job(
    db: sqlite3.Connection,
    ctx: _JobContext,
    account_id: int,
    mailbox_id: int,
    uids: list[int] | None,
    deleted_only: bool,
) -> list[int]:
    _own_mailbox(db, account_id, mailbox_id)
    cond = " AND flags & 8 != 0" if deleted_only else ""
    if uids is None:
        rows = db.execute(
            f"SELECT uid, blob_id FROM message WHERE mailbox_id = ?{cond} ORDER BY uid", (mailbox_id,)
        ).fetchall()
    else:
        rows = db.execute(
            f"SELECT uid, blob_id FROM message WHERE mailbox_id = ?{cond}"
            " AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
            (mailbox_id, json.dumps(uids)),
        ).fetchall()
    _remove(db, ctx, mailbox_id, [(r[0], r[1]) for r in rows])
    return [r[0] for r in rows]


IMPORT_THREADS = 4  # threads writing an import batch's files: their fsyncs overlap


def _import_job(
    db: sqlite3.Connection,
    ctx: _JobContext,
    account_id: int,
    source: str,
    messages: list[ImportedMessage],
    files: list[tuple[str, int, bytes, str]],
) -> list[list[tuple[int, int]] | None]:
    mailbox_ids = {mid for m in messages for mid in m.mailbox_ids}
    owned = {
        r[0]
        for r in db.execute(
            "SELECT id FROM mailbox WHERE account_id = ? AND id IN (SELECT value FROM json_each(?))",
            (account_id, json.dumps(sorted(mailbox_ids))),
        )
    }
    if owned != mailbox_ids:
        raise NotFound("no such mailbox")
    keys = [m.key for m in messages if m.key]
    done = {
        r[0]
        for r in db.execute(
            "SELECT key FROM import_log WHERE account_id = ? AND source = ?"
            " AND key IN (SELECT value FROM json_each(?))",
            (account_id, source, json.dumps(keys)),
        )
    }
    # The copies each mailbox gets, in order: their UIDs are taken in one step per mailbox.
    todo: list[tuple[ImportedMessage, tuple[str, int, bytes, str], tuple[int, ...]]] = []
    per_mailbox: dict[int, int] = {}
    for m, f in zip(messages, files, strict=True):
        if m.key and m.key in done:
            todo.append((m, f, ()))
            continue
        if m.key:
            done.add(m.key)
        targets = tuple(dict.fromkeys(m.mailbox_ids))
        for mid in targets:
            per_mailbox[mid] = per_mailbox.get(mid, 0) + 1
        todo.append((m, f, targets))
    next_uid: dict[int, tuple[int, int]] = {mid: _bump(db, mid, n) for mid, n in per_mailbox.items()}
    now = datetime.now(UTC).astimezone()
    created = int(time.time())
    blob_rows = []
    message_rows = []
    log_rows = []
    keywords: dict[int, set[str]] = {}
    placed: list[list[tuple[int, int]] | None] = []
    for m, (blob_id, size, parsed, sha), targets in todo:
        if not targets:
            placed.append(None)
            continue
        blob_rows.append((blob_id, size, sha, len(targets), parsed, created))
        ctx.new_blobs.append(blob_id)
        bits, kws = split_flags(m.flags)
        when = m.internaldate or now
        stamp, tz = int(when.timestamp()), _tz_minutes(when)
        copies = []
        for mid in targets:
            uid, modseq = next_uid[mid]
            next_uid[mid] = (uid + 1, modseq)
            message_rows.append((mid, uid, blob_id, bits, " ".join(kws), stamp, tz, size, modseq))
            if kws:
                keywords.setdefault(mid, set()).update(kws)
            copies.append((mid, uid))
        if m.key:
            log_rows.append((account_id, source, m.key))
        placed.append(copies)
    db.executemany("INSERT INTO blob VALUES (?, ?, ?, ?, ?, ?)", blob_rows)
    db.executemany("INSERT INTO message VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", message_rows)
    db.executemany("INSERT INTO import_log VALUES (?, ?, ?)", log_rows)
    for mid, kw in keywords.items():
        _add_keywords(db, mid, sorted(kw))
    ctx.touched |= set(per_mailbox)
    return placed


def _drop_mailbox_messages(db: sqlite3.Connection, ctx: _JobContext, mailbox_id: int) -> None:
    blob_ids = [r[0] for r in db.execute("SELECT blob_id FROM message WHERE mailbox_id = ?", (mailbox_id,))]
    db.execute("DELETE FROM message WHERE mailbox_id = ?", (mailbox_id,))
    db.execute("DELETE FROM expunged WHERE mailbox_id = ?", (mailbox_id,))
    if blob_ids:
        _release_blobs(db, ctx, blob_ids)


_RCPT_SELECT = (
    "SELECT id, message_id, address, notify, orcpt, state, attempts, next_attempt, last_error, remote,"
    " delay_notified FROM queue_recipient"
)


def _queued_recipient(r: Sequence[Any]) -> QueuedRecipient:
    notify = tuple(r[3].split(",")) if r[3] else None
    return QueuedRecipient(r[0], r[1], r[2], notify, r[4], r[5], r[6], r[7], r[8], r[9], bool(r[10]))


def _queued_messages(db: sqlite3.Connection, rcpts: list[QueuedRecipient]) -> list[QueuedMessage]:
    by_message: dict[int, list[QueuedRecipient]] = {}
    for rc in rcpts:
        by_message.setdefault(rc.message_id, []).append(rc)
    rows = db.execute(
        "SELECT id, sender, blob_id, size, created, account_id, envid, ret, smtputf8, body8bit FROM queue_message"
        " WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
        (json.dumps(list(by_message)),),
    )
    return [
        QueuedMessage(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9]), tuple(by_message[r[0]])
        )
        for r in rows
    ]


def _queue_message_exists(db: sqlite3.Connection, message_id: int) -> None:
    if db.execute("SELECT 1 FROM queue_message WHERE id = ?", (message_id,)).fetchone() is None:
        raise NotFound(f"no queued message {message_id}")


def _drop_queue_message(db: sqlite3.Connection, ctx: _JobContext, message_id: int) -> None:
    row = db.execute("DELETE FROM queue_message WHERE id = ? RETURNING blob_id", (message_id,)).fetchone()
    if row is not None:
        db.execute("DELETE FROM queue_recipient WHERE message_id = ?", (message_id,))
        _release_blobs(db, ctx, [row[0]])


def _enqueue_job(
    db: sqlite3.Connection,
    ctx: _JobContext,
    blob_id: str,
    size: int,
    parsed: bytes,
    sha: str,
    head: tuple[Any, ...],
    recipients: list[QueueRecipient],
    targets: list[DeliveryTarget],
    when: datetime,
) -> tuple[int, list[tuple[int, int]]]:
    sender, account_id, envid, ret, smtputf8, body8bit, now = head
    placed = _deliver_job(db, ctx, blob_id, size, parsed, sha, targets, when) if targets else []
    if not recipients:
        return 0, placed
    if targets:
        db.execute("UPDATE blob SET refcount = refcount + 1 WHERE id = ?", (blob_id,))
    else:
        _insert_blob(db, ctx, blob_id, size, parsed, sha, 1)
    cur = db.execute(
        "INSERT INTO queue_message (sender, blob_id, size, created, account_id, envid, ret, smtputf8, body8bit)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sender, blob_id, size, now, account_id, envid, ret, int(smtputf8), int(body8bit)),
    )
    message_id = int(cur.lastrowid or 0)
    seen: set[str] = set()
    rows = []
    for rc in recipients:
        if rc.address.lower() in seen:
            continue
        seen.add(rc.address.lower())
        rows.append(
            (
                message_id,
                rc.address,
                rc.address.rpartition("@")[2].lower(),
                ",".join(rc.notify) if rc.notify else None,
                rc.orcpt,
                now,
            )
        )
    db.executemany(
        "INSERT INTO queue_recipient (message_id, address, domain, notify, orcpt, next_attempt)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    return message_id, placed


def _queue_update_job(db: sqlite3.Connection, ctx: _JobContext, updates: list[RecipientUpdate]) -> None:
    messages: set[int] = set()
    for u in updates:
        row = db.execute(
            "UPDATE queue_recipient SET state = ?, next_attempt = ?, last_error = ?, remote = ?,"
            " attempts = max(attempts + ?, ?), delay_notified = coalesce(?, delay_notified) WHERE id = ?"
            " RETURNING message_id",
            (
                u.state,
                u.next_attempt,
                u.last_error,
                u.remote,
                int(u.attempted),
                u.min_attempts,
                None if u.delay_notified is None else int(u.delay_notified),
                u.id,
            ),
        ).fetchone()
        if row is not None:
            messages.add(row[0])
    for message_id in messages:
        waiting = db.execute(
            "SELECT 1 FROM queue_recipient WHERE message_id = ? AND state IN ('queued', 'bounce') LIMIT 1",
            (message_id,),
        ).fetchone()
        if waiting is None:
            _drop_queue_message(db, ctx, message_id)


def _resolve(db: sqlite3.Connection, address: str) -> Recipient | None:
    """Expand aliases (recursively, loop-safe), then the account, ``local+tag``, then the catch-all."""
    accounts: dict[int, Account] = {}
    external: list[str] = []
    visited: set[str] = set()

    def account(addr: str) -> Account | None:
        return _account_where(db, "address", addr)

    def aliases(source: str) -> list[str]:
        return [r[0] for r in db.execute("SELECT target FROM alias WHERE source = ?", (source,))]

    def is_local(domain: str) -> bool:
        return db.execute("SELECT 1 FROM domain WHERE name = ?", (domain,)).fetchone() is not None

    def expand_targets(targets: list[str], depth: int) -> bool:
        found = False
        for t in targets:
            acc = account(t)
            if acc is not None:  # an alias naming an account delivers there, whatever aliases it has
                accounts[acc.id] = acc
                found = True
            elif is_local(t.rpartition("@")[2]):
                found = expand(t, depth + 1) or found
            else:
                if t not in external:
                    external.append(t)
                found = True
        return found

    def expand(addr: str, depth: int) -> bool:
        if addr in visited or depth > MAX_ALIAS_DEPTH:
            return False
        visited.add(addr)
        local, _, domain = addr.rpartition("@")
        candidates = [addr]
        if "+" in local:  # plus-addressing: user+tag@domain reaches user@domain
            candidates.append(local.split("+", 1)[0] + "@" + domain)
        for cand in candidates:
            targets = aliases(cand)
            if targets:
                return expand_targets(targets, depth)
            acc = account(cand)
            if acc is not None:
                accounts[acc.id] = acc
                return True
        # The catch-all takes what nothing else took; not for addresses reached through an alias.
        return depth == 0 and expand_targets(aliases("@" + domain), depth)

    if not expand(address, 0):
        return None
    return Recipient(tuple(accounts.values()), tuple(external))
