"""POP3 test helpers: a raw client that shows the exact bytes on the wire, and ways to put mail in and look at it
over IMAP and SMTP."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness import ServerProcess, deep_merge, no_verify, with_store
from homemail.store import DeliveryTarget
from homemail.store.sqlite import SQLiteStore
from imap.imaputil import DOMAIN, PASSWORD, _counter, add_accounts


def start(root: Path, listeners: tuple[str, ...], config: Mapping[str, Any]) -> ServerProcess:
    table: dict[str, Any] = {"storage": {"fsync": False}}
    deep_merge(table, config)
    server = ServerProcess(root=root, listeners=listeners, config=table)
    add_accounts(server, [])
    return server.start()


def new_user(server: ServerProcess) -> str:
    address = f"pop{next(_counter)}@{DOMAIN}"
    add_accounts(server, [address])
    return address


class Raw:
    """A POP3 client that sends exact bytes and returns the exact bytes of each response."""

    def __init__(
        self,
        port: int,
        tls: bool = False,
        source: str | None = None,
        timeout: float = 10,
        rcvbuf: int | None = None,
    ) -> None:
        sock = socket.socket()
        sock.settimeout(timeout)
        if rcvbuf:  # a small receive window: the server's writes block soon
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock = no_verify().wrap_socket(sock)
        self.sock: socket.socket = sock
        self.buf = b""
        self.greeting = self.line()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> bytes:
        """One line with its CRLF; EOFError when the server closed the connection."""
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def cmd(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def ok(self, text: str | bytes) -> bytes:
        reply = self.cmd(text)
        assert reply.startswith(b"+OK"), (text, reply)
        return reply

    def err(self, text: str | bytes) -> bytes:
        reply = self.cmd(text)
        assert reply.startswith(b"-ERR"), (text, reply)
        return reply

    def body(self) -> bytes:
        """The rest of a multi-line response as sent (still byte-stuffed), without the terminating line."""
        lines = []
        while (line := self.line()) != b".\r\n":
            lines.append(line)
        return b"".join(lines)

    def multi(self, text: str) -> bytes:
        self.ok(text)
        return self.body()

    def login(self, user: str, password: str = PASSWORD) -> bytes:
        self.ok(f"USER {user}")
        return self.ok(f"PASS {password}")

    def stls(self) -> None:
        assert self.cmd("STLS").startswith(b"+OK")
        assert not self.buf
        self.sock = no_verify().wrap_socket(self.sock)

    def closed(self, timeout: float = 5) -> bool:
        """True when the server closes the connection within ``timeout`` (what it sent meanwhile is kept)."""
        self.sock.settimeout(timeout)
        try:
            while data := self.sock.recv(65536):
                self.buf += data
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError):
            return True
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stuffed_lines(body: bytes) -> list[bytes]:
    return body.split(b"\r\n")[:-1]


def unstuff(body: bytes) -> bytes:
    """RFC 1939 3: the client removes the first "." of a line that starts with one."""
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in stuffed_lines(body))


def imap(server: ServerProcess, user: str, select: str | None = "INBOX") -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=10)
    c.login(user, PASSWORD)
    if select:
        typ, _ = c.select(select)
        assert typ == "OK"
    return c


def put(server: ServerProcess, user: str, *messages: bytes, flags: str = "") -> None:
    """Append the messages to the user's INBOX over IMAP, in order."""
    c = imap(server, user, select=None)
    try:
        for m in messages:
            typ, data = c.append("INBOX", f"({flags})" if flags else None, None, m)
            assert typ == "OK", data
    finally:
        c.logout()


def deliver(server: ServerProcess, user: str, *messages: bytes) -> None:
    """Deliver into the user's INBOX through the store of the server's data folder (for servers without IMAP)."""

    async def run(store: SQLiteStore) -> None:
        account = await store.get_account(user)
        assert account is not None
        for m in messages:
            await store.deliver(m, [DeliveryTarget(account.id)])

    with_store(server.data_dir, run)


def no_internal_errors(server: ServerProcess) -> bool:
    log = server.log()
    return "internal error" not in log.lower() and "Traceback" not in log


def send_smtp(server: ServerProcess, rcpt: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as s:
        s.sendmail("bob@example.org", [rcpt], data)


def imap_flags(server: ServerProcess, user: str) -> list[str]:
    """The FLAGS of every INBOX message, in UID order."""
    c = imap(server, user)
    try:
        typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
        assert typ == "OK"
        return [item.decode() for item in data if isinstance(item, bytes)]
    finally:
        c.logout()


def inbox_count(server: ServerProcess, user: str) -> int:
    c = imap(server, user, select=None)
    try:
        typ, data = c.status("INBOX", "(MESSAGES)")
        assert typ == "OK"
        return int(data[0].decode().split("MESSAGES ")[1].rstrip(")"))
    finally:
        c.logout()


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)
