"""The MX's connection-stage defences over real sockets: blocklists, reverse DNS, SPF deferrals, greylisting,
rate limits and clients that talk before the greeting.

knot serves the DNS: a test blocklist ``bl.test`` listing some 127.0.0.x addresses (with TXT reasons, and a
127.255.255.254 "query refused" answer), the reverse zone 0.0.127.in-addr.arpa with forward-confirmed and
unconfirmed names, and SPF records. Clients bind their sockets to their own 127.0.0.x address, so each test is
one sender as the server sees it.

Two homemail servers: ``mx`` (blocklists, limits, greeting pause) and ``grey`` (greylisting, a blocklist zone
that cannot be asked).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import smtplib
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsserver import KnotServer
from harness import ServerProcess, no_verify
from homemail.config import GreylistConfig
from homemail.mailauth import dnsbl
from homemail.mailauth.greylist import Greylist
from homemail.mailauth.ratelimit import RateLimiter, client_key
from homemail.store.sqlite import SQLiteStore

RCPT = "alice@example.org"
ZONES = {
    "bl.test": [
        "5.0.0.127 A 127.0.0.2",
        '5.0.0.127 TXT "Spam source, see https://bl.test/q?127.0.0.5"',
        "6.0.0.127 A 127.0.0.4",
        '6.0.0.127 TXT "Exploited host (XBL)"',
        "7.0.0.127 A 127.255.255.254",  # Spamhaus: the query came through a public resolver, refused
        "8.0.0.127 A 127.0.0.2",  # listed, but on the allowlist
        '8.0.0.127 TXT "should never be seen"',
    ],
    "0.0.127.in-addr.arpa": [
        "20 PTR good.senders.test.",
        "21 PTR liar.senders.test.",  # its name resolves elsewhere: not confirmed
        "22 PTR other.senders.test.",
        "22 PTR second.senders.test.",  # the second name is the confirmed one
    ],
    "senders.test": [
        "good A 127.0.0.20",
        "liar A 192.0.2.1",
        "other A 192.0.2.2",
        "second A 127.0.0.22",
        '@ TXT "v=spf1 ip4:127.0.0.20 -all"',
    ],
    "known.test": ['@ TXT "v=spf1 ip4:127.0.0.41 ip4:127.0.0.42 -all"'],
    # Sender domains without SPF ("none"). A domain knot does not serve gets REFUSED: a DNS failure.
    "nowhere.test": [],
    "elsewhere.test": [],
}


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    server = KnotServer(ZONES).start()
    try:
        yield server
    finally:
        server.stop()


def _server(knot: KnotServer, extra: dict[str, object]) -> ServerProcess:
    config: dict[str, object] = {
        "dns": {"nameservers": [knot.nameserver], "timeout": 2},
        "storage": {"fsync": False},
    }
    config.update(extra)
    server = ServerProcess(config=config)
    server.cli("domain", "add", "example.org")
    server.cli("user", "add", RCPT, "--password-stdin", input="password\n")
    return server.start()


@pytest.fixture(scope="module")
def mx(knot: KnotServer) -> Iterator[ServerProcess]:
    server = _server(
        knot,
        {
            "dnsbl": {"zones": ["bl.test"], "allowlist": ["127.0.0.8"]},
            "limits": {
                "connections_per_minute": 5,
                "messages_per_minute": 4,
                "greet_pause": 0.5,
                "exempt": ["127.0.0.60"],
            },
        },
    )
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="module")
def grey(knot: KnotServer) -> Iterator[ServerProcess]:
    server = _server(
        knot,
        {
            "greylist": {"enabled": True, "delay": 1, "ipv4_prefix": 32},
            # down.test is not served by knot: every lookup in it fails (REFUSED). The greylisting clients
            # (127.0.0.40-47) are allowlisted; 127.0.0.48 is not.
            "dnsbl": {"zones": ["down.test"], "allowlist": ["127.0.0.40/29"]},
            "limits": {"greet_pause": 0, "exempt": []},
        },
    )
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def client(server: ServerProcess, ip: str, helo: str = "client.senders.test") -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", server.port("smtp"), source_address=(ip, 0), timeout=15)
    smtp.ehlo(helo)
    return smtp


def rcpt(
    server: ServerProcess, ip: str, sender: str = "someone@nowhere.test", to: str = RCPT
) -> tuple[int, str]:
    """MAIL and RCPT from ``ip``; the RCPT reply (or the MAIL reply when MAIL was refused)."""
    with client(server, ip) as smtp:
        code, text = smtp.mail(sender)
        if code != 250:
            return code, text.decode()
        code, text = smtp.rcpt(to)
        return code, text.decode()


def send(server: ServerProcess, ip: str, sender: str, marker: str, to: str = RCPT) -> tuple[int, str]:
    """A whole transaction; the first refusal, or the final reply."""
    with client(server, ip) as smtp:
        for code, text in (smtp.mail(sender), smtp.rcpt(to)):
            if code != 250:
                return code, text.decode()
        code, text = smtp.data(
            f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {marker}\r\n\r\n{marker}\r\n".encode()
        )
        return code, text.decode()


def delivered(server: ServerProcess, marker: str) -> list[bytes]:
    work = Path(tempfile.mkdtemp(prefix="homemail-export-"))
    try:
        server.cli("export", RCPT, str(work / "m"))
        return [p.read_bytes() for p in (work / "m").rglob("cur/*") if marker.encode() in p.read_bytes()]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def received(message: bytes) -> str:
    m = re.search(rb"^Received: .*?(?=^\S)", message, re.MULTILINE | re.DOTALL)
    assert m, message[:500]
    return m.group(0).decode()


# --- blocklists --------------------------------------------------------------------------------------------


def test_listed_client_refused_with_the_lists_reason(mx: ServerProcess) -> None:
    code, text = rcpt(mx, "127.0.0.5")
    assert code == 554, text
    assert text.startswith("5.7.1 ") and "[127.0.0.5]" in text and "bl.test" in text
    assert "Spam source, see https://bl.test/q?127.0.0.5" in text
    code, text = rcpt(mx, "127.0.0.6")
    assert (code, text.startswith("5.7.1")) == (554, True) and "Exploited host (XBL)" in text
    assert "blocklisted (bl.test): <someone@nowhere.test> -> <alice@example.org> refused" in mx.log()


def test_refused_lookup_is_not_a_listing(mx: ServerProcess) -> None:
    assert send(mx, "127.0.0.7", "a@nowhere.test", "refused-lookup-marker")[0] == 250
    assert delivered(mx, "refused-lookup-marker")
    assert "blocklist refused our query: bl.test (127.255.255.254)" in mx.log()


def test_allowlisted_and_unlisted_clients_accepted(mx: ServerProcess) -> None:
    assert rcpt(mx, "127.0.0.8")[0] == 250  # listed, allowlisted: never looked up
    assert rcpt(mx, "127.0.0.9")[0] == 250  # not listed


def test_blocklist_dns_failure_defers(grey: ServerProcess) -> None:
    code, text = rcpt(grey, "127.0.0.48")
    assert code == 451 and text.startswith("4.7.1") and "blocklist" in text


# --- reverse DNS ---------------------------------------------------------------------------------------------


def test_forward_confirmed_name_in_received(mx: ServerProcess) -> None:
    assert send(mx, "127.0.0.20", "a@senders.test", "rdns-good-marker")[0] == 250
    assert send(mx, "127.0.0.21", "a@nowhere.test", "rdns-liar-marker")[0] == 250
    assert send(mx, "127.0.0.22", "a@nowhere.test", "rdns-second-marker")[0] == 250
    assert send(mx, "127.0.0.23", "a@nowhere.test", "rdns-none-marker")[0] == 250
    (good,) = delivered(mx, "rdns-good-marker")
    assert "from client.senders.test (good.senders.test [127.0.0.20])" in received(good)
    (liar,) = delivered(mx, "rdns-liar-marker")
    assert "([127.0.0.21])" in received(liar)
    assert "liar.senders.test" not in received(liar)
    (second,) = delivered(mx, "rdns-second-marker")
    assert "(second.senders.test [127.0.0.22])" in received(second)
    (none,) = delivered(mx, "rdns-none-marker")
    assert "([127.0.0.23])" in received(none)


def test_reverse_name_kept_after_starttls(mx: ServerProcess) -> None:
    # STARTTLS forgets the session state (RFC 3207 4.2); the name found at connect is still the client's.
    with client(mx, "127.0.0.20") as smtp:
        smtp.starttls(context=no_verify())
        smtp.ehlo("client.senders.test")
        smtp.sendmail("a@senders.test", [RCPT], b"Subject: tls\r\n\r\nrdns-tls-marker\r\n")
    (message,) = delivered(mx, "rdns-tls-marker")
    assert "(good.senders.test [127.0.0.20])" in received(message)


# --- SPF at MAIL FROM ----------------------------------------------------------------------------------------


def test_spf_fail_is_not_refused_at_mail_from(mx: ServerProcess) -> None:
    # senders.test allows only 127.0.0.20: a fail, recorded for DMARC after DATA, not refused here.
    assert rcpt(mx, "127.0.0.24", sender="forged@senders.test")[0] == 250


def test_spf_dns_failure_defers_mail_from(mx: ServerProcess) -> None:
    # unserved.test is not served by knot: the TXT lookup fails (REFUSED), so SPF is a temperror.
    code, text = rcpt(mx, "127.0.0.25", sender="someone@unserved.test")
    assert code == 451 and text.startswith("4.7.24"), text
    assert "unserved.test" in text
    # The null sender's identity is the HELO name; a name DNS cannot answer for defers too.
    with client(mx, "127.0.0.25", helo="mail.unserved.test") as smtp:
        code, text = smtp.mail("<>")
        assert code == 451 and text.decode().startswith("4.7.24")
    with client(mx, "127.0.0.25", helo="[127.0.0.25]") as smtp:
        assert smtp.mail("<>")[0] == 250  # an address literal: "none", no DNS needed


# --- limits and pre-greeting talkers ---------------------------------------------------------------------


def test_connection_rate_limit(mx: ServerProcess) -> None:
    for _ in range(5):
        with client(mx, "127.0.0.30") as smtp:
            assert smtp.noop()[0] == 250
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP("127.0.0.1", mx.port("smtp"), source_address=("127.0.0.30", 0), timeout=15)
    assert e.value.smtp_code == 421 and b"4.7.0" in e.value.smtp_error
    # Another address is not affected, nor an exempt one over the same count.
    with client(mx, "127.0.0.31") as smtp:
        assert smtp.noop()[0] == 250
    for _ in range(7):
        with client(mx, "127.0.0.60") as smtp:
            assert smtp.noop()[0] == 250


def test_message_rate_limit(mx: ServerProcess) -> None:
    with client(mx, "127.0.0.32") as smtp:
        for _ in range(4):
            assert smtp.mail("a@nowhere.test")[0] == 250
            assert smtp.rset()[0] == 250
        code, text = smtp.mail("a@nowhere.test")
        assert code == 451 and text.startswith(b"4.7.1")


def test_talking_before_the_greeting_is_dropped(mx: ServerProcess) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.50", 0))
        s.settimeout(15)
        s.connect(("127.0.0.1", mx.port("smtp")))
        s.sendall(b"EHLO impatient.test\r\nMAIL FROM:<a@b.test>\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"554 5.5.1 ") and b"220" not in data, data  # a 554, then the connection closes
    assert "127.0.0.50: talked before the greeting, dropped" in mx.log()


def test_greeting_pause_only_for_new_clients(mx: ServerProcess) -> None:
    def greeting_time() -> float:
        start = time.monotonic()
        smtp = smtplib.SMTP("127.0.0.1", mx.port("smtp"), source_address=("127.0.0.51", 0), timeout=15)
        took = time.monotonic() - start
        smtp.quit()
        return took

    assert greeting_time() >= 0.45  # a client not seen before waits greet_pause (0.5 s)
    assert greeting_time() < 0.4  # it waited politely: not paused again


# --- greylisting ---------------------------------------------------------------------------------------------


def test_greylisting_retry_and_auto_allowlist(grey: ServerProcess) -> None:
    code, text = rcpt(grey, "127.0.0.40", sender="first@nowhere.test")
    assert code == 451 and text.startswith("4.7.1 Greylisted"), text
    code, text = rcpt(grey, "127.0.0.40", sender="first@nowhere.test")
    assert code == 451, "a retry before the delay is still deferred"
    time.sleep(1.1)
    assert send(grey, "127.0.0.40", "first@nowhere.test", "grey-retry-marker")[0] == 250
    assert delivered(grey, "grey-retry-marker")
    # The client passed once: auto-allowlisted for other senders and recipients too.
    assert rcpt(grey, "127.0.0.40", sender="third@elsewhere.test")[0] == 250
    # Another client with the same triplet starts over.
    assert rcpt(grey, "127.0.0.44", sender="first@nowhere.test")[0] == 451


def test_greylisting_survives_a_restart(grey: ServerProcess) -> None:
    assert rcpt(grey, "127.0.0.45", sender="waiting@nowhere.test")[0] == 451
    grey.stop()
    grey.start()
    time.sleep(1.1)
    # The first attempt was remembered: the retry after the delay passes.
    assert rcpt(grey, "127.0.0.45", sender="waiting@nowhere.test")[0] == 250
    # And the allowlisting of the earlier test too.
    assert rcpt(grey, "127.0.0.40", sender="fourth@elsewhere.test")[0] == 250


def test_no_greylisting_for_spf_pass_of_a_known_sender(grey: ServerProcess) -> None:
    # known.test authorises 127.0.0.41 and .42. Its first mail waits like any other.
    assert rcpt(grey, "127.0.0.41", sender="a@known.test")[0] == 451
    time.sleep(1.1)
    assert rcpt(grey, "127.0.0.41", sender="a@known.test")[0] == 250
    # Now known: an SPF pass from another of its hosts is not greylisted, whoever the sender and recipient.
    assert rcpt(grey, "127.0.0.42", sender="b@known.test")[0] == 250
    assert rcpt(grey, "127.0.0.42", sender="c@Known.Test", to="alice@example.org")[0] == 250
    # The same client with another domain is greylisted: it is the domain that is known, not the client.
    assert rcpt(grey, "127.0.0.42", sender="d@nowhere.test")[0] == 451
    # A client the domain does not authorise (SPF fail) gets no exemption from the name.
    assert rcpt(grey, "127.0.0.43", sender="e@known.test")[0] == 451


# --- the pieces without sockets ------------------------------------------------------------------------------


def test_rate_limiter_refills_over_the_window() -> None:
    limiter = RateLimiter(3, window=60)
    assert [limiter.hit("a", now=0) for _ in range(4)] == [True, True, True, False]
    assert limiter.hit("b", now=0)  # per key
    assert 19 < limiter.retry_after("a", now=0) <= 20
    assert not limiter.hit("a", now=19)
    assert limiter.hit("a", now=20.5)  # one event's worth came back after window / limit
    assert RateLimiter(0).hit("a")  # 0: no limit
    limiter.hit("c", now=200)
    assert len(limiter) == 1  # idle keys are swept


def test_client_keys_and_blocklist_names() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7/32"
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7/32"
    assert dnsbl.query_name("192.0.2.7", "zen.spamhaus.org.") == "7.2.0.192.zen.spamhaus.org"
    assert dnsbl.query_name("2001:db8::1", "bl.test") == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.bl.test"


def test_greylist_windows_and_expiry(tmp_path: Path) -> None:
    config = GreylistConfig(enabled=True, delay=60, retry_window=3600, expire=86400, ipv4_prefix=24)

    async def scenario() -> None:
        store = SQLiteStore(tmp_path, fsync=False)
        await store.open()
        try:
            grey = Greylist(store, config)
            t0 = 1_000_000.0

            async def check(ip: str, sender: str, now: float) -> tuple[bool, str]:
                d = await grey.check(ip, sender, RCPT, now=now)
                return d.defer, d.reason

            assert await check("192.0.2.1", "a@x.test", t0) == (True, "new")
            assert await check("192.0.2.1", "a@x.test", t0 + 30) == (True, "too early")
            # A retry from another host of the same /24 counts: big senders retry from their pool.
            assert await check("192.0.2.77", "A@X.test", t0 + 61) == (False, "retried")
            assert await check("192.0.2.9", "other@y.test", t0 + 62) == (False, "client allowlisted")
            # Too late a retry starts over.
            assert await check("198.51.100.1", "b@x.test", t0) == (True, "new")
            assert await check("198.51.100.1", "b@x.test", t0 + 3601 + 60) == (True, "new")
            # Entries unseen for `expire` are forgotten (the sweep runs at most hourly).
            later = t0 + 86400 + 7200
            assert await check("192.0.2.9", "other@y.test", later) == (True, "new")
            assert not await store.greylist_get([f"c:{grey.network('192.0.2.1')}"])
        finally:
            await store.close()

    asyncio.run(scenario())
