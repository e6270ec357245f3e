"""Fixtures for the IMAP tests: one server per test module (IMAP, IMAPS and SMTP on loopback), and a fresh
account per test, made directly in the store (one argon2 hash for all of them, so this costs milliseconds)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness import ServerProcess, password_hashes, with_store
from imap.rawclient import Raw

if TYPE_CHECKING:
    from homemail.store.sqlite import SQLiteStore

PASSWORD = "password"
DOMAIN = "example.test"
_counter = itertools.count(1)


def add_accounts(server: ServerProcess, addresses: list[str], password: str = PASSWORD) -> None:
    """Accounts in DOMAIN (made if need be), straight in the store."""

    async def add(store: SQLiteStore) -> None:
        if DOMAIN not in {d.name for d in await store.list_domains()}:
            await store.add_domain(DOMAIN)
        pw, scram = password_hashes(password)
        for a in addresses:
            await store.add_account(a, pw, scram)

    with_store(server.data_dir, add)


def start_server(root: Path, **config: object) -> ServerProcess:
    table = {"storage": {"fsync": False}}
    table.update(config)  # type: ignore[arg-type]
    server = ServerProcess(root=root, listeners=("imap", "imaps", "smtp"), config=table)
    add_accounts(server, [])
    return server.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("imap"))
    yield srv
    srv.stop()


@pytest.fixture
def user(server: ServerProcess) -> str:
    """A new account with the default folders and nothing in them."""
    address = f"user{next(_counter)}@{DOMAIN}"
    add_accounts(server, [address])
    return address


def message(
    subject: str = "hello",
    body: str = "Hello, world.",
    sender: str = "Bob <bob@example.org>",
    to: str = "alice@example.test",
    date: str = "Mon, 1 Jan 2024 10:00:00 +0000",
    extra: str = "",
) -> bytes:
    text = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n{extra}"
        f"Message-ID: <{next(_counter)}@example.org>\r\n\r\n{body}\r\n"
    )
    return text.encode()


def connect(server: ServerProcess, user: str, *enable: str) -> Raw:
    """A raw client logged in as ``user`` (password PASSWORD), with ``enable`` ENABLEd."""
    c = Raw(server.port("imap"))
    c.login(user)
    if enable:
        c.ok("ENABLE " + " ".join(enable))
    return c


def append_message(c: Raw, mailbox: str, data: bytes, flags: str = "") -> int:
    """APPEND with a non-synchronizing literal; the new message's UID (from APPENDUID)."""
    flag_part = f"({flags}) " if flags else ""
    _, tagged = c.cmd(f"APPEND {mailbox} {flag_part}{{{len(data)}+}}\r\n".encode() + data)
    m = re.search(rb"\[APPENDUID \d+ (\d+)\]", tagged)
    assert m, tagged
    return int(m.group(1))


def append(c: Raw, mailbox: str = "INBOX", flags: str = "", count: int = 1) -> list[int]:
    """``count`` new messages; their UIDs."""
    return [append_message(c, mailbox, message(), flags) for _ in range(count)]


def response_code(untagged: list[bytes], name: bytes) -> int:
    """The number of the first untagged ``* OK [name n]``."""
    for line in untagged:
        m = re.match(rb"\* OK \[" + name + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError((name, untagged))
