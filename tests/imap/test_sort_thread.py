"""SORT and THREAD=REFERENCES (RFC 5256), with the DISPLAYFROM/DISPLAYTO keys of SORT=DISPLAY (RFC 5957): sort
keys and their tie-breaks, base subjects, REFERENCES threading (missing parents, dummies, subject merging,
sibling order) and the exact SORT and THREAD responses."""

from __future__ import annotations

import itertools
import re

import pytest
from imapclient import IMAPClient

from harness import ServerProcess
from homemail.imap.sort import base_subject
from imap.imaputil import PASSWORD, connect
from imap.rawclient import Raw

_mailboxes = itertools.count(1)


def append(c: Raw, data: bytes, when: str = "01-Jan-2024 00:00:00 +0000", mailbox: str = "INBOX") -> None:
    c.ok(f'APPEND {mailbox} () "{when}" {{{len(data)}}}\r\n'.encode() + data)


def one(c: Raw, command: str | bytes) -> bytes:
    """Run a command that answers one untagged line; return it without its CRLF."""
    untagged, tagged = c.cmd(command)
    assert re.match(rb"t\d+ OK ", tagged), (command, tagged)
    assert len(untagged) == 1, (command, untagged)
    return untagged[0].removesuffix(b"\r\n")


def bad(c: Raw, command: str) -> bytes:
    untagged, tagged = c.cmd(command)
    assert untagged == [], (command, untagged)
    assert re.match(rb"t\d+ BAD ", tagged), (command, tagged)
    return tagged


# --- SORT --------------------------------------------------------------------------------------------------

# seq: subject, From, To, Cc, Date, INTERNALDATE.  Sent dates in UTC: 2 Jan 1 23:00 (local Jan 2 01:00 +0200),
# 4 no valid Date (its INTERNALDATE, Jan 1 23:30), 1 Jan 3, 3 Jan 4 (local 09:00 -0500), 5 Jan 5.
SORT_MESSAGES = [
    (
        "Re: apple",
        "Zed <zed@example.org>",
        "=?UTF-8?Q?Aaron?= <mary@example.org>",
        None,
        "Wed, 3 Jan 2024 10:00:00 +0000",
        "05-Jan-2024 10:00:00 +0000",
    ),
    (
        "banana",
        "Nobody <adam@example.org>",
        "Xavier <xavier@example.org>",
        "bob@example.org",
        "Tue, 2 Jan 2024 01:00:00 +0200",
        "02-Jan-2024 10:00:00 +0000",
    ),
    (
        "[list] Apple (fwd)",
        "Mike <mike@example.org>",
        "alice@example.org",
        "Zoe <zoe@example.org>",
        "Thu, 4 Jan 2024 09:00:00 -0500",
        "04-Jan-2024 10:00:00 +0000",
    ),
    ("Fwd: Banana", "adam@example.org", "bob@example.org", None, "not a date", "01-Jan-2024 23:30:00 +0000"),
    (
        None,
        None,
        "carl@example.org",
        "ann@example.org",
        "Fri, 5 Jan 2024 00:00:00 +0000",
        "03-Jan-2024 10:00:00 +0000",
    ),
]
# body lengths that make the sizes come out 3 < 1 < 5 < 2 < 4
SORT_BODIES = [200, 400, 10, 600, 300]


def sort_message(i: int) -> bytes:
    subject, from_, to, cc, date, _ = SORT_MESSAGES[i]
    head = ""
    if from_:
        head += f"From: {from_}\r\n"
    head += f"To: {to}\r\n"
    if cc:
        head += f"Cc: {cc}\r\n"
    if subject is not None:
        head += f"Subject: {subject}\r\n"
    head += f"Date: {date}\r\nMessage-ID: <sort{i}@example.org>\r\n\r\n"
    return (head + "x" * SORT_BODIES[i] + "\r\n").encode()


def sort_corpus(server: ServerProcess, user: str) -> Raw:
    c = connect(server, user)
    for i in range(5):
        append(c, sort_message(i), SORT_MESSAGES[i][5])
    c.ok("SELECT INBOX")
    return c


def sort(c: Raw, args: str) -> str:
    line = one(c, "SORT " + args)
    assert line.startswith(b"* SORT"), line
    return line[7:].decode()


def test_sort_keys(server: ServerProcess, user: str) -> None:
    c = sort_corpus(server, user)
    assert sort(c, "(ARRIVAL) UTF-8 ALL") == "4 2 5 3 1"
    # RFC 5256 2.2: the sent date in UTC; the INTERNALDATE when the Date header cannot be parsed
    assert sort(c, "(DATE) UTF-8 ALL") == "2 4 1 3 5"
    # base subjects: APPLE (1, 3), BANANA (2, 4), "" (5); ties in sequence order
    assert sort(c, "(SUBJECT) UTF-8 ALL") == "5 1 3 2 4"
    # RFC 5256 3: the first From/To/Cc address's mailbox; no address sorts as the empty string
    assert sort(c, "(FROM) UTF-8 ALL") == "5 2 4 3 1"
    assert sort(c, "(TO) UTF-8 ALL") == "3 4 5 1 2"
    assert sort(c, "(CC) UTF-8 ALL") == "1 4 5 2 3"
    sizes = [len(sort_message(i)) for i in range(5)]
    assert sort(c, "(SIZE) UTF-8 ALL") == "3 1 5 2 4"
    assert sorted(range(5), key=lambda i: sizes[i]) == [2, 0, 4, 1, 3]
    # keys are case-insensitive atoms
    assert sort(c, "(size) utf-8 all") == "3 1 5 2 4"


def test_sort_reverse_and_multiple_keys(server: ServerProcess, user: str) -> None:
    c = sort_corpus(server, user)
    assert sort(c, "(REVERSE ARRIVAL) UTF-8 ALL") == "1 3 5 2 4"
    assert sort(c, "(REVERSE DATE) UTF-8 ALL") == "5 3 1 4 2"
    assert sort(c, "(REVERSE SIZE) UTF-8 ALL") == "4 2 5 1 3"
    # RFC 5256 3: REVERSE turns one criterion round; ties stay in sequence order
    assert sort(c, "(REVERSE SUBJECT) UTF-8 ALL") == "2 4 1 3 5"
    assert sort(c, "(REVERSE CC) UTF-8 ALL") == "3 2 5 1 4"
    assert sort(c, "(REVERSE FROM) UTF-8 ALL") == "1 3 2 4 5"
    # several criteria, as in the RFC's "SORT (SUBJECT REVERSE DATE)"
    assert sort(c, "(SUBJECT REVERSE DATE) UTF-8 ALL") == "5 3 1 4 2"
    assert sort(c, "(SUBJECT DATE) UTF-8 ALL") == "5 1 3 2 4"
    assert sort(c, "(FROM REVERSE DATE) UTF-8 ALL") == "5 4 2 3 1"
    assert sort(c, "(REVERSE FROM REVERSE ARRIVAL) UTF-8 ALL") == "1 3 2 4 5"
    assert sort(c, "(CC SIZE) UTF-8 ALL") == "1 4 5 2 3"
    assert sort(c, "(CC REVERSE SIZE) UTF-8 ALL") == "4 1 5 2 3"


def test_sort_display(server: ServerProcess, user: str) -> None:
    """RFC 5957: the display name of the first address (RFC 2047 decoded), else the address itself."""
    c = sort_corpus(server, user)
    caps = one(c, "CAPABILITY").split()
    assert b"SORT=DISPLAY" in caps and b"SORT" in caps
    assert sort(c, "(DISPLAYFROM) UTF-8 ALL") == "5 4 3 2 1"
    assert sort(c, "(DISPLAYTO) UTF-8 ALL") == "1 3 4 5 2"
    assert sort(c, "(REVERSE DISPLAYFROM) UTF-8 ALL") == "1 2 3 4 5"


def test_sort_search_keys_charset_and_uid(server: ServerProcess, user: str) -> None:
    c = sort_corpus(server, user)
    # the search criteria choose the messages (RFC 5256 3: as SEARCH)
    assert sort(c, "(ARRIVAL) UTF-8 SINCE 3-Jan-2024") == "5 3 1"
    assert sort(c, "(SUBJECT) US-ASCII OR FROM adam TO alice") == "3 2 4"
    assert sort(c, '(DATE) "UTF-8" 2:4') == "2 4 3"
    assert sort(c, "(REVERSE DATE) UTF-8 SUBJECT {6}\r\nbanana") == "4 2"
    assert sort(c, '(SUBJECT) UTF-8 TEXT "not in mailbox"') == ""
    assert one(c, 'SORT (SUBJECT) UTF-8 TEXT "not in mailbox"') == b"* SORT"
    # UID SORT answers with UIDs; the order is the same
    uids = [int(x) for x in one(c, "UID SEARCH ALL").split()[2:]]
    line = one(c, "UID SORT (ARRIVAL) UTF-8 ALL")
    assert line == b"* SORT " + b" ".join(b"%d" % uids[i - 1] for i in (4, 2, 5, 3, 1))
    # sequence numbers move after an expunge; the sort follows them
    c.ok("STORE 4 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")
    assert sort(c, "(ARRIVAL) UTF-8 ALL") == "2 4 3 1"
    line = one(c, "UID SORT (REVERSE ARRIVAL) UTF-8 ALL")
    assert line == b"* SORT " + b" ".join(b"%d" % uids[i - 1] for i in (1, 3, 5, 2))
    # an unknown charset: NO [BADCHARSET (...)]
    untagged, tagged = c.cmd("SORT (SUBJECT) X-UNKNOWN ALL")
    assert untagged == []
    m = re.match(rb"t\d+ NO \[BADCHARSET \(([^)]*)\)\] ", tagged)
    assert m is not None and b"UTF-8" in m.group(1).split(), tagged


def test_sort_modseq(server: ServerProcess, user: str) -> None:
    """RFC 7162 3.1.5 and 7: with a MODSEQ criterion, SORT ends in (MODSEQ highest-found), as SEARCH does."""
    c = sort_corpus(server, user)
    c.ok("ENABLE CONDSTORE")
    c.ok("STORE 2 +FLAGS.SILENT ($X)")
    modseqs = {}
    for line in c.ok("FETCH 1:* (MODSEQ)"):
        m = re.match(rb"\* (\d+) FETCH \(MODSEQ \((\d+)\)\)", line)
        assert m is not None, line
        modseqs[int(m.group(1))] = int(m.group(2))
    top = max(modseqs.values())
    assert modseqs[2] == top
    assert sort(c, "(ARRIVAL) UTF-8 MODSEQ 1") == f"4 2 5 3 1 (MODSEQ {top})"
    assert sort(c, f"(ARRIVAL) UTF-8 MODSEQ {top}") == f"2 (MODSEQ {top})"
    assert (
        sort(c, "(ARRIVAL) UTF-8 MODSEQ 1 NOT 2")
        == f"4 5 3 1 (MODSEQ {max(modseqs[i] for i in (1, 3, 4, 5))})"
    )
    assert sort(c, f"(ARRIVAL) UTF-8 MODSEQ {top + 1}") == ""
    assert sort(c, "(ARRIVAL) UTF-8 ALL") == "4 2 5 3 1"


def test_sort_syntax_errors(server: ServerProcess, user: str) -> None:
    c = sort_corpus(server, user)
    for command in (
        "SORT",
        "SORT (SUBJECT)",
        "SORT (SUBJECT) UTF-8",
        "SORT () UTF-8 ALL",
        "SORT (REVERSE) UTF-8 ALL",
        "SORT (REVERSE REVERSE DATE) UTF-8 ALL",
        "SORT (BOGUS) UTF-8 ALL",
        "SORT SUBJECT UTF-8 ALL",
        "SORT (SUBJECT DATE UTF-8 ALL",
        "SORT (SUBJECT) ALL",  # the charset is not optional
        "SORT (SUBJECT) UTF-8 BOGUS",
        "UID SORT (SUBJECT)",
    ):
        bad(c, command)
    c.ok("UNSELECT")
    bad(c, "SORT (SUBJECT) UTF-8 ALL")


def test_sort_with_imapclient(server: ServerProcess, user: str) -> None:
    sort_corpus(server, user).close()
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as cl:
        cl.login(user, PASSWORD)
        cl.select_folder("INBOX")
        uids = cl.search("ALL")
        assert cl.sort(["REVERSE", "ARRIVAL"]) == [uids[i - 1] for i in (1, 3, 5, 2, 4)]
        assert cl.sort(["SUBJECT", "REVERSE", "DATE"], ["NOT", "FROM", "zed"]) == [
            uids[i - 1] for i in (5, 3, 4, 2)
        ]


# --- base subject ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "base", "reply"),
    [
        ("hello", "HELLO", False),
        ("Re: hello", "HELLO", True),
        ("RE: Re: re: hello", "HELLO", True),
        ("Re:hello", "HELLO", True),
        ("Fw: hello", "HELLO", True),
        ("FWD: hello", "HELLO", True),
        ("Fwd : hello", "HELLO", True),
        ("Re[2]: hello", "HELLO", True),
        ("Re [2]: hello", "HELLO", True),
        ("[PATCH] hello", "HELLO", False),
        ("[PATCH] [v2] hello", "HELLO", False),
        ("[a]Re: hello", "HELLO", True),
        ("[a] [b] Re: [c] hello", "HELLO", True),
        ("Re: Fwd: [list] Re: hello", "HELLO", True),
        ("hello (fwd)", "HELLO", True),
        ("hello (FWD) (fwd)  ", "HELLO", True),
        ("[fwd: hello]", "HELLO", True),
        ("[Fwd: Re: hello (fwd)]", "HELLO", True),
        ("Fwd: [fwd: hello]", "HELLO", True),
        ("  hello \t  world  ", "HELLO WORLD", False),
        ("[PATCH]", "[PATCH]", False),
        ("[PATCH] [v2]", "[V2]", False),
        ("Re:", "", True),
        ("Re: (fwd)", "", True),
        ("", "", False),
        ("Ref: hello", "REF: HELLO", False),
        ("Reply: hello", "REPLY: HELLO", False),
        ("hello re: world", "HELLO RE: WORLD", False),
        ("=?UTF-8?Q?Re=3A_caf=C3=A9?=", "CAFé", True),
        ("=?UTF-8?B?W2xpc3RdIGhlbGxv?=", "HELLO", False),
    ],
)
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    """RFC 5256 2.1; compared with i;ascii-casemap, which upper-cases a-z only (RFC 4790 9.2)."""
    assert base_subject(subject) == (base, reply)


# --- THREAD=REFERENCES -------------------------------------------------------------------------------------


def tmsg(
    n: int,
    subject: str,
    msgid: str | None = "",
    refs: str | None = None,
    irt: str | None = None,
    date: str | None = "",
) -> bytes:
    """A message whose Date is n minutes past 10:00 on 1 Jan 2024 (unless given); Message-ID <n@t> (unless
    given; None for none)."""
    head = f"From: t{n}@example.org\r\nSubject: {subject}\r\n"
    if date == "":
        date = f"Mon, 1 Jan 2024 {10 + n // 60:02d}:{n % 60:02d}:00 +0000"
    if date is not None:
        head += f"Date: {date}\r\n"
    if msgid == "":
        msgid = f"<{n}@t>"
    if msgid is not None:
        head += f"Message-ID: {msgid}\r\n"
    if refs is not None:
        head += f"References: {refs}\r\n"
    if irt is not None:
        head += f"In-Reply-To: {irt}\r\n"
    return (head + "\r\nbody\r\n").encode()


def thread(c: Raw, messages: list[bytes], criteria: str = "ALL") -> str:
    """Put the messages in a new mailbox, select it, and return the THREAD REFERENCES answer after "* THREAD"."""
    name = f"T{next(_mailboxes)}"
    c.ok(f"CREATE {name}")
    for data in messages:
        append(c, data, mailbox=name)
    c.ok(f"SELECT {name}")
    line = one(c, f"THREAD REFERENCES UTF-8 {criteria}")
    assert line == b"* THREAD" or line.startswith(b"* THREAD ("), line
    return line[9:].decode()


def test_thread_rfc5256_example(server: ServerProcess, user: str) -> None:
    """RFC 5256 4: "(2)(3 6 (4 23)(44 7 96))" - 2 alone; 3, its reply 6, whose replies are 4 (with its reply
    23) and 44 (with 7, and 7's reply 96)."""
    c = connect(server, user)
    refs = {
        6: "<3@t>",
        4: "<3@t> <6@t>",
        23: "<3@t> <6@t> <4@t>",
        44: "<3@t> <6@t>",
        7: "<3@t> <6@t> <44@t>",
        96: "<3@t> <6@t> <44@t> <7@t>",
    }
    messages = []
    for n in range(1, 97):
        if n in refs:
            messages.append(tmsg(n, "Re: the plan", refs=refs[n]))
        elif n == 3:
            messages.append(tmsg(n, "the plan"))
        else:
            messages.append(tmsg(n, f"subject number {n}"))
    assert thread(c, messages, "2:4,6,7,23,44,96") == "(2)(3 6 (4 23)(44 7 96))"
    # everything: every other message is a thread of its own, in date order
    line = one(c, "THREAD REFERENCES UTF-8 ALL").decode()
    alone = [n for n in range(1, 97) if n not in refs]
    expect = "".join("(3 6 (4 23)(44 7 96))" if n == 3 else f"({n})" for n in alone)
    assert line == "* THREAD " + expect
    # RFC 5256 4: the same threads, by UID
    uids = [int(x) for x in one(c, "UID SEARCH ALL").split()[2:]]
    u = dict(zip(range(1, 97), uids, strict=True))
    line = one(c, "UID THREAD REFERENCES UTF-8 2:4,6,7,23,44,96").decode()
    assert line == f"* THREAD ({u[2]})({u[3]} {u[6]} ({u[4]} {u[23]})({u[44]} {u[7]} {u[96]}))"


def test_thread_dummies(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    # RFC 5256 4: "((3)(5))" - 3 and 5 answer a message that is not there; a dummy at the root keeps them together
    msgs = [
        tmsg(1, "one"),
        tmsg(2, "two"),
        tmsg(3, "Re: lost", refs="<lost@t>"),
        tmsg(4, "four"),
        tmsg(5, "Re: lost again", refs="<lost@t>"),
    ]
    assert thread(c, msgs) == "(1)(2)((3)(5))(4)"
    # a dummy with one child at the root is replaced by the child
    assert thread(c, [tmsg(1, "Re: gone", refs="<gone@t>"), tmsg(2, "other")]) == "(1)(2)"
    # a dummy below the root gives its children to its parent
    msgs = [
        tmsg(1, "top"),
        tmsg(2, "Re: top", refs="<1@t> <missing@t>"),
        tmsg(3, "Re: top", refs="<1@t> <missing@t>"),
    ]
    assert thread(c, msgs) == "(1 (2)(3))"
    # a missing link in the middle of a chain is skipped
    msgs = [tmsg(1, "a"), tmsg(2, "Re: a", refs="<1@t> <x@t> <y@t>")]
    assert thread(c, msgs) == "(1 2)"
    # a chain of missing messages with one real message under them
    assert thread(c, [tmsg(1, "Re: a", refs="<p@t> <q@t> <r@t>")]) == "(1)"
    # References link the messages they name too: 3 says 2 follows 1
    msgs = [tmsg(1, "a"), tmsg(2, "b"), tmsg(3, "Re: x", refs="<1@t> <2@t>")]
    assert thread(c, msgs) == "(1 2 3)"


def test_thread_links_and_order(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    # siblings sort by sent date, not by sequence number
    msgs = [
        tmsg(1, "root"),
        tmsg(2, "Re: root", refs="<1@t>", date="Mon, 1 Jan 2024 12:00:00 +0000"),
        tmsg(3, "Re: root", refs="<1@t>", date="Mon, 1 Jan 2024 11:00:00 +0000"),
        tmsg(4, "Re: root", refs="<1@t>", date="Mon, 1 Jan 2024 13:00:00 +0200"),  # 11:00 UTC, after 3
    ]
    assert thread(c, msgs) == "(1 (3)(4)(2))"
    # so do the threads; a missing or bad Date is the INTERNALDATE (here 1 Jan 2024 00:00 UTC, first)
    msgs = [
        tmsg(1, "late", date="Tue, 2 Jan 2024 10:00:00 +0000"),
        tmsg(2, "early", date="Mon, 1 Jan 2024 10:00:00 +0000"),
        tmsg(3, "no date", date=None),
        tmsg(4, "bad date", date="yesterday"),
    ]
    assert thread(c, msgs) == "(3)(4)(2)(1)"
    # In-Reply-To serves when there are no References; References win when both are there
    msgs = [
        tmsg(1, "a"),
        tmsg(2, "b"),
        tmsg(3, "Re: c", irt="<1@t>"),
        tmsg(4, "Re: d", refs="<2@t>", irt="<1@t>"),
    ]
    assert thread(c, msgs) == "(1 3)(2 4)"
    # a message that arrives before its parent
    msgs = [tmsg(1, "Re: a", refs="<2@t>"), tmsg(2, "a")]
    assert thread(c, msgs) == "(2 1)"
    # duplicate Message-IDs: the first message keeps it, the others get one of their own
    msgs = [
        tmsg(1, "first", msgid="<dup@t>"),
        tmsg(2, "second", msgid="<dup@t>"),
        tmsg(3, "x", refs="<dup@t>"),
    ]
    assert thread(c, msgs) == "(1 3)(2)"
    # no Message-ID at all
    msgs = [tmsg(1, "p", msgid=None), tmsg(2, "q", msgid=None), tmsg(3, "r", refs="<1@t>")]
    assert thread(c, msgs) == "(1)(2)(3)"
    # loops are not made: 1 says it follows 2, 2 says it follows 1
    msgs = [tmsg(1, "p", refs="<2@t>"), tmsg(2, "q", refs="<1@t>")]
    assert thread(c, msgs) == "(2 1)"
    msgs = [tmsg(1, "p", refs="<1@t>")]
    assert thread(c, msgs) == "(1)"
    # References that already have a parent keep it: 3 says b follows a, but 2 said b follows x first
    msgs = [tmsg(1, "a"), tmsg(2, "Re: b", refs="<x@t> <b@t>"), tmsg(3, "Re: b", refs="<1@t> <b@t>")]
    assert thread(c, msgs) == "(1)((2)(3))"


def test_thread_subject_merging(server: ServerProcess, user: str) -> None:
    """RFC 5256 4 step 5: threads at the root with the same base subject are gathered."""
    c = connect(server, user)
    # a reply without references joins the original
    assert thread(c, [tmsg(1, "hello"), tmsg(2, "Re: hello")]) == "(1 2)"
    # also when it is older; the original becomes the parent
    assert thread(c, [tmsg(1, "Re: hi"), tmsg(2, "hi")]) == "(2 1)"
    # two replies, or two originals: siblings under a dummy
    assert thread(c, [tmsg(1, "Re: yo"), tmsg(2, "Re: yo")]) == "((1)(2))"
    assert thread(c, [tmsg(1, "same"), tmsg(2, "same")]) == "((1)(2))"
    # every reply and forward form has the same base subject
    msgs = [
        tmsg(1, "news"),
        tmsg(2, "[list] Re: news"),
        tmsg(3, "Fwd: news (fwd)"),
        tmsg(4, "RE: [fwd: news]"),
    ]
    assert thread(c, msgs) == "(1 (2)(3)(4))"
    # a message joins a dummy with its subject
    msgs = [
        tmsg(1, "Re: topic", refs="<gone@t>"),
        tmsg(2, "Re: topic", refs="<gone@t>"),
        tmsg(3, "topic"),
    ]
    assert thread(c, msgs) == "((1)(2)(3))"
    # two dummies with one subject become one
    msgs = [
        tmsg(1, "Re: t", refs="<g1@t>"),
        tmsg(2, "Re: t", refs="<g1@t>"),
        tmsg(3, "Re: t", refs="<g2@t>"),
        tmsg(4, "Re: t", refs="<g2@t>"),
    ]
    assert thread(c, msgs) == "((1)(2)(3)(4))"
    # empty subjects are never gathered
    assert thread(c, [tmsg(1, ""), tmsg(2, "Re:")]) == "(1)(2)"
    # only threads at the root are gathered, not messages inside a thread
    msgs = [tmsg(1, "start"), tmsg(2, "Re: other", refs="<1@t>"), tmsg(3, "other")]
    assert thread(c, msgs) == "(1 2)(3)"
    # the gathered thread keeps its own children
    msgs = [tmsg(1, "base"), tmsg(2, "Re: base"), tmsg(3, "Re: base", refs="<2@t>")]
    assert thread(c, msgs) == "(1 2 3)"


def test_thread_command(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    caps = one(c, "CAPABILITY").split()
    assert b"THREAD=REFERENCES" in caps
    assert thread(c, [tmsg(1, "a"), tmsg(2, "Re: a", refs="<1@t>"), tmsg(3, "b")], "KEYWORD $none") == ""
    assert one(c, "THREAD REFERENCES UTF-8 KEYWORD $none") == b"* THREAD"
    assert one(c, "THREAD REFERENCES US-ASCII SUBJECT a") == b"* THREAD (1 2)"
    assert one(c, 'thread references "utf-8" NOT 2') == b"* THREAD (1)(3)"
    assert one(c, "THREAD REFERENCES UTF-8 SUBJECT {1}\r\nb") == b"* THREAD (3)"
    untagged, tagged = c.cmd("THREAD REFERENCES X-UNKNOWN ALL")
    assert untagged == [] and re.match(rb"t\d+ NO \[BADCHARSET \([^)]*UTF-8[^)]*\)\] ", tagged), tagged
    for command in (
        "THREAD",
        "THREAD REFERENCES",
        "THREAD REFERENCES UTF-8",
        "THREAD ORDEREDSUBJECT UTF-8 ALL",  # not advertised
        "THREAD BOGUS UTF-8 ALL",
        "THREAD REFERENCES ALL",
        "THREAD REFERENCES UTF-8 BOGUS",
    ):
        bad(c, command)
    # an expunge renumbers the threads
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")
    assert one(c, "THREAD REFERENCES UTF-8 ALL") == b"* THREAD (1)(2)"
    c.ok("UNSELECT")
    bad(c, "THREAD REFERENCES UTF-8 ALL")


def test_thread_with_imapclient(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    for data in (tmsg(1, "a"), tmsg(2, "Re: a", refs="<1@t>"), tmsg(3, "Re: a", refs="<1@t>"), tmsg(4, "b")):
        append(c, data)
    c.close()
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as cl:
        cl.login(user, PASSWORD)
        cl.select_folder("INBOX")
        u = cl.search("ALL")
        assert cl.thread() == ((u[0], (u[1],), (u[2],)), (u[3],))
