"""Speed of the message parser against the stdlib email package: prints microseconds per message.

Usage: .venv/bin/python bench/parse_speed.py [N]
"""

from __future__ import annotations

import base64
import email
import email.policy
import sys
import time
from collections.abc import Callable

from homemail.message import ParsedMessage, parse
from homemail.message.imap import bodystructure, envelope

HEADER = (
    "Received: from mx.example.net (mx.example.net [192.0.2.10])\r\n"
    "\tby mail.example.org with ESMTPS id 4B1C2D3E4F\r\n"
    "\tfor <alice@example.org>; Tue, 03 Jun 2025 10:15:00 +0200\r\n"
    "Received: from [198.51.100.7] by mx.example.net with ESMTPSA; Tue, 03 Jun 2025 10:14:58 +0200\r\n"
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=mail;\r\n"
    "\th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
    "\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSwganVzdCBzb21lIGJ5dGVzIHRvIHBhcnNl\r\n"
    "From: =?utf-8?q?B=C3=B6b_Example?= <bob@example.net>\r\n"
    "To: Alice <alice@example.org>, carol@example.org\r\n"
    'Cc: "Dave, the reviewer" <dave@example.com>\r\n'
    "Subject: =?utf-8?b?UmU6IFF1YXJ0ZXJseSByZXBvcnQg4oCUIGRyYWZ0IDM=?=\r\n"
    "Date: Tue, 03 Jun 2025 10:14:57 +0200\r\n"
    "Message-ID: <20250603081457.12345@example.net>\r\n"
    "In-Reply-To: <20250602170000.999@example.org>\r\n"
    "References: <20250601120000.111@example.org> <20250602170000.999@example.org>\r\n"
    "MIME-Version: 1.0\r\n"
)
LINE = "The quarterly figures are attached; please review section 3 before Friday's call.\r\n"


def plain_4k() -> bytes:
    head = HEADER + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    body = LINE * ((4096 - len(head)) // len(LINE))
    return (head + body).encode()


def multipart_100k() -> bytes:
    attachment = base64.encodebytes(bytes(range(256)) * 280).replace(b"\n", b"\r\n")
    return (
        HEADER.encode() + b'Content-Type: multipart/mixed; boundary="outer-boundary"\r\n\r\n'
        b"This is a multi-part message in MIME format.\r\n"
        b"--outer-boundary\r\n"
        b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + LINE.encode() * 20 + b"\r\n"
        b"--alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"<p>"
        + LINE.encode() * 20
        + b"</p>\r\n"
        b"--alt--\r\n"
        b"--outer-boundary\r\n"
        b'Content-Type: application/pdf; name="report.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename*0*=utf-8''Quarterly%20report;\r\n"
        b' filename*1="-draft.pdf"\r\n\r\n' + attachment + b"--outer-boundary--\r\n"
    )


def nested() -> bytes:
    inner = (
        b"From: carol@example.org\r\nTo: bob@example.net\r\nSubject: forwarded\r\n"
        b"Date: Mon, 02 Jun 2025 09:00:00 +0000\r\nMessage-ID: <fwd@example.org>\r\n"
        b'Content-Type: multipart/mixed; boundary="in"\r\n\r\n'
        b"--in\r\nContent-Type: text/plain\r\n\r\nforwarded text\r\n"
        b"--in\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
        b"--in--\r\n"
    )
    return (
        HEADER.encode() + b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n'
        b'--a\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain text\r\n"
        b'--b\r\nContent-Type: multipart/related; boundary="c"; type="text/html"\r\n\r\n'
        b"--c\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<img src=cid:logo>\r\n"
        b"--c\r\nContent-Type: image/gif\r\nContent-ID: <logo>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"R0lGODlhAQABAAAAACw=\r\n--c--\r\n"
        b"--b--\r\n"
        b"--a\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--a--\r\n"
    )


def per_message(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    cases = {"plain 4 KiB": plain_4k(), "multipart 100 KiB": multipart_100k(), "nested multipart": nested()}
    print(f"µs per message, best of 3 runs of {n}")
    print(f"{'message':<20}{'bytes':>8}{'parse':>9}{'json rt':>9}{'render':>9}{'compat32':>10}{'default':>9}")
    for name, data in cases.items():
        parsed = parse(data)
        blob = parsed.to_json()
        figures = [
            per_message(lambda data=data: parse(data), n),  # type: ignore[misc]
            per_message(lambda p=parsed: ParsedMessage.from_json(p.to_json()), n),  # type: ignore[misc]
            per_message(
                lambda p=parsed: (envelope(p.envelope), bodystructure(p.body, True)),  # type: ignore[misc]
                n,
            ),
            per_message(lambda data=data: email.message_from_bytes(data), n),  # type: ignore[misc]
            per_message(
                lambda data=data: email.message_from_bytes(data, policy=email.policy.default),  # type: ignore[misc]
                max(1, n // 4),
            ),
        ]
        print(f"{name:<20}{len(data):>8}" + "".join(f"{f:>9.1f}" for f in figures[:3]), end="")
        print(f"{figures[3]:>10.1f}{figures[4]:>9.1f}   (json {len(blob)} bytes)")


if __name__ == "__main__":
    main()
