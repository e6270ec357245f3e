"""STORE and UID STORE (RFC 9051 6.4.6): FLAGS, +FLAGS, -FLAGS and .SILENT, keywords, \\Recent, the untagged
FETCH responses (UID for UID STORE, MODSEQ under CONDSTORE), UNCHANGEDSINCE and [MODIFIED] (RFC 7162 3.1.3),
read-only mailboxes, and what other sessions on the mailbox see."""

from __future__ import annotations

import imaplib
import re

from imapclient import IMAPClient

from harness import ServerProcess
from imap.imaputil import PASSWORD, append, connect, message, response_code

SYSTEM = b"\\Seen \\Answered \\Flagged \\Deleted \\Draft"


def modseq(line: bytes) -> int:
    m = re.search(rb"MODSEQ \((\d+)\)", line)
    assert m, line
    return int(m.group(1))


def highestmodseq(untagged: list[bytes]) -> int:
    return response_code(untagged, b"HIGHESTMODSEQ")


def test_flags_replace_add_remove(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, count=3)
    c.ok("SELECT INBOX")  # this session holds \Recent for all three
    untagged, tagged = c.cmd("STORE 1 FLAGS (\\Seen)")
    assert untagged == [b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n"]
    assert tagged == b"t6 OK STORE completed\r\n"
    assert c.ok("STORE 1 +FLAGS (\\Flagged \\Answered)") == [
        b"* 1 FETCH (FLAGS (\\Answered \\Flagged \\Seen \\Recent))\r\n"
    ]
    assert c.ok("STORE 1 -FLAGS (\\Seen \\Answered)") == [b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n"]
    # A flag list without parentheses is allowed for STORE (RFC 9051 9: store-att-flags).
    assert c.ok("STORE 2:3 +FLAGS \\Draft \\Seen") == [
        b"* 2 FETCH (FLAGS (\\Seen \\Draft \\Recent))\r\n",
        b"* 3 FETCH (FLAGS (\\Seen \\Draft \\Recent))\r\n",
    ]
    # FLAGS () clears the stored flags; \Recent is not the client's to clear.
    assert c.ok("STORE 3 FLAGS ()") == [b"* 3 FETCH (FLAGS (\\Recent))\r\n"]
    # A change that changes nothing is still answered with the flags.
    assert c.ok("STORE 3 -FLAGS (\\Seen)") == [b"* 3 FETCH (FLAGS (\\Recent))\r\n"]
    assert c.ok("STORE 1:* +flags (\\deleted)") == [
        b"* 1 FETCH (FLAGS (\\Flagged \\Deleted \\Recent))\r\n",
        b"* 2 FETCH (FLAGS (\\Deleted \\Seen \\Draft \\Recent))\r\n",
        b"* 3 FETCH (FLAGS (\\Deleted \\Recent))\r\n",
    ]
    # The flags persist: another session sees them.
    other = connect(server, user)
    other.ok("EXAMINE INBOX")
    assert other.ok("FETCH 1:3 FLAGS") == [
        b"* 1 FETCH (FLAGS (\\Flagged \\Deleted))\r\n",
        b"* 2 FETCH (FLAGS (\\Deleted \\Seen \\Draft))\r\n",
        b"* 3 FETCH (FLAGS (\\Deleted))\r\n",
    ]


def test_silent(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, count=2)
    c.ok("SELECT INBOX")
    untagged, tagged = c.cmd("STORE 1:2 +FLAGS.SILENT (\\Seen)")
    assert (untagged, tagged) == ([], b"t5 OK STORE completed\r\n")
    assert c.ok("STORE 1 FLAGS.SILENT (\\Answered)") == []
    assert c.ok("UID STORE 2 -FLAGS.SILENT (\\Seen)") == []
    assert c.ok("FETCH 1:2 FLAGS") == [
        b"* 1 FETCH (FLAGS (\\Answered \\Recent))\r\n",
        b"* 2 FETCH (FLAGS (\\Recent))\r\n",
    ]


def test_uid_store_includes_uid(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    uids = append(c, count=3)
    c.ok("SELECT INBOX")
    c.ok("STORE 2 +FLAGS (\\Deleted)")
    c.ok("EXPUNGE")
    # Message 2 is now UID 3.
    untagged, tagged = c.cmd(f"UID STORE {uids[2]} +FLAGS (\\Flagged)")
    assert untagged == [b"* 2 FETCH (UID %d FLAGS (\\Flagged \\Recent))\r\n" % uids[2]]
    assert tagged == b"t8 OK STORE completed\r\n"
    assert c.ok(f"UID STORE {uids[0]}:* -FLAGS (\\Flagged)") == [
        b"* 1 FETCH (UID %d FLAGS (\\Recent))\r\n" % uids[0],
        b"* 2 FETCH (UID %d FLAGS (\\Recent))\r\n" % uids[2],
    ]
    # UIDs that are not there are no error (RFC 9051 6.4.9); nothing is answered for them.
    assert c.cmd(f"UID STORE {uids[1]} +FLAGS (\\Seen)") == ([], b"t10 OK STORE completed\r\n")
    assert c.cmd("UID STORE 1000:2000 +FLAGS (\\Seen)") == ([], b"t11 OK STORE completed\r\n")
    # A message sequence number past the end is an error.
    _, tagged = c.cmd("STORE 3 +FLAGS (\\Seen)")
    assert tagged.startswith(b"t12 BAD")


def test_keywords(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, count=2)
    other = connect(server, user)
    other.ok("EXAMINE INBOX")  # nobody has taken \Recent yet: it shows here too
    c.ok("SELECT INBOX")
    # A new keyword: FLAGS and PERMANENTFLAGS are announced again before the FETCH (RFC 9051 7.3.5).
    assert c.ok("STORE 1 +FLAGS ($Important Work)") == [
        b"* FLAGS (" + SYSTEM + b" $Important Work)\r\n",
        b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Important Work \\*)] flags permitted\r\n",
        b"* 1 FETCH (FLAGS (\\Recent $Important Work))\r\n",
    ]
    # A known keyword: just the FETCH.
    assert c.ok("STORE 2 +FLAGS (Work)") == [b"* 2 FETCH (FLAGS (\\Recent Work))\r\n"]
    assert c.ok("STORE 1 -FLAGS ($Important)") == [b"* 1 FETCH (FLAGS (\\Recent Work))\r\n"]
    assert c.ok("SEARCH KEYWORD Work") == [b"* SEARCH 1 2\r\n"]
    # The other session learns the new keyword and the changed flags at its next command.
    untagged = other.ok("NOOP")
    assert untagged[0] == b"* FLAGS (" + SYSTEM + b" Work)\r\n"
    assert untagged[1] == b"* OK [PERMANENTFLAGS ()] flags permitted\r\n"
    assert sorted(untagged[2:]) == [
        b"* 1 FETCH (UID 1 FLAGS (\\Recent Work))\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Recent Work))\r\n",
    ]
    # Keywords survive a new SELECT and show in FLAGS there.
    assert c.ok("SELECT INBOX")[1] == b"* FLAGS (" + SYSTEM + b" Work)\r\n"


def test_recent_cannot_be_stored(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, count=2)
    other = connect(server, user)
    other.ok("SELECT INBOX")  # takes \Recent
    c.ok("SELECT INBOX")
    assert c.ok("STORE 1 +FLAGS (\\Recent)") == [b"* 1 FETCH (FLAGS ())\r\n"]
    assert c.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())\r\n"]
    assert other.ok("STORE 2 -FLAGS (\\Recent)") == [b"* 2 FETCH (FLAGS (\\Recent))\r\n"]
    assert other.ok("STORE 2 FLAGS (\\Seen \\Recent)") == [b"* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n"]
    # Flags that are not flags at all are refused.
    _, tagged = c.cmd("STORE 1 +FLAGS (\\Bogus)")
    assert tagged.startswith(b"t7 BAD")
    _, tagged = c.cmd("STORE 1 +FLAGS (\\*)")
    assert tagged.startswith(b"t8 BAD")
    _, tagged = c.cmd("STORE 1 FLAGZ (\\Seen)")
    assert tagged.startswith(b"t9 BAD")


def test_read_only_store_is_refused(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c)
    c.ok("EXAMINE INBOX")
    assert c.cmd("STORE 1 +FLAGS (\\Seen)") == ([], b"t4 NO [READ-ONLY] the mailbox is read-only\r\n")
    assert c.cmd("UID STORE 1 +FLAGS.SILENT (\\Seen)") == (
        [],
        b"t5 NO [READ-ONLY] the mailbox is read-only\r\n",
    )
    assert c.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))\r\n"]


def test_condstore_store_reports_modseq(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "CONDSTORE")
    append(c, count=3)
    top = highestmodseq(c.ok("SELECT INBOX"))
    line = c.ok("STORE 1 +FLAGS (\\Seen)")[0]
    # RFC 7162 3.1: with CONDSTORE on, the FETCH responses of a STORE carry UID and MODSEQ.
    assert line == b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) MODSEQ (%d))\r\n" % (top + 1)
    # No change, no new MODSEQ (RFC 7162 3.1.3).
    assert c.ok("STORE 1 +FLAGS (\\Seen)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) MODSEQ (%d))\r\n" % (top + 1)
    ]
    # One STORE over several messages: one new MODSEQ.
    assert c.ok("UID STORE 2:3 +FLAGS (\\Flagged)") == [
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (%d))\r\n" % (top + 2),
        b"* 3 FETCH (UID 3 FLAGS (\\Flagged \\Recent) MODSEQ (%d))\r\n" % (top + 2),
    ]
    # With .SILENT the new MODSEQ still goes out (RFC 7162 3.1.3), for the changed messages only.
    assert c.ok("STORE 1:3 +FLAGS.SILENT (\\Flagged)") == [b"* 1 FETCH (UID 1 MODSEQ (%d))\r\n" % (top + 3)]
    assert c.ok("UID STORE 1 -FLAGS.SILENT (\\Flagged)") == [b"* 1 FETCH (UID 1 MODSEQ (%d))\r\n" % (top + 4)]
    assert c.ok("FETCH 1:3 (MODSEQ)") == [
        b"* 1 FETCH (MODSEQ (%d))\r\n" % (top + 4),
        b"* 2 FETCH (MODSEQ (%d))\r\n" % (top + 2),
        b"* 3 FETCH (MODSEQ (%d))\r\n" % (top + 2),
    ]
    assert highestmodseq(c.ok("SELECT INBOX")) == top + 4


def test_unchangedsince(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, count=3)
    top = highestmodseq(c.ok("SELECT INBOX"))
    other = connect(server, user)
    other.ok("SELECT INBOX")
    other.ok("STORE 2 +FLAGS (\\Seen)")  # message 2 moves past `top`
    # UNCHANGEDSINCE enables CONDSTORE (RFC 7162 3.1); message 2 fails the test and is left alone.
    untagged, tagged = c.cmd(f"STORE 1:3 (UNCHANGEDSINCE {top}) +FLAGS (\\Deleted)")
    assert tagged == b"t6 OK [MODIFIED 2] conditional STORE failed for some messages\r\n"
    # The other session's change to message 2 is announced after (the client needs it to try again).
    # Enabling CONDSTORE with a mailbox selected reports where its MODSEQs start (RFC 7162 3.1).
    assert untagged == [
        b"* OK [HIGHESTMODSEQ %d] highest modseq\r\n" % top,
        b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent) MODSEQ (%d))\r\n" % (top + 2),
        b"* 3 FETCH (UID 3 FLAGS (\\Deleted \\Recent) MODSEQ (%d))\r\n" % (top + 2),
        b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (%d))\r\n" % (top + 1),
    ]
    # UID STORE reports UIDs in MODIFIED.
    untagged, tagged = c.cmd(f"UID STORE 1:3 (UNCHANGEDSINCE {top + 1}) -FLAGS.SILENT (\\Deleted)")
    assert tagged == b"t7 OK [MODIFIED 1,3] conditional STORE failed for some messages\r\n"
    assert untagged == []
    # UNCHANGEDSINCE 0 fails for every message (RFC 7162 3.1.3).
    untagged, tagged = c.cmd("STORE 1:3 (UNCHANGEDSINCE 0) FLAGS (\\Answered)")
    assert tagged == b"t8 OK [MODIFIED 1:3] conditional STORE failed for some messages\r\n"
    assert untagged == []
    assert c.ok("FETCH 1:3 FLAGS") == [
        b"* 1 FETCH (FLAGS (\\Deleted \\Recent) MODSEQ (%d))\r\n" % (top + 2),
        b"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (%d))\r\n" % (top + 1),
        b"* 3 FETCH (FLAGS (\\Deleted \\Recent) MODSEQ (%d))\r\n" % (top + 2),
    ]
    # The conditional store succeeds when the MODSEQ is current.
    untagged, tagged = c.cmd(f"STORE 2 (UNCHANGEDSINCE {top + 1}) +FLAGS (\\Answered)")
    assert tagged == b"t10 OK STORE completed\r\n"
    assert untagged == [b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Seen \\Recent) MODSEQ (%d))\r\n" % (top + 3)]


def test_other_session_sees_flag_changes(server: ServerProcess, user: str) -> None:
    a = connect(server, user)
    append(a, count=2)
    a.ok("SELECT INBOX")
    b = connect(server, user, "CONDSTORE")
    b.ok("SELECT INBOX")
    a.ok("STORE 2 +FLAGS (\\Answered)")
    untagged = b.ok("NOOP")
    assert len(untagged) == 1 and untagged[0].startswith(b"* 2 FETCH (UID 2 FLAGS (\\Answered) MODSEQ (")
    b.ok("STORE 1 +FLAGS (\\Flagged)")
    assert a.ok("NOOP") == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\n"]
    assert a.ok("NOOP") == []


def test_store_with_imaplib_and_imapclient(server: ServerProcess, user: str) -> None:
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    m.login(user, PASSWORD)
    m.append("INBOX", None, None, message())
    m.select("INBOX")
    typ, data = m.store("1", "+FLAGS", "(\\Seen $Done)")
    assert typ == "OK" and data == [b"1 (FLAGS (\\Seen \\Recent $Done))"]
    typ, data = m.uid("STORE", "1", "-FLAGS", "($Done)")
    assert typ == "OK" and data == [b"1 (UID 1 FLAGS (\\Seen \\Recent))"]
    m.logout()
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as c:
        c.login(user, PASSWORD)
        c.select_folder("INBOX")
        assert c.add_flags([1], [b"\\Flagged"]) == {1: (b"\\Flagged", b"\\Seen")}
        assert c.remove_flags([1], [b"\\Seen"]) == {1: (b"\\Flagged",)}
        assert c.get_flags([1]) == {1: (b"\\Flagged",)}
