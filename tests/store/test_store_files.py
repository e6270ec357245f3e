"""The path of a new message file: spare files, the writer's clean-up of jobs that did not commit, close."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from homemail.store import DeliveryTarget, NotFound, StoreError
from homemail.store.sqlite import SQLiteStore

MESSAGE = b"From: a@example.org\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nHello Alice.\r\n"


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


def open_store(path: Path, runner: asyncio.Runner, fsync: bool = True) -> tuple[SQLiteStore, int]:
    s = SQLiteStore(path, fsync=fsync)
    runner.run(s.open())
    if not runner.run(s.is_local_domain("example.test")):
        runner.run(s.add_domain("example.test"))
    account = runner.run(s.get_account("alice@example.test"))
    if account is None:
        account = runner.run(s.add_account("alice@example.test", "hash"))
    return s, account.id


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_messages_are_written_into_spare_files_and_unused_ones_go_at_close(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    data = tmp_path / "data"
    s, alice = open_store(data, runner)
    assert files(data / "spare") == []  # made only once messages arrive
    placed = [runner.run(s.deliver(MESSAGE + b"%d\r\n" % i, [DeliveryTarget(alice)])) for i in range(5)]
    assert [p[0][1] for p in placed] == [1, 2, 3, 4, 5]
    assert files(data / "spare") != []  # ready for the next messages
    assert files(data / "incoming") == []
    inbox = runner.run(s.get_mailbox(alice, "INBOX"))
    assert inbox
    infos = runner.run(s.messages(alice, inbox.id))
    assert [runner.run(s.read_blob(m.blob_id)) for m in infos] == [MESSAGE + b"%d\r\n" % i for i in range(5)]
    assert sorted(m.blob_id for m in infos) == files(data / "blobs")
    runner.run(s.close())
    assert files(data / "spare") == []
    assert files(data / "incoming") == []


def test_without_fsync_no_spare_files(tmp_path: Path, runner: asyncio.Runner) -> None:
    data = tmp_path / "data"
    s, alice = open_store(data, runner, fsync=False)
    runner.run(s.deliver(MESSAGE, [DeliveryTarget(alice)]))
    assert files(data / "spare") == []
    assert len(files(data / "blobs")) == 1
    runner.run(s.close())


def test_recovery_publishes_a_committed_file_left_in_spare(tmp_path: Path, runner: asyncio.Runner) -> None:
    data = tmp_path / "data"
    s, alice = open_store(data, runner)
    runner.run(s.deliver(MESSAGE, [DeliveryTarget(alice)]))
    inbox = runner.run(s.get_mailbox(alice, "INBOX"))
    assert inbox
    (msg,) = runner.run(s.messages(alice, inbox.id))
    runner.run(s.close())
    # A crash after the commit, before the move out of spare/; and a spare file never used.
    os.rename(s.blob_path(msg.blob_id), data / "spare" / msg.blob_id)
    (data / "spare" / "0000000000000000deadbeef0000").write_bytes(b"")
    s2, _ = open_store(data, runner)
    assert files(data / "spare") == []
    assert files(data / "blobs") == [msg.blob_id]
    assert runner.run(s2.read_blob(msg.blob_id)) == MESSAGE
    runner.run(s2.close())


def test_failing_job_in_a_batch_rolls_back_alone_and_loses_its_file(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    data = tmp_path / "data"
    s, alice = open_store(data, runner)

    async def together() -> list[list[tuple[int, int]] | BaseException]:
        return list(
            await asyncio.gather(
                s.deliver(MESSAGE, [DeliveryTarget(alice)]),
                s.deliver(MESSAGE, [DeliveryTarget(alice + 1000)]),  # no such account
                s.deliver(MESSAGE, [DeliveryTarget(alice)]),
                return_exceptions=True,
            )
        )

    first, failed, last = runner.run(together())
    assert isinstance(failed, NotFound)
    assert isinstance(first, list) and isinstance(last, list)
    assert sorted(first + last) == [(first[0][0], 1), (first[0][0], 2)]
    assert len(files(data / "blobs")) == 2
    assert files(data / "incoming") == []
    # The same alone: its error, no file left, and the next delivery is unaffected.
    with pytest.raises(NotFound):
        runner.run(s.deliver(MESSAGE, [DeliveryTarget(alice + 1000)]))
    assert runner.run(s.deliver(MESSAGE, [DeliveryTarget(alice)]))[0][1] == 3
    assert len(files(data / "blobs")) == 3
    runner.run(s.close())
    assert files(data / "spare") == [] and files(data / "incoming") == []


def test_closed_store_refuses_work(tmp_path: Path, runner: asyncio.Runner) -> None:
    s, alice = open_store(tmp_path / "data", runner)
    runner.run(s.close())
    with pytest.raises(StoreError):
        runner.run(s.deliver(MESSAGE, [DeliveryTarget(alice)]))
    with pytest.raises(StoreError):
        runner.run(s.resolve("alice@example.test"))
