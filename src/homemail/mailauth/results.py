"""Authentication-Results (RFC 8601): the header field that records what we checked, and protection against
forged ones.

Rules:
- The authserv-id is our host name (``hostname`` in the configuration), the name of our ADMD's border MTA (2.5).
- One field per message, added on top with the trace fields (5); each method's result on a line of its own:
  ``iprev`` (2.7.3, ``policy.iprev``), ``spf`` (2.7.2, ``smtp.mailfrom``, or ``smtp.helo`` when the HELO name was
  the identity), ``dkim`` (2.7.1, one per signature, ``header.d``/``header.s``/``header.a``/``header.b`` of RFC
  6008), ``dmarc`` (RFC 7489 11.2, ``header.from``), ``arc`` (RFC 8617 10.1). Details go in comments.
- No method at all: ``none`` (2.2).
- Any Authentication-Results field that arrived with the message carrying our authserv-id (compared without
  case) is removed (5): only we may speak for our ADMD. Fields of other authserv-ids stay; fields we cannot
  parse stay unless their first word is our id.
- :func:`parse` reads a field (or an ARC-Authentication-Results value) back: authserv-id and method results, with
  comments dropped; enough to read what a trusted forwarder recorded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FIELD = b"authentication-results"
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_TSPECIALS = re.compile(r'[\s()<>,;:\\"\[\]?]')


def _strip_comments(text: str) -> str:
    previous = None
    while previous != text:  # nested comments, innermost first
        previous = text
        text = _COMMENT.sub(" ", text)
    return text


def authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (its first token or quoted string), lower-case."""
    text = _strip_comments(value).strip()
    m = re.match(r'"((?:[^"\\]|\\.)*)"|([^\s;]+)', text)
    if not m:
        return ""
    return (m.group(1) if m.group(1) is not None else m.group(2)).lower()


@dataclass(frozen=True, slots=True)
class ResInfo:
    method: str
    result: str
    props: dict[str, str] = field(default_factory=dict)  # "header.d" -> "example.org"


def parse(value: str) -> tuple[str, list[ResInfo]]:
    """An Authentication-Results (or ARC-Authentication-Results, whose leading ``i=N;`` is skipped) value."""
    text = _strip_comments(value.replace("\r\n", " ").replace("\n", " "))
    parts = [p.strip() for p in text.split(";")]
    if parts and re.fullmatch(r"i\s*=\s*\d+", parts[0]):
        parts = parts[1:]
    if not parts:
        return "", []
    server = parts[0].split()[0].strip('"').lower() if parts[0] else ""
    out = []
    for part in parts[1:]:
        m = re.match(r"([\w-]+)\s*=\s*([\w-]+)(.*)", part, re.S)
        if not m:
            continue
        props = {
            k.lower(): v.strip('"')
            for k, v in re.findall(r"([\w-]+\.[\w-]+)\s*=\s*(\"[^\"]*\"|[^\s;]+)", m.group(3))
        }
        out.append(ResInfo(m.group(1).lower(), m.group(2).lower(), props))
    return server, out


def split_header(message: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its continuation lines and CRLF) and the rest (blank line and body)."""
    if message.startswith(b"\r\n"):
        return [], message
    end = message.find(b"\r\n\r\n")
    if end < 0:
        head, rest = message, b""
        if not head.endswith(b"\r\n"):
            head += b"\r\n"
    else:
        head, rest = message[: end + 2], message[end + 2 :]
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, rest


def fields(message: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields as (name, value): the value is everything after the colon, continuation lines and
    line breaks included, as dkimpy's parser gives them (CRLF at the end removed)."""
    out = []
    for raw in split_header(message)[0]:
        name, colon, value = raw.partition(b":")
        if colon:
            out.append((name.rstrip(b" \t"), value[:-2]))
    return out


def field_name(raw: bytes) -> bytes:
    return raw.split(b":", 1)[0].strip().lower()


def remove_fields(message: bytes, drop: Iterable[bytes] = (), ours: str | None = None) -> tuple[bytes, int]:
    """``message`` without the header fields named in ``drop`` (lower-case names) and, when ``ours`` is given,
    without Authentication-Results fields with that authserv-id. Returns the message and how many went."""
    names = set(drop)
    lower = message[: message.find(b"\r\n\r\n") + 4 if b"\r\n\r\n" in message else len(message)].lower()
    if not any(n + b":" in lower or n + b" :" in lower for n in names) and (
        ours is None or FIELD not in lower
    ):
        return message, 0
    fields, rest = split_header(message)
    kept = []
    removed = 0
    for raw in fields:
        name = field_name(raw)
        if name in names:
            removed += 1
            continue
        if ours is not None and name == FIELD:
            value = raw.split(b":", 1)[1].decode("utf-8", "replace") if b":" in raw else ""
            if authserv_id(value) == ours.lower():
                removed += 1
                continue
        kept.append(raw)
    if not removed:
        return message, 0
    return b"".join(kept) + rest, removed


def remove_ours(message: bytes, hostname: str) -> tuple[bytes, int]:
    """RFC 8601 5: drop every Authentication-Results field claiming to be from ``hostname``."""
    return remove_fields(message, ours=hostname)


def _value(text: str) -> str:
    """A property value: as it is when it is a token or local@domain, else a quoted string."""
    if text and not _TSPECIALS.search(text.replace("@", "", 1)):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    text = re.sub(r"[\r\n\t]+", " ", text).strip().replace("\\", "\\\\")
    depth = 0
    for c in text:
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            break
    if depth != 0:  # nested comments are fine when balanced (RFC 5322 3.2.2); otherwise quote them
        text = text.replace("(", "\\(").replace(")", "\\)")
    return f" ({text})" if text else ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One result of one method, ready to be written."""

    method: str
    result: str
    comment: str = ""
    props: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        props = "".join(f" {k}={_value(v)}" for k, v in self.props if v)
        return f"{self.method}={self.result}{_comment(self.comment)}{props}"


def header(hostname: str, entries: Sequence[Entry]) -> bytes:
    """The Authentication-Results field, CRLF-terminated, one result per line."""
    if not entries:
        return f"Authentication-Results: {hostname}; none\r\n".encode()
    body = ";\r\n\t".join(e.render() for e in entries)
    return f"Authentication-Results: {hostname};\r\n\t{body}\r\n".encode("utf-8", "replace")
