"""The web listener (http and https): the MTA-STS policy (RFC 8461 3.2), Thunderbird autoconfig, Outlook
Autodiscover and the health check, with curl and Python's http.client as clients."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ServerProcess, issue_certificate, require_peer
from homemail import config as config_mod
from homemail import public
from homemail.delivery.mtasts import parse_policy

HOST = "mail.example.org"
DOMAINS = ("example.org", "example.net")


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    work = tmp_path_factory.mktemp("web-tls")
    names = [HOST, *(f"{p}.{d}" for d in DOMAINS for p in ("mta-sts", "autoconfig")), *DOMAINS]
    _, ca_path, cert_file, key_file = issue_certificate(work, *names)
    yield ca_path, cert_file, key_file


@pytest.fixture(scope="module")
def server(ca_file: tuple[Path, Path, Path]) -> Iterator[ServerProcess]:
    _, cert, key = ca_file
    s = ServerProcess(
        listeners=("http", "https", "smtp", "submission", "submissions", "imap", "imaps", "pop3"),
        hostname="mx.internal.test",
        config={
            "tls": {"cert": cert, "key": key},
            "storage": {"fsync": False},
            "public": {
                "hostname": HOST,
                "imaps": 993,
                "submissions": 465,
                "submission": 587,
                "imap": 143,
                "pop3": 0,
            },
            "mta_sts": {"mode": "enforce", "mx": [HOST, "*.backup.example.org"], "max_age": "30d"},
        },
    )
    for d in DOMAINS:
        s.cli("domain", "add", d)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    require_peer("curl")
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


def get(
    server: ServerProcess, path: str, host: str, method: str = "GET", body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", server.port("http"), timeout=20)
    try:
        c.request(method, path, body=body, headers={"Host": host})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


# --- MTA-STS -----------------------------------------------------------------------------------------------


def test_mta_sts_policy_over_https(server: ServerProcess, ca_file: tuple[Path, Path, Path]) -> None:
    ca, _, _ = ca_file
    port = server.port("https")
    for domain in DOMAINS:
        name = f"mta-sts.{domain}"
        r = curl(
            "-i",
            "--cacert",
            str(ca),
            "--resolve",
            f"{name}:{port}:127.0.0.1",
            f"https://{name}:{port}/.well-known/mta-sts.txt",
        )
        assert r.returncode == 0, r.stderr
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"content-type: text/plain" in head.lower()
        assert (
            body
            == (
                f"version: STSv1\r\nmode: enforce\r\nmx: {HOST}\r\nmx: *.backup.example.org\r\nmax_age: 2592000\r\n"
            ).encode()
        )
        policy = parse_policy(body.decode(), "x", time.time())  # what homemail's own sending side accepts
        assert policy.enforced and policy.allows(HOST) and policy.allows("mx1.backup.example.org")
        assert policy.max_age == 30 * 86400


def test_mta_sts_only_for_local_domains(server: ServerProcess) -> None:
    assert get(server, "/.well-known/mta-sts.txt", "mta-sts.example.org")[0] == 200
    assert get(server, "/.well-known/mta-sts.txt", "mta-sts.example.org:8080")[0] == 200
    assert get(server, "/.well-known/mta-sts.txt", "MTA-STS.Example.ORG.")[0] == 200
    for host in ("mta-sts.elsewhere.test", "example.org", HOST, "[::1]", "mta-sts.example.org.evil.test"):
        assert get(server, "/.well-known/mta-sts.txt", host)[0] == 404, host


def test_policy_id_follows_the_policy() -> None:
    a = config_mod.from_dict({"hostname": HOST})
    b = config_mod.from_dict({"hostname": HOST, "mta_sts": {"mode": "enforce"}})
    c = config_mod.from_dict({"hostname": HOST, "mta_sts": {"max_age": 86400}})
    ids = {public.mta_sts_id(x) for x in (a, b, c)}
    assert len(ids) == 3 and all(len(i) == 20 and i.isalnum() for i in ids)
    assert public.mta_sts_id(a) == public.mta_sts_id(config_mod.from_dict({"hostname": HOST}))


# --- Thunderbird autoconfig ----------------------------------------------------------------------------------


def servers_of(xml: bytes) -> list[tuple[str, str, str, str, str]]:
    root = ET.fromstring(xml)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    out = []
    for element in root.iter():
        if element.tag in ("incomingServer", "outgoingServer"):
            out.append(
                (
                    str(element.get("type")),
                    element.findtext("hostname", ""),
                    element.findtext("port", ""),
                    element.findtext("socketType", ""),
                    element.findtext("username", ""),
                )
            )
    return out


EXPECTED = [
    ("imap", HOST, "993", "SSL", "%EMAILADDRESS%"),
    ("imap", HOST, "143", "STARTTLS", "%EMAILADDRESS%"),
    ("smtp", HOST, "465", "SSL", "%EMAILADDRESS%"),
    ("smtp", HOST, "587", "STARTTLS", "%EMAILADDRESS%"),
]


def test_autoconfig_by_address(server: ServerProcess) -> None:
    status, headers, body = get(
        server, "/mail/config-v1.1.xml?emailaddress=someone%40example.net", "anything"
    )
    assert status == 200 and headers["content-type"].startswith("text/xml")
    assert servers_of(body) == EXPECTED  # POP3 is listening but [public] pop3 = 0: not offered
    assert ET.fromstring(body).find("emailProvider").get("id") == "example.net"  # type: ignore[union-attr]


def test_autoconfig_by_host_with_curl(server: ServerProcess) -> None:
    port = server.port("http")
    r = curl("-H", "Host: autoconfig.example.org", f"http://127.0.0.1:{port}/mail/config-v1.1.xml")
    assert servers_of(r.stdout) == EXPECTED
    r = curl(
        "-H", "Host: example.org", f"http://127.0.0.1:{port}/.well-known/autoconfig/mail/config-v1.1.xml"
    )
    assert b"<domain>example.org</domain>" in r.stdout
    assert get(server, "/mail/config-v1.1.xml?emailaddress=a%40elsewhere.test", "elsewhere.test")[0] == 404
    assert get(server, "/mail/config-v1.1.xml", "autoconfig.elsewhere.test")[0] == 404


# --- Outlook Autodiscover ------------------------------------------------------------------------------------

REQUEST = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">'
    "<Request><EMailAddress>{}</EMailAddress>"
    "<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
    "</AcceptableResponseSchema></Request></Autodiscover>"
)
NS = {
    "a": "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006",
    "o": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a",
}


def test_autodiscover(server: ServerProcess) -> None:
    for path in (
        "/autodiscover/autodiscover.xml",
        "/Autodiscover/Autodiscover.xml",
        "/AUTODISCOVER/autodiscover.XML",
    ):
        status, _, body = get(server, path, HOST, "POST", REQUEST.format("bob@example.org").encode())
        assert status == 200, path
        root = ET.fromstring(body)
        protocols = {
            p.findtext("o:Type", namespaces=NS): (
                p.findtext("o:Server", namespaces=NS),
                p.findtext("o:Port", namespaces=NS),
                p.findtext("o:SSL", namespaces=NS),
                p.findtext("o:LoginName", namespaces=NS),
            )
            for p in root.iterfind("o:Response/o:Account/o:Protocol", NS)
        }
        assert protocols == {
            "IMAP": (HOST, "993", "on", "bob@example.org"),
            "SMTP": (HOST, "465", "on", "bob@example.org"),
        }


def test_autodiscover_refusals(server: ServerProcess) -> None:
    post = REQUEST.format("bob@elsewhere.test").encode()
    assert get(server, "/autodiscover/autodiscover.xml", HOST, "POST", post)[0] == 404
    assert get(server, "/autodiscover/autodiscover.xml", HOST, "POST", b"<nothing/>")[0] == 404
    assert get(server, "/autodiscover/autodiscover.xml", HOST, "GET")[0] == 404
    big = REQUEST.format("bob@example.org").encode() + b" " * (70 * 1024)
    assert get(server, "/autodiscover/autodiscover.xml", HOST, "POST", big)[0] == 413
    # What the request says is escaped in the answer.
    odd = REQUEST.format("b&amp;o'b@example.org").encode()
    status, _, body = get(server, "/autodiscover/autodiscover.xml", HOST, "POST", odd)
    assert status == 200 and b"<LoginName>b&amp;amp;o'b@example.org</LoginName>" in body
    ET.fromstring(body)


# --- the rest ------------------------------------------------------------------------------------------------


def test_healthz_and_unknown_paths(server: ServerProcess, ca_file: tuple[Path, Path, Path]) -> None:
    status, headers, body = get(server, "/healthz", "127.0.0.1")
    assert (status, body) == (200, b"ok\n")
    assert "date" in headers and "server" not in headers
    assert get(server, "/", HOST)[0] == 404
    assert get(server, "/.well-known/mta-sts.txt", "mta-sts.example.org", "POST")[0] == 404
    ctx = ssl.create_default_context(cafile=str(ca_file[0]))
    ctx.check_hostname = False
    c = http.client.HTTPSConnection("127.0.0.1", server.port("https"), context=ctx, timeout=20)
    try:
        c.request("GET", "/healthz")
        assert c.getresponse().read() == b"ok\n"
    finally:
        c.close()


def test_keep_alive_connection_does_not_hold_shutdown(tmp_path: Path) -> None:
    s = ServerProcess(root=tmp_path, listeners=("http",), config={"storage": {"fsync": False}})
    s.start()
    c = http.client.HTTPConnection("127.0.0.1", s.port("http"), timeout=20)
    try:
        c.request("GET", "/healthz")
        assert c.getresponse().read() == b"ok\n"  # the connection stays open (HTTP/1.1 keep-alive)
        start = time.monotonic()
        assert s.stop() == 0
        assert time.monotonic() - start < 4
    finally:
        c.close()


def test_dns_json_matches_what_is_served(server: ServerProcess) -> None:
    out = json.loads(server.cli("dns", "example.org", "--json").stdout)
    by = {(r["name"], r["type"]): r["value"] for r in out["records"]}
    policy = get(server, "/.well-known/mta-sts.txt", "mta-sts.example.org")[2]
    assert by[("_mta-sts.example.org.", "TXT")] == f"v=STSv1; id={hashlib.sha256(policy).hexdigest()[:20]}"
    assert by[("_imaps._tcp.example.org.", "SRV")] == f"0 1 993 {HOST}."
    assert by[("_imap._tcp.example.org.", "SRV")] == f"10 1 143 {HOST}."
    assert by[("_pop3._tcp.example.org.", "SRV")] == "0 0 0 ."  # [public] pop3 = 0
    assert by[("_pop3s._tcp.example.org.", "SRV")] == "0 0 0 ."  # no listener
    assert by[("example.org.", "MX")] == f"10 {HOST}."
    assert by[(f"{HOST}.", "A")] == "<your public IPv4>"
    assert any(r["placeholder"] for r in out["records"])
    zone = server.cli("dns", "example.org", "--zone").stdout
    assert f"; {HOST}." in zone and "<your public IPv4>" in zone  # a comment, not a record


def test_silent_connection_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from harness import free_port
    from homemail.config import Endpoint
    from homemail.server import build_services
    from homemail.web import server as web_server

    monkeypatch.setattr(web_server, "FIRST_REQUEST_TIMEOUT", 0.3)

    async def run() -> None:
        cfg = config_mod.from_dict({"hostname": HOST, "data_dir": str(tmp_path), "storage": {"fsync": False}})
        services = await build_services(cfg)
        endpoint = Endpoint("127.0.0.1", free_port())
        listener = await web_server.start_listener(services, endpoint, "http")
        try:
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            start = time.monotonic()
            assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed, nothing said
            assert time.monotonic() - start < 2
            writer.close()
            # A client that talks is served as usual.
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.5)
            assert not reader.at_eof()  # past the silence limit, the kept-alive connection stays
            writer.close()
        finally:
            listener.close()
            await asyncio.wait_for(listener.wait_closed(), 5)
            await services.store.close()

    asyncio.run(run())
