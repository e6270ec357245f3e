"""Shared pieces of the sending tests: homemail instances on port 25 of their own loopback address with a knot
DNS server, a scriptable remote SMTP server (aiosmtpd), DKIM verification against knot, reading mail and the
queue back.

Addresses: each test module takes its own block of loopback addresses (:func:`loopback_block`, 127.A.B.x with
A and B chosen at random), so servers on port 25 of one module never meet those of another module, or of another
test run on the same machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import re
import smtplib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, TypeVar

import dkim
import dns.message
import dns.query
import dns.rdatatype

import smtpclient
from harness import ServerProcess, deep_merge, no_verify, password_hashes, with_store

T = TypeVar("T")

PASSWORD = "correct horse battery"


def loopback_block() -> str:
    """A random ``127.A.B.`` prefix (Linux routes all of 127/8 to the loopback interface)."""
    rng = random.SystemRandom()
    return f"127.{rng.randint(100, 254)}.{rng.randint(0, 255)}."


def marker() -> str:
    return uuid.uuid4().hex


def wait_for(what: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, message: str = "") -> T:
    """Poll ``what`` until it returns something true; its last value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or what}")
        time.sleep(interval)


# --- homemail instances ---------------------------------------------------------------------------------


class Homemail(ServerProcess):
    """A homemail with its MX on ``host``:25, submission listeners on free ports of the same address, and
    accounts made straight in the store before the first start (quicker than one CLI run per account)."""

    def __init__(
        self,
        host: str,
        hostname: str,
        nameserver: str | None = None,
        config: Mapping[str, Any] | None = None,
        listeners: tuple[str, ...] = ("smtp", "submission", "submissions"),
    ) -> None:
        base: dict[str, Any] = {
            "storage": {"fsync": False},
            "queue": {"retry": ["1s"], "poll_interval": "0.5s"},
            # Outgoing connections from the instance's own address, as its SPF record says.
            "delivery": {
                "source_ipv4": host,
                "connect_timeout": "5s",
                "command_timeout": "20s",
                "idle_close": "1s",
            },
        }
        if "smtp" in listeners:
            base["listen"] = {"smtp": f"{host}:25"}
        if nameserver is not None:
            base["dns"] = {"nameservers": [nameserver], "timeout": "3s"}
        deep_merge(base, config or {})
        super().__init__(listeners=listeners, config=base, host=host, hostname=hostname)
        if "smtp" in listeners:
            self.ports["smtp"] = 25

    def provision(
        self,
        users: Iterable[str],
        aliases: Mapping[str, Sequence[str]] | None = None,
        domains: Iterable[str] = (),
        password: str = PASSWORD,
    ) -> None:
        """Domains (those of the users too), accounts with ``password``, aliases: one store session."""
        from homemail.store.sqlite import SQLiteStore

        users = list(users)
        all_domains = sorted({*domains, *(u.rpartition("@")[2] for u in users)})
        argon, scram = password_hashes(password)

        async def run(store: SQLiteStore) -> None:
            for d in all_domains:
                if not await store.is_local_domain(d):
                    await store.add_domain(d)
            for u in users:
                await store.add_account(u, argon, scram)
            for source, targets in (aliases or {}).items():
                await store.add_alias(source, list(targets))

        with_store(self.data_dir, run)

    def dkim_keygen(self, domain: str) -> list[str]:
        """``homemail dkim keygen DOMAIN``: the zone lines it prints (RSA and Ed25519), for KnotServer."""
        out = self.cli("dkim", "keygen", domain).stdout
        records = [line for line in out.splitlines() if line and not line.startswith(";")]
        assert len(records) == 2, out
        return records

    # --- reading state back, without a CLI run per poll ---

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.data_dir / 'homemail.db'}?mode=ro", uri=True, timeout=10)

    def _blob(self, blob_id: str) -> bytes:
        for path in (
            self.data_dir / "blobs" / blob_id[-2:] / blob_id,
            self.data_dir / "incoming" / blob_id,
        ):
            try:
                return path.read_bytes()
            except FileNotFoundError:
                continue
        return b""

    def messages(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        """The messages of a user's mailbox by UID (CRLF, as stored)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT m.blob_id FROM message m JOIN mailbox b ON b.id = m.mailbox_id"
                " JOIN account a ON a.id = b.account_id WHERE a.address = ? AND b.name = ? ORDER BY m.uid",
                (address, mailbox),
            ).fetchall()
        return [self._blob(r[0]) for r in rows]

    def with_marker(self, address: str, mark: str, mailbox: str = "INBOX") -> list[bytes]:
        return [m for m in self.messages(address, mailbox) if mark.encode() in m]

    def wait_message(self, address: str, mark: str, count: int = 1, timeout: float = 20.0) -> list[bytes]:
        return wait_for(
            lambda: (found := self.with_marker(address, mark)) and len(found) >= count and found,
            timeout,
            message=f"{count} message(s) with {mark} for {address} on {self.hostname}",
        )

    def total_messages(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM message").fetchone()[0])

    def queue(self) -> list[dict[str, Any]]:
        """Every queued recipient row, with its message's sender and file."""
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT r.*, m.sender, m.blob_id, m.created FROM queue_recipient r"
                " JOIN queue_message m ON m.id = r.message_id ORDER BY r.id"
            ).fetchall()
        return [dict(r) for r in rows]

    def queued_with(self, mark: str) -> list[dict[str, Any]]:
        return [r for r in self.queue() if mark.encode() in self._blob(r["blob_id"])]

    @property
    def hostname(self) -> str:
        return str(self.config["hostname"])


def start_all(*servers: ServerProcess) -> None:
    """Start several servers at once (each start is mostly Python imports: run them side by side)."""
    with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
        for f in [pool.submit(s.start) for s in servers]:
            f.result()


def in_parallel(*calls: Callable[[], T]) -> list[T]:
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


# --- DNS -------------------------------------------------------------------------------------------------


def txt_lookup(nameserver: tuple[str, int]) -> Callable[..., bytes | None]:
    """A dkimpy ``dnsfunc`` asking the test DNS server (not homemail's resolver)."""

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        qname = name.decode() if isinstance(name, bytes) else name
        q = dns.message.make_query(qname, dns.rdatatype.TXT)
        r = dns.query.udp(q, nameserver[0], port=nameserver[1], timeout=3)
        for rrset in r.answer:
            for rd in rrset:
                return b"".join(rd.strings)
        return None

    return lookup


def dkim_signatures(message: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature field, in order (LF or CRLF line endings)."""
    d = dkim.DKIM(message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    out = []
    for name, value in d.headers:
        if name.lower() == b"dkim-signature":
            out.append(dkim.util.parse_tag_value(value))
    return out


def verify_all_dkim(message: bytes, nameserver: tuple[str, int]) -> list[str]:
    """Verify every DKIM signature (dkimpy, keys from the test DNS); the algorithms that verified. Fails the
    test when one does not."""
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    sigs = dkim_signatures(message)
    assert sigs, "the message has no DKIM-Signature"
    lookup = txt_lookup(nameserver)
    algorithms = []
    for i, sig in enumerate(sigs):
        d = dkim.DKIM(message)
        ok = d.verify(idx=i, dnsfunc=lookup)
        assert ok, f"DKIM signature {i} ({sig.get(b'a')!r}, s={sig.get(b's')!r}) does not verify"
        algorithms.append(sig[b"a"].decode())
    return algorithms


# --- parsing received mail -------------------------------------------------------------------------------


def parse(message: bytes) -> EmailMessage:
    msg = message_from_bytes(message, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@dataclass
class Report:
    """A DSN taken apart (RFC 3464): the per-message fields, each recipient's fields, the returned message."""

    message: EmailMessage
    per_message: dict[str, str]
    recipients: list[dict[str, str]]
    original: bytes
    original_type: str
    human: str


def _fields(block: str) -> dict[str, str]:
    out: dict[str, str] = {}
    key = ""
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and key:
            out[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            out[key] = value.strip()
    return out


def parse_dsn(message: bytes) -> Report:
    """Check the RFC 3464 structure and take the report apart."""
    msg = parse(message)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert len(parts) == 3, [p.get_content_type() for p in parts]
    human, status, returned = parts
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    # The status part: groups of fields separated by blank lines; the first is per message.
    raw = status.get_payload()
    # The email package parses message/delivery-status into a list of header blocks.
    blocks = [str(b) for b in raw] if isinstance(raw, list) else re.split(r"\r?\n\r?\n", str(raw).strip())
    per_message = _fields(blocks[0])
    recipients = [_fields(b) for b in blocks[1:] if b.strip()]
    assert returned.get_content_type() in ("message/rfc822", "text/rfc822-headers")
    if returned.get_content_type() == "message/rfc822":
        inner = returned.get_payload()
        assert isinstance(inner, list) and len(inner) == 1
        original = inner[0].as_bytes()
    else:
        original = returned.get_payload(decode=True) or b""
    return Report(
        msg, per_message, recipients, original, returned.get_content_type(), str(human.get_content())
    )


def received_fields(message: bytes) -> list[str]:
    """Every Received: field, unfolded, top (newest) first."""
    msg = parse(message)
    return [" ".join(str(v).split()) for v in msg.get_all("Received", [])]


class Raw(smtpclient.Raw):
    """tests/smtpclient.py's client with the sending tests' defaults: a host to name, a 30 s timeout,
    EHLO client.test."""

    ehlo_name = "client.test"

    def __init__(self, port: int, host: str, source: str | None = None, tls: bool = False) -> None:
        super().__init__(port, host, timeout=30, source=source, tls=tls)


# --- submitting ------------------------------------------------------------------------------------------


def compose(
    sender: str, to: Sequence[str], mark: str, subject: str = "", headers: Mapping[str, str] | None = None
) -> bytes:
    lines = [
        f"From: {sender}",
        f"To: {', '.join(to)}",
        f"Subject: {subject or 'test ' + mark}",
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}",
        f"Message-ID: <{mark}@client.test>",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"Hello, this is {mark}.",
        "A second line,  with  spaces   that relaxed canonicalisation folds.",
        "",
    ]
    return "\r\n".join(lines).encode()


def submit(
    server: Homemail,
    user: str,
    to: Sequence[str],
    mark: str,
    sender: str | None = None,
    data: bytes | None = None,
    password: str = PASSWORD,
) -> None:
    """Authenticated submission (STARTTLS, AUTH PLAIN) of one message."""
    sender = sender or user
    with smtplib.SMTP(server.host, server.port("submission"), timeout=30) as c:
        c.starttls(context=no_verify())
        c.login(user, password)
        c.sendmail(sender, list(to), data or compose(sender, to, mark))


# --- a remote SMTP server whose answers the test decides -------------------------------------------------


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


class SMTPPeer:
    """What the aiosmtpd peers of these tests (Remote, deliverability_helpers.SmartRelay) share: the stop, and
    the messages received that carry a mark."""

    received: list[Received]
    lock: threading.Lock
    controller: Any

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def with_marker(self, mark: str) -> list[Received]:
        with self.lock:
            return [m for m in self.received if mark.encode() in m.data]


@dataclass
class Remote(SMTPPeer):
    """An aiosmtpd server on ``host``:25. ``rcpt_reply(address)`` may return a reply line ("451 4.7.1 ...")
    instead of the default 250; ``data_reply(envelope)`` likewise for the end of data; ``rcpt_delay(address)``
    makes it think before answering a RCPT. Everything it accepted is in ``received``."""

    host: str
    port: int = 25
    rcpt_reply: Callable[[str], str | None] = lambda address: None
    data_reply: Callable[[Received], str | None] = lambda message: None
    rcpt_delay: Callable[[str], float] = lambda address: 0.0
    smtputf8: bool = True  # offer SMTPUTF8 (RFC 6531)
    received: list[Received] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)  # RCPTs seen per address
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Any = None

    def start(self) -> Remote:
        from aiosmtpd.controller import Controller

        remote = self

        class Handler:
            async def handle_RCPT(
                self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
            ) -> str:
                with remote.lock:
                    remote.attempts[address] = remote.attempts.get(address, 0) + 1
                delay = remote.rcpt_delay(address)
                if delay:
                    await asyncio.sleep(delay)
                reply = remote.rcpt_reply(address)
                if reply:
                    return reply
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                message = Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(envelope.original_content or envelope.content),
                )
                reply = remote.data_reply(message)
                if reply:
                    return reply
                with remote.lock:
                    remote.received.append(message)
                return "250 2.0.0 Accepted"

        self.controller = Controller(
            Handler(),
            hostname=self.host,
            port=self.port,
            server_hostname=f"remote-{self.host}",
            enable_SMTPUTF8=self.smtputf8,
        )
        self.controller.start()
        return self
