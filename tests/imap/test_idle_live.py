"""Live updates between sessions over real sockets: IDLE (RFC 2177, RFC 9051 6.3.13), and the untagged EXISTS,
FETCH FLAGS, EXPUNGE and VANISHED (RFC 7162 3.2.10) responses a session sees for changes made elsewhere -- at once
while it IDLEs, at its next command otherwise (RFC 9051 5.2, 7.5.1)."""

from __future__ import annotations

import re
import signal
import smtplib
import time
import zlib
from pathlib import Path

import pytest

from harness import ServerProcess, with_store
from imap.imaputil import DOMAIN, add_accounts, message, start_server
from imap.rawclient import Raw, well_formed

# What a session learns must reach it this fast while it IDLEs.
LATENCY = 1.0


def connect(server: ServerProcess) -> Raw:
    c = Raw(server.port("imap"))
    # The client writes a command's CRLF separately: without this, Nagle's algorithm holds it back 40 ms.
    return c


def login(server: ServerProcess, user: str, *enable: str) -> Raw:
    c = connect(server)
    c.login(user)
    if enable:
        c.ok("ENABLE " + " ".join(enable))
    return c


def append(c: Raw, n: int, mailbox: str = "INBOX") -> None:
    for i in range(n):
        data = message(subject=f"m{i + 1}")
        c.ok(b'APPEND "' + mailbox.encode() + b'" {%d+}\r\n' % len(data) + data)


def select(c: Raw, mailbox: str = "INBOX") -> list[bytes]:
    untagged, tagged = c.cmd(f'SELECT "{mailbox}"')
    assert tagged.endswith(b" OK [READ-WRITE] SELECT completed\r\n"), (tagged, untagged)
    return untagged


def idle(c: Raw) -> bytes:
    """Start IDLE; return its tag. Nothing is pending, so the continuation request comes alone."""
    tag = c.tag()
    c.send(tag + b" IDLE\r\n")
    assert c.response() == b"+ idling\r\n"
    return tag


def done(c: Raw, tag: bytes) -> list[bytes]:
    c.send(b"DONE\r\n")
    untagged, tagged = c.until(tag)
    assert tagged == tag + b" OK IDLE terminated\r\n"
    return untagged


def expect(c: Raw, count: int, within: float = LATENCY) -> tuple[list[bytes], float]:
    """Read ``count`` responses, each well formed; fail when they do not all arrive ``within`` seconds.
    Returns them and the time the last one took."""
    start = time.monotonic()
    out: list[bytes] = []
    try:
        while len(out) < count:
            left = within - (time.monotonic() - start)
            assert left > 0, f"only {out} within {within}s"
            c.sock.settimeout(left)
            resp = c.response()
            assert well_formed(resp), resp
            out.append(resp)
    except TimeoutError:
        raise AssertionError(f"only {out} within {within}s") from None
    finally:
        c.sock.settimeout(10)
    return out, time.monotonic() - start


def quiet(c: Raw, wait: float = 0.3) -> None:
    """Nothing arrives for ``wait`` seconds."""
    c.sock.settimeout(wait)
    try:
        data = c.sock.recv(1000)
    except TimeoutError:
        data = None
    finally:
        c.sock.settimeout(10)
    assert data is None and not c.buf, (data, c.buf)


def smtp_deliver(server: ServerProcess, to: str, subject: str = "by smtp") -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as s:
        s.sendmail("bob@example.org", [to], message(subject=subject, to=to))


def modseq_of(line: bytes) -> int:
    m = re.search(rb"MODSEQ \((\d+)\)", line)
    assert m, line
    return int(m.group(1))


# --- IDLE itself ----------------------------------------------------------------------------------------------


def test_idle_and_done(server: ServerProcess, user: str) -> None:
    c = login(server, user)
    select(c)
    tag = idle(c)
    quiet(c, 0.2)
    assert done(c, tag) == []
    # "DONE" is matched without regard to case, and a pipelined command right after it is answered.
    tag = idle(c)
    c.send(b"done\r\nt99 NOOP\r\n")
    assert c.until(tag) == ([], tag + b" OK IDLE terminated\r\n")
    assert c.until(b"t99") == ([], b"t99 OK NOOP completed\r\n")
    # IDLE and DONE in one packet: the continuation request, then the end.
    c.send(b"i1 IDLE\r\nDONE\r\n")
    assert c.response() == b"+ idling\r\n"
    assert c.response() == b"i1 OK IDLE terminated\r\n"


def test_idle_in_authenticated_state(server: ServerProcess, user: str) -> None:
    # RFC 2177 / RFC 9051 6.3.13: IDLE is valid in the authenticated state too; there is just nothing to report.
    c = login(server, user)
    tag = idle(c)
    append(login(server, user), 1)
    quiet(c, 0.3)
    assert done(c, tag) == []


def test_idle_wrong_state_and_arguments(server: ServerProcess, user: str) -> None:
    c = connect(server)
    assert c.cmd("IDLE") == ([], b"t1 BAD IDLE is not allowed in the not authenticated state\r\n")
    c.login(user)
    _, tagged = c.cmd("IDLE now")
    assert tagged.startswith(b"t3 BAD syntax error"), tagged
    _, tagged = c.cmd("UID IDLE")
    assert tagged == b"t4 BAD unknown command UID IDLE\r\n"
    assert c.ok("NOOP") == []


def test_done_without_idle_is_bad(server: ServerProcess, user: str) -> None:
    c = login(server, user)
    c.send(b"DONE\r\n")
    resp = c.response()
    # "DONE" reads as a tag with no command after it: a BAD with that tag, and the session goes on.
    assert resp == b"DONE BAD syntax error: expected a space at the end of the line\r\n"
    assert c.ok("NOOP") == []


def test_idle_ended_by_something_else_than_done(server: ServerProcess, user: str) -> None:
    c = login(server, user)
    select(c)
    tag = idle(c)
    c.send(b"t50 NOOP\r\n")
    assert c.until(tag) == ([], tag + b" BAD expected DONE to end IDLE\r\n")
    assert c.ok("NOOP") == []


# --- delivery while idling ---------------------------------------------------------------------------------------


def test_smtp_delivery_reaches_idle_within_a_second(server: ServerProcess, user: str) -> None:
    c = login(server, user)
    select(c)
    tag = idle(c)
    start = time.monotonic()
    smtp_deliver(server, user)
    got, _ = expect(c, 2, within=LATENCY + 1)
    latency = time.monotonic() - start
    assert got == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert latency < LATENCY, f"EXISTS took {latency:.3f}s"
    # A second delivery: the count goes on, measured again.
    start = time.monotonic()
    smtp_deliver(server, user, "second")
    got, _ = expect(c, 2, within=LATENCY + 1)
    assert got == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n"]
    assert time.monotonic() - start < LATENCY
    assert done(c, tag) == []
    untagged = c.ok("FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: by smtp" in untagged[0] and b"Subject: second" in untagged[1]
    assert b"\\Recent" in untagged[0]


def deliver_from_another_process(server: ServerProcess, address: str) -> None:
    """What the CLI or a second server does: a commit to the same store, outside this server's process."""
    from homemail.store import DeliveryTarget
    from homemail.store.sqlite import SQLiteStore

    async def run(store: SQLiteStore) -> None:
        account = await store.get_account(address)
        assert account is not None
        await store.deliver(message(subject="from outside"), [DeliveryTarget(account.id)])

    with_store(server.data_dir, run)


def test_delivery_by_another_process_reaches_idle(server: ServerProcess, user: str) -> None:
    c = login(server, user)
    select(c)
    tag = idle(c)
    deliver_from_another_process(server, user)
    # Another process's commits are noticed by polling the store (once a second), so allow for one poll.
    got, _ = expect(c, 2, within=LATENCY + 1.5)
    assert got == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert done(c, tag) == []


def test_idle_under_compression(server: ServerProcess, user: str) -> None:
    # RFC 4978: what IDLE pushes is flushed through the compressor at once (a sync flush per write).
    c = login(server, user)
    assert c.cmd("COMPRESS DEFLATE")[1] == b"t2 OK DEFLATE active\r\n"
    c.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    c.inflate = zlib.decompressobj(-15)
    select(c)
    tag = idle(c)
    start = time.monotonic()
    smtp_deliver(server, user)
    got, _ = expect(c, 2, within=LATENCY + 1)
    assert got == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert time.monotonic() - start < LATENCY
    assert done(c, tag) == []
    assert c.ok("FETCH 1 (FLAGS)") == [b"* 1 FETCH (FLAGS (\\Recent))\r\n"]


def test_delivery_under_imap4rev2_has_no_recent(server: ServerProcess, user: str) -> None:
    c = login(server, user, "IMAP4rev2")
    select(c)
    tag = idle(c)
    smtp_deliver(server, user)
    got, _ = expect(c, 1)
    assert got == [b"* 1 EXISTS\r\n"]
    quiet(c, 0.2)
    assert done(c, tag) == []


# --- changes by another session ---------------------------------------------------------------------------------


def _two_sessions(server: ServerProcess, user: str, n: int, *enable: str) -> tuple[Raw, Raw]:
    """A appends ``n`` messages and selects INBOX first (so it holds their \\Recent); B selects after it."""
    a = login(server, user)
    append(a, n)
    select(a)
    b = login(server, user, *enable)
    untagged = select(b)
    assert b"* %d EXISTS\r\n" % n in untagged
    if "IMAP4rev2" not in enable:
        assert b"* 0 RECENT\r\n" in untagged
    return a, b


def test_flags_reach_idle_session_at_once(server: ServerProcess, user: str) -> None:
    a, b = _two_sessions(server, user, 3)
    tag = idle(b)
    a.ok("STORE 2 +FLAGS (\\Seen)")
    got, _ = expect(b, 1)
    assert got == [b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n"]
    # A keyword new to the mailbox: the FLAGS and PERMANENTFLAGS responses come first (RFC 9051 7.3.5).
    a.ok("STORE 1:3 +FLAGS.SILENT ($Label1)")
    got, _ = expect(b, 5)
    assert got == [
        b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1)\r\n",
        b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1 \\*)] flags permitted\r\n",
        b"* 1 FETCH (UID 1 FLAGS ($Label1))\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Seen $Label1))\r\n",
        b"* 3 FETCH (UID 3 FLAGS ($Label1))\r\n",
    ]
    a.ok("STORE 2 -FLAGS (\\Seen $Label1)")
    got, _ = expect(b, 1)
    assert got == [b"* 2 FETCH (UID 2 FLAGS ())\r\n"]
    quiet(b, 0.2)
    assert done(b, tag) == []


def test_expunge_reaches_idle_session_at_once(server: ServerProcess, user: str) -> None:
    a, b = _two_sessions(server, user, 4)
    a.ok("STORE 2,3 +FLAGS.SILENT (\\Deleted)")
    b.ok("NOOP")  # B learns the flags now, so only the expunge is left for IDLE
    tag = idle(b)
    a.ok("EXPUNGE")
    got, _ = expect(b, 2)
    # Each EXPUNGE is relative to the sequence numbers after the one before it: highest first.
    assert got == [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert done(b, tag) == []
    untagged = b.ok("FETCH 1:* UID")
    assert untagged == [b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 4)\r\n"]


def test_vanished_under_qresync(server: ServerProcess, user: str) -> None:
    a, b = _two_sessions(server, user, 5, "QRESYNC")
    tag = idle(b)
    a.ok("STORE 1 +FLAGS (\\Flagged)")
    got, _ = expect(b, 1)
    assert re.fullmatch(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)\r\n", got[0]), got
    a.ok("STORE 2:4 +FLAGS.SILENT (\\Deleted)")
    expect(b, 3)
    a.ok("EXPUNGE")
    got, _ = expect(b, 1)
    # RFC 7162 3.2.10: with QRESYNC enabled, VANISHED (UIDs) replaces EXPUNGE.
    assert got == [b"* VANISHED 2:4\r\n"]
    quiet(b, 0.2)
    assert done(b, tag) == []
    untagged = b.ok("FETCH 1:* (UID MODSEQ)")
    assert len(untagged) == 2 and untagged[1].startswith(b"* 2 FETCH (UID 5 MODSEQ")


def test_move_reaches_source_and_destination_watchers(server: ServerProcess, user: str) -> None:
    a, b = _two_sessions(server, user, 2)
    c = login(server, user)
    select(c, "Archive")  # one of the default folders
    tag_b = idle(b)
    tag_c = idle(c)
    untagged = a.ok("MOVE 1 Archive")
    assert untagged[-1] == b"* 1 EXPUNGE\r\n"
    got, _ = expect(b, 1)
    assert got == [b"* 1 EXPUNGE\r\n"]
    got, _ = expect(c, 2)
    assert got == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert done(b, tag_b) == []
    assert done(c, tag_c) == []
    assert b.ok("FETCH 1 UID") == [b"* 1 FETCH (UID 2)\r\n"]


def test_changes_wait_for_next_command_without_idle(server: ServerProcess, user: str) -> None:
    a, b = _two_sessions(server, user, 3)
    a.ok("STORE 1 +FLAGS (\\Answered)")
    a.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    append(a, 1)
    # Nothing is pushed to a session that is not idling ...
    quiet(b, 0.3)
    # ... FETCH (not UID FETCH) may not announce the expunge (RFC 9051 7.5.1); the flag update and the new
    # message may come with it.
    untagged = b.ok("FETCH 3 UID")
    assert b"* 3 FETCH (UID 3)\r\n" in untagged
    assert not any(b"EXPUNGE" in x for x in untagged)
    # ... NOOP announces the rest.
    untagged = b.ok("NOOP")
    assert b"* 3 EXPUNGE\r\n" in untagged
    # Everything has been said once.
    assert b.ok("NOOP") == []
    assert b.ok("FETCH 1:* (UID FLAGS)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Answered))\r\n",
        b"* 2 FETCH (UID 2 FLAGS ())\r\n",
        b"* 3 FETCH (UID 4 FLAGS ())\r\n",
    ]


def test_noop_reports_in_protocol_order(server: ServerProcess, user: str) -> None:
    a, b = _two_sessions(server, user, 3)
    a.ok("STORE 1 +FLAGS (\\Answered)")
    a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    append(a, 1)
    untagged = b.ok("NOOP")
    # Flag change of message 1, expunge of message 2, then the new message as 3 of 3.
    assert untagged == [
        b"* 1 FETCH (UID 1 FLAGS (\\Answered))\r\n",
        b"* 2 EXPUNGE\r\n",
        b"* 3 EXISTS\r\n",
        b"* 0 RECENT\r\n",
    ]


def test_own_changes_are_not_echoed(server: ServerProcess, user: str) -> None:
    # A session's own STORE, EXPUNGE and APPEND are reported by the command itself, not again at the next one.
    for enable in ((), ("CONDSTORE",), ("QRESYNC",)):
        c = login(server, user, *enable)
        append(c, 3)
        select(c)
        untagged = c.ok("STORE 1 +FLAGS (\\Seen)")
        assert len(untagged) == 1 and untagged[0].startswith(b"* 1 FETCH (")
        assert c.ok("NOOP") == []
        c.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)")
        untagged = c.ok("EXPUNGE")
        assert len(untagged) == (1 if "QRESYNC" in enable else 3), untagged
        assert c.ok("NOOP") == []
        append(c, 1)  # APPEND to the selected mailbox announces the new message itself (RFC 9051 6.3.12)
        assert c.ok("NOOP") == []
        c.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)")
        c.ok("CLOSE")  # expunges without a word (RFC 9051 6.4.1), so the next round starts empty


def test_three_sessions_at_once(server: ServerProcess, user: str) -> None:
    a = login(server, user)
    append(a, 2)
    select(a)
    b = login(server, user)
    c = login(server, user, "QRESYNC")
    select(b)
    select(c)
    tb, tc = idle(b), idle(c)
    start = time.monotonic()
    smtp_deliver(server, user)
    got_b, _ = expect(b, 2)
    got_c, _ = expect(c, 2)
    assert time.monotonic() - start < LATENCY + 0.5
    # Only one session takes the new message's \Recent (RFC 3501 2.3.2).
    assert got_b[0] == got_c[0] == b"* 3 EXISTS\r\n"
    assert sorted([got_b[1], got_c[1]]) == [b"* 0 RECENT\r\n", b"* 1 RECENT\r\n"]
    a.ok("NOOP")
    a.ok("STORE 3 +FLAGS.SILENT (\\Seen)")
    got_b, _ = expect(b, 1)
    got_c, _ = expect(c, 1)
    assert got_b[0].startswith(b"* 3 FETCH (UID 3 FLAGS (\\Seen")
    assert got_c[0].startswith(b"* 3 FETCH (UID 3 FLAGS (\\Seen") and b"MODSEQ (" in got_c[0]
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    expect(b, 1)
    expect(c, 1)
    a.ok("EXPUNGE")
    assert expect(b, 1)[0] == [b"* 1 EXPUNGE\r\n"]
    assert expect(c, 1)[0] == [b"* VANISHED 1\r\n"]
    assert done(b, tb) == []
    assert done(c, tc) == []


def test_delete_of_selected_mailbox_elsewhere(server: ServerProcess, user: str) -> None:
    a = login(server, user)
    a.ok("CREATE Doomed")
    append(a, 1, "Doomed")
    b = login(server, user)
    select(b, "Doomed")
    tag = idle(b)
    a.ok("DELETE Doomed")
    # The session's mailbox is gone: it is told so and the connection ends (RFC 9051 7.1.5 BYE).
    got, _ = expect(b, 1)
    assert got[0].startswith(b"* BYE "), got
    b.sock.settimeout(2)
    try:
        rest = b.sock.recv(1000)
    except (TimeoutError, ConnectionError):
        rest = b""
    assert rest == b"", rest
    del tag


def test_shutdown_says_bye(tmp_path: Path) -> None:
    # RFC 9051 7.1.5: BYE when the server is shutting down; an idling client hears it at once.
    srv = start_server(tmp_path)
    try:
        address = f"shutdown@{DOMAIN}"
        add_accounts(srv, [address])
        idler, plain = login(srv, address), connect(srv)
        select(idler)
        idle(idler)
        start = time.monotonic()
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        for c in (idler, plain):
            c.sock.settimeout(5)
            assert c.response() == b"* BYE server shutting down\r\n"
            with pytest.raises(EOFError):
                c.response()
        assert time.monotonic() - start < 3
        assert srv.stop() == 0
        assert "Traceback" not in srv.log(), srv.log()[-3000:]
    finally:
        srv.stop()
