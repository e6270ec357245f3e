"""BODY[section], BINARY[section] and search text, following RFC 3501 6.4.5 and RFC 3516."""

from __future__ import annotations

import message_samples as s
import pytest

from homemail.message import parse
from homemail.message.imap import UnknownCTE, binary, binary_size, find_part, search_text, section

DATA = s.RFC3501_SECTIONS
PARSED = parse(DATA)

INNER3 = s.crlf(
    "From: three@example.org\n"
    "Subject: three\n"
    'Content-Type: MULTIPART/MIXED; boundary="x3"\n'
    "\n"
    "--x3\n"
    "Content-Type: TEXT/PLAIN\n"
    "\n"
    "part 3.1\n"
    "--x3\n"
    "Content-Type: APPLICATION/OCTET-STREAM\n"
    "\n"
    "part 3.2\n"
    "--x3--\n"
)
INNER3_HEADER, _, INNER3_TEXT = INNER3.partition(b"\r\n\r\n")

# The part layout of RFC 3501 6.4.5, section by section.
SECTIONS = [
    ((), None, DATA),
    (
        (),
        "HEADER",
        s.crlf('From: top@example.org\nSubject: top\nContent-Type: MULTIPART/MIXED; boundary="x1"\n\n'),
    ),
    ((), "TEXT", DATA.partition(b"\r\n\r\n")[2]),
    ((1,), None, b"part 1"),
    ((1,), "MIME", b"Content-Type: TEXT/PLAIN\r\n\r\n"),
    ((2,), None, b"part 2"),
    ((3,), None, INNER3),
    ((3,), "MIME", b"Content-Type: MESSAGE/RFC822\r\n\r\n"),
    ((3,), "HEADER", INNER3_HEADER + b"\r\n\r\n"),
    ((3,), "TEXT", INNER3_TEXT),
    ((3, 1), None, b"part 3.1"),
    ((3, 1), "MIME", b"Content-Type: TEXT/PLAIN\r\n\r\n"),
    ((3, 2), None, b"part 3.2"),
    ((4, 1), None, b"part 4.1"),
    ((4, 1), "MIME", b"Content-Type: IMAGE/GIF\r\n\r\n"),
    (
        (4, 2),
        "HEADER",
        s.crlf(
            'From: four@example.org\nSubject: four-two\nContent-Type: MULTIPART/MIXED; boundary="x42"\n\n'
        ),
    ),
    ((4, 2, 1), None, b"part 4.2.1"),
    ((4, 2, 2), "MIME", b'Content-Type: MULTIPART/ALTERNATIVE; boundary="x422"\r\n\r\n'),
    ((4, 2, 2, 1), None, b"part 4.2.2.1"),
    ((4, 2, 2, 2), None, b"part 4.2.2.2"),
    ((4, 2, 2, 2), "MIME", b"Content-Type: TEXT/RICHTEXT\r\n\r\n"),
    # Parts and sections that do not exist.
    ((), "MIME", b""),
    ((0,), None, b""),
    ((5,), None, b""),
    ((1, 1), None, b""),
    ((3, 3), None, b""),
    ((4, 2, 2, 3), None, b""),
    ((4, 2, 2, 2, 1), None, b""),
    ((1,), "HEADER", b""),  # HEADER and TEXT need a message/rfc822 part
    ((4,), "TEXT", b""),
    ((1,), "NONSENSE", b""),
]


@pytest.mark.parametrize(("part", "spec", "expected"), SECTIONS)
def test_rfc3501_section_layout(part: tuple[int, ...], spec: str | None, expected: bytes) -> None:
    assert section(DATA, PARSED, part, spec) == expected


def test_multipart_section_is_its_whole_body() -> None:
    got = section(DATA, PARSED, (4,))
    assert got.startswith(b"--x4\r\nContent-Type: IMAGE/GIF")
    assert got.endswith(b"--x4--\r\n")


def test_spec_is_case_insensitive() -> None:
    assert section(DATA, PARSED, (3,), "header") == section(DATA, PARSED, (3,), "HEADER")


def test_header_fields() -> None:
    msg = s.crlf("Subject: one\nX-A: 1\nfrom: a@b\nReceived: x\n  folded\nX-A: 2\n\nbody\n")
    parsed = parse(msg)
    # Matching fields in message order, raw (folding kept), then the blank line.
    assert (
        section(msg, parsed, (), "HEADER.FIELDS", ["x-a", "FROM"]) == b"X-A: 1\r\nfrom: a@b\r\nX-A: 2\r\n\r\n"
    )
    assert section(msg, parsed, (), "HEADER.FIELDS.NOT", ["x-a", "from"]) == (
        b"Subject: one\r\nReceived: x\r\n  folded\r\n\r\n"
    )
    assert section(msg, parsed, (), "HEADER.FIELDS", ["absent"]) == b"\r\n"
    assert section(DATA, PARSED, (4, 2), "HEADER.FIELDS", [b"subject"]) == b"Subject: four-two\r\n\r\n"


def test_header_fields_of_header_only_message() -> None:
    parsed = parse(s.HEADER_ONLY)
    # RFC 3501 6.4.5: no blank line is added for "a message which has no body and no blank line".
    assert section(s.HEADER_ONLY, parsed, (), "HEADER.FIELDS", ["subject"]) == b"Subject: no body\r\n"
    assert section(s.HEADER_ONLY, parsed, (), "HEADER") == s.HEADER_ONLY
    assert section(s.HEADER_ONLY, parsed, (), "TEXT") == b""


def test_non_multipart_message_has_part_one() -> None:
    parsed = parse(s.SIMPLE)
    header, _, body = s.SIMPLE.partition(b"\r\n\r\n")
    assert section(s.SIMPLE, parsed, (1,)) == body
    assert section(s.SIMPLE, parsed, (1,), "MIME") == header + b"\r\n\r\n"
    assert section(s.SIMPLE, parsed, (2,)) == b""
    assert section(s.SIMPLE, parsed, (1, 1)) == b""


def test_encapsulated_non_multipart_message() -> None:
    parsed = parse(s.ENCODINGS)
    # The line break before the closing delimiter belongs to the delimiter.
    assert section(s.ENCODINGS, parsed, (4,), "TEXT") == b"inner text"
    assert section(s.ENCODINGS, parsed, (4, 1)) == b"inner text"
    assert section(s.ENCODINGS, parsed, (4,), "HEADER") == b"Subject: inner\r\n\r\n"


def test_header_plus_text_is_the_message() -> None:
    for data in s.ALL.values():
        parsed = parse(data)
        assert section(data, parsed, (), "HEADER") + section(data, parsed, (), "TEXT") == data


def test_find_part() -> None:
    part = find_part(PARSED, (4, 2, 2))
    assert part is not None and (part.type, part.subtype) == ("multipart", "alternative")
    assert find_part(PARSED, (9,)) is None
    assert find_part(PARSED, ()) is PARSED.body


# --- BINARY --------------------------------------------------------------------------------------------


def test_binary_decodes() -> None:
    parsed = parse(s.ENCODINGS)
    assert binary(s.ENCODINGS, parsed, (1,)) == "café au lait".encode()
    assert binary(s.ENCODINGS, parsed, (2,)) == "<b>Grüße</b>".encode("latin-1")
    assert binary_size(s.ENCODINGS, parsed, (2,)) == len("<b>Grüße</b>")
    assert binary(s.ENCODINGS, parsed, (4,)) == section(s.ENCODINGS, parsed, (4,))
    assert binary(s.ENCODINGS, parsed, ()) == s.ENCODINGS
    assert binary(s.ENCODINGS, parsed, (9,)) == b""


def test_binary_unknown_encoding() -> None:
    parsed = parse(s.ENCODINGS)
    with pytest.raises(UnknownCTE) as err:
        binary(s.ENCODINGS, parsed, (3,))
    assert err.value.encoding == "X-UUENCODE"


def test_binary_identity_and_damaged_base64() -> None:
    msg = s.crlf(
        "Content-Type: multipart/mixed; boundary=z\n\n"
        "--z\nContent-Transfer-Encoding: 8bit\n\nraw \xff bytes\n"
        "--z\nContent-Transfer-Encoding: base64\n\naGVsbG8gd29y\nbGQ\n"
        "--z\nContent-Transfer-Encoding: base64\n\n!!aGk=junk=\n"
        "--z--\n"
    )
    parsed = parse(msg)
    assert binary(msg, parsed, (1,)) == "raw \xff bytes".encode()
    assert binary(msg, parsed, (2,)) == b"hello world"
    assert binary(msg, parsed, (3,)) == b"hi"


# --- search text ---------------------------------------------------------------------------------------


def test_search_text() -> None:
    text = search_text(s.ENCODINGS, parse(s.ENCODINGS))
    assert "café au lait" in text
    assert "<b>Grüße</b>" in text
    assert "inner text" in text  # text inside an encapsulated message counts too
    assert "begin 644" not in text  # not a text part


def test_search_text_unknown_charset() -> None:
    msg = s.crlf("Content-Type: text/plain; charset=x-no-such-charset\n\nGrüße\n")
    assert "Grüße" in search_text(msg, parse(msg))


def test_search_fields() -> None:
    search = parse(s.ENCODINGS).search
    # RFC 2047 6.2: the space between two encoded words is not part of the text.
    assert search.subject == "caféGrüße"
    msg = s.crlf(
        "From: =?utf-8?q?J=C3=B6rg?= <j@example.org>, c@example.org\n"
        "To: grp: a@example.org;\n"
        "Date: Tue, 03 Jun 2025 10:14:57 +0200\n"
        "Message-ID: <id-1@example.org> (comment)\n"
        "In-Reply-To: <id-0@example.org>\n"
        "References: <r1@x>\n <r2@x> junk <id-0@example.org>\n"
        "\nx\n"
    )
    search = parse(msg).search
    assert search.from_ == "Jörg <j@example.org>, c@example.org"
    assert search.to == "a@example.org"
    assert search.date == 1748938497.0
    assert search.message_id == "<id-1@example.org>"
    assert search.in_reply_to == "<id-0@example.org>"
    assert search.references == ["<r1@x>", "<r2@x>", "<id-0@example.org>"]


@pytest.mark.parametrize("date", ["", "yesterday", "Tue, 99 Foo 2025 10:14:57 +0200"])
def test_bad_dates(date: str) -> None:
    assert parse(s.crlf(f"Date: {date}\n\nx\n")).search.date is None
