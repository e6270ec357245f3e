"""``homemail dns DOMAIN``: the records it prints are valid zone syntax, resolve as printed, and are enough for
another mail server to accept our mail.

Two homemails, R (NET.70, domain r.test) and S (NET.71, domain s.test), each print their records with
``homemail dns --zone``; knot serves exactly those two snippets. Then every printed record is asked of knot, and
S sends to R: through R's MX and A records, with R's MTA-STS policy in enforce mode (the ``_mta-sts`` id and the
policy R's https listener serves, fetched over HTTPS from ``mta-sts.r.test``), and R finds SPF, DKIM and DMARC
passing by S's printed records.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from delivery_helpers import Homemail, loopback_block, marker, received_fields, start_all, submit, wait_for

from dnsserver import KnotServer
from harness import issue_certificate

NET = loopback_block()
R_IP, S_IP = NET + "70", NET + "71"
R_DOMAIN, S_DOMAIN = "r.test", "s.test"
USER, SENDER = f"user@{R_DOMAIN}", f"alice@{S_DOMAIN}"


class World:
    def __init__(self, knot: KnotServer, r: Homemail, s: Homemail, ca_file: Path) -> None:
        self.knot, self.r, self.s, self.ca_file = knot, r, s, ca_file
        self.records: dict[str, dict[str, Any]] = {}
        self.zones: dict[str, str] = {}


async def records_of(server: Homemail, domain: str) -> dict[str, Any]:
    from homemail import config
    from homemail.doctor import records
    from homemail.store.sqlite import SQLiteStore

    store = SQLiteStore(server.data_dir, fsync=False)
    await store.open()
    try:
        found = await records.domain_records(config.load(server.config_path), store, domain)
        return json.loads(json.dumps(records.as_json(found)))
    finally:
        await store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work: Path = tmp_path_factory.mktemp("dns-records")
    names = (f"mx.{R_DOMAIN}", f"mta-sts.{R_DOMAIN}", f"autoconfig.{R_DOMAIN}")
    _, ca_file, cert_file, key_file = issue_certificate(work, *names)

    knot = KnotServer({R_DOMAIN: [], S_DOMAIN: []})
    r = Homemail(
        R_IP,
        f"mx.{R_DOMAIN}",
        knot.nameserver,
        listeners=("smtp", "submission", "submissions", "https"),
        config={
            "tls": {"cert": cert_file, "key": key_file},
            "public": {"ipv4": R_IP},
            "mta_sts": {"mode": "enforce"},
        },
    )
    s = Homemail(
        S_IP,
        f"mx.{S_DOMAIN}",
        knot.nameserver,
        config={
            "public": {"ipv4": S_IP},
            "delivery": {"mta_sts_port": r.port("https"), "mta_sts_cafile": ca_file, "tls_cafile": ca_file},
        },
    )
    r.provision([USER], domains=[R_DOMAIN])
    s.provision([SENDER])
    world = World(knot, r, s, ca_file)
    for server, domain in ((r, R_DOMAIN), (s, S_DOMAIN)):
        server.cli("dkim", "keygen", domain)
        world.zones[domain] = server.cli("dns", domain, "--zone").stdout
        knot.zones[domain] = world.zones[domain].splitlines()
        world.records[domain] = asyncio.run(records_of(server, domain))  # as --json says (one CLI run less)
    try:
        knot.start()
        start_all(r, s)
        yield world
    finally:
        s.stop()
        r.stop()
        knot.stop()


def _txt(rdata: str) -> tuple[str, list[str]]:
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', rdata)
    return "".join(strings), strings


@pytest.mark.parametrize("domain", [R_DOMAIN, S_DOMAIN])
def test_every_printed_record_resolves(world: World, domain: str) -> None:
    records = world.records[domain]["records"]
    types = {r["type"] for r in records}
    assert {"MX", "A", "TXT", "SRV"} <= types
    for record in records:
        assert not record["placeholder"]
        answers = world.knot.query(record["name"], record["type"])
        if record["type"] == "TXT":
            texts = [_txt(a) for a in answers]
            assert record["value"] in [t for t, _ in texts], (record, answers)
            assert all(len(s) <= 255 for _, strings in texts for s in strings)
        else:
            assert record["value"] in answers, (record, answers)
    by_name = {(r["name"], r["type"]): r["value"] for r in records}
    assert by_name[(f"{domain}.", "MX")] == f"10 mx.{domain}."
    assert by_name[(f"mx.{domain}.", "A")] in (R_IP, S_IP)
    assert (
        by_name[(f"_dmarc.{domain}.", "TXT")] == f"v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@{domain}"
    )
    # No POP3 or IMAP listeners: the services are published as not available (RFC 6186 / RFC 2782).
    assert by_name[(f"_imaps._tcp.{domain}.", "SRV")] == "0 0 0 ."
    assert by_name[(f"_submission._tcp.{domain}.", "SRV")].startswith("10 1 ")
    dkim = [r for r in records if r["name"].endswith(f"._domainkey.{domain}.")]
    assert len(dkim) == 2 and any(len(r["value"]) > 255 for r in dkim)  # the RSA key needs two strings


def test_zone_snippet_and_table(world: World) -> None:
    zone = world.zones[R_DOMAIN]
    assert f"mta-sts.{R_DOMAIN}. 3600 IN CNAME mx.{R_DOMAIN}." in re.sub(r" +", " ", zone)
    assert f"; Ask your provider to set the reverse DNS (PTR) of {R_IP} to mx.{R_DOMAIN}." in zone
    table = world.r.cli("dns", R_DOMAIN).stdout
    assert "Zone file:" in table and "_smtp._tls" in table and "PTR" in table
    # S serves no web: no MTA-STS or autoconfig records, and a note saying how to get them.
    names = {r["name"] for r in world.records[S_DOMAIN]["records"]}
    assert f"_mta-sts.{S_DOMAIN}." not in names and f"autoconfig.{S_DOMAIN}." not in names
    assert any("MTA-STS" in n for n in world.records[S_DOMAIN]["notes"])
    unknown = world.r.cli("dns", "elsewhere.test", check=False)
    assert unknown.returncode == 1 and "unknown domain elsewhere.test" in unknown.stderr


def test_mta_sts_id_is_the_served_policy(world: World) -> None:
    port = world.r.port("https")
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(world.ca_file),
            "--resolve",
            f"mta-sts.{R_DOMAIN}:{port}:{R_IP}",
            f"https://mta-sts.{R_DOMAIN}:{port}/.well-known/mta-sts.txt",
        ],
        capture_output=True,
        timeout=30,
    )
    policy = result.stdout
    assert policy.startswith(b"version: STSv1\r\nmode: enforce\r\n"), result
    (txt,) = world.knot.query(f"_mta-sts.{R_DOMAIN}", "TXT")
    assert _txt(txt)[0] == f"v=STSv1; id={hashlib.sha256(policy).hexdigest()[:20]}"


def test_mail_passes_by_the_printed_records(world: World) -> None:
    mark = marker()
    submit(world.s, SENDER, [USER], mark)
    (message,) = world.r.wait_message(USER, mark, timeout=30)
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    results = re.search(r"Authentication-Results: ([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head)
    assert results, head
    text = results.group(1)
    for method in ("spf=pass", "dkim=pass", "dmarc=pass"):
        assert method in text, text
    assert "with ESMTPS" in received_fields(message)[0]
    log = wait_for(lambda: "mta-sts r.test: policy" in world.s.log() and world.s.log())
    assert re.search(r"mta-sts r\.test: policy [0-9a-f]{20}, mode enforce, mx mx\.r\.test", log), log


# --- the SPF and TXT rules, without servers ------------------------------------------------------------------


def _config(**table: Any) -> Any:
    from homemail import config

    relay = {"host": "smtp.relay.example", "username": "u", "password": "p"}
    relays = [{"name": name, **relay, **extra} for name, extra in table.pop("relays", {}).items()]
    return config.from_dict({"hostname": "mx.example.org", "relay": relays, **table})


def test_spf_direct_delivery() -> None:
    from homemail.doctor.records import spf_record
    from homemail.public import PublicAddresses

    cfg = _config(delivery={"source_ipv4": "192.0.2.9"})
    assert spf_record(cfg, PublicAddresses("192.0.2.1", "2001:db8::1")) == (
        "v=spf1 mx ip4:192.0.2.1 ip4:192.0.2.9 ip6:2001:db8::1 -all",
        [],
    )
    assert spf_record(cfg, PublicAddresses(None, None))[0] == "v=spf1 mx ip4:192.0.2.9 -all"


def test_spf_with_relays() -> None:
    from homemail.doctor.records import spf_record
    from homemail.public import PublicAddresses

    addresses = PublicAddresses("192.0.2.1", None)
    # Every message through the relay: only its include.
    cfg = _config(relays={"r": {"spf_include": "spf.relay.example"}}, route=[{"relay": "r"}])
    assert spf_record(cfg, addresses) == ("v=spf1 include:spf.relay.example -all", [])
    # Direct first, the relay after failures, or the relay for some domains only: both.
    for route in ({"relay": "r", "after_failures": 3}, {"relay": "r", "domains": ["gmail.com"]}):
        cfg = _config(relays={"r": {"spf_include": "spf.relay.example"}}, route=[route])
        assert spf_record(cfg, addresses)[0] == "v=spf1 mx ip4:192.0.2.1 include:spf.relay.example -all"
    # A relay without spf_include: this server's own terms, and a note saying what is missing.
    cfg = _config(relays={"r": {}}, route=[{"relay": "r"}])
    spf, notes = spf_record(cfg, addresses)
    assert spf == "v=spf1 mx ip4:192.0.2.1 -all"
    assert len(notes) == 1 and "spf_include" in notes[0]


def test_txt_rdata_splits_and_escapes() -> None:
    from homemail.doctor.records import txt_rdata

    assert txt_rdata("v=spf1 -all") == '"v=spf1 -all"'
    assert txt_rdata('a"b\\c') == '"a\\"b\\\\c"'
    long = "x" * 300
    assert txt_rdata(long) == f'( "{"x" * 255}" "{"x" * 45}" )'
    assert txt_rdata("") == '""'
