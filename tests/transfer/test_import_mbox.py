"""homemail import from mbox files: Gmail Takeout (labels to folders and flags), mboxrd/mboxo quoting, broken
entries, the progress bar, and an import killed half-way and run again."""

from __future__ import annotations

import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from transfer_helpers import Home, message_ids

from harness import require_peer

USER_LABELS = [
    "Work",
    "Work/Projects",
    "Work/Projects/2023",
    "Family",
    "Receipts",
    '"Bills, paid"',
    "=?UTF-8?Q?=C3=9Cber?=",
]
FOLDER_OF = {
    "Inbox": "INBOX",
    "Sent": "Sent",
    "Drafts": "Drafts",
    "Spam": "Junk",
    "Trash": "Trash",
    "Archived": "Archive",
    "Work": "Work",
    "Work/Projects": "Work/Projects",
    "Work/Projects/2023": "Work/Projects/2023",
    "Family": "Family",
    "Receipts": "Receipts",
    '"Bills, paid"': "Bills, paid",
    "=?UTF-8?Q?=C3=9Cber?=": "Über",
}


@dataclass
class Expected:
    message_id: str
    data: bytes  # as stored: CRLF, unquoted
    folders: set[str]
    flags: frozenset[str]
    when: datetime
    labels: list[str] = field(default_factory=list)


def takeout(path: Path, count: int, seed: int = 5) -> list[Expected]:
    """A Gmail Takeout-style mbox: From_ lines with zones, X-GM-THRID, X-Gmail-Labels, LF line ends, mboxrd."""
    rng = random.Random(seed)
    expected = []
    with open(path, "wb") as out:
        for i in range(count):
            labels = rng.sample(
                ["Inbox", "Sent", "Drafts", "Spam", "Trash", *USER_LABELS], rng.choice([0, 1, 1, 1, 2, 3])
            )
            state = rng.sample(
                ["Unread", "Opened", "Starred", "Important", "Category Updates"], rng.randint(0, 2)
            )
            if "Unread" in state and "Opened" in state:
                state.remove("Opened")
            if not labels and rng.random() < 0.5:
                labels = ["Archived"]
            all_labels = labels + state
            rng.shuffle(all_labels)
            offset = timedelta(minutes=rng.choice([0, 120, -420, 330]))
            when = datetime(2023, 1, 1, tzinfo=timezone(offset)) + timedelta(seconds=rng.randrange(10**8))
            mid = f"<{i}.{seed}@example.org>"
            body_lines = [f"Line {n} of message {i}." for n in range(rng.randint(1, 30))]
            if i % 7 == 0:
                body_lines[len(body_lines) // 2 : len(body_lines) // 2] = [
                    "From the start",
                    ">From quoted",
                    ">>From twice",
                ]
            if i % 11 == 0:
                body_lines.append("")  # a body ending in an empty line
            header = (
                f"X-GM-THRID: {1700000000000000000 + i}\n"
                f"X-Gmail-Labels: {','.join(all_labels)}\n"
                f"From: Sender {i % 13} <s{i % 13}@example.org>\n"
                f"To: alice@example.test\n"
                f"Subject: Message {i}\n"
                f"Message-ID: {mid}\n"
            )
            original = header + "\n" + "\n".join(body_lines) + "\n"
            quoted = re.sub(r"(?m)^(>*From )", r">\1", original)
            stamp = when.strftime("%a %b %d %H:%M:%S %z %Y")
            out.write(f"From {1774629488263421321 + i}@xxx {stamp}\n{quoted}\n".encode())
            folders = {FOLDER_OF[label] for label in labels} or {"Archive"}
            lower = [s.lower() for s in state]
            flags = set()
            if "unread" not in lower:
                flags.add("\\Seen")
            if "starred" in lower:
                flags.add("\\Flagged")
            if "Drafts" in labels:
                flags.add("\\Draft")
            data = original.replace("\n", "\r\n").encode()
            expected.append(Expected(mid, data, folders, frozenset(flags), when, all_labels))
    return expected


def summary(out: str) -> tuple[int, int, int, int, int]:
    m = re.search(
        r"imported (\d+) messages \((\d+) copies in (\d+) folders\), (\d+) already there, (\d+) broken", out
    )
    assert m, out
    return tuple(int(x) for x in m.groups())  # type: ignore[return-value]


def test_gmail_takeout_labels_become_folders_and_flags(home: Home, tmp_path: Path) -> None:
    mbox = tmp_path / "All mail Including Spam and Trash.mbox"
    expected = takeout(mbox, 1000)
    user = home.new_account()
    r = home.cli("import", user, str(mbox))
    copies = sum(len(e.folders) for e in expected)
    folders = {f for e in expected for f in e.folders}
    assert summary(r.stdout) == (1000, copies, len(folders), 0, 0)
    state = home.state(user)
    by_id = {e.message_id: e for e in expected}
    for folder in folders:
        want = sorted(e.message_id for e in expected if folder in e.folders)
        got = message_ids(state[folder])
        assert sorted(got) == want, folder
        assert len(got) == len(set(got)), folder  # each message once per folder
        for stored, mid in zip(state[folder], got, strict=True):
            e = by_id[mid]
            assert stored.data == e.data, mid
            assert stored.flags == e.flags, (mid, e.labels)
            assert stored.internaldate == e.when, mid
            assert stored.internaldate.utcoffset() == e.when.utcoffset()
    # Hierarchy from "/", the quoted label with a comma, the encoded one; every copy of a message shares its file.
    assert {"Work/Projects/2023", "Bills, paid", "Über"} <= set(state)
    multi = next(e for e in expected if len(e.folders) >= 3)
    assert all(multi.message_id in message_ids(state[f]) for f in multi.folders)
    # Run again: nothing twice.
    again = home.cli("import", user, str(mbox))
    assert summary(again.stdout) == (0, 0, 0, 1000, 0)
    assert {k: len(v) for k, v in home.state(user).items()} == {k: len(v) for k, v in state.items()}


def test_mbox_quoting_flags_and_dates(home: Home, tmp_path: Path) -> None:
    mbox = tmp_path / "mutt.mbox"
    mbox.write_bytes(
        b"From alice@example.org Mon Jan  1 10:00:00 2024\n"
        b"From: alice@example.org\nSubject: read and answered\nStatus: RO\nX-Status: AF\n"
        b"X-Keywords: $Label1 work\n\n"
        b">From the body\n>>From deeper\nFrom: not a separator, no date\n\n"
        b"From bob@example.org Tue Feb 13 23:59:59 2024\n"
        b"Subject: new, no Status\nDate: Tue, 13 Feb 2024 23:59:59 +0100\n\nbody\n"
        b"From MAILER-DAEMON Wed Mar  6 06:07:08 2024\r\n"
        b"Subject: CRLF mbox\r\nStatus: O\r\n\r\nline\r\n\r\n"
    )
    user = home.new_account()
    r = home.cli("import", user, str(mbox), "--folder", "Old/Mutt")
    assert summary(r.stdout) == (3, 3, 1, 0, 0)
    one, two, three = home.state(user)["Old/Mutt"]
    assert one.data == (
        b"From: alice@example.org\r\nSubject: read and answered\r\n\r\n"
        b"From the body\r\n>From deeper\r\nFrom: not a separator, no date\r\n"
    )
    assert one.flags == {"\\Seen", "\\Answered", "\\Flagged", "$Label1", "work"}
    assert one.internaldate == datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)
    assert two.flags == frozenset() and two.internaldate == datetime(2024, 2, 13, 23, 59, 59, tzinfo=UTC)
    assert three.data == b"Subject: CRLF mbox\r\n\r\nline\r\n" and three.flags == frozenset()


def test_broken_messages_are_reported_and_skipped(home: Home, tmp_path: Path) -> None:
    mbox = tmp_path / "broken.mbox"
    mbox.write_bytes(
        b"From a@example.org Mon Jan  1 10:00:00 2024\nSubject: good 1\n\nbody\n\n"
        b"From b@example.org Mon Jan  1 10:00:01 2024\n\n"
        b"From c@example.org Mon Jan  1 10:00:02 2024\nthis is no header\nat all\n\n"
        b"From d@example.org Mon Jan  1 10:00:03 2024\nSubject: good 2\n\nbody\n"
    )
    user = home.new_account()
    r = home.cli("import", user, str(mbox), check=False)
    assert r.returncode == 2
    assert summary(r.stdout) == (2, 2, 1, 0, 2)
    assert "message 2 " in r.stderr and "empty message" in r.stderr
    assert "message 3 " in r.stderr and "no header" in r.stderr
    assert [m.data for m in home.state(user)["INBOX"]] == [
        b"Subject: good 1\r\n\r\nbody\r\n",
        b"Subject: good 2\r\n\r\nbody\r\n",
    ]
    # Broken ones are not remembered as done: a rerun names them again, and imports nothing twice.
    again = home.cli("import", user, str(mbox), check=False)
    assert again.returncode == 2 and summary(again.stdout) == (0, 0, 0, 2, 2)


def test_progress_bar_on_a_terminal(home: Home, tmp_path: Path) -> None:
    require_peer("script")  # util-linux: runs the command under a pseudo-terminal
    mbox = tmp_path / "p.mbox"
    takeout(mbox, 50)
    user = home.new_account()
    line = " ".join(
        shlex.quote(a)
        for a in [sys.executable, "-m", "homemail", "--config", str(home.config), "import", user, str(mbox)]
    )
    r = subprocess.run(["script", "-qec", line, "/dev/null"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout
    assert f"importing into {user}" in r.stdout and "100%" in r.stdout
    assert "imported 50 messages" in r.stdout
    # Not a terminal: no bar, only the summary.
    plain = home.cli("import", user, str(mbox))
    assert "importing into" not in plain.stdout and plain.stdout.startswith("imported 0 messages")


def test_interrupted_import_copies_nothing_twice(home: Home, tmp_path: Path) -> None:
    mbox = tmp_path / "big.mbox"
    expected = takeout(mbox, 1500, seed=9)
    user = home.new_account()
    db = sqlite3.connect(f"file:{home.data_dir / 'homemail.db'}?mode=ro", uri=True)
    count = "SELECT count(*) FROM import_log JOIN account ON account.id = account_id WHERE address = ?"
    proc = home.popen("import", user, str(mbox), "--batch-size", "25")
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = db.execute(count, (user,)).fetchone()[0]
        if done >= 100:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = db.execute(count, (user,)).fetchone()[0]
    db.close()
    assert 0 < first < 1500, first  # it was killed half-way
    r = home.cli("import", user, str(mbox))
    imported, _, _, skipped, broken = summary(r.stdout)
    assert (imported, skipped, broken) == (1500 - first, first, 0)
    state = home.state(user)
    for folder in {f for e in expected for f in e.folders}:
        got = Counter(message_ids(state[folder]))
        assert got == Counter(e.message_id for e in expected if folder in e.folders), folder
    assert not any((home.data_dir / "incoming").iterdir())  # the killed run's files were cleaned up


@pytest.mark.parametrize("kind", ["no user", "no file", "no mbox in folder"])
def test_bad_arguments_are_one_line_errors(home: Home, tmp_path: Path, kind: str) -> None:
    user = home.new_account()
    mbox = tmp_path / "one.mbox"
    mbox.write_bytes(b"From a@b Mon Jan  1 10:00:00 2024\nSubject: x\n\nx\n")
    args = {
        "no user": ("nobody@example.test", str(mbox), "no such user"),
        "no file": (user, str(tmp_path / "nothing.mbox"), "no such file"),
        "no mbox in folder": (user, str(tmp_path / "sub"), "no .mbox files"),
    }[kind]
    (tmp_path / "sub").mkdir()
    r = home.cli("import", *args[:2], check=False)
    assert r.returncode == 1 and r.stderr.startswith("homemail: error:") and args[2] in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
