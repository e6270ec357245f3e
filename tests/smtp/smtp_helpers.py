"""Shared pieces of the SMTP tests: a raw line client, a configured MX server, reading mail back."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import tempfile
from pathlib import Path

from harness import ServerProcess

USERS = ("alice@example.org", "bob@example.org", "carol@example.net")
ALIASES = {
    "team@example.org": ["alice@example.org", "bob@example.org"],
    "@catchall.test": ["carol@example.net"],
    "fwd@example.org": ["someone@elsewhere.invalid"],
    "mixed@example.org": ["bob@example.org", "someone@elsewhere.invalid"],
    "postmaster@example.org": ["alice@example.org"],
}


class Raw:
    """A line-level SMTP client over a plain socket: send exact bytes, read replies as (code, text)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 15.0, greet: bool = True) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply() if greet else (0, "")

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def reply(self) -> tuple[int, str]:
        """One reply; multi-line replies are joined with newlines. (0, "") at EOF."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return (0, "\n".join(lines))
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text[4:])
            if len(text) < 4 or text[3] == " ":
                return (int(text[:3]), "\n".join(lines))

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply()

    def ehlo(self, name: str = "client.example") -> tuple[int, str]:
        return self.cmd(f"EHLO {name}")

    def starttls(self) -> None:
        code, _ = self.cmd("STARTTLS")
        assert code == 220
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")

    def is_closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def setup_mx(**config: object) -> ServerProcess:
    server = ServerProcess(config={"smtp": config} if config else None)
    for user in USERS:
        server.add_user(user)
    server.cli("domain", "add", "catchall.test")
    for source, targets in ALIASES.items():
        server.cli("alias", "add", source, *targets)
    return server.start()


def export(server: ServerProcess, address: str) -> dict[str, list[bytes]]:
    """Every message of ``address`` by folder, via ``homemail export`` (LF line endings), by ascending UID."""
    work = Path(tempfile.mkdtemp(prefix="homemail-export-"))
    try:
        server.cli("export", address, str(work / "m"))
        out: dict[str, list[bytes]] = {}
        for cur in (work / "m").rglob("cur"):
            folder = "INBOX" if cur.parent == work / "m" else cur.parent.name
            files = sorted(cur.iterdir(), key=lambda p: int(re.search(r"\.M(\d+)P", p.name).group(1)))  # type: ignore[union-attr]
            out[folder] = [p.read_bytes() for p in files]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def inbox(server: ServerProcess, address: str) -> list[bytes]:
    return export(server, address).get("INBOX", [])


def find(messages: list[bytes], marker: bytes) -> list[bytes]:
    return [m for m in messages if marker in m]


def body_of(message: bytes) -> bytes:
    return message.split(b"\n\n", 1)[1]


def headers_of(message: bytes) -> bytes:
    return message.split(b"\n\n", 1)[0]
