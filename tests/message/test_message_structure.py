"""ENVELOPE and BODY/BODYSTRUCTURE of the sample messages, worked out from the RFC 3501 grammar."""

from __future__ import annotations

import email
import email.message

import message_samples as s
import pytest

from homemail.message import BodyPart, ParsedMessage, parse
from homemail.message.imap import bodystructure, envelope

TEXT_US_ASCII = '"TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT"'

BODYSTRUCTURE = {
    "simple": f"({TEXT_US_ASCII} 19 2 NIL NIL NIL NIL)",
    "no_content_type_empty_body": f"({TEXT_US_ASCII} 0 0 NIL NIL NIL NIL)",
    "header_only": f"({TEXT_US_ASCII} 0 0 NIL NIL NIL NIL)",
    "mixed_alternative": (
        '((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 7 1 NIL NIL NIL NIL)'
        '("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 11 0 NIL NIL NIL NIL)'
        ' "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)'
        '("APPLICATION" "PDF" ("NAME" "a.pdf") NIL NIL "BASE64" 12 NIL ("ATTACHMENT" ("FILENAME" "a.pdf")) NIL NIL)'
        ' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)'
    ),
    "related": (
        '(("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 24 1 NIL NIL NIL NIL)'
        '("IMAGE" "PNG" NIL "<logo@x>" NIL "BASE64" 12 NIL ("INLINE" NIL) NIL NIL)'
        ' "RELATED" ("BOUNDARY" "rel" "TYPE" "text/html") NIL NIL NIL)'
    ),
    # RFC 2046 5.1.5: a digest part without Content-Type is message/rfc822.
    "digest": (
        '(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 32'
        ' (NIL "one" ((NIL NIL "x" "y")) ((NIL NIL "x" "y")) ((NIL NIL "x" "y")) NIL NIL NIL NIL NIL)'
        f" ({TEXT_US_ASCII} 5 0 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)"
        f"({TEXT_US_ASCII} 13 0 NIL NIL NIL NIL)"
        ' "DIGEST" ("BOUNDARY" "d") NIL NIL NIL)'
    ),
    "no_boundary_in_body": f"({TEXT_US_ASCII} 7 1 NIL NIL NIL NIL)",
    "no_boundary_param": f"({TEXT_US_ASCII} 7 1 NIL NIL NIL NIL)",
    "missing_close": (
        f"(({TEXT_US_ASCII} 3 0 NIL NIL NIL NIL)({TEXT_US_ASCII} 5 1 NIL NIL NIL NIL)"
        ' "MIXED" ("BOUNDARY" "b") NIL NIL NIL)'
    ),
    "boundary_whitespace": f'(({TEXT_US_ASCII} 23 0 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "b") NIL NIL NIL)',
    # RFC 2231 sections are joined; an encoded result stays encoded, as a "name*" parameter.
    "rfc2231": (
        '(("APPLICATION" "OCTET-STREAM" ("NAME*" "utf-8\'\'%E2%82%AC%20rates.txt") NIL NIL "7BIT" 4 NIL'
        ' ("ATTACHMENT" ("FILENAME*" "utf-8\'\'%E2%82%AC%20rates%20%222025%22.txt")) NIL NIL)'
        ' "MIXED" ("BOUNDARY" "=_x y") NIL NIL NIL)'
    ),
    "folded": '("TEXT" "PLAIN" ("CHARSET" "iso-8859-1" "FORMAT" "flowed") NIL NIL "7BIT" 3 1 NIL NIL NIL NIL)',
    "utf8_headers": f"({TEXT_US_ASCII} 7 1 NIL NIL NIL NIL)",
    "dovecot": (
        '(("TEXT" "X-MYOWN" ("CHARSET" "us-ascii" "FOO" "quoted\\"string") "<foo@example.com>"'
        ' "hellodescription" "7BIT" 7 1 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("INLINE" ("FOO" "bar")) ("en" "fi" "se")'
        ' "http://example.com/test.txt")'
        '("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 412 ("Sun, 12 Aug 2012 12:34:56 +0300" "submsg"'
        ' ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org"))'
        ' ((NIL NIL "sub-to1" "domain.org")(NIL NIL "sub-to2" "domain.org")) NIL NIL NIL NIL)'
        ' (("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "8BIT" 20 1 NIL NIL NIL NIL)'
        f'({TEXT_US_ASCII} 21 1 NIL NIL NIL NIL) "ALTERNATIVE" ("BOUNDARY" "sub1") NIL NIL NIL)'
        ' 21 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "foo bar") NIL NIL NIL)'
    ),
}
# With bare LF line ends every size shrinks by the number of lines it spans.
BODYSTRUCTURE["dovecot_lf"] = (
    BODYSTRUCTURE["dovecot"]
    .replace('"7BIT" 7 1', '"7BIT" 6 1')
    .replace('"7BIT" 412', '"7BIT" 391')
    .replace('"8BIT" 20 1', '"8BIT" 19 1')
    .replace('"7BIT" 21 1', '"7BIT" 20 1')
)

ALICE = '(("Alice" NIL "alice" "example.org"))'
ENVELOPE = {
    "simple": (
        f'("Mon, 2 Jun 2025 09:00:00 +0000" "Hello" {ALICE} {ALICE} {ALICE}'
        ' ((NIL NIL "bob" "example.net")) NIL NIL NIL "<1@example.org>")'
    ),
    "no_content_type_empty_body": '(NIL NIL ((NIL NIL "a" "example.org")) ((NIL NIL "a" "example.org"))'
    ' ((NIL NIL "a" "example.org")) NIL NIL NIL NIL NIL)',
    "header_only": '(NIL "no body" ((NIL NIL "a" "example.org")) ((NIL NIL "a" "example.org"))'
    ' ((NIL NIL "a" "example.org")) NIL NIL NIL NIL NIL)',
    "folded": '(NIL "a very\tlong subject" (("Doe, John" NIL "j" "example.org"))'
    ' (("Doe, John" NIL "j" "example.org")) (("Doe, John" NIL "j" "example.org")) NIL NIL NIL NIL NIL)',
    # RFC 6532 header bytes go out as literals, byte for byte.
    "utf8_headers": "(NIL {7}\r\nGrüße (({5}\r\nJörg NIL {5}\r\njörg {12}\r\nexämple.org))"
    " (({5}\r\nJörg NIL {5}\r\njörg {12}\r\nexämple.org)) (({5}\r\nJörg NIL {5}\r\njörg {12}\r\nexämple.org))"
    " NIL NIL NIL NIL NIL)",
    "dovecot": '("Sat, 24 Mar 2007 23:00:00 +0200" NIL ((NIL NIL "user" "domain.org"))'
    ' ((NIL NIL "user" "domain.org")) ((NIL NIL "user" "domain.org")) NIL NIL NIL NIL NIL)',
}

# Dovecot's own expected output for DOVECOT (src/lib-imap/test-imap-bodystructure.c).  Dovecot keeps the
# case of media types as written and lower-cases its defaults; tokens are case-insensitive, so the
# comparison folds case.
DOVECOT_BODYSTRUCTURE = (
    '("text" "x-myown" ("charset" "us-ascii" "foo" "quoted\\"string") "<foo@example.com>" "hellodescription"'
    ' "7bit" 7 1 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("inline" ("foo" "bar")) ("en" "fi" "se")'
    ' "http://example.com/test.txt")("message" "rfc822" NIL NIL NIL "7bit" 412'
    ' ("Sun, 12 Aug 2012 12:34:56 +0300" "submsg" ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org"))'
    ' ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub-to1" "domain.org")(NIL NIL "sub-to2" "domain.org"))'
    ' NIL NIL NIL NIL) (("text" "html" ("charset" "us-ascii") NIL NIL "8bit" 20 1 NIL NIL NIL NIL)'
    '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 21 1 NIL NIL NIL NIL) "alternative"'
    ' ("boundary" "sub1") NIL NIL NIL) 21 NIL NIL NIL NIL) "mixed" ("boundary" "foo bar") NIL NIL NIL'
)
DOVECOT_BODY = (
    '("text" "x-myown" ("charset" "us-ascii" "foo" "quoted\\"string") "<foo@example.com>" "hellodescription"'
    ' "7bit" 7 1)("message" "rfc822" NIL NIL NIL "7bit" 412 ("Sun, 12 Aug 2012 12:34:56 +0300" "submsg"'
    ' ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org"))'
    ' ((NIL NIL "sub-to1" "domain.org")(NIL NIL "sub-to2" "domain.org")) NIL NIL NIL NIL)'
    ' (("text" "html" ("charset" "us-ascii") NIL NIL "8bit" 20 1)("text" "plain" ("charset" "us-ascii")'
    ' NIL NIL "7bit" 21 1) "alternative") 21) "mixed"'
)


def _nonextensible(structure: str) -> str:
    """BODY is BODYSTRUCTURE without extension data; derived here from the tables above."""
    parsed = parse(s.ALL[structure])
    return bodystructure(parsed.body, extended=False).decode("utf-8")


@pytest.mark.parametrize("name", sorted(BODYSTRUCTURE))
def test_bodystructure(name: str) -> None:
    parsed = parse(s.ALL[name])
    assert bodystructure(parsed.body, extended=True).decode("utf-8") == BODYSTRUCTURE[name]


@pytest.mark.parametrize("name", sorted(ENVELOPE))
def test_envelope(name: str) -> None:
    assert envelope(parse(s.ALL[name]).envelope).decode("utf-8") == ENVELOPE[name]


def test_latin1_header_bytes_are_kept_exactly() -> None:
    parsed = parse(s.LATIN1_SUBJECT)
    assert envelope(parsed.envelope).startswith(b"(NIL {4}\r\ncaf\xe9 ")
    assert parsed.search.subject == "caf\ufffd"


def test_matches_dovecot_up_to_case() -> None:
    parsed = parse(s.DOVECOT)
    # Dovecot writes the top-level multipart without its enclosing parentheses.
    assert bodystructure(parsed.body, True).lower() == f"({DOVECOT_BODYSTRUCTURE})".lower().encode()
    assert bodystructure(parsed.body, False).lower() == f"({DOVECOT_BODY})".lower().encode()


def test_body_is_bodystructure_without_extensions() -> None:
    assert _nonextensible("mixed_alternative") == (
        '((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 7 1)'
        '("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 11 0) "ALTERNATIVE")'
        '("APPLICATION" "PDF" ("NAME" "a.pdf") NIL NIL "BASE64" 12) "MIXED")'
    )
    assert _nonextensible("simple") == f"({TEXT_US_ASCII} 19 2)"


def _lines(count: int, width: int, last: int) -> str:
    """``count`` CRLF lines of ``width`` octets each (CRLF included) but the last, which has ``last``."""
    return ("x" * (width - 2) + "\n") * (count - 1) + "y" * (last - 2) + "\n"


def test_rfc3501_sample_fetch() -> None:
    # RFC 3501 8: the ENVELOPE and BODY of message 12 in the sample session.  The RFC prints a space
    # between the two cc addresses, which its own grammar (env-cc = "(" 1*address ")") does not allow.
    msg = s.crlf(
        "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
        "From: Terry Gray <gray@cac.washington.edu>\n"
        "Subject: IMAP4rev1 WG mtg summary and minutes\n"
        "To: imap@cac.washington.edu\n"
        "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
        "Message-Id: <B27397-0100000@cac.washington.edu>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n"
        "\n" + _lines(92, 33, 25)
    )
    parsed = parse(msg)
    gray = '(("Terry Gray" NIL "gray" "cac.washington.edu"))'
    assert envelope(parsed.envelope).decode() == (
        '("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes"'
        f' {gray} {gray} {gray} ((NIL NIL "imap" "cac.washington.edu"))'
        ' ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU"))'
        ' NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )
    assert (
        bodystructure(parsed.body, False) == b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'
    )


def test_rfc3501_bodystructure_example() -> None:
    # RFC 3501 7.4.2: "a two part message consisting of a text and a BASE64-encoded text attachment".
    msg = s.crlf(
        "From: a@example.org\n"
        "MIME-Version: 1.0\n"
        "Content-Type: MULTIPART/MIXED; BOUNDARY=sep\n"
        "\n"
        "--sep\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n"
        "\n" + _lines(23, 50, 52) + "\n"
        "--sep\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff\n"
        "Content-ID: <960723163407.20117h@cac.washington.edu>\n"
        "Content-Description: Compiler diff\n"
        "Content-Transfer-Encoding: BASE64\n"
        "\n" + _lines(73, 62, 90) + "\n"
        "--sep--\n"
    )
    assert bodystructure(parse(msg).body, False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)("TEXT" "PLAIN" ("CHARSET" "US-ASCII"'
        b' "NAME" "cc.diff") "<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73)'
        b' "MIXED")'
    )


# imaptest's fetch-envelope cases (dovecot/imaptest src/tests/fetch-envelope).
IMAPTEST_ENVELOPES = [
    (
        "From: user@domain (Real Name)\nTo: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\n",
        '((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")(NIL NIL NIL NIL)'
        '(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")(NIL NIL NIL NIL))',
    ),
    ("From: user@domain (Real Name)\nSender: \nReply-To: \n", "NIL"),
    ("From: <@route:user@domain>\n", "NIL"),
]


@pytest.mark.parametrize(("header", "to"), IMAPTEST_ENVELOPES)
def test_imaptest_envelopes(header: str, to: str) -> None:
    parsed = parse(s.crlf("Date: Sat, 01 Feb 2007 01:02:03 +0200\n" + header + "\nbody\n"))
    sender = '(("Real Name" NIL "user" "domain"))' if "Real" in header else '((NIL "@route" "user" "domain"))'
    assert envelope(parsed.envelope).decode() == (
        f'("Sat, 01 Feb 2007 01:02:03 +0200" NIL {sender} {sender} {sender} {to} NIL NIL NIL NIL)'
    )


def test_full_envelope_fields() -> None:
    msg = s.crlf(
        "Message-ID: <msg@id>\nIn-Reply-To: <reply@to.id>\nDate: Sat, 01 Feb 2007 01:02:03 +0200\n"
        "Subject: subject header\nFrom: From Real <fromuser@fromdomain.org>\nTo: To Real <touser@todomain.org>\n"
        "Cc: Cc Real <ccuser@ccdomain.org>\nBcc: Bcc Real <bccuser@bccdomain.org>\n"
        "Sender: Sender Real <senderuser@senderdomain.org>\nReply-To: ReplyTo Real <replytouser@replytodomain.org>\n"
        "\nbody\n"
    )
    assert envelope(parse(msg).envelope).decode() == (
        '("Sat, 01 Feb 2007 01:02:03 +0200" "subject header" (("From Real" NIL "fromuser" "fromdomain.org"))'
        ' (("Sender Real" NIL "senderuser" "senderdomain.org")) (("ReplyTo Real" NIL "replytouser"'
        ' "replytodomain.org")) (("To Real" NIL "touser" "todomain.org")) (("Cc Real" NIL "ccuser"'
        ' "ccdomain.org")) (("Bcc Real" NIL "bccuser" "bccdomain.org")) "<reply@to.id>" "<msg@id>")'
    )


def test_undisclosed_recipients_and_missing_domain() -> None:
    parsed = parse(s.crlf("From: postmaster\nTo: undisclosed-recipients:;\n\nx\n"))
    assert envelope(parsed.envelope).decode() == (
        '(NIL NIL ((NIL NIL "postmaster" "MISSING_DOMAIN")) ((NIL NIL "postmaster" "MISSING_DOMAIN"))'
        ' ((NIL NIL "postmaster" "MISSING_DOMAIN")) ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
        " NIL NIL NIL NIL)"
    )


def test_nested_message_envelope_and_offsets() -> None:
    data = s.DOVECOT
    parsed = parse(data)
    rfc822 = parsed.body.parts[1]
    assert rfc822.message is not None
    inner_env, inner = rfc822.message
    assert inner.header_start == rfc822.body_start
    assert inner.end == rfc822.end
    assert data[inner.header_start :].startswith(b"From: sub@domain.org\r\n")
    assert inner_env.subject == "submsg"
    assert [p.subtype for p in inner.parts] == ["html", "plain"]


def test_deep_nesting_is_cut_off() -> None:
    depth = 80
    head = "".join(f'--b{i}\nContent-Type: multipart/mixed; boundary="b{i + 1}"\n\n' for i in range(depth))
    msg = s.crlf(f'Content-Type: multipart/mixed; boundary="b0"\n\n{head}--b{depth}\n\nleaf\n')
    parsed = parse(msg)
    node, levels = parsed.body, 0
    while node.parts:
        node, levels = node.parts[0], levels + 1
    assert levels == 50
    assert (node.type, node.subtype) == ("application", "octet-stream")
    assert bodystructure(parsed.body, True).count(b"(") > 50


def test_many_parts() -> None:
    count = 3000
    body = "".join(f"--p\nContent-Type: text/plain\n\npart {i}\n" for i in range(count))
    parsed = parse(s.crlf(f"Content-Type: multipart/mixed; boundary=p\n\n{body}--p--\n"))
    assert len(parsed.body.parts) == count
    assert bodystructure(parsed.body, False).count(b'"PLAIN"') == count


def test_part_count_is_capped() -> None:
    from homemail.message import parser

    body = "".join(f"--p\n\n{i}\n" for i in range(parser.MAX_PARTS + 10))
    parsed = parse(s.crlf(f"Content-Type: multipart/mixed; boundary=p\n\n{body}--p--\n"))
    assert len(parsed.body.parts) == parser.MAX_PARTS
    assert parsed.body.parts[-1].size > 10  # the rest stays inside the last part


def test_encoded_message_rfc822_is_opaque() -> None:
    msg = s.crlf("Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeAoKeQo=\n")
    body = parse(msg).body
    assert (body.type, body.subtype, body.message) == ("application", "octet-stream", None)


# --- cross-check of the tree against the stdlib email package ------------------------------------------


def _email_shape(msg: email.message.Message) -> object:
    ctype = msg.get_content_type()
    if msg.is_multipart():
        return (ctype, [_email_shape(p) for p in msg.get_payload()])  # type: ignore[union-attr]
    return ctype


def _our_shape(part: BodyPart) -> object:
    ctype = f"{part.type}/{part.subtype}"
    if part.parts:
        return (ctype, [_our_shape(p) for p in part.parts])
    if part.message is not None:
        return (ctype, [_our_shape(part.message[1])])
    return ctype


def _email_leaves(msg: email.message.Message) -> list[bytes]:
    if msg.is_multipart():
        return [leaf for p in msg.get_payload() for leaf in _email_leaves(p)]  # type: ignore[union-attr]
    payload = msg.get_payload(decode=False)
    return [payload.encode("ascii", "surrogateescape")] if isinstance(payload, str) else []


def _our_leaves(data: bytes, part: BodyPart) -> list[bytes]:
    if part.parts:
        return [leaf for p in part.parts for leaf in _our_leaves(data, p)]
    if part.message is not None:
        return _our_leaves(data, part.message[1])
    return [data[part.body_start : part.end]]


# Not DOVECOT: the stdlib does not unfold its folded boundary parameter and finds no parts.
@pytest.mark.parametrize(
    "name",
    ["simple", "mixed_alternative", "related", "digest", "missing_close", "rfc2231", "rfc3501_sections"],
)
def test_tree_agrees_with_stdlib_email(name: str) -> None:
    data = s.ALL[name]
    theirs = email.message_from_bytes(data)
    ours = parse(data).body
    assert _our_shape(ours) == _email_shape(theirs)
    our_leaves, their_leaves = _our_leaves(data, ours), _email_leaves(theirs)
    if name == "missing_close":
        # Without a close delimiter the last part runs to the end of the message, its final line break
        # included; the stdlib drops that line break.
        assert our_leaves[-1] == their_leaves[-1] + b"\r\n"
        our_leaves, their_leaves = our_leaves[:-1], their_leaves[:-1]
    assert our_leaves == their_leaves


@pytest.mark.parametrize("name", sorted(s.ALL))
def test_json_round_trip(name: str) -> None:
    parsed = parse(s.ALL[name])
    blob = parsed.to_json()
    again = ParsedMessage.from_json(blob)
    assert again == parsed
    assert again.to_json() == blob
    assert blob.isascii()


def test_from_json_rejects_other_documents() -> None:
    with pytest.raises(ValueError):
        ParsedMessage.from_json(b'{"a": 1}')
