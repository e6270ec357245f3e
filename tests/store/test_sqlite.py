"""The embedded store: accounts, recipient resolution, messages, flags, MODSEQ, copy/move/expunge, recovery."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from homemail.store import AlreadyExists, DeliveryTarget, FlagOp, Invalid, NotFound
from homemail.store.schema import SCHEMA_VERSION
from homemail.store.sqlite import SQLiteStore

MESSAGE = b"From: a@example.org\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nHello Alice.\r\n"


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


@pytest.fixture
def store(tmp_path: Path, runner: asyncio.Runner) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    runner.run(s.open())
    runner.run(s.add_domain("example.test"))
    yield s
    runner.run(s.close())


def accounts(runner: asyncio.Runner, store: SQLiteStore, *names: str) -> list[int]:
    return [runner.run(store.add_account(f"{n}@example.test", "hash")).id for n in names]


def test_new_account_has_default_mailboxes_with_special_use(
    store: SQLiteStore, runner: asyncio.Runner
) -> None:
    (alice,) = accounts(runner, store, "alice")
    boxes = {m.name: m for m in runner.run(store.list_mailboxes(alice))}
    assert set(boxes) == {"INBOX", "Drafts", "Sent", "Archive", "Junk", "Trash"}
    assert boxes["Junk"].special_use == "\\Junk" and boxes["INBOX"].special_use is None
    assert all(m.subscribed for m in boxes.values())
    assert len({m.uidvalidity for m in boxes.values()}) == 6
    assert runner.run(store.get_mailbox(alice, "inbox")) == boxes["INBOX"]
    assert runner.run(store.get_mailbox(alice, "\\Sent")) == boxes["Sent"]


def test_account_errors(store: SQLiteStore, runner: asyncio.Runner) -> None:
    accounts(runner, store, "alice")
    with pytest.raises(AlreadyExists):
        runner.run(store.add_account("ALICE@Example.Test", "h"))
    with pytest.raises(NotFound):
        runner.run(store.add_account("bob@elsewhere.test", "h"))
    with pytest.raises(ValueError):
        runner.run(store.add_account("no-at-sign", "h"))
    with pytest.raises(Invalid):
        runner.run(store.remove_domain("example.test"))  # still has an account


def test_resolve(store: SQLiteStore, runner: asyncio.Runner) -> None:
    alice, bob = accounts(runner, store, "alice", "bob")
    runner.run(
        store.add_alias("team@example.test", ["alice@example.test", "bob@example.test", "x@remote.test"])
    )
    runner.run(store.add_alias("loop1@example.test", ["loop2@example.test"]))
    runner.run(store.add_alias("loop2@example.test", ["loop1@example.test"]))

    def ids(addr: str) -> set[int] | None:
        r = runner.run(store.resolve(addr))
        return None if r is None else {a.id for a in r.accounts}

    assert ids("alice@example.test") == {alice}
    assert ids("Alice@EXAMPLE.test") == {alice}
    assert ids("alice+news@example.test") == {alice}
    assert ids("nobody@example.test") is None
    assert ids("loop1@example.test") is None
    team = runner.run(store.resolve("team@example.test"))
    assert team is not None and {a.id for a in team.accounts} == {alice, bob}
    assert team.external == ("x@remote.test",)
    runner.run(store.add_alias("@example.test", ["bob@example.test"]))
    assert ids("nobody@example.test") == {bob}
    assert ids("alice@example.test") == {alice}  # the catch-all takes only what nothing else took


def test_deliver_stores_bytes_uids_and_modseq(store: SQLiteStore, runner: asyncio.Runner) -> None:
    alice, bob = accounts(runner, store, "alice", "bob")
    placed = runner.run(
        store.deliver(MESSAGE, [DeliveryTarget(alice), DeliveryTarget(bob, "\\Junk", frozenset({"$Junk"}))])
    )
    inbox = runner.run(store.get_mailbox(alice, "INBOX"))
    junk = runner.run(store.get_mailbox(bob, "Junk"))
    assert inbox and junk
    assert placed == [(inbox.id, 1), (junk.id, 1)]
    (msg,) = runner.run(store.messages(alice, inbox.id))
    assert runner.run(store.read_blob(msg.blob_id)) == MESSAGE
    assert msg.size == len(MESSAGE) and msg.flags == frozenset()
    (bob_msg,) = runner.run(store.messages(bob, junk.id))
    assert bob_msg.flags == {"$Junk"} and bob_msg.blob_id == msg.blob_id  # one file, two references
    parsed = runner.run(store.parsed([msg.blob_id]))[msg.blob_id]
    assert parsed.search.subject == "hello"
    runner.run(store.deliver(MESSAGE, [DeliveryTarget(alice)]))
    status = runner.run(store.mailbox_status(alice, inbox.id))
    assert (status.messages, status.unseen, status.uidnext, status.recent) == (2, 2, 3, 2)
    assert status.highestmodseq > inbox.highestmodseq


def test_append_keeps_flags_and_internal_date(store: SQLiteStore, runner: asyncio.Runner) -> None:
    (alice,) = accounts(runner, store, "alice")
    sent = runner.run(store.get_mailbox(alice, "Sent"))
    assert sent
    when = datetime(2020, 2, 29, 13, 14, 15, tzinfo=timezone(timedelta(hours=-7)))
    uidvalidity, uid = runner.run(
        store.append(alice, sent.id, MESSAGE, ["\\Seen", "\\seen", "Work", "\\Recent"], when)
    )
    assert (uidvalidity, uid) == (sent.uidvalidity, 1)
    (msg,) = runner.run(store.messages(alice, sent.id))
    assert msg.flags == {"\\Seen", "Work"}
    assert msg.internaldate == when and msg.internaldate.utcoffset() == timedelta(hours=-7)
    assert runner.run(store.mailbox_keywords(alice, sent.id)) == ["Work"]


def test_flags_modseq_and_unchangedsince(store: SQLiteStore, runner: asyncio.Runner) -> None:
    (alice,) = accounts(runner, store, "alice")
    inbox = runner.run(store.get_mailbox(alice, "INBOX"))
    assert inbox
    for _ in range(3):
        runner.run(store.deliver(MESSAGE, [DeliveryTarget(alice)]))
    before = runner.run(store.messages(alice, inbox.id))
    r = runner.run(store.store_flags(alice, inbox.id, [1, 2], FlagOp.ADD, ["\\Seen", "Todo"]))
    assert [u.uid for u in r.updated] == [1, 2] and r.modified == []
    new_modseq = r.updated[0].modseq
    assert new_modseq > max(m.modseq for m in before)
    # Nothing changes: the MODSEQ stays (RFC 7162 3.1.3).
    again = runner.run(store.store_flags(alice, inbox.id, [1, 2], FlagOp.ADD, ["\\Seen"]))
    assert again.updated == []
    # UNCHANGEDSINCE older than message 1's MODSEQ: refused for 1, done for 3.
    r = runner.run(
        store.store_flags(alice, inbox.id, [1, 3], FlagOp.SET, ["\\Flagged"], unchangedsince=new_modseq - 1)
    )
    assert r.modified == [1] and [u.uid for u in r.updated] == [3]
    r = runner.run(store.store_flags(alice, inbox.id, [2], FlagOp.REMOVE, ["Todo"]))
    assert r.updated[0].flags == {"\\Seen"}
    changes = runner.run(store.changes(alice, inbox.id, new_modseq))
    assert [m.uid for m in changes.changed] == [2, 3] and changes.expunged == []


def test_copy_move_expunge_and_file_lifetime(store: SQLiteStore, runner: asyncio.Runner) -> None:
    (alice,) = accounts(runner, store, "alice")
    inbox = runner.run(store.get_mailbox(alice, "INBOX"))
    archive = runner.run(store.get_mailbox(alice, "Archive"))
    assert inbox and archive
    for _ in range(4):
        runner.run(store.deliver(MESSAGE, [DeliveryTarget(alice)]))
    msgs = runner.run(store.messages(alice, inbox.id))
    copied = runner.run(store.copy(alice, inbox.id, [1, 2], archive.id))
    assert copied.uidvalidity == archive.uidvalidity and copied.pairs == [(1, 1), (2, 2)]
    moved = runner.run(store.move(alice, inbox.id, [3], archive.id))
    assert moved.pairs == [(3, 3)]
    assert runner.run(store.list_uids(alice, inbox.id)) == [1, 2, 4]
    modseq = runner.run(store.mailbox_status(alice, inbox.id)).highestmodseq
    runner.run(store.store_flags(alice, inbox.id, [1, 4], FlagOp.ADD, ["\\Deleted"]))
    assert runner.run(store.expunge(alice, inbox.id, [4, 2])) == [4]
    assert runner.run(store.expunge(alice, inbox.id)) == [1]
    changes = runner.run(store.changes(alice, inbox.id, modseq))
    assert changes.expunged == [1, 4] and changes.changed == []
    assert runner.run(store.changes(alice, inbox.id, 0)).expunged == [1, 3, 4]
    # Message 4 had one reference: its file is gone. Message 1 lives on in Archive.
    assert not os.path.exists(store.blob_path(msgs[3].blob_id))
    assert runner.run(store.read_blob(msgs[0].blob_id)) == MESSAGE
    runner.run(store.store_flags(alice, archive.id, [1], FlagOp.ADD, ["\\Deleted"]))
    runner.run(store.expunge(alice, archive.id))
    assert not os.path.exists(store.blob_path(msgs[0].blob_id))
    # UIDs are never reused.
    runner.run(store.deliver(MESSAGE, [DeliveryTarget(alice)]))
    assert runner.run(store.list_uids(alice, inbox.id)) == [2, 5]


def test_claim_recent(store: SQLiteStore, runner: asyncio.Runner) -> None:
    (alice,) = accounts(runner, store, "alice")
    inbox = runner.run(store.get_mailbox(alice, "INBOX"))
    assert inbox
    runner.run(store.deliver(MESSAGE, [DeliveryTarget(alice)]))
    assert runner.run(store.claim_recent(alice, inbox.id)) == 1
    runner.run(store.deliver(MESSAGE, [DeliveryTarget(alice)]))
    assert runner.run(store.mailbox_status(alice, inbox.id)).recent == 1
    assert runner.run(store.claim_recent(alice, inbox.id)) == 2
    assert runner.run(store.claim_recent(alice, inbox.id)) == 3


def test_mailbox_hierarchy(store: SQLiteStore, runner: asyncio.Runner) -> None:
    (alice,) = accounts(runner, store, "alice")
    runner.run(store.create_mailbox(alice, "Projects/2026/Q4"))
    names = {m.name for m in runner.run(store.list_mailboxes(alice))}
    assert {"Projects", "Projects/2026", "Projects/2026/Q4"} <= names
    with pytest.raises(AlreadyExists):
        runner.run(store.create_mailbox(alice, "Projects"))
    with pytest.raises(Invalid):
        runner.run(store.create_mailbox(alice, "bad//name"))
    old = runner.run(store.get_mailbox(alice, "Projects/2026"))
    runner.run(store.rename_mailbox(alice, "Projects", "Work/Old"))
    names = {m.name for m in runner.run(store.list_mailboxes(alice))}
    assert {"Work", "Work/Old", "Work/Old/2026", "Work/Old/2026/Q4"} <= names and "Projects" not in names
    renamed = runner.run(store.get_mailbox(alice, "Work/Old/2026"))
    assert old and renamed and renamed.id == old.id and renamed.uidvalidity == old.uidvalidity
    # Deleting and re-creating a name gives a new UIDVALIDITY.
    runner.run(store.delete_mailbox(alice, "Work/Old/2026/Q4"))
    q4 = runner.run(store.create_mailbox(alice, "Work/Old/2026/Q4"))
    assert q4.uidvalidity > renamed.uidvalidity
    with pytest.raises(Invalid):
        runner.run(store.delete_mailbox(alice, "inbox"))


def test_rename_inbox_moves_messages(store: SQLiteStore, runner: asyncio.Runner) -> None:
    (alice,) = accounts(runner, store, "alice")
    inbox = runner.run(store.get_mailbox(alice, "INBOX"))
    assert inbox
    runner.run(store.deliver(MESSAGE, [DeliveryTarget(alice)]))
    runner.run(store.rename_mailbox(alice, "INBOX", "Old Inbox"))
    old = runner.run(store.get_mailbox(alice, "Old Inbox"))
    assert old
    assert runner.run(store.list_uids(alice, inbox.id)) == []
    assert len(runner.run(store.list_uids(alice, old.id))) == 1
    assert runner.run(store.get_mailbox(alice, "INBOX")) is not None


def test_one_account_cannot_reach_another(store: SQLiteStore, runner: asyncio.Runner) -> None:
    alice, mallory = accounts(runner, store, "alice", "mallory")
    inbox = runner.run(store.get_mailbox(alice, "INBOX"))
    mine = runner.run(store.get_mailbox(mallory, "INBOX"))
    assert inbox and mine
    runner.run(store.deliver(MESSAGE, [DeliveryTarget(alice)]))
    attempts = [
        store.messages(mallory, inbox.id),
        store.list_uids(mallory, inbox.id),
        store.mailbox_status(mallory, inbox.id),
        store.changes(mallory, inbox.id, 0),
        store.store_flags(mallory, inbox.id, [1], FlagOp.ADD, ["\\Seen"]),
        store.copy(mallory, inbox.id, [1], mine.id),
        store.move(mallory, inbox.id, [1], mine.id),
        store.copy(alice, inbox.id, [1], mine.id),
        store.expunge(mallory, inbox.id),
        store.append(mallory, inbox.id, MESSAGE),
        store.claim_recent(mallory, inbox.id),
    ]
    for coro in attempts:
        with pytest.raises(NotFound):
            runner.run(coro)
    assert runner.run(store.list_uids(alice, inbox.id)) == [1]
    assert runner.run(store.list_uids(mallory, mine.id)) == []


def test_concurrent_deliveries_share_commits(store: SQLiteStore, runner: asyncio.Runner) -> None:
    (alice,) = accounts(runner, store, "alice")
    commits_before = store._own_commits

    async def many() -> None:
        await asyncio.gather(*(store.deliver(MESSAGE, [DeliveryTarget(alice)]) for _ in range(200)))

    runner.run(many())
    commits = store._own_commits - commits_before
    assert commits < 200, commits  # group commit: several deliveries per transaction
    inbox = runner.run(store.get_mailbox(alice, "INBOX"))
    assert inbox and runner.run(store.list_uids(alice, inbox.id)) == list(range(1, 201))


def test_watchers_hear_committed_changes(store: SQLiteStore, runner: asyncio.Runner) -> None:
    (alice,) = accounts(runner, store, "alice")
    inbox = runner.run(store.get_mailbox(alice, "INBOX"))
    assert inbox
    heard: list[int] = []

    async def go() -> None:
        unwatch = store.watch(inbox.id, heard.append)
        await store.deliver(MESSAGE, [DeliveryTarget(alice)])
        assert heard == [inbox.id]
        unwatch()
        await store.deliver(MESSAGE, [DeliveryTarget(alice)])

    runner.run(go())
    assert heard == [inbox.id]


def test_recovery_removes_unacknowledged_files_and_publishes_committed(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    s = SQLiteStore(tmp_path / "data")
    runner.run(s.open())
    runner.run(s.add_domain("example.test"))
    alice = runner.run(s.add_account("alice@example.test", "h")).id
    runner.run(s.deliver(MESSAGE, [DeliveryTarget(alice)]))
    inbox = runner.run(s.get_mailbox(alice, "INBOX"))
    assert inbox
    (msg,) = runner.run(s.messages(alice, inbox.id))
    runner.run(s.close())
    # A crash before the commit: a file no row points to. A crash after it, before the move: a committed
    # file still in incoming/.
    orphan = s.blobs.incoming_path("0000000000000000deadbeef0000")
    Path(orphan).write_bytes(b"partial")
    os.rename(s.blob_path(msg.blob_id), s.blobs.incoming_path(msg.blob_id))
    s2 = SQLiteStore(tmp_path / "data")
    runner.run(s2.open())
    assert not os.path.exists(orphan)
    assert os.listdir(s2.blobs.incoming) == []
    assert runner.run(s2.read_blob(msg.blob_id)) == MESSAGE
    runner.run(s2.close())


def test_schema_version_and_newer_database_refused(tmp_path: Path, runner: asyncio.Runner) -> None:
    s = SQLiteStore(tmp_path / "data")
    runner.run(s.open())
    runner.run(s.close())
    db = sqlite3.connect(tmp_path / "data" / "homemail.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        runner.run(SQLiteStore(tmp_path / "data").open())


def test_internal_date_defaults_to_now(store: SQLiteStore, runner: asyncio.Runner) -> None:
    (alice,) = accounts(runner, store, "alice")
    runner.run(store.deliver(MESSAGE, [DeliveryTarget(alice)]))
    inbox = runner.run(store.get_mailbox(alice, "INBOX"))
    assert inbox
    (msg,) = runner.run(store.messages(alice, inbox.id))
    assert abs((datetime.now(UTC) - msg.internaldate).total_seconds()) < 60
