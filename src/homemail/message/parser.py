"""The MIME structure scanner: one pass over a message's bytes that yields its :class:`ParsedMessage`."""

from __future__ import annotations

import logging
import re
from calendar import timegm
from email.utils import mktime_tz, parsedate_tz

from homemail.message.headers import (
    FIELD_RE,
    decode_words,
    format_addresses,
    header_end,
    msg_ids,
    parse_addresses,
    parse_content_type,
    parse_disposition,
    parse_language,
    parse_token,
    unfold,
)
from homemail.message.model import Address, BodyPart, Envelope, ParsedMessage, SearchFields

log = logging.getLogger(__name__)

# Deeper nesting than this is kept as an opaque leaf: it bounds recursion, and no real mail needs it.
MAX_DEPTH = 50
# Past this many parts in one message the rest is left inside the last part (a cheap-bomb guard).
MAX_PARTS = 10_000

# RFC 2045 6.1: only these identity encodings may wrap a composite (multipart or message) body.
IDENTITY_ENCODINGS = frozenset({"7BIT", "8BIT", "BINARY"})

_ENVELOPE_FIELDS = frozenset(
    {
        b"date",
        b"subject",
        b"from",
        b"sender",
        b"reply-to",
        b"to",
        b"cc",
        b"bcc",
        b"in-reply-to",
        b"message-id",
        b"references",
    }
)
_DEFAULT_CHARSET = ("charset", "us-ascii")


def parse(data: bytes) -> ParsedMessage:
    """Parse a message (CRLF or, tolerated, LF line ends).  Never raises: malformed MIME gets a best effort."""
    if not isinstance(data, bytes):
        data = bytes(data)
    try:
        return _Scanner(data).top()
    except Exception:  # a last resort: a message must always be deliverable
        log.exception("MIME parse failed; storing the message as a single text part")
        end = len(data)
        body = BodyPart(params=[_DEFAULT_CHARSET], size=end, lines=data.count(b"\n"), end=end)
        return ParsedMessage(end, Envelope(), body, SearchFields())


class _Scanner:
    __slots__ = ("data", "parts")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parts = 0

    def top(self) -> ParsedMessage:
        data = self.data
        body, raw = self.entity(0, len(data), 0, False, True)
        env = _envelope(raw)
        return ParsedMessage(len(data), env, body, _search_fields(env, raw))

    def entity(
        self, start: int, end: int, depth: int, in_digest: bool, is_message: bool
    ) -> tuple[BodyPart, dict[bytes, bytes]]:
        """The part whose header block starts at ``start`` and whose body ends at ``end``.

        For a message (the top level or an encapsulated one) also returns its envelope fields, raw.
        """
        data = self.data
        body_start = header_end(data, start, end)
        content: dict[bytes, bytes] = {}
        envelope: dict[bytes, bytes] = {}
        for name, value in FIELD_RE.findall(data, start, body_start):
            name = name.lower()
            # The first occurrence of a field counts, as in common servers.
            if name.startswith(b"content-"):
                content.setdefault(name, value)
            elif is_message and name in _ENVELOPE_FIELDS:
                envelope.setdefault(name, value)
        part = BodyPart(header_start=start, body_start=body_start, end=end, size=end - body_start)
        self.content_fields(part, content, in_digest)
        if part.type == "multipart":
            self.multipart(part, depth)
        elif part.type == "message" and part.subtype in ("rfc822", "global"):
            self.encapsulated(part, depth)
        if part.type == "text" or part.message is not None:
            part.lines = data.count(b"\n", body_start, end)
        return part, envelope

    @staticmethod
    def content_fields(part: BodyPart, fields: dict[bytes, bytes], in_digest: bool) -> None:
        raw = fields.pop(b"content-type", None)
        ctype = parse_content_type(unfold(raw)) if raw is not None else None
        if ctype is not None:
            part.type, part.subtype, part.params = ctype
        elif in_digest:
            part.type, part.subtype = "message", "rfc822"  # RFC 2046 5.1.5
        # else RFC 2045 5.2: absent or invalid Content-Type means text/plain; charset=us-ascii
        if part.type == "text" and not any(k == "charset" or k == "charset*" for k, _ in part.params):
            part.params.append(_DEFAULT_CHARSET)
        for name, raw in fields.items():
            if name == b"content-transfer-encoding":
                token = parse_token(unfold(raw))
                if token:
                    part.encoding = token.upper()
            elif name == b"content-id":
                part.id = unfold(raw)
            elif name == b"content-description":
                part.description = unfold(raw)
            elif name == b"content-disposition":
                part.disposition = parse_disposition(unfold(raw))
            elif name == b"content-md5":
                part.md5 = unfold(raw)
            elif name == b"content-language":
                part.language = parse_language(unfold(raw))
            elif name == b"content-location":
                part.location = unfold(raw)

    def multipart(self, part: BodyPart, depth: int) -> None:
        boundary = part.param("boundary")
        if depth >= MAX_DEPTH:
            _make_leaf(part, "application", "octet-stream")
        elif boundary:
            part.parts = self.split(part, boundary.encode("utf-8", "surrogateescape"), depth + 1)
        if not part.parts and part.type == "multipart":
            # No boundary, or it never occurs: the body is kept as one text part.
            _make_leaf(part, "text", "plain")

    def split(self, part: BodyPart, boundary: bytes, depth: int) -> list[BodyPart]:
        """RFC 2046 5.1.1: the body parts between the delimiter lines of ``boundary``."""
        data = self.data
        start, end = part.body_start, part.end
        delimiter = b"--" + boundary
        spans: list[tuple[int, int]] = []
        current = -1  # start of the part being read, -1 in the preamble
        pos = start
        while self.parts + len(spans) + (current >= 0) < MAX_PARTS:
            i = data.find(delimiter, pos, end)
            if i < 0:
                break
            pos = i + len(delimiter)
            # The delimiter must begin a line.
            if i > start and data[i - 1] != 0x0A:
                continue
            close = data.startswith(b"--", pos, end)
            j = pos + 2 if close else pos
            # Transport padding (linear white space) may follow the delimiter; anything else means a
            # longer line that merely starts with the boundary.
            while j < end and data[j] in b" \t":
                j += 1
            if j < end and data[j] not in b"\r\n":
                continue
            if current >= 0:
                # The line break preceding the delimiter belongs to the delimiter, not to the part.
                stop = i
                if stop > current and data[stop - 1] == 0x0A:
                    stop -= 1
                    if stop > current and data[stop - 1] == 0x0D:
                        stop -= 1
                spans.append((current, stop))
            if close:
                current = -1
                break
            if data.startswith(b"\r\n", j, end):
                j += 2
            elif j < end:
                j += 1
            current = pos = j
        if current >= 0:
            spans.append((current, end))  # no close delimiter: the last part runs to the end
        self.parts += len(spans)
        digest = part.subtype == "digest"
        return [self.entity(s, e, depth, digest, False)[0] for s, e in spans]

    def encapsulated(self, part: BodyPart, depth: int) -> None:
        """message/rfc822 (and RFC 6532 message/global): parse the message inside."""
        if depth >= MAX_DEPTH or part.encoding not in IDENTITY_ENCODINGS:
            # An encoded message cannot be described by offsets; it is reported as opaque data.
            _make_leaf(part, "application", "octet-stream")
            return
        self.parts += 1
        inner, raw = self.entity(part.body_start, part.end, depth + 1, False, True)
        part.message = (_envelope(raw), inner)


def _make_leaf(part: BodyPart, type_: str, subtype: str) -> None:
    part.type, part.subtype = type_, subtype
    part.params = [_DEFAULT_CHARSET] if type_ == "text" else []


def _addresses(raw: dict[bytes, bytes], name: bytes) -> list[Address] | None:
    value = raw.get(name)
    if value is None:
        return None
    return parse_addresses(unfold(value)) or None


def _string(raw: dict[bytes, bytes], name: bytes) -> str | None:
    value = raw.get(name)
    return None if value is None else unfold(value)


def _envelope(raw: dict[bytes, bytes]) -> Envelope:
    from_ = _addresses(raw, b"from")
    return Envelope(
        date=_string(raw, b"date"),
        subject=_string(raw, b"subject"),
        from_=from_,
        # RFC 3501 7.4.2: an absent or empty Sender or Reply-To is set to the From value.
        sender=_addresses(raw, b"sender") or from_,
        reply_to=_addresses(raw, b"reply-to") or from_,
        to=_addresses(raw, b"to"),
        cc=_addresses(raw, b"cc"),
        bcc=_addresses(raw, b"bcc"),
        in_reply_to=_string(raw, b"in-reply-to"),
        message_id=_string(raw, b"message-id"),
    )


def _first_id(value: str | None) -> str | None:
    if value is None:
        return None
    ids = msg_ids(value)
    return ids[0] if ids else (value or None)


# RFC 5322 3.3 date-time in its usual shape; anything else goes to the lenient stdlib parser.
_DATE_RE = re.compile(
    r"[ \t]*(?:[A-Za-z]{3},[ \t]*)?(\d{1,2})[ \t]+([A-Za-z]{3})[ \t]+(\d{4})[ \t]+"
    r"(\d\d):(\d\d)(?::(\d\d))?[ \t]+([+-])(\d\d)(\d\d)(?:[ \t]|\(|$)"
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    m = _DATE_RE.match(value)
    month = _MONTHS.get(m.group(2).lower(), 0) if m is not None else 0
    if m is not None and month:
        day, _, year, hour, minute, second, sign, zh, zm = m.groups()
        try:
            stamp = timegm((int(year), month, int(day), int(hour), int(minute), int(second or 0)))
        except (ValueError, OverflowError):
            return None
        offset = int(zh) * 3600 + int(zm) * 60
        return float(stamp - offset if sign == "+" else stamp + offset)
    try:
        parsed = parsedate_tz(value)
        return float(mktime_tz(parsed)) if parsed is not None else None
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


def _search_fields(env: Envelope, raw: dict[bytes, bytes]) -> SearchFields:
    references = raw.get(b"references")
    return SearchFields(
        subject=decode_words(env.subject) if env.subject else "",
        from_=format_addresses(env.from_),
        to=format_addresses(env.to),
        cc=format_addresses(env.cc),
        bcc=format_addresses(env.bcc),
        date=_timestamp(env.date),
        message_id=_first_id(env.message_id),
        in_reply_to=_first_id(env.in_reply_to),
        references=msg_ids(unfold(references)) if references is not None else [],
    )
