"""MTA-STS (RFC 8461) on the sending side: homemail S (NET.40) finds a policy through knot's ``_mta-sts``
TXT record, fetches it over HTTPS from ``mta-sts.<domain>`` (a test server on NET.42 with a trustme
certificate, found through the same DNS), and in enforce mode sends only to matching MX hosts whose certificate
is valid. The receiving homemail R (NET.41) has a trustme certificate for mx.sts.test only.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from delivery_helpers import Homemail, loopback_block, marker, received_fields, start_all, submit, wait_for

from dnsserver import KnotServer
from harness import free_port, issue_certificate

NET = loopback_block()
S_IP, R_IP, HTTPS_IP = NET + "40", NET + "41", NET + "42"
HTTPS_PORT = free_port(HTTPS_IP)


def sts_zone(policy_id: str) -> list[str]:
    return ["@ MX 10 mx", f"mx A {R_IP}", f'_mta-sts TXT "v=STSv1; id={policy_id}"', f"mta-sts A {HTTPS_IP}"]


ZONES = {
    "sts.test": sts_zone("1"),  # enforce, the MX matches and has a valid certificate
    "bad.test": sts_zone("1"),  # enforce, the MX matches but its certificate is for another name
    "nomatch.test": sts_zone("1"),  # enforce, no MX matches the policy
    "testing.test": sts_zone("1"),  # testing: the bad certificate does not stop delivery
    "s.test": ["@ MX 10 mx", f"mx A {S_IP}", f'@ TXT "v=spf1 ip4:{S_IP} -all"'],  # the sender's
}
POLICIES = {
    "mta-sts.sts.test": "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n",
    "mta-sts.bad.test": "version: STSv1\nmode: enforce\nmx: *.bad.test\nmax_age: 86400\n",
    "mta-sts.nomatch.test": "version: STSv1\nmode: enforce\nmx: mail.nomatch.test\nmax_age: 86400\n",
    "mta-sts.testing.test": "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
}
SENDER = "alice@s.test"


class PolicyServer:
    """HTTPS on HTTPS_IP serving POLICIES by Host; counts the fetches."""

    def __init__(self, context: ssl.SSLContext) -> None:
        fetches: dict[str, int] = {}
        self.fetches = fetches

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").partition(":")[0]
                body = POLICIES.get(host)
                if body is None or self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                fetches[host] = fetches.get(host, 0) + 1
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((HTTPS_IP, HTTPS_PORT), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def world(knot: KnotServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Homemail, Homemail]]:
    work: Path = tmp_path_factory.mktemp("mtasts")
    ca, ca_file, cert_file, key_file = issue_certificate(work, "mx.sts.test", prefix="mx-")
    web = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*POLICIES).configure_cert(web)
    policies = PolicyServer(web)

    r = Homemail(R_IP, "mx.sts.test", knot.nameserver, config={"tls": {"cert": cert_file, "key": key_file}})
    s = Homemail(
        S_IP,
        "mx.s.test",
        knot.nameserver,
        config={
            "delivery": {"mta_sts_port": HTTPS_PORT, "mta_sts_cafile": ca_file, "tls_cafile": ca_file},
        },
    )
    r.provision([f"user@{d}" for d in ZONES if d != "s.test"])
    s.provision([SENDER])
    r.policies = policies  # type: ignore[attr-defined]
    try:
        start_all(r, s)
        yield s, r
    finally:
        s.stop()
        r.stop()
        policies.stop()


@pytest.fixture(scope="module")
def s(world: tuple[Homemail, Homemail]) -> Homemail:
    return world[0]


@pytest.fixture(scope="module")
def r(world: tuple[Homemail, Homemail]) -> Homemail:
    return world[1]


def test_enforce_with_a_valid_certificate_delivers(s: Homemail, r: Homemail) -> None:
    marks = [marker(), marker()]
    for mark in marks:
        submit(s, SENDER, ["user@sts.test"], mark)
    for mark in marks:
        (message,) = r.wait_message("user@sts.test", mark)
        assert "by mx.sts.test (homemail) with ESMTPS (TLS" in received_fields(message)[0]
    assert "mta-sts sts.test: policy 1, mode enforce, mx mx.sts.test" in s.log()
    assert r.policies.fetches["mta-sts.sts.test"] == 1  # type: ignore[attr-defined]  # cached for max_age


def test_enforce_refuses_a_certificate_for_another_name(s: Homemail, r: Homemail) -> None:
    mark = marker()
    submit(s, SENDER, ["user@bad.test"], mark)
    (row,) = wait_for(
        lambda: (rows := s.queued_with(mark)) and rows[0]["attempts"] >= 1 and rows,
        message="a failed attempt",
    )
    assert row["state"] == "queued"
    assert "TLS with mx.bad.test failed" in row["last_error"], row["last_error"]
    assert r.with_marker("user@bad.test", mark) == []
    s.cli("queue", "delete", str(row["message_id"]))


def test_enforce_with_no_matching_mx_waits(s: Homemail, r: Homemail) -> None:
    mark = marker()
    submit(s, SENDER, ["user@nomatch.test"], mark)
    (row,) = wait_for(
        lambda: (rows := s.queued_with(mark)) and rows[0]["attempts"] >= 1 and rows,
        message="a failed attempt",
    )
    assert row["last_error"].startswith("451 4.7.5 No MX host of nomatch.test matches its MTA-STS policy")
    assert r.with_marker("user@nomatch.test", mark) == []
    s.cli("queue", "delete", str(row["message_id"]))


def test_testing_mode_delivers_despite_the_certificate(s: Homemail, r: Homemail) -> None:
    mark = marker()
    submit(s, SENDER, ["user@testing.test"], mark)
    r.wait_message("user@testing.test", mark)
    assert "mta-sts testing.test: policy 1, mode testing" in s.log()
