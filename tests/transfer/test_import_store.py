"""Store.import_messages: a batch in one commit with its import log, copies sharing one message file, keys that
make a rerun skip, and refusals that leave nothing behind."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homemail.store import ImportedMessage, NotFound
from homemail.store.sqlite import SQLiteStore


def msg(n: int) -> bytes:
    return f"Subject: {n}\r\nMessage-ID: <{n}@example.org>\r\n\r\nbody {n}\r\n".encode()


async def setup(path: Path) -> tuple[SQLiteStore, int, int, int, int]:
    store = SQLiteStore(path, fsync=False)
    await store.open()
    await store.add_domain("example.test")
    alice = await store.add_account("alice@example.test", "x")
    bob = await store.add_account("bob@example.test", "x")
    inbox = await store.get_mailbox(alice.id, "INBOX")
    work = await store.create_mailbox(alice.id, "Work")
    bob_inbox = await store.get_mailbox(bob.id, "INBOX")
    assert inbox and bob_inbox
    return store, alice.id, inbox.id, work.id, bob_inbox.id


def test_copies_keys_and_reruns(tmp_path: Path) -> None:
    async def run() -> None:
        store, alice, inbox, work, _ = await setup(tmp_path)
        when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
        batch = [
            ImportedMessage(msg(1), (inbox, work), frozenset({"\\Seen", "Label"}), when, "k1"),
            ImportedMessage(msg(2), (work,), frozenset(), None, "k2"),
            ImportedMessage(msg(3), (inbox,), frozenset(), when, "k2"),  # the same key again in the batch
            ImportedMessage(msg(4), (inbox,), frozenset(), when, ""),  # no key: not recorded
        ]
        placed = await store.import_messages(alice, "src", batch)
        assert placed == [[(inbox, 1), (work, 1)], [(work, 2)], None, [(inbox, 2)]]
        assert await store.imported_keys(alice, "src") == {"k1", "k2"}
        assert await store.imported_keys(alice, "other") == set()
        m1, _ = await store.messages(alice, inbox)
        w1, _ = await store.messages(alice, work)
        assert m1.blob_id == w1.blob_id  # one file for both copies
        assert m1.flags == {"\\Seen", "Label"} and m1.internaldate == when and w1.flags == m1.flags
        assert await store.mailbox_keywords(alice, inbox) == ["Label"]
        # Expunging one copy keeps the other readable.
        await store.remove_messages(alice, inbox, [1])
        assert await store.read_blob(w1.blob_id) == msg(1)
        # A rerun skips what the log has; another source does not.
        again = await store.import_messages(alice, "src", batch[:2])
        assert again == [None, None]
        other = await store.import_messages(alice, "other", batch[1:2])
        assert other == [[(work, 3)]]
        await store.close()

    asyncio.run(run())


def test_a_mailbox_of_another_account_is_refused_and_nothing_stays(tmp_path: Path) -> None:
    async def run() -> None:
        store, alice, inbox, _, bob_inbox = await setup(tmp_path)
        batch = [
            ImportedMessage(msg(1), (inbox,), key="a"),
            ImportedMessage(msg(2), (bob_inbox,), key="b"),
        ]
        with pytest.raises(NotFound):
            await store.import_messages(alice, "src", batch)
        assert await store.messages(alice, inbox) == []
        assert await store.imported_keys(alice, "src") == set()
        assert list((tmp_path / "incoming").iterdir()) == []
        await store.close()

    asyncio.run(run())


def test_removing_the_account_drops_its_log(tmp_path: Path) -> None:
    async def run() -> None:
        store, alice, inbox, _, _ = await setup(tmp_path)
        await store.import_messages(alice, "src", [ImportedMessage(msg(1), (inbox,), key="a")])
        await store.remove_account("alice@example.test")
        again = await store.add_account("alice@example.test", "x")
        assert await store.imported_keys(again.id, "src") == set()
        assert await store.imported_keys(alice, "src") == set()
        await store.close()

    asyncio.run(run())
