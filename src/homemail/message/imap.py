"""IMAP renderings of a parsed message: ENVELOPE, BODY/BODYSTRUCTURE, BODY[section], BINARY and search text."""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable

from homemail.message.headers import decode_bytes, field_spans
from homemail.message.model import Address, BodyPart, Envelope, Params, ParsedMessage
from homemail.message.parser import IDENTITY_ENCODINGS

__all__ = [
    "UnknownCTE",
    "astring",
    "binary",
    "binary_size",
    "bodystructure",
    "decode_transfer_encoding",
    "envelope",
    "find_part",
    "nstring",
    "search_text",
    "section",
    "string",
]


class UnknownCTE(Exception):
    """A Content-Transfer-Encoding BINARY cannot decode (RFC 3516 4.3: NO [UNKNOWN-CTE])."""

    def __init__(self, encoding: str) -> None:
        super().__init__(encoding)
        self.encoding = encoding


# --- RFC 3501 9 / RFC 9051 9 strings ---------------------------------------------------------------------

# Longer values go out as literals: easier on clients' line-length limits.
QUOTED_MAX = 1024
# RFC 3501 4.3: a quoted string carries 7-bit text without CR, LF or NUL.
_NOT_QUOTABLE = re.compile(rb"[\x00\r\n\x80-\xff]")
# RFC 3501 9: ASTRING-CHAR = ATOM-CHAR / "]"
_ASTRING = re.compile(rb"[^(){ \x00-\x1f\x7f%*\"\\\x80-\xff]+")


def _bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        # Header strings carry 8-bit bytes as surrogate escapes: this restores them exactly.
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte produced
        return value.encode("utf-8", "replace")


def string(value: str | bytes | None) -> bytes:
    """``NIL``, a quoted string, or a literal ``{n}\\r\\n...`` when the value cannot be quoted."""
    if value is None:
        return b"NIL"
    b = _bytes(value)
    if len(b) > QUOTED_MAX or _NOT_QUOTABLE.search(b):
        # RFC 3501 9: literal = "{" number "}" CRLF *CHAR8, and CHAR8 excludes NUL.
        b = b.replace(b"\x00", b"\x80")
        return b"{%d}\r\n%s" % (len(b), b)
    if b"\\" in b or b'"' in b:
        b = b.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + b + b'"'


def nstring(value: str | bytes | None) -> bytes:
    """RFC 3501 nstring: NIL or a string."""
    return string(value)


def astring(value: str | bytes) -> bytes:
    """RFC 3501 astring: a bare atom when every character allows it, else a string."""
    b = _bytes(value)
    if _ASTRING.fullmatch(b):
        return b
    return string(b)


def _token(value: str) -> bytes:
    # Media types, parameter names, encodings and disposition types are case-insensitive; they are
    # rendered upper-case as in the examples of RFC 3501 7.4.2 (and as Cyrus does).
    return string(value.upper())


# --- ENVELOPE ------------------------------------------------------------------------------------------


def _address_list(addresses: list[Address] | None) -> bytes:
    if not addresses:
        return b"NIL"
    # RFC 3501 9: env-from = "(" 1*address ")"; address = "(" addr-name SP addr-adl SP addr-mailbox
    # SP addr-host ")", with no space between addresses.
    return b"(%s)" % b"".join(
        b"(%s %s %s %s)" % (string(a.name), string(a.adl), string(a.mailbox), string(a.host))
        for a in addresses
    )


def envelope(env: Envelope) -> bytes:
    """RFC 3501 7.4.2 ENVELOPE: the parenthesised list, fields in RFC order."""
    return b"(%s)" % b" ".join(
        (
            string(env.date),
            string(env.subject),
            _address_list(env.from_),
            _address_list(env.sender),
            _address_list(env.reply_to),
            _address_list(env.to),
            _address_list(env.cc),
            _address_list(env.bcc),
            string(env.in_reply_to),
            string(env.message_id),
        )
    )


# --- BODY / BODYSTRUCTURE ------------------------------------------------------------------------------

# RFC 3501 9: a multipart needs at least one body; this stands in when there is none (as Dovecot does).
_EMPTY_BODY = b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0)'


def _params(params: Params) -> bytes:
    # body-fld-param = "(" string SP string *(SP string SP string) ")" / nil
    if not params:
        return b"NIL"
    return b"(%s)" % b" ".join(b"%s %s" % (_token(k), string(v)) for k, v in params)


def _extension(part: BodyPart) -> bytes:
    # body-fld-dsp SP body-fld-lang SP body-fld-loc, shared by body-ext-1part and body-ext-mpart
    dsp = part.disposition
    dsp_b = b"NIL" if dsp is None else b"(%s %s)" % (_token(dsp[0]), _params(dsp[1]))
    lang = b"NIL" if not part.language else b"(%s)" % b" ".join(string(t) for t in part.language)
    return b"%s %s %s" % (dsp_b, lang, string(part.location))


def _body(part: BodyPart, extended: bool, out: list[bytes], rev2: bool) -> None:
    out.append(b"(")
    if part.type == "multipart":
        # body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        if part.parts:
            for child in part.parts:
                _body(child, extended, out, rev2)
        else:
            out.append(_EMPTY_BODY)
        out.append(b" " + _token(part.subtype))
        if extended:
            out.append(b" %s %s" % (_params(part.params), _extension(part)))
        out.append(b")")
        return
    # body-fields = body-fld-param SP body-fld-id SP body-fld-desc SP body-fld-enc SP body-fld-octets
    out.append(
        b"%s %s %s %s %s %s %d"
        % (
            _token(part.type),
            _token(part.subtype),
            _params(part.params),
            string(part.id),
            string(part.description),
            _token(part.encoding),
            part.size,
        )
    )
    # RFC 9051 9: media-message is MESSAGE/RFC822 or MESSAGE/GLOBAL; RFC 3501 9 knows only MESSAGE/RFC822,
    # so for an IMAP4rev1 client MESSAGE/GLOBAL is a body-type-basic (no envelope, body or lines).
    if part.message is not None and (rev2 or part.subtype == "rfc822"):
        # body-type-msg = media-message SP body-fields SP envelope SP body SP body-fld-lines
        out.append(b" " + envelope(part.message[0]) + b" ")
        _body(part.message[1], extended, out, rev2)
        out.append(b" %d" % (part.lines or 0))
    elif part.type == "text":
        # body-type-text = media-text SP body-fields SP body-fld-lines
        out.append(b" %d" % (part.lines or 0))
    if extended:
        # body-ext-1part = body-fld-md5 SP body-fld-dsp SP body-fld-lang SP body-fld-loc
        out.append(b" %s %s" % (string(part.md5), _extension(part)))
    out.append(b")")


def bodystructure(part: BodyPart, extended: bool = True, rev2: bool = True) -> bytes:
    """BODYSTRUCTURE (``extended``) or the non-extensible BODY form, RFC 3501 7.4.2 / RFC 9051 7.5.2.

    ``rev2``: the IMAP4rev2 grammar, where MESSAGE/GLOBAL is described like MESSAGE/RFC822.
    """
    out: list[bytes] = []
    _body(part, extended, out, rev2)
    return b"".join(out)


# --- BODY[section] -------------------------------------------------------------------------------------


def _subparts(part: BodyPart) -> list[BodyPart]:
    """The parts numbered below ``part`` (RFC 3501 6.4.5)."""
    if part.parts:
        return part.parts
    if part.message is not None:
        inner = part.message[1]
        # An encapsulated non-multipart message has one part: its body.
        return inner.parts if inner.parts else [inner]
    return []


def find_part(parsed: ParsedMessage, part: tuple[int, ...]) -> BodyPart | None:
    """The body part a section number names; ``()`` is the message itself, None when there is no such part."""
    node = parsed.body
    if not part:
        return node
    # A non-multipart message has only part 1: its body.
    children = node.parts if node.parts else [node]
    for n in part:
        if not 0 < n <= len(children):
            return None
        node = children[n - 1]
        children = _subparts(node)
    return node


def _select_fields(data: bytes, start: int, stop: int, names: Iterable[str | bytes], exclude: bool) -> bytes:
    wanted = {(n.decode("ascii", "replace") if isinstance(n, bytes) else n).lower() for n in names}
    out = []
    for name, s, e in field_spans(data, start, stop):
        if (name in wanted) != exclude:
            field = data[s:e]
            out.append(field if field.endswith(b"\n") else field + b"\r\n")
    # RFC 3501 6.4.5 / RFC 9051 6.4.5: subsetting keeps the blank line that ends the header, "except in
    # the case of a message which has no body and no blank line"; it is sent as the message has it.
    block = data[start:stop]
    if block.endswith(b"\n\r\n") or block == b"\r\n":
        out.append(b"\r\n")
    elif block.endswith(b"\n\n") or block == b"\n":
        out.append(b"\n")
    return b"".join(out)


def section(
    data: bytes,
    parsed: ParsedMessage,
    part: tuple[int, ...] = (),
    spec: str | None = None,
    fields: Iterable[str | bytes] = (),
) -> bytes:
    """The octets of ``BODY[<part>.<spec>]`` before any <partial> cut; b"" when there is no such section.

    ``spec`` is None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME" (any case);
    ``fields`` are the header names of the two HEADER.FIELDS forms.
    """
    target = find_part(parsed, part)
    if target is None:
        return b""
    spec = spec.upper() if spec else None
    if spec is None:
        return data if not part else data[target.body_start : target.end]
    if spec == "MIME":
        # RFC 3501 6.4.5: MIME is the part's own header and needs a part number.
        return data[target.header_start : target.body_start] if part else b""
    # HEADER, HEADER.FIELDS[.NOT] and TEXT name the message itself or one encapsulated by a
    # message/rfc822 part.
    if part:
        if target.message is None:
            return b""
        target = target.message[1]
    if spec == "TEXT":
        return data[target.body_start : target.end]
    if spec == "HEADER":
        return data[target.header_start : target.body_start]
    if spec in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return _select_fields(data, target.header_start, target.body_start, fields, spec.endswith(".NOT"))
    return b""


# --- BINARY (RFC 3516) and search text ------------------------------------------------------------------

_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]+")


def _base64(body: bytes) -> bytes:
    try:
        return binascii.a2b_base64(body)
    except binascii.Error:
        # Damaged padding or length: decode as much as forms whole groups.
        clean = _NOT_BASE64.sub(b"", body)
        extra = len(clean) % 4
        clean = clean[: len(clean) - 1] if extra == 1 else clean + b"=" * ((4 - extra) % 4)
        return binascii.a2b_base64(clean)


def decode_transfer_encoding(body: bytes, encoding: str) -> bytes:
    """RFC 2045 6: undo a Content-Transfer-Encoding; :class:`UnknownCTE` for one not defined there."""
    encoding = encoding.upper()
    if encoding in IDENTITY_ENCODINGS:
        return body
    if encoding == "BASE64":
        return _base64(body)
    if encoding == "QUOTED-PRINTABLE":
        return binascii.a2b_qp(body)
    raise UnknownCTE(encoding)


def binary(data: bytes, parsed: ParsedMessage, part: tuple[int, ...]) -> bytes:
    """The decoded content of ``BINARY[part]``; b"" when there is no such part."""
    if not part:
        return data  # RFC 3516 4.2: BINARY[] is the message as is
    target = find_part(parsed, part)
    if target is None:
        return b""
    body = data[target.body_start : target.end]
    if target.parts or target.message is not None:
        return body  # RFC 2045 6.4: composite bodies are never encoded
    return decode_transfer_encoding(body, target.encoding)


def binary_size(data: bytes, parsed: ParsedMessage, part: tuple[int, ...]) -> int:
    """``BINARY.SIZE[part]``: the length of :func:`binary`."""
    return len(binary(data, parsed, part))


def search_text(data: bytes, parsed: ParsedMessage) -> str:
    """The text of every text/* part (encapsulated messages included), decoded, for SEARCH BODY/TEXT."""
    out: list[str] = []
    stack = [parsed.body]
    while stack:
        node = stack.pop()
        if node.parts:
            stack.extend(reversed(node.parts))
        elif node.message is not None:
            stack.append(node.message[1])
        elif node.type == "text":
            body = data[node.body_start : node.end]
            try:
                body = decode_transfer_encoding(body, node.encoding)
            except UnknownCTE:
                pass
            out.append(decode_bytes(body, node.param("charset")))
    return "\n".join(out)
