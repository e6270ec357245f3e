"""Message data: DATA and BDAT, dot-stuffing, line endings, smuggling, 8-bit and UTF-8, trace fields."""

from __future__ import annotations

import re
import smtplib

import pytest
from smtp_helpers import body_of, find, headers_of, inbox, marker, swaks

from harness import ServerProcess, require_peer
from smtpclient import Raw


def transaction(
    raw: Raw,
    rcpts: tuple[str, ...] = ("alice@example.org",),
    sender: str = "s@remote.example",
    mail_params: str = "",
) -> None:
    raw.ehlo()
    assert raw.cmd(f"MAIL FROM:<{sender}>{mail_params}")[0] == 250
    for r in rcpts:
        assert raw.cmd(f"RCPT TO:<{r}>")[0] == 250


def data(raw: Raw, payload: bytes) -> tuple[int, str]:
    code, _ = raw.cmd("DATA")
    assert code == 354
    raw.send(payload)
    return raw.reply()


def only(mx: ServerProcess, m: bytes, address: str = "alice@example.org") -> bytes:
    found = find(inbox(mx, address), m)
    assert len(found) == 1, found
    return found[0]


def test_dot_stuffing(mx: ServerProcess) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    transaction(raw)
    code, text = data(
        raw, b"Subject: " + m + b"\r\n\r\n..leading dot\r\n.also removed\r\n...\r\nend\r\n.\r\n"
    )
    assert (code, text[:5]) == (250, "2.0.0")
    assert body_of(only(mx, m)) == b".leading dot\nalso removed\n..\nend\n"


def test_empty_message_and_dot_first(mx: ServerProcess) -> None:
    raw = Raw(mx.port("smtp"))
    transaction(raw, rcpts=("carol@example.net",), sender="empty@remote.example")
    assert data(raw, b".\r\n")[0] == 250
    msgs = [x for x in inbox(mx, "carol@example.net") if b"Return-Path: <empty@remote.example>" in x]
    assert len(msgs) == 1
    # Return-Path, 4 Received lines and the Authentication-Results field (continuation lines), no content
    trace, _, results = msgs[0].partition(b"Authentication-Results:")
    assert trace.count(b"\n") == 5 and all(line[:1] == b"\t" for line in results.split(b"\n")[1:-1])


def test_bare_lf_in_data_becomes_crlf(mx: ServerProcess) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    transaction(raw)
    assert (
        data(raw, b"Subject: " + m + b"\nX-Mixed: 1\r\n\nline one\nline two\r\nline\rcr\r\n.\r\n")[0] == 250
    )
    msg = only(
        mx, m
    )  # export turns CRLF into LF; a bare LF stored would show as such too, so check the shape
    assert body_of(msg) == b"line one\nline two\nline\rcr\n"
    assert headers_of(msg).endswith(b"\nX-Mixed: 1")


def test_bare_lf_stored_as_crlf_in_the_file(mx: ServerProcess) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    transaction(raw)
    assert data(raw, b"Subject: " + m + b"\n\nbody\nmore\r\n.\r\n")[0] == 250
    files = [p for p in (mx.data_dir / "blobs").rglob("*") if p.is_file() and m in p.read_bytes()]
    assert len(files) == 1
    stored = files[0].read_bytes()
    assert stored.count(b"\n") == stored.count(b"\r\n")
    assert stored.endswith(b"\r\n\r\nbody\r\nmore\r\n")


@pytest.mark.parametrize(
    "variant",
    [
        b"\n.\n",
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n.\r\r\n",
        b"\n.\r",
    ],
)
def test_smuggling_variants_are_not_end_of_data(mx: ServerProcess, variant: bytes) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    transaction(raw)
    assert raw.cmd("DATA")[0] == 354
    smuggled = (
        b"Subject: " + m + b"\r\n\r\nfirst" + variant + b"MAIL FROM:<ceo@example.org>\r\n"
        b"RCPT TO:<alice@example.org>\r\nDATA\r\nSubject: smuggled " + m + b"\r\n\r\nevil\r\n"
    )
    raw.send(smuggled)
    raw.send(b".\r\n")
    code, text = raw.reply()  # the one reply comes only after the real end
    assert code == 550 and text.startswith("5.5.2"), (code, text)
    assert raw.cmd("NOOP") == (250, "2.0.0 Ok")  # in step: nothing was taken as a command
    assert find(inbox(mx, "alice@example.org"), m) == []


def test_dot_at_start_with_bare_lf_is_refused(mx: ServerProcess) -> None:
    raw = Raw(mx.port("smtp"))
    transaction(raw)
    code, _ = data(raw, b".\nMAIL FROM:<x@y.example>\r\n.\r\n")
    assert code == 550


def test_8bit_body(mx: ServerProcess) -> None:
    m = marker()
    body = "Grüße, ça va? ✓ 日本語\r\n".encode() + bytes(range(0x80, 0x100)).replace(b"\r", b"") + b"\r\n"
    with smtplib.SMTP("127.0.0.1", mx.port("smtp")) as c:
        c.ehlo()
        assert (
            c.sendmail(
                "s@remote.example",
                ["alice@example.org"],
                b"Subject: " + m + b"\r\n\r\n" + body,
                mail_options=["BODY=8BITMIME"],
            )
            == {}
        )
    assert body_of(only(mx, m)) == body.replace(b"\r\n", b"\n")


def test_smtputf8_addresses(mx: ServerProcess) -> None:
    m = marker()
    with smtplib.SMTP("127.0.0.1", mx.port("smtp")) as c:
        c.ehlo()
        assert c.has_extn("smtputf8")
        msg = b"Subject: " + m + "\r\nFrom: Jürgen <jürgen@bücher.example>\r\n\r\nHallo\r\n".encode()
        assert (
            c.sendmail(
                "jürgen@bücher.example",
                ["catch-ü@catchall.test"],
                msg,
                mail_options=["SMTPUTF8", "BODY=8BITMIME"],
            )
            == {}
        )
    stored = only(mx, m, "carol@example.net")
    assert "Return-Path: <jürgen@bücher.example>".encode() in stored
    assert b"with UTF8SMTP" in stored
    assert "for <catch-ü@catchall.test>".encode() in stored


def test_utf8_address_needs_smtputf8(mx: ServerProcess) -> None:
    raw = Raw(mx.port("smtp"))
    raw.ehlo()
    code, text = raw.cmd("MAIL FROM:<jürgen@bücher.example>")
    assert code == 553 and text.startswith("5.6.7")
    assert raw.cmd("MAIL FROM:<s@remote.example>")[0] == 250
    code, text = raw.cmd("RCPT TO:<ü@catchall.test>")
    assert code == 553 and text.startswith("5.6.7")


def test_pipelining_in_one_write(mx: ServerProcess) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    raw.ehlo()
    raw.send(
        b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\n"
        b"RCPT TO:<bob@example.org>\r\nDATA\r\n"
    )
    assert [raw.reply()[0] for _ in range(5)] == [250, 250, 550, 250, 354]
    # a second transaction pipelined right after the first's end of data
    raw.send(
        b"Subject: "
        + m
        + b"\r\n\r\none\r\n.\r\nMAIL FROM:<s@remote.example>\r\nRCPT TO:<carol@example.net>\r\n"
        b"DATA\r\n"
    )
    assert [raw.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    raw.send(b"Subject: " + m + b"\r\n\r\ntwo\r\n.\r\nQUIT\r\n")
    assert [raw.reply()[0] for _ in range(2)] == [250, 221]
    assert len(find(inbox(mx, "alice@example.org"), m)) == 1
    assert len(find(inbox(mx, "bob@example.org"), m)) == 1
    assert len(find(inbox(mx, "carol@example.net"), m)) == 1


def test_bdat_chunks(mx: ServerProcess) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    transaction(raw)
    parts = [b"Subject: " + m + b"\r\n\r\n", b"line one\r\n.not stuffed\r\n", b"\r\n.\r\n", b"tail\r\n"]
    for p in parts:
        raw.send(b"BDAT %d\r\n" % len(p) + p)
        code, text = raw.reply()
        assert code == 250 and text.startswith("2.0.0"), text
    raw.send(b"BDAT 0 LAST\r\n")
    code, text = raw.reply()
    assert code == 250 and "delivered" in text
    assert body_of(only(mx, m)) == b"line one\n.not stuffed\n\n.\ntail\n"


def test_bdat_pipelined_in_one_write(mx: ServerProcess) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    raw.ehlo()
    msg = b"Subject: " + m + b"\r\n\r\nBDAT 5\r\nRSET\r\n"
    raw.send(
        b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
        + b"BDAT %d\r\n" % 10
        + msg[:10]
        + b"BDAT %d LAST\r\n" % (len(msg) - 10)
        + msg[10:]
        + b"NOOP\r\n"
    )
    assert [raw.reply()[0] for _ in range(5)] == [250, 250, 250, 250, 250]
    assert body_of(only(mx, m)) == b"BDAT 5\nRSET\n"


def test_bdat_then_data_is_out_of_order(mx: ServerProcess) -> None:
    raw = Raw(mx.port("smtp"))
    transaction(raw)
    raw.send(b"BDAT 3\r\nabc")
    assert raw.reply()[0] == 250
    assert raw.cmd("DATA")[0] == 503
    assert raw.cmd("RSET")[0] == 250


def test_bdat_without_transaction_consumes_its_chunk(mx: ServerProcess) -> None:
    raw = Raw(mx.port("smtp"))
    raw.ehlo()
    raw.send(b"BDAT 6 LAST\r\nQUIT\r\n")
    code, _text = raw.reply()
    assert code == 503
    assert raw.cmd("NOOP")[0] == 250  # the chunk "QUIT\r\n" was data, not a command


def test_bad_bdat_syntax_closes(mx: ServerProcess) -> None:
    raw = Raw(mx.port("smtp"))
    transaction(raw)
    code, text = raw.cmd("BDAT lots")
    assert code == 501 and text.startswith("5.5.4")
    assert raw.is_closed()


def test_received_and_return_path(mx: ServerProcess) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    transaction(raw, sender="Sender@Remote.Example")
    assert data(raw, b"Subject: " + m + b"\r\n\r\nhi\r\n.\r\n")[0] == 250
    head = headers_of(only(mx, m)).decode()
    lines = head.split("\n")
    assert lines[0] == "Return-Path: <Sender@remote.example>"
    received = re.match(r"Received: (.*?)\n(?=\S)", "\n".join(lines[1:]) + "\n", re.S)
    assert received is not None
    text = received.group(1)
    assert re.search(
        r"from client\.example \(\[127\.0\.0\.1\]\)\s+by mx\.example\.test \(homemail\) with ESMTP\s", text
    )
    assert re.search(
        r"\bid [A-Z2-7]+\d+\s+for <alice@example\.org>; \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$",
        text,
    ), text
    assert lines[-1] == "Subject: " + m.decode()


def test_received_has_no_for_with_several_recipients(mx: ServerProcess) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    transaction(raw, rcpts=("alice@example.org", "bob@example.org"))
    assert data(raw, b"Subject: " + m + b"\r\n\r\nhi\r\n.\r\n")[0] == 250
    assert b"for <" not in headers_of(only(mx, m))


def test_helo_session_is_smtp(mx: ServerProcess) -> None:
    m = marker()
    raw = Raw(mx.port("smtp"))
    raw.cmd("HELO old.example")
    raw.cmd("MAIL FROM:<s@remote.example>")
    raw.cmd("RCPT TO:<alice@example.org>")
    assert data(raw, b"Subject: " + m + b"\r\n\r\nhi\r\n.\r\n")[0] == 250
    assert re.search(rb"from old\.example .*with SMTP\n", only(mx, m), re.S)


def test_swaks_pipelining_and_chunking(mx: ServerProcess) -> None:
    require_peer("swaks")
    m = marker().decode()
    for extra in (["--pipeline"], ["--pipeline", "--body", "x" * 3000 + "\n.\nend"]):
        r = swaks(mx, "bob@example.org", "s@remote.example", "--header", f"Subject: {m}", *extra)
        assert r.returncode == 0, r.stdout
    assert len(find(inbox(mx, "bob@example.org"), m.encode())) == 2
