"""The parsed summary of a message (envelope, MIME tree with byte offsets, search fields) and its JSON form."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Params = list[tuple[str, str]]


@dataclass(slots=True)
class Address:
    """One RFC 3501 ENVELOPE address; a group is bracketed by (None, None, name, None) and all-None."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@dataclass(slots=True)
class Envelope:
    """RFC 3501 7.4.2 ENVELOPE fields: header values unfolded but not RFC 2047 decoded; None when absent."""

    date: str | None = None
    subject: str | None = None
    from_: list[Address] | None = None
    sender: list[Address] | None = None
    reply_to: list[Address] | None = None
    to: list[Address] | None = None
    cc: list[Address] | None = None
    bcc: list[Address] | None = None
    in_reply_to: str | None = None
    message_id: str | None = None


@dataclass(slots=True)
class BodyPart:
    """One MIME entity.

    ``type``, ``subtype``, parameter names and the disposition type are lower-case; ``encoding`` is
    upper-case.  Offsets index the message bytes: ``header_start:body_start`` is the header block
    (with its blank line, if any) and ``body_start:end`` the body, without the line break that
    belongs to the next boundary.
    """

    type: str = "text"
    subtype: str = "plain"
    params: Params = field(default_factory=list)
    id: str | None = None
    description: str | None = None
    encoding: str = "7BIT"
    size: int = 0
    lines: int | None = None
    md5: str | None = None
    disposition: tuple[str, Params] | None = None
    language: list[str] | None = None
    location: str | None = None
    parts: list[BodyPart] = field(default_factory=list)
    message: tuple[Envelope, BodyPart] | None = None
    header_start: int = 0
    body_start: int = 0
    end: int = 0

    @property
    def is_multipart(self) -> bool:
        return self.type == "multipart"

    def param(self, name: str) -> str | None:
        """A Content-Type parameter as text: RFC 2231 and RFC 2047 encodings decoded."""
        return _lookup(self.params, name)

    @property
    def filename(self) -> str | None:
        """The attachment name: Content-Disposition ``filename``, else Content-Type ``name``."""
        found = _lookup(self.disposition[1], "filename") if self.disposition else None
        return found if found is not None else self.param("name")


def _lookup(params: Params, name: str) -> str | None:
    from homemail.message.headers import decode_param

    name = name.lower()
    plain = None
    for key, value in params:
        if key == name + "*":
            return decode_param(key, value)
        if key == name and plain is None:
            plain = decode_param(key, value)
    return plain


@dataclass(slots=True)
class SearchFields:
    """Decoded header values for SEARCH and SORT."""

    subject: str = ""
    from_: str = ""
    to: str = ""
    cc: str = ""
    bcc: str = ""
    date: float | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)


_FORMAT = 1


@dataclass(slots=True)
class ParsedMessage:
    """What :func:`homemail.message.parse` learns from a message, stored beside it as JSON."""

    size: int
    envelope: Envelope
    body: BodyPart
    search: SearchFields

    def to_json(self) -> bytes:
        """Compact, stable JSON: positional arrays, ASCII only (8-bit header bytes as escapes)."""
        s = self.search
        doc = [
            _FORMAT,
            self.size,
            _env_out(self.envelope),
            _part_out(self.body),
            [s.subject, s.from_, s.to, s.cc, s.bcc, s.date, s.message_id, s.in_reply_to, s.references],
        ]
        return json.dumps(doc, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, b: bytes | str) -> ParsedMessage:
        doc = json.loads(b)
        if not isinstance(doc, list) or doc[0] != _FORMAT:
            raise ValueError("not a homemail message summary")
        _, size, env, body, s = doc
        subject, from_, to, cc, bcc, date, message_id, in_reply_to, references = s
        search = SearchFields(subject, from_, to, cc, bcc, date, message_id, in_reply_to, references)
        return cls(size, _env_in(env), _part_in(body), search)


def _addrs_out(addrs: list[Address] | None) -> list[list[str | None]] | None:
    return None if addrs is None else [[a.name, a.adl, a.mailbox, a.host] for a in addrs]


def _addrs_in(doc: list[list[str | None]] | None) -> list[Address] | None:
    return None if doc is None else [Address(*a) for a in doc]


def _env_out(e: Envelope) -> list[Any]:
    return [
        e.date,
        e.subject,
        _addrs_out(e.from_),
        _addrs_out(e.sender),
        _addrs_out(e.reply_to),
        _addrs_out(e.to),
        _addrs_out(e.cc),
        _addrs_out(e.bcc),
        e.in_reply_to,
        e.message_id,
    ]


def _env_in(doc: list[Any]) -> Envelope:
    date, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = doc
    return Envelope(
        date,
        subject,
        _addrs_in(from_),
        _addrs_in(sender),
        _addrs_in(reply_to),
        _addrs_in(to),
        _addrs_in(cc),
        _addrs_in(bcc),
        in_reply_to,
        message_id,
    )


def _part_out(p: BodyPart) -> list[Any]:
    return [
        p.type,
        p.subtype,
        p.params,
        p.id,
        p.description,
        p.encoding,
        p.size,
        p.lines,
        p.md5,
        p.disposition,
        p.language,
        p.location,
        [_part_out(c) for c in p.parts],
        None if p.message is None else [_env_out(p.message[0]), _part_out(p.message[1])],
        p.header_start,
        p.body_start,
        p.end,
    ]


def _pairs(doc: list[list[str]]) -> Params:
    return [(k, v) for k, v in doc]


def _part_in(doc: list[Any]) -> BodyPart:
    (type_, subtype, params, id_, desc, enc, size, lines, md5, dsp, lang, loc, parts, msg, hs, bs, end) = doc
    return BodyPart(
        type_,
        subtype,
        _pairs(params),
        id_,
        desc,
        enc,
        size,
        lines,
        md5,
        None if dsp is None else (dsp[0], _pairs(dsp[1])),
        lang,
        loc,
        [_part_in(c) for c in parts],
        None if msg is None else (_env_in(msg[0]), _part_in(msg[1])),
        hs,
        bs,
        end,
    )
