"""Authenticated submission (RFC 6409) over real sockets: STARTTLS before AUTH, implicit TLS, AUTH PLAIN, LOGIN
and SCRAM-SHA-256 (RFC 4954, 4616, 5802, 7677), failures and throttling, sender and From: ownership, message
fix-ups, DKIM signing and immediate local delivery.

Two servers: ``open_`` allows plaintext AUTH from loopback (the harness default), ``strict`` does not and throttles
after two failures; throttling is shown from distinct loopback source addresses.
"""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator

import pytest
import scramp
from delivery_helpers import (
    PASSWORD,
    Homemail,
    Raw,
    compose,
    dkim_signatures,
    marker,
    no_verify,
    parse,
    received_fields,
    start_all,
)

ALICE, BOB = "alice@sub.test", "bob@sub.test"
STRICT_USERS = [f"{u}@strict.test" for u in ("alice", "dave", "erin", "frank", "gina", "hugo")]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Homemail, Homemail]]:
    open_ = Homemail("127.0.0.50", "mail.sub.test", listeners=("submission", "submissions"))
    open_.provision(
        [ALICE, BOB],
        aliases={"sales@sub.test": [ALICE], "team@sub.test": [BOB], "@catch.test": [ALICE]},
        domains=["catch.test"],
    )
    open_.dkim_keygen("sub.test")
    strict = Homemail(
        "127.0.0.51",
        "mail.strict.test",
        listeners=("submission",),
        config={
            "auth": {
                "allow_plaintext_on_loopback": False,
                "max_failures": 2,
                "failure_window": "10m",
                "failure_delay": 0.05,
            }
        },
    )
    strict.provision(STRICT_USERS)
    try:
        start_all(open_, strict)
        yield open_, strict
    finally:
        open_.stop()
        strict.stop()


@pytest.fixture(scope="module")
def open_(servers: tuple[Homemail, Homemail]) -> Homemail:
    return servers[0]


@pytest.fixture(scope="module")
def strict(servers: tuple[Homemail, Homemail]) -> Homemail:
    return servers[1]


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def plain(user: str, password: str = PASSWORD) -> str:
    return b64(f"\0{user}\0{password}")


def authed(server: Homemail, user: str = ALICE, source: str | None = None) -> Raw:
    """A submission session logged in with AUTH PLAIN."""
    c = Raw(server.port("submission"), server.host, source=source)
    c.ehlo()
    code, text = c.cmd(f"AUTH PLAIN {plain(user)}")
    assert code == 235, (code, text)
    return c


def send_data(c: Raw, data: bytes) -> tuple[int, str]:
    code, text = c.cmd("DATA")
    assert code == 354, (code, text)
    c.send(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    return c.reply()


# --- TLS before AUTH -----------------------------------------------------------------------------------------


def test_strict_requires_starttls_before_auth(strict: Homemail) -> None:
    user = STRICT_USERS[0]
    with Raw(strict.port("submission"), strict.host) as c:
        code, text = c.ehlo()
        assert code == 250 and "STARTTLS" in text.split("\n")
        assert not any(line.startswith("AUTH") for line in text.split("\n")), text
        for command in (f"AUTH PLAIN {plain(user)}", "AUTH LOGIN", "AUTH SCRAM-SHA-256"):
            code, text = c.cmd(command)
            assert (code, text[:6]) == (538, "5.7.11"), (command, code, text)
        # Nothing goes without AUTH either.
        assert c.cmd(f"MAIL FROM:<{user}>")[0] == 530
        c.starttls()
        code, text = c.ehlo()
        assert "AUTH PLAIN LOGIN SCRAM-SHA-256" in text.split("\n"), text
        code, text = c.cmd(f"AUTH PLAIN {plain(user)}")
        assert (code, text[:5]) == (235, "2.7.0"), (code, text)
        assert c.cmd(f"MAIL FROM:<{user}>")[0] == 250


def test_strict_with_smtplib_starttls(strict: Homemail) -> None:
    user = STRICT_USERS[0]
    mark = marker()
    with smtplib.SMTP(strict.host, strict.port("submission"), timeout=30) as c:
        c.ehlo()
        assert not c.has_extn("auth")
        c.starttls(context=no_verify())
        c.ehlo()
        assert c.has_extn("auth")
        c.login(user, PASSWORD)
        c.sendmail(user, [user], compose(user, [user], mark))
    assert len(strict.with_marker(user, mark)) == 1


def test_open_server_offers_auth_on_loopback_without_tls(open_: Homemail) -> None:
    with Raw(open_.port("submission"), open_.host) as c:
        _, text = c.ehlo()
        assert "AUTH PLAIN LOGIN SCRAM-SHA-256" in text.split("\n")


def test_submissions_implicit_tls(open_: Homemail) -> None:
    mark = marker()
    with smtplib.SMTP_SSL(open_.host, open_.port("submissions"), context=no_verify(), timeout=30) as c:
        c.ehlo()
        assert "PLAIN" in c.esmtp_features["auth"]
        assert not c.has_extn("starttls")  # already encrypted
        c.login(ALICE, PASSWORD)
        c.sendmail(ALICE, [BOB], compose(ALICE, [BOB], mark))
    (message,) = open_.with_marker(BOB, mark)
    assert " with ESMTPSA (TLS" in received_fields(message)[0]


# --- mechanisms ----------------------------------------------------------------------------------------------


def test_auth_plain_and_login_with_smtplib(open_: Homemail) -> None:
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib.SMTP(open_.host, open_.port("submission"), timeout=30) as c:
            c.starttls(context=no_verify())
            c.ehlo()
            c.user, c.password = ALICE, PASSWORD
            method = c.auth_plain if mechanism == "PLAIN" else c.auth_login
            code, text = c.auth(mechanism, method)
            assert (code, text[:5]) == (235, b"2.7.0"), (mechanism, code, text)


def test_auth_without_initial_response(open_: Homemail) -> None:
    with Raw(open_.port("submission"), open_.host) as c:
        c.ehlo()
        assert c.cmd("AUTH PLAIN") == (334, "")
        assert c.cmd(plain(ALICE))[0] == 235
    with Raw(open_.port("submission"), open_.host) as c:
        c.ehlo()
        assert c.cmd("AUTH LOGIN") == (334, b64("Username:"))
        assert c.cmd(b64(ALICE)) == (334, b64("Password:"))
        assert c.cmd(b64(PASSWORD))[0] == 235


def scram_login(server: Homemail, user: str, password: str, source: str | None = None) -> tuple[int, str]:
    """A SCRAM-SHA-256 exchange with the scramp client; the final reply. The server's proof is checked."""
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    with Raw(server.port("submission"), server.host, source=source) as c:
        if server is not None and "strict" in server.hostname:
            c.ehlo()
            c.starttls()
        c.ehlo()
        code, text = c.cmd(f"AUTH SCRAM-SHA-256 {b64(client.get_client_first())}")
        assert code == 334, (code, text)
        client.set_server_first(base64.b64decode(text).decode())
        code, text = c.cmd(b64(client.get_client_final()))
        if code != 334:
            return code, text
        client.set_server_final(base64.b64decode(text).decode())  # raises if the server cannot prove itself
        return c.cmd("")


def test_auth_scram_sha_256(open_: Homemail) -> None:
    code, text = scram_login(open_, ALICE, PASSWORD)
    assert (code, text[:5]) == (235, "2.7.0"), (code, text)


def test_wrong_password_is_535(open_: Homemail) -> None:
    with Raw(open_.port("submission"), open_.host) as c:
        c.ehlo()
        assert c.cmd(f"AUTH PLAIN {plain(ALICE, 'wrong')}")[:1] == (535,)
        code, text = c.cmd(f"AUTH LOGIN {b64(BOB)}")
        assert code == 334
        code, text = c.cmd(b64("wrong"))
        assert (code, text[:5]) == (535, "5.7.8"), (code, text)
        # Unknown users fail the same way.
        code, text = c.cmd(f"AUTH PLAIN {plain('nobody@sub.test')}")
        assert (code, text[:5]) == (535, "5.7.8")
        # Still not authenticated.
        assert c.cmd(f"MAIL FROM:<{ALICE}>")[0] == 530
    code, text = scram_login(open_, ALICE, "wrong")
    assert (code, text[:5]) == (535, "5.7.8"), (code, text)


# --- throttling ----------------------------------------------------------------------------------------------


def strict_auth(strict: Homemail, user: str, password: str, source: str) -> tuple[int, str]:
    with Raw(strict.port("submission"), strict.host, source=source) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        return c.cmd(f"AUTH PLAIN {plain(user, password)}")


def test_throttle_per_ip(strict: Homemail) -> None:
    dave, erin = STRICT_USERS[1], STRICT_USERS[2]
    for _ in range(2):  # max_failures
        assert strict_auth(strict, dave, "wrong", "127.0.0.60")[0] == 535
    # The right password of another account, from that IP: refused while the IP is throttled.
    code, text = strict_auth(strict, erin, PASSWORD, "127.0.0.60")
    assert (code, text[:5]) == (535, "5.7.8"), (code, text)
    code, _ = scram_login(strict, erin, PASSWORD, source="127.0.0.60")
    assert code == 535
    # The same login from elsewhere works: it is the IP that is blocked.
    assert strict_auth(strict, erin, PASSWORD, "127.0.0.61")[0] == 235


def test_throttle_per_account(strict: Homemail) -> None:
    frank, gina = STRICT_USERS[3], STRICT_USERS[4]
    for source in ("127.0.0.62", "127.0.0.63"):  # one failure per IP, two for frank
        assert strict_auth(strict, frank, "wrong", source)[0] == 535
    code, text = strict_auth(strict, frank, PASSWORD, "127.0.0.65")
    assert (code, text[:5]) == (535, "5.7.8"), (code, text)
    assert scram_login(strict, frank, PASSWORD, source="127.0.0.66")[0] == 535
    # Another account from the same fresh IP is fine: it is the account that is blocked.
    assert strict_auth(strict, gina, PASSWORD, "127.0.0.65")[0] == 235


# --- the transaction -----------------------------------------------------------------------------------------


def test_mail_before_auth_is_530_and_no_relay(open_: Homemail) -> None:
    with Raw(open_.port("submission"), open_.host) as c:
        c.ehlo()
        code, text = c.cmd(f"MAIL FROM:<{ALICE}>")
        assert (code, text[:5]) == (530, "5.7.0"), (code, text)
        code, _ = c.cmd("RCPT TO:<someone@example.com>")
        assert code >= 500
        assert c.cmd("DATA")[0] >= 500


def test_envelope_sender_must_be_the_users(open_: Homemail) -> None:
    with authed(open_) as c:
        for sender in (BOB, "alice@example.com", "team@sub.test", "bob+x@sub.test"):
            code, text = c.cmd(f"MAIL FROM:<{sender}>")
            assert (code, text[:5]) == (553, "5.7.1"), (sender, code, text)
        # The null reverse-path is not for users either.
        assert c.cmd("MAIL FROM:<>")[0] == 553
        assert c.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250


@pytest.mark.parametrize("header", ["From", "Sender"])
def test_from_header_must_be_the_users(open_: Homemail, header: str) -> None:
    mark = marker()
    with authed(open_) as c:
        assert c.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
        assert c.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        data = compose(ALICE, [BOB], mark)
        if header == "From":
            data = data.replace(f"From: {ALICE}".encode(), f"From: Bob <{BOB}>".encode())
        else:
            data = f"Sender: {BOB}\r\n".encode() + data
        code, text = send_data(c, data)
        assert (code, text[:5]) == (553, "5.7.1"), (code, text)
    assert open_.with_marker(BOB, mark) == []


def test_from_with_a_second_foreign_address_is_refused(open_: Homemail) -> None:
    mark = marker()
    with authed(open_) as c:
        c.cmd(f"MAIL FROM:<{ALICE}>")
        c.cmd(f"RCPT TO:<{BOB}>")
        data = compose(ALICE, [BOB], mark).replace(
            f"From: {ALICE}".encode(), f"From: {ALICE}, ceo@bank.example".encode()
        )
        assert send_data(c, data)[0] == 553
    assert open_.with_marker(BOB, mark) == []


@pytest.mark.parametrize("sender", ["sales@sub.test", "alice+news@sub.test", "anything@catch.test"])
def test_sending_as_own_alias_tag_or_catchall(open_: Homemail, sender: str) -> None:
    mark = marker()
    with authed(open_) as c:
        assert c.cmd(f"MAIL FROM:<{sender}>")[0] == 250
        assert c.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        code, text = send_data(c, compose(sender, [BOB], mark))
        assert code == 250, (code, text)
    (message,) = open_.with_marker(BOB, mark)
    assert parse(message)["From"] == sender


def test_local_delivery_at_once_with_fixups_and_dkim(open_: Homemail) -> None:
    """No Date:, no Message-ID: from the client: both are added. The local copies are in the mailboxes when
    the 250 comes (no queue), signed for sub.test."""
    mark = marker()
    data = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: bare {mark}\r\n\r\nbody {mark}\r\n".encode()
    with authed(open_) as c:
        c.cmd(f"MAIL FROM:<{ALICE}>")
        c.cmd(f"RCPT TO:<{BOB}>")
        c.cmd("RCPT TO:<team@sub.test>")  # bob again, through an alias: one copy
        c.cmd(f"RCPT TO:<{ALICE}>")
        code, text = send_data(c, data)
        assert code == 250, (code, text)
        # Checked before QUIT: the 250 means delivered.
        (to_bob,) = open_.with_marker(BOB, mark)
        (to_alice,) = open_.with_marker(ALICE, mark)
    assert to_bob == to_alice
    msg = parse(to_bob)
    assert msg["Date"] is not None and msg["Date"].datetime is not None
    assert msg["Message-ID"].endswith("@mail.sub.test>")
    sigs = dkim_signatures(to_bob)
    assert sorted(s[b"a"] for s in sigs) == [b"ed25519-sha256", b"rsa-sha256"]
    assert {s[b"d"] for s in sigs} == {b"sub.test"}
    assert all(b"date" in s[b"h"].split(b":") and b"message-id" in s[b"h"].split(b":") for s in sigs)
    assert open_.queue() == []


def test_date_and_message_id_kept_when_present(open_: Homemail) -> None:
    mark = marker()
    with authed(open_) as c:
        c.cmd(f"MAIL FROM:<{ALICE}>")
        c.cmd(f"RCPT TO:<{BOB}>")
        assert send_data(c, compose(ALICE, [BOB], mark))[0] == 250
    (message,) = open_.with_marker(BOB, mark)
    msg = parse(message)
    assert msg.get_all("Message-ID") == [f"<{mark}@client.test>"]
    assert len(msg.get_all("Date")) == 1


def test_unknown_local_recipient_is_550(open_: Homemail) -> None:
    with authed(open_) as c:
        c.cmd(f"MAIL FROM:<{ALICE}>")
        code, text = c.cmd("RCPT TO:<nobody@sub.test>")
        assert (code, text[:5]) == (550, "5.1.1")


def test_message_without_from_is_refused(open_: Homemail) -> None:
    mark = marker()
    with authed(open_) as c:
        c.cmd(f"MAIL FROM:<{ALICE}>")
        c.cmd(f"RCPT TO:<{BOB}>")
        code, text = send_data(c, f"To: {BOB}\r\nSubject: {mark}\r\n\r\nno sender\r\n".encode())
        assert code == 550 and text.startswith("5.6.0"), (code, text)
    assert open_.with_marker(BOB, mark) == []
