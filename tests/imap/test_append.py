"""APPEND (RFC 3501 6.3.11, RFC 9051 6.3.12): flags and internal date, APPENDUID (RFC 4315 3), synchronising and
non-synchronising literals (RFC 7888), literal8 (RFC 3516 4.4), TRYCREATE, APPENDLIMIT (RFC 7889) checked before
the literal is read, 8-bit content, the EXISTS that an APPEND to the selected mailbox causes, and the errors."""

from __future__ import annotations

import imaplib
import re

from imapclient import IMAPClient

from harness import ServerProcess
from imap.imaputil import PASSWORD, connect
from imap.rawclient import Raw

MSG = b"From: a@example.org\r\nSubject: appended\r\n\r\nHello.\r\n"


def lit(data: bytes, plus: bool = False) -> bytes:
    return b"{%d%s}\r\n%s" % (len(data), b"+" if plus else b"", data)


def status(c: Raw, mailbox: str) -> dict[str, int]:
    (line,) = c.ok(f"STATUS {mailbox} (MESSAGES UIDNEXT UIDVALIDITY)")
    return {k.decode(): int(v) for k, v in re.findall(rb"([A-Z]+) (\d+)", line)}


def test_appenduid_and_fetch_back(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    before = status(c, "INBOX")
    assert before["MESSAGES"] == 0
    _, tagged = c.cmd(b"APPEND INBOX " + lit(MSG))
    # RFC 4315 3: APPENDUID <uidvalidity of the destination> <uid of the new message>
    assert tagged == b"t3 OK [APPENDUID %d %d] APPEND completed\r\n" % (
        before["UIDVALIDITY"],
        before["UIDNEXT"],
    )
    _, tagged = c.cmd(b'APPEND "INBOX" ' + lit(MSG))
    assert tagged == b"t4 OK [APPENDUID %d %d] APPEND completed\r\n" % (
        before["UIDVALIDITY"],
        before["UIDNEXT"] + 1,
    )
    assert status(c, "INBOX") == {
        "MESSAGES": 2,
        "UIDNEXT": before["UIDNEXT"] + 2,
        "UIDVALIDITY": before["UIDVALIDITY"],
    }
    c.ok("SELECT INBOX")
    assert c.ok("FETCH 1 (UID RFC822.SIZE BODY.PEEK[])") == [
        b"* 1 FETCH (UID %d RFC822.SIZE %d BODY[] %s)\r\n" % (before["UIDNEXT"], len(MSG), lit(MSG))
    ]


def test_appenduid_uses_the_destination_uidvalidity(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("CREATE Work")
    work = status(c, "Work")
    _, tagged = c.cmd(b"APPEND Work " + lit(MSG))
    assert tagged == b"t4 OK [APPENDUID %d %d] APPEND completed\r\n" % (work["UIDVALIDITY"], work["UIDNEXT"])


def test_flags_and_internal_date(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok(b'APPEND INBOX (\\Seen \\flagged $Label1 custom) "31-Dec-2023 23:59:58 -0800" ' + lit(MSG))
    c.ok(b'APPEND INBOX () " 2-Feb-2024 03:04:05 +0530" ' + lit(MSG))
    c.ok(b"APPEND INBOX (\\Draft) " + lit(MSG))
    untagged = c.ok("SELECT INBOX")
    # The keywords are announced in FLAGS; system flags are matched case-insensitively and kept canonical.
    assert untagged[0] == b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1 custom)\r\n"
    lines = c.ok("FETCH 1:3 (FLAGS INTERNALDATE)")
    assert (
        lines[0]
        == b'* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent $Label1 custom) INTERNALDATE "31-Dec-2023 23:59:58 -0800")\r\n'
    )
    assert lines[1] == b'* 2 FETCH (FLAGS (\\Recent) INTERNALDATE "02-Feb-2024 03:04:05 +0530")\r\n'
    # Without a date the internal date is the time of the APPEND.
    m = re.fullmatch(rb'\* 3 FETCH \(FLAGS \(\\Draft \\Recent\) INTERNALDATE "([^"]+)"\)\r\n', lines[2])
    assert m is not None, lines[2]
    assert imaplib.Internaldate2tuple(b'INTERNALDATE "' + m.group(1) + b'"') is not None


def test_synchronising_literal_waits_for_continuation(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.send(b"a APPEND INBOX (\\Seen) {%d}\r\n" % len(MSG))
    assert c.response().startswith(b"+ ")
    c.send(MSG + b"\r\n")
    assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1\] APPEND completed\r\n", c.response())


def test_non_synchronising_literal(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    # RFC 7888: {n+} is sent with its data at once and gets no continuation request.
    c.send(b"a APPEND INBOX (\\Seen) {%d+}\r\n%s\r\nb NOOP\r\n" % (len(MSG), MSG))
    assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1\] APPEND completed\r\n", c.response())
    assert c.response() == b"b OK NOOP completed\r\n"
    c.ok("SELECT INBOX")
    assert c.ok("FETCH 1 BODY.PEEK[]") == [b"* 1 FETCH (BODY[] " + lit(MSG) + b")\r\n"]


def test_mailbox_name_as_literal(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("CREATE Projects")
    c.send(b"a APPEND {8+}\r\nProjects {%d+}\r\n%s\r\n" % (len(MSG), MSG))
    assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1\] APPEND completed\r\n", c.response())
    assert status(c, "Projects")["MESSAGES"] == 1


def test_trycreate(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    # RFC 3501 6.3.11: a destination that does not exist is not created, and TRYCREATE says it could be.
    _, tagged = c.cmd(b"APPEND Nowhere " + lit(MSG))
    assert tagged.startswith(b"t2 NO [TRYCREATE] ")
    c.send(b"a APPEND Nowhere/deeper {%d+}\r\n%s\r\n" % (len(MSG), MSG))
    assert c.response().startswith(b"a NO [TRYCREATE] ")
    assert not any(b"Nowhere" in line for line in c.ok('LIST "" "*"'))
    c.ok("CREATE Nowhere")
    c.ok(b"APPEND Nowhere " + lit(MSG))
    assert status(c, "Nowhere")["MESSAGES"] == 1


def test_appendlimit_refused_before_the_literal(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    (caps,) = c.ok("CAPABILITY")
    m = re.search(rb" APPENDLIMIT=(\d+)", caps)
    assert m is not None
    limit = int(m.group(1))
    # A synchronising literal over the limit: the tagged NO [TOOBIG] replaces the continuation request, no
    # data is sent, and the connection goes on (RFC 7889 4, RFC 9051 7.5).
    c.send(b"a APPEND INBOX {%d}\r\n" % (limit + 1))
    assert c.response().startswith(b"a NO [TOOBIG] ")
    assert c.ok("NOOP") == []
    assert status(c, "INBOX")["MESSAGES"] == 0
    # A non-synchronising one cannot be skipped: refused, then the connection closes (RFC 7888 4).
    c.send(b"b APPEND INBOX {%d+}\r\n" % (limit + 1))
    assert re.fullmatch(rb"b (NO|BAD) \[TOOBIG\] [^\r\n]*\r\n", c.response())
    assert c.response().startswith(b"* BYE ")
    c.sock.settimeout(5)
    try:
        assert c.sock.recv(100) == b""
    except (TimeoutError, ConnectionResetError) as e:
        raise AssertionError("the connection stayed open") from e
    # A message of exactly the limit's size would be accepted: the literal is asked for.
    d = connect(server, user)
    d.send(b"a APPEND INBOX {%d}\r\n" % limit)
    assert d.response().startswith(b"+ ")
    d.close()


def test_eight_bit_and_binary(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    eight = "From: a@example.org\r\nSubject: Grüße\r\n\r\nCafé crème.\r\n".encode()
    c.ok(b"APPEND INBOX " + lit(eight))
    # A NUL needs literal8 (RFC 3516 4.4); in a plain literal it is a syntax error (RFC 9051 4.3).
    nul = b"From: a@example.org\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\x01\xff\r\n"
    _, tagged = c.cmd(b"APPEND INBOX " + lit(nul))
    assert tagged.startswith(b"t3 BAD ")
    c.ok(b"APPEND INBOX ~{%d}\r\n%s" % (len(nul), nul))
    c.ok("SELECT INBOX")
    # BODY[] cannot carry a NUL (a literal is *CHAR8 and there is no literal8 form of BODY): it shows as 0x80,
    # at the same offsets; BINARY gives the exact octets, as literal8.
    assert c.ok("FETCH 1:2 (RFC822.SIZE BODY.PEEK[] BINARY.PEEK[])") == [
        b"* 1 FETCH (RFC822.SIZE %d BODY[] %s BINARY[] %s)\r\n" % (len(eight), lit(eight), lit(eight)),
        b"* 2 FETCH (RFC822.SIZE %d BODY[] %s BINARY[] ~{%d}\r\n%s)\r\n"
        % (len(nul), lit(nul.replace(b"\x00", b"\x80")), len(nul), nul),
    ]
    lines = c.ok("FETCH 1:2 (RFC822.SIZE BINARY.PEEK[1])")
    assert lines[
        0
    ] == b"* 1 FETCH (RFC822.SIZE %d BINARY[1] {15}\r\nCaf\xc3\xa9 cr\xc3\xa8me.\r\n)\r\n" % len(eight)
    assert lines[1] == b"* 2 FETCH (RFC822.SIZE %d BINARY[1] ~{5}\r\n\x00\x01\xff\r\n)\r\n" % len(nul)


def test_append_to_selected_mailbox_reports_exists(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok(b"APPEND INBOX " + lit(MSG))
    c.ok("SELECT INBOX")
    untagged, tagged = c.cmd(b"APPEND INBOX (\\Seen) " + lit(MSG))
    assert untagged == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n"]
    assert re.fullmatch(rb"t4 OK \[APPENDUID \d+ 2\] APPEND completed\r\n", tagged)
    # A keyword the mailbox has not seen yet comes with a new FLAGS list (and PERMANENTFLAGS).
    untagged, _ = c.cmd(b"APPEND INBOX (NewKeyword) " + lit(MSG))
    assert untagged[0] == b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft NewKeyword)\r\n"
    assert untagged[1].startswith(b"* OK [PERMANENTFLAGS (")
    assert untagged[2:] == [b"* 3 EXISTS\r\n", b"* 3 RECENT\r\n"]
    assert c.ok("FETCH 2:3 FLAGS") == [
        b"* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n",
        b"* 3 FETCH (FLAGS (\\Recent NewKeyword))\r\n",
    ]
    # Appending elsewhere says nothing about the selected mailbox.
    untagged, _ = c.cmd(b"APPEND Drafts " + lit(MSG))
    assert untagged == []


def test_append_to_selected_mailbox_under_imap4rev2(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    c.ok("ENABLE IMAP4rev2")
    c.ok("SELECT INBOX")
    untagged, _ = c.cmd(b"APPEND INBOX " + lit(MSG))
    # RFC 9051 has no RECENT response.
    assert untagged == [b"* 1 EXISTS\r\n"]


def test_other_session_sees_exists(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    watcher = connect(server, user)
    watcher.ok("SELECT INBOX")
    c.ok(b"APPEND INBOX " + lit(MSG))
    assert watcher.ok("NOOP") == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]


def test_empty_message_refused(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    _, tagged = c.cmd(b"APPEND INBOX {0}\r\n")
    assert tagged.startswith(b"t2 NO ")
    c.send(b"a APPEND INBOX {0+}\r\n\r\n")
    assert c.response().startswith(b"a NO ")
    assert status(c, "INBOX")["MESSAGES"] == 0


def test_invalid_arguments(server: ServerProcess, user: str) -> None:
    c = connect(server, user)
    for command in (
        b"APPEND INBOX (\\Bogus) " + lit(MSG),  # an unknown system flag
        b"APPEND INBOX (\\*) " + lit(MSG),  # \* is not a flag (RFC 9051 9)
        b"APPEND INBOX (\\Seen " + lit(MSG),  # an unclosed flag list
        b'APPEND INBOX "1-Jan-2024 10:00:00 +0000" ' + lit(MSG),  # date-day-fixed needs two characters
        b'APPEND INBOX "01-Foo-2024 10:00:00 +0000" ' + lit(MSG),
        b'APPEND INBOX "01-Jan-2024 10:00 +0000" ' + lit(MSG),
        b'APPEND INBOX "01-Jan-2024 10:00:00" ' + lit(MSG),
        b"APPEND INBOX () () " + lit(MSG),
        b"APPEND INBOX " + lit(MSG) + b" extra",
        b'APPEND INBOX "not a literal"',
        b"APPEND INBOX",
    ):
        _, tagged = c.cmd(command)
        assert b" BAD " in tagged, (command, tagged)
    assert status(c, "INBOX")["MESSAGES"] == 0


def test_append_needs_authentication(server: ServerProcess) -> None:
    c = Raw(server.port("imap"))
    c.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(MSG), MSG))
    assert c.response().startswith(b"a BAD ")


def test_imaplib_and_imapclient_append(server: ServerProcess, user: str) -> None:
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    m.login(user, PASSWORD)
    typ, data = m.append("INBOX", "(\\Answered)", '"01-Jun-2024 08:00:00 +0200"', MSG)
    assert typ == "OK" and re.fullmatch(rb"\[APPENDUID \d+ 1\] APPEND completed", data[0] or b"")
    m.logout()
    with IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as client:
        client.login(user, PASSWORD)
        client.normalise_times = False
        result = client.append("INBOX", MSG, flags=["\\Flagged"])
        assert re.fullmatch(rb"\[APPENDUID \d+ 2\] APPEND completed", result)
        client.select_folder("INBOX")
        got = client.fetch([1, 2], ["FLAGS", "INTERNALDATE"])
        assert got[1][b"FLAGS"] == (b"\\Answered", b"\\Recent")
        assert got[1][b"INTERNALDATE"].isoformat() == "2024-06-01T08:00:00+02:00"
        assert got[2][b"FLAGS"] == (b"\\Flagged", b"\\Recent")
