"""PROXY protocol end to end: Debian's haproxy in front of homemail on loopback, one frontend per listener and
header version (``send-proxy`` and ``send-proxy-v2``). Clients connect to haproxy from other loopback addresses
(127.0.0.7, ...) and homemail must see those, not haproxy's 127.0.0.1: in the SMTP Received: field, the IMAP and
POP3 per-address connection limits, the login throttle and the logs. haproxy itself connects from 127.0.0.1, the
one trusted address; a connection from it without a header is closed, and from anywhere else a PROXY line is
just a bad command.
"""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from harness import ServerProcess, free_port, no_verify, require_peer

HAPROXY = "/usr/sbin/haproxy"
USER, PASSWORD = "alice@example.org", "password"
IMAP_LIMIT = 2

# frontend name -> (homemail listener, PROXY version)
FRONTENDS = {
    "smtp1": ("smtp", 1),
    "smtp2": ("smtp", 2),
    "submissions2": ("submissions", 2),
    "imap1": ("imap", 1),
    "imaps2": ("imaps", 2),
    "pop31": ("pop3", 1),
    "pop3s2": ("pop3s", 2),
    "http1": ("http", 1),
}


class HAProxy:
    def __init__(self, backends: dict[str, int]) -> None:
        require_peer(HAPROXY)
        self.root = Path(tempfile.mkdtemp(prefix="homemail-haproxy-"))
        self.ports = {name: free_port() for name in FRONTENDS}
        sections = []
        for name, (listener, version) in FRONTENDS.items():
            send = "send-proxy" if version == 1 else "send-proxy-v2"
            sections.append(
                f"frontend {name}\n  bind 127.0.0.1:{self.ports[name]}\n  default_backend {name}_b\n"
                f"backend {name}_b\n  server s 127.0.0.1:{backends[listener]} {send} source 127.0.0.1\n"
            )
        (self.root / "haproxy.cfg").write_text(
            "global\n  maxconn 200\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
            + "".join(sections)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        log = (self.root / "haproxy.log").open("wb")
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.root / "haproxy.cfg")], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 10
        for port in self.ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((self.root / "haproxy.log").read_text()) from None
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerProcess, HAProxy]]:
    server = ServerProcess(
        listeners=("smtp", "submissions", "imap", "imaps", "pop3", "pop3s", "http"),
        hostname="mx.example.org",
        config={
            "log_level": "debug",
            "proxy": {"trusted": ["127.0.0.1"], "timeout": 1},
            "imap": {"max_connections_per_ip": IMAP_LIMIT},
            "auth": {"max_failures": 3, "failure_window": "1h"},
            "storage": {"fsync": False},
        },
    )
    server.cli("domain", "add", "example.org")
    server.add_user(USER, PASSWORD)
    server.start()
    proxy = HAProxy(server.ports)
    try:
        proxy.start()
        yield server, proxy
    finally:
        proxy.stop()
        server.stop()


class Line:
    """A line-based client (IMAP, POP3) from a chosen source address, plain or TLS."""

    def __init__(self, port: int, source: str, tls: bool = False) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        if tls:
            sock = no_verify().wrap_socket(sock)
        self.sock = sock
        self.file = sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline()

    def cmd(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.sock.close()


def send_mail(port: int, source: str, marker: str) -> None:
    msg = EmailMessage()
    msg["From"] = "someone@sender.example"
    msg["To"] = USER
    msg["Subject"] = marker
    msg.set_content(f"{marker}\n")
    with smtplib.SMTP("127.0.0.1", port, "client.example", timeout=30, source_address=(source, 0)) as smtp:
        smtp.send_message(msg)


def inbox(server: ServerProcess, address: str) -> list[bytes]:
    with tempfile.TemporaryDirectory(prefix="homemail-export-") as work:
        server.cli("export", address, f"{work}/m")
        return [p.read_bytes() for p in Path(work, "m", "cur").iterdir()]


def received_of(server: ServerProcess, marker: str) -> str:
    """The Received: field homemail added to the message with ``marker`` (unfolded)."""
    for _ in range(50):
        found = [m for m in inbox(server, USER) if marker.encode() in m]
        if found:
            head = found[0].split(b"\n\n", 1)[0].decode()
            field = head[head.index("Received:") :]
            lines = field.split("\n")
            end = next((i for i, line in enumerate(lines[1:], 1) if not line[:1].isspace()), len(lines))
            return " ".join(line.strip() for line in lines[:end])
        time.sleep(0.1)
    raise AssertionError(f"message {marker} not delivered")


def test_smtp_received_shows_the_client_for_both_versions(servers: tuple[ServerProcess, HAProxy]) -> None:
    server, proxy = servers
    send_mail(proxy.ports["smtp1"], "127.0.0.7", "proxied-v1")
    send_mail(proxy.ports["smtp2"], "127.0.0.8", "proxied-v2")
    first = received_of(server, "proxied-v1")
    second = received_of(server, "proxied-v2")
    assert first.startswith("Received: from client.example ([127.0.0.7])"), first
    assert second.startswith("Received: from client.example ([127.0.0.8])"), second


def test_implicit_tls_after_the_header(servers: tuple[ServerProcess, HAProxy]) -> None:
    _, proxy = servers
    with smtplib.SMTP_SSL(
        "127.0.0.1",
        proxy.ports["submissions2"],
        timeout=30,
        context=no_verify(),
        source_address=("127.0.0.7", 0),
    ) as smtp:
        code, _ = smtp.ehlo("client.example")
        assert code == 250
        smtp.login(USER, PASSWORD)
    c = Line(proxy.ports["imaps2"], "127.0.0.7", tls=True)
    try:
        assert c.line().startswith(b"* OK")
        assert c.cmd(f"a LOGIN {USER} {PASSWORD}").startswith(b"a OK")
    finally:
        c.close()


def test_imap_limit_counts_the_client_not_the_proxy(servers: tuple[ServerProcess, HAProxy]) -> None:
    _, proxy = servers
    port = proxy.ports["imap1"]
    held = [Line(port, "127.0.0.7") for _ in range(IMAP_LIMIT)]
    try:
        for c in held:
            assert c.line().startswith(b"* OK")
        over = Line(port, "127.0.0.7")
        assert over.line().startswith(b"* BYE too many connections")
        over.close()
        # Another client through the same proxy is not affected.
        other = Line(proxy.ports["imaps2"], "127.0.0.8", tls=True)
        assert other.line().startswith(b"* OK")
        other.close()
    finally:
        for c in held:
            c.close()


def test_login_throttle_is_per_client(servers: tuple[ServerProcess, HAProxy]) -> None:
    _, proxy = servers
    c = Line(proxy.ports["imaps2"], "127.0.0.20", tls=True)
    try:
        assert c.line().startswith(b"* OK")
        for i in range(3):
            assert c.cmd(f"a{i} LOGIN nobody{i}@example.org wrong").startswith(f"a{i} NO".encode())
        # The client's address is blocked now, even with the right password...
        assert c.cmd(f"b LOGIN {USER} {PASSWORD}").startswith(b"b NO")
    finally:
        c.close()
    # ...but not every client behind the proxy.
    c = Line(proxy.ports["imaps2"], "127.0.0.21", tls=True)
    try:
        assert c.line().startswith(b"* OK")
        assert c.cmd(f"b LOGIN {USER} {PASSWORD}").startswith(b"b OK")
    finally:
        c.close()


def test_pop3_logs_and_limit(servers: tuple[ServerProcess, HAProxy]) -> None:
    server, proxy = servers
    c = Line(proxy.ports["pop31"], "127.0.0.7")
    try:
        assert c.line().startswith(b"+OK")
        assert c.cmd("USER nobody@example.org").startswith(b"+OK")
        assert c.cmd("PASS wrong").startswith(b"-ERR")
    finally:
        c.close()
    c = Line(proxy.ports["pop3s2"], "127.0.0.8", tls=True)
    try:
        assert c.line().startswith(b"+OK")
        assert c.cmd(f"USER {USER}").startswith(b"+OK")
        assert c.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
        assert c.cmd("QUIT").startswith(b"+OK")
    finally:
        c.close()
    from homemail.pop3.server import MAX_CONNECTIONS_PER_IP

    held = [Line(proxy.ports["pop31"], "127.0.0.9") for _ in range(MAX_CONNECTIONS_PER_IP)]
    try:
        for h in held:
            assert h.line().startswith(b"+OK")
        over = Line(proxy.ports["pop31"], "127.0.0.9")
        assert over.line().startswith(b"-ERR [SYS/TEMP] Too many connections")
        over.close()
        other = Line(proxy.ports["pop31"], "127.0.0.10")
        assert other.line().startswith(b"+OK")
        other.close()
    finally:
        for h in held:
            h.close()
    log = server.log()
    assert "pop3 127.0.0.7: login failed for 'nobody@example.org'" in log
    assert f"pop3 127.0.0.8: {USER} logged in" in log
    assert "127.0.0.7 port" in log and "via proxy 127.0.0.1" in log


def test_http_through_the_proxy(servers: tuple[ServerProcess, HAProxy]) -> None:
    _, proxy = servers
    result = subprocess.run(
        ["curl", "-sS", "--interface", "127.0.0.7", f"http://127.0.0.1:{proxy.ports['http1']}/healthz"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout == "ok\n", result.stderr


def test_trusted_address_without_header_is_closed(servers: tuple[ServerProcess, HAProxy]) -> None:
    server, _ = servers
    start = time.monotonic()
    silent = [
        socket.create_connection(("127.0.0.1", server.port(key)), timeout=5, source_address=("127.0.0.1", 0))
        for key in ("smtp", "imaps", "pop3", "http")
    ]
    try:
        for sock in silent:
            assert sock.recv(100) == b""  # no greeting: closed once the header timeout (1 s) passed
        assert time.monotonic() - start < 4
    finally:
        for sock in silent:
            sock.close()
    sock = socket.create_connection(
        ("127.0.0.1", server.port("smtp")), timeout=5, source_address=("127.0.0.1", 0)
    )
    try:
        sock.sendall(b"EHLO client.example\r\n")  # not a PROXY header: closed at once
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass  # closed with the line unread
    finally:
        sock.close()
    assert "closing a connection from proxy 127.0.0.1" in server.log()


def test_unknown_header_keeps_the_connection_address(servers: tuple[ServerProcess, HAProxy]) -> None:
    server, _ = servers
    c = Line(server.port("pop3"), "127.0.0.1")
    try:
        c.sock.sendall(b"PROXY UNKNOWN\r\n")
        assert c.line().startswith(b"+OK")
        assert c.cmd("USER unknown-header@example.org").startswith(b"+OK")
        assert c.cmd("PASS wrong").startswith(b"-ERR")
    finally:
        c.close()
    assert "pop3 127.0.0.1: login failed for 'unknown-header@example.org'" in server.log()


def test_untrusted_client_cannot_claim_an_address(servers: tuple[ServerProcess, HAProxy]) -> None:
    server, _ = servers
    c = Line(server.port("smtp"), "127.0.0.30")
    try:
        assert c.line().startswith(b"220")  # served directly
        reply = c.cmd("PROXY TCP4 192.0.2.1 127.0.0.1 1234 25")
        assert reply[:1] == b"5", reply  # just a bad command
    finally:
        c.close()
    c = Line(server.port("pop3"), "127.0.0.30")
    try:
        assert c.line().startswith(b"+OK")
        assert c.cmd("PROXY TCP4 192.0.2.1 127.0.0.1 1234 110").startswith(b"-ERR")
    finally:
        c.close()
    c = Line(server.port("imaps"), "127.0.0.30", tls=True)  # TLS at once, as without a proxy
    try:
        assert c.line().startswith(b"* OK")
        assert c.cmd("a NOOP").startswith(b"a OK")
    finally:
        c.close()
