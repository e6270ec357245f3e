"""The MX's data-stage checks end to end: a homemail server whose resolver is knot on loopback, serving zones for
several sender domains (DKIM keys, DMARC policies, SPF), messages signed here with dkimpy and sealed with ARC
as a forwarder or a mailing list would, sent over SMTP; then the reply, the folder and the header are checked."""

from __future__ import annotations

import re
import shutil
import smtplib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import authres
import dkim
import pytest
from auth_helpers import RSA_512, ed25519_key, rsa_key, sign, txt
from dkim.util import parse_tag_value

from dnsserver import KnotServer
from harness import ServerProcess

RCPT = "user@local.test"
KEYS = {
    "pass": rsa_key(),
    "pass-ed": ed25519_key(),
    "reject": rsa_key(),
    "quarantine": rsa_key(),
    "short": rsa_key(pem=RSA_512),
    "tempfail": rsa_key(),
    "dnsfail": rsa_key(),
    "lists": rsa_key(),
    "other-list": rsa_key(),
    "fwd": rsa_key(),
}
SPF_LOOPBACK = 'TXT "v=spf1 ip4:127.0.0.0/8 -all"'


def zones() -> dict[str, list[str]]:
    dmarc = {
        "pass.test": "v=DMARC1; p=reject",
        "reject.test": "v=DMARC1; p=reject; rua=mailto:dmarc@reject.test",
        "quarantine.test": "v=DMARC1; p=quarantine",
        "none.test": "v=DMARC1; p=none",
        "pct.test": "v=DMARC1; p=reject; pct=0",
        "parent.test": "v=DMARC1; p=none; sp=reject",
        "short.test": "v=DMARC1; p=quarantine",
        "spf.test": "v=DMARC1; p=reject",
        "tempfail.test": "v=DMARC1; p=reject",
        "lists.test": "v=DMARC1; p=none",
    }
    out: dict[str, list[str]] = {
        domain: [txt("_dmarc", record), f"@ {SPF_LOOPBACK}"] for domain, record in dmarc.items()
    }
    out["sender.test"] = [f"@ {SPF_LOOPBACK}", "client A 127.0.0.1"]
    out["127.in-addr.arpa"] = ["1.0.0 PTR client.sender.test."]
    out["pass.test"] += [
        txt("rsa._domainkey", KEYS["pass"].record),
        txt("ed._domainkey", KEYS["pass-ed"].record),
    ]
    out["reject.test"].append(txt("rsa._domainkey", KEYS["reject"].record))
    out["quarantine.test"].append(txt("rsa._domainkey", KEYS["quarantine"].record))
    out["short.test"].append(txt("short._domainkey", KEYS["short"].record))
    out["lists.test"].append(txt("arc._domainkey", KEYS["lists"].record))
    out["other-list.test"] = [f"@ {SPF_LOOPBACK}", txt("arc._domainkey", KEYS["other-list"].record)]
    out["fwd.test"] = [f"@ {SPF_LOOPBACK}", txt("arc._domainkey", KEYS["fwd"].record)]
    # zones knot cannot load answer SERVFAIL: a DKIM key and a DMARC record that cannot be fetched
    out["_domainkey.tempfail.test"] = ["@ TXT ( unterminated"]
    out["dnsfail.test"] = [f"@ {SPF_LOOPBACK}", txt("rsa._domainkey", KEYS["dnsfail"].record)]
    out["_dmarc.dnsfail.test"] = ["@ TXT ( unterminated"]
    return out


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    with KnotServer(zones()) as server:
        yield server


@pytest.fixture(scope="module")
def mx(knot: KnotServer) -> Iterator[ServerProcess]:
    server = ServerProcess(
        config={"dns": {"nameservers": [knot.nameserver]}, "dmarc": {"trusted_arc_sealers": ["lists.test"]}}
    )
    server.add_user(RCPT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def message(author: str, marker: str, extra: bytes = b"", body: bytes = b"") -> bytes:
    return (
        extra
        + f"From: Someone <{author}>\r\nTo: {RCPT}\r\nSubject: test {marker}\r\n"
        f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{marker}@test>\r\n\r\n".encode()
        + (body or f"Hello {marker}\r\n".encode())
    )


def send(mx: ServerProcess, data: bytes, sender: str = "bounce@sender.test") -> tuple[int, str]:
    with smtplib.SMTP(mx.host, mx.port("smtp"), local_hostname="client.sender.test", timeout=30) as client:
        client.ehlo()
        code, text = client.mail(sender)
        assert code == 250, text
        code, text = client.rcpt(RCPT)
        assert code == 250, text
        code, reply = client.data(data)
        return code, reply.decode()


def folders(mx: ServerProcess) -> dict[str, list[bytes]]:
    """Every message of RCPT by folder (INBOX, Junk), via `homemail export`."""
    work = Path(tempfile.mkdtemp(prefix="homemail-export-"))
    try:
        mx.cli("export", RCPT, str(work / "m"))
        out: dict[str, list[bytes]] = {}
        for cur in (work / "m").rglob("cur"):
            name = "INBOX" if cur.parent == work / "m" else cur.parent.name.lstrip(".")
            out[name] = [p.read_bytes() for p in sorted(cur.iterdir())]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def where(mx: ServerProcess, marker: str) -> list[tuple[str, bytes]]:
    """(folder, message) of every stored copy whose Subject carries ``marker``."""
    needle = f"test {marker}".encode()
    return [(f, m) for f, msgs in folders(mx).items() for m in msgs if needle in m.split(b"\n\n")[0]]


def delivered(mx: ServerProcess, data: bytes, marker: str, folder: str = "INBOX", **kw: str) -> bytes:
    code, text = send(mx, data, **kw)
    assert code == 250, text
    found = where(mx, marker)
    assert [f for f, _ in found] == [folder]
    return found[0][1]


def refused(mx: ServerProcess, data: bytes, marker: str, code: int, enhanced: str, **kw: str) -> str:
    got, text = send(mx, data, **kw)
    assert (got, text[:5]) == (code, enhanced), text
    assert where(mx, marker) == []
    return text


def auth_results(stored: bytes) -> authres.AuthenticationResultsHeader:
    """Our Authentication-Results field of a stored message (exactly one), parsed by the authres package."""
    head = stored.split(b"\n\n")[0].decode()
    fields = re.findall(r"^Authentication-Results:.*(?:\n[ \t].*)*", head, re.M | re.I)
    ours = [f for f in fields if re.match(r"Authentication-Results:\s*mx\.example\.test\s*;", f, re.I)]
    assert len(ours) == 1, fields
    return authres.AuthenticationResultsHeader.parse(ours[0].replace("\n", "\r\n"))


def results_of(header: authres.AuthenticationResultsHeader, method: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (r.result, {f"{p.type}.{p.name}": p.value for p in r.properties})
        for r in header.results
        if r.method == method
    ]


def new_marker() -> str:
    return uuid.uuid4().hex[:12]


def test_signed_mail_passes_with_results_recorded(mx: ServerProcess) -> None:
    m = new_marker()
    data = sign(
        sign(message("alice@pass.test", m), "rsa", "pass.test", KEYS["pass"]),
        "ed",
        "pass.test",
        KEYS["pass-ed"],
    )
    stored = delivered(mx, data, m)
    ar = auth_results(stored)
    assert ar.authserv_id == "mx.example.test"
    dkim_results = results_of(ar, "dkim")
    headers, _ = dkim.rfc822_parse(data)
    signatures = [
        re.sub(r"\s+", "", parse_tag_value(v)[b"b"].decode())
        for n, v in headers
        if n.lower() == b"dkim-signature"
    ]
    assert sorted((r, p["header.d"], p["header.s"], p["header.a"]) for r, p in dkim_results) == [
        ("pass", "pass.test", "ed", "ed25519-sha256"),
        ("pass", "pass.test", "rsa", "rsa-sha256"),
    ]
    for _, props in dkim_results:
        assert len(props["header.b"]) >= 8 and any(s.startswith(props["header.b"]) for s in signatures)
    assert results_of(ar, "dmarc") == [("pass", {"header.from": "pass.test"})]
    assert results_of(ar, "iprev") == [("pass", {"policy.iprev": "127.0.0.1"})]
    (spf,) = results_of(ar, "spf")
    assert spf[1] == {"smtp.mailfrom": "bounce@sender.test"}
    # trace fields first, then our results, then the message as sent
    lines = stored.split(b"\n")
    assert lines[0].startswith(b"Return-Path: <bounce@sender.test>") and lines[1].startswith(b"Received: ")
    assert stored.index(b"Authentication-Results:") < stored.index(b"DKIM-Signature:")


def test_ed25519_only(mx: ServerProcess) -> None:
    m = new_marker()
    stored = delivered(mx, sign(message("a@pass.test", m), "ed", "pass.test", KEYS["pass-ed"]), m)
    assert [r for r, _ in results_of(auth_results(stored), "dmarc")] == ["pass"]


def test_p_reject_unsigned_refused(mx: ServerProcess) -> None:
    m = new_marker()
    text = refused(mx, message("ceo@reject.test", m), m, 550, "5.7.1")
    assert "DMARC" in text and "reject.test" in text


def test_p_reject_broken_signature_refused(mx: ServerProcess) -> None:
    m = new_marker()
    data = sign(message("ceo@reject.test", m), "rsa", "reject.test", KEYS["reject"]).replace(
        b"Hello", b"Hacked"
    )
    refused(mx, data, m, 550, "5.7.1")


def test_p_reject_signed_by_another_domain_refused(mx: ServerProcess) -> None:
    m = new_marker()
    data = sign(message("ceo@reject.test", m), "rsa", "pass.test", KEYS["pass"])
    refused(mx, data, m, 550, "5.7.1")


def test_p_reject_passes_with_aligned_subdomain_signature(mx: ServerProcess) -> None:
    # relaxed alignment: From sub.pass.test, signed by pass.test (the organisational domain's policy applies)
    m = new_marker()
    data = sign(message("a@sub.pass.test", m), "rsa", "pass.test", KEYS["pass"])
    stored = delivered(mx, data, m)
    assert results_of(auth_results(stored), "dmarc") == [("pass", {"header.from": "sub.pass.test"})]


def test_spf_alignment_passes_dmarc(mx: ServerProcess) -> None:
    m = new_marker()
    stored = delivered(mx, message("a@spf.test", m), m, sender="bounce@spf.test")
    ar = auth_results(stored)
    assert [r for r, _ in results_of(ar, "spf")] == ["pass"]
    assert results_of(ar, "dmarc") == [("pass", {"header.from": "spf.test"})]
    assert results_of(ar, "dkim") == [("none", {})]


def test_p_quarantine_goes_to_junk(mx: ServerProcess) -> None:
    m = new_marker()
    stored = delivered(mx, message("a@quarantine.test", m), m, folder="Junk")
    ar = auth_results(stored)
    assert results_of(ar, "dmarc") == [("fail", {"header.from": "quarantine.test"})]
    assert "dis=quarantine" in stored.decode()
    # correctly signed: INBOX
    m = new_marker()
    delivered(mx, sign(message("a@quarantine.test", m), "rsa", "quarantine.test", KEYS["quarantine"]), m)


def test_p_none_delivered_to_inbox(mx: ServerProcess) -> None:
    m = new_marker()
    stored = delivered(mx, message("a@none.test", m), m)
    assert results_of(auth_results(stored), "dmarc") == [("fail", {"header.from": "none.test"})]


def test_no_dmarc_record(mx: ServerProcess) -> None:
    m = new_marker()
    stored = delivered(mx, message("a@sender.test", m), m)
    assert [r for r, _ in results_of(auth_results(stored), "dmarc")] == ["none"]


def test_pct_zero_softens_reject_to_quarantine(mx: ServerProcess) -> None:
    m = new_marker()
    stored = delivered(mx, message("a@pct.test", m), m, folder="Junk")
    assert "sampled_out" in stored.decode()


def test_subdomain_policy(mx: ServerProcess) -> None:
    m = new_marker()
    refused(mx, message("a@mail.parent.test", m), m, 550, "5.7.1")  # sp=reject
    m = new_marker()
    delivered(mx, message("a@parent.test", m), m)  # p=none


def test_short_key_does_not_count(mx: ServerProcess) -> None:
    m = new_marker()
    stored = delivered(
        mx, sign(message("a@short.test", m), "short", "short.test", KEYS["short"]), m, folder="Junk"
    )
    ar = auth_results(stored)
    assert [(r, p["header.d"]) for r, p in results_of(ar, "dkim")] == [("permerror", "short.test")]
    assert "RSA key too short (512 bits)" in stored.decode()


def test_multiple_from_domains_strictest_policy(mx: ServerProcess) -> None:
    m = new_marker()
    data = sign(message("a@pass.test", m), "rsa", "pass.test", KEYS["pass"])
    data = data.replace(b"From: Someone <a@pass.test>", b"From: a@pass.test, b@reject.test")
    data = sign(data, "rsa", "pass.test", KEYS["pass"])
    refused(mx, data, m, 550, "5.7.1")


def test_forged_results_with_our_id_removed(mx: ServerProcess) -> None:
    m = new_marker()
    forged = (
        b"Authentication-Results: mx.example.test; dkim=pass header.d=none.test; dmarc=pass header.from=none.test\r\n"
        b"Authentication-Results: (sneaky) MX.Example.TEST;\r\n\tspf=pass smtp.mailfrom=a@none.test\r\n"
        b"Authentication-Results: other.example; spf=pass smtp.mailfrom=a@none.test\r\n"
    )
    stored = delivered(mx, message("a@none.test", m, extra=forged), m)
    text = stored.decode()
    assert "header.d=none.test" not in text and "sneaky" not in text
    assert "Authentication-Results: other.example; spf=pass" in text
    assert results_of(auth_results(stored), "dmarc") == [("fail", {"header.from": "none.test"})]


def test_dkim_key_dns_failure_is_451(mx: ServerProcess) -> None:
    m = new_marker()
    data = sign(message("a@tempfail.test", m), "rsa", "tempfail.test", KEYS["tempfail"])
    refused(mx, data, m, 451, "4.7.5")


def test_dmarc_record_dns_failure_is_451(mx: ServerProcess) -> None:
    m = new_marker()
    refused(mx, message("a@dnsfail.test", m), m, 451, "4.7.0")
    # a signature aligned even strictly settles it whatever the policy says: delivered
    m = new_marker()
    stored = delivered(mx, sign(message("a@dnsfail.test", m), "rsa", "dnsfail.test", KEYS["dnsfail"]), m)
    assert [r for r, _ in results_of(auth_results(stored), "dmarc")] == ["temperror"]
    # relaxed alignment is not enough: the record might ask for strict
    m = new_marker()
    data = sign(message("a@mail.dnsfail.test", m), "rsa", "dnsfail.test", KEYS["dnsfail"])
    refused(mx, data, m, 451, "4.7.0")


# --- ARC: forwarders and mailing lists -------------------------------------------------------------------


def list_copy(original: bytes, sealer: str, key_name: str, results: str) -> bytes:
    """What a mailing list at ``sealer`` sends on: subject tag and footer (breaking the author's DKIM
    signature), its own Authentication-Results, then an ARC set."""
    changed = original.replace(b"Subject: test", b"Subject: [list] test") + b"--\r\nlist footer\r\n"
    changed = f"Authentication-Results: {sealer}; {results}\r\n".encode() + changed
    arc_set = dkim.arc_sign(changed, b"arc", sealer.encode(), KEYS[key_name].private, sealer.encode())
    return b"".join(arc_set) + changed


GOOD = "dkim=pass header.d=reject.test header.s=rsa; dmarc=pass header.from=reject.test"


def signed_reject_test(marker: str) -> bytes:
    return sign(message("ceo@reject.test", marker), "rsa", "reject.test", KEYS["reject"])


def test_trusted_list_overrides_dmarc_reject(mx: ServerProcess) -> None:
    m = new_marker()
    data = list_copy(signed_reject_test(m), "lists.test", "lists", GOOD)
    stored = delivered(mx, data, m, sender="list-bounces@lists.test")
    ar = auth_results(stored)
    assert [(r, p["header.d"]) for r, p in results_of(ar, "dkim")] == [("fail", "reject.test")]
    assert results_of(ar, "dmarc") == [("fail", {"header.from": "reject.test"})]
    assert results_of(ar, "arc") == [("pass", {"header.as-d": "lists.test", "smtp.remote-ip": "127.0.0.1"})]
    text = stored.decode()
    assert "dis=none; overridden: arc=pass by trusted sealer lists.test (trusted_forwarder)" in text
    assert "arc=pass (i=1 d=lists.test cv=none) header.as-d=lists.test" in text


def test_untrusted_list_does_not_override(mx: ServerProcess) -> None:
    m = new_marker()
    data = list_copy(signed_reject_test(m), "other-list.test", "other-list", GOOD)
    refused(mx, data, m, 550, "5.7.1", sender="list-bounces@other-list.test")


def test_trusted_list_chain_broken_after_sealing(mx: ServerProcess) -> None:
    m = new_marker()
    data = list_copy(signed_reject_test(m), "lists.test", "lists", GOOD).replace(
        b"list footer", b"evil footer"
    )
    refused(mx, data, m, 550, "5.7.1", sender="list-bounces@lists.test")


def test_trusted_list_that_saw_a_failure_does_not_override(mx: ServerProcess) -> None:
    m = new_marker()
    data = list_copy(
        message("ceo@reject.test", m), "lists.test", "lists", "dkim=none; dmarc=fail header.from=reject.test"
    )
    refused(mx, data, m, 550, "5.7.1", sender="list-bounces@lists.test")


def test_forwarder_then_trusted_list(mx: ServerProcess) -> None:
    # i=1: a plain forwarder (untrusted) that changed nothing; i=2: the trusted list that added its footer
    m = new_marker()
    original = signed_reject_test(m)
    forwarded = f"Authentication-Results: fwd.test; {GOOD}\r\n".encode() + original
    forwarded = (
        b"".join(dkim.arc_sign(forwarded, b"arc", b"fwd.test", KEYS["fwd"].private, b"fwd.test")) + forwarded
    )
    data = list_copy(forwarded, "lists.test", "lists", "arc=pass; " + GOOD)
    stored = delivered(mx, data, m, sender="list-bounces@lists.test")
    assert "arc=pass (i=2 d=lists.test cv=pass)" in stored.decode()


def test_plain_forward_keeps_dkim(mx: ServerProcess) -> None:
    # A forwarder that changes nothing: the author's signature still passes; the chain is recorded.
    m = new_marker()
    original = signed_reject_test(m)
    forwarded = f"Authentication-Results: fwd.test; {GOOD}\r\n".encode() + original
    forwarded = (
        b"".join(dkim.arc_sign(forwarded, b"arc", b"fwd.test", KEYS["fwd"].private, b"fwd.test")) + forwarded
    )
    stored = delivered(mx, forwarded, m, sender="someone@fwd.test")
    ar = auth_results(stored)
    assert results_of(ar, "dmarc") == [("pass", {"header.from": "reject.test"})]
    assert results_of(ar, "arc") == [("pass", {"header.as-d": "fwd.test", "smtp.remote-ip": "127.0.0.1"})]
