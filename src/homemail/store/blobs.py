"""Message files: written once (temp -> fsync -> rename), read many times, never rewritten.

Layout under the data folder:
  incoming/<id>      written and fsync'd before the database commit that references it
  spare/<id>         empty files made in advance, their names already durable; with fsync on, a new message is
                     written into one of them instead of incoming/, so its commit waits for no directory fsync
  blobs/<xy>/<id>    moved here after that commit; ``xy`` is the last two hex digits of the id

The database row is the commit point. At start, :meth:`BlobFiles.recover` finishes the move of every file in
incoming/ and spare/ that the database knows and deletes the others (files of messages never acknowledged, and
spare files never used).

Why spare files: a new file's name is durable only after an fsync of its directory, and on ext4 that fsync is
one more journal commit in the path of every acknowledgement (file, directory, then the database's WAL). Names
made in advance, 64 at a time under one directory fsync, take it out of that path.

Recovery only runs when no other process has the store open (``store.lock``, see :meth:`BlobFiles.lock`): the
CLI opens the store while the server runs, and the server's incoming/ then holds files of commits in progress.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SPARE_FILES = 128  # spare files kept ready once messages arrive (fsync on)
SPARE_REFILL = 64  # more are made when fewer than this are left


def new_blob_id() -> str:
    # Time first so ids sort by when the file was made (spare files: a little before their message arrives);
    # 48 random bits so two processes never collide.
    return f"{time.time_ns():016x}{secrets.token_hex(6)}"


class BlobFiles:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.blobs = root / "blobs"
        self.fsync = fsync
        self.spare = root / "spare"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.spare.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self._spares: collections.deque[str] = collections.deque()  # ready to be written, names durable
        self._from_spare: set[str] = set()  # written into a spare file, not yet moved into place
        self._spare_cv = threading.Condition()
        self._spare_maker: threading.Thread | None = None
        self._spare_stop = False

    def lock(self) -> bool:
        """Take the data folder's lock; True when this is the only process with the store open, so
        :meth:`recover` may run. Call :meth:`share` after recovery and :meth:`unlock` at close.

        Every open store holds a shared lock on ``store.lock``; recovery needs the exclusive one. Without it, a
        CLI command run while the server takes mail deleted the server's fsync'd but not yet committed files
        (as "never committed") or moved its just-committed ones (as "not yet moved"): the commit then named a
        missing file, the writer thread died on the failed move and every later delivery hung.
        """
        fd = os.open(self.root / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            # Waits only while another process runs its recovery, then shares the folder with it.
            fcntl.flock(fd, fcntl.LOCK_SH)
            alone = False
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        return alone

    def share(self) -> None:
        """Let other processes open the store (after recovery)."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def path(self, blob_id: str) -> str:
        return os.path.join(self.blobs, blob_id[-2:], blob_id)

    def incoming_path(self, blob_id: str) -> str:
        return os.path.join(self.incoming, blob_id)

    def spare_path(self, blob_id: str) -> str:
        return os.path.join(self.spare, blob_id)

    def _unpublished_path(self, blob_id: str) -> str:
        return self.spare_path(blob_id) if blob_id in self._from_spare else self.incoming_path(blob_id)

    def write_new(self, data: bytes) -> str:
        """Write a new message file and fsync it; returns its id. Runs in a worker thread.

        With fsync on, the file is a spare one when one is ready: its name is durable already (see
        :meth:`name_durable`). Otherwise a new file in incoming/, which :meth:`sync_incoming_dir` makes durable.
        """
        blob_id = self._take_spare() if self.fsync else None
        if blob_id is None:
            return self.write_incoming(data)
        try:
            fd = os.open(self.spare_path(blob_id), os.O_WRONLY)
        except OSError:
            return self.write_incoming(data)
        self._from_spare.add(blob_id)
        try:
            _write_all(fd, data, fsync=True)
        except BaseException:
            self.discard_incoming(blob_id)
            raise
        return blob_id

    def write_incoming(self, data: bytes) -> str:
        """Write a new message file to incoming/ and fsync it; returns its id. Runs in a worker thread."""
        blob_id = new_blob_id()
        fd = os.open(self.incoming_path(blob_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        _write_all(fd, data, self.fsync)
        return blob_id

    def name_durable(self, blob_id: str) -> bool:
        """Whether a file of :meth:`write_new` needs no :meth:`sync_incoming_dir` before its commit."""
        return blob_id in self._from_spare

    def sync_incoming_dir(self) -> None:
        """Make the names of the files just written durable (before the commit that references them)."""
        if self.fsync:
            _fsync_dir(self.incoming)

    def publish(self, blob_ids: Iterable[str]) -> None:
        """Move committed files from incoming/ or spare/ to their place. Losing this move in a crash is repaired
        by :meth:`recover`, so it needs no fsync of its own."""
        for blob_id in blob_ids:
            src, dest = self._unpublished_path(blob_id), self.path(blob_id)
            try:
                os.rename(src, dest)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.rename(src, dest)
            self._from_spare.discard(blob_id)

    def discard_incoming(self, blob_id: str) -> None:
        """Remove a new file whose commit failed."""
        try:
            os.unlink(self._unpublished_path(blob_id))
        except FileNotFoundError:
            pass
        self._from_spare.discard(blob_id)

    def delete(self, blob_ids: Iterable[str]) -> None:
        for blob_id in blob_ids:
            for p in (self.path(blob_id), self.incoming_path(blob_id), self.spare_path(blob_id)):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    def read(self, blob_id: str) -> bytes:
        # Committed but not yet moved (the mover runs right after the commit): still in incoming/ or spare/.
        for path in (self.path(blob_id), self.incoming_path(blob_id)):
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                pass
        with open(self.spare_path(blob_id), "rb") as f:
            return f.read()

    def recover(self, is_committed: Callable[[list[str]], set[str]]) -> tuple[int, int]:
        """Finish or undo what a crash interrupted. Returns (files published, files deleted); unused spare
        files count as deleted."""
        published = deleted = 0
        subs: set[str] = set()
        for folder in (self.incoming, self.spare):
            names = [n for n in os.listdir(folder) if not n.startswith(".")]
            committed = is_committed(names) if names else set()
            for name in names:
                if name in committed:
                    dest = self.path(name)
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    os.rename(os.path.join(folder, name), dest)
                    subs.add(name[-2:])
                    published += 1
                else:
                    os.unlink(os.path.join(folder, name))
                    deleted += 1
        if self.fsync:
            for sub in subs:
                _fsync_dir(self.blobs / sub)
        return published, deleted

    # --- spare files ---

    def _take_spare(self) -> str | None:
        """A spare file's id, or None when none is ready. The first call starts the thread that makes them."""
        with self._spare_cv:
            if self._spare_stop:
                return None
            if self._spare_maker is None:
                self._spare_maker = threading.Thread(
                    target=self._make_spares, name="store-spare", daemon=True
                )
                self._spare_maker.start()
            blob_id = self._spares.popleft() if self._spares else None
            if len(self._spares) < SPARE_REFILL:
                self._spare_cv.notify()
            return blob_id

    def _make_spares(self) -> None:
        while True:
            with self._spare_cv:
                while not self._spare_stop and len(self._spares) >= SPARE_REFILL:
                    self._spare_cv.wait()
                if self._spare_stop:
                    return
                n = SPARE_FILES - len(self._spares)
            names: list[str] = []
            try:
                for _ in range(n):
                    blob_id = new_blob_id()
                    os.close(os.open(self.spare_path(blob_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                    names.append(blob_id)
                _fsync_dir(self.spare)
            except OSError as e:
                log.warning("cannot make spare message files in %s: %s", self.spare, e)
                self._unlink_spares(names)
                with self._spare_cv:
                    self._spare_cv.wait(5.0)  # messages go to incoming/ meanwhile
                continue
            with self._spare_cv:
                if not self._spare_stop:
                    self._spares.extend(names)
                    names = []
            self._unlink_spares(names)

    def stop_spares(self) -> None:
        """Stop making spare files and remove the unused ones (at close, after the last write)."""
        with self._spare_cv:
            self._spare_stop = True
            self._spare_cv.notify_all()
            maker = self._spare_maker
        if maker is not None:
            maker.join()
        with self._spare_cv:
            unused = list(self._spares)
            self._spares.clear()
        self._unlink_spares(unused)

    def _unlink_spares(self, names: Iterable[str]) -> None:
        for name in names:
            try:
                os.unlink(self.spare_path(name))
            except FileNotFoundError:
                pass


def _write_all(fd: int, data: bytes, fsync: bool) -> None:
    """Write ``data`` to ``fd``, fsync it when asked, and close it."""
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
