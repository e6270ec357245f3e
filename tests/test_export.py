"""homemail export: a Maildir++ tree that Dovecot and neomutt read unchanged."""

from __future__ import annotations

import asyncio
import mailbox
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from harness import require_peer
from homemail.store import DeliveryTarget
from homemail.store.sqlite import SQLiteStore
from peers import DOVECOT_IMAP, dovecot_imap_session, neomutt_batch

WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))


def message(n: int) -> bytes:
    return (
        f"From: Sender <s@example.org>\r\nTo: alice@example.test\r\nSubject: message {n}\r\n"
        f"Message-ID: <{n}@example.org>\r\n\r\nBody of message {n}.\r\nSecond line.\r\n"
    ).encode()


def cli(data: Path, *args: str, input: str | None = None) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "homemail", *args],
        cwd=data,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    cli(root, "domain", "add", "example.test")
    cli(root, "user", "add", "alice@example.test", "--password-stdin", input="pw\n")

    async def fill() -> None:
        store = SQLiteStore(root / "homemail-data")
        await store.open()
        account = await store.get_account("alice@example.test")
        assert account
        for n in range(3):
            await store.deliver(message(n), [DeliveryTarget(account.id)], internaldate=WHEN)
        sent = await store.get_mailbox(account.id, "Sent")
        assert sent
        await store.append(account.id, sent.id, message(10), ["\\Seen", "\\Answered"], WHEN)
        folder = await store.create_mailbox(account.id, "Projekte/Übersicht")
        await store.append(account.id, folder.id, message(20), ["\\Flagged", "Work"], WHEN)
        await store.close()

    asyncio.run(fill())
    out = root / "maildir"
    assert "exported 5 messages" in cli(root, "export", "alice@example.test", str(out))
    return out


def test_layout_flags_and_contents(exported: Path) -> None:
    md = mailbox.Maildir(exported, create=False)
    assert sorted(md.list_folders()) == sorted(
        ["Drafts", "Sent", "Archive", "Junk", "Trash", "Projekte", "Projekte.&ANw-bersicht"]
    )
    inbox = sorted(md, key=lambda m: m["Subject"])
    assert [m["Subject"] for m in inbox] == ["message 0", "message 1", "message 2"]
    assert inbox[0].as_bytes() == message(0).replace(b"\r\n", b"\n")
    assert all(m.get_flags() == "" for m in inbox)
    (sent,) = list(md.get_folder("Sent"))
    assert sent.get_flags() == "RS"
    assert abs(sent.get_date() - WHEN.timestamp()) < 1
    (work,) = list(md.get_folder("Projekte.&ANw-bersicht"))
    assert work.get_flags() == "Fa"
    assert (exported / ".Projekte.&ANw-bersicht" / "dovecot-keywords").read_text() == "0 Work\n"
    assert (exported / ".Sent" / "maildirfolder").exists()


def test_dovecot_reads_the_export(exported: Path) -> None:
    require_peer(DOVECOT_IMAP)
    out = dovecot_imap_session(
        exported,
        [
            'LIST "" "*"',
            "SELECT INBOX",
            "FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
            'SELECT "Projekte.&ANw-bersicht"',
            "FETCH 1 (FLAGS BODY.PEEK[])",
            "SELECT Sent",
            "FETCH 1 (FLAGS INTERNALDATE)",
            "SELECT INBOX",
            "FETCH 1:* (UID FLAGS)",
        ],
    )
    assert '"Projekte.&ANw-bersicht"' in out or "Projekte.&ANw-bersicht" in out
    assert "* 3 EXISTS" in out
    assert "Subject: message 2" in out
    # dovecot-uidlist gives Dovecot our UIDs (so the messages are not \\Recent to it either).
    assert "* 1 FETCH (FLAGS (\\Flagged Work) BODY[] {142}" in out
    assert "Body of message 20.\r\nSecond line." in out
    assert '(FLAGS (\\Answered \\Seen) INTERNALDATE "04-Mar-2026 03:06:07 +0000")' in out
    assert "* 3 FETCH (UID 3 FLAGS ())" in out


def test_neomutt_reads_the_export(exported: Path, tmp_path: Path) -> None:
    require_peer("neomutt", "script")
    target = tmp_path / "piped.txt"
    neomutt_batch(
        [
            "set mbox_type=Maildir",
            "set pipe_decode=no",
            "set sort=subject",
            f'push "<pipe-message>cat > {target}<enter><quit>"',
        ],
        str(exported),
    )
    assert target.read_bytes() == message(0).replace(b"\r\n", b"\n")
