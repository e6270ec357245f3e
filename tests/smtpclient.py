"""A line-level SMTP client for the tests: sends exact bytes, reads replies as (code, text)."""

from __future__ import annotations

import socket
import ssl

from harness import no_verify


class Raw:
    """A line-level SMTP client: send exact bytes, read replies as (code, text). Optionally from a chosen source
    address (any 127.0.0.x is ours on Linux), so throttles per client IP can be tested, and over TLS from the
    first byte; ``greet=False`` leaves the greeting unread."""

    ehlo_name = "client.example"  # what :meth:`ehlo` sends unless told

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        timeout: float = 15.0,
        greet: bool = True,
        source: str | None = None,
        tls: bool = False,
    ) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        if tls:
            self.sock = no_verify().wrap_socket(self.sock)
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

    def ehlo(self, name: str | None = None) -> tuple[int, str]:
        return self.cmd(f"EHLO {name or self.ehlo_name}")

    def starttls(self) -> None:
        code, text = self.cmd("STARTTLS")
        assert code == 220, (code, text)
        self.sock = no_verify().wrap_socket(self.sock)
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

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
