"""Crash durability: SIGKILL the server under concurrent SMTP load, restart it, and check every mailbox.

The rule under test: a 250 after DATA means the message is on disk in every recipient's mailbox, so a crash at
any moment loses no acknowledged message and leaves no partial message visible; files written for messages
never acknowledged are gone after the next start.

Each message is classified from the client's side:
  acked    250 received: present exactly once in every recipient's INBOX, byte for byte;
  unknown  end of data sent, the reply never came: absent everywhere, or present once in every recipient's
           INBOX (delivery is one transaction) and whole; whichever it is, it stays so after later crashes;
  absent   the connection broke before the end of data was handed to the kernel: nowhere.
Several kill/restart cycles run in the one test, each killing at a different moment. During the load the CLI
opens the store too (as an administrator would while the server runs), which must not disturb deliveries.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import smtplib
import socket
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from harness import ServerProcess

USERS = ("alice@example.org", "bob@example.org", "carol@example.net")
CLIENTS = 12
CYCLES = 3
MARKER_RE = re.compile(rb"^X-Crash-Marker: (\S+)$", re.MULTILINE)
# Return-Path, then one Received field (continuation lines start with a tab) and the Authentication-Results
# the MX adds, then the message as sent.
TRACE_RE = re.compile(
    rb"Return-Path: <([^>]*)>\nReceived: [^\n]*\n(?:\t[^\n]*\n)*"
    rb"(?:Authentication-Results: [^\n]*\n(?:[ \t][^\n]*\n)*)?"
)


@dataclass
class Sent:
    marker: str
    sender: str
    rcpts: tuple[str, ...]
    data: bytes  # as sent, CRLF line endings, without the terminating "."
    state: str = "absent"  # "acked", "unknown" or "absent"; "sending" while the end of data is in flight
    cut_in_data: bool = False  # the connection broke while the message data was being sent


class Client:
    """A raw SMTP client on one connection; every message it starts is recorded in ``log``."""

    def __init__(self, port: int, name: str, seed: int, log: list[Sent]) -> None:
        self.port = port
        self.name = name
        self.rng = random.Random(seed)
        self.log = log
        self.sock: socket.socket | None = None
        self.rfile: BinaryIO | None = None
        self.error: str | None = None  # a reply the server should never have given

    def reply(self) -> int:
        assert self.rfile is not None
        while True:
            line = self.rfile.readline()
            if not line:
                return 0  # EOF: the server went away
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3])

    def cmd(self, line: str) -> int:
        assert self.sock is not None
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def message(self, n: int) -> Sent:
        marker = f"{self.name}-{n}-{self.rng.getrandbits(48):012x}"
        rcpts = tuple(sorted(self.rng.sample(USERS, self.rng.choice((1, 1, 2, 3)))))
        sender = f"{self.name}@remote.example"
        # Mostly small, some medium, some large enough that a kill lands while the data is on the wire.
        size = self.rng.choice((600, 1_000, 2_000, 5_000, 30_000, 250_000))
        head = (
            f"From: <{sender}>\r\nTo: {', '.join(f'<{r}>' for r in rcpts)}\r\n"
            f"Subject: crash test {marker}\r\nMessage-ID: <{marker}@remote.example>\r\n"
            f"X-Crash-Marker: {marker}\r\n\r\n"
        ).encode()
        lines = []
        total = 0
        i = 0
        while total < size:
            line = f"{marker} line {i:06d} {self.rng.getrandbits(160):040x}\r\n".encode()
            lines.append(line)
            total += len(line)
            i += 1
        return Sent(marker, sender, rcpts, head + b"".join(lines))

    def run(self, stop: threading.Event) -> None:
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # A small send buffer keeps a large message on the wire until the server has read it, so a kill
            # also lands while the client is still sending.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
            self.sock.settimeout(10)
            self.sock.connect(("127.0.0.1", self.port))
            self.rfile = self.sock.makefile("rb")
            if self.reply() != 220 or self.cmd("EHLO client.example") != 250:
                self.error = "no greeting or EHLO refused"
                return
            n = 0
            while not stop.is_set():
                msg = self.message(n)
                n += 1
                self.log.append(msg)
                for line, want in (
                    (f"MAIL FROM:<{msg.sender}>", 250),
                    *((f"RCPT TO:<{r}>", 250) for r in msg.rcpts),
                    ("DATA", 354),
                ):
                    code = self.cmd(line)
                    if code != want:
                        if code != 0:
                            self.error = f"{msg.marker}: reply {code} to {line}"
                        return
                msg.state = "sending"
                # If sendall raises, part of the end of data never reached the kernel: the server cannot
                # have seen it, so the message must not be delivered.
                self.sock.sendall(msg.data + b".\r\n")
                msg.state = "unknown"
                code = self.reply()
                if code == 250:
                    msg.state = "acked"
                elif code != 0:
                    msg.state = "absent"
                    self.error = f"{msg.marker}: reply {code} to the end of data"
                    return
                else:
                    return
        except OSError:
            pass
        finally:
            for m in self.log:
                if m.state == "sending":
                    m.state, m.cut_in_data = "absent", True
            if self.sock is not None:
                self.sock.close()


def export_all(server: ServerProcess, address: str) -> list[bytes]:
    """Every message in ``address``'s INBOX via ``homemail export`` (LF line endings); other folders empty."""
    work = Path(tempfile.mkdtemp(prefix="homemail-crash-export-"))
    try:
        server.cli("export", address, str(work / "m"))
        inbox = work / "m" / "cur"
        elsewhere = [p for p in (work / "m").rglob("*/*") if p.is_file() and p.parent.name in ("cur", "new")]
        assert all(p.parent == inbox for p in elsewhere), f"{address}: mail outside INBOX"
        return [p.read_bytes() for p in sorted(inbox.iterdir())]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_whole(found: bytes, msg: Sent) -> None:
    """The exported copy is the trace fields the server prepends plus exactly the bytes sent."""
    trace = TRACE_RE.match(found)
    assert trace is not None, f"{msg.marker}: no trace fields at the top: {found[:300]!r}"
    assert trace.group(1) == msg.sender.encode(), msg.marker
    body = found[trace.end() :]
    expected = msg.data.replace(b"\r\n", b"\n")
    assert len(body) == len(expected), f"{msg.marker}: {len(body)} bytes, sent {len(expected)}"
    assert body == expected, f"{msg.marker}: content differs from what was sent"


def check_mailboxes(server: ServerProcess, sent: dict[str, Sent]) -> None:
    """Every message ever sent against every INBOX; settles "unknown" ones to what the store shows."""
    counts: dict[str, Counter[str]] = {}
    for user in USERS:
        counts[user] = Counter()
        for found in export_all(server, user):
            markers = MARKER_RE.findall(found)
            assert len(markers) == 1, f"{user}: a message without exactly one marker: {found[:300]!r}"
            marker = markers[0].decode()
            assert marker in sent, f"{user}: a message that was never sent: {marker}"
            check_whole(found, sent[marker])
            counts[user][marker] += 1
    for marker, msg in sent.items():
        seen = {u: counts[u][marker] for u in USERS}
        for u in USERS:
            if u not in msg.rcpts:
                assert seen[u] == 0, f"{marker} reached {u}, not a recipient"
        copies = [seen[r] for r in msg.rcpts]
        if msg.state == "acked":
            assert copies == [1] * len(msg.rcpts), f"acknowledged {marker} lost or doubled: {seen}"
        elif msg.state == "absent":
            assert copies == [0] * len(msg.rcpts), f"{marker} was never completed but is there: {seen}"
        else:
            assert copies in ([0] * len(msg.rcpts), [1] * len(msg.rcpts)), (
                f"{marker} partly delivered: {seen}"
            )
            msg.state = "acked" if copies[0] else "absent"


def check_data_dir(server: ServerProcess) -> None:
    """After a restart: nothing left in incoming/, and the files in blobs/ are exactly the committed ones."""
    data = server.data_dir
    assert os.listdir(data / "incoming") == [], "files left in incoming/ after the restart"
    on_disk = {p.name for p in (data / "blobs").glob("*/*")}
    db = sqlite3.connect(f"file:{data / 'homemail.db'}?mode=ro", uri=True)
    try:
        rows = {r[0] for r in db.execute("SELECT id FROM blob")}
    finally:
        db.close()
    assert rows - on_disk == set(), f"committed messages without a file: {sorted(rows - on_disk)[:5]}"
    assert on_disk - rows == set(), f"files no message refers to: {sorted(on_disk - rows)[:5]}"


def probe(server: ServerProcess, n: int) -> Sent:
    """A message after the restart: the server must take new mail."""
    marker = f"probe-{n}-{random.getrandbits(48):012x}"
    data = f"Subject: after restart {n}\r\nX-Crash-Marker: {marker}\r\n\r\nstill here\r\n".encode()
    msg = Sent(marker, "probe@remote.example", USERS, data)
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=20) as s:
        refused = s.sendmail(msg.sender, list(USERS), data)
    assert refused == {}
    msg.state = "acked"
    return msg


def test_sigkill_under_load_loses_no_acknowledged_message(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "srv")
    for user in USERS:
        server.add_user(user)
    sent: dict[str, Sent] = {}
    rng = random.Random()
    server.start()
    try:
        for cycle in range(CYCLES):
            logs: list[list[Sent]] = [[] for _ in range(CLIENTS)]
            stop = threading.Event()
            clients = [
                Client(server.port("smtp"), f"c{cycle}t{i}", rng.getrandbits(32), logs[i])
                for i in range(CLIENTS)
            ]
            threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
            for t in threads:
                t.start()
            # Kill at a different moment each cycle, while the clients are mid-transaction. Meanwhile the
            # CLI opens the store, as an administrator would: it must not disturb deliveries in progress.
            kill_at = time.monotonic() + 1.0 + 0.4 * cycle + rng.random() * 0.3
            server.cli("user", "list")
            acked_then = sum(m.state == "acked" for log in logs for m in log)
            time.sleep(max(0.5, kill_at - time.monotonic()))
            acked_now = sum(m.state == "acked" for log in logs for m in log)
            server.kill()
            stop.set()
            for t in threads:
                t.join(30)
                assert not t.is_alive(), "a client hangs after the kill"
            assert [c.error for c in clients if c.error] == []
            cycle_msgs = [m for log in logs for m in log]
            states = Counter(m.state for m in cycle_msgs)
            assert acked_now > acked_then, "no message acknowledged after the CLI opened the store"
            for m in cycle_msgs:
                sent[m.marker] = m

            unknown = [m for m in cycle_msgs if m.state == "unknown"]
            server.start()
            check_data_dir(server)
            p = probe(server, cycle)
            sent[p.marker] = p
            check_mailboxes(server, sent)
            print(
                f"cycle {cycle}: {len(cycle_msgs)} started, {states['acked']} acknowledged,"
                f" {len(unknown)} unknown ({sum(m.state == 'acked' for m in unknown)} of them delivered),"
                f" {states['absent']} cut off ({sum(m.cut_in_data for m in cycle_msgs)} in the data)"
            )
    finally:
        server.kill()
    recovery = re.findall(r"store recovery: .*", server.log())
    print("\n".join(recovery))
