"""Message files: written once (temp -> fsync -> rename), read many times, never rewritten.

Layout under the data folder:
  incoming/<id>      written and fsync'd before the database commit that references it
  blobs/<xy>/<id>    moved here after that commit; ``xy`` is the last two hex digits of the id

The database row is the commit point. At start, :meth:`BlobFiles.recover` finishes the move of every file in
incoming/ that the database knows and deletes the others (files of messages never acknowledged).

Recovery only runs when no other process has the store open (``store.lock``, see :meth:`BlobFiles.lock`): the
CLI opens the store while the server runs, and the server's incoming/ then holds files of commits in progress.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def new_blob_id() -> str:
    # Time first so ids sort by arrival; 48 random bits so two processes never collide.
    return f"{time.time_ns():016x}{secrets.token_hex(6)}"


class BlobFiles:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.blobs = root / "blobs"
        self.fsync = fsync
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None

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

    def write_incoming(self, data: bytes) -> str:
        """Write a new message file to incoming/ and fsync it; returns its id. Runs in a worker thread."""
        blob_id = new_blob_id()
        fd = os.open(self.incoming_path(blob_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return blob_id

    def sync_incoming_dir(self) -> None:
        """Make the names of the files just written durable (before the commit that references them)."""
        if self.fsync:
            _fsync_dir(self.incoming)

    def publish(self, blob_ids: Iterable[str]) -> None:
        """Move committed files from incoming/ to their place. Losing this move in a crash is repaired by
        :meth:`recover`, so it needs no fsync of its own."""
        for blob_id in blob_ids:
            dest = self.path(blob_id)
            try:
                os.rename(self.incoming_path(blob_id), dest)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.rename(self.incoming_path(blob_id), dest)

    def discard_incoming(self, blob_id: str) -> None:
        try:
            os.unlink(self.incoming_path(blob_id))
        except FileNotFoundError:
            pass

    def delete(self, blob_ids: Iterable[str]) -> None:
        for blob_id in blob_ids:
            for p in (self.path(blob_id), self.incoming_path(blob_id)):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    def read(self, blob_id: str) -> bytes:
        try:
            with open(self.path(blob_id), "rb") as f:
                return f.read()
        except FileNotFoundError:
            # Committed but not yet moved (the mover runs right after the commit).
            with open(self.incoming_path(blob_id), "rb") as f:
                return f.read()

    def recover(self, is_committed: Callable[[list[str]], set[str]]) -> tuple[int, int]:
        """Finish or undo what a crash interrupted. Returns (files published, files deleted)."""
        names = [n for n in os.listdir(self.incoming) if not n.startswith(".")]
        committed = is_committed(names) if names else set()
        published = deleted = 0
        for name in names:
            if name in committed:
                self.publish([name])
                published += 1
            else:
                os.unlink(self.incoming_path(name))
                deleted += 1
        if published and self.fsync:
            for sub in {name[-2:] for name in committed}:
                _fsync_dir(self.blobs / sub)
        return published, deleted


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
