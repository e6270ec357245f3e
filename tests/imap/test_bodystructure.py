"""BODY and BODYSTRUCTURE over IMAP (RFC 3501 7.4.2, RFC 9051 7.5.2): single parts with parameters, message/rfc822
with its own envelope, structure and line count, nested multiparts, multipart/related with an attachment, and the
extension data (MD5, disposition, language, location) of single parts and multiparts.

The expected answers are written out in full; for the same messages, Dovecot's imap binary over a Maildir is
asked too, and must agree (tokens such as "TEXT" or "7BIT" are case-insensitive, and Dovecot keeps the case of
the message while this server writes them upper-case, as in the RFC examples)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from harness import ServerProcess, require_peer
from imap.imaputil import PASSWORD
from imap.rawclient import Raw
from peers import DOVECOT_IMAP, dovecot_imap_session


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def body_of(data: bytes, after: bytes, before: bytes) -> bytes:
    i = data.index(after) + len(after)
    return data[i : data.index(before, i)]


SINGLE = crlf(
    "From: a@example.org\n"
    "Subject: single\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=ISO-8859-1;\n"
    "  format=flowed; DelSp=yes\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "Content-ID: <single@example.org>\n"
    "Content-Description: A note\n"
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
    "Content-Disposition: inline; filename=note.txt\n"
    "Content-Language: en-GB, fr\n"
    "Content-Location: https://example.org/note.txt\n"
    "\n"
    "Caf=E9 au lait.\n"
    "Second line.\n"
)
SINGLE_SIZE = len(SINGLE.partition(b"\r\n\r\n")[2])

PLAIN_DEFAULTS = crlf("From: a@example.org\nSubject: no MIME\n\none line\n")

FORWARD = crlf(
    "From: Fwd <fwd@example.org>\n"
    "To: b@example.org\n"
    "Subject: Fwd: original\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="outer"\n'
    "\n"
    "--outer\n"
    "Content-Type: text/plain; charset=us-ascii\n"
    "\n"
    "See below.\n"
    "--outer\n"
    'Content-Type: message/rfc822; name="original.eml"\n'
    'Content-Disposition: attachment; filename="original.eml"\n'
    "\n"
    "From: Orig <orig@example.net>\n"
    "To: fwd@example.org\n"
    'Cc: "List" <list@example.net>\n'
    "Subject: original\n"
    "Date: Tue, 2 Jan 2024 08:00:00 +0100\n"
    "Message-ID: <orig@example.net>\n"
    "In-Reply-To: <older@example.net>\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary="inner"\n'
    "\n"
    "--inner\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "Hello\n"
    "--inner\n"
    "Content-Type: text/html; charset=utf-8\n"
    "\n"
    "<p>Hello</p>\n"
    "--inner--\n"
    "\n"
    "--outer--\n"
)
FORWARD_INNER = body_of(FORWARD, b'filename="original.eml"\r\n\r\n', b"\r\n--outer--")

RELATED = crlf(
    "From: a@example.org\n"
    "Subject: newsletter\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=mix\n"
    "\n"
    "--mix\n"
    'Content-Type: multipart/related; boundary=rel; type="text/html"\n'
    "\n"
    "--rel\n"
    "Content-Type: text/html; charset=us-ascii\n"
    "\n"
    '<img src="cid:logo@x">\n'
    "--rel\n"
    "Content-Type: image/png\n"
    "Content-ID: <logo@x>\n"
    "Content-Transfer-Encoding: base64\n"
    "Content-Disposition: inline\n"
    "\n"
    "iVBORw0KGgo=\n"
    "--rel--\n"
    "\n"
    "--mix\n"
    'Content-Type: application/pdf; name="report.pdf"\n'
    "Content-Transfer-Encoding: base64\n"
    'Content-Disposition: attachment; filename="report.pdf"; size=9;\n'
    ' creation-date="Mon, 1 Jan 2024 10:00:00 +0000"\n'
    "\n"
    "JVBERi0xLjQK\n"
    "--mix--\n"
)

# Three levels: mixed > alternative > (text/plain, related > (text/html, image/gif)), plus a multipart with
# extension data of its own.
NESTED = crlf(
    "From: a@example.org\n"
    "Subject: nested\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=l1\n"
    "Content-Disposition: inline\n"
    "Content-Language: de\n"
    "Content-Location: http://example.org/msg\n"
    "\n"
    "--l1\n"
    "Content-Type: multipart/alternative; boundary=l2\n"
    "\n"
    "--l2\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "one\n"
    "two\n"
    "--l2\n"
    "Content-Type: multipart/related; boundary=l3\n"
    "\n"
    "--l3\n"
    "Content-Type: text/html; charset=utf-8\n"
    "\n"
    "<p>one two</p>\n"
    "--l3\n"
    "Content-Type: image/gif\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "R0lGODlhAQABAAAAACw=\n"
    "--l3--\n"
    "\n"
    "--l2--\n"
    "\n"
    "--l1\n"
    "Content-Type: text/plain\n"
    "\n"
    "signature\n"
    "--l1--\n"
)

MESSAGES = {
    "single": SINGLE,
    "defaults": PLAIN_DEFAULTS,
    "forward": FORWARD,
    "related": RELATED,
    "nested": NESTED,
}

# --- the answers, written out ------------------------------------------------------------------------------

SINGLE_BS = (
    b'("TEXT" "PLAIN" ("CHARSET" "ISO-8859-1" "FORMAT" "flowed" "DELSP" "yes") "<single@example.org>" "A note" '
    b'"QUOTED-PRINTABLE" %d 2 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("INLINE" ("FILENAME" "note.txt")) ("en-GB" "fr") '
    b'"https://example.org/note.txt")' % SINGLE_SIZE
)
SINGLE_BODY = (
    b'("TEXT" "PLAIN" ("CHARSET" "ISO-8859-1" "FORMAT" "flowed" "DELSP" "yes") "<single@example.org>" "A note" '
    b'"QUOTED-PRINTABLE" %d 2)' % SINGLE_SIZE
)
# RFC 2045 5.2: no Content-Type means text/plain; charset=us-ascii, 7bit.
DEFAULTS_BS = b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)'

FORWARD_ENVELOPE = (
    b'("Tue, 2 Jan 2024 08:00:00 +0100" "original" (("Orig" NIL "orig" "example.net")) '
    b'(("Orig" NIL "orig" "example.net")) (("Orig" NIL "orig" "example.net")) ((NIL NIL "fwd" "example.org")) '
    b'(("List" NIL "list" "example.net")) NIL "<older@example.net>" "<orig@example.net>")'
)
FORWARD_BS = (
    b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 0 NIL NIL NIL NIL)'
    b'("MESSAGE" "RFC822" ("NAME" "original.eml") NIL NIL "7BIT" %d '
    % len(FORWARD_INNER)
    + FORWARD_ENVELOPE
    + b' (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 5 0 NIL NIL NIL NIL)'
    b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 12 0 NIL NIL NIL NIL) "ALTERNATIVE" ("BOUNDARY" "inner") '
    b'NIL NIL NIL) %d NIL ("ATTACHMENT" ("FILENAME" "original.eml")) NIL NIL) '
    % FORWARD_INNER.count(b"\n")
    + b'"MIXED" ("BOUNDARY" "outer") NIL NIL NIL)'
)
FORWARD_BODY = (
    b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 0)'
    b'("MESSAGE" "RFC822" ("NAME" "original.eml") NIL NIL "7BIT" %d '
    % len(FORWARD_INNER)
    + FORWARD_ENVELOPE
    + b' (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 5 0)'
    b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 12 0) "ALTERNATIVE") %d) "MIXED")'
    % FORWARD_INNER.count(b"\n")
)
RELATED_BS = (
    b'((("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 22 0 NIL NIL NIL NIL)'
    b'("IMAGE" "PNG" NIL "<logo@x>" NIL "BASE64" 12 NIL ("INLINE" NIL) NIL NIL) '
    b'"RELATED" ("BOUNDARY" "rel" "TYPE" "text/html") NIL NIL NIL)'
    b'("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" 12 NIL '
    b'("ATTACHMENT" ("FILENAME" "report.pdf" "SIZE" "9" "CREATION-DATE" "Mon, 1 Jan 2024 10:00:00 +0000")) NIL NIL) '
    b'"MIXED" ("BOUNDARY" "mix") NIL NIL NIL)'
)
NESTED_BS = (
    b'((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT" 8 1 NIL NIL NIL NIL)'
    b'(("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 14 0 NIL NIL NIL NIL)'
    b'("IMAGE" "GIF" NIL NIL NIL "BASE64" 20 NIL NIL NIL NIL) "RELATED" ("BOUNDARY" "l3") NIL NIL NIL) '
    b'"ALTERNATIVE" ("BOUNDARY" "l2") NIL NIL NIL)'
    b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 9 0 NIL NIL NIL NIL) '
    b'"MIXED" ("BOUNDARY" "l1") ("INLINE" NIL) ("de") "http://example.org/msg")'
)
NESTED_BODY = (
    b'((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT" 8 1)'
    b'(("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 14 0)("IMAGE" "GIF" NIL NIL NIL "BASE64" 20) "RELATED") '
    b'"ALTERNATIVE")("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 9 0) "MIXED")'
)


@pytest.fixture(scope="module")
def mailbox(server: ServerProcess) -> Iterator[Raw]:
    """One account holding MESSAGES in order, INBOX selected read-only (nothing here changes state)."""
    from imap.imaputil import DOMAIN, add_accounts

    address = f"bodystructure@{DOMAIN}"
    add_accounts(server, [address])
    c = Raw(server.port("imap"))
    c.login(address, PASSWORD)
    for data in MESSAGES.values():
        c.ok(b"APPEND INBOX {%d}\r\n%s" % (len(data), data))
    c.ok("EXAMINE INBOX")
    yield c
    c.close()


def fetch(c: Raw, seq: int, item: str) -> bytes:
    (line,) = c.ok(f"FETCH {seq} {item}")
    prefix = b"* %d FETCH (%s " % (seq, item.encode())
    assert line.startswith(prefix) and line.endswith(b")\r\n"), line
    return line[len(prefix) : -3]


SEQ = {name: i + 1 for i, name in enumerate(MESSAGES)}


def test_single_part_with_parameters_and_extension_data(mailbox: Raw) -> None:
    assert fetch(mailbox, SEQ["single"], "BODYSTRUCTURE") == SINGLE_BS
    # BODY is the same without the extension data.
    assert fetch(mailbox, SEQ["single"], "BODY") == SINGLE_BODY


def test_defaults_without_mime_headers(mailbox: Raw) -> None:
    assert fetch(mailbox, SEQ["defaults"], "BODYSTRUCTURE") == DEFAULTS_BS
    assert fetch(mailbox, SEQ["defaults"], "BODY") == DEFAULTS_BS[: -len(b" NIL NIL NIL NIL)")] + b")"


def test_message_rfc822_has_envelope_structure_and_lines(mailbox: Raw) -> None:
    # RFC 3501 7.4.2: for MESSAGE/RFC822 the basic fields are followed by the envelope, the body structure
    # of the encapsulated message and its size in text lines.
    assert fetch(mailbox, SEQ["forward"], "BODYSTRUCTURE") == FORWARD_BS
    assert fetch(mailbox, SEQ["forward"], "BODY") == FORWARD_BODY


def test_related_with_attachment(mailbox: Raw) -> None:
    assert fetch(mailbox, SEQ["related"], "BODYSTRUCTURE") == RELATED_BS


def test_nested_multiparts_and_multipart_extension_data(mailbox: Raw) -> None:
    # body-ext-mpart = body-fld-param SP body-fld-dsp SP body-fld-lang SP body-fld-loc
    assert fetch(mailbox, SEQ["nested"], "BODYSTRUCTURE") == NESTED_BS
    assert fetch(mailbox, SEQ["nested"], "BODY") == NESTED_BODY


def test_sizes_match_the_sections(mailbox: Raw) -> None:
    # Each part's size is the length of its BODY[part]; the message's own is RFC822.SIZE.
    (line,) = mailbox.ok(
        f"FETCH {SEQ['nested']} (RFC822.SIZE BODY.PEEK[1.1] BODY.PEEK[1.2.1] BODY.PEEK[1.2.2])"
    )
    assert b"RFC822.SIZE %d " % len(NESTED) in line
    assert re.findall(rb"BODY\[[\d.]+\] \{(\d+)\}", line) == [b"8", b"14", b"20"]
    (line,) = mailbox.ok(f"FETCH {SEQ['forward']} BODY.PEEK[2]")
    assert line == b"* %d FETCH (BODY[2] {%d}\r\n%s)\r\n" % (
        SEQ["forward"],
        len(FORWARD_INNER),
        FORWARD_INNER,
    )


def test_close_delimiter_followed_by_the_outer_one(server: ServerProcess, user: str) -> None:
    # RFC 2046 5.1.1: the CRLF before "--outer" belongs to that delimiter, so the attached message ends with
    # its own close delimiter "--inner--" (Dovecot counts that CRLF into the attached message).
    msg = crlf(
        "Content-Type: multipart/mixed; boundary=outer\n\n"
        "--outer\nContent-Type: message/rfc822\n\n"
        "Subject: in\nContent-Type: multipart/alternative; boundary=inner\n\n"
        "--inner\n\nx\n--inner--\n"
        "--outer--\n"
    )
    inner = body_of(msg, b"message/rfc822\r\n\r\n", b"\r\n--outer--")
    assert inner.endswith(b"--inner--")
    c = Raw(server.port("imap"))
    c.login(user, PASSWORD)
    c.ok(b"APPEND INBOX {%d}\r\n%s" % (len(msg), msg))
    c.ok("EXAMINE INBOX")
    assert fetch(c, 1, "BODYSTRUCTURE") == (
        b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" %d (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 1 0 NIL NIL NIL NIL) "ALTERNATIVE" '
        b'("BOUNDARY" "inner") NIL NIL NIL) 6 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)'
        % len(inner)
    )


def test_imapclient_parses_the_structure(server: ServerProcess, mailbox: Raw) -> None:
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as client:
        client.login("bodystructure@example.test", PASSWORD)
        client.select_folder("INBOX", readonly=True)
        got = client.fetch([SEQ["forward"], SEQ["nested"]], ["BODYSTRUCTURE"])
    forward = got[SEQ["forward"]][b"BODYSTRUCTURE"]
    assert forward.is_multipart
    parts, subtype = forward[0], forward[1]
    assert subtype == b"MIXED" and len(parts) == 2
    attached = parts[1]
    assert attached[:2] == (b"MESSAGE", b"RFC822")
    assert attached[7][1] == b"original"  # the envelope's subject
    nested = got[SEQ["nested"]][b"BODYSTRUCTURE"]
    assert nested[0][0][1] == b"ALTERNATIVE" and nested[0][0][0][1][1] == b"RELATED"


# --- Dovecot as a reference -------------------------------------------------------------------------------

ITEMS = [
    "BODYSTRUCTURE",
    "BODY",
    "ENVELOPE",
    "BODY.PEEK[HEADER]",
    "BODY.PEEK[TEXT]",
    "BODY.PEEK[1]",
    "BODY.PEEK[1.MIME]",
    "BODY.PEEK[2]",
    "BODY.PEEK[2.MIME]",
]
# Sections that exist in each message. Not compared: N.1 of a single part N (Dovecot answers with part N
# itself, this server with nothing: RFC 3501 6.4.5 numbers no parts below a single part) and BINARY of a
# multipart (Dovecot decodes the parts inside and rewrites their headers; RFC 3516 asks for no such thing).
EXTRA = {
    # (No BINARY[1] of "single": it decodes to 8-bit text, which the transcript of Dovecot does not keep.)
    "single": ["BINARY.SIZE[1]", "BODY.PEEK[HEADER.FIELDS.NOT (FROM CONTENT-ID)]"],
    "defaults": ["BINARY.SIZE[1]", "BODY.PEEK[]<5.10>"],
    "forward": [
        "BODY.PEEK[2.HEADER]",
        "BODY.PEEK[2.TEXT]",
        "BODY.PEEK[2.1]",
        "BODY.PEEK[2.2]",
        "BODY.PEEK[2.1.MIME]",
        "BODY.PEEK[2.HEADER.FIELDS (SUBJECT CC)]",
        "BINARY.SIZE[2.2]",
        "BINARY.PEEK[2.2]",
    ],
    "related": ["BODY.PEEK[1.2]", "BODY.PEEK[1.2.MIME]", "BINARY.SIZE[1.2]", "BINARY.SIZE[2]"],
    "nested": ["BODY.PEEK[1.2.2]", "BODY.PEEK[1.2.1.MIME]", "BINARY.SIZE[1.2.2]", "BODY.PEEK[1.2.2]<4.8>"],
}


def command(name: str) -> str:
    return f"FETCH {SEQ[name]} (" + " ".join(ITEMS + EXTRA[name]) + ")"


def responses(text: bytes) -> list[bytes]:
    """Split a session transcript into whole responses (literals inline)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(text):
        end = text.index(b"\r\n", pos) + 2
        line = text[pos:end]
        pos = end
        while m := re.search(rb"~?\{(\d+)\}\r\n$", line):
            n = int(m.group(1))
            end = text.index(b"\r\n", pos + n) + 2
            line += text[pos:end]
            pos = end
        out.append(line)
    return out


def _fetches(lines: list[bytes]) -> dict[int, bytes]:
    """The FETCH responses by message number; Dovecot may split one message's items over several responses,
    which are joined into one."""
    found: dict[int, list[bytes]] = {}
    for line in lines:
        m = re.match(rb"\* (\d+) FETCH \((.*)\)\r\n$", line, re.S)
        if m:
            found.setdefault(int(m.group(1)), []).append(m.group(2))
    return {n: b"* %d FETCH (%s)\r\n" % (n, b" ".join(items)) for n, items in found.items()}


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Dovecot's FETCH response for every message: the same command as sent to this server."""
    require_peer(DOVECOT_IMAP)
    maildir: Path = tmp_path_factory.mktemp("maildir")
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir()
    for i, data in enumerate(MESSAGES.values()):
        (maildir / "cur" / f"{1700000000 + i}.M{i}P1.test:2,S").write_bytes(data)
    out = dovecot_imap_session(maildir, ["EXAMINE INBOX", *(command(name) for name in MESSAGES)])
    found = _fetches(responses(out.encode()))
    return {name: found[SEQ[name]] for name in MESSAGES}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_same_as_dovecot(mailbox: Raw, dovecot: dict[str, bytes], name: str) -> None:
    (ours,) = mailbox.ok(command(name))
    # Dovecot sends every BINARY as literal8; RFC 3516 4.2 prefers a plain literal when there is no NUL.
    ours, theirs = ours.upper(), dovecot[name].replace(b"~{", b"{").upper()
    if ours != theirs:
        i = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
        raise AssertionError(
            f"differs at {i}:\n ours:    {ours[i - 80 : i + 80]!r}\n dovecot: {theirs[i - 80 : i + 80]!r}"
        )


def test_message_global_depends_on_the_grammar(server: ServerProcess, user: str) -> None:
    msg = crlf(
        "From: a@example.org\nContent-Type: multipart/mixed; boundary=g\n\n"
        "--g\nContent-Type: message/global\n\nSubject: inner\n\nhi\n"
        "--g--\n"
    )
    c = Raw(server.port("imap"))
    c.login(user, PASSWORD)
    c.ok(b"APPEND INBOX {%d}\r\n%s" % (len(msg), msg))
    c.ok("EXAMINE INBOX")
    # RFC 3501 9: media-message is only MESSAGE/RFC822, so MESSAGE/GLOBAL is a body-type-basic...
    assert fetch(c, 1, "BODYSTRUCTURE") == (
        b'(("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" 20 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "g") NIL NIL NIL)'
    )
    assert fetch(c, 1, "BODY") == b'(("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" 20) "MIXED")'
    # ... while RFC 9051 9 describes it like MESSAGE/RFC822, with envelope, body and lines.
    c.ok("ENABLE IMAP4rev2")
    assert fetch(c, 1, "BODYSTRUCTURE") == (
        b'(("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" 20 (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 2 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL) '
        b'"MIXED" ("BOUNDARY" "g") NIL NIL NIL)'
    )
