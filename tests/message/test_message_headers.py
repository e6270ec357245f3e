"""Header grammars: fields, RFC 2047 words, parameters (RFC 2045/2231), addresses, IMAP strings."""

from __future__ import annotations

import message_samples as s
import pytest

from homemail.message import Address, header_end, header_fields, parse
from homemail.message.headers import decode_words, parse_addresses, parse_content_type, strip_comments
from homemail.message.imap import astring, nstring, string


def test_header_fields_and_end() -> None:
    msg = s.crlf("Subject: a\n b\nX-Empty:\nFrom : x@y\n\nbody\n")
    assert header_fields(msg) == [("Subject", b" a\r\n b"), ("X-Empty", b""), ("From", b" x@y")]
    assert msg[header_end(msg) :] == b"body\r\n"


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"", 0),
        (b"\r\nbody", 2),
        (b"\nbody", 1),
        (b"A: b\r\n", 6),
        (b"A: b\r\n\r\nc", 8),
        (b"A: b\n\nc", 6),
        (b"A: b\n\r\nc", 7),
        (b"A: b\r\n\nc", 7),
    ],
)
def test_header_end(data: bytes, end: int) -> None:
    assert header_end(data) == end


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("plain text", "plain text"),
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?UTF-8?Q?a_b?=", "a b"),
        ("=?utf-8?b?w6k=?= =?utf-8?b?w6k=?=", "éé"),
        ("=?utf-8?b?4oI=?=\t=?utf-8?b?rA==?=", "€"),  # a character split across two words
        ("a =?iso-8859-1?q?b=E9?= c", "a bé c"),
        ("=?iso-8859-1*fr?q?=E9t=E9?=", "été"),  # RFC 2231 language suffix
        ("=?x-unknown?q?caf=C3=A9?=", "café"),
        ("=?utf-8?q?not closed", "=?utf-8?q?not closed"),
        ("=?utf-8?x?abc?=", "=?utf-8?x?abc?="),
    ],
)
def test_decode_words(raw: str, text: str) -> None:
    assert decode_words(raw) == text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/plain", ("text", "plain", [])),
        ('TEXT/HTML ; CHARSET = "UTF-8" ', ("text", "html", [("charset", "UTF-8")])),
        ("text/plain (a comment) ; charset=us-ascii (another)", ("text", "plain", [("charset", "us-ascii")])),
        (
            'application/x; name="a;b.txt"; x="q\\"uote"',
            ("application", "x", [("name", "a;b.txt"), ("x", 'q"uote')]),
        ),
        ("text", None),
        ("/plain", None),
        ("", None),
        # RFC 2231 sections arrive out of order and are joined.
        ("a/b; t*1=two; t*0=one; u=3", ("a", "b", [("t", "onetwo"), ("u", "3")])),
        ("a/b; t*0*=us-ascii'en'%41; t*1*=%42", ("a", "b", [("t*", "us-ascii'en'%41%42")])),
        ("a/b; t*=''%41", ("a", "b", [("t*", "''%41")])),
    ],
)
def test_content_type(value: str, expected: object) -> None:
    assert parse_content_type(value) == expected


def test_strip_comments() -> None:
    assert strip_comments('a (b (c) \\) d) "x (y)" e') == 'a   "x (y)" e'
    assert strip_comments("a (unclosed") == "a  "


def test_filename_helpers() -> None:
    part = parse(s.RFC2231).body.parts[0]
    assert part.filename == '€ rates "2025".txt'
    assert part.param("NAME") == "€ rates.txt"
    assert part.param("missing") is None
    encoded = parse(s.crlf('Content-Type: application/pdf; name="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="\n\nx\n'))
    assert encoded.body.filename == "résumé.pdf"


A = Address
ADDRESSES = [
    ("a@b", [A(None, None, "a", "b")]),
    ("A B <a@b>", [A("A B", None, "a", "b")]),
    ('"Doe, John" <j@x>, c@d', [A("Doe, John", None, "j", "x"), A(None, None, "c", "d")]),
    ('"a\\"b" <x@y>', [A('a"b', None, "x", "y")]),
    ("John  Q.  Public <jqp@x>", [A("John Q. Public", None, "jqp", "x")]),
    ("user@domain (Real Name)", [A("Real Name", None, "user", "domain")]),
    ("<@r1,@r2:user@domain>", [A(None, "@r1,@r2", "user", "domain")]),
    ('"john doe"@x.org', [A(None, None, '"john doe"', "x.org")]),
    ("a@[192.0.2.1]", [A(None, None, "a", "[192.0.2.1]")]),
    ("a@b,,c@d, ", [A(None, None, "a", "b"), A(None, None, "c", "d")]),
    ("", []),
    ("<>", []),
    ("x", [A(None, None, "x", "MISSING_DOMAIN")]),
    ("@x", [A(None, None, "MISSING_MAILBOX", "x")]),
    # RFC 5322 A.1.3 and A.5
    (
        "Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
        [A("Pete", None, "pete", "silly.test")],
    ),
    (
        "A Group(Some people):Chris Jones <c@(Chris's host.)public.example>, joe@example.org,"
        " John <jdoe@one.test> (my dear friend); (the end of the group)",
        [
            A(None, None, "A Group", None),
            A("Chris Jones", None, "c", "public.example"),
            A(None, None, "joe", "example.org"),
            A("John", None, "jdoe", "one.test"),
            A(None, None, None, None),
        ],
    ),
    ("grp: a@b", [A(None, None, "grp", None), A(None, None, "a", "b"), A(None, None, None, None)]),
    ("=?utf-8?q?J=C3=B6rg?= <j@x>", [A("=?utf-8?q?J=C3=B6rg?=", None, "j", "x")]),
]


@pytest.mark.parametrize(("value", "expected"), ADDRESSES)
def test_addresses(value: str, expected: list[Address]) -> None:
    assert parse_addresses(value) == expected


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        (None, b"NIL"),
        ("", b'""'),
        ("plain", b'"plain"'),
        ('a"b\\c', b'"a\\"b\\\\c"'),
        ("tab\there", b'"tab\there"'),
        ("line\r\nbreak", b"{11}\r\nline\r\nbreak"),
        ("Grüße", b"{7}\r\nGr\xc3\xbc\xc3\x9fe"),
        (b"raw\xff", b"{4}\r\nraw\xff"),
        ("caf\udce9", b"{4}\r\ncaf\xe9"),  # a surrogate-escaped header byte goes out as it came in
        ("x" * 2000, b"{2000}\r\n" + b"x" * 2000),
        ("\ud800", b'"?"'),
    ],
)
def test_string(value: str | bytes | None, rendered: bytes) -> None:
    assert string(value) == rendered
    assert nstring(value) == rendered


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("INBOX", b"INBOX"),
        ("a]b", b"a]b"),
        ("a b", b'"a b"'),
        ("", b'""'),
        ("a%", b'"a%"'),
        ("ü", b"{2}\r\n\xc3\xbc"),
    ],
)
def test_astring(value: str, rendered: bytes) -> None:
    assert astring(value) == rendered
