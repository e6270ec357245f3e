"""FETCH and UID FETCH (RFC 3501 6.4.5 / 7.4.2, RFC 9051 6.4.5 / 7.5.2): the static items and macros, BODY[section]
with every section-spec and nested part numbers, partial fetches, \\Seen and BODY.PEEK, the RFC822 items,
BINARY (RFC 3516), MODSEQ and CHANGEDSINCE (RFC 7162 3.1), VANISHED (RFC 7162 3.2.6) and sequence sets.

BODYSTRUCTURE has its own file (test_bodystructure.py)."""

from __future__ import annotations

import imaplib
import re

import pytest
from imapclient import IMAPClient

from harness import ServerProcess
from imap.imaputil import PASSWORD, connect
from imap.rawclient import Raw


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


PLAIN = crlf(
    "From: Alice Example <alice@example.org>\n"
    "To: bob@example.test, Carol <carol@example.net>\n"
    "Subject: Lunch\n"
    "Date: Mon, 1 Jan 2024 09:00:00 +0000\n"
    "Message-ID: <plain@example.org>\n"
    "X-Extra: one\n"
    "\n"
    "Shall we meet at noon?\n"
    "Alice\n"
)

# mixed (top)
#   1 alternative
#     1.1 text/plain
#     1.2 related
#       1.2.1 text/html (quoted-printable)
#       1.2.2 image/png (base64)
#   2 message/rfc822: its header is 2.HEADER, its body 2.TEXT
#     2.1 text/plain
#     2.2 application/octet-stream (base64, decodes to bytes with a NUL)
#   3 text/plain in an encoding nobody knows
NESTED = crlf(
    "From: Dave <dave@example.com>\n"
    "To: alice@example.org\n"
    "Subject: Nested\n"
    "Date: Fri, 1 Mar 2024 12:00:00 +0100\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="top"\n'
    "\n"
    "preamble\n"
    "--top\n"
    "Content-Type: multipart/alternative; boundary=alt\n"
    "\n"
    "--alt\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "plain text\n"
    "--alt\n"
    "Content-Type: multipart/related; boundary=rel\n"
    "\n"
    "--rel\n"
    "Content-Type: text/html; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "<p>caf=C3=A9 =\n"
    "au lait</p>\n"
    "--rel\n"
    "Content-Type: image/png\n"
    "Content-Transfer-Encoding: base64\n"
    "Content-ID: <img@x>\n"
    "\n"
    "iVBORw0KGgo=\n"
    "--rel--\n"
    "--alt--\n"
    "--top\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "From: Inner <inner@example.net>\n"
    "Subject: Forwarded\n"
    "Content-Type: multipart/mixed; boundary=in\n"
    "\n"
    "--in\n"
    "Content-Type: text/plain\n"
    "\n"
    "inner text\n"
    "--in\n"
    "Content-Type: application/octet-stream\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "AAECAw==\n"
    "--in--\n"
    "--top\n"
    "Content-Type: text/plain\n"
    "Content-Transfer-Encoding: x-unknown\n"
    "\n"
    "mystery\n"
    "--top--\n"
    "epilogue\n"
)


def lit(data: bytes) -> bytes:
    return b"{%d}\r\n%s" % (len(data), data)


def between(data: bytes, start: bytes, end: bytes) -> bytes:
    """The bytes after the first ``start`` up to the next ``end``."""
    i = data.index(start) + len(start)
    return data[i : data.index(end, i)]


def append(c: Raw, mailbox: str, data: bytes, flags: str = "", date: str = "") -> None:
    extra = (f"({flags}) " if flags else "") + (f'"{date}" ' if date else "")
    c.ok(f"APPEND {mailbox} {extra}".encode() + lit(data))


def one(c: Raw, command: str) -> bytes:
    """The single untagged FETCH response of a command that must succeed."""
    untagged = c.ok(command)
    assert len(untagged) == 1, untagged
    return untagged[0]


@pytest.fixture
def box(server: ServerProcess, user: str) -> Raw:
    """INBOX with PLAIN (seq 1, UID 1) and NESTED (seq 2, UID 2), both unseen, selected read-write."""
    c = connect(server, user)
    append(c, "INBOX", PLAIN, date="05-Jan-2024 10:11:12 +0200")
    append(c, "INBOX", NESTED, flags="\\Flagged $Work", date="29-Feb-2024 23:59:59 -0730")
    c.ok("SELECT INBOX")
    return c


# --- static items and macros -------------------------------------------------------------------------------


def test_flags_internaldate_size(box: Raw) -> None:
    untagged = box.ok("FETCH 1:2 (FLAGS INTERNALDATE RFC822.SIZE)")
    assert untagged == [
        b'* 1 FETCH (FLAGS (\\Recent) INTERNALDATE "05-Jan-2024 10:11:12 +0200" RFC822.SIZE %d)\r\n'
        % len(PLAIN),
        b'* 2 FETCH (FLAGS (\\Flagged \\Recent $Work) INTERNALDATE "29-Feb-2024 23:59:59 -0730" '
        b"RFC822.SIZE %d)\r\n" % len(NESTED),
    ]


def test_internaldate_day_is_two_digits(box: Raw) -> None:
    # RFC 9051 9: date-day-fixed; the zero-padded form, zone kept as given in APPEND.
    box.ok(b'APPEND INBOX " 7-Jul-2025 01:02:03 +0000" ' + lit(PLAIN))
    line = one(box, "FETCH 3 INTERNALDATE")
    assert line == b'* 3 FETCH (INTERNALDATE "07-Jul-2025 01:02:03 +0000")\r\n'


def test_envelope(box: Raw) -> None:
    assert one(box, "FETCH 1 ENVELOPE") == (
        b'* 1 FETCH (ENVELOPE ("Mon, 1 Jan 2024 09:00:00 +0000" "Lunch" '
        b'(("Alice Example" NIL "alice" "example.org")) (("Alice Example" NIL "alice" "example.org")) '
        b'(("Alice Example" NIL "alice" "example.org")) '
        b'((NIL NIL "bob" "example.test")("Carol" NIL "carol" "example.net")) '
        b'NIL NIL NIL "<plain@example.org>"))\r\n'
    )


def test_envelope_nil_empty_groups_and_encoded_words(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    msg = crlf(
        "From: =?utf-8?q?J=C3=B6rg?= <joerg@example.de>\n"
        "Sender: \n"
        "Reply-To: a@example.org, b@example.org\n"
        'To: Friends: joe@x.org, "Ann \\"Q\\"" <ann@y.org>;, solo@z.org\n'
        "Cc: undisclosed-recipients:;\n"
        "Subject:\n"
        "In-Reply-To: <parent@example.org>\n"
        "\n"
        "body\n"
    )
    append(c, "INBOX", msg)
    c.ok("SELECT INBOX")
    # RFC 3501 7.4.2: absent Date and Message-ID are NIL, the empty Subject is "", an empty Sender is
    # replaced by From; encoded words are left as they are; a group is bracketed by (NIL NIL "name" NIL)
    # and (NIL NIL NIL NIL).
    assert one(c, "FETCH 1 ENVELOPE") == (
        b'* 1 FETCH (ENVELOPE (NIL "" '
        b'(("=?utf-8?q?J=C3=B6rg?=" NIL "joerg" "example.de")) '
        b'(("=?utf-8?q?J=C3=B6rg?=" NIL "joerg" "example.de")) '
        b'((NIL NIL "a" "example.org")(NIL NIL "b" "example.org")) '
        b'((NIL NIL "Friends" NIL)(NIL NIL "joe" "x.org")("Ann \\"Q\\"" NIL "ann" "y.org")(NIL NIL NIL NIL)'
        b'(NIL NIL "solo" "z.org")) '
        b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        b'NIL "<parent@example.org>" NIL))\r\n'
    )


def test_macros(box: Raw) -> None:
    fast = b'FLAGS (\\Recent) INTERNALDATE "05-Jan-2024 10:11:12 +0200" RFC822.SIZE %d' % len(PLAIN)
    envelope = one(box, "FETCH 1 ENVELOPE")[11:-3]
    body = one(box, "FETCH 1 BODY")[11:-3]
    assert body == b'BODY ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 31 2)'
    assert one(box, "FETCH 1 FAST") == b"* 1 FETCH (" + fast + b")\r\n"
    assert one(box, "FETCH 1 ALL") == b"* 1 FETCH (" + fast + b" " + envelope + b")\r\n"
    assert one(box, "FETCH 1 full") == b"* 1 FETCH (" + fast + b" " + envelope + b" " + body + b")\r\n"
    # A macro is not a fetch-att: it cannot appear in a list.
    _, tagged = box.cmd("FETCH 1 (FLAGS ALL)")
    assert b" BAD " in tagged


def test_uid_fetch_always_has_uid(box: Raw) -> None:
    assert box.ok("UID FETCH 1:* FLAGS") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent $Work))\r\n",
    ]
    # UID asked for explicitly is not repeated.
    assert box.ok("UID FETCH 2 (RFC822.SIZE UID)") == [b"* 2 FETCH (RFC822.SIZE %d UID 2)\r\n" % len(NESTED)]
    assert box.ok("FETCH 2 UID") == [b"* 2 FETCH (UID 2)\r\n"]


def test_sequence_sets(box: Raw) -> None:
    append(box, "INBOX", PLAIN)
    append(box, "INBOX", PLAIN)

    def seqs(command: str) -> list[int]:
        return [int(line.split()[1]) for line in box.ok(command)]

    assert seqs("FETCH * UID") == [4]
    assert seqs("FETCH 3:1 UID") == [1, 2, 3]
    assert seqs("FETCH *:3 UID") == [3, 4]
    assert seqs("FETCH 4,1,2:1 UID") == [1, 2, 4]
    # UIDs: a range past the end still names the largest UID through "*"; absent UIDs are ignored.
    assert seqs("UID FETCH 100:* UID") == [4]
    assert box.ok("UID FETCH 100:200 UID") == []
    assert seqs("UID FETCH 2,50 UID") == [2]
    # A message sequence number past EXISTS is a protocol error (RFC 9051 9: seq-number), as is 0.
    for command in ("FETCH 5 UID", "FETCH 1:5 UID", "FETCH 0 UID", "FETCH 1 NOSUCH", "FETCH 1 ()"):
        _, tagged = box.cmd(command)
        assert b" BAD " in tagged, (command, tagged)


def test_fetch_needs_selected_mailbox(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    _, tagged = c.cmd("FETCH 1 FLAGS")
    assert tagged.startswith(b"t2 BAD ")


# --- BODY[section] ------------------------------------------------------------------------------------------


def test_body_whole_header_text(box: Raw) -> None:
    header, _, text = PLAIN.partition(b"\r\n\r\n")
    assert one(box, "FETCH 1 BODY.PEEK[]") == b"* 1 FETCH (BODY[] " + lit(PLAIN) + b")\r\n"
    assert (
        one(box, "FETCH 1 BODY.PEEK[HEADER]")
        == b"* 1 FETCH (BODY[HEADER] " + lit(header + b"\r\n\r\n") + b")\r\n"
    )
    assert one(box, "FETCH 1 BODY.PEEK[TEXT]") == b"* 1 FETCH (BODY[TEXT] " + lit(text) + b")\r\n"
    # A non-multipart message has a part 1: its body; 1.MIME is then the message header.
    assert one(box, "FETCH 1 BODY.PEEK[1]") == b"* 1 FETCH (BODY[1] " + lit(text) + b")\r\n"


def test_header_fields(box: Raw) -> None:
    # Matching fields in message order, then the blank line; the names go back upper-case.
    assert one(box, "FETCH 1 BODY.PEEK[HEADER.FIELDS (subject FROM x-absent)]") == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT FROM X-ABSENT)] "
        + lit(b"From: Alice Example <alice@example.org>\r\nSubject: Lunch\r\n\r\n")
        + b")\r\n"
    )
    assert one(box, "FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (From To Date Message-ID)]") == (
        b"* 1 FETCH (BODY[HEADER.FIELDS.NOT (FROM TO DATE MESSAGE-ID)] "
        + lit(b"Subject: Lunch\r\nX-Extra: one\r\n\r\n")
        + b")\r\n"
    )
    # Nothing matches: the blank line alone.
    assert one(box, "FETCH 1 BODY.PEEK[HEADER.FIELDS (X-Nothing)]") == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (X-NOTHING)] {2}\r\n\r\n)\r\n"
    )
    # A field name that is not an atom is sent back as a string, not as two names.
    assert one(box, 'FETCH 1 BODY.PEEK[HEADER.FIELDS ("x y" subject)]') == (
        b'* 1 FETCH (BODY[HEADER.FIELDS ("X Y" SUBJECT)] ' + lit(b"Subject: Lunch\r\n\r\n") + b")\r\n"
    )


def test_header_fields_of_message_without_blank_line(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    append(c, "INBOX", b"From: a@example.org\r\nSubject: no body\r\n")
    c.ok("SELECT INBOX")
    # RFC 3501 6.4.5: the blank line is included in all header fetches "except in the case of a message
    # which has no body and no blank line".
    assert c.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[HEADER] BODY.PEEK[TEXT])") == [
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] "
        + lit(b"Subject: no body\r\n")
        + b" BODY[HEADER] "
        + lit(b"From: a@example.org\r\nSubject: no body\r\n")
        + b" BODY[TEXT] {0}\r\n)\r\n"
    ]


NESTED_SECTIONS = [
    ("1.1", b"plain text"),
    ("1.1.MIME", b"Content-Type: text/plain; charset=utf-8\r\n\r\n"),
    ("1.2.1", b"<p>caf=C3=A9 =\r\nau lait</p>"),
    (
        "1.2.1.MIME",
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
    ),
    ("1.2.2", b"iVBORw0KGgo="),
    ("1.2.MIME", b"Content-Type: multipart/related; boundary=rel\r\n\r\n"),
    ("2.MIME", b"Content-Type: message/rfc822\r\n\r\n"),
    (
        "2.HEADER",
        b"From: Inner <inner@example.net>\r\nSubject: Forwarded\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n",
    ),
    ("2.HEADER.FIELDS (SUBJECT)", b"Subject: Forwarded\r\n\r\n"),
    ("2.1", b"inner text"),
    ("2.1.MIME", b"Content-Type: text/plain\r\n\r\n"),
    ("2.2", b"AAECAw=="),
    ("3", b"mystery"),
    # Parts that do not exist are empty.
    ("4", b""),
    ("1.3", b""),
    ("2.3", b""),
    ("1.2.3", b""),
    # HEADER and TEXT of a part that is not a message/rfc822.
    ("1.HEADER", b""),
    ("3.TEXT", b""),
]


def test_nested_sections(box: Raw) -> None:
    # All in one FETCH: the items come back in the order asked, each labelled with its section.
    command = "FETCH 2 (" + " ".join(f"BODY.PEEK[{spec}]" for spec, _ in NESTED_SECTIONS) + ")"
    expected = b" ".join(b"BODY[%s] " % spec.encode() + lit(data) for spec, data in NESTED_SECTIONS)
    assert one(box, command) == b"* 2 FETCH (" + expected + b")\r\n"


def test_multipart_and_message_sections(box: Raw) -> None:
    # A multipart part is its whole body, delimiters included; 2 is the attached message, 2.TEXT its body.
    part1 = between(NESTED, b"boundary=alt\r\n\r\n", b"\r\n--top")
    assert one(box, "FETCH 2 BODY.PEEK[1]") == b"* 2 FETCH (BODY[1] " + lit(part1) + b")\r\n"
    message = between(NESTED, b"Content-Type: message/rfc822\r\n\r\n", b"\r\n--top")
    assert one(box, "FETCH 2 BODY.PEEK[2]") == b"* 2 FETCH (BODY[2] " + lit(message) + b")\r\n"
    text = message.partition(b"\r\n\r\n")[2]
    assert one(box, "FETCH 2 BODY.PEEK[2.TEXT]") == b"* 2 FETCH (BODY[2.TEXT] " + lit(text) + b")\r\n"
    top_text = NESTED.partition(b"\r\n\r\n")[2]
    assert one(box, "FETCH 2 BODY.PEEK[TEXT]") == b"* 2 FETCH (BODY[TEXT] " + lit(top_text) + b")\r\n"


def test_section_syntax_errors(box: Raw) -> None:
    for command in (
        "FETCH 1 BODY[MIME]",  # MIME needs a part number
        "FETCH 1 BODY[0]",
        "FETCH 1 BODY[1.]",
        "FETCH 1 BODY[HEADER.FIELDS]",
        "FETCH 1 BODY[HEADER.FIELDS ()]",
        "FETCH 1 BODY[NONSENSE]",
        "FETCH 1 BODY[]<0.0>",  # the count is an nz-number
        "FETCH 1 BODY[]<5>",
    ):
        _, tagged = box.cmd(command)
        assert b" BAD " in tagged, (command, tagged)
    # None of them touched \Seen.
    assert one(box, "FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS (\\Recent))\r\n"


def test_partial(box: Raw) -> None:
    assert one(box, "FETCH 1 BODY.PEEK[]<0.4>") == b"* 1 FETCH (BODY[]<0> {4}\r\nFrom)\r\n"
    assert one(box, "FETCH 1 BODY.PEEK[TEXT]<6.8>") == b"* 1 FETCH (BODY[TEXT]<6> {8}\r\nwe meet )\r\n"
    # A count running past the end is cut at the end; an origin past the end gives an empty string.
    size = len(PLAIN)
    assert one(box, f"FETCH 1 BODY.PEEK[]<{size - 3}.100>") == b"* 1 FETCH (BODY[]<%d> {3}\r\ne\r\n)\r\n" % (
        size - 3
    )
    assert one(box, f"FETCH 1 BODY.PEEK[]<{size}.10>") == b"* 1 FETCH (BODY[]<%d> {0}\r\n)\r\n" % size
    assert one(box, "FETCH 1 BODY.PEEK[]<4294967295.1>") == b"* 1 FETCH (BODY[]<4294967295> {0}\r\n)\r\n"
    assert one(box, "FETCH 2 BODY.PEEK[1.2.1]<3.4>") == b"* 2 FETCH (BODY[1.2.1]<3> {4}\r\ncaf=)\r\n"
    assert one(box, "FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.7>") == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)]<0> {7}\r\nSubject)\r\n"
    )


# --- \Seen -------------------------------------------------------------------------------------------------


def test_peek_does_not_set_seen(box: Raw) -> None:
    box.ok("FETCH 1 (BODY.PEEK[] BODY.PEEK[TEXT] BINARY.PEEK[1] RFC822.HEADER RFC822.SIZE BINARY.SIZE[1])")
    assert one(box, "FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS (\\Recent))\r\n"


def test_body_sets_seen_and_reports_flags(box: Raw) -> None:
    # RFC 3501 6.4.5: BODY[] sets \Seen; the change is reported in the same FETCH response.
    assert one(box, "FETCH 1 BODY[HEADER.FIELDS (SUBJECT)]") == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: Lunch\r\n\r\n FLAGS (\\Seen \\Recent))\r\n"
    )
    # Already seen: no FLAGS the second time.
    assert one(box, "FETCH 1 BODY[]<0.4>") == b"* 1 FETCH (BODY[]<0> {4}\r\nFrom)\r\n"
    # FLAGS asked for in the same command comes once, already with \Seen.
    assert one(box, "FETCH 2 (FLAGS BODY[1.1])") == (
        b"* 2 FETCH (FLAGS (\\Flagged \\Seen \\Recent $Work) BODY[1.1] {10}\r\nplain text)\r\n"
    )
    assert box.ok("FETCH 1:2 FLAGS") == [
        b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n",
        b"* 2 FETCH (FLAGS (\\Flagged \\Seen \\Recent $Work))\r\n",
    ]


def test_seen_is_visible_to_other_sessions(server: ServerProcess, user: str, box: Raw) -> None:
    other = connect(server, user)
    other.ok("SELECT INBOX")
    box.ok("FETCH 1 BODY[TEXT]")
    # The other session learns of the new flag at its next command.
    assert other.ok("NOOP") == [b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n"]


def test_examine_never_sets_seen(server: ServerProcess, user: str, box: Raw) -> None:
    c = connect(server, user)
    c.ok("EXAMINE INBOX")
    assert one(c, "FETCH 1 (BODY[TEXT] RFC822 BINARY[1])").startswith(b"* 1 FETCH (BODY[TEXT] ")
    assert one(c, "FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS ())\r\n"
    assert one(box, "FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS (\\Recent))\r\n"


def test_rfc822_items(box: Raw) -> None:
    header, _, text = PLAIN.partition(b"\r\n\r\n")
    # RFC822.HEADER is BODY.PEEK[HEADER]; RFC822 is BODY[] and RFC822.TEXT is BODY[TEXT], both setting \Seen.
    assert (
        one(box, "FETCH 1 RFC822.HEADER")
        == b"* 1 FETCH (RFC822.HEADER " + lit(header + b"\r\n\r\n") + b")\r\n"
    )
    assert (
        one(box, "FETCH 1 RFC822.TEXT")
        == b"* 1 FETCH (RFC822.TEXT " + lit(text) + b" FLAGS (\\Seen \\Recent))\r\n"
    )
    assert (
        one(box, "FETCH 2 RFC822")
        == b"* 2 FETCH (RFC822 " + lit(NESTED) + b" FLAGS (\\Flagged \\Seen \\Recent $Work))\r\n"
    )


# --- BINARY (RFC 3516) -------------------------------------------------------------------------------------


def test_binary_decodes(box: Raw) -> None:
    assert box.ok("FETCH 2 (BINARY.PEEK[1.2.1] BINARY.SIZE[1.2.1])") == [
        b"* 2 FETCH (BINARY[1.2.1] {20}\r\n<p>caf\xc3\xa9 au lait</p> BINARY.SIZE[1.2.1] 20)\r\n"
    ]
    # Decoded data with a NUL goes out as literal8 (RFC 3516 4.2).
    assert one(box, "FETCH 2 BINARY.PEEK[2.2]") == b"* 2 FETCH (BINARY[2.2] ~{4}\r\n\x00\x01\x02\x03)\r\n"
    assert one(box, "FETCH 2 BINARY.SIZE[2.2]") == b"* 2 FETCH (BINARY.SIZE[2.2] 4)\r\n"
    # An identity encoding is passed through; BINARY[] is the whole message.
    assert one(box, "FETCH 2 BINARY.PEEK[1.1]") == b"* 2 FETCH (BINARY[1.1] {10}\r\nplain text)\r\n"
    assert one(box, "FETCH 1 BINARY.PEEK[]") == b"* 1 FETCH (BINARY[] " + lit(PLAIN) + b")\r\n"
    # Partial BINARY counts in the decoded data.
    assert (
        one(box, "FETCH 2 BINARY.PEEK[1.2.1]<3.5>") == b"* 2 FETCH (BINARY[1.2.1]<3> {5}\r\ncaf\xc3\xa9)\r\n"
    )
    assert one(box, "FETCH 2 FLAGS") == b"* 2 FETCH (FLAGS (\\Flagged \\Recent $Work))\r\n"


def test_binary_sets_seen(box: Raw) -> None:
    assert one(box, "FETCH 2 BINARY[2.1]") == (
        b"* 2 FETCH (BINARY[2.1] {10}\r\ninner text FLAGS (\\Flagged \\Seen \\Recent $Work))\r\n"
    )


def test_binary_unknown_cte(box: Raw) -> None:
    for item in ("BINARY.PEEK[3]", "BINARY.SIZE[3]", "BINARY[3]"):
        untagged, tagged = box.cmd(f"FETCH 2 {item}")
        assert untagged == [] and tagged.split(b" ", 3)[1:3] == [b"NO", b"[UNKNOWN-CTE]"], (item, tagged)
    # The failed BINARY[3] did not set \Seen, and BODY[3] still gives the raw octets.
    assert one(box, "FETCH 2 (FLAGS BODY.PEEK[3])") == (
        b"* 2 FETCH (FLAGS (\\Flagged \\Recent $Work) BODY[3] {7}\r\nmystery)\r\n"
    )


# --- CONDSTORE / QRESYNC -----------------------------------------------------------------------------------


def modseq(line: bytes) -> int:
    m = re.search(rb"MODSEQ \((\d+)\)", line)
    assert m is not None, line
    return int(m.group(1))


def test_modseq_and_changedsince(box: Raw) -> None:
    # The first CONDSTORE-enabling command announces the mailbox's HIGHESTMODSEQ (RFC 7162 3.1).
    enabling = box.ok("FETCH 1 MODSEQ")
    assert len(enabling) == 2 and enabling[0].startswith(b"* OK [HIGHESTMODSEQ "), enabling
    first = modseq(enabling[1])
    assert enabling[1] == b"* 1 FETCH (MODSEQ (%d))\r\n" % first
    assert one(box, "FETCH 1 MODSEQ") == b"* 1 FETCH (MODSEQ (%d))\r\n" % first
    # Fetching MODSEQ enabled CONDSTORE: FLAGS responses now carry MODSEQ (RFC 7162 3.1).
    both = box.ok("FETCH 1:2 FLAGS")
    assert both[0] == b"* 1 FETCH (FLAGS (\\Recent) MODSEQ (%d))\r\n" % first
    second = modseq(both[1])
    assert second > first
    (stored,) = box.ok("STORE 1 +FLAGS (\\Answered)")
    changed = modseq(stored)
    assert changed > second
    # CHANGEDSINCE: only the messages changed after the given mod-sequence, with MODSEQ added.
    assert box.ok(f"FETCH 1:* FLAGS (CHANGEDSINCE {second})") == [
        b"* 1 FETCH (FLAGS (\\Answered \\Recent) MODSEQ (%d))\r\n" % changed
    ]
    assert box.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {second})") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Answered \\Recent) MODSEQ (%d))\r\n" % changed
    ]
    assert box.ok(f"FETCH 1:* UID (CHANGEDSINCE {changed})") == []
    _, tagged = box.cmd("FETCH 1 FLAGS (CHANGEDSINCE x)")
    assert b" BAD " in tagged


def test_body_seen_reports_modseq_with_condstore(box: Raw) -> None:
    box.ok("ENABLE CONDSTORE")
    before = modseq(one(box, "FETCH 1 MODSEQ"))
    line = one(box, "FETCH 1 BODY[]<0.4>")
    # The implicit \Seen is reported with the message's UID and new MODSEQ.
    assert line.startswith(b"* 1 FETCH (UID 1 BODY[]<0> {4}\r\nFrom FLAGS (\\Seen \\Recent) MODSEQ (")
    assert modseq(line) > before


def test_vanished_with_qresync(box: Raw) -> None:
    _, tagged = box.cmd("UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)")
    assert b" BAD " in tagged  # QRESYNC is not enabled
    box.ok("ENABLE QRESYNC")
    start = modseq(one(box, "FETCH 2 MODSEQ"))
    box.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert box.ok("EXPUNGE") == [b"* VANISHED 1\r\n"]
    # RFC 7162 3.2.6: the UIDs expunged since CHANGEDSINCE first, then the changed messages.
    assert box.ok(f"UID FETCH 1:* FLAGS (CHANGEDSINCE {start - 1} VANISHED)") == [
        b"* VANISHED (EARLIER) 1\r\n",
        b"* 1 FETCH (UID 2 FLAGS (\\Flagged \\Recent $Work) MODSEQ (%d))\r\n" % start,
    ]
    # VANISHED needs the UID form.
    _, tagged = box.cmd(f"FETCH 1:* FLAGS (CHANGEDSINCE {start} VANISHED)")
    assert b" BAD " in tagged


# --- other clients -----------------------------------------------------------------------------------------


def test_imaplib_fetch(server: ServerProcess, user: str) -> None:
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    m.login(user, PASSWORD)
    m.append("INBOX", "(\\Draft)", imaplib.Time2Internaldate(1704449472), PLAIN)
    m.select("INBOX")
    typ, data = m.fetch("1", "(INTERNALDATE FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and isinstance(data[0], tuple)
    head, value = data[0]
    assert value == b"Subject: Lunch\r\n\r\n"
    assert imaplib.Internaldate2tuple(head) is not None
    assert b"FLAGS (\\Draft \\Recent)" in head
    typ, data = m.uid("FETCH", "1", "(RFC822)")
    assert typ == "OK" and isinstance(data[0], tuple) and data[0][1] == PLAIN
    m.logout()


def test_imapclient_fetch(server: ServerProcess, user: str) -> None:
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as client:
        client.login(user, PASSWORD)
        client.append("INBOX", NESTED, flags=["\\Seen"])
        client.select_folder("INBOX")
        got = client.fetch(
            [1], ["ENVELOPE", "BODY.PEEK[2.HEADER.FIELDS (SUBJECT)]", "BINARY.PEEK[1.2.1]", "RFC822.SIZE"]
        )
        data = got[1]
        assert data[b"ENVELOPE"].subject == b"Nested"
        assert data[b"ENVELOPE"].from_[0].mailbox == b"dave"
        assert data[b"BODY[2.HEADER.FIELDS (SUBJECT)]"] == b"Subject: Forwarded\r\n\r\n"
        assert data[b"BINARY[1.2.1]"] == "<p>café au lait</p>".encode()
        assert data[b"RFC822.SIZE"] == len(NESTED)
