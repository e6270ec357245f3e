"""Real mail clients against the IMAP server: mbsync (isync) and offlineimap synchronising a Maildir both ways
(messages, flags, new and deleted messages, folders), and neomutt reading, listing, flagging and deleting over
IMAP. Each scenario compares both sides message by message: exact bytes and exact flags."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from harness import ServerProcess, require_peer
from imap.clients import (
    Mail,
    Mbsync,
    OfflineImap,
    add_local,
    connect,
    deliver_smtp,
    file_flags,
    file_uid,
    find_file,
    maildir_files,
    make_maildir,
    neomutt_imap,
    server_state,
    set_file_flags,
)
from imap.imaputil import message

SEEN, FLAGGED, ANSWERED, DELETED, DRAFT = "\\Seen", "\\Flagged", "\\Answered", "\\Deleted", "\\Draft"

MULTIPART = (
    b"From: Carol <carol@example.org>\r\nTo: alice@example.test\r\nSubject: =?UTF-8?Q?caf=C3=A9?=\r\n"
    b"Date: Tue, 2 Jan 2024 09:00:00 +0100\r\nMessage-ID: <mp@example.org>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n--b1\r\n'
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"caf\xc3\xa9 \xe2\x82\xac\r\nFrom the start of a line\r\n.\r\n--b1\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + b"QUJDRA==\r\n" * 3
    + b"--b1--\r\nepilogue\r\n"
)


def big_message() -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    return message(subject="big", body="") + line * 5000  # about 370 kB: several literal reads


def fill_account(server: ServerProcess, user: str) -> None:
    """INBOX by SMTP (two messages) and APPEND (two), Archive with flags, Work and Work/Reports (a hierarchy)."""
    deliver_smtp(server, user, message(subject="smtp one", to=user))
    deliver_smtp(server, user, MULTIPART)
    with connect(server, user) as c:
        c.append("INBOX", message(subject="appended seen"), flags=[SEEN])
        c.append("INBOX", big_message())
        c.append("Archive", message(subject="archived"), flags=[FLAGGED, SEEN])
        c.append("Archive", message(subject="answered"), flags=[ANSWERED, SEEN])
        c.create_folder("Work")
        c.create_folder("Work/Reports")
        c.append("Work", message(subject="work"), flags=[DRAFT])
        c.append("Work/Reports", message(subject="report"), flags=[SEEN, "$Forwarded"])


def subjects(box: dict[int, Mail]) -> dict[str, int]:
    out = {}
    for uid, mail in box.items():
        for line in mail.data.split(b"\r\n\r\n")[0].split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out[line[9:].decode()] = uid
    return out


# --- mbsync -----------------------------------------------------------------------------------------------------


@pytest.fixture
def mbsync_peer() -> None:
    require_peer("mbsync")


def test_mbsync_pull_flags_push_and_delete(
    server: ServerProcess, user: str, tmp_path: Path, mbsync_peer: None
) -> None:
    fill_account(server, user)
    mb = Mbsync(server, user, tmp_path)
    mb.sync()

    # Pull: every folder (the hierarchy as directories) and every message byte for byte, with its flags.
    remote = server_state(server, user)
    assert mb.remote() == remote  # pulling leaves the server's messages as they were
    assert sorted(remote) == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash", "Work", "Work/Reports"]
    assert mb.state() == remote
    inbox = subjects(remote["INBOX"])
    assert set(inbox) == {"smtp one", "=?UTF-8?Q?caf=C3=A9?=", "appended seen", "big"}
    assert remote["INBOX"][inbox["appended seen"]].flags == {SEEN}
    assert remote["INBOX"][inbox["=?UTF-8?Q?caf=C3=A9?="]].data.endswith(MULTIPART)
    assert remote["Work/Reports"][1].flags == {SEEN, "$Forwarded"}
    assert file_flags(find_file(mb.root / "Work/Reports", 1)) == {SEEN, "$Forwarded"}
    assert find_file(mb.root / "INBOX", inbox["smtp one"]).parent.name == "new"  # unseen: new/

    # Flags changed on both sides: each change crosses over; a message changed on both sides gets both changes.
    archive = subjects(remote["Archive"])
    with connect(server, user) as c:
        c.select_folder("INBOX")
        c.add_flags([inbox["smtp one"]], [ANSWERED])
        c.remove_flags([inbox["appended seen"]], [SEEN])
        c.select_folder("Archive")
        c.remove_flags([archive["archived"]], [FLAGGED])
    set_file_flags(find_file(mb.root / "INBOX", inbox["big"]), "FS")
    set_file_flags(find_file(mb.root / "Archive", archive["archived"]), "RS")
    set_file_flags(find_file(mb.root / "Work", 1), "")  # \Draft removed locally
    mb.sync()
    remote = mb.remote()
    assert mb.state() == remote
    assert remote["INBOX"][inbox["smtp one"]].flags == {ANSWERED}
    assert remote["INBOX"][inbox["appended seen"]].flags == set()
    assert remote["INBOX"][inbox["big"]].flags == {SEEN, FLAGGED}
    assert remote["Archive"][archive["archived"]].flags == {SEEN, ANSWERED}
    assert remote["Work"][1].flags == set()

    # New local messages and a new local folder are pushed: CREATE, and APPEND with APPENDUID (the local file
    # is renamed to carry the UID the server gave).
    new = message(subject="written locally", body="local body\r\nline two")
    add_local(mb.root / "INBOX", "1700000000.local1.host", new)
    add_local(mb.root / "Work", "1700000000.local2.host", message(subject="local flagged"), flags="FS")
    make_maildir(mb.root / "Projects")
    add_local(mb.root / "Projects", "1700000000.local3.host", message(subject="in a new folder"))
    mb.sync()
    raw = server_state(server, user)
    remote = mb.remote()
    assert mb.state() == remote
    pushed = subjects(remote["INBOX"])["written locally"]
    assert pushed == max(remote["INBOX"]) > max(inbox.values())
    assert remote["INBOX"][pushed] == Mail(new, frozenset())
    assert raw["INBOX"][pushed].data.count(b"\r\nX-TUID: ") == 1
    assert file_uid(find_file(mb.root / "INBOX", pushed)) == pushed
    assert remote["Work"][subjects(remote["Work"])["local flagged"]].flags == {SEEN, FLAGGED}
    assert list(subjects(remote["Projects"])) == ["in a new folder"]

    # Deletions: a local message marked T and a server message expunged disappear on both sides.
    set_file_flags(find_file(mb.root / "INBOX", inbox["big"]), "FST")
    with connect(server, user) as c:
        c.select_folder("Archive")
        c.add_flags([archive["answered"]], [DELETED])
        c.expunge()
    mb.sync()
    remote = mb.remote()
    assert mb.state() == remote
    assert set(subjects(remote["INBOX"])) == {
        "smtp one",
        "=?UTF-8?Q?caf=C3=A9?=",
        "appended seen",
        "written locally",
    }
    assert list(subjects(remote["Archive"])) == ["archived"]
    assert list(remote["Trash"]) == []

    # A folder emptied, then removed locally, is deleted on the server (Remove Both: mbsync deletes only
    # empty mailboxes): the expunge, then DELETE.
    set_file_flags(maildir_files(mb.root / "Projects")[0], "T")
    mb.sync()
    assert mb.remote()["Projects"] == {}
    shutil.rmtree(mb.root / "Projects")
    mb.rc.write_text(mb.rc.read_text().replace("Expunge Both", "Expunge Both\nRemove Both"))
    mb.sync()
    remote = mb.remote()
    assert "Projects" not in remote
    assert mb.state() == remote

    # Nothing changed since: a further run changes nothing on either side.
    def files() -> list[str]:
        return sorted(p.name for p in mb.root.rglob("*") if p.is_file() and not p.name.startswith("."))

    before = (server_state(server, user), files())
    mb.sync()
    assert (server_state(server, user), files()) == before


def test_mbsync_imaps_login_and_trash(
    server: ServerProcess, user: str, tmp_path: Path, mbsync_peer: None
) -> None:
    """Implicit TLS and AUTHENTICATE LOGIN; a message deleted locally is moved into the server's Trash (UID MOVE)
    before mbsync expunges it from INBOX."""
    with connect(server, user) as c:
        for n in range(1, 31):
            c.append("INBOX", message(subject=f"m{n}"), flags=[SEEN] if n % 2 else [])
    mb = Mbsync(server, user, tmp_path, tls="IMAPS", auth="LOGIN", far_extra="Trash Trash\n")
    mb.rc.write_text(mb.rc.read_text().replace("Patterns *", "Patterns * !Trash"))
    mb.sync()
    remote = mb.remote()
    assert sorted(remote) == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    del remote["Trash"]
    assert mb.state() == remote
    assert sorted(subjects(remote["INBOX"]).values()) == list(range(1, 31))
    m5 = remote["INBOX"][5]
    set_file_flags(find_file(mb.root / "INBOX", 5), "ST")
    mb.sync()
    remote = mb.remote()
    assert sorted(remote["INBOX"]) == [n for n in range(1, 31) if n != 5]
    # The moved message keeps its flags, \Deleted included (RFC 6851 3.3: the effect of COPY).
    assert remote["Trash"] == {1: Mail(m5.data, frozenset({SEEN, DELETED}))}
    del remote["Trash"]
    assert mb.state() == remote

    # Synchronising Trash itself: mbsync moves the \\Deleted message of Trash into Trash (a MOVE into the
    # selected mailbox, which gives it a new UID there), then expunges by UID (UID EXPUNGE 1) what it knew.
    mb.rc.write_text(mb.rc.read_text().replace("Patterns * !Trash", "Patterns *"))
    mb.sync()
    remote = mb.remote()
    assert remote.pop("Trash") == {2: Mail(m5.data, frozenset({SEEN, DELETED}))}
    assert maildir_files(mb.root / "Trash") == []
    local = mb.state()
    assert local.pop("Trash") == {}
    assert local == remote


# --- offlineimap ---------------------------------------------------------------------------------------------------


def test_offlineimap_pull_flags_push_and_delete(server: ServerProcess, user: str, tmp_path: Path) -> None:
    require_peer("offlineimap")
    deliver_smtp(server, user, message(subject="smtp one", to=user))
    deliver_smtp(server, user, MULTIPART)
    with connect(server, user) as c:
        c.append("INBOX", message(subject="appended seen"), flags=[SEEN])
        c.append("INBOX", big_message())
        c.append("Archive", message(subject="archived"), flags=[FLAGGED, SEEN])
        c.create_folder("Work/Reports")
        c.append("Work/Reports", message(subject="report"), flags=[ANSWERED, SEEN])
    oi = OfflineImap(server, user, tmp_path)
    oi.sync()
    remote = server_state(server, user)
    assert sorted(remote) == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash", "Work", "Work/Reports"]
    assert oi.state() == remote
    inbox = subjects(remote["INBOX"])
    assert remote["Work/Reports"][1].flags == {ANSWERED, SEEN}

    # Flags: set locally (file names) and on the server; each crosses over.
    set_file_flags(find_file(oi.root / "INBOX", inbox["smtp one"]), "FS")
    set_file_flags(find_file(oi.root / "Archive", 1), "S")  # \Flagged removed locally
    with connect(server, user) as c:
        c.select_folder("INBOX")
        c.add_flags([inbox["big"]], [ANSWERED])
        c.remove_flags([inbox["appended seen"]], [SEEN])
    oi.sync()
    remote = server_state(server, user)
    assert oi.state() == remote
    assert remote["INBOX"][inbox["smtp one"]].flags == {FLAGGED, SEEN}
    assert remote["Archive"][1].flags == {SEEN}
    assert remote["INBOX"][inbox["big"]].flags == {ANSWERED}
    assert remote["INBOX"][inbox["appended seen"]].flags == set()

    # A new local message is uploaded (APPEND, its UID from APPENDUID goes into the file name); a deleted
    # local file is deleted on the server (STORE \Deleted, EXPUNGE); a server expunge deletes the file.
    new = message(subject="written locally", body="local body")
    add_local(oi.root / "Work/Reports", "1700000000_0.1.host", new, flags="S")
    add_local(oi.root / "Local", "1700000000_0.2.host", message(subject="new folder"))
    find_file(oi.root / "INBOX", inbox["big"]).unlink()
    with connect(server, user) as c:
        c.select_folder("INBOX")
        c.add_flags([inbox["appended seen"]], [DELETED])
        c.expunge()
    oi.sync()
    remote = server_state(server, user)
    assert oi.state() == remote
    assert set(subjects(remote["INBOX"])) == {"smtp one", "=?UTF-8?Q?caf=C3=A9?="}
    assert remote["Work/Reports"][2] == Mail(new, frozenset({SEEN}))
    assert file_uid(find_file(oi.root / "Work/Reports", 2)) == 2
    # A new local folder is created on the server (CREATE) with its message.
    assert list(subjects(remote["Local"])) == ["new folder"]


# --- neomutt ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def neomutt_peer() -> None:
    require_peer("neomutt", "script")


def test_neomutt_reads_and_lists(
    server: ServerProcess, user: str, tmp_path: Path, neomutt_peer: None
) -> None:
    fill_account(server, user)
    remote = server_state(server, user)
    first = tmp_path / "first.eml"
    report = tmp_path / "report.eml"
    screen = neomutt_imap(
        server,
        user,
        tmp_path / "nm",
        f"<pipe-message>cat > {first}<enter>"
        f"<change-folder><complete><exit>=Work/Reports<enter><pipe-message>cat > {report}<enter><quit>",
    )
    # The first message of INBOX (mailbox order), and the only one of Work/Reports, exactly (LF line ends).
    assert first.read_bytes() == remote["INBOX"][1].data.replace(b"\r\n", b"\n")
    # neomutt shows the message's keywords as a Tags field at the end of the header.
    head, body = remote["Work/Reports"][1].data.replace(b"\r\n", b"\n").split(b"\n\n", 1)
    assert report.read_bytes() == head + b"\nTags: $Forwarded\n\n" + body
    # The folder browser listed every mailbox, Work/Reports as a child of Work.
    browser = screen[screen.index("Directory [imap://") - 2000 : screen.index("Directory [imap://")]
    for name in ("INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash", "Work"):
        assert name in browser, browser
    assert "NeoMutt: +Work/Reports [Msgs:1" in screen.replace("\n", "")
    # Read-only: nothing changed on the server (no \Seen from reading in the pipe, nothing expunged).
    assert server_state(server, user) == remote


def test_neomutt_flags_copies_and_deletes(
    server: ServerProcess, user: str, tmp_path: Path, neomutt_peer: None
) -> None:
    with connect(server, user) as c:
        for n in range(1, 5):
            c.append("INBOX", message(subject=f"n{n}"))
    before = server_state(server, user)
    neomutt_imap(
        server,
        user,
        tmp_path / "nm",
        "<flag-message>"  # 1: \Flagged, then the cursor moves on
        "<delete-message>"  # 2: \Deleted
        "<save-message>=Archive<enter>"  # 3: copied to Archive, then deleted here
        "<sync-mailbox><quit>",
        readonly=False,
    )
    after = server_state(server, user)
    assert sorted(after["INBOX"]) == [1, 4]
    # Leaving the mailbox, neomutt marks the unread messages it listed as old: the keyword "Old" (mark_old).
    assert after["INBOX"][1] == Mail(before["INBOX"][1].data, frozenset({FLAGGED, "Old"}))
    assert after["INBOX"][4] == Mail(before["INBOX"][4].data, frozenset({"Old"}))
    assert list(after["Archive"].values()) == [Mail(before["INBOX"][3].data, frozenset())]


def test_neomutt_condstore_qresync_resync(
    server: ServerProcess, user: str, tmp_path: Path, neomutt_peer: None
) -> None:
    """neomutt with a header cache and CONDSTORE/QRESYNC: a later opening asks only for what changed since the
    cached MODSEQ (UID FETCH 1:n (FLAGS) (CHANGEDSINCE m VANISHED), RFC 7162 3.2.6) and must end with the
    server's exact view."""
    with connect(server, user) as c:
        for n in range(1, 4):
            c.append("INBOX", message(subject=f"q{n}"), flags=[SEEN])
    (tmp_path / "hcache").mkdir()
    settings = (f"set header_cache={tmp_path}/hcache/", "set imap_condstore=yes", "set imap_qresync=yes")

    def session(name: str) -> tuple[str, str, list[bytes]]:
        """Open INBOX, pipe out every message in order; the screen, the IMAP dialogue and the messages."""
        n = len(server_state(server, user)["INBOX"])
        out = [tmp_path / f"{name}{i}.eml" for i in range(n)]
        keys = (
            "<first-entry>" + "<next-entry>".join(f"<pipe-message>cat > {p}<enter>" for p in out) + "<quit>"
        )
        log = tmp_path / f"{name}.log"
        screen = neomutt_imap(server, user, tmp_path / "nm", keys, settings=settings, log=log)
        dialogue = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob(f"{name}.log*"))
        return screen.replace("\n", ""), dialogue, [p.read_bytes() for p in out]

    def lf(uids: list[int]) -> list[bytes]:
        box = server_state(server, user)["INBOX"]
        assert sorted(box) == uids
        return [box[u].data.replace(b"\r\n", b"\n") for u in uids]

    _, dialogue, messages = session("first")
    assert "CHANGEDSINCE" not in dialogue and messages == lf([1, 2, 3])

    # While neomutt is away: flags change, two messages arrive. Only those come back, by MODSEQ.
    with connect(server, user) as c:
        c.select_folder("INBOX")
        c.add_flags([1], [FLAGGED])
        c.remove_flags([2], [SEEN])
        c.append("INBOX", message(subject="q4"))
        c.append("INBOX", message(subject="q5"), flags=[SEEN])
    screen, dialogue, messages = session("second")
    assert re.search(r"UID FETCH 1:3 \(FLAGS\) \(CHANGEDSINCE \d+ VANISHED\)", dialogue), dialogue
    assert re.search(r"4< \* 1 FETCH \(UID 1 FLAGS \(\\Flagged \\Seen\) MODSEQ \(\d+\)\)", dialogue)
    assert re.search(r"4< \* 2 FETCH \(UID 2 FLAGS \(\) MODSEQ \(\d+\)\)", dialogue)
    assert "4< * 3 FETCH (UID 3 FLAGS" not in dialogue.split("CHANGEDSINCE")[1].split("OK FETCH")[0]
    assert "QRESYNC failed" not in dialogue
    assert "[Msgs:5 New:2 Flag:1 " in screen  # UID 2 lost \Seen, UID 4 came unseen
    assert messages == lf([1, 2, 3, 4, 5])

    # An expunge while away: reported as VANISHED (EARLIER). (This neomutt then re-reads the mailbox instead of
    # trusting its cache, whatever the server says; what matters is the view it ends with.)
    with connect(server, user) as c:
        c.select_folder("INBOX")
        c.add_flags([3], [DELETED])
        c.expunge()
    screen, dialogue, messages = session("third")
    assert "4< * VANISHED (EARLIER) 3" in dialogue
    assert "[Msgs:4 " in screen
    assert messages == lf([1, 2, 4, 5])
