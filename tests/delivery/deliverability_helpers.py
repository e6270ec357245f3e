"""Peers of the deliverability tests: an HTTP "what is my IP" echo service whose answer the test sets, a relay
(aiosmtpd with STARTTLS and AUTH required, its certificate from a test CA), a server that refuses every session at
the greeting, and the reverse zone of a loopback block."""

from __future__ import annotations

import http.server
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delivery_helpers import Received, SMTPPeer

from harness import issue_certificate


def reverse_zone(net: str) -> str:
    """The in-addr.arpa zone of ``127.A.B.`` (a /24)."""
    a, b, c = net.rstrip(".").split(".")
    return f"{c}.{b}.{a}.in-addr.arpa"


class _HTTPServer6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class EchoServer:
    """``GET /`` answers ``answer`` (what the test says our public address is), as text/plain. ``host`` may be an
    IPv6 address; ``port`` 0 is any free one."""

    def __init__(self, host: str, answer: str, port: int = 0) -> None:
        self.answer = answer
        self.requests = 0
        echo = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                echo.requests += 1
                body = (echo.answer + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server_class = _HTTPServer6 if ":" in host else http.server.ThreadingHTTPServer
        self.httpd = server_class((host, port), Handler)
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://[{host}]:{self.port}/" if ":" in host else f"http://{host}:{self.port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> EchoServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class SmartRelay(SMTPPeer):
    """A relay on ``host``:``port``: STARTTLS, then AUTH PLAIN/LOGIN as ``username``/``password``, required;
    everything it accepts is in ``received`` (it hands nothing on)."""

    host: str
    cert: Path
    key: Path
    port: int = 587
    username: str = "homemail"
    password: str = "relay secret"
    received: list[Received] = field(default_factory=list)
    logins: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Any = None

    def start(self) -> SmartRelay:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        relay = self

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                relay.username.encode(),
                relay.password.encode(),
            )
            if ok:
                with relay.lock:
                    relay.logins += 1
            return AuthResult(success=ok, handled=False)

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with relay.lock:
                    relay.received.append(
                        Received(
                            envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)
                        )
                    )
                return "250 2.0.0 Queued by the relay"

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        self.controller = Controller(
            Handler(),
            hostname=self.host,
            port=self.port,
            server_hostname="relay.test",
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator,
        )
        self.controller.start()
        return self


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class RefusingServer:
    """Port 25 of ``host`` greets every client with ``greeting`` (a 5xx) and closes after its QUIT."""

    def __init__(self, host: str, greeting: str, port: int = 25) -> None:
        self.connections = 0
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                server.connections += 1
                self.wfile.write(greeting.encode() + b"\r\n")
                for line in self.rfile:
                    if line.upper().startswith(b"QUIT"):
                        self.wfile.write(b"221 2.0.0 Bye\r\n")
                        return
                    self.wfile.write(b"503 5.5.1 No service\r\n")

        self.tcp = _TCPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.tcp.serve_forever, daemon=True)

    def start(self) -> RefusingServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.tcp.shutdown()
        self.tcp.server_close()


def start_relay(host: str, work: Path) -> tuple[SmartRelay, dict[str, Any]]:
    """A :class:`SmartRelay` for ``relay.test`` on ``host``, and the ``[[relay]]`` table (named "smart") that
    reaches it (its CA as cafile)."""
    _, ca_file, cert_file, key_file = issue_certificate(work, "relay.test", prefix="relay-")
    relay = SmartRelay(host, cert_file, key_file).start()
    table = {
        "name": "smart",
        "host": "relay.test",
        "port": relay.port,
        "tls": "starttls",
        "username": relay.username,
        "password": relay.password,
        "cafile": str(ca_file),
    }
    return relay, table
