"""Header-level parsing: locating and splitting header blocks, and the field grammars inside them."""

from __future__ import annotations

import binascii
import codecs
import re
from urllib.parse import quote, unquote_to_bytes

from homemail.message.model import Address

# RFC 5322 2.2: a field is a name of printable ASCII other than ":", a colon, and a body that may be
# folded onto following lines that start with WSP (2.2.3).  Bare LF line ends are tolerated.
FIELD_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)", re.M)


def header_end(data: bytes, start: int = 0, stop: int | None = None) -> int:
    """Offset just past the blank line ending the header block at ``start`` (``stop`` if there is none).

    RFC 5322 2.1: the header is separated from the body by an empty line.  A block that starts with an
    empty line has no fields; a block without an empty line is all header (its body is empty).
    """
    if stop is None:
        stop = len(data)
    if data.startswith(b"\r\n", start, stop):
        return start + 2
    if data.startswith(b"\n", start, stop):
        return start + 1
    crlf = data.find(b"\n\r\n", start, stop)
    lf = data.find(b"\n\n", start, crlf + 2 if crlf >= 0 else stop)
    if lf >= 0:
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    return stop


def header_fields(data: bytes, start: int = 0, stop: int | None = None) -> list[tuple[str, bytes]]:
    """The fields of the header block at ``start``: names as written, values raw (folding kept).

    A value is everything after the colon up to the field's final line ending.
    """
    end = header_end(data, start, stop)
    out: list[tuple[str, bytes]] = []
    for m in FIELD_RE.finditer(data, start, end):
        value = m.group(2)
        out.append((m.group(1).decode("ascii"), value[:-1] if value.endswith(b"\r") else value))
    return out


def field_spans(data: bytes, start: int, stop: int) -> list[tuple[str, int, int]]:
    """(lower-case name, start, end) of every field in ``data[start:stop]``; end includes the line ending."""
    return [
        (m.group(1).decode("ascii").lower(), m.start(), m.end()) for m in FIELD_RE.finditer(data, start, stop)
    ]


def unfold(value: bytes) -> str:
    """RFC 5322 2.2.3: unfold (drop each CRLF that precedes WSP) and trim surrounding whitespace.

    8-bit bytes (RFC 6532 UTF-8 headers, or junk) survive as surrogate escapes so that rendering
    can reproduce them exactly.
    """
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return value.strip(b" \t\r").decode("utf-8", "surrogateescape")


def to_text(value: str) -> str:
    """A header string with undecodable bytes replaced, for display and search."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


# --- RFC 2047 encoded words -------------------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


_CODECS: dict[str, str] = {}


def _codec(charset: str) -> str:
    """The Python codec for a MIME charset name; unknown charsets are read as UTF-8."""
    name = _CODECS.get(charset)
    if name is None:
        try:
            info = codecs.lookup(charset)
            # Names like "base64" or "rot13" find bytes-to-bytes codecs, not charsets.
            name = info.name if getattr(info, "_is_text_encoding", True) else "utf-8"
        except (LookupError, ValueError):
            name = "utf-8"
        if len(_CODECS) < 256:  # charset names come from mail: keep the memo small
            _CODECS[charset] = name
    return name


def decode_bytes(raw: bytes, charset: str | None) -> str:
    """Text in a MIME charset (RFC 2045 5.1 default us-ascii); errors and unknown charsets are replaced.

    8-bit bytes labelled us-ascii (or not labelled) are read as UTF-8 when they are valid UTF-8: that is what
    such mail carries in practice (RFC 6532 3.1 allows UTF-8 in header fields)."""
    codec = _codec(charset or "us-ascii")
    if codec == "ascii" and not raw.isascii():
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode(codec, "replace")
    except (LookupError, ValueError):
        return raw.decode("utf-8", "replace")


def _word_bytes(encoding: str, text: str) -> bytes | None:
    try:
        if encoding in "bB":
            return binascii.a2b_base64(text + "=" * (-len(text) % 4))
        return binascii.a2b_qp(text.encode("ascii", "replace"), header=True)
    except (binascii.Error, ValueError):
        return None


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words, for SEARCH and SORT; undecodable words are left as written."""
    value = to_text(value)
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = b""
    pending_charset = ""
    pos = 0
    for m in _ENCODED_WORD.finditer(value):
        between = value[pos : m.start()]
        # RFC 2231 5: a language may follow the charset after "*".
        charset = m.group(1).split("*", 1)[0].lower()
        raw = _word_bytes(m.group(2), m.group(3))
        if raw is None:
            continue
        # RFC 2047 6.2: whitespace between adjacent encoded words is not displayed.
        adjacent = pos > 0 and not between.strip(" \t")
        if not adjacent:
            if pending:
                out.append(decode_bytes(pending, pending_charset))
                pending = b""
            out.append(between)
        elif pending and charset != pending_charset:
            out.append(decode_bytes(pending, pending_charset))
            pending = b""
        # Same-charset neighbours are joined before decoding: encoders split multibyte characters.
        pending += raw
        pending_charset = charset
        pos = m.end()
    if pending:
        out.append(decode_bytes(pending, pending_charset))
    out.append(value[pos:])
    return "".join(out)


# --- RFC 2045 5.1 / RFC 2183 parameters, RFC 2231 continuations --------------------------------------

_COMMENT_OR_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"?|\(')
_TYPE_RE = re.compile(r"[ \t]*([^\s/;()<>@,:\\\"\[\]?=]+)[ \t]*/[ \t]*([^\s/;()<>@,:\\\"\[\]?=]+)")
_TOKEN_RE = re.compile(r"[ \t]*([^\s;()<>@,:\\\"\[\]/?=]+)")
_PARAM_RE = re.compile(r';[ \t]*([^\s=;"]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"?|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_SECTION_RE = re.compile(r"(.+?)\*(?:(\d+)(\*?))?")


def strip_comments(value: str) -> str:
    """Remove RFC 5322 3.2.2 comments (nested, with quoted pairs) outside quoted strings."""
    if "(" not in value:
        return value
    out: list[str] = []
    pos = 0
    while True:
        m = _COMMENT_OR_QUOTED.search(value, pos)
        if m is None:
            out.append(value[pos:])
            return "".join(out)
        if m.group() != "(":
            out.append(value[pos : m.end()])
            pos = m.end()
            continue
        out.append(value[pos : m.start()] + " ")
        pos = skip_comment(value, m.start())


def skip_comment(value: str, start: int) -> int:
    """Offset just past the (possibly nested) comment opening at ``value[start]``."""
    depth = 0
    i = start
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\":
            i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _unquote(value: str) -> str:
    value = value.strip(" \t")
    if value.startswith('"'):
        value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
        if "\\" in value:
            value = _QUOTED_PAIR.sub(r"\1", value)
    return value


def parse_params(value: str, pos: int) -> list[tuple[str, str]]:
    """Parameters after ``pos``: names lower-cased, values unquoted, RFC 2231 sections joined.

    RFC 2231 3-4: ``name*N`` sections are concatenated in order.  If any section is encoded
    (``name*`` or ``name*N*``) the result is one ``name*`` parameter holding ``charset'lang'%XX...``,
    plain sections being percent-encoded into it; this is what IMAP servers report in
    BODYSTRUCTURE, and :func:`decode_param` turns it into text.
    """
    params: list[tuple[str, str]] = []
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    for m in _PARAM_RE.finditer(value, pos):
        name = m.group(1).lower()
        raw = m.group(2)
        if "*" not in name:
            params.append((name, _unquote(raw)))
            continue
        s = _SECTION_RE.fullmatch(name)
        if s is None:
            params.append((name, _unquote(raw)))
            continue
        base = s.group(1)
        if base not in sections:
            sections[base] = []
            params.append((base, ""))  # placeholder keeps the parameter's position
        number = int(s.group(2)) if s.group(2) is not None and len(s.group(2)) < 6 else 0
        encoded = s.group(2) is None or s.group(3) == "*"
        sections[base].append((number, encoded, _unquote(raw)))
    if not sections:
        return params
    out: list[tuple[str, str]] = []
    for name, text in params:
        parts = sections.pop(name, None) if not text else None
        if parts is None:
            out.append((name, text))
            continue
        parts.sort(key=lambda p: p[0])
        if not any(encoded for _, encoded, _ in parts):
            out.append((name, "".join(p[2] for p in parts)))
            continue
        joined: list[str] = []
        for i, (_, encoded, text) in enumerate(parts):
            if not encoded:
                joined.append(quote(text, safe=""))
            elif i == 0 and text.count("'") < 2:
                joined.append("''" + text)  # RFC 2231 4: the first encoded section carries charset'lang'
            else:
                joined.append(text)
        if not parts[0][1]:
            joined.insert(0, "''")
        out.append((name + "*", "".join(joined)))
    return out


def decode_param(name: str, value: str) -> str:
    """The text of a parameter from :func:`parse_params`: RFC 2231 ``name*`` decoded, else RFC 2047."""
    if not name.endswith("*"):
        return decode_words(value)
    charset, _, rest = value.partition("'")
    _, _, encoded = rest.partition("'")
    return decode_bytes(unquote_to_bytes(encoded), charset or "us-ascii")


def parse_content_type(value: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    """(type, subtype, params), type and subtype lower-cased; None when syntactically invalid."""
    value = strip_comments(value)
    m = _TYPE_RE.match(value)
    if m is None:
        return None
    return m.group(1).lower(), m.group(2).lower(), parse_params(value, m.end())


def parse_disposition(value: str) -> tuple[str, list[tuple[str, str]]] | None:
    """RFC 2183: (disposition type lower-cased, params); None when there is no type token."""
    value = strip_comments(value)
    m = _TOKEN_RE.match(value)
    if m is None:
        return None
    return m.group(1).lower(), parse_params(value, m.end())


def parse_token(value: str) -> str | None:
    """The leading MIME token (RFC 2045 5.1), e.g. of Content-Transfer-Encoding."""
    m = _TOKEN_RE.match(strip_comments(value))
    return m.group(1) if m else None


def parse_language(value: str) -> list[str] | None:
    """RFC 3282: a comma-separated list of language tags."""
    tags = [t.strip(" \t") for t in strip_comments(value).split(",")]
    tags = [t for t in tags if t]
    return tags or None


_MSG_ID_RE = re.compile(r"<[^<>]*>")


def msg_ids(value: str) -> list[str]:
    """RFC 5322 3.6.4: the ``<id>`` tokens of Message-ID, In-Reply-To or References."""
    return _MSG_ID_RE.findall(value)


# --- RFC 5322 3.4 addresses ---------------------------------------------------------------------------

# Tokens: whitespace, quoted string, atom (dots included, so a dot-atom is one token), domain literal,
# specials, comment start.
_ADDR_TOKEN = re.compile(
    r'[ \t\r\n]+|"((?:[^"\\]|\\.)*)"?|([^\s()<>@,;:\\"\[\]]+|\\.?)|(\[[^\]]*\]?)|([<>@,;:])|(\()',
    re.S,
)
MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"
# The common shapes (``a@b``, ``Name <a@b>``, ``"Name" <a@b>``) are matched in one step; anything
# else (groups, comments, routes, odd quoting) goes through the tokenizer.
_ATEXT = r"[^\s()<>@,;:\\\"\[\]]+"
_SIMPLE_ADDR = re.compile(
    rf'[ \t]*(?:(?:"((?:[^"\\\r\n]|\\.)*)"|([^"()<>@,;:\\\[\]\r\n]*?))[ \t]*<({_ATEXT})@({_ATEXT})>'
    rf"|({_ATEXT})@({_ATEXT}))[ \t]*(,|$)"
)


class _Builder:
    """Accumulates the tokens of one address between separators."""

    __slots__ = ("angle", "comment", "in_angle", "out", "words")

    def __init__(self, out: list[Address]) -> None:
        self.out = out
        self.words: list[tuple[str, str]] = []  # (raw, text) of tokens outside <>
        self.angle: list[str] | None = None  # raw tokens inside <>
        self.in_angle = False
        self.comment: str | None = None

    def phrase(self) -> str | None:
        text = " ".join(text for _, text in self.words)
        return text or None

    def finish(self) -> None:
        if self.angle is not None:
            name = self.phrase()
            tokens = self.angle
            adl = None
            # RFC 5322 4.4 obs-route: "@a,@b:" before the addr-spec.
            if tokens and tokens[0] == "@" and ":" in tokens:
                colon = tokens.index(":")
                adl = "".join(tokens[:colon])
                tokens = tokens[colon + 1 :]
            self._add(name, adl, tokens)
        elif self.words:
            self._add(self.comment, None, [raw for raw, _ in self.words])
        self.words = []
        self.angle = None
        self.in_angle = False
        self.comment = None

    def _add(self, name: str | None, adl: str | None, tokens: list[str]) -> None:
        if "@" in tokens:
            at = len(tokens) - 1 - tokens[::-1].index("@")
            local, domain = "".join(tokens[:at]), "".join(tokens[at + 1 :])
        else:
            local, domain = "".join(tokens), ""
        if not local and not domain and name is None:
            return
        self.out.append(Address(name, adl, local or MISSING_MAILBOX, domain or MISSING_DOMAIN))


def _simple_addresses(value: str) -> list[Address] | None:
    out: list[Address] = []
    pos = 0
    n = len(value)
    while pos < n:
        m = _SIMPLE_ADDR.match(value, pos)
        if m is None:
            return None
        quoted, phrase, local, domain, bare_local, bare_domain, comma = m.groups()
        if local is None:
            out.append(Address(None, None, bare_local, bare_domain))
        else:
            if quoted is not None:
                name: str | None = _QUOTED_PAIR.sub(r"\1", quoted) if "\\" in quoted else quoted
            else:
                name = " ".join(phrase.split()) or None
            out.append(Address(name, None, local, domain))
        pos = m.end()
        if not comma:
            break
    return out if pos >= n else None


def parse_addresses(value: str) -> list[Address]:
    """An address-list as RFC 3501 ENVELOPE addresses: group syntax becomes the start/end markers.

    The display name is the phrase as written (quotes removed, RFC 2047 words kept); without one, a
    comment such as ``user@host (Real Name)`` is used, as common servers do.
    """
    fast = _simple_addresses(value)
    if fast is not None:
        return fast
    out: list[Address] = []
    b = _Builder(out)
    in_group = False
    pos = 0
    n = len(value)
    while pos < n:
        if value[pos] == "(":
            end = skip_comment(value, pos)
            if b.comment is None:
                b.comment = _QUOTED_PAIR.sub(r"\1", value[pos + 1 : end - 1]).strip(" \t") or None
            pos = end
            continue
        m = _ADDR_TOKEN.match(value, pos)
        if m is None:  # pragma: no cover - the token pattern matches any character
            break
        pos = m.end()
        if m.lastindex is None:
            continue  # whitespace
        raw = m.group()
        if b.in_angle:
            if raw == ">":
                b.in_angle = False
            elif b.angle is not None:
                b.angle.append(raw)
            continue
        special = m.group(4)
        if special is None:
            text = m.group(1) if m.lastindex == 1 else raw
            if m.lastindex == 1 and "\\" in text:
                text = _QUOTED_PAIR.sub(r"\1", text)
            b.words.append((raw, text))
        elif special == "<":
            if b.angle is None:
                b.angle = []
            b.in_angle = True
        elif special == ",":
            b.finish()
        elif special == ":" and not in_group and b.angle is None:
            # RFC 5322 3.4 group: display-name ":" [group-list] ";"
            out.append(Address(None, None, b.phrase() or "", None))
            b.words = []
            b.comment = None
            in_group = True
        elif special == ";" and in_group:
            b.finish()
            out.append(Address(None, None, None, None))
            in_group = False
        elif special != ">":
            b.words.append((raw, raw))
    b.finish()
    if in_group:
        out.append(Address(None, None, None, None))
    return out


def format_addresses(addresses: list[Address] | None) -> str:
    """Addresses as decoded text (``Name <a@b>, c@d``) for SEARCH FROM/TO and SORT; group markers skipped."""
    if not addresses:
        return ""
    out: list[str] = []
    for a in addresses:
        if a.host is None:
            continue
        spec = a.mailbox if a.host == MISSING_DOMAIN else f"{a.mailbox}@{a.host}"
        spec = to_text(spec or "")
        out.append(f"{decode_words(a.name)} <{spec}>" if a.name else spec)
    return ", ".join(out)
