"""Reports that other mail servers send about our mail: DMARC aggregate reports (RFC 7489 7.2, appendix C) and
SMTP TLS reports (RFC 8460), read from the mailboxes the published records name, summed up per sending source.

Rules:
- A report comes as an attachment (or as the whole body): DMARC as XML, gzip'd XML or a zip holding XML
  (RFC 7489 7.2.1.1); TLS-RPT as JSON, gzip'd or not (RFC 8460 5.3). Anything else in the mailbox is skipped.
- A report is counted once however often it arrives (reporters resend): by (reporter, report id).
- A malformed report is listed as such, never a crash: these are messages from strangers.
- XML is parsed with the standard library's parser, which does not fetch external entities; the input size is
  bounded (a zip bomb stops at :data:`MAX_REPORT`).
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from homemail.public import report_address
from homemail.store import Store

MAX_REPORT = 20 * 1024 * 1024  # decompressed bytes of one report


class ReportError(ValueError):
    pass


@dataclass
class DMARCRow:
    reporter: str
    report_id: str
    begin: int
    end: int
    source_ip: str
    count: int
    disposition: str
    dkim: str  # DMARC's evaluation: "pass" when an aligned DKIM signature passed
    spf: str
    header_from: str

    @property
    def passed(self) -> bool:
        return self.dkim == "pass" or self.spf == "pass"


@dataclass
class TLSPolicySummary:
    reporter: str
    report_id: str
    policy_type: str
    policy_domain: str
    mx_hosts: tuple[str, ...]
    successful: int
    failed: int
    failures: dict[str, int] = field(default_factory=dict)  # result-type -> sessions


def _bounded(data: bytes) -> bytes:
    if len(data) > MAX_REPORT:
        raise ReportError("report too large")
    return data


def _gunzip(data: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, MAX_REPORT + 1)
    except zlib.error as e:
        raise ReportError(f"bad gzip data: {e}") from None
    return _bounded(out)


def _unzip(data: bytes) -> list[bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            out = []
            for info in z.infolist():
                if info.file_size > MAX_REPORT:
                    raise ReportError("report too large")
                with z.open(info) as f:
                    out.append(_bounded(f.read(MAX_REPORT + 1)))
            return out
    except (zipfile.BadZipFile, OSError) as e:
        raise ReportError(f"bad zip data: {e}") from None


def attachments(message: bytes) -> Iterator[tuple[str, bytes]]:
    """(content type or file name hint, decoded data) of every leaf part that may be a report."""
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type().lower()
        name = (part.get_filename() or "").lower()
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        if ctype.startswith("text/plain") and not name:
            continue
        yield f"{ctype} {name}", payload


def _documents(hint: str, data: bytes) -> list[bytes]:
    """The uncompressed documents of one attachment."""
    if data[:2] == b"\x1f\x8b" or "gzip" in hint or hint.endswith(".gz"):
        return [_gunzip(data)]
    if data[:4] == b"PK\x03\x04" or "zip" in hint:
        return _unzip(data)
    return [_bounded(data)]


def _text(node: ElementTree.Element | None, path: str, default: str = "") -> str:
    if node is None:
        return default
    found = node.find(path)
    return (found.text or "").strip() if found is not None and found.text else default


def parse_dmarc(xml: bytes) -> list[DMARCRow]:
    """The rows of one aggregate report (RFC 7489 appendix C)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as e:
        raise ReportError(f"not XML: {e}") from None
    if root.tag != "feedback":
        raise ReportError(f"not a DMARC aggregate report (<{root.tag}>)")
    meta = root.find("report_metadata")
    reporter = _text(meta, "org_name", "?")
    report_id = _text(meta, "report_id", "?")
    try:
        begin = int(_text(meta, "date_range/begin", "0"))
        end = int(_text(meta, "date_range/end", "0"))
    except ValueError:
        raise ReportError("bad date_range") from None
    rows = []
    for record in root.findall("record"):
        row = record.find("row")
        try:
            count = int(_text(row, "count", "0"))
        except ValueError:
            raise ReportError("bad count") from None
        rows.append(
            DMARCRow(
                reporter=reporter,
                report_id=report_id,
                begin=begin,
                end=end,
                source_ip=_text(row, "source_ip", "?"),
                count=count,
                disposition=_text(row, "policy_evaluated/disposition", "none"),
                dkim=_text(row, "policy_evaluated/dkim", "fail"),
                spf=_text(row, "policy_evaluated/spf", "fail"),
                header_from=_text(record, "identifiers/header_from"),
            )
        )
    return rows


def parse_tlsrpt(data: bytes) -> list[TLSPolicySummary]:
    """The per-policy summaries of one TLS report (RFC 8460 4)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("policies"), list):
        raise ReportError("not a TLS report (no policies)")
    reporter = str(doc.get("organization-name", "?"))
    report_id = str(doc.get("report-id", "?"))
    out = []
    for entry in doc["policies"]:
        if not isinstance(entry, dict):
            raise ReportError("bad policy entry")
        policy: dict[str, Any] = entry.get("policy") or {}
        summary: dict[str, Any] = entry.get("summary") or {}
        failures: dict[str, int] = {}
        for detail in entry.get("failure-details") or []:
            if isinstance(detail, dict):
                kind = str(detail.get("result-type", "?"))
                failures[kind] = failures.get(kind, 0) + _int(detail.get("failed-session-count"))
        out.append(
            TLSPolicySummary(
                reporter=reporter,
                report_id=report_id,
                policy_type=str(policy.get("policy-type", "?")),
                policy_domain=str(policy.get("policy-domain", "?")),
                mx_hosts=tuple(str(h) for h in policy.get("mx-host") or []),
                successful=_int(summary.get("total-successful-session-count")),
                failed=_int(summary.get("total-failure-session-count")),
                failures=failures,
            )
        )
    return out


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


@dataclass
class Collected:
    dmarc: list[DMARCRow] = field(default_factory=list)
    tls: list[TLSPolicySummary] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # one line per report that could not be read
    messages: int = 0


def collect(messages: Iterable[bytes]) -> Collected:
    """Every DMARC and TLS report in ``messages``, each (reporter, id) once."""
    out = Collected()
    seen_dmarc: set[tuple[str, str]] = set()
    seen_tls: set[tuple[str, str]] = set()
    for message in messages:
        out.messages += 1
        subject = email.message_from_bytes(message.split(b"\r\n\r\n", 1)[0]).get("Subject", "")
        for hint, data in attachments(message):
            try:
                for doc in _documents(hint, data):
                    if doc.lstrip()[:1] == b"{":
                        tls = parse_tlsrpt(doc)
                        if tls and (tls[0].reporter, tls[0].report_id) not in seen_tls:
                            seen_tls.add((tls[0].reporter, tls[0].report_id))
                            out.tls += tls
                    elif b"<feedback" in doc[:4096]:
                        rows = parse_dmarc(doc)
                        key = (rows[0].reporter, rows[0].report_id) if rows else None
                        if key is not None and key not in seen_dmarc:
                            seen_dmarc.add(key)
                            out.dmarc += rows
            except ReportError as e:
                out.broken.append(f"{subject or '(no subject)'}: {e}")
    return out


async def mailbox_messages(store: Store, address: str) -> list[bytes]:
    """Every message in every folder of the account ``address`` leads to (an account or an alias)."""
    resolved = await store.resolve(address)
    if resolved is None:
        return []
    out = []
    for account in resolved.accounts:
        for mailbox in await store.list_mailboxes(account.id):
            for info in await store.messages(account.id, mailbox.id):
                out.append(await store.read_blob(info.blob_id))
    return out


async def gather(store: Store, local_or_address: str, domains: Iterable[str]) -> Collected:
    """The reports in the report mailbox of each domain (the same mailbox counted once)."""
    addresses = sorted({report_address(local_or_address, d) for d in domains})
    messages: list[bytes] = []
    for address in addresses:
        messages += await mailbox_messages(store, address)
    return collect(messages)


@dataclass
class SourceSummary:
    source_ip: str
    messages: int = 0
    passed: int = 0
    failed: int = 0
    dkim_pass: int = 0
    spf_pass: int = 0
    dispositions: dict[str, int] = field(default_factory=dict)
    reporters: set[str] = field(default_factory=set)
    header_from: set[str] = field(default_factory=set)


def by_source(rows: Iterable[DMARCRow]) -> list[SourceSummary]:
    """Per sending address: how much passed and failed DMARC, most mail first."""
    table: dict[str, SourceSummary] = {}
    for r in rows:
        s = table.setdefault(r.source_ip, SourceSummary(r.source_ip))
        s.messages += r.count
        s.passed += r.count if r.passed else 0
        s.failed += 0 if r.passed else r.count
        s.dkim_pass += r.count if r.dkim == "pass" else 0
        s.spf_pass += r.count if r.spf == "pass" else 0
        s.dispositions[r.disposition] = s.dispositions.get(r.disposition, 0) + r.count
        s.reporters.add(r.reporter)
        if r.header_from:
            s.header_from.add(r.header_from)
    return sorted(table.values(), key=lambda s: (-s.messages, s.source_ip))


@dataclass
class TLSSummary:
    policy_domain: str
    policy_type: str
    successful: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    reporters: set[str] = field(default_factory=set)


def by_policy(rows: Iterable[TLSPolicySummary]) -> list[TLSSummary]:
    table: dict[tuple[str, str], TLSSummary] = {}
    for r in rows:
        s = table.setdefault((r.policy_domain, r.policy_type), TLSSummary(r.policy_domain, r.policy_type))
        s.successful += r.successful
        s.failed += r.failed
        for kind, n in r.failures.items():
            s.failures[kind] = s.failures.get(kind, 0) + n
        s.reporters.add(r.reporter)
    return sorted(table.values(), key=lambda s: (s.policy_domain, s.policy_type))
