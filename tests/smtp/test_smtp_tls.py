"""STARTTLS on the MX (RFC 3207) over real sockets: advertisement, a verified handshake with the self-signed
certificate made at first start, state after TLS, trace fields, command injection, old protocol versions, swaks.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from smtp_helpers import find, headers_of, inbox, marker, start_mx, swaks

from harness import ServerProcess, require_peer
from smtpclient import Raw

HOSTNAME = "mx.example.test"


class NamedSMTP(smtplib.SMTP):
    """smtplib talking to 127.0.0.1 while calling the server by its name, so the certificate is checked
    against that name (smtplib verifies the host it was given)."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout)


@pytest.fixture(scope="module")
def mx() -> Iterator[ServerProcess]:
    """This module's own MX, with two mailboxes (in place of the shared one of conftest.py)."""
    server = start_mx(("alice@example.org", "bob@example.org"))
    try:
        yield server
    finally:
        server.stop()


def cert_path(mx: ServerProcess) -> Path:
    return Path(mx.data_dir, "tls", "cert.pem")


def verifying_context(mx: ServerProcess) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert_path(mx)))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def tls_text(sock: ssl.SSLSocket) -> str:
    """How the server names this connection's TLS in its Received: field, from the client's side."""
    cipher = sock.cipher()
    version = sock.version()
    assert cipher is not None and version is not None
    return f"{version.replace('v', '')} {cipher[0]} {cipher[2]}"


def received_of(message: bytes) -> str:
    """The first Received: field, unfolded."""
    head = headers_of(message).decode()
    m = re.search(r"^Received: (.*?)\n(?=\S)", head + "\n", re.S | re.M)
    assert m is not None, head
    return " ".join(m.group(1).split())


def keywords(ehlo_text: str) -> list[str]:
    return ehlo_text.split("\n")[1:]


def test_starttls_advertised_and_state_after_it(mx: ServerProcess) -> None:
    raw = Raw(mx.port("smtp"))
    try:
        code, text = raw.cmd("STARTTLS")
        assert code == 503 and text.startswith("5.5.1 "), text  # EHLO first
        code, text = raw.ehlo()
        assert code == 250 and "STARTTLS" in keywords(text)
        code, text = raw.cmd("STARTTLS now")
        assert code == 501 and text.startswith("5.5.4 "), text
        assert raw.cmd("MAIL FROM:<s@remote.example>")[0] == 250
        raw.starttls()
        # RFC 3207 4.2: everything before TLS is forgotten, the EHLO and the transaction too
        code, text = raw.cmd("RCPT TO:<alice@example.org>")
        assert code == 503 and text.startswith("5.5.1 "), text
        code, text = raw.cmd("MAIL FROM:<s@remote.example>")
        assert code == 503 and text.startswith("5.5.1 "), text
        code, text = raw.ehlo()
        assert code == 250
        assert "STARTTLS" not in keywords(text)
        for kw in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"):
            assert kw in keywords(text), kw
        code, text = raw.cmd("STARTTLS")
        assert code == 503 and text.startswith("5.5.1 "), text
        assert raw.cmd("NOOP") == (250, "2.0.0 Ok")  # still usable, still over TLS
        assert isinstance(raw.sock, ssl.SSLSocket)
    finally:
        raw.close()


def test_verified_starttls_with_smtplib_and_trace_field(mx: ServerProcess) -> None:
    path = cert_path(mx)
    assert path.is_file() and (mx.data_dir / "tls" / "key.pem").is_file()
    m = marker()
    with NamedSMTP(HOSTNAME, mx.port("smtp"), local_hostname="client.example", timeout=15) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, text = client.starttls(context=verifying_context(mx))
        assert code == 220 and text.startswith(b"2.0.0 "), text
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        cert = sock.getpeercert()
        assert cert is not None and ("DNS", HOSTNAME) in cert["subjectAltName"]
        expected = tls_text(sock)
        client.ehlo()
        assert not client.has_extn("starttls")
        refused = client.sendmail(
            "s@remote.example", ["alice@example.org"], b"Subject: " + m + b"\r\n\r\nover TLS\r\n"
        )
        assert refused == {}
    found = find(inbox(mx, "alice@example.org"), m)
    assert len(found) == 1
    received = received_of(found[0])
    assert re.search(r"\bwith ESMTPS \(([^)]*)\) id ", received), received
    assert f"with ESMTPS ({expected}) id " in received, (expected, received)


def test_certificate_is_checked_against_the_name(mx: ServerProcess) -> None:
    # The same handshake calling the server by a name the certificate does not hold must fail: the test
    # above is a real verification, not a context that accepts anything.
    with NamedSMTP("other.example.test", mx.port("smtp"), timeout=15) as client:
        client.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=verifying_context(mx))


def test_tls_1_2_client(mx: ServerProcess) -> None:
    m = marker()
    ctx = verifying_context(mx)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with NamedSMTP(HOSTNAME, mx.port("smtp"), local_hostname="client.example", timeout=15) as client:
        client.ehlo()
        assert client.starttls(context=ctx)[0] == 220
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() == "TLSv1.2"
        expected = tls_text(client.sock)
        client.sendmail("s@remote.example", ["bob@example.org"], b"Subject: " + m + b"\r\n\r\nTLS 1.2\r\n")
    found = find(inbox(mx, "bob@example.org"), m)
    assert len(found) == 1
    assert expected.startswith("TLS1.2 ")
    assert f"with ESMTPS ({expected}) id " in received_of(found[0])


def test_tls_1_1_client_is_refused(mx: ServerProcess) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client really offers TLS 1.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    log_start = len(mx.log())
    raw = Raw(mx.port("smtp"))
    try:
        raw.ehlo()
        assert raw.cmd("STARTTLS")[0] == 220
        with pytest.raises(ssl.SSLError) as refused:
            ctx.wrap_socket(raw.sock)
        assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value).upper(), refused.value
    finally:
        raw.close()
    # The server refused the handshake for its version (asyncio closes without sending the alert, so the
    # client only sees the connection end: the reason is in the server's log).
    deadline = time.monotonic() + 10
    while "unsupported protocol" not in mx.log()[log_start:].lower():
        assert time.monotonic() < deadline, mx.log()[log_start:]
        time.sleep(0.05)
    # the server is fine afterwards
    again = Raw(mx.port("smtp"))
    try:
        again.ehlo()
        again.starttls()
        assert again.ehlo()[0] == 250
    finally:
        again.close()


def test_commands_pipelined_after_starttls_are_refused(mx: ServerProcess) -> None:
    # also when the injected bytes come in the same write as STARTTLS with a bare LF
    for sent in (b"STARTTLS\r\nMAIL FROM:<injected@remote.example>\r\n", b"STARTTLS\nRSET\n"):
        raw = Raw(mx.port("smtp"))
        try:
            raw.ehlo()
            raw.send(sent)
            code, text = raw.reply()
            assert code == 554 and text.startswith("5.5.1 "), text
            assert raw.is_closed()
        finally:
            raw.close()


def test_swaks_starttls_delivers(mx: ServerProcess) -> None:
    require_peer("swaks")
    if subprocess.run(["perl", "-MNet::SSLeay", "-e", "1"], capture_output=True).returncode != 0:
        require_peer("perl module Net::SSLeay (swaks --tls)")  # skips, or fails where peers are required
    m = marker().decode()
    r = swaks(
        mx,
        "bob@example.org",
        "s@remote.example",
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        str(cert_path(mx)),
        "--header",
        f"Subject: {m}",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"TLS started with cipher TLSv1\.[23]", r.stdout), r.stdout
    found = find(inbox(mx, "bob@example.org"), m.encode())
    assert len(found) == 1
    assert re.search(r"with ESMTPS \(TLS1\.[23] \S+ \d+\) id ", received_of(found[0]))
