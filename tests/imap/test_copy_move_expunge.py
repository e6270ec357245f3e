"""COPY and MOVE with their UID forms (RFC 9051 6.4.7, MOVE RFC 6851, COPYUID RFC 4315), EXPUNGE and UID EXPUNGE,
CLOSE, UNSELECT and CHECK, and the EXPUNGE responses other sessions get (RFC 9051 7.5.1)."""

from __future__ import annotations

import imaplib
import re

from imapclient import IMAPClient

from harness import ServerProcess
from imap.imaputil import PASSWORD, append_message, connect, message
from imap.rawclient import Raw


def append(c: Raw, mailbox: str = "INBOX", flags: str = "", count: int = 1) -> list[int]:
    return [append_message(c, mailbox, message(subject=f"message {i + 1}"), flags) for i in range(count)]


def uidvalidity(c: Raw, mailbox: str) -> int:
    (line,) = c.ok(f"STATUS {mailbox} (UIDVALIDITY)")
    m = re.search(rb"UIDVALIDITY (\d+)", line)
    assert m
    return int(m.group(1))


def apply_expunges(uids: list[int], untagged: list[bytes]) -> list[int]:
    """What a client's UID list becomes after the EXPUNGE responses, applied one by one (RFC 9051 7.5.1)."""
    out = list(uids)
    for line in untagged:
        m = re.fullmatch(rb"\* (\d+) EXPUNGE\r\n", line)
        if m:
            n = int(m.group(1))
            assert 1 <= n <= len(out), (line, out)
            del out[n - 1]
    return out


# --- COPY ---------------------------------------------------------------------------------------------------


def test_copy_copyuid_and_flags(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, flags="\\Seen $Label", count=2)
    append(c, flags="\\Answered")
    v = uidvalidity(c, "Archive")
    c.ok("SELECT INBOX")
    untagged, tagged = c.cmd("COPY 1:3 Archive")
    assert untagged == []
    assert tagged == b"t7 OK [COPYUID %d 1:3 1:3] COPY completed\r\n" % v
    # Again: new UIDs in the target; the source keeps its messages.
    assert c.cmd("COPY 2 Archive")[1] == b"t8 OK [COPYUID %d 2 4] COPY completed\r\n" % v
    assert c.ok("NOOP") == []
    # Flags travel with the copies, and the copies are \Recent in the target (RFC 9051 6.4.7).
    other = connect(server, user)
    untagged = other.ok("SELECT Archive")
    assert b"* 4 EXISTS\r\n" in untagged and b"* 4 RECENT\r\n" in untagged
    assert other.ok("FETCH 1:4 (UID FLAGS)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent $Label))\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent $Label))\r\n",
        b"* 3 FETCH (UID 3 FLAGS (\\Answered \\Recent))\r\n",
        b"* 4 FETCH (UID 4 FLAGS (\\Seen \\Recent $Label))\r\n",
    ]
    assert b"$Label" in other.ok("EXAMINE Archive")[1]


def test_uid_copy_with_gaps(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, count=5)
    c.ok("CREATE Keep")
    append(c, "Keep")  # the target's next UID is 2
    v = uidvalidity(c, "Keep")
    c.ok("SELECT INBOX")
    _, tagged = c.cmd("UID COPY 1,3,5 Keep")
    # RFC 4315 3: source and destination UIDs pair up in order.
    assert tagged == b"t11 OK [COPYUID %d 1,3,5 2:4] COPY completed\r\n" % v
    _, tagged = c.cmd("UID COPY 4:* Keep")
    assert tagged == b"t12 OK [COPYUID %d 4:5 5:6] COPY completed\r\n" % v
    # UIDs that do not exist copy nothing, and that is not an error.
    assert c.cmd("UID COPY 100:200 Keep") == ([], b"t13 OK COPY completed\r\n")
    assert c.ok("STATUS Keep (MESSAGES UIDNEXT)") == [b"* STATUS Keep (MESSAGES 6 UIDNEXT 7)\r\n"]


def test_copy_to_missing_mailbox_and_errors(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c)
    c.ok("SELECT INBOX")
    assert c.cmd("COPY 1 Nowhere") == ([], b"t4 NO [TRYCREATE] no such mailbox\r\n")
    assert c.cmd("UID MOVE 1 Nowhere") == ([], b"t5 NO [TRYCREATE] no such mailbox\r\n")
    assert c.cmd("COPY 5 Archive")[1].startswith(b"t6 BAD")
    assert c.cmd("MOVE 1 Nowhere") == ([], b"t7 NO [TRYCREATE] no such mailbox\r\n")
    # The message is still there after all that.
    assert c.ok("FETCH 1 UID") == [b"* 1 FETCH (UID 1)\r\n"]
    c.ok("UNSELECT")
    assert c.cmd("COPY 1 Archive")[1].startswith(b"t10 BAD")


def test_copy_from_read_only_and_into_same_mailbox(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, count=2)
    c.ok("EXAMINE INBOX")
    v = uidvalidity(c, "Trash")
    assert c.cmd("COPY 2 Trash")[1] == b"t6 OK [COPYUID %d 2 1] COPY completed\r\n" % v
    assert c.cmd("MOVE 2 Trash")[1] == b"t7 NO [READ-ONLY] the mailbox is read-only\r\n"
    c.ok("SELECT INBOX")
    v = uidvalidity(c, "INBOX")
    untagged, tagged = c.cmd("COPY 1:2 INBOX")
    assert tagged == b"t10 OK [COPYUID %d 1:2 3:4] COPY completed\r\n" % v
    assert untagged == [b"* 4 EXISTS\r\n", b"* 4 RECENT\r\n"]


# --- MOVE ---------------------------------------------------------------------------------------------------


def test_move(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, flags="\\Flagged", count=4)
    v = uidvalidity(c, "Junk")
    c.ok("SELECT INBOX")
    untagged, tagged = c.cmd("MOVE 2:3 Junk")
    # RFC 6851 4.3: COPYUID in an untagged OK, then the expunges, then a plain tagged OK.
    assert untagged[0] == b"* OK [COPYUID %d 2:3 1:2] moved\r\n" % v
    assert apply_expunges([1, 2, 3, 4], untagged[1:]) == [1, 4]
    assert untagged[1:] == [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert tagged == b"t8 OK MOVE completed\r\n"
    assert c.ok("FETCH 1:* UID") == [b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 4)\r\n"]
    untagged, tagged = c.cmd("UID MOVE 4 Junk")
    assert untagged == [b"* OK [COPYUID %d 4 3] moved\r\n" % v, b"* 2 EXPUNGE\r\n"]
    other = connect(server, user)
    untagged = other.ok("SELECT Junk")
    assert b"* 3 EXISTS\r\n" in untagged and b"* 3 RECENT\r\n" in untagged
    assert other.ok("FETCH 1:3 FLAGS") == [
        b"* %d FETCH (FLAGS (\\Flagged \\Recent))\r\n" % n for n in (1, 2, 3)
    ]
    assert other.ok("STATUS INBOX (MESSAGES UIDNEXT)") == [b"* STATUS INBOX (MESSAGES 1 UIDNEXT 5)\r\n"]
    # UID MOVE of UIDs that are not there: nothing moves, nothing is reported.
    assert c.cmd("UID MOVE 50 Junk") == ([], b"t11 OK MOVE completed\r\n")


def test_move_under_qresync_sends_vanished(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "QRESYNC")
    append(c, count=3)
    v = uidvalidity(c, "Archive")
    c.ok("SELECT INBOX")
    untagged = c.ok("UID MOVE 1:2 Archive")
    assert untagged == [b"* OK [COPYUID %d 1:2 1:2] moved\r\n" % v, b"* VANISHED 1:2\r\n"]


def test_move_with_imapclient(server: ServerProcess, user: str) -> None:
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as c:
        c.login(user, PASSWORD)
        for _ in range(2):
            c.append("INBOX", message())
        c.select_folder("INBOX")
        c.move([1], "Trash")
        assert c.search("ALL") == [2]
        assert c.folder_status("Trash", [b"MESSAGES"]) == {b"MESSAGES": 1}
        c.copy([2], "Trash")
        assert c.folder_status("Trash", [b"MESSAGES"]) == {b"MESSAGES": 2}


# --- EXPUNGE ------------------------------------------------------------------------------------------------


def test_expunge_sequence_numbers(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    uids = append(c, count=8)
    c.ok("SELECT INBOX")
    c.ok("STORE 2,3,5,8 +FLAGS.SILENT (\\Deleted)")
    untagged, tagged = c.cmd("EXPUNGE")
    assert tagged == b"t12 OK EXPUNGE completed\r\n"
    # Each number is valid when it is sent: highest first here, so none shifts the next.
    assert untagged == [b"* 8 EXPUNGE\r\n", b"* 5 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert apply_expunges(uids, untagged) == [1, 4, 6, 7]
    assert c.ok("FETCH 1:* UID") == [
        b"* %d FETCH (UID %d)\r\n" % (i + 1, u) for i, u in enumerate([1, 4, 6, 7])
    ]
    # Nothing deleted: nothing to say.
    assert c.cmd("EXPUNGE") == ([], b"t14 OK EXPUNGE completed\r\n")
    assert c.ok("STATUS INBOX (MESSAGES UIDNEXT)") == [b"* STATUS INBOX (MESSAGES 4 UIDNEXT 9)\r\n"]


def test_uid_expunge(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, count=4)
    c.ok("SELECT INBOX")
    c.ok("STORE 1:4 +FLAGS.SILENT (\\Deleted)")
    # RFC 4315 2.1: only the named UIDs that are \Deleted go.
    untagged, tagged = c.cmd("UID EXPUNGE 2:3,10")
    assert untagged == [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert tagged == b"t8 OK EXPUNGE completed\r\n"
    c.ok("STORE 1 -FLAGS.SILENT (\\Deleted)")
    assert c.cmd("UID EXPUNGE 1") == ([], b"t10 OK EXPUNGE completed\r\n")
    assert c.cmd("UID EXPUNGE 1:*") == ([b"* 2 EXPUNGE\r\n"], b"t11 OK EXPUNGE completed\r\n")
    assert c.ok("FETCH 1:* UID") == [b"* 1 FETCH (UID 1)\r\n"]


def test_other_session_gets_expunges_at_the_right_time(server: ServerProcess, user: str) -> None:
    a = connect(server, user)
    append(a, count=3)
    a.ok("SELECT INBOX")
    b = connect(server, user)
    b.ok("SELECT INBOX")
    b.ok("STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    # RFC 9051 7.5.1: no EXPUNGE while answering FETCH, STORE or SEARCH; the sequence numbers hold still.
    assert a.ok("FETCH 2 UID") == [b"* 2 FETCH (UID 2)\r\n"]
    assert a.ok("SEARCH ALL") == [b"* SEARCH 1 2 3\r\n"]
    untagged = a.ok("STORE 2 +FLAGS (\\Seen)")
    assert untagged == [b"* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n"]
    untagged = a.ok("NOOP")
    assert untagged == [b"* 3 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n"]
    assert a.ok("FETCH 1:* UID") == [b"* 1 FETCH (UID 2)\r\n"]
    # UID commands may carry them.
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    untagged = a.ok("UID FETCH 1:* FLAGS")
    assert b"* 1 EXPUNGE\r\n" in untagged


def test_close_expunges_silently_and_unselect_does_not(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, count=3)
    c.ok("SELECT INBOX")
    c.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert c.cmd("UNSELECT") == ([], b"t7 OK UNSELECT completed\r\n")
    assert c.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 3)\r\n"]
    assert c.cmd("FETCH 1 UID")[1].startswith(b"t9 BAD")
    c.ok("EXAMINE INBOX")
    assert c.cmd("CLOSE") == ([], b"t11 OK CLOSE completed\r\n")  # read-only: nothing removed
    assert c.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 3)\r\n"]
    c.ok("SELECT INBOX")
    # RFC 9051 6.4.1: CLOSE removes the \Deleted messages without EXPUNGE responses.
    assert c.cmd("CLOSE") == ([], b"t14 OK CLOSE completed\r\n")
    assert c.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 1)\r\n"]
    assert c.cmd("CLOSE")[1].startswith(b"t16 BAD")
    assert c.cmd("UNSELECT")[1].startswith(b"t17 BAD")


def test_check(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    assert c.cmd("CHECK")[1].startswith(b"t2 BAD")
    c.ok("SELECT INBOX")
    other = connect(server, user)
    append(other)
    # CHECK is a checkpoint; like NOOP it may carry the news.
    assert c.cmd("CHECK") == ([b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"], b"t4 OK CHECK completed\r\n")


def test_expunge_with_imaplib(server: ServerProcess, user: str) -> None:
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    m.login(user, PASSWORD)
    for _ in range(3):
        m.append("INBOX", "(\\Deleted)", None, message())
    m.select("INBOX")
    typ, data = m.expunge()
    assert typ == "OK" and data == [b"3", b"2", b"1"]
    assert m.select("INBOX")[1] == [b"0"]
    m.logout()
