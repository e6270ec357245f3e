"""The protocol engine over a raw socket: greeting, EHLO, command order, syntax errors, garbage, long lines."""

from __future__ import annotations

import pytest

from harness import ServerProcess
from smtpclient import Raw


@pytest.fixture
def raw(mx: ServerProcess):
    client = Raw(mx.port("smtp"))
    yield client
    client.close()


def test_greeting_and_ehlo_keywords(raw: Raw) -> None:
    assert raw.greeting[0] == 220
    assert "mx.example.test" in raw.greeting[1]
    code, text = raw.ehlo()
    assert code == 250
    keywords = text.split("\n")
    assert keywords[0].startswith("mx.example.test")
    for kw in ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "STARTTLS", "CHUNKING", "DSN"):
        assert kw in keywords, kw
    assert "SIZE 52428800" in keywords


def test_helo_is_plain_smtp(raw: Raw) -> None:
    code, text = raw.cmd("HELO client.example")
    assert code == 250 and "\n" not in text


def test_simple_commands(raw: Raw) -> None:
    raw.ehlo()
    assert raw.cmd("NOOP") == (250, "2.0.0 Ok")
    assert raw.cmd("RSET") == (250, "2.0.0 Ok")
    code, text = raw.cmd("VRFY alice")
    assert code == 252 and text.startswith("2.5.0")
    code, text = raw.cmd("HELP")
    assert code == 214 and text.startswith("2.0.0")
    code, text = raw.cmd("EXPN team")
    assert code == 502 and text.startswith("5.5.1")
    assert raw.cmd("QUIT")[0] == 221
    assert raw.is_closed()


def test_every_reply_has_an_enhanced_status_code(raw: Raw) -> None:
    raw.ehlo()
    for line in (
        "NOOP",
        "MAIL FROM:<a@b.example>",
        "RCPT TO:<alice@example.org>",
        "RSET",
        "FOO",
        "VRFY",
        "RCPT TO:<x@example.org>",
        "DATA",
        "MAIL",
        "QUIT",
    ):
        code, text = raw.cmd(line)
        assert code in (214, 221, 250, 252, 500, 501, 503, 550, 554), (line, code, text)
        assert text[:1] == str(code)[0] and text[1] == "." and text[3] == ".", (line, text)


def test_commands_out_of_order(raw: Raw) -> None:
    code, text = raw.cmd("MAIL FROM:<a@b.example>")
    assert (code, text[:5]) == (503, "5.5.1")  # before EHLO
    raw.ehlo()
    assert raw.cmd("RCPT TO:<alice@example.org>")[0] == 503
    assert raw.cmd("DATA")[0] == 503
    assert raw.cmd("BDAT 0 LAST")[0] == 503
    assert raw.cmd("MAIL FROM:<a@b.example>")[0] == 250
    code, text = raw.cmd("MAIL FROM:<a@b.example>")
    assert (code, text[:5]) == (503, "5.5.1")  # nested MAIL
    code, text = raw.cmd("DATA")
    assert (code, text[:5]) == (554, "5.5.1")  # no valid recipients
    raw.cmd("RSET")
    # EHLO resets a transaction (RFC 5321 4.1.4)
    raw.cmd("MAIL FROM:<a@b.example>")
    raw.ehlo()
    assert raw.cmd("RCPT TO:<alice@example.org>")[0] == 503


@pytest.mark.parametrize(
    "line,code,status",
    [
        ("EHLO", 501, "5.5.4"),
        ("HELO", 501, "5.5.4"),
        ("MAIL", 501, "5.5.4"),
        ("MAIL TO:<a@b.example>", 501, "5.5.4"),
        ("MAIL FROM:<a@b.example", 501, "5.5.4"),
        ("MAIL FROM:<a@b.example>x", 501, "5.5.4"),
        ("MAIL FROM:<no-domain>", 501, "5.1.7"),
        ("MAIL FROM:<a@@b.example>", 501, "5.1.7"),
        ("MAIL FROM:<a b@c.example>", 501, "5.1.7"),
        ("MAIL FROM:<a@b.example> FOO=BAR", 555, "5.5.4"),
        ("MAIL FROM:<a@b.example> SIZE=abc", 501, "5.5.4"),
        ("MAIL FROM:<a@b.example> BODY=BINARYMIME", 501, "5.5.4"),
        ("MAIL FROM:<a@b.example> RET=ALL", 501, "5.5.4"),
        ("MAIL FROM:<a@b.example> ENVID=a=b", 501, "5.5.4"),
        ("MAIL FROM:<a@b.example> SIZE=1 SIZE=2", 501, "5.5.4"),
        ("MAIL FROM:<a@b.example> =x", 501, "5.5.4"),
        ("VRFY", 501, "5.5.4"),
        ("DATA now", 501, "5.5.4"),
        ("STARTTLS now", 501, "5.5.4"),
        ("XYZZY", 500, "5.5.2"),
        ("", 500, "5.5.2"),
    ],
)
def test_bad_syntax(raw: Raw, line: str, code: int, status: str) -> None:
    raw.ehlo()
    assert raw.cmd(line)[:1] == (code,) and raw.cmd("NOOP")[0] == 250
    raw.cmd("RSET")
    got = raw.cmd(line)
    assert got[0] == code and got[1].startswith(status), got


@pytest.mark.parametrize(
    "line,code,status",
    [
        ("RCPT TO:<alice@example.org> FOO=1", 555, "5.5.4"),
        ("RCPT TO:<alice@example.org> NOTIFY=SOMETIMES", 501, "5.5.4"),
        ("RCPT TO:<alice@example.org> NOTIFY=NEVER,DELAY", 501, "5.5.4"),
        ("RCPT TO:<alice@example.org> ORCPT=nosemicolon", 501, "5.5.4"),
        ("RCPT TO:<>", 501, "5.1.3"),
        ("RCPT TO:alice", 501, "5.1.3"),
        ("RCPT FROM:<alice@example.org>", 501, "5.5.4"),
    ],
)
def test_bad_rcpt_syntax(raw: Raw, line: str, code: int, status: str) -> None:
    raw.ehlo()
    assert raw.cmd("MAIL FROM:<a@b.example>")[0] == 250
    got = raw.cmd(line)
    assert got[0] == code and got[1].startswith(status), got


def test_dsn_parameters_accepted(raw: Raw) -> None:
    raw.ehlo()
    assert raw.cmd("MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ314159+2Bx SIZE=100 BODY=8BITMIME")[0] == 250
    assert (
        raw.cmd("RCPT TO:<alice@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+40x@example.org")[0]
        == 250
    )
    assert raw.cmd("RCPT TO:<bob@example.org> NOTIFY=NEVER")[0] == 250


def test_garbage_bytes(raw: Raw) -> None:
    raw.ehlo()
    code, text = raw.cmd(b"\xff\xfe\x00\x01garbage")
    assert code == 500 and text.startswith("5.5.2")
    code, text = raw.cmd(b"NO\x00OP")
    assert code == 500
    code, text = raw.cmd(b"NOOP\rRSET")  # a bare CR inside a command
    assert code == 500
    assert raw.cmd("NOOP")[0] == 250  # still in step


def test_commands_may_end_in_bare_lf(raw: Raw) -> None:
    raw.send(b"EHLO lf.example\n")
    assert raw.reply()[0] == 250
    raw.send(b"NOOP\n")
    assert raw.reply() == (250, "2.0.0 Ok")


def test_long_command_line(raw: Raw) -> None:
    raw.ehlo()
    code, text = raw.cmd("NOOP " + "x" * 5000)  # the limit is 4096 (RFC 5321 4.5.3.1.4: at least 512)
    assert code == 500 and text.startswith("5.5.2") and "too long" in text
    assert raw.cmd("NOOP")[0] == 250
    # Long in pieces: the server drops it as it arrives and stays in step.
    raw.send(b"MAIL FROM:<" + b"a" * 3000)
    raw.send(b"b" * 3000)
    raw.send(b"@example.org>\r\n")
    assert raw.reply()[0] == 500
    code, text = raw.cmd("MAIL FROM:<" + "a" * 300 + "@b.example>")
    assert code == 501  # within the line limit, but not a valid path (RFC 5321 4.5.3.1.3)
    assert raw.cmd("NOOP")[0] == 250


def test_command_line_of_512_is_fine(raw: Raw) -> None:
    raw.ehlo()
    line = "NOOP " + "x" * (512 - 7)
    assert len(line) + 2 == 512
    assert raw.cmd(line)[0] == 250


def test_http_request_is_cut_off(mx: ServerProcess) -> None:
    client = Raw(mx.port("smtp"))
    try:
        client.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        code, text = client.reply()
        assert code == 421 and text.startswith("4.7.0")
        assert client.is_closed()
    finally:
        client.close()


def test_pipelined_commands_get_replies_in_order(raw: Raw) -> None:
    raw.send(
        b"EHLO p.example\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\n"
        b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<bob@example.org>\r\nRSET\r\nQUIT\r\n"
    )
    codes = [raw.reply()[0] for _ in range(8)]
    assert codes == [250, 250, 250, 250, 550, 250, 250, 221]
    assert raw.is_closed()
