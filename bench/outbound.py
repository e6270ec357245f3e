"""Outbound speed: messages/s from authenticated submission on homemail A to the mailboxes of homemail B, through
A's queue, DKIM signing, an MX lookup (knot on loopback) and SMTP to B's port 25. Prints the figures.

Usage: .venv/bin/python bench/outbound.py [--count N] [--sessions S] [--size BYTES] [--no-fsync] [--keep]

Runs as root (knotd, port 25 on 127.0.0.30 and 127.0.0.31). Both servers keep their default settings (fsync on,
[delivery] per_destination = 4 connections to one domain, [queue] max_deliveries = 50) unless told otherwise.
S client sessions (default 10) each log in once (STARTTLS, AUTH PLAIN) and send their share of the messages one
after the other over that connection.

Figures:
- "submitted": messages/s from the first MAIL until the last 250 of submission (each 250 means A stored the
  message durably in its queue).
- "delivered": messages/s from the first MAIL until every message is in B's mailbox (end to end).
- A's and B's CPU seconds per message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import sqlite3
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from dnsserver import KnotServer  # noqa: E402  (the tests' knot wrapper: one zone file per domain)
from processes import HomemailServer, free_port  # noqa: E402  (the tests' process helpers)

A_IP, B_IP = "127.0.0.30", "127.0.0.31"
SENDER, RECIPIENT = "bench@one.test", "inbox@two.test"
PASSWORD = "bench-password"


class Homemail(HomemailServer):
    def __init__(self, root: Path, host: str, hostname: str, nameserver: str, fsync: bool) -> None:
        super().__init__(root)
        self.host = host
        self.submission = free_port(host)
        self.config_path.write_text(
            f'hostname = "{hostname}"\n'
            f'data_dir = "{self.data_dir}"\n'
            "\n[listen]\n"
            f'smtp = "{host}:25"\n'
            f'submission = "{host}:{self.submission}"\n'
            "\n[auth]\nallow_plaintext_on_loopback = true\n"
            "\n[smtp]\nmax_connections_per_ip = 200\n"
            f'\n[dns]\nnameservers = ["{nameserver}"]\n'
            f'\n[delivery]\nsource_ipv4 = "{host}"\n'
            f"\n[storage]\nfsync = {'true' if fsync else 'false'}\n"
        )

    def add_user(self, address: str) -> None:
        self.cli("domain", "add", address.rpartition("@")[2])
        self.cli("user", "add", address, "--password-stdin", input=PASSWORD + "\n")

    def messages(self) -> int:
        try:
            with sqlite3.connect(f"file:{self.data_dir / 'homemail.db'}?mode=ro", uri=True, timeout=10) as db:
                return int(db.execute("SELECT count(*) FROM message").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    def queued(self) -> int:
        with sqlite3.connect(f"file:{self.data_dir / 'homemail.db'}?mode=ro", uri=True, timeout=10) as db:
            return int(db.execute("SELECT count(*) FROM queue_recipient").fetchone()[0])


def message(i: int, size: int) -> bytes:
    head = (
        f"From: Bench <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: outbound bench {i}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        f"Message-ID: <bench-{i}-{os.getpid()}@one.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    line = "The quick brown fox jumps over the lazy dog, and the queue takes it to the other side.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return (head + body).encode()


def client(
    port: int, count: int, start: int, size: int, errors: list[str], barrier: threading.Barrier
) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with smtplib.SMTP(A_IP, port, timeout=120) as c:
            c.starttls(context=ctx)
            c.login(SENDER, PASSWORD)
            barrier.wait()
            for i in range(start, start + count):
                c.sendmail(SENDER, [RECIPIENT], message(i, size))
    except Exception as e:  # report, do not hang the others
        errors.append(f"{type(e).__name__}: {e}")
        barrier.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="messages in all (default 1000)")
    parser.add_argument(
        "--sessions", type=int, default=10, help="concurrent submission sessions (default 10)"
    )
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    parser.add_argument("--no-fsync", action="store_true", help="[storage] fsync = false on both servers")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/outbound.py runs as root (knotd, port 25)")

    work = Path(tempfile.mkdtemp(prefix="homemail-outbound-"))
    knot = KnotServer(
        {
            "one.test": ["@ MX 10 mx", f"mx A {A_IP}", f'@ TXT "v=spf1 ip4:{A_IP} -all"'],
            "two.test": ["@ MX 10 mx", f"mx A {B_IP}", f'@ TXT "v=spf1 ip4:{B_IP} -all"'],
        }
    ).start()
    a = Homemail(work / "a", A_IP, "mx.one.test", knot.nameserver, not args.no_fsync)
    b = Homemail(work / "b", B_IP, "mx.two.test", knot.nameserver, not args.no_fsync)
    try:
        a.add_user(SENDER)
        b.add_user(RECIPIENT)
        keys = [line for line in a.cli("dkim", "keygen", "one.test").splitlines() if not line.startswith(";")]
        knot.set_zone("one.test", [*knot.zones["one.test"], *keys])
        a.start()
        b.start()

        per = [
            args.count // args.sessions + (1 if i < args.count % args.sessions else 0)
            for i in range(args.sessions)
        ]
        errors: list[str] = []
        barrier = threading.Barrier(args.sessions + 1)
        threads = []
        first = 0
        for n in per:
            t = threading.Thread(target=client, args=(a.submission, n, first, args.size, errors, barrier))
            first += n
            t.start()
            threads.append(t)
        cpu_a, cpu_b = a.cpu_seconds(), b.cpu_seconds()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        submitted = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{len(errors)} session(s) failed: {errors[0]}")
        deadline = time.monotonic() + 600
        while b.messages() < args.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {b.messages()} of {args.count} messages arrived within 10 minutes")
            time.sleep(0.01)
        delivered = time.perf_counter() - t0
        cpu_a, cpu_b = a.cpu_seconds() - cpu_a, b.cpu_seconds() - cpu_b
        drained = time.monotonic() + 10  # A records the last outcomes just after B's 250
        while a.queued() and time.monotonic() < drained:
            time.sleep(0.05)
        extra = b.messages() - args.count
        print(
            f"outbound: {args.count} messages of {args.size} bytes, {args.sessions} submission sessions,"
            f" fsync {'off' if args.no_fsync else 'on'}"
        )
        print(
            f"  submitted  {args.count / submitted:8.1f} messages/s  ({submitted:.2f} s until the last 250)"
        )
        print(
            f"  delivered  {args.count / delivered:8.1f} messages/s  ({delivered:.2f} s until all in B's mailbox)"
        )
        print(
            f"  CPU per message: A {1000 * cpu_a / args.count:.2f} ms, B {1000 * cpu_b / args.count:.2f} ms"
        )
        if extra or a.queued():
            print(f"  WARNING: {extra} extra message(s) at B, {a.queued()} recipient(s) still queued at A")
    finally:
        a.stop()
        b.stop()
        knot.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
