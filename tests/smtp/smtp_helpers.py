"""Shared pieces of the SMTP tests: a configured MX server, reading mail back (the raw line client is
tests/smtpclient.py)."""

from __future__ import annotations

from harness import ServerProcess

USERS = ("alice@example.org", "bob@example.org", "carol@example.net")
ALIASES = {
    "team@example.org": ["alice@example.org", "bob@example.org"],
    "@catchall.test": ["carol@example.net"],
    "fwd@example.org": ["someone@elsewhere.invalid"],
    "mixed@example.org": ["bob@example.org", "someone@elsewhere.invalid"],
    "postmaster@example.org": ["alice@example.org"],
}


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
