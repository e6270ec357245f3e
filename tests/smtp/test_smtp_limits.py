"""The MX's limits over real sockets: message size (SIZE, DATA, BDAT), recipients, command line length, errors,
connections per client address, and the idle and data timeouts.

Two servers: ``limits`` (small size, recipient, line, error and connection limits, default timeouts) and
``timeouts`` (short timeouts). Short timeouts are kept off the first so that none of its tests depends on timing.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterator

import pytest
from smtp_helpers import body_of, find, inbox, marker, start_mx

from harness import ServerProcess
from smtpclient import Raw

LIMIT = 64 * 1024
MAX_RCPT = 3
MAX_LINE = 1000
MAX_ERRORS = 5
PER_IP = 3
IDLE = 3.0
DATA_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def limits() -> Iterator[ServerProcess]:
    server = start_mx(
        ("alice@example.org", "bob@example.org", "carol@example.org"),
        max_message_size="64KB",
        max_recipients=MAX_RCPT,
        max_line_length=MAX_LINE,
        max_errors=MAX_ERRORS,
        max_connections_per_ip=PER_IP,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def timeouts() -> Iterator[ServerProcess]:
    server = start_mx(("alice@example.org",), idle_timeout=IDLE, data_timeout=DATA_TIMEOUT)
    try:
        yield server
    finally:
        server.stop()


Connect = Callable[..., Raw]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Open clients to a server; every one is closed after the test."""
    opened: list[Raw] = []

    def open_client(server: ServerProcess, source: str = "127.0.0.1") -> Raw:
        # From a chosen loopback source address, so a test can own a client address's count.
        client = Raw(server.port("smtp"), source=source)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


def message_of_size(m: bytes, size: int, stuffed: bool = False) -> bytes:
    """A message of exactly ``size`` octets as stored (before the trace fields), lines ending in CRLF.

    With ``stuffed`` every body line starts with "." and is sent dot-stuffed, so the octets on the wire are
    more than ``size``; the unstuffed size is what counts.
    """
    head = b"Subject: " + m + b"\r\n\r\n"
    line = 78
    left = size - len(head)
    lines = []
    while left > line + 2 + 10:
        lines.append(b"." + b"y" * (line - 1) if stuffed else b"y" * line)
        left -= line + 2
    lines.append(b"z" * (left - 2))
    msg = head + b"\r\n".join(lines) + b"\r\n"
    assert len(msg) == size
    return msg


def stuff(msg: bytes) -> bytes:
    return msg.replace(b"\r\n.", b"\r\n..")


def begin(raw: Raw, rcpts: tuple[str, ...] = ("alice@example.org",), params: str = "") -> None:
    assert raw.cmd(f"MAIL FROM:<s@remote.example>{params}") == (250, "2.1.0 Ok")
    for r in rcpts:
        assert raw.cmd(f"RCPT TO:<{r}>") == (250, "2.1.5 Ok")


def data(raw: Raw, payload: bytes) -> tuple[int, str]:
    assert raw.cmd("DATA")[0] == 354
    raw.send(payload)
    return raw.reply()


def nothing_to_read(raw: Raw, wait: float = 0.3) -> bool:
    """No reply arrived within ``wait`` seconds (the reply buffer is empty: every reply so far was read)."""
    readable, _, _ = select.select([raw.sock], [], [], wait)
    return not readable


def assert_refused_for_size(reply: tuple[int, str]) -> None:
    code, text = reply
    assert code == 552 and text.startswith("5.3.4 "), reply


def assert_delivered(reply: tuple[int, str]) -> None:
    code, text = reply
    assert code == 250 and text.startswith("2.0.0 Ok: delivered"), reply


# --- message size ----------------------------------------------------------------------------------------------


def test_ehlo_advertises_the_configured_size(limits: ServerProcess, connect: Connect) -> None:
    raw = connect(limits)
    code, text = raw.ehlo()
    assert code == 250
    assert f"SIZE {LIMIT}" in text.split("\n")


def test_size_parameter_over_the_limit(limits: ServerProcess, connect: Connect) -> None:
    raw = connect(limits)
    raw.ehlo()
    code, text = raw.cmd(f"MAIL FROM:<s@remote.example> SIZE={LIMIT + 1}")
    assert code == 552 and text.startswith("5.3.4 "), text
    code, text = raw.cmd("MAIL FROM:<s@remote.example> SIZE=999999999999")
    assert code == 552 and text.startswith("5.3.4 "), text
    # no transaction was begun: RCPT needs a MAIL first
    assert raw.cmd("RCPT TO:<alice@example.org>")[0] == 503
    # at the limit the declared size is fine and the transaction goes on
    m = marker()
    begin(raw, params=f" SIZE={LIMIT}")
    assert_delivered(data(raw, b"Subject: " + m + b"\r\n\r\nsmall\r\n.\r\n"))
    assert len(find(inbox(limits, "alice@example.org"), m)) == 1


def test_data_over_the_limit_is_refused_after_the_dot(limits: ServerProcess, connect: Connect) -> None:
    raw = connect(limits)
    raw.ehlo()
    over, huge, after = marker(), marker(), marker()
    # One octet over: the whole message arrives before the refusal, which comes only after the final dot.
    begin(raw)
    assert raw.cmd("DATA")[0] == 354
    raw.send(message_of_size(over, LIMIT + 1))
    assert nothing_to_read(raw)
    raw.send(b".\r\n")
    assert_refused_for_size(raw.reply())
    # Far over: discarded as it comes, still refused only at its end, and the session stays in step.
    begin(raw)
    assert raw.cmd("DATA")[0] == 354
    big = message_of_size(huge, 16 * LIMIT)
    raw.send(big[: 8 * LIMIT])
    assert nothing_to_read(raw)
    raw.send(big[8 * LIMIT :] + b".\r\n")
    assert_refused_for_size(raw.reply())
    assert raw.cmd("NOOP") == (250, "2.0.0 Ok")
    # The refused transaction is over; the next one on the same connection works.
    assert raw.cmd("RCPT TO:<alice@example.org>")[0] == 503
    begin(raw)
    assert_delivered(data(raw, b"Subject: " + after + b"\r\n\r\nafter\r\n.\r\n"))
    messages = inbox(limits, "alice@example.org")
    assert find(messages, over) == [] and find(messages, huge) == []
    assert len(find(messages, after)) == 1


def test_message_exactly_at_the_limit(limits: ServerProcess, connect: Connect) -> None:
    raw = connect(limits)
    raw.ehlo()
    whole, split, stuffed, over = marker(), marker(), marker(), marker()
    # in one write
    begin(raw)
    assert_delivered(data(raw, message_of_size(whole, LIMIT) + b".\r\n"))
    # with the end marker cut between its CR and LF, so the server sees the data and ".\r" first
    begin(raw)
    assert raw.cmd("DATA")[0] == 354
    raw.send(message_of_size(split, LIMIT) + b".\r")
    assert nothing_to_read(raw)
    raw.send(b"\n")
    assert_delivered(raw.reply())
    # dot-stuffed: more than the limit on the wire, exactly the limit once unstuffed
    msg = message_of_size(stuffed, LIMIT, stuffed=True)
    wire = stuff(msg)
    assert len(wire) > LIMIT + 500
    begin(raw)
    assert raw.cmd("DATA")[0] == 354
    raw.send(wire + b".\r")
    assert nothing_to_read(raw)
    raw.send(b"\n")
    assert_delivered(raw.reply())
    # and one octet more, stuffed the same way, is over
    begin(raw)
    assert_refused_for_size(data(raw, stuff(message_of_size(over, LIMIT + 1, stuffed=True)) + b".\r\n"))
    messages = inbox(limits, "alice@example.org")
    for m in (whole, split, stuffed):
        found = find(messages, m)
        assert len(found) == 1
        # export gives LF line ends: the body is the sent one with CRLF -> LF
        sent = message_of_size(m, LIMIT, stuffed=m == stuffed)
        assert body_of(found[0]) == body_of(sent.replace(b"\r\n", b"\n"))
    assert find(messages, over) == []


def test_bdat_over_the_limit(limits: ServerProcess, connect: Connect) -> None:
    raw = connect(limits)
    raw.ehlo()
    one, chunked, exact, after = marker(), marker(), marker(), marker()
    # one chunk over the limit: its octets are read (not taken as commands) and the message refused
    begin(raw)
    msg = message_of_size(one, LIMIT + 1)
    raw.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    assert_refused_for_size(raw.reply())
    # RFC 3030: the transaction is over after the failed chunk
    raw.send(b"BDAT 3 LAST\r\nabc")
    code, text = raw.reply()
    assert code == 503 and text.startswith("5.5.1 "), text
    # over the limit only with the second chunk
    begin(raw)
    msg = message_of_size(chunked, LIMIT + 1)
    half = LIMIT // 2
    raw.send(b"BDAT %d\r\n" % half + msg[:half])
    code, text = raw.reply()
    assert code == 250 and text.startswith("2.0.0 "), text
    raw.send(b"BDAT %d LAST\r\n" % (len(msg) - half) + msg[half:])
    assert_refused_for_size(raw.reply())
    assert raw.cmd("NOOP") == (250, "2.0.0 Ok")
    # exactly the limit, in two chunks, is accepted
    begin(raw)
    msg = message_of_size(exact, LIMIT)
    raw.send(b"BDAT %d\r\n" % half + msg[:half] + b"BDAT %d LAST\r\n" % (len(msg) - half) + msg[half:])
    code, text = raw.reply()
    assert code == 250 and text.startswith("2.0.0 "), text
    assert_delivered(raw.reply())
    # and a small one after that
    begin(raw)
    msg = b"Subject: " + after + b"\r\n\r\nafter\r\n"
    raw.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    assert_delivered(raw.reply())
    messages = inbox(limits, "alice@example.org")
    assert find(messages, one) == [] and find(messages, chunked) == []
    assert len(find(messages, exact)) == 1 and len(find(messages, after)) == 1


# --- recipients --------------------------------------------------------------------------------------------


def test_recipients_per_message(limits: ServerProcess, connect: Connect) -> None:
    raw = connect(limits)
    raw.ehlo()
    m = marker()
    assert raw.cmd("MAIL FROM:<s@remote.example>")[0] == 250
    # a refused recipient does not count
    assert raw.cmd("RCPT TO:<nobody@example.org>")[0] == 550
    for r in ("alice@example.org", "alice+two@example.org", "bob@example.org"):
        assert raw.cmd(f"RCPT TO:<{r}>") == (250, "2.1.5 Ok")
    for r in ("carol@example.org", "carol@example.org"):
        code, text = raw.cmd(f"RCPT TO:<{r}>")
        assert code == 452 and text.startswith("4.5.3 "), text
    assert_delivered(data(raw, b"Subject: " + m + b"\r\n\r\nthree of four\r\n.\r\n"))
    # the count is per message: the next transaction may have three again
    begin(raw, rcpts=("carol@example.org", "bob@example.org", "alice@example.org"))
    code, text = raw.cmd("RCPT TO:<bob+x@example.org>")
    assert code == 452 and text.startswith("4.5.3 "), text
    assert raw.cmd("RSET")[0] == 250
    assert len(find(inbox(limits, "alice@example.org"), m)) == 1
    assert len(find(inbox(limits, "bob@example.org"), m)) == 1
    assert find(inbox(limits, "carol@example.org"), m) == []


# --- command lines -----------------------------------------------------------------------------------------


def test_command_line_length(limits: ServerProcess, connect: Connect) -> None:
    raw = connect(limits)
    raw.ehlo()
    at_limit = "NOOP " + "x" * (MAX_LINE - 7)
    assert len(at_limit) + 2 == MAX_LINE
    assert raw.cmd(at_limit) == (250, "2.0.0 Ok")
    code, text = raw.cmd(at_limit + "x")
    assert code == 500 and text.startswith("5.5.2 "), text
    assert raw.cmd("NOOP") == (250, "2.0.0 Ok")
    # an overlong line arriving in pieces is dropped as it comes; the session stays in step
    raw.send(b"MAIL FROM:<" + b"a" * 800)
    raw.send(b"b" * 800)
    raw.send(b"@example.org>\r\n")
    code, text = raw.reply()
    assert code == 500 and text.startswith("5.5.2 "), text
    m = marker()
    begin(raw)
    assert_delivered(data(raw, b"Subject: " + m + b"\r\n\r\n" + b"t" * 3 * MAX_LINE + b"\r\n.\r\n"))
    assert len(find(inbox(limits, "alice@example.org"), m)) == 1  # text lines are not limited


# --- errors per session ------------------------------------------------------------------------------------


def test_too_many_errors_closes(limits: ServerProcess, connect: Connect) -> None:
    raw = connect(limits)
    raw.ehlo()
    bad = ["FOO", "MAIL FROM:nothing", "RCPT TO:<alice@example.org>", "DATA", "BAR"]
    assert len(bad) == MAX_ERRORS
    for line in bad[:-1]:
        assert raw.cmd(line)[0] >= 500
        assert raw.cmd("NOOP") == (250, "2.0.0 Ok")  # successes do not reset or add to the count
    code, text = raw.cmd(bad[-1])
    assert code == 500 and text.startswith("5.5.2 "), text
    code, text = raw.reply()
    assert code == 421 and text.startswith("4.7.0 "), text
    assert raw.is_closed()
    # the count is per connection
    other = connect(limits)
    other.ehlo()
    for _ in range(MAX_ERRORS - 1):
        assert other.cmd("FOO")[0] == 500
    assert other.cmd("NOOP") == (250, "2.0.0 Ok")


# --- connections per client address ------------------------------------------------------------------------


def test_connections_per_ip(limits: ServerProcess, connect: Connect) -> None:
    source = "127.0.0.3"  # this test's own client address
    clients = [connect(limits, source) for _ in range(PER_IP)]
    for c in clients:
        assert c.greeting[0] == 220
    refused = connect(limits, source)
    code, text = refused.greeting
    assert code == 421 and text.startswith("4.7.0 "), text
    assert refused.is_closed()
    # the limit is per address: another one still gets in, and the open ones still work
    other = connect(limits, "127.0.0.4")
    assert other.greeting[0] == 220
    for c in clients:
        assert c.ehlo()[0] == 250
    # once one of them is gone, a new connection from the address is accepted
    assert clients[0].cmd("QUIT")[0] == 221
    assert clients[0].is_closed()
    again = connect(limits, source)
    assert again.greeting[0] == 220, again.greeting
    assert again.ehlo()[0] == 250
    # and that made it full again
    full = connect(limits, source)
    assert full.greeting[0] == 421


# --- timeouts ----------------------------------------------------------------------------------------------


def test_idle_timeout(timeouts: ServerProcess, connect: Connect) -> None:
    started = time.monotonic()
    after_ehlo = connect(timeouts)
    assert after_ehlo.ehlo()[0] == 250
    mid_line = connect(timeouts)
    mid_line.send(b"NOO")  # a command that never ends
    active = connect(timeouts)  # one that keeps talking, more slowly than the timeout overall
    assert active.ehlo()[0] == 250
    timed_out: dict[Raw, float] = {}
    last = started
    while len(timed_out) < 2 or time.monotonic() - started < IDLE * 1.3:
        if time.monotonic() - started > IDLE + 3:
            break
        waiting = [c for c in (after_ehlo, mid_line) if c not in timed_out]
        readable, _, _ = select.select([c.sock for c in waiting], [], [], 0.1)
        for raw in waiting:
            if raw.sock in readable:
                timed_out[raw] = time.monotonic() - started
        if time.monotonic() - last > IDLE / 4:
            assert active.cmd("NOOP") == (250, "2.0.0 Ok")
            last = time.monotonic()
    assert active.cmd("NOOP") == (250, "2.0.0 Ok")
    for raw in (after_ehlo, mid_line):
        assert raw in timed_out
        assert timed_out[raw] >= IDLE - 0.2, timed_out[raw]
        code, text = raw.reply()
        assert code == 421 and text.startswith("4.4.2 "), text
        assert raw.is_closed()


def test_data_timeout(timeouts: ServerProcess, connect: Connect) -> None:
    in_data, in_bdat = marker(), marker()
    data_client = connect(timeouts)
    data_client.ehlo()
    begin(data_client)
    assert data_client.cmd("DATA")[0] == 354
    bdat_client = connect(timeouts)
    bdat_client.ehlo()
    begin(bdat_client)
    started = time.monotonic()
    data_client.send(b"Subject: " + in_data + b"\r\n\r\npart of a message\r\n")
    bdat_client.send(b"BDAT 1000 LAST\r\nSubject: " + in_bdat + b"\r\n\r\nnot all of it\r\n")
    for raw in (data_client, bdat_client):
        code, text = raw.reply()
        elapsed = time.monotonic() - started
        assert code == 421 and text.startswith("4.4.2 "), text
        # the data timeout, not the (longer) idle timeout, applies while message data is awaited
        assert DATA_TIMEOUT - 0.2 <= elapsed < IDLE - 0.2, elapsed
        assert raw.is_closed()
    messages = inbox(timeouts, "alice@example.org")
    assert find(messages, in_data) == [] and find(messages, in_bdat) == []
