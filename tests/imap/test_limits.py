"""Limits and error handling over real sockets: BAD for syntax errors and unknown commands (tagged when a tag can
be read, RFC 9051 7.1.3), literals over the limit refused before they are read (RFC 9051 7.5; RFC 7888 4 for
LITERAL+; RFC 7889 TOOBIG for APPEND), the line length limit, the command rate limit, too many bad commands, the
autologout timer (RFC 9051 5.4) and the per-address connection limit.

Each test speaks from its own loopback address (127.0.x.y), so the per-address connection limit of one test does
not meet another's connections.
"""

from __future__ import annotations

import itertools
import re
import time
import zlib
from collections.abc import Iterator

import pytest

from harness import ServerProcess
from imap.imaputil import DOMAIN, add_accounts, message, start_server
from imap.rawclient import Raw, RawFrom, new_source, well_formed

MAX_LITERAL = 4000
MAX_LINE = 1000
CONNECTIONS_PER_IP = 3
RATE = 8
IDLE_TIMEOUT = 1.0
_users = itertools.count(1)


def closed_after(c: Raw, expect: list[bytes], within: float = 5.0) -> None:
    """The next responses are ``expect`` (prefixes), then the server closes the connection."""
    c.sock.settimeout(within)
    got = []
    try:
        while True:
            got.append(c.response())
    except (EOFError, ConnectionError):
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {got}") from None
    assert len(got) == len(expect) and all(g.startswith(e) for g, e in zip(got, expect, strict=True)), got
    for g in got:
        assert well_formed(g), g


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        tmp_path_factory.mktemp("limits"),
        imap={
            "max_literal": MAX_LITERAL,
            "max_line_length": MAX_LINE,
            "max_connections_per_ip": CONNECTIONS_PER_IP,
        },
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A short autologout timer and a low command rate."""
    srv = start_server(
        tmp_path_factory.mktemp("slow"),
        imap={"idle_timeout": IDLE_TIMEOUT, "max_commands_per_second": RATE},
    )
    yield srv
    srv.stop()


@pytest.fixture
def user(server: ServerProcess) -> str:
    address = f"limits{next(_users)}@{DOMAIN}"
    add_accounts(server, [address])
    return address


@pytest.fixture
def client(server: ServerProcess, user: str) -> Raw:
    c = RawFrom(server.port("imap"))
    c.login(user)
    return c


# --- BAD ---------------------------------------------------------------------------------------------------------


MALFORMED = [
    "NOOP extra",
    "SELECT",
    "SELECT INBOX extra",
    'SELECT "INBOX',
    'SELECT "IN\\BOX"',
    "SELECT (INBOX)",
    "EXAMINE INBOX (CONDSTORE",
    "CREATE",
    "STATUS INBOX",
    "STATUS INBOX (MESSAGES",
    "STATUS INBOX (NOSUCHITEM)",
    'LIST ""',
    'LIST "" "*" extra',
    'LIST (SUBSCRIBED "" *',
    "ENABLE",
    "ID (",
    'ID ("a")',
    "APPEND",
    "APPEND INBOX",
    "APPEND INBOX (\\Seen",
    'APPEND INBOX "01-Jan-2024 bad" {1+}\r\nx',
    "FETCH 1 FLAGS",  # no mailbox selected
    "UID",
    "UID FETCH",
    "NOOP  ",
    " NOOP",
    "CAPABILITY\t",
    "LOGOUT now",
    "SUBSCRIBE",
    "RENAME INBOX",
    "DELETE",
    "NAMESPACE x",
    "COMPRESS",
    "COMPRESS LZMA",
    'LSUB ""',
]

MALFORMED_SELECTED = [
    "FETCH",
    "FETCH 1",
    "FETCH 1 (FLAGS",
    "FETCH 0 FLAGS",
    "FETCH 1:0 FLAGS",
    "FETCH a FLAGS",
    "FETCH 1 BODY[",
    "FETCH 1 BODY[1.]",
    "FETCH 1 BODY[HEADER.FIELDS]",
    "FETCH 1 BODY[]<1>",
    "FETCH 1 NOSUCHITEM",
    "FETCH 99 FLAGS",
    "FETCH 4294967296 FLAGS",
    "STORE 1 FLAGS",
    "STORE 1 +FLAGS (\\Seen",
    "STORE 1 XFLAGS (\\Seen)",
    "STORE 1 +FLAGS (\\*)",
    "SEARCH",
    "SEARCH (",
    "SEARCH NOSUCHKEY",
    "SEARCH OR SEEN",
    "SEARCH BEFORE 32-Jan-2024",
    "SEARCH SINCE 1-Foo-2024",
    "SEARCH LARGER x",
    "SEARCH HEADER Subject",
    "SEARCH RETURN (BOGUS) ALL",
    "SORT (ARRIVAL) UTF-8",
    "SORT (NOSUCHKEY) UTF-8 ALL",
    "SORT ARRIVAL UTF-8 ALL",
    "THREAD BOGUS UTF-8 ALL",
    "COPY 1",
    "MOVE",
    "EXPUNGE 1",
    "UID EXPUNGE",
    "CLOSE now",
    "UNSELECT now",
    "CHECK now",
    "UID STORE 1 +FLAGS",
    "IDLE now",
]


def test_syntax_errors_get_bad_with_their_tag(client: Raw) -> None:
    for n, line in enumerate(MALFORMED):
        tag = b"bad%d" % n
        client.send(tag + b" " + line.encode() + b"\r\n")
        untagged, tagged = client.until(tag)
        assert untagged == [] and tagged.startswith(tag + b" BAD "), (line, untagged, tagged)
        assert client.ok("NOOP") == []  # and the session goes on
    data = message()
    client.ok(b"APPEND INBOX {%d+}\r\n" % len(data) + data)
    client.ok("SELECT INBOX")
    for n, line in enumerate(MALFORMED_SELECTED):
        tag = b"sel%d" % n
        client.send(tag + b" " + line.encode() + b"\r\n")
        untagged, tagged = client.until(tag)
        assert untagged == [] and tagged.startswith(tag + b" BAD "), (line, untagged, tagged)
        assert client.ok("NOOP") == []


def test_untagged_bad_only_without_a_tag(client: Raw) -> None:
    for line in [
        b"",
        b" ",
        b"(",
        b") NOOP",
        b"* NOOP",
        b"+ NOOP",
        b'"a" NOOP',
        b"{x} NOOP",
        b"%",
        b"\x80 NOOP",
    ]:
        client.send(line + b"\r\n")
        resp = client.response()
        assert resp.startswith(b"* BAD "), (line, resp)
        assert well_formed(resp)
        assert client.ok("NOOP") == []
    # A tag alone, or a tag followed by anything that is not a command: a tagged BAD.
    for line in [b"x1", b"x2 ", b"x3  NOOP", b"x4 (NOOP)", b"x5 \x80", b"x6 NOOP\x00"]:
        client.send(line + b"\r\n")
        resp = client.response()
        assert resp.startswith(line[:2] + b" BAD "), (line, resp)


def test_unknown_commands(client: Raw) -> None:
    for n, line in enumerate(
        ["FOO", "XYZZY a b c", "UID FOO 1", "UID NOOP", "UID SELECT INBOX", "SELECTX INBOX"]
    ):
        tag = b"u%d" % n
        client.send(tag + b" " + line.encode() + b"\r\n")
        name = line.split()[0] if not line.startswith("UID") else " ".join(line.split()[:2])
        assert client.response() == tag + b" BAD unknown command " + name.encode() + b"\r\n"
    # A command in a state it is not allowed in is a BAD too (RFC 9051 6).
    assert client.cmd("CLOSE") == ([], b"t2 BAD CLOSE is not allowed in the authenticated state\r\n")


def test_response_text_is_seven_bit_and_one_line(client: Raw) -> None:
    # RFC 9051 9: resp-text is TEXT-CHARs, 7-bit before ENABLE IMAP4rev2; what the client sent and the server
    # quotes back in an error must neither carry 8-bit octets nor end the response early.
    seven_bit = re.compile(rb"[\x20-\x7e]*\r\n")
    for line in ["x1 SELECT INBOX \xe9t\xe9", "x2 NOOP \x80\xff", "\xe9 NOOP", "x3 CREATE (\x01)"]:
        client.send(line.encode("latin-1") + b"\r\n")
        resp = client.response()
        assert seven_bit.fullmatch(resp) and b" BAD " in resp, resp
    client.ok("SELECT INBOX")
    # A charset name from a literal, with a CRLF and UTF-8 in it: one NO, its text escaped.
    untagged, tagged = client.cmd(b"SEARCH CHARSET {7}\r\nA\r\nB \xc3\xa9 ALL")
    assert untagged == [], untagged
    assert tagged.startswith(b"t3 NO [BADCHARSET (UTF-8 US-ASCII)] ") and seven_bit.fullmatch(tagged), tagged
    assert tagged.endswith(b" charset A\\r\\nB \\xc9 is not supported\r\n")  # upper-cased, then escaped
    assert client.ok("NOOP") == []


# --- literals ----------------------------------------------------------------------------------------------------


def test_synchronising_literal_over_the_limit(server: ServerProcess, client: Raw) -> None:
    # RFC 9051 7.5: the server answers the command instead of sending the continuation request; the client then
    # sends no octet of the literal, and the connection stays in step.
    client.send(b"a1 APPEND INBOX {%d}\r\n" % (MAX_LITERAL + 1))
    # RFC 7889 4: APPEND over APPENDLIMIT is NO [TOOBIG].
    assert client.response() == b"a1 NO [TOOBIG] message too large\r\n"
    client.send(b"a2 SELECT {%d}\r\n" % (MAX_LITERAL + 1))
    assert client.response() == b"a2 NO [TOOBIG] literal too large\r\n"
    client.send(b"a3 SELECT {99999999999999999999}\r\n")
    assert client.response() == b"a3 NO [TOOBIG] literal too large\r\n"
    # Several literals of one command count together.
    half = MAX_LITERAL // 2 + 100
    client.send(b"a4 STATUS {%d}\r\n" % half)
    assert client.response().startswith(b"+ ")
    client.send(b"x" * half + b" {%d}\r\n" % half)
    assert client.response() == b"a4 NO [TOOBIG] literal too large\r\n"
    assert client.ok("NOOP") == []
    # A literal at the limit is accepted.
    data = message(body="y" * (MAX_LITERAL - len(message(body=""))))
    assert len(data) == MAX_LITERAL
    untagged, tagged = client.cmd(b"APPEND INBOX {%d}\r\n" % len(data) + data)
    assert tagged.startswith(b"t3 OK [APPENDUID "), tagged
    # The limit is advertised (RFC 7889 3).
    untagged = client.ok("CAPABILITY")
    assert b" APPENDLIMIT=%d " % MAX_LITERAL in untagged[0]


def test_non_synchronising_literal_over_the_limit_closes(server: ServerProcess, user: str) -> None:
    c = RawFrom(server.port("imap"))
    c.login(user)
    # The literal's octets are already on their way; they hold what looks like a command, which must not run.
    inner = b"t9 CREATE Injected\r\n"
    c.send(b"a1 APPEND INBOX {%d+}\r\n" % (MAX_LITERAL + 1) + inner + b"z" * (MAX_LITERAL + 1 - len(inner)))
    # RFC 7888 4: the server may not skip the literal as a command; it answers and closes with BYE.
    closed_after(c, [b"a1 NO [TOOBIG] message too large\r\n", b"* BYE "])
    c = RawFrom(server.port("imap"))
    c.send(b"b1 LOGIN " + user.encode() + b" {%d+}\r\n" % (MAX_LITERAL + 1) + inner)
    closed_after(c, [b"b1 BAD [TOOBIG] literal too large\r\n", b"* BYE "])
    c = RawFrom(server.port("imap"))
    c.login(user)
    assert c.ok('LIST "" Injected') == []


def test_literal_refused_without_a_tag(client: Raw) -> None:
    # Over the limit and no tag to answer with: an untagged BAD, never a response "tagged" with garbage.
    client.send(b"(bad {%d}\r\n" % (MAX_LITERAL + 1))
    resp = client.response()
    assert resp.startswith(b"* BAD "), resp
    assert client.ok("NOOP") == []


# --- line length -----------------------------------------------------------------------------------------------


def test_line_at_the_limit_is_read(client: Raw) -> None:
    prefix = b"l1 SEARCH SUBJECT "
    line = prefix + b"x" * (MAX_LINE - len(prefix))
    assert len(line) == MAX_LINE
    client.send(line + b"\r\n")
    _, tagged = client.until(b"l1")
    assert tagged == b"l1 BAD SEARCH is not allowed in the authenticated state\r\n"


def test_line_over_the_limit_closes(server: ServerProcess, user: str) -> None:
    c = RawFrom(server.port("imap"))
    c.login(user)
    c.send(b"l1 SEARCH SUBJECT " + b"x" * MAX_LINE + b"\r\n")
    closed_after(c, [b"* BYE "])
    # Without a line end at all: the server does not wait for one forever.
    c = RawFrom(server.port("imap"))
    c.send(b"l2 NOOP" + b"x" * (MAX_LINE * 3))
    closed_after(c, [b"* BYE "])
    # After a literal, the rest of the command is a line too.
    c = RawFrom(server.port("imap"))
    c.send(b"l3 LOGIN {3+}\r\nabc " + b"y" * (MAX_LINE + 10) + b"\r\n")
    closed_after(c, [b"* BYE "])


def test_long_line_during_idle_and_authenticate(server: ServerProcess, user: str) -> None:
    c = RawFrom(server.port("imap"))
    c.login(user)
    c.send(b"i1 IDLE\r\n")
    assert c.response() == b"+ idling\r\n"
    c.send(b"D" * (MAX_LINE + 10) + b"\r\n")
    closed_after(c, [b"* BYE "])
    c = RawFrom(server.port("imap"))
    c.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert c.response() == b"+ \r\n"
    c.send(b"A" * (MAX_LINE + 12) + b"\r\n")
    closed_after(c, [b"* BYE "])


def _compressed(c: Raw) -> None:
    assert c.cmd("COMPRESS DEFLATE")[1].endswith(b" OK DEFLATE active\r\n")
    c.deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.inflate = zlib.decompressobj(-15)


def test_limits_hold_under_compression(server: ServerProcess, user: str) -> None:
    c = RawFrom(server.port("imap"))
    c.login(user)
    _compressed(c)
    # A literal over the limit is refused before it is read, and the compressed stream stays in step.
    c.send(b"a1 APPEND INBOX {%d}\r\n" % (MAX_LITERAL + 1))
    assert c.response() == b"a1 NO [TOOBIG] message too large\r\n"
    assert c.ok("NOOP") == []
    # A few hundred octets that inflate to megabytes without a line end: the line limit ends it, the server does
    # not inflate it all into memory.
    c.send(b"b1 NOOP " + b"x" * (8 * 1024 * 1024))
    closed_after(c, [b"* BYE line too long\r\n"])


# --- too many bad commands -----------------------------------------------------------------------------------------


def test_too_many_bad_commands(server: ServerProcess, client: Raw) -> None:
    from homemail.imap.session import MAX_BAD_COMMANDS

    # A good command in between starts the count again.
    for n in range(MAX_BAD_COMMANDS - 1):
        assert client.cmd("BOGUS")[1] == b"t%d BAD unknown command BOGUS\r\n" % (n + 2)
    assert client.ok("NOOP") == []
    for _ in range(MAX_BAD_COMMANDS - 1):
        client.cmd("BOGUS")
    client.send(b"last BOGUS\r\n")
    closed_after(client, [b"last BAD unknown command BOGUS\r\n", b"* BYE too many bad commands\r\n"])
    # Untagged ones count too.
    c = RawFrom(server.port("imap"))
    c.send(b"(\r\n" * MAX_BAD_COMMANDS)
    closed_after(c, [b"* BAD "] * MAX_BAD_COMMANDS + [b"* BYE too many bad commands\r\n"])


# --- connections per address -----------------------------------------------------------------------------------


def test_connections_per_address(server: ServerProcess) -> None:
    source = new_source()
    held = [RawFrom(server.port("imap"), source) for _ in range(CONNECTIONS_PER_IP - 1)]
    held.append(RawFrom(server.port("imaps"), source, tls=True))  # the limit counts both listeners
    for c in held:
        assert c.greeting.startswith(b"* OK [CAPABILITY ")
    # RFC 9051 7.1.5: BYE as the greeting, then the connection closes.
    over = RawFrom(server.port("imap"), source)
    assert over.greeting == b"* BYE too many connections from your address\r\n"
    closed_after(over, [])
    # Another address is not affected.
    other = RawFrom(server.port("imap"))
    assert other.greeting.startswith(b"* OK ")
    # When one closes, a new connection is accepted (once the server has seen the close).
    held.pop().cmd("LOGOUT")
    deadline = time.monotonic() + 5
    while True:
        c = RawFrom(server.port("imap"), source)
        if c.greeting.startswith(b"* OK "):
            break
        assert time.monotonic() < deadline, c.greeting
        time.sleep(0.05)


# --- command rate ------------------------------------------------------------------------------------------------


def test_command_rate_is_slowed_not_refused(slow: ServerProcess) -> None:
    c = RawFrom(slow.port("imap"))
    count = 2 * RATE + 4
    start = time.monotonic()
    c.send(b"".join(b"r%d NOOP\r\n" % n for n in range(count)))
    for n in range(count):
        assert c.response() == b"r%d OK NOOP completed\r\n" % n
    elapsed = time.monotonic() - start
    # RATE commands a second: the last batch waits for the third second to begin.
    assert 1.8 <= elapsed < 6, elapsed


# --- autologout ----------------------------------------------------------------------------------------------------


def test_autologout(slow: ServerProcess) -> None:
    address = f"limits{next(_users)}@{DOMAIN}"
    add_accounts(slow, [address])
    # Not authenticated, authenticated, idling and in the middle of AUTHENTICATE: "* BYE", then the close.
    a = RawFrom(slow.port("imap"))
    b = RawFrom(slow.port("imap"))
    b.login(address)
    c = RawFrom(slow.port("imap"))
    c.login(address)
    c.ok("SELECT INBOX")
    c.send(b"i IDLE\r\n")
    assert c.response() == b"+ idling\r\n"
    d = RawFrom(slow.port("imap"))
    d.send(b"s AUTHENTICATE PLAIN\r\n")
    assert d.response() == b"+ \r\n"
    start = time.monotonic()
    for conn in (a, b, c, d):
        closed_after(conn, [b"* BYE autologout; idle for too long\r\n"], within=IDLE_TIMEOUT + 3)
    assert time.monotonic() - start < IDLE_TIMEOUT + 3
    # A session that keeps talking is not logged out.
    e = RawFrom(slow.port("imap"))
    e.login(address)
    for _ in range(4):
        time.sleep(IDLE_TIMEOUT / 2)
        assert e.ok("NOOP") == []
    e.cmd("LOGOUT")
