"""Delivery status notifications (RFC 3464): the multipart/report a sender gets when mail failed or is delayed.

Rules:
- Never for the null reverse-path (RFC 5321 4.5.5, RFC 3461 6.2): a DSN is itself sent with ``MAIL FROM:<>``, so a
  failing DSN is dropped, never bounced again.
- A recipient with ``NOTIFY=NEVER`` gets no notice; without NOTIFY the default is FAILURE (and DELAY at the sender's
  MTA's discretion: we send it), RFC 3461 4.1.
- ``RET=HDRS`` returns only the header; otherwise the whole message, up to :data:`MAX_RETURNED` bytes (then the
  header only), as message/rfc822 (text/rfc822-headers for headers only), RFC 3462.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

MAX_RETURNED = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient's outcome, for the per-recipient part of the report (RFC 3464 2.3)."""

    recipient: str
    action: str  # "failed" or "delayed" (RFC 3464 2.3.3)
    status: str  # enhanced status code, e.g. "5.1.1"
    diagnostic: str  # the remote's reply, or our reason
    remote: str = ""  # the host that answered ("" when none did)
    orcpt: str | None = None  # the ORCPT parameter, "type;xtext"


def wants_notice(notify: Sequence[str] | None, action: str) -> bool:
    if notify is None:
        return True  # RFC 3461 4.1: absent NOTIFY means FAILURE (and DELAY may be sent)
    return {"failed": "FAILURE", "delayed": "DELAY"}[action] in notify


def status_of(reply: str, permanent: bool) -> str:
    """The enhanced status code in a reply text ("550 5.1.1 ..."), or a generic one."""
    for word in reply.split()[:3]:
        parts = word.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245":
            return word
    return "5.0.0" if permanent else "4.0.0"


def build(
    *,
    hostname: str,
    sender: str,
    failures: Sequence[Failure],
    original: bytes,
    envid: str | None = None,
    ret: str | None = None,
    arrival: float | None = None,
    now: float | None = None,
) -> bytes:
    """The whole DSN message (CRLF line endings), from MAILER-DAEMON@hostname to ``sender``."""
    now = time.time() if now is None else now
    delayed = all(f.action == "delayed" for f in failures)
    boundary = f"{int(now)}.{os.urandom(6).hex()}/{hostname}"
    subject = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    header_end = original.find(b"\r\n\r\n")
    original_header = original[: header_end + 2] if header_end >= 0 else original
    headers_only = ret == "HDRS" or len(original) > MAX_RETURNED

    human = [
        f"This is the mail system at host {hostname}.",
        "",
        (
            "Your message could not be delivered yet to the recipients below. It will be retried; you need "
            "do nothing now."
            if delayed
            else "I'm sorry to have to inform you that your message could not be delivered to one or more "
            "recipients. It is attached below."
        ),
        "",
    ]
    for f in failures:
        human.append(f"<{f.recipient}>: {f.diagnostic}" + (f" (from {f.remote})" if f.remote else ""))

    per_message = [f"Reporting-MTA: dns; {hostname}"]
    if envid:
        per_message.append(f"Original-Envelope-Id: {envid}")
    if arrival:
        per_message.append(f"Arrival-Date: {email.utils.formatdate(arrival)}")
    per_recipient = []
    for f in failures:
        block = []
        if f.orcpt:
            block.append(f"Original-Recipient: {f.orcpt}")
        block += [
            f"Final-Recipient: rfc822; {f.recipient}",
            f"Action: {f.action}",
            f"Status: {f.status}",
        ]
        if f.remote:
            block.append(f"Remote-MTA: dns; {f.remote}")
        if f.diagnostic:
            block.append(f"Diagnostic-Code: smtp; {' '.join(f.diagnostic.split())}")
        if f.action == "delayed":
            block.append(f"Last-Attempt-Date: {email.utils.formatdate(now)}")
        per_recipient.append("\r\n".join(block))

    parts = [
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "\r\n".join(human),
        "Content-Type: message/delivery-status\r\n\r\n"
        + "\r\n".join(per_message)
        + "\r\n\r\n"
        + "\r\n\r\n".join(per_recipient)
        + "\r\n",
    ]
    head = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.formatdate(now, localtime=True)}\r\n"
        f"Message-ID: <{int(now)}.{os.urandom(8).hex()}@{hostname}>\r\n"
        "Auto-Submitted: auto-replied\r\n"  # RFC 3834 5
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
    ).encode()
    body = b""
    for part in parts:
        body += f"\r\n--{boundary}\r\n".encode() + part.encode("utf-8") + b"\r\n"
    if headers_only:
        body += f"\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode() + original_header
    else:
        body += f"\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n".encode() + original
        if not original.endswith(b"\r\n"):
            body += b"\r\n"
    body += f"\r\n--{boundary}--\r\n".encode()
    return head + body
