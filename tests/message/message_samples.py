"""Sample messages shared by the message tests (written with LF, stored with CRLF like the store does)."""

from __future__ import annotations


def crlf(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


SIMPLE = crlf(
    "From: Alice <alice@example.org>\n"
    "To: bob@example.net\n"
    "Subject: Hello\n"
    "Date: Mon, 2 Jun 2025 09:00:00 +0000\n"
    "Message-ID: <1@example.org>\n"
    "\n"
    "Hi Bob,\n"
    "See you.\n"
)

NO_CONTENT_TYPE_EMPTY_BODY = crlf("From: a@example.org\n\n")

HEADER_ONLY = crlf("From: a@example.org\nSubject: no body") + b"\r\n"

MIXED_ALTERNATIVE = crlf(
    "From: a@example.org\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="outer"\n'
    "\n"
    "This is the preamble.\n"
    "--outer\n"
    "Content-Type: multipart/alternative; boundary=inner\n"
    "\n"
    "--inner\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "plain\n"
    "\n"
    "--inner\n"
    "Content-Type: text/html; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "<b>html</b>\n"
    "--inner--\n"
    "\n"
    "--outer\n"
    'Content-Type: application/pdf; name="a.pdf"\n'
    'Content-Disposition: attachment; filename="a.pdf"\n'
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "JVBERi0xLjQK\n"
    "--outer--\n"
    "This is the epilogue.\n"
)

RELATED = crlf(
    "From: a@example.org\n"
    'Content-Type: multipart/related; boundary=rel; type="text/html"\n'
    "\n"
    "--rel\n"
    "Content-Type: text/html; charset=us-ascii\n"
    "\n"
    '<img src="cid:logo@x">\n'
    "\n"
    "--rel\n"
    "Content-Type: image/png\n"
    "Content-ID: <logo@x>\n"
    "Content-Transfer-Encoding: base64\n"
    "Content-Disposition: inline\n"
    "\n"
    "iVBORw0KGgo=\n"
    "--rel--\n"
)

DIGEST = crlf(
    "From: list@example.org\n"
    "Content-Type: multipart/digest; boundary=d\n"
    "\n"
    "--d\n"
    "\n"
    "From: x@y\n"
    "Subject: one\n"
    "\n"
    "first\n"
    "--d\n"
    "Content-Type: text/plain\n"
    "\n"
    "not a message\n"
    "--d--\n"
)

NO_BOUNDARY_IN_BODY = crlf("Content-Type: multipart/mixed; boundary=zzz\n\nhello\n")
NO_BOUNDARY_PARAM = crlf("Content-Type: multipart/mixed\n\nhello\n")

MISSING_CLOSE = crlf(
    "Content-Type: multipart/mixed; boundary=b\n"
    "\n"
    "--b\n"
    "Content-Type: text/plain\n"
    "\n"
    "one\n"
    "--b\n"
    "Content-Type: text/plain\n"
    "\n"
    "two\n"
)

BOUNDARY_WHITESPACE = crlf(
    "Content-Type: multipart/mixed; boundary=b\n"
    "\n"
    "--b  \n"
    "Content-Type: text/plain\n"
    "\n"
    "--bx is not a delimiter\n"
    "--b--\t \n"
)

RFC2231 = crlf(
    "From: a@example.org\n"
    'Content-Type: multipart/mixed; boundary="=_x y"\n'
    "\n"
    "--=_x y\n"
    "Content-Type: application/octet-stream;\n"
    " name*=utf-8''%E2%82%AC%20rates.txt\n"
    "Content-Disposition: attachment;\n"
    " filename*0*=utf-8''%E2%82%AC%20;\n"
    ' filename*1="rates \\"2025\\".txt"\n'
    "\n"
    "data\n"
    "--=_x y--\n"
)

FOLDED = crlf(
    "Subject: a very\n"
    "\tlong subject\n"
    'From: "Doe,\n'
    ' John" <j@example.org>\n'
    "Content-Type: text/plain;\n"
    "  charset=iso-8859-1;\n"
    "  format=flowed\n"
    "\n"
    "x\n"
)

UTF8_HEADERS = crlf("Subject: Grüße\nFrom: Jörg <jörg@exämple.org>\n\nhallo\n")
LATIN1_SUBJECT = b"Subject: caf\xe9\r\nFrom: a@example.org\r\n\r\nx\r\n"

# The test message of Dovecot's imap-bodystructure unit test.
DOVECOT = crlf(
    "From: user@domain.org\n"
    "Date: Sat, 24 Mar 2007 23:00:00 +0200\n"
    "Mime-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="foo\n'
    ' bar"\n'
    "\n"
    "Root MIME prologue\n"
    "\n"
    "--foo bar\n"
    'Content-Type: text/x-myown; charset=us-ascii; foo="quoted\\"string"\n'
    "Content-ID: <foo@example.com>\n"
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
    "Content-Disposition: inline; foo=bar\n"
    "Content-Description: hellodescription\n"
    "Content-Language: en, fi, se\n"
    "Content-Location: http://example.com/test.txt\n"
    "\n"
    "hello\n"
    "\n"
    "--foo bar\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "From: sub@domain.org\n"
    "To: sub-to1@domain.org, sub-to2@domain.org\n"
    "Date: Sun, 12 Aug 2012 12:34:56 +0300\n"
    "Subject: submsg\n"
    'Content-Type: multipart/alternative; boundary="sub1"\n'
    "\n"
    "Sub MIME prologue\n"
    "--sub1\n"
    "Content-Type: text/html\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "<p>Hello world</p>\n"
    "\n"
    "--sub1\n"
    "Content-Type: text/plain\n"
    "Content-Transfer-Encoding: ?invalid\n"
    "\n"
    "Hello another world\n"
    "\n"
    "--sub1--\n"
    "Sub MIME epilogue\n"
    "\n"
    "--foo bar--\n"
    "Root MIME epilogue\n"
)
DOVECOT_LF = DOVECOT.replace(b"\r\n", b"\n")

# The part layout of the example in RFC 3501 6.4.5.
RFC3501_SECTIONS = crlf(
    "From: top@example.org\n"
    "Subject: top\n"
    'Content-Type: MULTIPART/MIXED; boundary="x1"\n'
    "\n"
    "--x1\n"
    "Content-Type: TEXT/PLAIN\n"
    "\n"
    "part 1\n"
    "--x1\n"
    "Content-Type: APPLICATION/OCTET-STREAM\n"
    "\n"
    "part 2\n"
    "--x1\n"
    "Content-Type: MESSAGE/RFC822\n"
    "\n"
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
    "\n"
    "--x1\n"
    'Content-Type: MULTIPART/MIXED; boundary="x4"\n'
    "\n"
    "--x4\n"
    "Content-Type: IMAGE/GIF\n"
    "\n"
    "part 4.1\n"
    "--x4\n"
    "Content-Type: MESSAGE/RFC822\n"
    "\n"
    "From: four@example.org\n"
    "Subject: four-two\n"
    'Content-Type: MULTIPART/MIXED; boundary="x42"\n'
    "\n"
    "--x42\n"
    "Content-Type: TEXT/PLAIN\n"
    "\n"
    "part 4.2.1\n"
    "--x42\n"
    'Content-Type: MULTIPART/ALTERNATIVE; boundary="x422"\n'
    "\n"
    "--x422\n"
    "Content-Type: TEXT/PLAIN\n"
    "\n"
    "part 4.2.2.1\n"
    "--x422\n"
    "Content-Type: TEXT/RICHTEXT\n"
    "\n"
    "part 4.2.2.2\n"
    "--x422--\n"
    "\n"
    "--x42--\n"
    "\n"
    "--x4--\n"
    "\n"
    "--x1--\n"
)

ENCODINGS = crlf(
    "From: a@example.org\n"
    "Subject: =?utf-8?q?caf=C3=A9?= =?iso-8859-1?b?R3L832U=?=\n"
    "Content-Type: multipart/mixed; boundary=e\n"
    "\n"
    "--e\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "caf=C3=A9 =\n"
    "au lait\n"
    "--e\n"
    "Content-Type: text/html; charset=iso-8859-1\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "PGI+R3L832U8L2I+\n"
    "--e\n"
    "Content-Type: application/x-stuff\n"
    "Content-Transfer-Encoding: x-uuencode\n"
    "\n"
    "begin 644 x\n"
    "--e\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "Subject: inner\n"
    "\n"
    "inner text\n"
    "--e--\n"
)

ALL = {
    "simple": SIMPLE,
    "no_content_type_empty_body": NO_CONTENT_TYPE_EMPTY_BODY,
    "header_only": HEADER_ONLY,
    "mixed_alternative": MIXED_ALTERNATIVE,
    "related": RELATED,
    "digest": DIGEST,
    "no_boundary_in_body": NO_BOUNDARY_IN_BODY,
    "no_boundary_param": NO_BOUNDARY_PARAM,
    "missing_close": MISSING_CLOSE,
    "boundary_whitespace": BOUNDARY_WHITESPACE,
    "rfc2231": RFC2231,
    "folded": FOLDED,
    "utf8_headers": UTF8_HEADERS,
    "latin1_subject": LATIN1_SUBJECT,
    "dovecot": DOVECOT,
    "dovecot_lf": DOVECOT_LF,
    "rfc3501_sections": RFC3501_SECTIONS,
    "encodings": ENCODINGS,
}
