"""The outbound queue against remote servers whose answers the test decides (aiosmtpd on NET.11:25, and
one on NET.12:25 that is down until a test brings it up): retries after 4xx, failure and delay reports
(RFC 3464), a restart with a full queue, and the ``homemail queue`` commands.

``q`` retries every second and reports a delay after three; ``h`` waits an hour between attempts, so only the
commands move its messages, and gives up on a message three seconds old at its next attempt.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
from delivery_helpers import (
    PASSWORD,
    Homemail,
    Raw,
    Received,
    Remote,
    compose,
    loopback_block,
    marker,
    parse,
    parse_dsn,
    start_all,
    submit,
    wait_for,
)

from dnsserver import KnotServer

NET = loopback_block()
Q_IP, REMOTE_IP, DOWN_IP, DEAD_IP, H_IP = (NET + str(n) for n in (10, 11, 12, 13, 14))
ZONES = {
    # Every behaviour is chosen per recipient by the remote (see remote_rcpt); the domains only route.
    "remote.test": ["@ MX 10 mx", f"mx A {REMOTE_IP}"],
    "down.test": ["@ MX 10 mx", f"mx A {DOWN_IP}"],
    # The best MX is dead (nothing listens on DEAD_IP), the backup takes the mail.
    "backup.test": ["@ MX 10 mx1", "@ MX 20 mx2", f"mx1 A {DEAD_IP}", f"mx2 A {REMOTE_IP}"],
    # No MX: the domain's own address is its mail host (RFC 5321 5.1).
    "implicit.test": [f"@ A {REMOTE_IP}"],
}
ALICE, HENRY = "alice@q.test", "henry@h.test"
# Addresses the remote answers 451 for, until a test takes them out.
HELD: set[str] = set()


def remote_rcpt(address: str, attempts: dict[str, int]) -> str | None:
    local = address.partition("@")[0]
    if local.startswith("reject"):
        return f"550 5.7.1 <{address}>: Recipient refused by remote policy R42"
    if local.startswith("always"):
        return "451 4.7.1 Greylisted, please try again later"
    if local.startswith("once") and attempts.get(address, 0) <= 1:
        return "451 4.3.0 Not now, try again"
    if address in HELD:
        return "451 4.2.0 Held by the test"
    return None


def remote_data(message: Received) -> str | None:
    if any(r.startswith("datareject") for r in message.recipients):
        return "554 5.6.0 Message content rejected (rule C7)"
    return None


@pytest.fixture(scope="module")
def remote(remotes: list[Remote]) -> Remote:
    r = Remote(
        REMOTE_IP,
        data_reply=remote_data,
        rcpt_delay=lambda a: 2.0 if a.startswith("stall") else 0.0,
        smtputf8=False,
    )
    r.rcpt_reply = lambda address: remote_rcpt(address, r.attempts)
    remotes.append(r.start())
    return r


@pytest.fixture(scope="module")
def servers(knot: KnotServer, remote: Remote) -> Iterator[tuple[Homemail, Homemail]]:
    q = Homemail(Q_IP, "mx.q.test", knot.nameserver, config={"queue": {"delay_notice": "3s"}})
    h = Homemail(H_IP, "mx.h.test", knot.nameserver, config={"queue": {"retry": ["1h"], "expire": "3s"}})
    q.provision([ALICE])
    h.provision([HENRY])
    try:
        start_all(q, h)
        yield q, h
    finally:
        q.stop()
        h.stop()


@pytest.fixture(scope="module")
def q(servers: tuple[Homemail, Homemail]) -> Homemail:
    return servers[0]


@pytest.fixture(scope="module")
def h(servers: tuple[Homemail, Homemail]) -> Homemail:
    return servers[1]


def notices(server: Homemail, user: str, mark: str) -> list[bytes]:
    """Reports about the message with ``mark`` (its Message-ID is in the returned copy)."""
    return [
        m
        for m in server.with_marker(user, f"<{mark}@client.test>")
        if parse(m).get_content_type() == "multipart/report"
    ]


# --- retries and reports -------------------------------------------------------------------------------------


def test_4xx_then_accepted_exactly_once(q: Homemail, remote: Remote) -> None:
    mark = marker()
    rcpt = f"once-{mark[:8]}@remote.test"
    submit(q, ALICE, [rcpt], mark)
    wait_for(lambda: remote.with_marker(mark), message="the retry to be accepted")
    time.sleep(1.2)  # a retry that should not happen would be due by now
    (got,) = remote.with_marker(mark)
    assert got.recipients == [rcpt] and got.sender == ALICE
    assert remote.attempts[rcpt] == 2
    assert q.queued_with(mark) == []
    log = q.log()
    assert f"<{rcpt}> deferred (attempt 1): 451 4.3.0 Not now" in log
    assert f"<{rcpt}> delivered via mx.remote.test [{REMOTE_IP}]" in log
    assert notices(q, ALICE, mark) == []  # no report for a message delivered before delay_notice


def test_routes_backup_mx_and_implicit_mx(q: Homemail, remote: Remote) -> None:
    mark = marker()
    submit(q, ALICE, ["someone@backup.test", "someone@implicit.test"], mark)
    wait_for(lambda: len(remote.with_marker(mark)) == 2, message="both copies")
    assert sorted(r for m in remote.with_marker(mark) for r in m.recipients) == [
        "someone@backup.test",
        "someone@implicit.test",
    ]
    log = q.log()
    assert f"cannot talk to mx1.backup.test [{DEAD_IP}]:25" in log
    assert f"<someone@backup.test> delivered via mx2.backup.test [{REMOTE_IP}]" in log
    assert f"<someone@implicit.test> delivered via implicit.test [{REMOTE_IP}]" in log


def test_dns_answers_decide_between_failure_and_retry(q: Homemail) -> None:
    """NXDOMAIN for the recipient's domain is final (5.1.2, reported); no usable DNS answer (knot refuses a
    zone it does not serve) is temporary: the message waits."""
    mark = marker()
    submit(q, ALICE, ["someone@gone.remote.test", "someone@unserved.example"], mark)
    (notice,) = wait_for(lambda: notices(q, ALICE, mark), message="the failure report")
    (r,) = parse_dsn(notice).recipients
    assert r["final-recipient"] == "rfc822; someone@gone.remote.test"
    assert (r["action"], r["status"]) == ("failed", "5.1.2")
    rows = {r["address"]: r for r in q.queued_with(mark)}
    assert rows["someone@gone.remote.test"]["state"] == "failed"  # kept until the message is done
    row = rows["someone@unserved.example"]
    assert row["state"] == "queued"
    assert row["last_error"].startswith("451 4.4.3"), row["last_error"]
    q.cli("queue", "delete", str(row["message_id"]))


def test_5xx_at_rcpt_gives_a_failure_report(q: Homemail, remote: Remote) -> None:
    mark = marker()
    ok, refused = f"fine-{mark[:8]}@remote.test", f"reject-{mark[:8]}@remote.test"
    submit(q, ALICE, [ok, refused], mark)
    (notice,) = wait_for(lambda: notices(q, ALICE, mark), message="the failure report")
    report = parse_dsn(notice)
    assert [a.addr_spec for a in report.message["To"].addresses] == [ALICE]
    assert report.message["Subject"] == "Undelivered Mail Returned to Sender"
    assert report.per_message["reporting-mta"] == "dns; mx.q.test"
    assert "arrival-date" in report.per_message
    (rcpt,) = report.recipients  # only the refused one
    assert rcpt["final-recipient"] == f"rfc822; {refused}"
    assert rcpt["action"] == "failed"
    assert rcpt["status"] == "5.7.1"
    assert rcpt["remote-mta"] == f"dns; mx.remote.test [{REMOTE_IP}]"
    assert "550 5.7.1" in rcpt["diagnostic-code"] and "remote policy R42" in rcpt["diagnostic-code"]
    assert refused in report.human and "R42" in report.human
    # The whole original is returned.
    original = parse(report.original)
    assert original["Message-ID"] == f"<{mark}@client.test>"
    assert f"Hello, this is {mark}." in original.get_content()
    # The other recipient got the message, once; nothing stays queued.
    (got,) = remote.with_marker(mark)
    assert got.recipients == [ok]
    assert q.queued_with(mark) == []


def test_5xx_after_data_gives_a_failure_report(q: Homemail, remote: Remote) -> None:
    mark = marker()
    rcpt = f"datareject-{mark[:8]}@remote.test"
    submit(q, ALICE, [rcpt], mark)
    (notice,) = wait_for(lambda: notices(q, ALICE, mark), message="the failure report")
    (r,) = parse_dsn(notice).recipients
    assert (r["action"], r["status"]) == ("failed", "5.6.0")
    assert "554 5.6.0 Message content rejected (rule C7)" in r["diagnostic-code"]
    assert remote.with_marker(mark) == []


def test_delay_notice_sent_once(q: Homemail, remote: Remote) -> None:
    mark = marker()
    rcpt = f"always-{mark[:8]}@remote.test"
    submit(q, ALICE, [rcpt], mark)
    (notice,) = wait_for(lambda: notices(q, ALICE, mark), timeout=20, message="the delay report")
    report = parse_dsn(notice)
    assert report.message["Subject"] == "Delayed Mail (still being retried)"
    (r,) = report.recipients
    assert r["action"] == "delayed"
    assert r["status"] == "4.7.1"
    assert "451 4.7.1 Greylisted" in r["diagnostic-code"]
    assert "last-attempt-date" in r
    # Retries go on (every second) without a second notice.
    attempts = remote.attempts[rcpt]
    wait_for(lambda: remote.attempts[rcpt] >= attempts + 2, message="two more attempts")
    assert len(notices(q, ALICE, mark)) == 1
    (row,) = q.queued_with(mark)
    assert row["state"] == "queued" and row["delay_notified"] == 1 and "451 4.7.1" in row["last_error"]
    q.cli("queue", "delete", str(row["message_id"]))
    wait_for(lambda: q.queued_with(mark) == [], message="the message to leave the queue")


def test_deleted_message_in_flight_does_not_touch_the_next_one(q: Homemail, remote: Remote) -> None:
    """A message deleted while its attempt is still running: that attempt's outcome must not land on a message
    queued after it (queue ids are never reused), and the later message is delivered."""
    first, second = marker(), marker()
    stalled = f"stall-{first[:8]}@remote.test"
    submit(q, ALICE, [stalled], first)
    wait_for(lambda: remote.attempts.get(stalled), message="the remote to be thinking")
    (row,) = q.queued_with(first)
    q.cli("queue", "delete", str(row["message_id"]))
    submit(q, ALICE, [f"fine-{second[:8]}@remote.test"], second)
    (new,) = q.queued_with(second) or [None]
    assert new is None or (new["id"], new["message_id"]) != (row["id"], row["message_id"])
    wait_for(lambda: remote.with_marker(second), message="the second message")
    wait_for(lambda: remote.with_marker(first), message="the attempt in flight to end")
    time.sleep(0.5)
    assert q.queued_with(second) == [] and q.queued_with(first) == []
    assert len(remote.with_marker(second)) == 1


def submit_raw(server: Homemail, user: str, mail: str, rcpts: list[str], data: bytes) -> None:
    """Submission with exact MAIL and RCPT lines (DSN and SMTPUTF8 parameters)."""
    with Raw(server.port("submission"), server.host) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        secret = base64.b64encode(b"\0" + user.encode() + b"\0" + PASSWORD.encode()).decode()
        assert c.cmd(f"AUTH PLAIN {secret}")[0] == 235
        assert c.cmd(f"MAIL FROM:{mail}")[0] == 250
        for r in rcpts:
            assert c.cmd(f"RCPT TO:{r}")[0] == 250, r
        assert c.cmd("DATA")[0] == 354
        c.send(data + b".\r\n")
        code, text = c.reply()
        assert code == 250, (code, text)


def test_dsn_parameters(q: Homemail, remote: Remote) -> None:
    """RFC 3461: NOTIFY=NEVER silences the report; RET=HDRS returns only the header; ENVID and ORCPT are
    echoed as Original-Envelope-Id and Original-Recipient."""
    mark = marker()
    loud, quiet = f"reject-loud-{mark[:8]}@remote.test", f"reject-quiet-{mark[:8]}@remote.test"
    submit_raw(
        q,
        ALICE,
        f"<{ALICE}> RET=HDRS ENVID=env-{mark[:8]}",
        [
            f"<{loud}> NOTIFY=FAILURE,DELAY ORCPT=rfc822;orig+2B{mark[:8]}@remote.test",
            f"<{quiet}> NOTIFY=NEVER",
        ],
        compose(ALICE, [loud, quiet], mark),
    )
    (notice,) = wait_for(lambda: notices(q, ALICE, mark), message="the failure report")
    report = parse_dsn(notice)
    assert report.per_message["original-envelope-id"] == f"env-{mark[:8]}"
    (r,) = report.recipients  # NOTIFY=NEVER: no word about the other
    assert r["final-recipient"] == f"rfc822; {loud}"
    assert r["original-recipient"] == f"rfc822;orig+2B{mark[:8]}@remote.test"
    assert report.original_type == "text/rfc822-headers"
    assert f"Message-ID: <{mark}@client.test>".encode() in report.original
    assert f"Hello, this is {mark}".encode() not in notice
    wait_for(lambda: q.queued_with(mark) == [], message="both to be done")
    time.sleep(0.5)
    assert len(notices(q, ALICE, mark)) == 1


def test_smtputf8_to_a_remote_without_it(q: Homemail, remote: Remote) -> None:
    """No downgrade (RFC 6531 3.7.5): a remote that does not offer SMTPUTF8 cannot take the message; the
    sender is told why."""
    mark = marker()
    rcpt = f"jörg-{mark[:8]}@remote.test"
    data = compose(ALICE, [rcpt], mark)
    submit_raw(q, ALICE, f"<{ALICE}> SMTPUTF8", [f"<{rcpt}>"], data)
    (notice,) = wait_for(lambda: notices(q, ALICE, mark), message="the failure report")
    (r,) = parse_dsn(notice).recipients
    assert (r["action"], r["status"]) == ("failed", "5.6.7")
    assert "SMTPUTF8" in r["diagnostic-code"]
    assert remote.with_marker(mark) == []


# --- restart -------------------------------------------------------------------------------------------------


def test_restart_with_a_full_queue(q: Homemail, remote: Remote, remotes: list[Remote]) -> None:
    """Messages for a host that is down stay queued across a stop; after the start each arrives once. A
    recipient delivered before the stop is not sent to again."""
    marks = [marker() for _ in range(6)]
    for i, mark in enumerate(marks):
        rcpts = [f"user{i}@down.test"]
        if i == 0:
            rcpts.append(f"fine-{mark[:8]}@remote.test")
        submit(q, ALICE, rcpts, mark)
    wait_for(
        lambda: all((rows := q.queued_with(m)) and all(r["attempts"] >= 1 for r in rows) for m in marks),
        message="every message to be tried once",
    )
    assert len(remote.with_marker(marks[0])) == 1  # the recipient that was up has it
    assert q.stop() == 0
    waiting = [r for r in q.queue() if r["address"].endswith("@down.test")]
    assert len(waiting) == 6 and all(r["state"] == "queued" for r in waiting)
    assert "4.4.1" in waiting[0]["last_error"] and DOWN_IP in waiting[0]["last_error"]

    down = Remote(DOWN_IP)
    remotes.append(down.start())
    q.start()
    for mark in marks:
        wait_for(lambda mark=mark: down.with_marker(mark), message=f"{mark} after the restart")
    time.sleep(1.2)
    for i, mark in enumerate(marks):
        (got,) = down.with_marker(mark)
        assert got.recipients == [f"user{i}@down.test"]
    assert len(remote.with_marker(marks[0])) == 1
    assert all(q.queued_with(m) == [] for m in marks)


# --- the queue commands --------------------------------------------------------------------------------------


def test_queue_commands(h: Homemail, remote: Remote) -> None:
    marks = {name: marker() for name in ("retry", "delete", "bounce")}
    rcpts = {name: f"held-{name}-{mark[:8]}@remote.test" for name, mark in marks.items()}
    HELD.update(rcpts.values())
    for name, mark in marks.items():
        submit(h, HENRY, [rcpts[name]], mark)
    rows = wait_for(
        lambda: (
            (found := {n: h.queued_with(m) for n, m in marks.items()})
            and all(r and r[0]["attempts"] == 1 for r in found.values())
            and found
        ),
        message="one attempt of each",
    )
    ids = {name: r[0]["message_id"] for name, r in rows.items()}

    listing = h.cli("queue", "list").stdout
    for name in marks:
        assert f"<{rcpts[name]}>" in listing
        line = next(line for line in listing.splitlines() if f"<{rcpts[name]}>" in line)
        assert "attempts 1" in line and "451 4.2.0 Held by the test" in line, line
        assert any(line.split()[:1] == [str(ids[name])] for line in listing.splitlines())
    assert f"<{HENRY}>" in listing
    assert "3 message(s) queued" in listing

    shown = h.cli("queue", "show", str(ids["retry"])).stdout
    assert f"sender: <{HENRY}>" in shown
    assert f"recipient: <{rcpts['retry']}> state=queued attempts=1" in shown
    assert f"remote=mx.remote.test [{REMOTE_IP}]" in shown
    assert f"Subject: test {marks['retry']}" in shown
    assert h.cli("queue", "show", "999999", check=False).returncode == 1

    # The remote would now take all three; only the one retried goes (the others wait an hour).
    HELD.difference_update(rcpts.values())
    assert "1 recipient(s) scheduled for now" in h.cli("queue", "retry", str(ids["retry"])).stdout
    wait_for(lambda: remote.with_marker(marks["retry"]), message="the retried message")
    assert h.queued_with(marks["retry"]) == []

    # delete: gone without a word to the sender.
    assert f"deleted {ids['delete']}" in h.cli("queue", "delete", str(ids["delete"])).stdout
    assert h.queued_with(marks["delete"]) == []

    # bounce: the sender gets a failure report with the reason.
    out = h.cli("queue", "bounce", str(ids["bounce"]), "--reason", "Stuck for too long").stdout
    assert "1 recipient(s) will be returned to the sender" in out
    (notice,) = wait_for(lambda: notices(h, HENRY, marks["bounce"]), message="the bounce report")
    (r,) = parse_dsn(notice).recipients
    assert (r["action"], r["status"]) == ("failed", "5.0.0")
    assert r["final-recipient"] == f"rfc822; {rcpts['bounce']}"
    assert "Stuck for too long" in r["diagnostic-code"]
    wait_for(lambda: h.queued_with(marks["bounce"]) == [], message="the bounced message to leave")

    # Retrying everything now finds nothing: neither the deleted nor the bounced message is ever sent.
    assert "0 recipient(s) scheduled for now" in h.cli("queue", "retry").stdout
    time.sleep(1)
    assert remote.with_marker(marks["delete"]) == [] and remote.with_marker(marks["bounce"]) == []
    assert notices(h, HENRY, marks["delete"]) == []
    assert len(remote.with_marker(marks["retry"])) == 1
    assert "0 message(s) queued" in h.cli("queue", "list").stdout


def test_expired_message_fails_with_a_report(h: Homemail, remote: Remote) -> None:
    """[queue] expire: the first attempt after it is the last; a temporary failure then becomes a failure."""
    mark = marker()
    rcpt = f"always-{mark[:8]}@remote.test"
    submit(h, HENRY, [rcpt], mark)
    (row,) = wait_for(
        lambda: (rows := h.queued_with(mark)) and rows[0]["attempts"] == 1 and rows,
        message="the first attempt",
    )
    assert row["state"] == "queued"  # young enough to wait
    wait_for(lambda: time.time() - row["created"] > 3.2, message="the message to expire")
    h.cli("queue", "retry", str(row["message_id"]))
    (notice,) = wait_for(lambda: notices(h, HENRY, mark), message="the failure report")
    (r,) = parse_dsn(notice).recipients
    assert (r["action"], r["status"]) == ("failed", "5.7.1")
    assert "451 4.7.1 Greylisted" in r["diagnostic-code"] and "gave up" in r["diagnostic-code"]
    assert h.queued_with(mark) == []
