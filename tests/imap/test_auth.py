"""Authentication over real sockets: LOGIN (RFC 9051 6.2.3), AUTHENTICATE PLAIN and LOGIN with and without
SASL-IR (RFC 9051 6.2.2, RFC 4959, RFC 4616), the failure delay and the per-IP and per-account throttles,
LOGINDISABLED before STARTTLS (RFC 9051 6.2.1, 7.2.2; RFC 5530 PRIVACYREQUIRED), STARTTLS and implicit TLS, and
that an account reaches only its own mailboxes.

Each test speaks from its own loopback address (127.0.x.y), so one test's failed logins do not throttle another's.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator

import pytest

from harness import ServerProcess, no_verify
from imap.imaputil import DOMAIN, PASSWORD, add_accounts, message, start_server
from imap.rawclient import Raw, RawFrom, new_source

FAILURE_DELAY = 0.15
MAX_FAILURES = 3
FAILURE_WINDOW = 60.0  # the window's end is tested with a fake clock, below
_users = itertools.count(1)


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Small throttle settings; cleartext logins allowed on loopback."""
    srv = start_server(
        tmp_path_factory.mktemp("auth"),
        auth={
            "allow_plaintext_on_loopback": True,
            "failure_delay": FAILURE_DELAY,
            "max_failures": MAX_FAILURES,
            "failure_window": FAILURE_WINDOW,
        },
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No cleartext password without TLS, even on loopback."""
    srv = start_server(
        tmp_path_factory.mktemp("strict"),
        auth={"allow_plaintext_on_loopback": False, "failure_delay": FAILURE_DELAY},
    )
    yield srv
    srv.stop()


@pytest.fixture
def user(server: ServerProcess) -> str:
    address = f"auth{next(_users)}@{DOMAIN}"
    add_accounts(server, [address])
    return address


@pytest.fixture
def client(server: ServerProcess) -> Raw:
    return RawFrom(server.port("imap"), new_source())


def logged_in(tagged: bytes, tag: bytes) -> None:
    # RFC 9051 6.2.3 / 6.2.2: the tagged OK may carry the new capabilities; it does here.
    assert tagged.startswith(tag + b" OK [CAPABILITY IMAP4rev1 IMAP4rev2 "), tagged
    assert tagged.endswith(b"] Logged in\r\n"), tagged
    caps = tagged.split(b"]")[0].split()
    assert b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps
    assert not any(c.startswith(b"AUTH=") for c in caps)


def authenticated(c: Raw) -> None:
    """The session is in the authenticated state."""
    _, tagged = c.cmd("SELECT INBOX")
    assert tagged.endswith(b"OK [READ-WRITE] SELECT completed\r\n"), tagged


def not_authenticated(c: Raw) -> None:
    _, tagged = c.cmd("SELECT INBOX")
    assert tagged.endswith(b" BAD SELECT is not allowed in the not authenticated state\r\n"), tagged


FAILED = b" NO [AUTHENTICATIONFAILED] authentication failed\r\n"


# --- LOGIN -------------------------------------------------------------------------------------------------


def test_login_argument_forms(server: ServerProcess, user: str) -> None:
    source = new_source()
    forms = [
        f"LOGIN {user} {PASSWORD}",  # atoms
        f'LOGIN "{user}" "{PASSWORD}"',  # quoted
        f"LOGIN {{{len(user)}}}\r\n{user} {{{len(PASSWORD)}}}\r\n{PASSWORD}",  # synchronising literals
        f"LOGIN {{{len(user)}+}}\r\n{user} {{{len(PASSWORD)}+}}\r\n{PASSWORD}",  # LITERAL+
        f"login {user.upper()} {PASSWORD}",  # command name and address in any case
    ]
    for form in forms:
        c = RawFrom(server.port("imap"), source)
        _, tagged = c.cmd(form)
        logged_in(tagged, b"t1")
        authenticated(c)
        # LOGIN again in the authenticated state is a BAD (RFC 9051 6.2: not-authenticated state only).
        _, tagged = c.cmd(f"LOGIN {user} {PASSWORD}")
        assert tagged == b"t3 BAD LOGIN is not allowed in the selected state\r\n"
        c.close()


def test_login_syntax_errors(client: Raw, user: str) -> None:
    for n, bad in enumerate(
        [f"LOGIN {user}", "LOGIN", f"LOGIN {user} {PASSWORD} extra", f'LOGIN "{user} x'], 1
    ):
        _, tagged = client.cmd(bad)
        assert tagged.startswith(b"t%d BAD syntax error: " % n), (bad, tagged)
    not_authenticated(client)


def test_login_password_with_specials_and_utf8(server: ServerProcess) -> None:
    address = f"special{next(_users)}@{DOMAIN}"
    password = 'p"a\\ss wörd'
    add_accounts(server, [address], password)
    source = new_source()
    c = RawFrom(server.port("imap"), source)
    # quoted-specials escaped; UTF-8 in a quoted string (RFC 9051 9: QUOTED-CHAR includes UTF8-2)
    _, tagged = c.cmd('LOGIN "' + address + '" "p\\"a\\\\ss wörd"')
    logged_in(tagged, b"t1")
    c = RawFrom(server.port("imap"), source)
    raw = password.encode()
    _, tagged = c.cmd(b"LOGIN " + address.encode() + b" {%d}\r\n" % len(raw) + raw)
    logged_in(tagged, b"t1")
    c = RawFrom(server.port("imap"), source)
    _, tagged = c.cmd("AUTHENTICATE PLAIN " + b64(b"\0" + address.encode() + b"\0" + raw))
    logged_in(tagged, b"t1")


def test_wrong_password_is_delayed(client: Raw, user: str) -> None:
    for n, args in enumerate(
        [f'{user} "wrong"', f'nobody@{DOMAIN} "{PASSWORD}"', f'nodomain "{PASSWORD}"'], 1
    ):
        start = time.monotonic()
        _, tagged = client.cmd("LOGIN " + args)
        elapsed = time.monotonic() - start
        assert tagged == b"t%d" % n + FAILED
        # RFC 9051 6.2.3 / 11.1: a failed login is answered after a delay.
        assert elapsed >= FAILURE_DELAY * 0.9, elapsed
    not_authenticated(client)


# --- AUTHENTICATE --------------------------------------------------------------------------------------------------


def test_authenticate_plain_with_initial_response(client: Raw, user: str) -> None:
    _, tagged = client.cmd("AUTHENTICATE PLAIN " + b64(f"\0{user}\0{PASSWORD}"))
    logged_in(tagged, b"t1")
    authenticated(client)
    _, tagged = client.cmd("AUTHENTICATE PLAIN " + b64(f"\0{user}\0{PASSWORD}"))
    assert tagged == b"t3 BAD AUTHENTICATE is not allowed in the selected state\r\n"


def test_authenticate_plain_without_initial_response(client: Raw, user: str) -> None:
    client.send(b"a1 authenticate plain\r\n")
    # An empty challenge: "+" SP and nothing (RFC 9051 7.5: continue-req = "+" SP (resp-text / base64) CRLF).
    assert client.response() == b"+ \r\n"
    # An authorization identity equal to the login is accepted (RFC 4616 2).
    client.send(b64(f"{user}\0{user}\0{PASSWORD}").encode() + b"\r\n")
    tagged = client.response()
    logged_in(tagged, b"a1")
    authenticated(client)


def test_authenticate_plain_other_authzid_refused(client: Raw, user: str) -> None:
    _, tagged = client.cmd("AUTHENTICATE PLAIN " + b64(f"postmaster@{DOMAIN}\0{user}\0{PASSWORD}"))
    assert tagged == b"t1 NO [AUTHORIZATIONFAILED] authorization identity must be the login\r\n"
    not_authenticated(client)


def test_authenticate_login_with_and_without_initial_response(server: ServerProcess, user: str) -> None:
    c = RawFrom(server.port("imap"), new_source())
    c.send(b"a AUTHENTICATE LOGIN\r\n")
    assert c.response() == b"+ " + b64("Username:").encode() + b"\r\n"
    c.send(b64(user).encode() + b"\r\n")
    assert c.response() == b"+ " + b64("Password:").encode() + b"\r\n"
    c.send(b64(PASSWORD).encode() + b"\r\n")
    logged_in(c.response(), b"a")
    authenticated(c)
    # SASL-IR: the user name comes with the command; only the password is asked for.
    c = RawFrom(server.port("imap"), new_source())
    c.send(b"b AUTHENTICATE LOGIN " + b64(user).encode() + b"\r\n")
    assert c.response() == b"+ " + b64("Password:").encode() + b"\r\n"
    c.send(b64(PASSWORD).encode() + b"\r\n")
    logged_in(c.response(), b"b")


def test_authenticate_cancelled(client: Raw, user: str) -> None:
    # RFC 9051 6.2.2: a line of a single "*" cancels; the server answers with a tagged BAD.
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.response() == b"+ \r\n"
    client.send(b"*\r\n")
    assert client.response() == b"a BAD authentication cancelled\r\n"
    client.send(b"b AUTHENTICATE LOGIN\r\n")
    client.response()
    client.send(b64(user).encode() + b"\r\n")
    client.response()
    client.send(b"*\r\n")
    assert client.response() == b"b BAD authentication cancelled\r\n"
    not_authenticated(client)
    # The session is still usable: a later attempt succeeds.
    _, tagged = client.cmd(f"LOGIN {user} {PASSWORD}")
    logged_in(tagged, b"t2")


def test_authenticate_bad_base64(client: Raw, user: str) -> None:
    # RFC 9051 6.2.2: characters outside the base64 alphabet or a non-terminal "=" make a BAD.
    for n, ir in enumerate(["!!!!", "AGE=AGE=", "abc", "AG\x01E"], 1):
        _, tagged = client.cmd("AUTHENTICATE PLAIN " + ir)
        assert tagged.startswith(b"t%d BAD " % n), (ir, tagged)
    for tag, response in [(b"x", b"****"), (b"y", b"AGE=AGE="), (b"z", b"a b")]:
        client.send(tag + b" AUTHENTICATE PLAIN\r\n")
        assert client.response() == b"+ \r\n"
        client.send(response + b"\r\n")
        assert client.response() == tag + b" BAD invalid base64 in the SASL response\r\n"
    not_authenticated(client)


def test_authenticate_malformed_and_unknown(client: Raw, user: str) -> None:
    _, tagged = client.cmd("AUTHENTICATE PLAIN " + b64(f"{user}\0{PASSWORD}"))
    assert tagged == b"t1 BAD malformed PLAIN response\r\n"
    _, tagged = client.cmd("AUTHENTICATE PLAIN =")  # RFC 4959: "=" is an empty initial response
    assert tagged == b"t2 BAD malformed PLAIN response\r\n"
    _, tagged = client.cmd("AUTHENTICATE CRAM-MD5")
    assert tagged == b"t3 NO [CANNOT] unsupported mechanism CRAM-MD5\r\n"
    _, tagged = client.cmd("AUTHENTICATE")
    assert tagged.startswith(b"t4 BAD syntax error")
    not_authenticated(client)


def test_authenticate_wrong_password_is_delayed(client: Raw, user: str) -> None:
    start = time.monotonic()
    _, tagged = client.cmd("AUTHENTICATE PLAIN " + b64(f"\0{user}\0wrong"))
    assert tagged == b"t1" + FAILED
    assert time.monotonic() - start >= FAILURE_DELAY * 0.9
    client.send(b"a AUTHENTICATE LOGIN " + b64(user).encode() + b"\r\n")
    client.response()
    start = time.monotonic()
    client.send(b64("wrong").encode() + b"\r\n")
    assert client.response() == b"a" + FAILED
    assert time.monotonic() - start >= FAILURE_DELAY * 0.9
    not_authenticated(client)


# --- throttling -------------------------------------------------------------------------------------------------


def test_throttle_per_ip(server: ServerProcess, user: str) -> None:
    source, other = new_source(), new_source()
    c = RawFrom(server.port("imap"), source)
    # Failures for different (unknown) accounts from one address: only the address's count reaches the limit.
    for n in range(MAX_FAILURES):
        _, tagged = c.cmd(f'LOGIN "ghost{n}@{DOMAIN}" "x"')
        assert tagged == b"t%d" % (n + 1) + FAILED
    # From that address even the right password is refused, after the delay, on a new connection too.
    _, tagged = c.cmd(f"LOGIN {user} {PASSWORD}")
    assert tagged == b"t4" + FAILED
    d = RawFrom(server.port("imap"), source)
    t0 = time.monotonic()
    _, tagged = d.cmd("AUTHENTICATE PLAIN " + b64(f"\0{user}\0{PASSWORD}"))
    assert tagged == b"t1" + FAILED
    assert time.monotonic() - t0 >= FAILURE_DELAY * 0.9
    # Another address is not affected, and the account is not blocked.
    e = RawFrom(server.port("imap"), other)
    _, tagged = e.cmd(f"LOGIN {user} {PASSWORD}")
    logged_in(tagged, b"t1")


def test_throttle_per_account(server: ServerProcess, user: str) -> None:
    other_user = f"auth{next(_users)}@{DOMAIN}"
    add_accounts(server, [other_user])
    # One failure from each of several addresses: only the account's count reaches the limit.
    for _ in range(MAX_FAILURES):
        c = RawFrom(server.port("imap"), new_source())
        _, tagged = c.cmd(f"LOGIN {user} wrong")
        assert tagged == b"t1" + FAILED
    fresh = new_source()
    c = RawFrom(server.port("imap"), fresh)
    _, tagged = c.cmd(f"LOGIN {user} {PASSWORD}")
    assert tagged == b"t1" + FAILED
    _, tagged = c.cmd("AUTHENTICATE PLAIN " + b64(f"\0{user.upper()}\0{PASSWORD}"))
    assert tagged == b"t2" + FAILED
    # The address itself is fine: another account logs in from it.
    _, tagged = c.cmd(f"LOGIN {other_user} {PASSWORD}")
    logged_in(tagged, b"t3")


def test_throttle_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The window's end, with a fake clock: refused from the limit on, until the window since the first failure
    has passed; a success forgets nothing but what the caller forgets."""
    from homemail import auth

    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    t = auth.Throttle(limit=3, window=10.0, max_keys=2)
    for _ in range(2):
        t.fail("a")
        now[0] += 1
    assert not t.blocked("a")
    t.fail("a")
    assert t.blocked("a") and not t.blocked("b")
    now[0] = 1010.0
    assert t.blocked("a")  # 10 s after the first failure: still inside
    now[0] = 1010.5
    assert not t.blocked("a")
    t.fail("a")  # a new window starts with this failure
    assert not t.blocked("a")
    # The table is bounded: the oldest keys go first.
    t.fail("b")
    t.fail("c")
    assert set(t._failures) == {"b", "c"}
    t.forget("b")
    assert set(t._failures) == {"c"}


# --- TLS and cleartext rules ------------------------------------------------------------------------------------


def test_logindisabled_before_starttls(strict: ServerProcess) -> None:
    address = f"strict{next(_users)}@{DOMAIN}"
    add_accounts(strict, [address])
    c = Raw(strict.port("imap"))
    caps = c.greeting.split(b"]")[0].split()[3:]
    # RFC 9051 6.2.3 / 7.2.2: LOGINDISABLED, and no cleartext SASL mechanism, until TLS is on.
    assert b"LOGINDISABLED" in caps and b"STARTTLS" in caps
    assert not any(x.startswith(b"AUTH=") for x in caps)
    untagged, _ = c.cmd("CAPABILITY")
    assert untagged[0].split()[2:] == caps
    # RFC 5530 3: PRIVACYREQUIRED.
    _, tagged = c.cmd(f"LOGIN {address} {PASSWORD}")
    assert tagged == b"t2 NO [PRIVACYREQUIRED] LOGIN is disabled until TLS is active (STARTTLS)\r\n"
    # No continuation request for a mechanism that is not offered: the answer comes at once.
    c.send(b"a AUTHENTICATE PLAIN\r\n")
    assert c.response() == (
        b"a NO [PRIVACYREQUIRED] cleartext authentication is disabled until TLS is active\r\n"
    )
    _, tagged = c.cmd("AUTHENTICATE PLAIN " + b64(f"\0{address}\0{PASSWORD}"))
    assert tagged.startswith(b"t3 NO [PRIVACYREQUIRED]")
    _, tagged = c.cmd("AUTHENTICATE LOGIN")
    assert tagged.startswith(b"t4 NO [PRIVACYREQUIRED]")
    not_authenticated(c)
    # STARTTLS, then the same LOGIN works.
    _, tagged = c.cmd("STARTTLS")
    assert tagged == b"t6 OK Begin TLS negotiation now\r\n"
    c.sock = no_verify().wrap_socket(c.sock)
    untagged, _ = c.cmd("CAPABILITY")
    caps = untagged[0].split()
    assert b"AUTH=PLAIN" in caps and b"AUTH=LOGIN" in caps
    assert b"LOGINDISABLED" not in caps and b"STARTTLS" not in caps
    _, tagged = c.cmd("STARTTLS")
    assert tagged == b"t8 BAD TLS is already active\r\n"
    _, tagged = c.cmd(f"LOGIN {address} {PASSWORD}")
    logged_in(tagged, b"t9")
    authenticated(c)


def test_implicit_tls(strict: ServerProcess) -> None:
    address = f"strict{next(_users)}@{DOMAIN}"
    add_accounts(strict, [address])
    c = Raw(strict.port("imaps"), tls=True)
    caps = c.greeting.split(b"]")[0].split()[2:]
    assert b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps and b"STARTTLS" not in caps
    _, tagged = c.cmd("STARTTLS")
    assert tagged == b"t1 BAD TLS is already active\r\n"
    c.send(b"a AUTHENTICATE PLAIN\r\n")
    assert c.response() == b"+ \r\n"
    c.send(b64(f"\0{address}\0{PASSWORD}").encode() + b"\r\n")
    logged_in(c.response(), b"a")
    authenticated(c)


def test_commands_pipelined_after_starttls_are_not_run(strict: ServerProcess) -> None:
    address = f"strict{next(_users)}@{DOMAIN}"
    add_accounts(strict, [address])
    c = Raw(strict.port("imap"))
    # Cleartext bytes after STARTTLS in the same packet: an injection the server must drop (RFC 9051 6.2.1).
    c.send(b"a STARTTLS\r\nb LOGIN " + address.encode() + b" " + PASSWORD.encode() + b"\r\nc NOOP\r\n")
    assert c.response() == b"a OK Begin TLS negotiation now\r\n"
    assert c.buf == b""
    c.sock = no_verify().wrap_socket(c.sock)
    untagged, tagged = c.cmd("SELECT INBOX")
    assert untagged == [] and tagged == b"t1 BAD SELECT is not allowed in the not authenticated state\r\n"
    assert c.cmd("NOOP") == ([], b"t2 OK NOOP completed\r\n")


def test_starttls_with_arguments_or_after_login(server: ServerProcess, user: str) -> None:
    c = RawFrom(server.port("imap"), new_source())
    _, tagged = c.cmd("STARTTLS now")
    assert tagged.startswith(b"t1 BAD syntax error")
    c.login(user)
    _, tagged = c.cmd("STARTTLS")
    assert tagged == b"t3 BAD STARTTLS is not allowed in the authenticated state\r\n"


# --- isolation between accounts -----------------------------------------------------------------------------------


def test_accounts_see_only_their_own_mailboxes(server: ServerProcess, user: str) -> None:
    other = f"auth{next(_users)}@{DOMAIN}"
    add_accounts(server, [other])
    a = RawFrom(server.port("imap"), new_source())
    a.login(user)
    a.ok("CREATE Private")
    data = message(subject="secret")
    a.ok(b"APPEND INBOX {%d+}\r\n" % len(data) + data)
    a.ok(b"APPEND Private {%d+}\r\n" % len(data) + data)
    b = RawFrom(server.port("imap"), new_source())
    b.login(other)
    listed = b"".join(b.ok('LIST "" "*"'))
    assert b"Private" not in listed and user.encode() not in listed
    assert b.ok('LIST "" "%/%"') == []
    local = user.split("@")[0]
    names = [
        "Private",
        f"{user}/INBOX",
        f"{user}/Private",
        f"~{local}/INBOX",
        f"~{user}/INBOX",
        f"#users/{user}/INBOX",
        f"#shared/{user}/INBOX",
        f"Other Users/{user}/INBOX",
        f"user/{local}",
        f"user.{local}",
        f"../{user}/INBOX",
        f"/INBOX/../../{user}/INBOX",
        f"{user}",
        f"INBOX/../{user}",
    ]
    for name in names:
        quoted = '"' + name + '"'
        for cmd in ("SELECT", "EXAMINE"):
            _, tagged = b.cmd(f"{cmd} {quoted}")
            assert b" NO [NONEXISTENT] " in tagged, (cmd, name, tagged)
        _, tagged = b.cmd(f"STATUS {quoted} (MESSAGES)")
        assert b" NO [NONEXISTENT] " in tagged, (name, tagged)
        _, tagged = b.cmd(b"APPEND " + quoted.encode() + b" {%d+}\r\n" % len(data) + data)
        assert b" NO [TRYCREATE] " in tagged, (name, tagged)
    # Every spelling of INBOX is the account's own INBOX, which is empty.
    for name in ("INBOX", "inbox", "InBoX"):
        untagged, _ = b.cmd(f"EXAMINE {name}")
        assert b"* 0 EXISTS\r\n" in untagged, (name, untagged)
    untagged = b.ok("SEARCH ALL")
    assert untagged == [b"* SEARCH\r\n"]
    assert b.ok("UID FETCH 1:* UID") == []
    # The other account still has its messages.
    untagged = a.ok("STATUS Private (MESSAGES)")
    assert untagged == [b"* STATUS Private (MESSAGES 1)\r\n"]
