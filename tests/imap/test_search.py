"""SEARCH and UID SEARCH (RFC 3501 6.4.4, RFC 9051 6.4.4): every search key, charsets, decoded matching,
CONDSTORE's MODSEQ key (RFC 7162 3.1.5), ESEARCH return options (RFC 4731), the saved result "$" (RFC 5182),
and the ESEARCH answer of IMAP4rev2."""

from __future__ import annotations

import base64
import imaplib
import re

from imapclient import IMAPClient

from harness import ServerProcess
from imap.imaputil import PASSWORD, connect
from imap.rawclient import Raw

# --- the test mailbox --------------------------------------------------------------------------------------

PADDING = "".join(f"line {i:04d} of padding text to make this message large\r\n" for i in range(60))

MESSAGES: list[tuple[str, str, bytes]] = [
    # 1: plain ASCII, seen and answered, small
    (
        r"(\Seen \Answered)",
        "01-Jan-2024 10:00:00 +0000",
        (
            b"From: Alice Example <alice@example.org>\r\n"
            b"To: bob@example.test\r\n"
            b"Cc: Carol <carol@example.net>\r\n"
            b"Subject: Meeting tomorrow\r\n"
            b"Date: Mon, 1 Jan 2024 09:00:00 +0000\r\n"
            b"Message-ID: <m1@example.org>\r\n"
            b"X-Priority: 1\r\n"
            b"\r\n"
            b"Let's meet at noon in the big room.\r\n"
        ),
    ),
    # 2: encoded-word subject and sender, quoted-printable UTF-8 body, flagged; the Date is late on the
    # 15th in its own zone (the 16th in UTC), the internal date early on the 16th
    (
        r"(\Flagged)",
        "16-Feb-2024 04:30:00 +0000",
        (
            b"From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>\r\n"
            b"To: Alice <alice@example.org>\r\n"
            b"Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n"
            b"Date: Thu, 15 Feb 2024 23:30:00 -0500\r\n"
            b"Message-ID: <m2@example.de>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n"
            b"\r\n"
            b"Sch=C3=B6ne Gr=C3=BC=C3=9Fe vom Rhein, und ein sehr lan=\r\n"
            b"ges Wort.\r\n"
        ),
    ),
    # 3: multipart with a base64 text part and a PDF, deleted and draft, a keyword, Bcc, large
    (
        r"(\Deleted \Draft $Work)",
        "01-Mar-2024 12:00:00 +0100",
        (
            "From: Dave <dave@example.com>\r\n"
            "To: alice@example.org\r\n"
            "Bcc: secret-list@example.com\r\n"
            "Subject: Quarterly report\r\n"
            "Date: Fri, 1 Mar 2024 12:00:00 +0100\r\n"
            "Message-ID: <m3@example.com>\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n'
            "\r\n"
            "--b1\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "\r\n"
            + base64.encodebytes(b"The secret word is xylophone.\r\n").decode().replace("\n", "\r\n")
            + "\r\n--b1\r\n"
            "Content-Type: text/plain\r\n"
            "\r\n" + PADDING + "--b1\r\n"
            'Content-Type: application/pdf; name="report.pdf"\r\n'
            'Content-Disposition: attachment; filename="report.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            "\r\n"
            "JVBERi0xLjQKJcfsj6IK\r\n"
            "--b1--\r\n"
        ).encode(),
    ),
    # 4: a reply with an extra header and an empty Cc; no flags, a keyword
    (
        r"($Later)",
        "10-Mar-2024 08:00:00 +0000",
        (
            b"From: bob@example.test\r\n"
            b"To: Alice Example <alice@example.org>\r\n"
            b"Cc:\r\n"
            b"Subject: Re: Meeting tomorrow\r\n"
            b"Date: Sun, 10 Mar 2024 07:59:00 +0000\r\n"
            b"Message-ID: <m4@example.test>\r\n"
            b"In-Reply-To: <m1@example.org>\r\n"
            b"X-Mailing-List: dev@lists.example.org\r\n"
            b"\r\n"
            b"Noon works for me.\r\n"
        ),
    ),
    # 5: no Date header, no subject
    (
        "()",
        "20-Mar-2024 23:59:59 -0700",
        (
            b"From: Erin <erin@example.net>\r\nTo: alice@example.org\r\nMessage-ID: <m5@example.net>\r\n\r\nHi.\r\n"
        ),
    ),
]
SIZES = [len(m[2]) for m in MESSAGES]


def append(c: Raw, flags: str, when: str, data: bytes, mailbox: str = "INBOX") -> None:
    c.ok(f'APPEND {mailbox} {flags} "{when}" {{{len(data)}}}\r\n'.encode() + data)


def corpus(server: ServerProcess, user: str) -> Raw:
    """The five messages in INBOX, 1-3 no longer \\Recent; a client with INBOX selected."""
    c = connect(server, user)
    for flags, when, data in MESSAGES[:3]:
        append(c, flags, when, data)
    c.ok("SELECT INBOX")  # takes \Recent for the first three
    c.ok("UNSELECT")
    for flags, when, data in MESSAGES[3:]:
        append(c, flags, when, data)
    untagged = c.ok("SELECT INBOX")
    assert b"* 5 EXISTS\r\n" in untagged
    assert b"* 2 RECENT\r\n" in untagged
    return c


def search(c: Raw, args: str | bytes, cmd: str = "SEARCH") -> bytes:
    """Run a search command; return its one untagged line (without CRLF) after checking the tagged OK."""
    data = args.encode() if isinstance(args, str) else args
    untagged, tagged = c.cmd(cmd.encode() + b" " + data)
    assert re.match(rb"t\d+ OK ", tagged), (args, tagged)
    assert len(untagged) == 1, untagged
    return untagged[0].removesuffix(b"\r\n")


def hits(c: Raw, args: str | bytes) -> list[int]:
    line = search(c, args)
    assert line.startswith(b"* SEARCH"), line
    return [int(x) for x in line.split()[2:]]


# --- keys --------------------------------------------------------------------------------------------------


def test_flag_and_state_keys(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    assert search(c, "ALL") == b"* SEARCH 1 2 3 4 5"
    assert hits(c, "ANSWERED") == [1]
    assert hits(c, "UNANSWERED") == [2, 3, 4, 5]
    assert hits(c, "DELETED") == [3]
    assert hits(c, "UNDELETED") == [1, 2, 4, 5]
    assert hits(c, "DRAFT") == [3]
    assert hits(c, "UNDRAFT") == [1, 2, 4, 5]
    assert hits(c, "FLAGGED") == [2]
    assert hits(c, "UNFLAGGED") == [1, 3, 4, 5]
    assert hits(c, "SEEN") == [1]
    assert hits(c, "UNSEEN") == [2, 3, 4, 5]
    # RFC 3501 6.4.4: RECENT, NEW = RECENT UNSEEN, OLD = NOT RECENT
    assert hits(c, "RECENT") == [4, 5]
    assert hits(c, "NEW") == [4, 5]
    assert hits(c, "OLD") == [1, 2, 3]
    c.ok("STORE 4 +FLAGS.SILENT (\\Seen)")
    assert hits(c, "NEW") == [5]
    assert hits(c, "RECENT") == [4, 5]
    # keywords are matched case-insensitively
    assert hits(c, "KEYWORD $Work") == [3]
    assert hits(c, "KEYWORD $work") == [3]
    assert hits(c, "UNKEYWORD $Work") == [1, 2, 4, 5]
    assert hits(c, "KEYWORD $Nothing") == []
    assert hits(c, "UNKEYWORD $Nothing") == [1, 2, 3, 4, 5]
    # the search key names are case-insensitive too
    assert hits(c, "unseen unflagged") == [3, 5]


def test_address_and_subject_keys(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    assert hits(c, "FROM alice") == [1]
    assert hits(c, "FROM ALICE@EXAMPLE.ORG") == [1]
    assert hits(c, 'FROM "Alice Example"') == [1]
    assert hits(c, "FROM example") == [1, 2, 3, 4, 5]
    assert hits(c, "TO alice") == [2, 3, 4, 5]
    assert hits(c, "TO bob@example.test") == [1]
    assert hits(c, "CC carol") == [1]
    assert hits(c, "BCC secret-list") == [3]
    assert hits(c, "BCC alice") == []
    assert hits(c, "SUBJECT meeting") == [1, 4]
    assert hits(c, 'SUBJECT "re: MEETING"') == [4]
    assert hits(c, "SUBJECT report") == [3]
    assert hits(c, "SUBJECT nothing-like-this") == []
    # RFC 2047 encoded words are decoded before matching (RFC 9051 6.4.4)
    assert hits(c, 'FROM "Jörg Müller"') == [2]
    assert hits(c, 'FROM "müller"') == [2]
    assert hits(c, 'SUBJECT "grüße aus"') == [2]
    assert hits(c, "SUBJECT R3LDvMOfZSBhdXMgS8O2bG4") == []  # not the encoded form


def test_header_key(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    assert hits(c, "HEADER X-Priority 1") == [1]
    assert hits(c, "HEADER x-priority 2") == []
    assert hits(c, "HEADER X-Mailing-List LISTS.EXAMPLE") == [4]
    assert hits(c, 'HEADER In-Reply-To "<m1@example.org>"') == [4]
    assert hits(c, "HEADER Message-ID example.de") == [2]
    # RFC 3501 6.4.4: an empty string matches every message that has the field
    assert hits(c, 'HEADER X-Priority ""') == [1]
    assert hits(c, 'HEADER Date ""') == [1, 2, 3, 4]
    assert hits(c, 'HEADER Cc ""') == [1, 4]
    assert hits(c, 'HEADER Content-Type ""') == [2, 3]
    # decoded, as SUBJECT
    assert hits(c, 'HEADER Subject "Köln"') == [2]
    assert hits(c, 'NOT HEADER Subject ""') == [5]


def test_body_and_text_keys(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    assert hits(c, "BODY noon") == [1, 4]
    assert hits(c, "BODY NOON") == [1, 4]
    assert hits(c, "BODY meeting") == []  # only in the header
    assert hits(c, "TEXT meeting") == [1, 4]
    assert hits(c, "TEXT noon") == [1, 4]
    # quoted-printable and UTF-8 decoded (a soft line break joins "lan=" and "ges")
    assert hits(c, 'BODY "schöne grüße"') == [2]
    assert hits(c, "BODY langes") == [2]
    assert hits(c, "BODY Sch=C3=B6ne") == []
    # a base64 text part of a multipart message
    assert hits(c, "BODY xylophone") == [3]
    assert hits(c, "TEXT XYLOPHONE") == [3]
    assert hits(c, "BODY eHlsb3Bob25l") == []
    # TEXT covers the header, MIME header fields of the parts included (RFC 3501 6.4.4)
    assert hits(c, "TEXT dave@example.com") == [3]
    assert hits(c, "TEXT report.pdf") == [3]
    assert hits(c, "TEXT X-Mailing-List") == [4]
    assert hits(c, 'TEXT "Jörg"') == [2]
    # RFC 9051 9: an atom is 7-bit; 8-bit text goes in a quoted string or a literal
    _, tagged = c.cmd("SEARCH TEXT Jörg")
    assert re.match(rb"t\d+ BAD ", tagged)


def test_decoded_bodies_and_headers(server: ServerProcess, user: str) -> None:
    """Text is matched after transfer decoding and conversion from its charset, in every text part, nested
    messages included; header words after RFC 2047 decoding, whatever their charset."""
    c = connect(server, user)
    messages = [
        # ISO-8859-1, quoted-printable
        b"From: a@example.org\r\nSubject: =?ISO-8859-1?Q?Caf=E9_cr=E8me?=\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Gr=FC=DFe aus M=FCnchen\r\n",
        # multipart/alternative, base64 UTF-8 text and HTML
        b"From: b@example.org\r\nSubject: alt\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="x"\r\n\r\n--x\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode("Ελληνικά κείμενα".encode())
        + b"\r\n--x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>hypertext only</p>\r\n--x--\r\n",
        # a forwarded message inside
        b"From: c@example.org\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="y"\r\n\r\n--y\r\nContent-Type: text/plain\r\n\r\nsee below\r\n'
        b"--y\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: inner@example.org\r\nSubject: inner subject\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nthe inner w=C3=B6rd\r\n--y--\r\n",
        # 8-bit UTF-8 without any MIME header, and a header field folded over lines
        "From: d@example.org\r\nSubject: folded\r\n subject line\r\n\r\nnaïve 8-bit text\r\n".encode(),
    ]
    for data in messages:
        append(c, "()", "01-Jan-2024 00:00:00 +0000", data)
    c.ok("SELECT INBOX")
    assert hits(c, 'SUBJECT "café crème"') == [1]
    assert hits(c, 'SUBJECT "CAFÉ"') == [1]
    assert hits(c, 'BODY "grüße aus münchen"') == [1]
    assert hits(c, "BODY Gr=FC") == []
    assert hits(c, 'BODY "κείμενα"') == [2]
    assert hits(c, 'TEXT "ελληνικά"') == [2]
    assert hits(c, "BODY hypertext") == [2]
    assert hits(c, 'BODY "inner wörd"') == [3]
    assert hits(c, "BODY below") == [3]
    assert hits(c, "SUBJECT inner") == []  # the subject of the message itself only
    assert hits(c, "TEXT inner@example.org") == [3]
    assert hits(c, 'BODY "naïve"') == [4]
    assert hits(c, 'SUBJECT "folded subject line"') == [4]
    assert hits(c, 'HEADER subject "folded subject"') == [4]


def test_size_keys(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    sizes = SIZES
    assert sizes[2] > 2000 and max(sizes[:2] + sizes[3:]) < 1000
    # RFC 3501 6.4.4: strictly larger / smaller than RFC822.SIZE
    assert hits(c, f"LARGER {sizes[2]}") == []
    assert hits(c, f"LARGER {sizes[2] - 1}") == [3]
    assert hits(c, f"SMALLER {sizes[4]}") == []
    assert hits(c, f"SMALLER {sizes[4] + 1}") == [5]
    assert hits(c, "LARGER 1000") == [3]
    assert hits(c, "SMALLER 1000") == [1, 2, 4, 5]
    assert hits(c, "LARGER 0") == [1, 2, 3, 4, 5]
    assert hits(c, "SMALLER 0") == []
    untagged = c.ok("FETCH 1:5 RFC822.SIZE")
    assert untagged == [b"* %d FETCH (RFC822.SIZE %d)\r\n" % (i + 1, n) for i, n in enumerate(sizes)]


def test_internal_date_keys(server: ServerProcess, user: str) -> None:
    """BEFORE, ON and SINCE compare the INTERNALDATE's calendar day, in the zone it was given in."""
    c = corpus(server, user)
    assert hits(c, "ON 1-Jan-2024") == [1]
    assert hits(c, 'ON "01-Jan-2024"') == [1]
    assert hits(c, "ON 2-Jan-2024") == []
    assert hits(c, "BEFORE 1-Jan-2024") == []
    assert hits(c, "BEFORE 2-Jan-2024") == [1]
    assert hits(c, "SINCE 1-Jan-2024") == [1, 2, 3, 4, 5]
    assert hits(c, "SINCE 2-Jan-2024") == [2, 3, 4, 5]
    assert hits(c, "ON 16-Feb-2024") == [2]
    assert hits(c, "ON 15-Feb-2024") == []
    assert hits(c, "ON 1-Mar-2024") == [3]  # 12:00 +0100
    assert hits(c, "SINCE 10-Mar-2024") == [4, 5]
    assert hits(c, "BEFORE 10-Mar-2024") == [1, 2, 3]
    # 23:59:59 -0700 on the 20th is the 21st in UTC: still the 20th
    assert hits(c, "ON 20-Mar-2024") == [5]
    assert hits(c, "ON 21-Mar-2024") == []
    assert hits(c, "SINCE 1-Feb-2024 BEFORE 10-Mar-2024") == [2, 3]
    assert hits(c, "since 1-feb-2024 before 10-MAR-2024") == [2, 3]
    # RFC 5032 WITHIN: OLDER / YOUNGER than so many seconds (all five are from 2024)
    assert hits(c, "OLDER 60") == [1, 2, 3, 4, 5]
    assert hits(c, "YOUNGER 60") == []
    assert hits(c, "YOUNGER 4000000000") == [1, 2, 3, 4, 5]


def test_sent_date_keys(server: ServerProcess, user: str) -> None:
    """SENTBEFORE, SENTON and SENTSINCE compare the Date header's day in its own zone; no Date, no match."""
    c = corpus(server, user)
    assert hits(c, "SENTON 1-Jan-2024") == [1]
    assert hits(c, "SENTON 15-Feb-2024") == [2]  # 23:30 -0500
    assert hits(c, "SENTON 16-Feb-2024") == []
    assert hits(c, "SENTBEFORE 15-Feb-2024") == [1]
    assert hits(c, "SENTBEFORE 16-Feb-2024") == [1, 2]
    assert hits(c, "SENTSINCE 15-Feb-2024") == [2, 3, 4]
    assert hits(c, "SENTSINCE 16-Feb-2024") == [3, 4]
    assert hits(c, "SENTON 10-Mar-2024") == [4]
    assert hits(c, "SENTSINCE 1-Jan-2000") == [1, 2, 3, 4]
    assert hits(c, "NOT SENTSINCE 1-Jan-2000") == [5]
    # internal and sent dates differ for message 1: 10:00 vs 09:00, same day; message 4: 08:00 vs 07:59
    assert hits(c, "ON 10-Mar-2024 SENTON 10-Mar-2024") == [4]


def test_sequence_and_uid_keys(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    uids = [int(x) for x in search(c, "ALL", "UID SEARCH").split()[2:]]
    assert len(uids) == 5 and uids == sorted(uids)
    assert hits(c, "2:4") == [2, 3, 4]
    assert hits(c, "4:2") == [2, 3, 4]
    assert hits(c, "1,3,5") == [1, 3, 5]
    assert hits(c, "*") == [5]
    assert hits(c, "3:*") == [3, 4, 5]
    assert hits(c, "2:3 4") == []  # every key must match
    assert hits(c, "1:* SEEN") == [1]
    assert hits(c, f"UID {uids[1]}:{uids[3]}") == [2, 3, 4]
    assert hits(c, f"UID {uids[4]}") == [5]
    assert hits(c, "UID *") == [5]
    assert hits(c, f"UID {uids[4] + 100}:*") == [5]  # RFC 9051 6.4.8: "*" and a larger UID make a range
    assert hits(c, f"UID {uids[4] + 1}") == []
    assert hits(c, "UID 4294967295") == []
    # UID SEARCH answers with UIDs
    assert search(c, "2:3", "UID SEARCH") == b"* SEARCH %d %d" % (uids[1], uids[2])
    assert search(c, f"UID {uids[0]},{uids[4]}", "UID SEARCH") == b"* SEARCH %d %d" % (uids[0], uids[4])
    assert search(c, "SEEN", "UID SEARCH") == b"* SEARCH %d" % uids[0]
    assert search(c, "KEYWORD $nothing", "UID SEARCH") == b"* SEARCH"
    # an expunge renumbers
    c.ok("EXPUNGE")
    assert hits(c, "ALL") == [1, 2, 3, 4]
    assert search(c, "3", "UID SEARCH") == b"* SEARCH %d" % uids[3]


def test_not_or_and_parentheses(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    assert hits(c, "NOT SEEN") == [2, 3, 4, 5]
    assert hits(c, "NOT NOT SEEN") == [1]
    assert hits(c, "OR SEEN FLAGGED") == [1, 2]
    assert hits(c, "OR SEEN OR FLAGGED DELETED") == [1, 2, 3]
    assert hits(c, "OR OR SEEN FLAGGED DELETED") == [1, 2, 3]
    assert hits(c, "OR (SEEN ANSWERED) (FROM dave DRAFT)") == [1, 3]
    assert hits(c, "NOT (FROM alice)") == [2, 3, 4, 5]
    assert hits(c, "NOT (SEEN ANSWERED)") == [2, 3, 4, 5]
    assert hits(c, "NOT OR SEEN FLAGGED") == [3, 4, 5]
    assert hits(c, "(OR SEEN FLAGGED) (OR FLAGGED DRAFT)") == [2]
    assert hits(c, "((((SEEN))))") == [1]
    assert hits(c, "OR NOT 1:3 SUBJECT report") == [3, 4, 5]
    assert hits(c, "NOT (OR (NOT SEEN) (NOT ANSWERED))") == [1]
    assert hits(c, "UNSEEN (OR KEYWORD $Later KEYWORD $Work) NOT DELETED") == [4]


def test_syntax_errors_are_bad(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    for bad in (
        "SEARCH",
        "SEARCH FOO",
        "SEARCH (SEEN",
        "SEARCH SEEN)",
        "SEARCH OR SEEN",
        "SEARCH NOT",
        "SEARCH LARGER x",
        "SEARCH LARGER",
        "SEARCH SINCE 32-Jan-2024",
        "SEARCH SINCE 1-Foo-2024",
        "SEARCH SINCE 2024-01-01",
        "SEARCH HEADER Subject",
        "SEARCH UID x",
        "SEARCH 0",
        "SEARCH SEEN  FLAGGED",
        "SEARCH RETURN (BOGUS) ALL",
        "SEARCH RETURN ( MIN) ALL",
        "SEARCH RETURN (MIN  MAX) ALL",
        "SEARCH RETURN (MIN)ALL",
        "SEARCH RETURN MIN ALL",
        "SEARCH CHARSET UTF-8",
        "SEARCH ALL CHARSET UTF-8",
        "SEARCH OLDER 0",
        'SEARCH MODSEQ "/flags/\\Seen" bogus 1',
        'SEARCH MODSEQ "/shared/comment" all 1',
        "SEARCH MODSEQ 99999999999999999999",
        "SEARCH SMALLER 99999999999999999999",
        "SEARCH " + "NOT " * 100 + "ALL",
        "UID SEARCH",
    ):
        untagged, tagged = c.cmd(bad)
        assert untagged == [] and re.match(rb"t\d+ BAD ", tagged), (bad, tagged)
    # the connection is still usable
    assert hits(c, "ALL") == [1, 2, 3, 4, 5]


def test_search_needs_a_selected_mailbox(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    _, tagged = c.cmd("SEARCH ALL")
    assert tagged.startswith(b"t2 BAD ")
    c.ok("SELECT INBOX")
    # empty mailbox: an empty answer, also for "*"
    assert search(c, "ALL") == b"* SEARCH"
    assert search(c, "1:*") == b"* SEARCH"
    assert search(c, "ALL", "UID SEARCH") == b"* SEARCH"


# --- charsets ----------------------------------------------------------------------------------------------


def test_charset_and_literals(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    assert hits(c, "CHARSET UTF-8 ALL") == [1, 2, 3, 4, 5]
    assert hits(c, "CHARSET US-ASCII SUBJECT meeting") == [1, 4]
    assert hits(c, 'charset "utf-8" FROM dave') == [3]
    needle = "grüße".encode()
    assert hits(c, b"CHARSET UTF-8 SUBJECT {%d}\r\n%s" % (len(needle), needle)) == [2]
    assert hits(c, b"CHARSET UTF-8 BODY {%d}\r\n%s FLAGGED" % (len(needle), needle)) == [2]
    # a literal needs no charset either (UTF-8 is assumed) and can stand anywhere a string can
    assert hits(c, b"TEXT {9}\r\nxylophone") == [3]
    assert hits(c, b"OR FROM {5}\r\nalice TO {3}\r\nbob") == [1]
    # RFC 3501 6.4.4 / RFC 5530: an unknown charset is NO [BADCHARSET (the ones there are)]
    untagged, tagged = c.cmd("SEARCH CHARSET KOI8-X SUBJECT x")
    assert untagged == []
    m = re.match(rb"t\d+ NO \[BADCHARSET \(([^)]*)\)\] ", tagged)
    assert m is not None, tagged
    assert set(m.group(1).split()) >= {b"UTF-8", b"US-ASCII"}
    # with imaplib
    m2 = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    m2.login(user, PASSWORD)
    m2.select("INBOX")
    typ, data = m2.search("UTF-8", "SUBJECT", "Meeting")
    assert (typ, data) == ("OK", [b"1 4"])
    m2.literal = "Köln".encode()  # type: ignore[attr-defined]
    typ, data = m2.search("UTF-8", "SUBJECT")
    assert (typ, data) == ("OK", [b"2"])
    m2.logout()


def test_imapclient_search(server: ServerProcess, user: str) -> None:
    corpus(server, user).close()
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as cl:
        cl.login(user, PASSWORD)
        cl.select_folder("INBOX")
        uids = cl.search("ALL")
        assert len(uids) == 5
        assert cl.search(["FROM", "Jörg"], charset="UTF-8") == [uids[1]]
        assert cl.search(["OR", "SEEN", "FLAGGED"]) == uids[:2]
        assert cl.search(["SINCE", __import__("datetime").date(2024, 3, 1)]) == uids[2:]
        assert cl.search(["NOT", "DELETED", "BODY", "noon"]) == [uids[0], uids[3]]
        assert cl.search(["HEADER", "X-Priority", ""]) == [uids[0]]


# --- CONDSTORE ---------------------------------------------------------------------------------------------


def _modseqs(c: Raw) -> list[int]:
    out = []
    for line in c.ok("FETCH 1:* (MODSEQ)"):
        m = re.match(rb"\* (\d+) FETCH \(MODSEQ \((\d+)\)\)\r\n", line)
        assert m is not None, line
        out.append(int(m.group(2)))
    return out


def test_modseq_key(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    # RFC 7162 3.1: a SEARCH with MODSEQ turns CONDSTORE on, which announces the HIGHESTMODSEQ once; the
    # answer ends in (MODSEQ highest-found)
    untagged = c.ok("SEARCH MODSEQ 1")
    before = _modseqs(c)
    assert len(untagged) == 2
    assert untagged[0].startswith(b"* OK [HIGHESTMODSEQ %d] " % max(before))
    assert untagged[1] == b"* SEARCH 1 2 3 4 5 (MODSEQ %d)\r\n" % max(before)
    c.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
    c.ok("STORE 4 +FLAGS.SILENT ($Done)")
    after = _modseqs(c)
    assert after[1] > max(before) and after[3] > after[1]
    assert search(c, f"MODSEQ {max(before) + 1}") == b"* SEARCH 2 4 (MODSEQ %d)" % after[3]
    assert search(c, f"MODSEQ {after[3]}") == b"* SEARCH 4 (MODSEQ %d)" % after[3]
    assert search(c, f"MODSEQ {after[1]} SEEN") == b"* SEARCH 2 (MODSEQ %d)" % after[1]
    # no match: no MODSEQ either
    assert search(c, f"MODSEQ {after[3] + 1}") == b"* SEARCH"
    # with the entry name and type (RFC 7162 3.1.5), per-message metadata is not told apart
    assert (
        search(c, f'MODSEQ "/flags/\\\\Seen" all {max(before) + 1}') == b"* SEARCH 2 4 (MODSEQ %d)" % after[3]
    )
    assert search(c, f"MODSEQ {max(before) + 1}", "UID SEARCH").endswith(b" (MODSEQ %d)" % after[3])
    # mod-sequence-valzer: 0 is allowed and matches everything
    assert search(c, "MODSEQ 0") == b"* SEARCH 1 2 3 4 5 (MODSEQ %d)" % after[3]
    _, tagged = c.cmd("SEARCH MODSEQ -1")
    assert b" BAD " in tagged


def test_modseq_in_esearch(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    c.ok("ENABLE CONDSTORE")
    c.ok("STORE 1 +FLAGS.SILENT ($A)")
    c.ok("STORE 3 +FLAGS.SILENT ($A)")
    ms = _modseqs(c)
    assert ms[2] > ms[0] > max(ms[1], ms[3], ms[4])
    # RFC 4731 3.2: MIN alone - the modseq of the MIN message; MAX alone - of the MAX message; MIN and MAX - the
    # higher of the two; with ALL or COUNT - the highest of all found
    t = c.n + 1
    assert search(c, "RETURN (MIN) MODSEQ 1") == b'* ESEARCH (TAG "t%d") MIN 1 MODSEQ %d' % (t, ms[0])
    t += 1
    assert search(c, "RETURN (MAX) MODSEQ 1") == b'* ESEARCH (TAG "t%d") MAX 5 MODSEQ %d' % (t, ms[4])
    t += 1
    line = search(c, "RETURN (MIN MAX) MODSEQ 1 NOT 3")
    assert line == b'* ESEARCH (TAG "t%d") MIN 1 MAX 5 MODSEQ %d' % (t, ms[0])
    t += 1
    line = search(c, "RETURN (COUNT) MODSEQ 1")
    assert line == b'* ESEARCH (TAG "t%d") COUNT 5 MODSEQ %d' % (t, ms[2])
    t += 1
    line = search(c, "RETURN () MODSEQ 1 NOT 3")
    assert line == b'* ESEARCH (TAG "t%d") ALL 1:2,4:5 MODSEQ %d' % (t, ms[0])
    t += 1
    line = search(c, f"RETURN (MIN) MODSEQ {ms[2] + 1}")
    assert line == b'* ESEARCH (TAG "t%d")' % t


# --- ESEARCH -----------------------------------------------------------------------------------------------


def test_esearch_return_options(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    c.ok("STORE 3 +FLAGS.SILENT (\\Flagged)")
    c.ok("STORE 5 +FLAGS.SILENT (\\Flagged)")
    uids = [int(x) for x in search(c, "ALL", "UID SEARCH").split()[2:]]
    cases = [
        # RFC 4731 3.1 examples
        ("SEARCH RETURN (MIN COUNT) FLAGGED", b"MIN 2 COUNT 3"),
        ("SEARCH RETURN () FLAGGED", b"ALL 2:3,5"),
        ("SEARCH RETURN (ALL) FLAGGED", b"ALL 2:3,5"),
        ("SEARCH RETURN (MIN MAX COUNT ALL) FLAGGED", b"MIN 2 MAX 5 ALL 2:3,5 COUNT 3"),
        ("SEARCH RETURN (MAX) FLAGGED", b"MAX 5"),
        ("SEARCH RETURN (COUNT) ALL", b"COUNT 5"),
        ("SEARCH RETURN (ALL) ALL", b"ALL 1:5"),
        ("search return (min) seen", b"MIN 1"),
        # nothing found: MIN, MAX and ALL are left out, COUNT is 0
        ("SEARCH RETURN (MIN MAX ALL) KEYWORD $Nothing", b""),
        ("SEARCH RETURN (MIN MAX COUNT ALL) KEYWORD $Nothing", b"COUNT 0"),
        ("SEARCH RETURN (COUNT) CHARSET UTF-8 SUBJECT x-none", b"COUNT 0"),
    ]
    for cmd, want in cases:
        untagged, tagged = c.cmd(cmd)
        tag = tagged.split()[0]
        expect = b'* ESEARCH (TAG "%s")' % tag + (b" " + want if want else b"") + b"\r\n"
        assert untagged == [expect], (cmd, untagged)
        assert tagged == tag + b" OK SEARCH completed\r\n"
    # UID SEARCH: the UID indicator, and UIDs
    untagged, tagged = c.cmd("UID SEARCH RETURN (MIN MAX COUNT ALL) FLAGGED")
    tag = tagged.split()[0]
    assert untagged == [
        b'* ESEARCH (TAG "%s") UID MIN %d MAX %d ALL %d:%d,%d COUNT 3\r\n'
        % (tag, uids[1], uids[4], uids[1], uids[2], uids[4])
    ]
    untagged, tagged = c.cmd("UID SEARCH RETURN (ALL) KEYWORD $Nothing")
    assert untagged == [b'* ESEARCH (TAG "%s") UID\r\n' % tagged.split()[0]]


def test_search_save_and_dollar(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    uids = [int(x) for x in search(c, "ALL", "UID SEARCH").split()[2:]]
    # RFC 5182 2.1: "$" before any SAVE is the empty set
    assert hits(c, "$") == []
    assert c.ok("FETCH $ FLAGS") == []
    # SAVE alone returns no ESEARCH response
    assert c.ok("SEARCH RETURN (SAVE) UNSEEN") == []
    assert hits(c, "$") == [2, 3, 4, 5]
    assert hits(c, "$ FLAGGED") == [2]
    assert hits(c, "UID $") == [2, 3, 4, 5]
    assert hits(c, "NOT $") == [1]
    assert search(c, "$", "UID SEARCH") == b"* SEARCH " + b" ".join(b"%d" % u for u in uids[1:])
    assert c.ok("FETCH $ (UID)") == [b"* %d FETCH (UID %d)\r\n" % (i + 1, uids[i]) for i in (1, 2, 3, 4)]
    # SAVE with other options: the response is given and everything found is saved
    untagged, tagged = c.cmd("UID SEARCH RETURN (SAVE COUNT) OR 1 2")
    assert untagged == [b'* ESEARCH (TAG "%s") UID COUNT 2\r\n' % tagged.split()[0]]
    assert hits(c, "$") == [1, 2]
    # RFC 5182 2.4: with MIN and/or MAX but no ALL or COUNT, only those messages are saved
    c.ok("SEARCH RETURN (MIN SAVE) UNSEEN")
    assert hits(c, "$") == [2]
    c.ok("SEARCH RETURN (MAX SAVE) UNSEEN")
    assert hits(c, "$") == [5]
    c.ok("SEARCH RETURN (MIN MAX SAVE) UNSEEN")
    assert hits(c, "$") == [2, 5]
    c.ok("SEARCH RETURN (MIN ALL SAVE) UNSEEN")
    assert hits(c, "$") == [2, 3, 4, 5]
    # RFC 5182 2.1: a SAVE search that fails with BAD leaves "$" alone; one that fails with NO empties it
    _, tagged = c.cmd("SEARCH RETURN (SAVE) BOGUS")
    assert b" BAD " in tagged
    assert hits(c, "$") == [2, 3, 4, 5]
    _, tagged = c.cmd("SEARCH RETURN (SAVE) CHARSET X-UNKNOWN SEEN")
    assert b" NO [BADCHARSET " in tagged
    assert hits(c, "$") == []
    c.ok("SEARCH RETURN (SAVE) SEEN")
    _, tagged = c.cmd("SEARCH CHARSET X-UNKNOWN SEEN")
    assert b" NO [BADCHARSET " in tagged
    assert hits(c, "$") == [1]  # not a SAVE search: no change
    # a search that finds nothing saves the empty set
    c.ok("SEARCH RETURN (SAVE) KEYWORD $Nothing")
    assert hits(c, "$") == []
    # a saved message that is expunged drops out
    c.ok("SEARCH RETURN (SAVE) OR DELETED SEEN")
    assert hits(c, "$") == [1, 3]
    c.ok("EXPUNGE")
    assert hits(c, "$") == [1]
    # a new SELECT starts empty
    c.ok("SEARCH RETURN (SAVE) ALL")
    c.ok("SELECT INBOX")
    assert hits(c, "$") == []


def test_imap4rev2_search_answers_esearch(server: ServerProcess, user: str) -> None:
    c = corpus(server, user)
    uids = [int(x) for x in search(c, "ALL", "UID SEARCH").split()[2:]]
    assert c.ok("ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2\r\n"]
    # RFC 9051 6.4.4: without RETURN, ALL is meant; the answer is ESEARCH
    untagged, tagged = c.cmd("SEARCH UNSEEN")
    assert untagged == [b'* ESEARCH (TAG "%s") ALL 2:5\r\n' % tagged.split()[0]]
    assert tagged.endswith(b" OK SEARCH completed\r\n")
    untagged, tagged = c.cmd("UID SEARCH SEEN")
    assert untagged == [b'* ESEARCH (TAG "%s") UID ALL %d\r\n' % (tagged.split()[0], uids[0])]
    untagged, tagged = c.cmd("SEARCH KEYWORD $Nothing")
    assert untagged == [b'* ESEARCH (TAG "%s")\r\n' % tagged.split()[0]]
    untagged, tagged = c.cmd("UID SEARCH KEYWORD $Nothing")
    assert untagged == [b'* ESEARCH (TAG "%s") UID\r\n' % tagged.split()[0]]
    untagged, tagged = c.cmd("SEARCH RETURN (COUNT MIN) UNSEEN")
    assert untagged == [b'* ESEARCH (TAG "%s") MIN 2 COUNT 4\r\n' % tagged.split()[0]]
    assert c.ok("SEARCH RETURN (SAVE) FLAGGED") == []
    untagged, tagged = c.cmd("SEARCH $")
    assert untagged == [b'* ESEARCH (TAG "%s") ALL 2\r\n' % tagged.split()[0]]
    untagged, tagged = c.cmd("SEARCH CHARSET UTF-8 SUBJECT meeting")
    assert untagged == [b'* ESEARCH (TAG "%s") ALL 1,4\r\n' % tagged.split()[0]]
    # CONDSTORE's MODSEQ item rides on the ESEARCH response (RFC 7162 3.1.5)
    untagged, tagged = c.cmd("SEARCH MODSEQ 1 SEEN")
    assert len(untagged) == 2 and untagged[0].startswith(b"* OK [HIGHESTMODSEQ ")
    m = re.fullmatch(rb'\* ESEARCH \(TAG "t\d+"\) ALL 1 MODSEQ (\d+)\r\n', untagged[1])
    assert m is not None, untagged
    assert c.ok("FETCH 1 (MODSEQ)") == [b"* 1 FETCH (MODSEQ (%s))\r\n" % m.group(1)]


def test_esearch_with_imapclient_and_imaplib(server: ServerProcess, user: str) -> None:
    corpus(server, user).close()
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    m.login(user, PASSWORD)
    m.select("INBOX")
    typ, data = m.uid("SEARCH", "RETURN", "(COUNT)", "UNSEEN")
    assert typ == "OK"
    assert m.untagged_responses.get("ESEARCH") or data  # imaplib files it under ESEARCH
    esearch = m.untagged_responses.pop("ESEARCH", [None])[0] or data[0]
    assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\) UID COUNT 4', esearch), esearch
    m.logout()
