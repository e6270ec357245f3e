"""Export then import: ``homemail export --format maildir|mbox`` read back by ``homemail import`` into a fresh
account gives the same folders, byte-identical messages, the same flags and internal dates. And a Maildir++
tree as Dovecot and Courier leave it (new/ and cur/, info flags, dovecot-keywords, mtimes, subscriptions)."""

from __future__ import annotations

import mailbox
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from transfer_helpers import Home, Stored

CEST = timezone(timedelta(hours=2))
PDT = timezone(timedelta(hours=-7))


def msg(n: int, body: str = "", extra: str = "") -> bytes:
    return (
        f"Return-Path: <sender{n}@example.org>\r\nFrom: Sender <sender{n}@example.org>\r\nTo: alice@example.test\r\n"
        f"Subject: message {n}\r\nMessage-ID: <{n}@example.org>\r\n{extra}\r\n"
        f"{body or f'Body of message {n}.'}\r\n"
    ).encode()


CONTENT = {
    "INBOX": [
        (msg(1), frozenset(), datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (msg(2, "From the start of a line\r\n>From quoted\r\n>>From twice\r\nFrom "), frozenset({"\\Seen"}),
         datetime(2024, 2, 3, 4, 5, 6, tzinfo=CEST)),
        (msg(3, ".\r\n..\r\n\r\n\r\nends with empty lines\r\n\r\n"), frozenset({"\\Answered", "\\Flagged", "$Label1", "Work"}),
         datetime(2023, 12, 31, 23, 59, 59, tzinfo=PDT)),
        (msg(4, "8-bit: Grüße, 日本語", "Content-Type: text/plain; charset=utf-8\r\n"), frozenset({"\\Seen", "\\Deleted"}),
         datetime(2020, 2, 29, 12, 0, 0, tzinfo=UTC)),
    ],
    "Sent": [(msg(10), frozenset({"\\Seen"}), datetime(2024, 5, 6, 7, 8, 9, tzinfo=CEST))],
    "Drafts": [(msg(11), frozenset({"\\Draft", "\\Seen"}), datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC))],
    "Projekte/Übersicht": [(msg(20), frozenset({"\\Flagged", "Work"}), datetime(2026, 3, 4, 5, 6, 7, tzinfo=CEST))],
    "Projekte/Übersicht/2026": [(msg(21), frozenset(), datetime(2026, 3, 4, 5, 6, 8, tzinfo=UTC))],
    "Leer": [],
    "a.b & c": [(msg(30), frozenset({"\\Seen"}), datetime(2021, 6, 7, 8, 9, 10, tzinfo=UTC))],
}  # fmt: skip


def comparable(state: dict[str, list[Stored]]) -> dict[str, list[tuple[bytes, frozenset[str], float]]]:
    return {name: [(m.data, m.flags, m.when) for m in messages] for name, messages in state.items()}


@pytest.fixture(scope="module")
def original(home: Home) -> str:
    user = home.new_account("orig")
    home.fill(user, CONTENT)
    return user


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_export_then_import_gives_the_same_account(
    home: Home, original: str, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / fmt
    r = home.cli("export", original, str(out), "--format", fmt)
    assert "exported 9 messages in 11 folders" in r.stdout
    copy = home.new_account("copy")
    r = home.cli("import", copy, str(out))
    assert re.search(r"imported 9 messages \(9 copies in 6 folders\), 0 already there, 0 broken", r.stdout), (
        r.stdout
    )
    before, after = home.state(original), home.state(copy)
    assert comparable(after) == comparable(before)
    if fmt == "mbox":  # the zone of each internal date travels in the From_ line too
        offsets = [m.internaldate.utcoffset() for f in before.values() for m in f]
        assert [m.internaldate.utcoffset() for f in after.values() for m in f] == offsets
    # Run again: nothing twice.
    again = home.cli("import", copy, str(out))
    assert "imported 0 messages" in again.stdout and "9 already there" in again.stdout


def test_mbox_export_layout(home: Home, original: str, tmp_path: Path) -> None:
    out = tmp_path / "mbox"
    home.cli("export", original, str(out), "--format", "mbox")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.mbox"))
    assert files == sorted(
        ["INBOX.mbox", "Sent.mbox", "Drafts.mbox", "Archive.mbox", "Junk.mbox", "Trash.mbox", "Leer.mbox",
         "Projekte.mbox", "Projekte/Übersicht.mbox", "Projekte/Übersicht/2026.mbox", "a.b & c.mbox"]
    )  # fmt: skip
    raw = (out / "INBOX.mbox").read_bytes()
    assert raw.startswith(b"From sender1@example.org Tue Jan 02 03:04:05 +0000 2024\n")
    assert b"\nFrom sender2@example.org Sat Feb 03 04:05:06 +0200 2024\nStatus: RO\nReturn-Path:" in raw
    # mboxrd: every ">*From " line of a body gets one more ">"; LF line ends; an empty line between messages.
    assert b"\n>From the start of a line\n>>From quoted\n>>>From twice\n>From \n\n" in raw
    assert b"\r\n" not in raw
    assert b"X-Status: AF\nX-Keywords: $Label1 Work\n" in raw
    # Python's mailbox module reads it (as mboxo: it does not unquote, so compare headers only).
    box = mailbox.mbox(out / "INBOX.mbox", create=False)
    assert [m["Subject"] for m in box] == ["message 1", "message 2", "message 3", "message 4"]
    assert box[1].get_flags() == "RO" and box[2].get_flags() == "AF"


def test_dovecot_style_maildir(home: Home, tmp_path: Path) -> None:
    root = tmp_path / "Maildir"

    def put(folder: str, sub: str, name: str, data: bytes, when: datetime) -> None:
        d = root / folder / sub
        d.mkdir(parents=True, exist_ok=True)
        path = d / name
        path.write_bytes(data)
        os.utime(path, (when.timestamp(), when.timestamp()))

    for folder in ("", ".Archive.2023", ".Work", ".&AMQ-rger"):
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    t1 = datetime(2023, 3, 4, 5, 6, 7, tzinfo=UTC)
    put("", "new", "1700000000.M1P1.host,S=40", b"Subject: new one\n\nunread, in new/\n", t1)
    put("", "cur", "1700000001.M2P1.host,S=40,W=42:2,FRS", b"Subject: flagged\r\n\r\nCRLF on disk\r\n", t1)
    put("", "cur", "1700000002.M3P1.host:2,DT", b"Subject: draft\n\ndeleted draft\n", t1)
    put("", "cur", "1700000003.M4P1.host:2,Sab", b"Subject: keywords\n\nwith keywords\n", t1)
    put("", "cur", "1700000004.M5P1.host:2,S", b"", t1)  # empty: broken
    put("", "cur", ".hidden", b"Subject: dot file\n\nnot a message\n", t1)
    put("", "tmp", "1700000005.M6P1.host", b"Subject: tmp\n\nnot delivered yet\n", t1)
    (root / "dovecot-keywords").write_text("0 $Label1\n1 Work\n")
    (root / "dovecot-uidlist").write_text("3 V1 N5\n")
    put(
        ".Archive.2023",
        "cur",
        "1600000000.M7P1.host:2,S",
        b"Subject: archived\n\nold\n",
        datetime(2020, 1, 1, tzinfo=UTC),
    )
    put(".&AMQ-rger", "cur", "1600000001.M8P1.host!2,R", b"Subject: umlaut folder\n\nx\n", t1)
    (root / "subscriptions").write_text("V\t2\n\nWork\n&AMQ-rger\n")
    user = home.new_account()
    r = home.cli("import", user, str(root), check=False)
    assert r.returncode == 2
    assert "imported 6 messages (6 copies in 3 folders), 0 already there, 1 broken" in r.stdout
    assert "1700000004.M5P1.host:2,S: empty message" in r.stderr
    state = home.state(user)
    inbox = {m.data.split(b"\r\n")[0].decode(): m for m in state["INBOX"]}
    assert set(inbox) == {"Subject: new one", "Subject: flagged", "Subject: draft", "Subject: keywords"}
    assert inbox["Subject: new one"].flags == frozenset()
    assert inbox["Subject: new one"].data == b"Subject: new one\r\n\r\nunread, in new/\r\n"
    assert inbox["Subject: flagged"].flags == {"\\Flagged", "\\Answered", "\\Seen"}
    assert inbox["Subject: flagged"].data == b"Subject: flagged\r\n\r\nCRLF on disk\r\n"
    assert inbox["Subject: draft"].flags == {"\\Draft", "\\Deleted"}
    assert inbox["Subject: keywords"].flags == {"\\Seen", "$Label1", "Work"}
    assert all(m.internaldate == t1 for m in inbox.values())
    assert [m.flags for m in state["Archive/2023"]] == [frozenset({"\\Seen"})]
    assert state["Archive/2023"][0].internaldate == datetime(2020, 1, 1, tzinfo=UTC)
    assert [m.flags for m in state["Ärger"]] == [frozenset({"\\Answered"})]
    assert "Work" in state and state["Work"] == []
    assert {"Work", "Ärger"} <= set(home.subscriptions(user))
    # A client moved a message from new/ to cur/ and set flags meanwhile: still the same message.
    os.rename(root / "new" / "1700000000.M1P1.host,S=40", root / "cur" / "1700000000.M1P1.host,S=40:2,S")
    again = home.cli("import", user, str(root), check=False)
    assert "imported 0 messages" in again.stdout and "6 already there, 1 broken" in again.stdout
