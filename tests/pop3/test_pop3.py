"""POP3 over real sockets (RFC 1939, CAPA RFC 2449, STLS RFC 2595, SASL PLAIN RFC 5034, response codes
RFC 2449 8 / RFC 3206): the states, what QUIT commits and what a dropped connection does not, exact bytes of
RETR and TOP, what IMAP sees of a POP3 session and the other way round, and the refusals (plaintext before TLS,
a locked maildrop, bad credentials, malformed lines)."""

from __future__ import annotations

import base64
import os
import poplib
import random
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pop3_helpers import (
    PASSWORD,
    Raw,
    deliver,
    imap,
    imap_flags,
    inbox_count,
    new_user,
    no_internal_errors,
    put,
    send_smtp,
    stuffed_lines,
    unstuff,
    wait_for,
)

from harness import ServerProcess, no_verify, require_peer
from imap.imaputil import message

RESPONSE = re.compile(rb"^(\+OK|-ERR)( [\x20-\x7e\x80-\xff]*)?\r\n$")


def login(server: ServerProcess, user: str, key: str = "pop3") -> Raw:
    c = Raw(server.port(key), tls=key == "pop3s")
    c.login(user)
    return c


def plain(authzid: str, authcid: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


def capabilities(c: Raw) -> list[str]:
    return c.multi("CAPA").decode().split("\r\n")[:-1]


# --- greeting, CAPA, listeners -----------------------------------------------------------------------------


def test_capa_before_and_after_login(pop3_server: ServerProcess, user: str) -> None:
    with Raw(pop3_server.port("pop3")) as c:
        assert c.greeting.startswith(b"+OK ")
        caps = capabilities(c)
        for cap in (
            "TOP",
            "UIDL",
            "USER",
            "SASL PLAIN",
            "STLS",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
        ):
            assert cap in caps, caps
        c.login(user)
        caps = capabilities(c)
        assert "TOP" in caps and "UIDL" in caps
        # RFC 2449 5: capabilities that only make sense before login are not announced after it.
        assert "USER" not in caps and "STLS" not in caps and not any(x.startswith("SASL") for x in caps)
        assert c.cmd("QUIT").startswith(b"+OK")


def test_pop3s_is_tls_from_the_first_byte(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, message(subject="over tls"))
    with Raw(pop3_server.port("pop3s"), tls=True) as c:
        assert isinstance(c.sock, __import__("ssl").SSLSocket)
        assert "STLS" not in capabilities(c)
        c.login(user)
        assert b"Subject: over tls" in c.multi("RETR 1")
    # Plain text to the TLS port is not a POP3 session.
    with socket.create_connection(("127.0.0.1", pop3_server.port("pop3s")), timeout=5) as s:
        s.sendall(b"CAPA\r\n")
        assert not s.recv(100).startswith(b"+OK")


def test_poplib_over_stls_and_pop3s(pop3_server: ServerProcess, user: str) -> None:
    data = message(subject="poplib")
    put(pop3_server, user, data)
    p = poplib.POP3("127.0.0.1", pop3_server.port("pop3"), timeout=10)
    p.stls(no_verify())
    assert "STLS" not in p.capa()
    p.user(user)
    p.pass_(PASSWORD)
    assert p.stat() == (1, len(data))
    _, lines, octets = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == data
    assert octets >= len(data)
    p.quit()
    s = poplib.POP3_SSL("127.0.0.1", pop3_server.port("pop3s"), context=no_verify(), timeout=10)
    s.user(user)
    s.pass_(PASSWORD)
    assert s.uidl()[1] and s.list()[1] == [b"1 %d" % len(data)]
    s.quit()


# --- plaintext only after TLS (strict server) ----------------------------------------------------------------


def test_no_plaintext_login_before_stls(strict_server: ServerProcess) -> None:
    user = new_user(strict_server)
    with Raw(strict_server.port("pop3")) as c:
        caps = capabilities(c)
        assert "STLS" in caps
        assert "USER" not in caps and not any(x.startswith("SASL") for x in caps), caps
        assert c.err(f"USER {user}").startswith(b"-ERR [AUTH]")
        assert c.err(f"PASS {PASSWORD}").startswith(b"-ERR")
        assert c.err(f"AUTH PLAIN {plain('', user, PASSWORD)}").startswith(b"-ERR [AUTH]")
        assert c.err("STAT").startswith(b"-ERR")
        c.stls()
        caps = capabilities(c)
        assert "USER" in caps and "SASL PLAIN" in caps and "STLS" not in caps
        assert c.err("STLS").startswith(b"-ERR")
        c.login(user)
        assert c.ok("STAT") == b"+OK 0 0\r\n"
        assert c.ok("QUIT")


def test_pop3s_login_on_strict_server(strict_server: ServerProcess) -> None:
    user = new_user(strict_server)
    with Raw(strict_server.port("pop3s"), tls=True) as c:
        assert "USER" in capabilities(c)
        c.login(user)


def test_commands_pipelined_after_stls_are_refused(strict_server: ServerProcess) -> None:
    # RFC 2595 4 / the STARTTLS injection: what follows STLS in the same packet is not run as if sent over TLS.
    with Raw(strict_server.port("pop3")) as c:
        c.send("STLS\r\nCAPA\r\n")
        assert c.line().startswith(b"-ERR")
        assert c.closed()
        assert b"+OK" not in c.buf


# --- login ----------------------------------------------------------------------------------------------------


def test_wrong_password_is_refused_with_auth_code_after_a_delay(
    pop3_server: ServerProcess, user: str
) -> None:
    with Raw(pop3_server.port("pop3"), source="127.0.0.5") as c:
        c.ok(f"USER {user}")
        started = time.monotonic()
        reply = c.cmd("PASS wrong")
        assert reply.startswith(b"-ERR [AUTH]"), reply
        assert time.monotonic() - started >= 0.19  # [auth] failure_delay
        assert c.err("STAT")  # still in the AUTHORIZATION state
        assert c.err("PASS " + PASSWORD)  # USER must come again
        assert c.cmd("USER nobody@example.test").startswith(b"+OK")  # no hint whether the account exists
        assert c.err(f"PASS {PASSWORD}").startswith(b"-ERR [AUTH]")
        c.login(user)
        assert c.ok("STAT")


def test_failed_logins_are_throttled(pop3_server: ServerProcess) -> None:
    victim = new_user(pop3_server)
    with Raw(pop3_server.port("pop3"), source="127.0.0.6") as c:
        for _ in range(5):  # [auth] max_failures
            c.ok(f"USER {victim}")
            assert c.err("PASS guess").startswith(b"-ERR [AUTH]")
        c.ok(f"USER {victim}")
        # Over the limit, even the right password is refused (for this address and this account).
        assert c.err(f"PASS {PASSWORD}").startswith(b"-ERR [AUTH]")
    with Raw(pop3_server.port("pop3"), source="127.0.0.7") as c:
        c.ok(f"USER {victim}")
        assert c.err(f"PASS {PASSWORD}").startswith(b"-ERR [AUTH]")
        other = new_user(pop3_server)
        c.login(other)  # other accounts from other addresses are not affected


def test_auth_plain_with_initial_response(pop3_server: ServerProcess, user: str) -> None:
    with Raw(pop3_server.port("pop3")) as c:
        assert c.ok(f"AUTH PLAIN {plain('', user, PASSWORD)}").startswith(b"+OK")
        assert c.ok("STAT")
    with Raw(pop3_server.port("pop3")) as c:
        c.ok(f"AUTH PLAIN {plain(user, user, PASSWORD)}")  # authzid = authcid
    with Raw(pop3_server.port("pop3s"), tls=True) as c:
        assert c.multi("AUTH") == b"PLAIN\r\n"
        c.ok(f"auth plain {plain('', user, PASSWORD)}")


def test_auth_plain_with_continuation(pop3_server: ServerProcess, user: str) -> None:
    with Raw(pop3_server.port("pop3")) as c:
        assert c.cmd("AUTH PLAIN") == b"+ \r\n"
        assert c.cmd(plain("", user, PASSWORD)).startswith(b"+OK")
        assert c.ok("STAT")


def test_auth_plain_refusals(pop3_server: ServerProcess, user: str) -> None:
    with Raw(pop3_server.port("pop3"), source="127.0.0.8") as c:
        assert c.cmd("AUTH PLAIN") == b"+ \r\n"
        assert c.err("*")  # RFC 5034 4: the client cancels
        assert c.cmd("AUTH PLAIN") == b"+ \r\n"
        assert c.err("not base64!")
        assert c.err(f"AUTH PLAIN {base64.b64encode(b'no separators').decode()}")
        assert c.err("AUTH CRAM-MD5")
        assert c.err(f"AUTH PLAIN {plain('', user, 'wrong')}").startswith(b"-ERR [AUTH]")
        other = new_user(pop3_server)
        assert c.err(f"AUTH PLAIN {plain(other, user, PASSWORD)}").startswith(b"-ERR")
        assert c.err("APOP user 0123456789abcdef0123456789abcdef")
        c.ok(f"AUTH PLAIN {plain('', user, PASSWORD)}")
        assert c.err(f"AUTH PLAIN {plain('', user, PASSWORD)}")  # not in the TRANSACTION state


def test_one_session_per_maildrop(pop3_server: ServerProcess, user: str) -> None:
    first = login(pop3_server, user)
    with Raw(pop3_server.port("pop3")) as second:
        second.ok(f"USER {user}")
        assert second.err(f"PASS {PASSWORD}").startswith(b"-ERR [IN-USE]")
        assert second.err(f"AUTH PLAIN {plain('', user, PASSWORD)}").startswith(b"-ERR [IN-USE]")
        first.ok("QUIT")
        first.close()
        second.login(user)
    # A session that just goes away releases the maildrop too.
    dropped = login(pop3_server, user)
    dropped.close()

    def can_login() -> bool:
        with Raw(pop3_server.port("pop3")) as c:
            c.ok(f"USER {user}")
            return c.cmd(f"PASS {PASSWORD}").startswith(b"+OK")

    assert wait_for(can_login)


# --- the TRANSACTION and UPDATE states ----------------------------------------------------------------------


def test_stat_list_sizes_are_the_exact_octets(pop3_server: ServerProcess, user: str) -> None:
    msgs = [message(subject="a"), message(subject="b", body=".dotted\r\n." + "x" * 3000)]
    put(pop3_server, user, *msgs)
    with login(pop3_server, user) as c:
        assert c.ok("STAT") == b"+OK 2 %d\r\n" % sum(len(m) for m in msgs)
        assert c.multi("LIST") == b"".join(b"%d %d\r\n" % (i + 1, len(m)) for i, m in enumerate(msgs))
        assert c.ok("LIST 2") == b"+OK 2 %d\r\n" % len(msgs[1])
        for i, m in enumerate(msgs):
            assert unstuff(c.multi(f"RETR {i + 1}")) == m


def test_dele_takes_effect_only_at_quit(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, *(message(subject=f"m{i}") for i in range(3)))
    with login(pop3_server, user) as c:
        c.ok("DELE 1")
        assert c.ok("STAT").startswith(b"+OK 2 ")
        assert c.err("RETR 1")
        assert c.err("DELE 1")
        assert c.err("LIST 1")
        assert c.err("TOP 1 0")
        assert c.err("UIDL 1")
        assert b"1 " not in c.multi("LIST").split(b"\r\n")[0][:2]
        assert inbox_count(pop3_server, user) == 3  # nothing happens before QUIT
    # The connection dropped without QUIT: the UPDATE state never came, nothing is deleted.
    assert wait_for(lambda: _stat(pop3_server, user) == 3)
    with login(pop3_server, user) as c:
        c.ok("DELE 2")
        assert c.ok("QUIT").startswith(b"+OK")
        assert c.closed()
    assert inbox_count(pop3_server, user) == 2
    with login(pop3_server, user) as c:
        body = c.multi("TOP 1 0") + c.multi("TOP 2 0")
        assert b"Subject: m0" in body and b"Subject: m2" in body and b"Subject: m1" not in body


def _stat(server: ServerProcess, user: str) -> int | None:
    with Raw(server.port("pop3")) as c:
        c.ok(f"USER {user}")
        if not c.cmd(f"PASS {PASSWORD}").startswith(b"+OK"):
            return None
        n = int(c.ok("STAT").split()[1])
        c.ok("QUIT")
        return n


def test_rset_undeletes(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, message(subject="one"), message(subject="two"))
    with login(pop3_server, user) as c:
        c.ok("DELE 1")
        c.ok("DELE 2")
        assert c.ok("STAT").startswith(b"+OK 0 0")
        assert c.ok("RSET").startswith(b"+OK 2 messages")
        assert c.ok("STAT").startswith(b"+OK 2 ")
        assert b"Subject: one" in c.multi("RETR 1")
        c.ok("QUIT")
    assert inbox_count(pop3_server, user) == 2


def test_uidl_is_stable_across_sessions(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, *(message(subject=f"u{i}") for i in range(3)))
    with login(pop3_server, user) as c:
        first = dict(line.split(b" ") for line in stuffed_lines(c.multi("UIDL")))
        assert len(set(first.values())) == 3
        for uid in first.values():
            assert re.fullmatch(rb"[\x21-\x7e]{1,70}", uid)
        assert c.ok("UIDL 2") == b"+OK 2 " + first[b"2"] + b"\r\n"
        c.ok("DELE 1")
        assert b"1 " + first[b"1"] not in c.multi("UIDL")
        c.ok("QUIT")
    put(pop3_server, user, message(subject="u3"))
    with login(pop3_server, user) as c:
        again = dict(line.split(b" ") for line in stuffed_lines(c.multi("UIDL")))
        # Renumbered, same names; the new message has a name never used before.
        assert again[b"1"] == first[b"2"] and again[b"2"] == first[b"3"]
        assert again[b"3"] not in first.values()
        assert b"Subject: u1" in c.multi("TOP 1 0")


def test_top_sends_the_header_and_exactly_n_body_lines(pop3_server: ServerProcess, user: str) -> None:
    header = b"From: a@example.org\r\nSubject: top\r\nX-Folded: one\r\n two\r\n"
    body_lines = [b"line 1", b".line 2 with a dot", b"", b"line 4", b".", b"line 6"]
    data = header + b"\r\n" + b"".join(x + b"\r\n" for x in body_lines)
    put(pop3_server, user, data, b"Subject: header only\r\n")
    with login(pop3_server, user) as c:
        for n in range(len(body_lines) + 2):
            got = c.multi(f"TOP 1 {n}")
            expect = header + b"\r\n" + b"".join(x + b"\r\n" for x in body_lines[:n])
            assert unstuff(got) == expect, n
        assert c.multi("TOP 1 4") == header + b"\r\nline 1\r\n..line 2 with a dot\r\n\r\nline 4\r\n"
        assert c.multi("TOP 2 3") == b"Subject: header only\r\n"
        assert c.err("TOP 1")
        assert c.err("TOP 1 -1")
        assert c.err("TOP 1 x")
        assert c.err("TOP 3 0")
        assert c.err("TOP 1 1 1")


def test_byte_stuffing(pop3_server: ServerProcess, user: str) -> None:
    body = b".\r\n..\r\n.hidden\r\nend.\r\n. \r\n"
    data = b"Subject: dots\r\n\r\n" + body
    put(pop3_server, user, data)
    with login(pop3_server, user) as c:
        assert c.multi("RETR 1") == b"Subject: dots\r\n\r\n..\r\n...\r\n..hidden\r\nend.\r\n.. \r\n"
    p = poplib.POP3("127.0.0.1", pop3_server.port("pop3"), timeout=10)
    p.user(user)
    p.pass_(PASSWORD)
    assert p.retr(1)[1] == [b"Subject: dots", b"", b".", b"..", b".hidden", b"end.", b". "]
    p.quit()


def test_large_message_with_dots_at_chunk_boundaries(pop3_server: ServerProcess, user: str) -> None:
    # The server reads the file in 64 KiB chunks: lines beginning with "." right at and around each boundary,
    # a line longer than a chunk, and a last line without CRLF.
    head = b"Subject: big\r\n\r\n"
    lines = []
    size = len(head)
    rng = random.Random(7)
    while size < 3 * 1024 * 1024:
        boundary = 65536 - size % 65536
        if boundary > 8:
            line = b"x" * (boundary - 2) + b"\r\n"  # the next line starts exactly at a chunk boundary
        else:
            line = b"." * rng.randint(1, 3) + b"y" * rng.randint(0, 200) + b"\r\n"
        lines.append(line)
        size += len(line)
        lines.append(b".starts with a dot\r\n")
        size += len(lines[-1])
    lines.append(b"z" * 100_000 + b"\r\n")
    data = head + b"".join(lines) + b".last line without CRLF"
    put(pop3_server, user, data)
    with login(pop3_server, user) as c:
        assert c.ok("LIST 1") == b"+OK 1 %d\r\n" % len(data)
        got = c.multi("RETR 1")
        assert unstuff(got) == data + b"\r\n"
        assert got.count(b"\r\n..") == data.count(b"\r\n.")


def test_pipelined_commands_are_answered_in_order(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, message(subject="p1"), message(subject="p2"))
    with Raw(pop3_server.port("pop3")) as c:
        c.send(f"USER {user}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST\r\nRETR 2\r\nNOOP\r\nQUIT\r\n")
        assert c.line().startswith(b"+OK")
        assert c.line().startswith(b"+OK")
        assert c.line().startswith(b"+OK 2 ")
        assert c.line().startswith(b"+OK")
        assert len(stuffed_lines(c.body())) == 2
        assert c.line().startswith(b"+OK")
        assert b"Subject: p2" in c.body()
        assert c.line().startswith(b"+OK")
        assert c.line().startswith(b"+OK")
        assert c.closed()


# --- POP3 and IMAP on the same INBOX ---------------------------------------------------------------------------


def test_pop3_deletions_are_expunged_for_imap_sessions(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, *(message(subject=f"e{i}") for i in range(3)))
    watcher = imap(pop3_server, user)
    try:
        with login(pop3_server, user) as c:
            c.ok("DELE 2")
            c.ok("QUIT")
        deadline = time.monotonic() + 5
        untagged: list[bytes] = []
        while time.monotonic() < deadline:
            watcher.noop()
            untagged = watcher.untagged_responses.get("EXPUNGE", [])
            if untagged:
                break
            time.sleep(0.05)
        assert untagged == [b"2"]
        _, data = watcher.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        subjects = [d[1] for d in data if isinstance(d, tuple)]
        assert subjects == [b"Subject: e0\r\n\r\n", b"Subject: e2\r\n\r\n"]
    finally:
        watcher.logout()


def test_mail_added_meanwhile_shows_in_the_next_session(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, message(subject="old"))
    with login(pop3_server, user) as c:
        assert c.ok("STAT").startswith(b"+OK 1 ")
        put(pop3_server, user, message(subject="by imap"))
        send_smtp(pop3_server, user, message(subject="by smtp", to=user))
        # RFC 1939: the maildrop is fixed for the session.
        assert c.ok("STAT").startswith(b"+OK 1 ")
        assert c.err("RETR 2")
        c.ok("QUIT")
    with login(pop3_server, user) as c:
        assert c.ok("STAT").startswith(b"+OK 3 ")
        subjects = [re.search(rb"Subject: (.*)\r\n", c.multi(f"TOP {i} 0")) for i in (1, 2, 3)]
        assert [m.group(1) for m in subjects if m] == [b"old", b"by imap", b"by smtp"]


def test_message_expunged_over_imap_during_the_session(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, message(subject="keep"), message(subject="gone"))
    with login(pop3_server, user) as c:
        other = imap(pop3_server, user)
        try:
            other.store("2", "+FLAGS", "(\\Deleted)")
            other.expunge()
        finally:
            other.logout()
        assert c.err("RETR 2")
        assert b"Subject: keep" in c.multi("RETR 1")
        c.ok("DELE 2")
        assert c.ok("QUIT").startswith(b"+OK")
    assert inbox_count(pop3_server, user) == 1


def test_retr_marks_seen_and_top_does_not(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, *(message(subject=f"s{i}") for i in range(4)))
    with login(pop3_server, user) as c:
        c.multi("RETR 1")  # dropped without QUIT: not seen
    assert wait_for(lambda: _stat(pop3_server, user) == 4)
    assert not any("\\Seen" in f for f in imap_flags(pop3_server, user))
    with login(pop3_server, user) as c:
        c.multi("TOP 1 3")
        c.multi("RETR 2")
        c.ok("RSET")  # forgets the RETR of message 2 (as it forgets DELE)...
        c.multi("RETR 3")  # ...but not what comes after
        c.multi("TOP 4 100")  # the whole message, still not RETR
        c.ok("QUIT")
    flags = imap_flags(pop3_server, user)
    assert ["\\Seen" in f for f in flags] == [False, False, True, False], flags


def can_login(server: ServerProcess, user: str, key: str = "pop3") -> bool:
    with Raw(server.port(key), tls=key == "pop3s") as c:
        c.ok(f"USER {user}")
        return c.cmd(f"PASS {PASSWORD}").startswith(b"+OK")


def test_reset_in_the_middle_of_retr(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, b"Subject: big\r\n\r\n" + (b"0123456789abcdef" * 60 + b"\r\n") * 4000)
    for _ in range(3):
        assert wait_for(lambda: can_login(pop3_server, user))
        c = Raw(pop3_server.port("pop3"), rcvbuf=4096)
        c.login(user)
        c.send("RETR 1\r\n")
        c.line()
        c.sock.recv(10000)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST
    assert wait_for(lambda: can_login(pop3_server, user))
    assert no_internal_errors(pop3_server)


def test_per_address_connection_limit(pop3_server: ServerProcess) -> None:
    clients = [
        Raw(pop3_server.port(k), tls=k == "pop3s", source="127.0.0.10") for k in ["pop3", "pop3s"] * 10
    ]
    try:
        assert all(c.greeting.startswith(b"+OK") for c in clients)
        with socket.create_connection(("127.0.0.1", pop3_server.port("pop3")), 5, ("127.0.0.10", 0)) as s:
            assert s.recv(200).startswith(b"-ERR [SYS/TEMP]")
        with Raw(pop3_server.port("pop3"), source="127.0.0.11") as other:
            assert other.greeting.startswith(b"+OK")
    finally:
        for c in clients:
            c.close()
    assert wait_for(lambda: Raw(pop3_server.port("pop3"), source="127.0.0.10").greeting.startswith(b"+OK"))


# --- idle timeout (strict server: 1.5 s) ------------------------------------------------------------------------


def test_idle_timeout_closes_and_deletes_nothing(strict_server: ServerProcess) -> None:
    user = new_user(strict_server)
    with Raw(strict_server.port("pop3")) as c:
        started = time.monotonic()
        assert c.closed(timeout=10)
        assert 1.4 < time.monotonic() - started < 5
        assert c.buf.startswith(b"-ERR")
    with Raw(strict_server.port("pop3s"), tls=True) as c:
        c.login(user)
        # Activity keeps the session: three commands 1 s apart outlive the 1.5 s timeout.
        for _ in range(3):
            time.sleep(1.0)
            c.ok("NOOP")
        assert c.closed(timeout=10)
        assert c.buf.startswith(b"-ERR")


def test_idle_timeout_after_dele_keeps_the_message(strict_server: ServerProcess) -> None:
    user = new_user(strict_server)
    deliver(strict_server, user, message(subject="timeout"))
    with Raw(strict_server.port("pop3s"), tls=True) as c:
        c.login(user)
        c.ok("DELE 1")
        assert c.closed(timeout=10)
    with Raw(strict_server.port("pop3s"), tls=True) as c:
        c.login(user)
        assert c.ok("STAT").startswith(b"+OK 1 ")


def test_a_client_that_stops_reading_is_dropped(strict_server: ServerProcess) -> None:
    user = new_user(strict_server)
    deliver(strict_server, user, b"Subject: huge\r\n\r\n" + (b"z" * 998 + b"\r\n") * 24_000)
    c = Raw(strict_server.port("pop3s"), tls=True, rcvbuf=4096)
    c.login(user)
    c.send("RETR 1\r\n")  # and never read it
    time.sleep(1.0)
    assert not can_login(strict_server, user, "pop3s")  # [IN-USE]
    # The server gives up on the writer after the idle timeout, and the maildrop is free again.
    assert wait_for(lambda: can_login(strict_server, user, "pop3s"), timeout=8)
    c.close()


# --- malformed input ----------------------------------------------------------------------------------------------


MALFORMED = [
    b"",
    b" ",
    b" NOOP",
    b"NOOP\x00",
    b"\xff\xfe\xfd",
    b"XYZZY",
    b"RETR",
    b"RETR x",
    b"RETR 0",
    b"RETR -1",
    b"RETR 99",
    b"RETR 99999999999999999999",
    b"RETR 1 2",
    b"RETR \xc2\xb2",  # a Unicode digit that is no ASCII digit
    b"RETR \xd9\xa1",
    b"TOP \xd9\xa1 1",
    b"TOP 1 \xc2\xb2",
    b"TOP 1 \xd9\xa1",
    b"LIST x",
    b"LIST \xc2\xb2",
    b"UIDL 1 1",
    b"DELE",
    b"STAT 1",
    b"USER x",
    b"PASS x",
    b"STLS",
    b"AUTH PLAIN",
    b"\tNOOP",
]


def test_malformed_commands_get_err(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, message())
    for start in range(0, len(MALFORMED), 10):  # 20 errors end a session
        with login(pop3_server, user) as c:
            for line in MALFORMED[start : start + 10]:
                reply = c.cmd(line)
                assert reply.startswith(b"-ERR"), (line, reply)
                assert RESPONSE.match(reply), reply
            c.ok("NOOP")
    with Raw(pop3_server.port("pop3")) as c:
        for line in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"PASS x", b"XYZZY"):
            assert c.cmd(line).startswith(b"-ERR"), line
        c.login(user)
    assert no_internal_errors(pop3_server)


def test_line_too_long(pop3_server: ServerProcess, user: str) -> None:
    with Raw(pop3_server.port("pop3")) as c:
        assert c.cmd(b"USER " + b"x" * 5000).startswith(b"-ERR Line too long")
        c.login(user)
        # Sent in pieces, so the server sees the limit pass before the line ends.
        c.send(b"NOOP " + b"y" * 1500)
        time.sleep(0.1)
        c.send(b"y" * 100_000)
        time.sleep(0.1)
        assert c.cmd(b"").startswith(b"-ERR Line too long")
        c.ok("NOOP")
        assert c.ok("STAT")


def test_too_many_errors_end_the_session(pop3_server: ServerProcess, user: str) -> None:
    with login(pop3_server, user) as c:
        c.send(b"XYZZY\r\n" * 30)
        assert c.closed()
        assert c.buf.count(b"-ERR") >= 20 and c.buf.count(b"-ERR") < 30


VERBS = ["USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "STAT", "LIST", "RETR", "DELE", "RSET", "TOP", "UIDL",
         "NOOP", "XTND", "LAST", "quit"]  # fmt: skip


def fuzz_line(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return (
            bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
            .replace(b"\n", b"")
            .replace(b"\r", b"")
        )
    verb = rng.choice(VERBS).encode()
    if rng.random() < 0.2:
        verb = verb.lower()
    args = []
    for _ in range(rng.randrange(4)):
        args.append(
            rng.choice(
                [
                    str(rng.randrange(-3, 12)).encode(),
                    str(rng.randrange(10**30)).encode(),
                    b"PLAIN",
                    b"*",
                    b"=",
                    base64.b64encode(bytes(rng.randrange(256) for _ in range(rng.randrange(20)))),
                    "²٣".encode(),
                    b"\x00\x01",
                    b"x" * rng.randrange(300),
                ]
            )
        )
    sep = rng.choice([b" ", b"  ", b"\t"])
    return sep.join([verb, *args])


def test_fuzzed_lines_never_crash_the_session(pop3_server: ServerProcess, user: str) -> None:
    put(pop3_server, user, *(message(subject=f"f{i}", body=".x\r\ny") for i in range(5)))
    rng = random.Random(1939)

    def connect() -> Raw:
        c = Raw(pop3_server.port("pop3"), source="127.0.0.9")
        if rng.random() < 0.8:
            c.login(user)
        return c

    c = connect()
    sessions = 1
    for _ in range(200):
        line = fuzz_line(rng)
        try:
            reply = c.cmd(line)
            if reply == b"+ \r\n":
                reply = c.cmd(b"*")
            assert RESPONSE.match(reply), (line, reply)
            verb = line.split(b" ")[0].upper()
            has_arg = len(line.split(b" ")) > 1 and line.split(b" ")[1] != b""
            if reply.startswith(b"+OK") and (
                verb in (b"CAPA", b"RETR", b"TOP") or (verb in (b"LIST", b"UIDL", b"AUTH") and not has_arg)
            ):
                c.body()
            if (verb == b"QUIT" and reply.startswith(b"+OK")) or reply.startswith(b"-ERR Too many errors"):
                raise EOFError
            if verb == b"STLS" and reply.startswith(b"+OK"):
                c.sock = no_verify().wrap_socket(c.sock)
        except (EOFError, OSError):
            c.close()
            c = connect()
            sessions += 1
    c.close()
    assert sessions > 5
    with login(pop3_server, user) as c2:
        assert c2.ok("NOOP")
    assert no_internal_errors(pop3_server)


# --- real clients: fetchmail and getmail ---------------------------------------------------------------------


def run_fetchmail(server: ServerProcess, user: str, work: Path, ssl: bool, keep: bool) -> list[bytes]:
    """One fetchmail poll (pop3s, or STLS on pop3) into files; returns the messages it delivered this time."""
    require_peer("fetchmail")
    out = work / "out"
    out.mkdir(exist_ok=True)
    before = set(out.iterdir())
    port = server.port("pop3s" if ssl else "pop3")
    options = ("ssl " if ssl else "sslproto tls1.2+ ") + "no sslcertck " + ("keep" if keep else "nokeep")
    rc = work / "fetchmailrc"
    rc.write_text(
        f"set no bouncemail\npoll 127.0.0.1 protocol pop3 port {port} {'uidl' if keep else ''}\n"
        f'  user "{user}" password "{PASSWORD}" is root here {options}\n'
        f'  mda "cat > {out}/m.$$"\n'
    )
    rc.chmod(0o600)
    r = subprocess.run(
        ["fetchmail", "-f", str(rc), "--idfile", str(work / "ids"), "--nodetach", "--invisible"],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(work)},
        timeout=60,
    )
    # 0: mail retrieved, 1: no mail (fetchmail(1) EXIT CODES)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return [p.read_bytes() for p in sorted(set(out.iterdir()) - before, key=lambda p: p.stat().st_mtime_ns)]


@pytest.fixture
def getmail_dir() -> Iterator[Path]:
    """getmail refuses to deliver as root: its Maildir belongs to nobody (outside pytest's root-only tmp)."""
    work = Path(tempfile.mkdtemp(prefix="homemail-getmail-"))
    yield work
    shutil.rmtree(work, ignore_errors=True)


def run_getmail(server: ServerProcess, user: str, work: Path, ssl: bool, delete: bool) -> list[bytes]:
    """One getmail run into a Maildir; returns the messages it delivered this time."""
    require_peer("getmail")
    maildir = work / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "-R", "nobody:nogroup", str(work)], check=True)
    before = set((maildir / "new").iterdir())
    retriever = "SimplePOP3SSLRetriever" if ssl else "SimplePOP3Retriever"
    rc = work / "getmailrc"
    rc.write_text(
        f"[retriever]\ntype = {retriever}\nserver = 127.0.0.1\nport = {server.port('pop3s' if ssl else 'pop3')}\n"
        f"username = {user}\npassword = {PASSWORD}\n\n"
        f"[destination]\ntype = Maildir\npath = {maildir}/\nuser = nobody\n\n"
        f"[options]\ndelete = {str(delete).lower()}\nread_all = false\nverbose = 0\n"
    )
    r = subprocess.run(
        ["getmail", "--getmaildir", str(work), "--rcfile", str(rc)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    new = sorted(set((maildir / "new").iterdir()) - before)
    return [p.read_bytes() for p in new]


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def subjects(messages: list[bytes]) -> list[str]:
    return sorted(m.group(1).decode() for x in messages if (m := re.search(rb"\nSubject: (.*)\n", x)))


@pytest.mark.parametrize("ssl", [True, False], ids=["pop3s", "stls"])
def test_fetchmail_deletes_after_retrieval(
    pop3_server: ServerProcess, user: str, tmp_path: Path, ssl: bool
) -> None:
    msgs = [message(subject=f"fm{i}", body=f".line\r\nbody {i}") for i in range(3)]
    put(pop3_server, user, *msgs)
    got = run_fetchmail(pop3_server, user, tmp_path, ssl=ssl, keep=False)
    assert subjects(got) == ["fm0", "fm1", "fm2"]
    for m in msgs:
        assert any(g.endswith(lf(m)) for g in got), m
    assert inbox_count(pop3_server, user) == 0
    assert run_fetchmail(pop3_server, user, tmp_path, ssl=ssl, keep=False) == []


def test_fetchmail_keep_with_uidl_fetches_only_new_mail(
    pop3_server: ServerProcess, user: str, tmp_path: Path
) -> None:
    put(pop3_server, user, message(subject="k1"), message(subject="k2"))
    assert subjects(run_fetchmail(pop3_server, user, tmp_path, ssl=False, keep=True)) == ["k1", "k2"]
    put(pop3_server, user, message(subject="k3"))
    assert subjects(run_fetchmail(pop3_server, user, tmp_path, ssl=False, keep=True)) == ["k3"]
    assert run_fetchmail(pop3_server, user, tmp_path, ssl=False, keep=True) == []
    assert inbox_count(pop3_server, user) == 3


def test_getmail_deletes_after_retrieval(pop3_server: ServerProcess, user: str, getmail_dir: Path) -> None:
    msgs = [message(subject=f"gm{i}", body=".\r\n..\r\nend") for i in range(3)]
    put(pop3_server, user, *msgs)
    got = run_getmail(pop3_server, user, getmail_dir, ssl=False, delete=True)
    assert subjects(got) == ["gm0", "gm1", "gm2"]
    for m in msgs:
        assert any(g.endswith(lf(m)) for g in got)
    assert inbox_count(pop3_server, user) == 0


def test_getmail_leaves_mail_and_fetches_only_new(
    pop3_server: ServerProcess, user: str, getmail_dir: Path
) -> None:
    put(pop3_server, user, message(subject="g1"), message(subject="g2"))
    assert subjects(run_getmail(pop3_server, user, getmail_dir, ssl=True, delete=False)) == ["g1", "g2"]
    send_smtp(pop3_server, user, message(subject="g3", to=user))
    assert subjects(run_getmail(pop3_server, user, getmail_dir, ssl=True, delete=False)) == ["g3"]
    assert run_getmail(pop3_server, user, getmail_dir, ssl=True, delete=False) == []
    assert inbox_count(pop3_server, user) == 3
    # getmail retrieves with RETR: the messages are \Seen for IMAP now.
    assert all("\\Seen" in f for f in imap_flags(pop3_server, user))
