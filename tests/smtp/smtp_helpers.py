"""Shared pieces of the SMTP tests: a configured MX server, reading mail back (the raw line client is
tests/smtpclient.py)."""

from __future__ import annotations

import subprocess
import uuid

from harness import ServerProcess

USERS = ("alice@example.org", "bob@example.org", "carol@example.net")
ALIASES = {
    "team@example.org": ["alice@example.org", "bob@example.org"],
    "@catchall.test": ["carol@example.net"],
    "fwd@example.org": ["someone@elsewhere.invalid"],
    "mixed@example.org": ["bob@example.org", "someone@elsewhere.invalid"],
    "postmaster@example.org": ["alice@example.org"],
}


def start_mx(users: tuple[str, ...], **smtp: object) -> ServerProcess:
    """An MX with just these mailboxes: fewer CLI runs, so a quicker start, than :func:`setup_mx` (which also makes
    the aliases and domains other modules use)."""
    server = ServerProcess(config={"smtp": smtp} if smtp else None)
    for domain in sorted({u.rpartition("@")[2] for u in users}):
        server.cli("domain", "add", domain)
    for user in users:
        server.cli("user", "add", user, "--password-stdin", input="password\n")
    return server.start()


def setup_mx(**config: object) -> ServerProcess:
    server = ServerProcess(config={"smtp": config} if config else None)
    for user in USERS:
        server.add_user(user)
    server.cli("domain", "add", "catchall.test")
    for source, targets in ALIASES.items():
        server.cli("alias", "add", source, *targets)
    return server.start()


def inbox(server: ServerProcess, address: str) -> list[bytes]:
    return server.export(address).get("INBOX", [])


def find(messages: list[bytes], marker: bytes) -> list[bytes]:
    return [m for m in messages if marker in m]


def body_of(message: bytes) -> bytes:
    return message.split(b"\n\n", 1)[1]


def headers_of(message: bytes) -> bytes:
    return message.split(b"\n\n", 1)[0]


def marker() -> bytes:
    """A unique text to find a message by."""
    return uuid.uuid4().hex.encode()


def swaks(server: ServerProcess, to: str, sender: str, *args: str) -> subprocess.CompletedProcess[str]:
    """swaks sending one message from ``sender`` to ``to`` through the server's SMTP port, with ``args``."""
    return subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.port('smtp')}", "--to", to, "--from", sender, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
