"""The optional spam check: rspamd over its HTTP protocol (``POST /checkv2`` to the normal worker).

The message goes with the envelope as request headers (``IP``, ``Helo``, ``Hostname``, ``From``, one ``Rcpt`` per
recipient, ``Queue-Id``, ``MTA-Name``); rspamd answers JSON with a score and an ``action``.

Rules:
- rspamd's action decides (:data:`ACTIONS`): ``reject`` -> 550 5.7.1; ``soft reject`` -> 451 4.7.1 (try again
  later; rspamd's greylist module answers this for a first attempt); ``add header`` and ``rewrite subject`` ->
  junk: delivered to the recipients' Junk folder with ``X-Spam: Yes`` (and the subject rspamd proposes, for
  ``rewrite subject``); ``no action`` and ``greylist`` -> delivered as usual (``greylist`` is only the score
  band in which rspamd's own greylisting, when it runs, would have answered ``soft reject``).
  ``[rspamd] reject_score`` / ``junk_score``, when set, make the verdict stricter at those
  scores, never milder.
- Every scanned message gets ``X-Spam-Status`` with the action and score; fields of those names that arrived
  with the message are removed, so a sender cannot pre-empt the verdict.
- rspamd unreachable, too slow (``[rspamd] timeout``) or answering nonsense: by default the message is delivered
  as if rspamd had said ``no action`` and the failure is logged (fail open: the filter is an extra, and the
  authentication checks have already run); ``on_error = "tempfail"`` answers 451 4.3.0 instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.header import Header

from homemail.mailauth.results import field_name, split_header

log = logging.getLogger(__name__)

ACTIONS = {
    "no action": "accept",
    "add header": "junk",
    "rewrite subject": "junk",
    "greylist": "accept",
    "soft reject": "tempfail",
    "reject": "reject",
}
_SEVERITY = {"accept": 0, "junk": 1, "tempfail": 2, "reject": 3}
SPAM_FIELDS = (b"x-spam", b"x-spam-status", b"x-spam-flag", b"x-spam-score", b"x-spam-action")
MAX_RESPONSE = 4 * 1024 * 1024


class RspamdError(Exception):
    """rspamd could not be asked, or its answer made no sense."""


@dataclass(frozen=True, slots=True)
class Request:
    """What rspamd is told about the transaction besides the message."""

    ip: str
    helo: str = ""
    hostname: str = ""  # the client's verified reverse DNS name, "" when it has none
    sender: str = ""  # MAIL FROM; "" for the null reverse-path
    recipients: Sequence[str] = ()
    queue_id: str = ""
    mta_name: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str  # accept, junk, tempfail, reject
    action: str = ""  # rspamd's action
    score: float = 0.0
    required: float = 0.0
    symbols: tuple[str, ...] = ()
    subject: str | None = None  # for "rewrite subject"
    smtp_message: str = ""  # rspamd's own text for the SMTP reply, if it gave one
    error: str = ""  # why rspamd gave no verdict (then verdict is the [rspamd] on_error choice)

    def status_header(self) -> bytes:
        """``X-Spam-Status`` (and ``X-Spam: Yes`` for junk), CRLF-terminated."""
        if self.error:
            return f"X-Spam-Status: Unknown, rspamd unavailable ({self.error[:80]})\r\n".encode()
        flag = "Yes" if self.verdict != "accept" else "No"
        out = f"X-Spam-Status: {flag}, score={self.score:.2f} required={self.required:.2f} action={self.action}\r\n"
        if self.verdict == "junk":
            out = "X-Spam: Yes\r\n" + out
        return out.encode("ascii", "replace")


def interpret(
    answer: dict[str, object], reject_score: float | None = None, junk_score: float | None = None
) -> Verdict:
    """rspamd's JSON answer as a verdict (see the rules above)."""
    action = str(answer.get("action", "")).lower()
    if action not in ACTIONS:
        raise RspamdError(f"unknown action {action!r}")
    try:
        score = float(answer.get("score", 0.0))  # type: ignore[arg-type]
        required = float(answer.get("required_score", 0.0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RspamdError("score is not a number") from None
    verdict = ACTIONS[action]
    if reject_score is not None and score >= reject_score:
        verdict = "reject"
    elif junk_score is not None and score >= junk_score and _SEVERITY[verdict] < _SEVERITY["junk"]:
        verdict = "junk"
    symbols = answer.get("symbols")
    names = tuple(sorted(symbols)) if isinstance(symbols, dict) else ()
    messages = answer.get("messages")
    smtp_message = ""
    if isinstance(messages, dict) and isinstance(messages.get("smtp_message"), str):
        smtp_message = str(messages["smtp_message"])
    subject = answer.get("subject")
    return Verdict(
        verdict,
        action,
        score,
        required,
        names,
        subject if isinstance(subject, str) and action == "rewrite subject" else None,
        smtp_message,
    )


@dataclass
class Client:
    """Asks one rspamd normal worker, e.g. ``http://127.0.0.1:11333``."""

    url: str
    timeout: float = 20.0
    password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"rspamd url must be http://host:port, got {self.url!r}")
        self.host = parts.hostname
        self.port = parts.port or 11333
        self.path = parts.path.rstrip("/") + "/checkv2"

    def _request(self, message: bytes, req: Request) -> bytes:
        headers = [
            ("Host", f"{self.host}:{self.port}"),
            ("Content-Length", str(len(message))),
            ("Connection", "close"),
            ("IP", req.ip),
        ]
        if req.helo:
            headers.append(("Helo", req.helo))
        headers.append(("Hostname", req.hostname or "unknown"))
        if req.sender:
            headers.append(("From", req.sender))
        headers += [("Rcpt", r) for r in req.recipients]
        if req.queue_id:
            headers.append(("Queue-Id", req.queue_id))
        if req.mta_name:
            headers.append(("MTA-Name", req.mta_name))
        if self.password:
            headers.append(("Password", self.password))
        head = f"POST {self.path} HTTP/1.1\r\n" + "".join(f"{k}: {_clean(v)}\r\n" for k, v in headers)
        return head.encode("utf-8") + b"\r\n" + message

    async def _exchange(self, data: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(data)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise RspamdError(f"not an HTTP answer: {status_line[:80]!r}")
            length = None
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if chunked:
                body = b""
                while True:
                    size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    body += await reader.readexactly(size)
                    await reader.readline()
                    if len(body) > MAX_RESPONSE:
                        raise RspamdError("answer too long")
            elif length is not None:
                if length > MAX_RESPONSE:
                    raise RspamdError("answer too long")
                body = await reader.readexactly(length)
            else:
                body = await reader.read(MAX_RESPONSE)
            return int(parts[1]), body
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def check(self, message: bytes, req: Request) -> dict[str, object]:
        """rspamd's JSON answer; RspamdError when there is none to be had in time."""
        try:
            status, body = await asyncio.wait_for(self._exchange(self._request(message, req)), self.timeout)
        except TimeoutError:
            raise RspamdError(f"no answer within {self.timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            raise RspamdError(f"{type(e).__name__}: {e}") from None
        if status != 200:
            raise RspamdError(f"HTTP {status}: {body[:200]!r}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise RspamdError("answer is not JSON") from None
        if not isinstance(answer, dict):
            raise RspamdError("answer is not a JSON object")
        return answer


def _clean(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def rewrite_subject(message: bytes, subject: str) -> bytes:
    """``message`` with its Subject: field replaced (or added) with ``subject`` (RFC 2047-encoded if needed)."""
    value = subject if subject.isascii() else Header(subject, "utf-8").encode()
    new = f"Subject: {_clean(value)}\r\n".encode()
    fields, rest = split_header(message)
    kept = [f for f in fields if field_name(f) != b"subject"]
    index = next((i for i, f in enumerate(fields) if field_name(f) == b"subject"), len(kept))
    kept.insert(min(index, len(kept)), new)
    return b"".join(kept) + rest
