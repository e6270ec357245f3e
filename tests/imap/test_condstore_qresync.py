"""CONDSTORE and QRESYNC (RFC 7162): ENABLE, HIGHESTMODSEQ, MODSEQ growth, CHANGEDSINCE, SELECT ... (QRESYNC ...)
with VANISHED (EARLIER), VANISHED in place of EXPUNGE, HIGHESTMODSEQ after EXPUNGE/CLOSE/MOVE, and persistent
mod-sequences and UIDs across a server restart (no NOMODSEQ, no UID reused)."""

from __future__ import annotations

import re

from harness import ServerProcess
from imap.imaputil import append, connect, response_code
from imap.rawclient import Raw


def status(c: Raw, mailbox: str = "INBOX") -> dict[bytes, int]:
    (line,) = c.ok(f"STATUS {mailbox} (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
    m = re.search(rb"\((.*)\)", line)
    assert m
    words = m.group(1).split()
    return {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}


def test_enable_and_highestmodseq(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    assert c.ok("ENABLE CONDSTORE") == [b"* ENABLED CONDSTORE\r\n"]
    assert c.ok("ENABLE CONDSTORE") == [b"* ENABLED\r\n"]
    s = connect(server, user)
    s.ok("SELECT INBOX")
    assert s.ok("ENABLE QRESYNC") == [b"* ENABLED QRESYNC\r\n", b"* OK [HIGHESTMODSEQ 1] highest modseq\r\n"]
    assert s.ok("ENABLE CONDSTORE") == [b"* ENABLED\r\n"]
    untagged = c.ok("SELECT INBOX")
    assert (
        response_code(untagged, b"HIGHESTMODSEQ") == 1
    )  # never 0, and never NOMODSEQ: mod-sequences persist
    assert not any(b"NOMODSEQ" in line for line in untagged)
    # Every change takes a new, higher MODSEQ.
    other = connect(server, user)
    append(other)
    untagged = c.ok("NOOP")
    assert untagged == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert c.ok("FETCH 1 (MODSEQ)") == [b"* 1 FETCH (MODSEQ (2))\r\n"]
    assert c.ok("STORE 1 +FLAGS (\\Seen)") == [b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) MODSEQ (3))\r\n"]
    assert c.ok("STORE 1 +FLAGS (\\Deleted)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Seen \\Recent) MODSEQ (4))\r\n"
    ]
    untagged, tagged = c.cmd("EXPUNGE")
    assert untagged == [b"* 1 EXPUNGE\r\n"]
    assert tagged == b"t9 OK EXPUNGE completed\r\n"  # HIGHESTMODSEQ there is for QRESYNC only
    assert status(c)[b"HIGHESTMODSEQ"] == 5


def test_condstore_enabling_commands(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, flags="\\Seen")
    # SELECT ... (CONDSTORE) turns it on: FLAGS in FETCH come with MODSEQ (RFC 7162 3.1.8).
    untagged = c.ok("SELECT INBOX (CONDSTORE)")
    assert response_code(untagged, b"HIGHESTMODSEQ") == 2
    assert c.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (2))\r\n"]
    # STATUS HIGHESTMODSEQ is one too (RFC 7162 3.1.7).
    d = connect(server, user)
    assert d.ok("STATUS INBOX (HIGHESTMODSEQ)") == [b"* STATUS INBOX (HIGHESTMODSEQ 2)\r\n"]
    d.ok("SELECT INBOX")
    assert d.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Seen) MODSEQ (2))\r\n"]
    # So is FETCH MODSEQ.
    e = connect(server, user)
    e.ok("SELECT INBOX")
    assert e.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Seen))\r\n"]
    # The first CONDSTORE-enabling command with a mailbox selected reports its HIGHESTMODSEQ (RFC 7162 3.1).
    assert e.ok("FETCH 1 (FLAGS MODSEQ)") == [
        b"* OK [HIGHESTMODSEQ 2] highest modseq\r\n",
        b"* 1 FETCH (FLAGS (\\Seen) MODSEQ (2))\r\n",
    ]
    assert e.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Seen) MODSEQ (2))\r\n"]


def test_implicit_seen_reports_uid_and_modseq(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "CONDSTORE")
    append(c, count=2)
    top = response_code(c.ok("SELECT INBOX"), b"HIGHESTMODSEQ")
    # RFC 7162 3.1: a FETCH that sets \Seen implicitly reports UID, FLAGS and MODSEQ.
    untagged = c.ok("FETCH 2 BODY[HEADER.FIELDS (SUBJECT)]")
    assert untagged == [
        b"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: hello\r\n\r\n"
        b" FLAGS (\\Seen \\Recent) MODSEQ (%d))\r\n" % (top + 1)
    ]
    # Already \Seen: nothing changes, so only what was asked for.
    assert c.ok("FETCH 2 BODY[HEADER.FIELDS (SUBJECT)]") == [
        b"* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: hello\r\n\r\n)\r\n"
    ]


def test_changedsince_and_search_modseq(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "CONDSTORE")
    append(c, count=4)
    top = response_code(c.ok("SELECT INBOX"), b"HIGHESTMODSEQ")
    c.ok("STORE 2 +FLAGS (\\Flagged)")
    c.ok("STORE 4 +FLAGS ($Later)")
    assert c.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {top})") == [
        b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))\r\n" % (top + 1),
        b"* 4 FETCH (FLAGS (\\Recent $Later) MODSEQ (%d))\r\n" % (top + 2),
    ]
    assert c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {top + 1})") == [
        b"* 4 FETCH (UID 4 FLAGS (\\Recent $Later) MODSEQ (%d))\r\n" % (top + 2)
    ]
    assert c.ok(f"FETCH 1:* (UID) (CHANGEDSINCE {top + 2})") == []
    assert c.ok(f"SEARCH MODSEQ {top + 1}") == [b"* SEARCH 2 4 (MODSEQ %d)\r\n" % (top + 2)]
    assert c.ok(f"UID SEARCH MODSEQ {top + 2}") == [b"* SEARCH 4 (MODSEQ %d)\r\n" % (top + 2)]
    # VANISHED as a FETCH modifier needs QRESYNC enabled (RFC 7162 3.2.6).
    assert c.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {top} VANISHED)")[1].startswith(b"t15 BAD")


def test_qresync_select_reports_vanished_and_changes(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "QRESYNC")
    uids = append(c, count=6)
    untagged = c.ok("SELECT INBOX")
    v = response_code(untagged, b"UIDVALIDITY")
    known = response_code(untagged, b"HIGHESTMODSEQ")
    c.ok("LOGOUT")
    # Meanwhile, in another session: flags change on 2 and 5, 3 and 6 go away, a new message comes.
    o = connect(server, user)
    o.ok("SELECT INBOX")
    o.ok("STORE 2,5 +FLAGS (\\Answered)")
    o.ok("STORE 3,6 +FLAGS (\\Deleted)")
    o.ok("EXPUNGE")
    append(o)
    o.ok("LOGOUT")
    r = connect(server, user, "QRESYNC")
    untagged, tagged = r.cmd(f"SELECT INBOX (QRESYNC ({v} {known}))")
    top = response_code(untagged, b"HIGHESTMODSEQ")
    i = untagged.index(b"* OK [HIGHESTMODSEQ %d] highest modseq\r\n" % top)
    # RFC 7162 3.2.5.2: VANISHED (EARLIER) first, then FETCH (UID FLAGS MODSEQ) for what changed.
    assert untagged[i + 1] == b"* VANISHED (EARLIER) 3,6\r\n"
    assert untagged[i + 2 :] == [
        b"* 2 FETCH (UID 2 FLAGS (\\Answered) MODSEQ (%d))\r\n" % (known + 1),
        b"* 4 FETCH (UID 5 FLAGS (\\Answered) MODSEQ (%d))\r\n" % (known + 1),
        b"* 5 FETCH (UID 7 FLAGS () MODSEQ (%d))\r\n" % top,
    ]
    assert tagged == b"t3 OK [READ-WRITE] SELECT completed\r\n"
    assert top == known + 4  # one STORE, another STORE, the EXPUNGE, the APPEND
    assert uids == [1, 2, 3, 4, 5, 6]
    # With known UIDs (RFC 7162 3.2.5): only those are reported vanished.
    untagged = r.ok(f"EXAMINE INBOX (QRESYNC ({v} {known} 1:5))")
    assert untagged[0] == b"* OK [CLOSED] previous mailbox closed\r\n"
    assert b"* VANISHED (EARLIER) 3\r\n" in untagged
    assert not any(b"VANISHED (EARLIER) 3,6" in line for line in untagged)
    # With the current HIGHESTMODSEQ there is nothing to report.
    untagged = r.ok(f"EXAMINE INBOX (QRESYNC ({v} {top}))")
    assert not any(b"VANISHED" in line or b"FETCH" in line for line in untagged)
    # A stale UIDVALIDITY: no catch-up at all (the client must resynchronise in full).
    untagged = r.ok(f"EXAMINE INBOX (QRESYNC ({v - 1} {known}))")
    assert not any(b"VANISHED" in line or b"FETCH" in line for line in untagged)
    # The seq-match-data form is accepted.
    untagged = r.ok(f"EXAMINE INBOX (QRESYNC ({v} {known} 1:7 (1:4 1:4)))")
    assert b"* VANISHED (EARLIER) 3,6\r\n" in untagged


def test_qresync_parameter_needs_enable(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "CONDSTORE")
    _, tagged = c.cmd("SELECT INBOX (QRESYNC (1 1))")
    assert tagged.startswith(b"t3 BAD")
    assert c.ok("ENABLE QRESYNC") == [b"* ENABLED QRESYNC\r\n"]
    c.ok("SELECT INBOX (QRESYNC (1 1))")


def test_vanished_replaces_expunge(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "QRESYNC")
    append(c, count=5)
    c.ok("SELECT INBOX")
    c.ok("STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    before = status(c)[b"HIGHESTMODSEQ"]
    untagged, tagged = c.cmd("EXPUNGE")
    # RFC 7162 3.2.7: VANISHED for the removed UIDs, and the new HIGHESTMODSEQ in the tagged OK.
    assert untagged == [b"* VANISHED 2,4\r\n"]
    assert tagged == b"t11 OK [HIGHESTMODSEQ %d] EXPUNGE completed\r\n" % (before + 1)
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    untagged, tagged = c.cmd("UID EXPUNGE 1:3")
    assert untagged == [b"* VANISHED 1\r\n"]
    assert tagged == b"t13 OK [HIGHESTMODSEQ %d] EXPUNGE completed\r\n" % (before + 3)
    # Nothing removed: no HIGHESTMODSEQ needed.
    assert c.cmd("EXPUNGE") == ([], b"t14 OK EXPUNGE completed\r\n")
    # Another session's expunge arrives as VANISHED too.
    o = connect(server, user)
    o.ok("SELECT INBOX")
    o.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    o.ok("EXPUNGE")
    untagged = c.ok("NOOP")
    assert untagged == [b"* VANISHED 3\r\n"]
    assert c.ok("UID FETCH 1:* UID") == [b"* 1 FETCH (UID 5)\r\n"]


def test_uid_fetch_vanished_modifier(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "QRESYNC")
    append(c, count=5)
    known = response_code(c.ok("SELECT INBOX"), b"HIGHESTMODSEQ")
    c.ok("STORE 1,5 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")
    c.ok("UID STORE 2 +FLAGS.SILENT (\\Seen)")
    top = status(c)[b"HIGHESTMODSEQ"]
    # "*" reaches the expunged UID 5 above the highest UID left (RFC 7162 3.2.6).
    untagged = c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known} VANISHED)")
    assert untagged == [
        b"* VANISHED (EARLIER) 1,5\r\n",
        b"* 1 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (%d))\r\n" % top,
    ]
    assert c.ok(f"UID FETCH 2:4 (FLAGS) (CHANGEDSINCE {known} VANISHED)") == [
        b"* 1 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (%d))\r\n" % top
    ]
    assert c.cmd(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {known} VANISHED)")[1].startswith(b"t15 BAD")


def test_close_and_move_report_highestmodseq(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "QRESYNC")
    append(c, count=3)
    c.ok("SELECT INBOX")
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    before = status(c)[b"HIGHESTMODSEQ"]
    untagged, tagged = c.cmd("UID MOVE 2 Archive")
    assert untagged[1:] == [b"* VANISHED 2\r\n"]
    assert tagged == b"t9 OK [HIGHESTMODSEQ %d] MOVE completed\r\n" % (before + 1)
    # RFC 7162 3.2.8: CLOSE gives the HIGHESTMODSEQ after its silent expunge.
    assert c.cmd("CLOSE") == ([], b"t10 OK [HIGHESTMODSEQ %d] CLOSE completed\r\n" % (before + 2))
    assert status(c)[b"HIGHESTMODSEQ"] == before + 2
    # The moved message is newer than anything in the target (RFC 6851 4.4).
    untagged = c.ok("SELECT Archive")
    assert response_code(untagged, b"HIGHESTMODSEQ") == 2
    assert c.ok("FETCH 1 (UID MODSEQ)") == [b"* 1 FETCH (UID 1 MODSEQ (2))\r\n"]


def test_uids_and_modseqs_survive_restart(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "QRESYNC")
    append(c, count=3)
    untagged = c.ok("SELECT INBOX")
    v = response_code(untagged, b"UIDVALIDITY")
    known = response_code(untagged, b"HIGHESTMODSEQ")
    c.ok("STORE 2:3 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")
    assert append(c) == [4]  # UID 3 is not given again
    before = status(c)
    assert before[b"UIDNEXT"] == 5
    c.close()
    server.stop()
    server.start()
    r = connect(server, user, "QRESYNC")
    assert status(r) == before
    untagged = r.ok(f"SELECT INBOX (QRESYNC ({v} {known}))")
    assert response_code(untagged, b"UIDVALIDITY") == v
    assert response_code(untagged, b"UIDNEXT") == 5
    assert response_code(untagged, b"HIGHESTMODSEQ") == before[b"HIGHESTMODSEQ"]
    assert b"* VANISHED (EARLIER) 2:3\r\n" in untagged
    assert not any(b"NOMODSEQ" in line for line in untagged)
    r.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    r.ok("EXPUNGE")
    assert append(r) == [5]
    after = status(r)
    assert after[b"UIDNEXT"] == 6 and after[b"HIGHESTMODSEQ"] > before[b"HIGHESTMODSEQ"]
    assert after[b"MESSAGES"] == 1
