"""Two homemail instances exchanging mail over real SMTP on port 25, found through a real DNS server (knot):
one.test's MX is A (NET.2), two.test's is B (NET.3), NET being a
block of 127/8 picked per run (delivery_helpers.loopback_block). Mail is submitted with swaks and msmtp, DKIM-signed
(RSA and Ed25519 keys made by ``homemail dkim keygen`` and published in knot), delivered to the other side's MX,
read back with ``homemail export`` and verified with dkimpy. Failures come back as RFC 3464 reports.
"""

from __future__ import annotations

import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from delivery_helpers import (
    PASSWORD,
    Homemail,
    Raw,
    compose,
    dkim_signatures,
    in_parallel,
    loopback_block,
    marker,
    parse,
    parse_dsn,
    received_fields,
    start_all,
    submit,
    verify_all_dkim,
    wait_for,
)

from dnsserver import KnotServer
from harness import require_peer, with_store

NET = loopback_block()
A_IP, B_IP = NET + "2", NET + "3"
ZONES = {
    "one.test": ["@ MX 10 mx", f"mx A {A_IP}", f'@ TXT "v=spf1 ip4:{A_IP} -all"'],
    "two.test": ["@ MX 10 mx", f"mx A {B_IP}", f'@ TXT "v=spf1 ip4:{B_IP} -all"'],
    # RFC 7505: a domain that says it takes no mail.
    "nullmx.test": ["@ MX 0 ."],
}
ALICE, SALES, BOB, CAROL = "alice@one.test", "sales@one.test", "bob@two.test", "carol@two.test"
ZOE = "zoë@two.test"
FORWARD = "both@one.test"  # an alias on A for bob at B and alice herself


@pytest.fixture(scope="module")
def servers(knot: KnotServer) -> Iterator[tuple[Homemail, Homemail]]:
    a = Homemail(A_IP, "mx.one.test", knot.nameserver)
    b = Homemail(B_IP, "mx.two.test", knot.nameserver)
    a.provision([ALICE], aliases={SALES: [ALICE], FORWARD: [BOB, ALICE]})
    b.provision([BOB, CAROL, ZOE])
    keys_a, keys_b = in_parallel(lambda: a.dkim_keygen("one.test"), lambda: b.dkim_keygen("two.test"))
    knot.set_zone("one.test", ZONES["one.test"] + keys_a)
    knot.set_zone("two.test", ZONES["two.test"] + keys_b)
    try:
        start_all(a, b)
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def a(servers: tuple[Homemail, Homemail]) -> Homemail:
    return servers[0]


@pytest.fixture(scope="module")
def b(servers: tuple[Homemail, Homemail]) -> Homemail:
    return servers[1]


def nameserver(knot: KnotServer) -> tuple[str, int]:
    return (knot.host, knot.port)


def exported(server: Homemail, address: str, mark: str) -> list[bytes]:
    """The user's INBOX messages with ``mark``, read back with ``homemail export``."""
    return [m for m in server.export(address).get("INBOX", []) if mark.encode() in m]


def test_dkim_records_published(knot: KnotServer, a: Homemail) -> None:
    """What ``dkim keygen`` printed is in the zone, one RSA and one Ed25519 key."""
    out = a.cli("dkim", "show", "one.test").stdout
    selectors = [line.split()[1] for line in out.splitlines() if line.startswith(";")]
    assert len(selectors) == 2
    kinds = set()
    for s in selectors:
        (txt,) = knot.query(f"{s}._domainkey.one.test", "TXT")
        kinds.add("k=ed25519" if "k=ed25519" in txt else "k=rsa" if "k=rsa" in txt else "?")
    assert kinds == {"k=rsa", "k=ed25519"}


def test_swaks_one_to_two(knot: KnotServer, a: Homemail, b: Homemail) -> None:
    require_peer("swaks")
    mark = marker()
    result = subprocess.run(
        [
            "swaks",
            "--server", A_IP, "--port", str(a.port("submission")),
            "--tls", "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORD,
            "--from", ALICE, "--to", BOB,
            "--header", f"Subject: swaks {mark}",
            "--body", f"Sent by swaks, {mark}.",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 " in result.stdout
    b.wait_message(BOB, mark)
    (message,) = exported(b, BOB, mark)
    # Both signatures, made by A with the keys whose records knot serves, verify at the receiving end.
    assert sorted(verify_all_dkim(message, nameserver(knot))) == ["ed25519-sha256", "rsa-sha256"]
    msg = parse(message)
    assert msg["Return-Path"] == f"<{ALICE}>"
    received = received_fields(message)
    # Newest first: B's MX took it from A over TLS; A's submission took it from swaks, authenticated.
    assert received[0].startswith("from mx.one.test") and f"([{A_IP}])" in received[0], received[0]
    assert "by mx.two.test (homemail) with ESMTPS " in received[0], received[0]
    assert "by mx.one.test (homemail) with ESMTPSA " in received[1], received[1]
    # A kept nothing in its queue.
    assert a.queued_with(mark) == []


def test_msmtp_two_to_one_scram(knot: KnotServer, a: Homemail, b: Homemail, tmp_path: Path) -> None:
    """msmtp with SCRAM-SHA-256 (GNU SASL) on B's submission port, to A; mail goes the other way."""
    require_peer("msmtp")
    mark = marker()
    rc = tmp_path / "msmtprc"
    rc.write_text(
        "defaults\n"
        "tls on\n"
        "tls_starttls on\n"
        "tls_certcheck off\n"
        f"logfile {tmp_path / 'msmtp.log'}\n"
        "account two\n"
        f"host {B_IP}\n"
        f"port {b.port('submission')}\n"
        "auth scram-sha-256\n"
        f"user {BOB}\n"
        f"password {PASSWORD}\n"
        f"from {BOB}\n"
    )
    rc.chmod(0o600)
    data = compose(BOB, [ALICE], mark, subject=f"msmtp {mark}")
    result = subprocess.run(
        ["msmtp", "-C", str(rc), "-a", "two", ALICE], input=data, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    a.wait_message(ALICE, mark)
    (message,) = exported(a, ALICE, mark)
    assert sorted(verify_all_dkim(message, nameserver(knot))) == ["ed25519-sha256", "rsa-sha256"]
    assert all(s[b"d"] == b"two.test" for s in dkim_signatures(message))
    received = received_fields(message)
    assert "by mx.one.test (homemail) with ESMTPS " in received[0]
    assert "by mx.two.test (homemail) with ESMTPSA " in received[1]


def test_msmtp_command_line_options_login(knot: KnotServer, a: Homemail, b: Homemail) -> None:
    """msmtp driven by options alone (--host, --port, --auth=login, --tls), as the alias sales@."""
    require_peer("msmtp")
    mark = marker()
    data = compose(SALES, [BOB], mark)
    result = subprocess.run(
        [
            "msmtp", "--host", A_IP, f"--port={a.port('submission')}", "--tls=on", "--tls-starttls=on",
            "--tls-certcheck=off", "--auth=login", f"--user={ALICE}", "--passwordeval", f"echo {PASSWORD}",
            f"--from={SALES}", BOB,
        ],
        input=data, capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    (message,) = b.wait_message(BOB, mark)
    assert parse(message)["Return-Path"] == f"<{SALES}>"
    assert sorted(verify_all_dkim(message, nameserver(knot))) == ["ed25519-sha256", "rsa-sha256"]


def test_one_message_to_local_and_two_remote(knot: KnotServer, a: Homemail, b: Homemail) -> None:
    """Local copy at once, two recipients of two.test in one delivery; every copy signed the same way."""
    mark = marker()
    submit(a, ALICE, [ALICE, BOB, CAROL], mark)
    # The local copy is there when the 250 came.
    (local,) = a.with_marker(ALICE, mark)
    (to_bob,) = b.wait_message(BOB, mark)
    (to_carol,) = b.wait_message(CAROL, mark)
    for m in (local, to_bob, to_carol):
        assert sorted(verify_all_dkim(m, nameserver(knot))) == ["ed25519-sha256", "rsa-sha256"]
    # One transaction for both: the same B transaction id in both Received fields.
    assert (
        received_fields(to_bob)[0].split(" id ")[1].split()[0]
        == (received_fields(to_carol)[0].split(" id ")[1].split()[0])
    )


def test_utf8_address_and_8bit_body(knot: KnotServer, a: Homemail, b: Homemail) -> None:
    """SMTPUTF8 (RFC 6531) and an 8-bit body go from submission through A's queue to B unchanged, and the
    signatures over the 8-bit body verify."""
    mark = marker()
    data = (
        f"From: Alice <{ALICE}>\r\nTo: Zoë <{ZOE}>\r\nSubject: Grüße {mark}\r\n"
        f"Date: Mon, 01 Jun 2026 10:00:00 +0000\r\nMessage-ID: <{mark}@client.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"Schöne Grüße, {mark} — ½ € ✓\r\n"
    ).encode()
    with smtplib.SMTP(A_IP, a.port("submission"), timeout=30) as c:
        c.starttls()
        c.login(ALICE, PASSWORD)
        c.sendmail(ALICE, [ZOE], data, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    (message,) = b.wait_message(ZOE, mark)
    assert data in message  # the client's bytes, after the trace and signature fields
    assert "by mx.two.test (homemail) with UTF8SMTPS " in received_fields(message)[0]
    assert sorted(verify_all_dkim(message, nameserver(knot))) == ["ed25519-sha256", "rsa-sha256"]


def test_submission_to_an_alias_with_a_remote_target(a: Homemail, b: Homemail) -> None:
    mark = marker()
    submit(a, ALICE, [FORWARD], mark)
    assert len(a.with_marker(ALICE, mark)) == 1  # the local target at once
    (message,) = b.wait_message(BOB, mark)
    assert parse(message)["To"] == FORWARD


def test_unknown_remote_user_dsn(a: Homemail, b: Homemail) -> None:
    """B refuses an unknown user with 550 5.1.1; alice gets a report naming B and its reply."""
    mark = marker()
    submit(a, ALICE, ["nosuch@two.test"], mark)
    (notice,) = a.wait_message(ALICE, f"Message-ID: <{mark}@client.test>")
    report = parse_dsn(notice)
    (rcpt,) = report.recipients
    assert rcpt["final-recipient"] == "rfc822; nosuch@two.test"
    assert rcpt["action"] == "failed"
    assert rcpt["status"] == "5.1.1"
    assert rcpt["remote-mta"].startswith("dns; mx.two.test")
    assert "550" in rcpt["diagnostic-code"] and "nosuch@two.test" in rcpt["diagnostic-code"]
    assert report.per_message["reporting-mta"] == "dns; mx.one.test"
    assert mark.encode() in report.original
    assert report.message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.one.test"
    assert parse(notice)["Return-Path"] == "<>"
    assert a.queued_with(mark) == []


def test_null_mx_dsn(a: Homemail) -> None:
    mark = marker()
    submit(a, ALICE, ["someone@nullmx.test"], mark)
    (notice,) = a.wait_message(ALICE, f"Message-ID: <{mark}@client.test>")
    report = parse_dsn(notice)
    (rcpt,) = report.recipients
    assert rcpt["action"] == "failed"
    assert rcpt["status"] == "5.1.10"
    assert rcpt["final-recipient"] == "rfc822; someone@nullmx.test"
    assert "null MX" in rcpt["diagnostic-code"]
    assert "remote-mta" not in rcpt
    assert report.message["Subject"] == "Undelivered Mail Returned to Sender"
    assert report.message["Auto-Submitted"] == "auto-replied"
    assert report.original_type == "message/rfc822" and mark.encode() in report.original
    # The export (what a mail client sees) has it too.
    assert len(exported(a, ALICE, f"Message-ID: <{mark}@client.test>")) == 1


def _inject(server: Homemail, sender: str, recipients: list[str], data: bytes) -> int:
    """Queue a message as the server itself would (a forward or a notice), through the store."""
    from homemail.store import QueueRecipient
    from homemail.store.sqlite import SQLiteStore

    async def run(store: SQLiteStore) -> int:
        queue_id, _ = await store.enqueue(data, sender, [QueueRecipient(r) for r in recipients])
        return queue_id

    return with_store(server.data_dir, run)


def test_no_dsn_for_null_sender(a: Homemail, b: Homemail) -> None:
    """A message with the null reverse-path (a notice itself) that fails is dropped, never reported."""
    mark = marker()
    before = a.total_messages(), b.total_messages()
    queue_id = _inject(a, "", ["someone@nullmx.test", "nosuch@two.test"], compose("x@one.test", [], mark))
    wait_for(lambda: a.queued_with(mark) == [], message="the queue to drop the message")
    log = a.log()
    assert f"queue {queue_id}: <someone@nullmx.test> failed" in log
    assert f"queue {queue_id}: <nosuch@two.test> failed" in log
    # Nothing new anywhere: no notice in a mailbox, none queued.
    assert (a.total_messages(), b.total_messages()) == before
    assert a.queue() == []


def test_dsn_to_remote_sender_has_null_reverse_path(a: Homemail, b: Homemail) -> None:
    """A failure of a message from a sender elsewhere (a forward) is reported to that sender's server, with
    MAIL FROM:<>."""
    mark = marker()
    _inject(a, BOB, ["someone@nullmx.test"], compose(BOB, ["someone@nullmx.test"], mark))
    (notice,) = b.wait_message(BOB, f"Message-ID: <{mark}@client.test>")
    assert parse(notice)["Return-Path"] == "<>"
    report = parse_dsn(notice)
    assert report.recipients[0]["status"] == "5.1.10"
    assert report.per_message["reporting-mta"] == "dns; mx.one.test"


def test_mx_refuses_relay(a: Homemail, b: Homemail) -> None:
    """Port 25 without AUTH delivers only to local domains: a foreign RCPT is 554 5.7.1, from anywhere."""
    for server, foreign in ((a, BOB), (b, ALICE), (a, "someone@example.com")):
        c = Raw(25, server.host)
        try:
            # A client and sender the test DNS knows (no SPF record: nothing to hold the MAIL up).
            assert c.ehlo("client.nullmx.test")[0] == 250
            assert c.cmd("MAIL FROM:<someone@nullmx.test>")[0] == 250
            code, text = c.cmd(f"RCPT TO:<{foreign}>")
            assert (code, text[:5]) == (554, "5.7.1"), (code, text)
        finally:
            c.close()
    # And AUTH is not offered on the MX port: it is no way around.
    c = Raw(25, a.host)
    try:
        _, text = c.ehlo()
        assert "AUTH" not in text
    finally:
        c.close()


def test_forged_from_is_refused_and_nothing_leaves(a: Homemail, b: Homemail) -> None:
    mark = marker()
    with smtplib.SMTP(A_IP, a.port("submission"), timeout=30) as c:
        c.starttls()
        c.login(ALICE, PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail(ALICE, [BOB], compose(BOB, [BOB], mark))
        assert (e.value.smtp_code, e.value.smtp_error[:5]) == (553, b"5.7.1")
    assert a.queued_with(mark) == []
    assert b.with_marker(BOB, mark) == []


def test_dkim_rotate_and_remove(knot: KnotServer, a: Homemail, b: Homemail) -> None:
    """``dkim rotate``: new keys sign from the next message on, the old ones stay listed until ``dkim remove``."""
    old = {
        line.split()[1] for line in a.cli("dkim", "show", "one.test").stdout.splitlines() if line[:1] == ";"
    }
    result = a.cli("dkim", "rotate", "one.test", check=False)
    if result.returncode != 0 and "try again in a second" in result.stderr:
        time.sleep(1)
        result = a.cli("dkim", "rotate", "one.test")
    lines = result.stdout.splitlines()
    new = {line.split()[1] for line in lines if line.startswith(";") and "signing" in line}
    retired = {line.split()[1] for line in lines if line.startswith(";") and "retired" in line}
    assert len(new) == 2 and retired == old and not new & old
    knot.set_zone("one.test", ZONES["one.test"] + [line for line in lines if line and line[0] != ";"])

    mark = marker()
    submit(a, ALICE, [BOB], mark)
    (message,) = b.wait_message(BOB, mark)
    assert sorted(verify_all_dkim(message, nameserver(knot))) == ["ed25519-sha256", "rsa-sha256"]
    assert {s[b"s"].decode() for s in dkim_signatures(message)} == new

    for selector in sorted(old):
        assert (
            f"removed {selector}._domainkey.one.test" in a.cli("dkim", "remove", "one.test", selector).stdout
        )
    shown = a.cli("dkim", "show", "one.test").stdout
    assert {line.split()[1] for line in shown.splitlines() if line[:1] == ";"} == new
