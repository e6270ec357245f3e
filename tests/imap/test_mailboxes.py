"""Mailbox commands: SELECT/EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE/UNSUBSCRIBE, LIST (RFC 9051 6.3.9,
LIST-EXTENDED RFC 5258, SPECIAL-USE RFC 6154, LIST-STATUS RFC 5819), LSUB, NAMESPACE, STATUS, and mailbox names
in modified UTF-7 and UTF-8."""

from __future__ import annotations

import imaplib

import pytest
from imapclient import IMAPClient

from harness import ServerProcess
from imap.imaputil import PASSWORD, append_message, connect, message, response_code
from imap.rawclient import Raw

DEFAULT_LIST = [
    b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
    b'* LIST (\\HasNoChildren \\Archive) "/" Archive\r\n',
    b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts\r\n',
    b'* LIST (\\HasNoChildren \\Junk) "/" Junk\r\n',
    b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n',
    b'* LIST (\\HasNoChildren \\Trash) "/" Trash\r\n',
]
SYSTEM = b"\\Seen \\Answered \\Flagged \\Deleted \\Draft"


def append(c: Raw, mailbox: str, flags: str = "", data: bytes | None = None) -> int:
    return append_message(c, mailbox, data if data is not None else message(), flags)


def uidvalidity(untagged: list[bytes]) -> int:
    return response_code(untagged, b"UIDVALIDITY")


def names(untagged: list[bytes]) -> list[bytes]:
    return [line.rsplit(b" ", 1)[1].rstrip(b"\r\n") for line in untagged]


# --- SELECT / EXAMINE ---------------------------------------------------------------------------------------


def test_select_empty_mailbox_exact_responses(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    untagged, tagged = c.cmd("SELECT INBOX")
    v = uidvalidity(untagged)
    assert untagged == [
        b"* FLAGS (" + SYSTEM + b")\r\n",
        b"* OK [PERMANENTFLAGS (" + SYSTEM + b" \\*)] flags permitted\r\n",
        b"* 0 EXISTS\r\n",
        b"* 0 RECENT\r\n",
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % v,
        b"* OK [UIDNEXT 1] predicted next UID\r\n",
        b"* OK [HIGHESTMODSEQ 1] highest modseq\r\n",
    ]
    assert tagged == b"t2 OK [READ-WRITE] SELECT completed\r\n"


def test_select_counts_recent_unseen_and_keywords(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, "INBOX", "\\Seen")
    append(c, "INBOX", "$Work")
    append(c, "INBOX", "\\Seen")
    untagged = c.ok("SELECT inbox")
    assert untagged[0] == b"* FLAGS (" + SYSTEM + b" $Work)\r\n"
    assert untagged[1] == b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Work \\*)] flags permitted\r\n"
    assert b"* 3 EXISTS\r\n" in untagged
    assert b"* 3 RECENT\r\n" in untagged
    assert b"* OK [UNSEEN 2] first unseen message\r\n" in untagged
    assert b"* OK [UIDNEXT 4] predicted next UID\r\n" in untagged
    # \Recent went to the first session: another one sees none.
    other = connect(server, user)
    untagged = other.ok("SELECT INBOX")
    assert b"* 0 RECENT\r\n" in untagged and b"* 3 EXISTS\r\n" in untagged
    untagged = c.ok("FETCH 1:3 FLAGS")
    assert untagged == [
        b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n",
        b"* 2 FETCH (FLAGS (\\Recent $Work))\r\n",
        b"* 3 FETCH (FLAGS (\\Seen \\Recent))\r\n",
    ]


def test_examine_is_read_only(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, "INBOX")
    untagged, tagged = c.cmd("EXAMINE INBOX")
    assert tagged == b"t3 OK [READ-ONLY] EXAMINE completed\r\n"
    assert b"* OK [PERMANENTFLAGS ()] flags permitted\r\n" in untagged
    assert b"* 1 EXISTS\r\n" in untagged and b"* 1 RECENT\r\n" in untagged
    # EXAMINE does not take \Recent, and does not set \Seen
    c.ok("FETCH 1 BODY[]")
    assert c.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))\r\n"]
    _, tagged = c.cmd("STORE 1 +FLAGS (\\Seen)")
    assert tagged.startswith(b"t6 NO [READ-ONLY]")
    _, tagged = c.cmd("EXPUNGE")
    assert tagged.startswith(b"t7 NO [READ-ONLY]")
    untagged = c.ok("SELECT INBOX")
    assert b"* 1 RECENT\r\n" in untagged


def test_select_rev2_has_list_and_no_recent(server: ServerProcess, user: str) -> None:
    c = connect(server, user, "IMAP4rev2")
    append(c, "INBOX")
    untagged, tagged = c.cmd("SELECT INBOX")
    v = uidvalidity(untagged)
    # RFC 9051 6.3.2: FLAGS, EXISTS and LIST; PERMANENTFLAGS, UIDNEXT, UIDVALIDITY; no RECENT, no UNSEEN.
    assert untagged == [
        b"* FLAGS (" + SYSTEM + b")\r\n",
        b"* OK [PERMANENTFLAGS (" + SYSTEM + b" \\*)] flags permitted\r\n",
        b"* 1 EXISTS\r\n",
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % v,
        b"* OK [UIDNEXT 2] predicted next UID\r\n",
        b"* OK [HIGHESTMODSEQ 2] highest modseq\r\n",
    ]
    assert tagged == b"t4 OK [READ-WRITE] SELECT completed\r\n"
    c.ok("CREATE Sent/2024")
    untagged = c.ok("EXAMINE Sent")
    assert b'* LIST (\\HasChildren \\Sent) "/" Sent\r\n' in untagged
    assert not any(b"RECENT" in x for x in untagged)


def test_reselect_closes_previous(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, "INBOX", "\\Deleted")
    c.ok("SELECT INBOX")
    untagged = c.ok("SELECT Drafts")
    # RFC 7162 3.2.11: the previous mailbox is closed (without expunging), before the new one's data.
    assert untagged[0] == b"* OK [CLOSED] previous mailbox closed\r\n"
    assert b"* 0 EXISTS\r\n" in untagged
    assert b"* 1 EXISTS\r\n" in c.ok("EXAMINE INBOX")
    # A failed SELECT leaves no mailbox selected (RFC 9051 6.3.2).
    untagged, tagged = c.cmd("SELECT Nope")
    assert untagged == [b"* OK [CLOSED] previous mailbox closed\r\n"]
    assert tagged == b"t6 NO [NONEXISTENT] no such mailbox\r\n"
    _, tagged = c.cmd("FETCH 1 FLAGS")
    assert tagged.startswith(b"t7 BAD")


def test_select_with_imaplib_and_imapclient(server: ServerProcess, user: str) -> None:
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    m.login(user, PASSWORD)
    assert m.append("INBOX", "(\\Flagged)", None, message())[0] == "OK"
    typ, data = m.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    assert m.response("UIDNEXT") == ("UIDNEXT", [b"2"])
    assert m.response("RECENT") == ("RECENT", [b"1"])
    m.logout()
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as c:
        c.login(user, PASSWORD)
        info = c.select_folder("INBOX", readonly=True)
        assert info[b"EXISTS"] == 1 and info[b"UIDNEXT"] == 2 and info[b"READ-ONLY"] == [b""]
        assert info[b"PERMANENTFLAGS"] == ()
        assert set(info[b"FLAGS"]) == {b"\\Seen", b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Draft"}


# --- CREATE / DELETE / RENAME -------------------------------------------------------------------------------


def test_create_with_hierarchy_and_trailing_separator(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    assert c.cmd("CREATE Projects/2024/Q1")[1] == b"t2 OK CREATE completed\r\n"
    assert c.cmd("CREATE Lists/")[1] == b"t3 OK CREATE completed\r\n"
    untagged = c.ok('LIST "" "*"')
    assert untagged == [
        DEFAULT_LIST[0],
        DEFAULT_LIST[1],
        DEFAULT_LIST[2],
        DEFAULT_LIST[3],
        b'* LIST (\\HasNoChildren) "/" Lists\r\n',
        b'* LIST (\\HasChildren) "/" Projects\r\n',
        b'* LIST (\\HasChildren) "/" Projects/2024\r\n',
        b'* LIST (\\HasNoChildren) "/" Projects/2024/Q1\r\n',
        DEFAULT_LIST[4],
        DEFAULT_LIST[5],
    ]
    # The superior names were made as real mailboxes.
    assert b"* 0 EXISTS\r\n" in c.ok("SELECT Projects/2024")


def test_create_existing_and_inbox(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("CREATE Work")
    assert c.cmd("CREATE Work")[1] == b"t3 NO [ALREADYEXISTS] mailbox exists already\r\n"
    assert c.cmd("CREATE Work/")[1].startswith(b"t4 NO [ALREADYEXISTS]")
    for n, name in enumerate(("INBOX", "inbox", "InBoX"), start=5):
        assert c.cmd(f"CREATE {name}")[1] == b"t%d NO [ALREADYEXISTS] INBOX exists already\r\n" % n
    # Names below INBOX are allowed, and INBOX there is spelled in capitals whatever the client wrote.
    c.ok("CREATE inbox/Sub")
    assert c.ok('LIST "" "INBOX*"') == [
        b'* LIST (\\HasChildren) "/" INBOX\r\n',
        b'* LIST (\\HasNoChildren) "/" INBOX/Sub\r\n',
    ]
    _, tagged = c.cmd('CREATE ""')
    assert tagged.startswith(b"t10 NO")
    _, tagged = c.cmd("CREATE a//b")
    assert tagged.startswith(b"t11 NO [CANNOT]")
    # INBOX and what is below it are listed first.
    assert names(c.ok('LIST "" "*"'))[:3] == [b"INBOX", b"INBOX/Sub", b"Archive"]


def test_create_special_use(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    assert b"CREATE-SPECIAL-USE" in c.greeting
    assert c.cmd("CREATE Outbox (USE (\\Sent))")[1] == b"t2 OK CREATE completed\r\n"
    assert c.ok('LIST "" Outbox') == [b'* LIST (\\HasNoChildren \\Sent) "/" Outbox\r\n']
    # RFC 6154 3: an attribute the server cannot give is refused with USEATTR.
    _, tagged = c.cmd("CREATE Everything (USE (\\All))")
    assert tagged.startswith(b"t4 NO [USEATTR]")
    _, tagged = c.cmd("CREATE Odd (USE (\\Whatever))")
    assert tagged.startswith(b"t5 NO [USEATTR]")
    assert c.ok('LIST "" "Everything"') == []
    assert c.cmd("CREATE Old (USE ())")[1] == b"t7 OK CREATE completed\r\n"
    assert c.ok('LIST "" Old') == [b'* LIST (\\HasNoChildren) "/" Old\r\n']


def test_delete(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("CREATE Work")
    append(c, "Work")
    append(c, "Work")
    old = c.ok("STATUS Work (UIDVALIDITY)")[0]
    assert c.cmd("DELETE Work")[1] == b"t6 OK DELETE completed\r\n"
    assert c.ok('LIST "" Work') == []
    assert c.cmd("DELETE Work")[1] == b"t8 NO [NONEXISTENT] no such mailbox\r\n"
    assert c.cmd("DELETE INBOX")[1] == b"t9 NO [CANNOT] INBOX cannot be deleted\r\n"
    assert c.cmd("DELETE inbox")[1] == b"t10 NO [CANNOT] INBOX cannot be deleted\r\n"
    # A made-again mailbox of the same name has a new UIDVALIDITY, so its UIDs cannot be taken for the old
    # ones (RFC 9051 6.3.5), and it starts empty.
    c.ok("CREATE Work")
    new = c.ok("STATUS Work (UIDVALIDITY MESSAGES)")[0]
    assert new != old and new.startswith(b"* STATUS Work (UIDVALIDITY ") and new.endswith(b" MESSAGES 0)\r\n")
    assert int(new.split()[4]) > int(old.split()[4].rstrip(b")\r\n"))


def test_delete_parent_keeps_children(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("CREATE Parent/Child")
    append(c, "Parent")
    # RFC 3501 6.3.4: deleting a name with inferiors removes its messages; the name becomes \Noselect.
    c.ok("DELETE Parent")
    assert c.ok('LIST "" "Parent*"') == [
        b'* LIST (\\Noselect \\HasChildren) "/" Parent\r\n',
        b'* LIST (\\HasNoChildren) "/" Parent/Child\r\n',
    ]
    assert c.ok('LIST () "" "Parent"') == [b'* LIST (\\NonExistent \\HasChildren) "/" Parent\r\n']
    _, tagged = c.cmd("SELECT Parent")
    assert tagged.startswith(b"t7 NO [NONEXISTENT]")
    # It is an error to delete a \Noselect name that has inferiors.
    _, tagged = c.cmd("DELETE Parent")
    assert tagged.startswith(b"t8 NO [HASCHILDREN]")
    c.ok("DELETE Parent/Child")
    assert c.ok('LIST "" "Parent*"') == []
    # CREATE of the old name works again.
    c.ok("CREATE Parent")
    assert c.ok('LIST "" "Parent*"') == [b'* LIST (\\HasNoChildren) "/" Parent\r\n']


def test_delete_selected_mailbox(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("CREATE Temp")
    c.ok("SELECT Temp")
    c.ok("DELETE Temp")
    _, tagged = c.cmd("NOOP")
    assert tagged == b"t5 OK NOOP completed\r\n"
    _, tagged = c.cmd("FETCH 1 FLAGS")
    assert tagged.startswith(b"t6 BAD")
    # The same after a RENAME of the selected mailbox: the session leaves it and stays connected.
    c.ok("CREATE Temp")
    c.ok("SELECT Temp")
    c.ok("RENAME Temp Renamed")
    assert c.cmd("DELETE Renamed") == ([], b"t10 OK DELETE completed\r\n")
    assert c.cmd("NOOP") == ([], b"t11 OK NOOP completed\r\n")
    assert c.cmd("FETCH 1 FLAGS")[1].startswith(b"t12 BAD")


def test_rename_moves_children(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("CREATE Old/Kid/Grandkid")
    uid = append(c, "Old/Kid")
    v = uidvalidity(c.ok("EXAMINE Old/Kid"))
    c.ok("UNSELECT")
    assert c.cmd("RENAME Old New/Name")[1] == b"t6 OK RENAME completed\r\n"
    assert c.ok('LIST "" "Old*"') == []
    assert c.ok('LIST "" "New*"') == [
        b'* LIST (\\HasChildren) "/" New\r\n',
        b'* LIST (\\HasChildren) "/" New/Name\r\n',
        b'* LIST (\\HasChildren) "/" New/Name/Kid\r\n',
        b'* LIST (\\HasNoChildren) "/" New/Name/Kid/Grandkid\r\n',
    ]
    # The messages, their UIDs and the UIDVALIDITY go along.
    untagged = c.ok("EXAMINE New/Name/Kid")
    assert uidvalidity(untagged) == v and b"* 1 EXISTS\r\n" in untagged
    assert c.ok("UID FETCH 1:* UID") == [b"* 1 FETCH (UID %d)\r\n" % uid]
    assert c.cmd("RENAME Nope Other")[1] == b"t11 NO [NONEXISTENT] no such mailbox\r\n"
    assert c.cmd("RENAME New Sent")[1].startswith(b"t12 NO [ALREADYEXISTS]")
    assert c.cmd("RENAME New inbox")[1].startswith(b"t13 NO [ALREADYEXISTS]")
    assert c.cmd("RENAME New New/Name/Sub")[1].startswith(b"t14 NO [CANNOT]")
    # A new mailbox under the old name does not get the old one's UIDVALIDITY (RFC 9051 6.3.6).
    c.ok("CREATE Old/Kid")
    assert uidvalidity(c.ok("EXAMINE Old/Kid")) > v


def test_rename_inbox_moves_messages(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, "INBOX", "\\Flagged")
    append(c, "INBOX")
    c.ok("CREATE INBOX/Kid")
    v = uidvalidity(c.ok("EXAMINE INBOX"))
    c.ok("UNSELECT")
    assert c.cmd("RENAME inbox Saved")[1] == b"t7 OK RENAME completed\r\n"
    untagged = c.ok("SELECT INBOX")
    assert b"* 0 EXISTS\r\n" in untagged and uidvalidity(untagged) == v
    assert b"* OK [UIDNEXT 3] predicted next UID\r\n" in untagged
    untagged = c.ok("SELECT Saved")
    assert b"* 2 EXISTS\r\n" in untagged
    assert c.ok("FETCH 1:2 FLAGS") == [
        b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n",
        b"* 2 FETCH (FLAGS (\\Recent))\r\n",
    ]
    # INBOX's inferiors are not touched by a rename of INBOX.
    assert c.ok('LIST "" "INBOX*"') == [
        b'* LIST (\\HasChildren) "/" INBOX\r\n',
        b'* LIST (\\HasNoChildren) "/" INBOX/Kid\r\n',
    ]
    # A rename of INBOX to a name below it works too.
    append(c, "INBOX")
    assert c.cmd("RENAME INBOX INBOX/Old")[1].endswith(b"OK RENAME completed\r\n")
    assert b"* 1 EXISTS\r\n" in c.ok("EXAMINE INBOX/Old")


# --- SUBSCRIBE / LSUB ---------------------------------------------------------------------------------------


def test_subscribe_unsubscribe_lsub(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    assert c.ok('LSUB "" "*"') == [
        b'* LSUB () "/" INBOX\r\n',
        b'* LSUB () "/" Archive\r\n',
        b'* LSUB () "/" Drafts\r\n',
        b'* LSUB () "/" Junk\r\n',
        b'* LSUB () "/" Sent\r\n',
        b'* LSUB () "/" Trash\r\n',
    ]
    c.ok("CREATE Lists/Python")
    assert c.cmd("SUBSCRIBE Lists/Python")[1] == b"t4 OK SUBSCRIBE completed\r\n"
    # RFC 3501 6.3.9: "%" reaches the unsubscribed parent, which is shown \Noselect.
    assert c.ok('LSUB "" "Lists%"') == [b'* LSUB (\\Noselect) "/" Lists\r\n']
    assert c.ok('LSUB "" "Lists*"') == [b'* LSUB () "/" Lists/Python\r\n']
    assert c.ok('LSUB "Lists/" "%"') == [b'* LSUB () "/" Lists/Python\r\n']
    # Subscriptions survive the mailbox; unsubscribing a name not subscribed is OK (RFC 9051 6.3.8).
    c.ok("DELETE Lists/Python")
    assert c.ok('LSUB "" "Lists*"') == [b'* LSUB (\\Noselect) "/" Lists/Python\r\n']
    assert c.cmd("UNSUBSCRIBE Lists/Python")[1] == b"t10 OK UNSUBSCRIBE completed\r\n"
    assert c.cmd("UNSUBSCRIBE Lists/Python")[1] == b"t11 OK UNSUBSCRIBE completed\r\n"
    assert c.ok('LSUB "" "Lists*"') == []
    c.ok("UNSUBSCRIBE inbox")
    assert c.ok('LSUB "" INBOX') == []


# --- LIST ---------------------------------------------------------------------------------------------------


def test_list_delimiter_and_root(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    assert c.ok('LIST "" ""') == [b'* LIST (\\Noselect) "/" ""\r\n']
    assert c.ok('LIST "Archive/x" ""') == [b'* LIST (\\Noselect) "/" ""\r\n']
    assert c.ok('LIST "" "*"') == DEFAULT_LIST
    assert c.ok('LIST "" "%"') == DEFAULT_LIST
    assert c.ok('LIST "" INBOX') == [DEFAULT_LIST[0]]
    assert c.ok('LIST "" "inbox"') == [DEFAULT_LIST[0]]
    assert c.ok('LIST "" "nothing"') == []


def test_list_wildcards_and_reference(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    for name in ("Work/Reports/2023", "Work/Reports/2024", "Work/Travel", "Workshop"):
        c.ok(f"CREATE {name}")
    assert names(c.ok('LIST "" "Work*"')) == [
        b"Work",
        b"Work/Reports",
        b"Work/Reports/2023",
        b"Work/Reports/2024",
        b"Work/Travel",
        b"Workshop",
    ]
    assert names(c.ok('LIST "" "Work/%"')) == [b"Work/Reports", b"Work/Travel"]
    assert names(c.ok('LIST "" "Work%"')) == [b"Work", b"Workshop"]
    assert names(c.ok('LIST "" "%/%/2024"')) == [b"Work/Reports/2024"]
    assert names(c.ok('LIST "Work/" "%"')) == [b"Work/Reports", b"Work/Travel"]
    assert names(c.ok('LIST "Work" "/%"')) == [b"Work/Reports", b"Work/Travel"]
    assert names(c.ok('LIST "Work/Reports/" "*"')) == [b"Work/Reports/2023", b"Work/Reports/2024"]
    assert names(c.ok('LIST "" "*/2023"')) == [b"Work/Reports/2023"]
    # After the parent goes, "%" still shows the level (\Noselect), "*" its inferiors.
    c.ok("DELETE Work/Reports")
    assert c.ok('LIST "Work/" "%"') == [
        b'* LIST (\\Noselect \\HasChildren) "/" Work/Reports\r\n',
        b'* LIST (\\HasNoChildren) "/" Work/Travel\r\n',
    ]


def test_list_extended_selection_and_return(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("CREATE Fruit/Apple")
    c.ok("CREATE Fruit/Banana")
    c.ok("SUBSCRIBE Fruit/Banana")
    c.ok("SUBSCRIBE Fruit/Peach")  # no such mailbox
    c.ok("UNSUBSCRIBE Junk")
    assert c.ok('LIST (SUBSCRIBED) "" "Fruit/*"') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana\r\n',
        b'* LIST (\\NonExistent \\Subscribed) "/" Fruit/Peach\r\n',
    ]
    assert c.ok('LIST "" "Fruit*" RETURN (SUBSCRIBED)') == [
        b'* LIST (\\HasChildren) "/" Fruit\r\n',
        b'* LIST (\\HasNoChildren) "/" Fruit/Apple\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana\r\n',
    ]
    # RFC 5258 3.5: RECURSIVEMATCH reports parents of subscribed names with CHILDINFO.
    assert c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed \\Archive) "/" Archive\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed \\Drafts) "/" Drafts\r\n',
        b'* LIST (\\HasChildren) "/" Fruit ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" Sent\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "/" Trash\r\n',
    ]
    _, tagged = c.cmd('LIST (RECURSIVEMATCH) "" "%"')
    assert tagged.startswith(b"t10 BAD")
    assert c.ok('LIST (REMOTE) "" "Fruit"') == [b'* LIST (\\HasChildren) "/" Fruit\r\n']
    assert c.ok('LIST "" "Fruit" RETURN (CHILDREN)') == [b'* LIST (\\HasChildren) "/" Fruit\r\n']
    # Several patterns at once (RFC 5258 3)
    assert names(c.ok('LIST "" ("INBOX" "Fruit/%")')) == [b"INBOX", b"Fruit/Apple", b"Fruit/Banana"]
    _, tagged = c.cmd('LIST (BOGUS) "" "%"')
    assert tagged.startswith(b"t14 BAD")


def test_list_special_use(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("CREATE Plain")
    expected = [line for line in DEFAULT_LIST if line != DEFAULT_LIST[0]]
    # RFC 6154 2: the SPECIAL-USE selection option lists only mailboxes with a special use.
    assert c.ok('LIST (SPECIAL-USE) "" "*"') == expected
    assert c.ok('LIST "" "*" RETURN (SPECIAL-USE)')[1:] == [
        DEFAULT_LIST[1],
        DEFAULT_LIST[2],
        DEFAULT_LIST[3],
        b'* LIST (\\HasNoChildren) "/" Plain\r\n',
        DEFAULT_LIST[4],
        DEFAULT_LIST[5],
    ]
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as ic:
        ic.login(user, PASSWORD)
        assert ic.find_special_folder(b"\\Sent") == "Sent"
        assert ic.find_special_folder(b"\\Trash") == "Trash"
        assert ic.find_special_folder(b"\\Junk") == "Junk"
        assert ic.find_special_folder(b"\\Drafts") == "Drafts"
        assert ic.find_special_folder(b"\\Archive") == "Archive"


def test_list_status(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, "Drafts", "\\Draft")
    append(c, "Drafts", "\\Seen")
    c.ok("CREATE Parent/Child")
    c.ok("DELETE Parent")
    untagged = c.ok('LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))')
    assert untagged[:4] == [
        DEFAULT_LIST[0],
        b"* STATUS INBOX (MESSAGES 0 UNSEEN 0)\r\n",
        DEFAULT_LIST[1],
        b"* STATUS Archive (MESSAGES 0 UNSEEN 0)\r\n",
    ]
    assert untagged[4:6] == [DEFAULT_LIST[2], b"* STATUS Drafts (MESSAGES 2 UNSEEN 1)\r\n"]
    # A \NonExistent name gets no STATUS (RFC 5819 2).
    i = untagged.index(b'* LIST (\\NonExistent \\HasChildren) "/" Parent\r\n')
    assert untagged[i + 1] == b'* LIST (\\HasNoChildren) "/" Parent/Child\r\n'
    assert untagged[i + 2] == b"* STATUS Parent/Child (MESSAGES 0 UNSEEN 0)\r\n"


def test_namespace(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    assert c.ok("NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL NIL\r\n']


# --- STATUS -------------------------------------------------------------------------------------------------


def test_status_all_items(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    a = message(body="a" * 100)
    b = message(body="b" * 50)
    append(c, "Archive", "\\Seen", a)
    append(c, "Archive", "\\Deleted", b)
    untagged, tagged = c.cmd(
        "STATUS Archive (MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT SIZE DELETED HIGHESTMODSEQ)"
    )
    v = uidvalidity(c.ok("EXAMINE Archive"))
    assert untagged == [
        b"* STATUS Archive (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d UNSEEN 1 RECENT 2 SIZE %d DELETED 1"
        b" HIGHESTMODSEQ 3)\r\n" % (v, len(a) + len(b))
    ]
    assert tagged == b"t4 OK STATUS completed\r\n"
    c.ok("SELECT Archive")  # takes \Recent
    c.ok("UNSELECT")
    assert c.ok("STATUS Archive (RECENT MESSAGES)") == [b"* STATUS Archive (RECENT 0 MESSAGES 2)\r\n"]
    assert c.cmd("STATUS Nope (MESSAGES)")[1] == b"t9 NO [NONEXISTENT] no such mailbox\r\n"
    assert c.cmd("STATUS INBOX (BOGUS)")[1].startswith(b"t10 BAD")
    assert c.cmd("STATUS INBOX ()")[1].startswith(b"t11 BAD")


def test_status_of_selected_mailbox(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("SELECT INBOX")
    other = connect(server, user)
    append(other, "INBOX")
    # STATUS on the selected mailbox is allowed; the new message is announced too.
    untagged = c.ok("STATUS INBOX (MESSAGES RECENT)")
    assert b"* STATUS INBOX (MESSAGES 1 RECENT 1)\r\n" in untagged
    assert b"* 1 EXISTS\r\n" in untagged and b"* 1 RECENT\r\n" in untagged


# --- names --------------------------------------------------------------------------------------------------


def test_modified_utf7_names(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    # "Entwürfe" and "日本語" and "A&B" in modified UTF-7 (RFC 3501 5.1.3)
    c.ok("CREATE Entw&APw-rfe")
    c.ok("CREATE &ZeVnLIqe-")
    c.ok('CREATE "A&-B"')
    assert c.ok('LIST "" "Entw*"') == [b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe\r\n']
    assert c.ok('LIST "" "&ZeVnLIqe-"') == [b'* LIST (\\HasNoChildren) "/" &ZeVnLIqe-\r\n']
    assert c.ok('LIST "" "A*"')[0] == b'* LIST (\\HasNoChildren) "/" A&-B\r\n'
    assert c.ok("STATUS &ZeVnLIqe- (MESSAGES)") == [b"* STATUS &ZeVnLIqe- (MESSAGES 0)\r\n"]
    _, tagged = c.cmd("CREATE Bad&Name")
    assert tagged.startswith(b"t9 NO")
    # The same mailboxes seen by an IMAP4rev2 session: UTF-8 (RFC 9051 5.1).
    r2 = connect(server, user, "IMAP4rev2")
    assert r2.ok('LIST "" "Entw*"') == [b'* LIST (\\HasNoChildren) "/" "Entw\xc3\xbcrfe"\r\n']
    r2.ok('CREATE "été"')
    assert c.ok('LIST "" "&AOk-t&AOk-"') == [b'* LIST (\\HasNoChildren) "/" &AOk-t&AOk-\r\n']
    untagged = r2.ok('SELECT "日本語"')
    assert b"* 0 EXISTS\r\n" in untagged
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as ic:
        ic.login(user, PASSWORD)
        assert ic.folder_exists("Entwürfe") and ic.folder_exists("日本語")
        ic.create_folder("Ελληνικά")
        assert "Ελληνικά" in [f[2] for f in ic.list_folders()]


def test_users_see_only_their_own_folders(server: ServerProcess, user: str) -> None:
    from imap.imaputil import DOMAIN, add_accounts

    other_user = "x" + user
    add_accounts(server, [other_user])
    assert other_user.endswith(DOMAIN)
    a = connect(server, user)
    b = connect(server, other_user)
    a.ok("CREATE Private")
    append(a, "INBOX")
    assert b.ok('LIST "" "*"') == DEFAULT_LIST
    assert b.cmd("SELECT Private")[1].startswith(b"t3 NO [NONEXISTENT]")
    assert b"* 0 EXISTS\r\n" in b.ok("SELECT INBOX")
    assert b.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 0)\r\n"]
    assert b.cmd("DELETE Private")[1].startswith(b"t6 NO [NONEXISTENT]")
    assert b.cmd("RENAME Private Mine")[1].startswith(b"t7 NO [NONEXISTENT]")
    assert a.ok('LIST "" Private') == [b'* LIST (\\HasNoChildren) "/" Private\r\n']


@pytest.mark.parametrize("command", ["CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE"])
def test_mailbox_commands_need_authentication(server: ServerProcess, command: str) -> None:
    c = Raw(server.port("imap"))
    _, tagged = c.cmd(f"{command} Foo")
    assert tagged.startswith(b"t1 BAD")
