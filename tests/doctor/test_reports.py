"""DMARC aggregate reports (RFC 7489 7.2) and SMTP TLS reports (RFC 8460) that arrive by mail at the report
mailboxes are read by ``homemail report dmarc`` / ``homemail report tls`` and summed up per source."""

from __future__ import annotations

import gzip
import io
import json
import smtplib
import zipfile
from collections.abc import Iterator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from harness import ServerProcess
from homemail.doctor import reports

DOMAIN = "example.org"


def dmarc_xml(org: str, report_id: str, rows: list[tuple[str, int, str, str, str]]) -> bytes:
    records = "".join(
        f"<record><row><source_ip>{ip}</source_ip><count>{count}</count><policy_evaluated>"
        f"<disposition>{disp}</disposition><dkim>{dkim}</dkim><spf>{spf}</spf></policy_evaluated></row>"
        f"<identifiers><header_from>{DOMAIN}</header_from></identifiers></record>"
        for ip, count, disp, dkim, spf in rows
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><feedback><report_metadata><org_name>{org}</org_name>'
        f"<email>noreply@{org}</email><report_id>{report_id}</report_id><date_range><begin>1700000000</begin>"
        f"<end>1700086400</end></date_range></report_metadata><policy_published><domain>{DOMAIN}</domain>"
        f"<p>quarantine</p></policy_published>{records}</feedback>"
    ).encode()


def tls_json(org: str, report_id: str, ok: int, failed: int) -> bytes:
    doc = {
        "organization-name": org,
        "date-range": {"start-datetime": "2026-11-24T00:00:00Z", "end-datetime": "2026-11-24T23:59:59Z"},
        "contact-info": f"tls@{org}",
        "report-id": report_id,
        "policies": [
            {
                "policy": {"policy-type": "sts", "policy-domain": DOMAIN, "mx-host": [f"mx.{DOMAIN}"]},
                "summary": {"total-successful-session-count": ok, "total-failure-session-count": failed},
                "failure-details": [
                    {
                        "result-type": "certificate-expired",
                        "sending-mta-ip": "192.0.2.1",
                        "failed-session-count": failed,
                    }
                ],
            }
        ],
    }
    return json.dumps(doc).encode()


def report_mail(to: str, subject: str, attachment: bytes, ctype: str, filename: str) -> bytes:
    msg = MIMEMultipart()
    msg["From"] = "reports@reporter.example"
    msg["To"] = to
    msg["Subject"] = subject
    msg.attach(MIMEText("A report is attached.\n"))
    subtype = ctype.split("/")[1]
    part = MIMEApplication(attachment, subtype)
    part.replace_header("Content-Type", ctype)
    part.add_header("Content-Disposition", "attachment", filename=filename)
    msg.attach(part)
    return msg.as_bytes()


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(
        config={"spf": {"enabled": False}, "dmarc": {"enabled": False}, "storage": {"fsync": False}}
    )
    srv.add_user(f"postmaster@{DOMAIN}")
    srv.cli("alias", "add", f"dmarc-reports@{DOMAIN}", f"postmaster@{DOMAIN}")
    srv.cli("alias", "add", f"tls-reports@{DOMAIN}", f"postmaster@{DOMAIN}")
    srv.start()
    google = dmarc_xml(
        "google.com",
        "g-1",
        [("203.0.113.5", 40, "none", "pass", "pass"), ("198.51.100.7", 3, "quarantine", "fail", "fail")],
    )
    yahoo = dmarc_xml("Yahoo", "y-1", [("203.0.113.5", 10, "none", "pass", "fail")])
    mails = [
        report_mail(
            f"dmarc-reports@{DOMAIN}",
            "Report domain: example.org g-1",
            gzip.compress(google),
            "application/gzip",
            "google.com!example.org!1700000000!1700086400.xml.gz",
        ),
        # the same report again (reporters resend): counted once
        report_mail(
            f"dmarc-reports@{DOMAIN}",
            "Report domain: example.org g-1 (again)",
            gzip.compress(google),
            "application/gzip",
            "google.com!example.org.xml.gz",
        ),
        report_mail(
            f"dmarc-reports@{DOMAIN}",
            "Report domain: example.org y-1",
            zipped("y.xml", yahoo),
            "application/zip",
            "yahoo.com!example.org.zip",
        ),
        report_mail(
            f"dmarc-reports@{DOMAIN}",
            "broken one",
            b"\x1f\x8bnot really gzip",
            "application/gzip",
            "broken.xml.gz",
        ),
        report_mail(
            f"tls-reports@{DOMAIN}",
            "Report Domain: example.org",
            gzip.compress(tls_json("Google Inc.", "t-1", 120, 4)),
            "application/tlsrpt+gzip",
            "google.com!example.org!t-1.json.gz",
        ),
        report_mail(
            f"tls-reports@{DOMAIN}",
            "Report Domain: example.org",
            tls_json("Microsoft", "t-2", 30, 0),
            "application/tlsrpt+json",
            "microsoft.json",
        ),
    ]
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as c:
        for m in mails:
            to = "dmarc-reports@example.org" if b"dmarc-reports" in m else "tls-reports@example.org"
            c.sendmail("reports@reporter.example", [to], m)
    yield srv
    srv.stop()


def test_dmarc_report_per_source(server: ServerProcess) -> None:
    out = server.cli("report", "dmarc", DOMAIN, "--json")
    rows = {r["source_ip"]: r for r in json.loads(out.stdout)}
    assert rows["203.0.113.5"]["messages"] == 50  # 40 from Google (once, though sent twice) + 10 from Yahoo
    assert rows["203.0.113.5"]["dmarc_pass"] == 50 and rows["203.0.113.5"]["spf_pass"] == 40
    assert rows["203.0.113.5"]["reporters"] == ["Yahoo", "google.com"]
    assert rows["198.51.100.7"] == {
        "source_ip": "198.51.100.7",
        "messages": 3,
        "dmarc_pass": 0,
        "dmarc_fail": 3,
        "dkim_pass": 0,
        "spf_pass": 0,
        "dispositions": {"quarantine": 3},
        "reporters": ["google.com"],
        "header_from": [DOMAIN],
    }
    assert "broken one: bad gzip data" in out.stderr
    table = server.cli("report", "dmarc").stdout
    assert "2 report(s) in 6 message(s)" in table  # both report addresses lead to one mailbox here
    assert "203.0.113.5" in table.splitlines()[2]  # most mail first


def test_tls_report_per_policy(server: ServerProcess) -> None:
    (row,) = json.loads(server.cli("report", "tls", "--json").stdout)
    assert row == {
        "policy_domain": DOMAIN,
        "policy_type": "sts",
        "successful": 150,
        "failed": 4,
        "failures": {"certificate-expired": 4},
        "reporters": ["Google Inc.", "Microsoft"],
    }
    assert "certificate-expired 4" in server.cli("report", "tls").stdout


@pytest.mark.parametrize(
    "document",
    [
        b"<feedback><record><row><count>many</count></row></record></feedback>",
        b"<html>",
        b"<feedback",
        b'{"policies": [1]}',
        b'{"no": "policies"}',
    ],
)
def test_malformed_reports_are_errors_not_crashes(document: bytes) -> None:
    found = reports.collect([report_mail("x@example.org", "bad", document, "text/xml", "r.xml")])
    assert found.dmarc == [] and found.tls == []
    assert len(found.broken) == (0 if document == b"<html>" else 1)


def test_decompression_is_bounded() -> None:
    bomb = gzip.compress(b"<feedback>" + b" " * (reports.MAX_REPORT + 10))
    found = reports.collect([report_mail("x@example.org", "bomb", bomb, "application/gzip", "r.xml.gz")])
    assert found.broken == ["bomb: report too large"]
