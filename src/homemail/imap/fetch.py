"""FETCH: the data items a client asks for (RFC 9051 6.4.5, RFC 3516 BINARY, RFC 7162 MODSEQ), parsed into
:class:`Item` and rendered per message from the store's state, the summary parsed at delivery, and the message
file only when octets are wanted.

Summaries and their rendered ENVELOPE/BODYSTRUCTURE are kept in :data:`SUMMARIES`, one LRU cache per process
keyed by blob id: message files never change, so an entry never goes stale, and every session of every user
shares it.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from homemail.imap import encode
from homemail.imap.errors import No
from homemail.imap.parser import Parser
from homemail.message import ParsedMessage
from homemail.message import imap as mimap
from homemail.store import MessageInfo, Store

# RFC 9051 6.4.5 macros
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
SIMPLE = frozenset(
    {
        "UID",
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODY",
        "BODYSTRUCTURE",
        "MODSEQ",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
    }
)
_ITEM_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SPECS = ("HEADER.FIELDS.NOT", "HEADER.FIELDS", "HEADER", "TEXT", "MIME")


@dataclass(frozen=True, slots=True)
class Item:
    """One FETCH data item. ``kind`` is a SIMPLE name, "BODY[]" (BODY[section]), "BINARY" or "BINARY.SIZE"."""

    kind: str
    part: tuple[int, ...] = ()
    spec: str | None = None
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = True
    label: bytes = b""  # the item's name in the response, before any <origin>

    @property
    def needs_summary(self) -> bool:
        return self.kind in ("ENVELOPE", "BODY", "BODYSTRUCTURE", "BODY[]", "BINARY", "BINARY.SIZE") and not (
            self.kind == "BODY[]" and not self.part and self.spec is None
        )

    @property
    def needs_data(self) -> bool:
        return self.kind in ("BODY[]", "BINARY", "BINARY.SIZE", "RFC822", "RFC822.HEADER", "RFC822.TEXT")

    @property
    def sets_seen(self) -> bool:
        return not self.peek and self.kind in ("BODY[]", "BINARY", "RFC822", "RFC822.TEXT")


def _section_part(p: Parser) -> tuple[int, ...]:
    nums = []
    while p.next_byte().isdigit():
        nums.append(p.number(nz=True))
        if not p.take(b"."):
            break
        if not p.next_byte().isdigit():
            p.pos -= 1  # the dot belongs to the section-text
            break
    return tuple(nums)


def _parse_section(p: Parser) -> tuple[tuple[int, ...], str | None, tuple[str, ...]]:
    """``"[" [section-spec] "]"`` after BODY or BODY.PEEK (RFC 9051 9)."""
    p.expect(b"[")
    part = _section_part(p)
    dot = False
    if part and p.next_byte() == b".":
        p.pos += 1
        dot = True  # section-part "." section-text: the text must follow
    elif part and p.next_byte() != b"]":
        raise p.error("'.' or ']' after a part number")
    spec: str | None = None
    fields: list[str] = []
    if dot or not p.take(b"]"):
        for s in _SPECS:
            if p.take(s.encode()):
                spec = s
                break
        else:
            raise p.error("HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME")
        if spec == "MIME" and not part:
            raise p.error("a part number before MIME")
        if spec.startswith("HEADER.FIELDS"):
            p.sp()
            p.expect(b"(", "a header field list")
            fields.append(p.astring().decode("utf-8", "replace"))
            while not p.take(b")"):
                p.sp()
                fields.append(p.astring().decode("utf-8", "replace"))
        p.expect(b"]")
    return part, spec, tuple(fields)


def _parse_partial(p: Parser) -> tuple[int, int] | None:
    if not p.take(b"<"):
        return None
    origin = p.number()
    p.expect(b".")
    count = p.number(nz=True)
    p.expect(b">")
    return origin, count


def _section_label(name: str, part: tuple[int, ...], spec: str | None, fields: tuple[str, ...]) -> bytes:
    inner = ".".join(str(n) for n in part)
    if spec:
        inner = f"{inner}.{spec}" if inner else spec
    label = f"{name}[{inner}".encode("utf-8", "replace")
    if fields:
        # RFC 9051 9: header-fld-name = astring, so a name that is not an atom goes back quoted (or as a
        # literal) exactly as it must be sent; left bare, "x y" would read as two names.
        label += b" (" + b" ".join(mimap.astring(f.upper()) for f in fields) + b")"
    return label + b"]"


def parse_item(p: Parser) -> Item:
    # The item name stops before "[" (an atom would run on into the section).
    m = _ITEM_NAME.match(p.data, p.pos)
    if m is None:
        raise p.error("a FETCH data item")
    p.pos = m.end()
    name = m.group(0).decode("ascii").upper()
    if name in ("BODY", "BODY.PEEK") and p.next_byte() == b"[":
        part, spec, fields = _parse_section(p)
        partial = _parse_partial(p)
        return Item(
            "BODY[]",
            part,
            spec,
            fields,
            partial,
            peek=name == "BODY.PEEK",
            label=_section_label("BODY", part, spec, fields),
        )
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        p.expect(b"[")
        part = _section_part(p)
        p.expect(b"]")
        if name == "BINARY.SIZE":
            return Item("BINARY.SIZE", part, label=_section_label("BINARY.SIZE", part, None, ()))
        partial = _parse_partial(p)
        return Item(
            "BINARY",
            part,
            partial=partial,
            peek=name == "BINARY.PEEK",
            label=_section_label("BINARY", part, None, ()),
        )
    if name in SIMPLE:
        return Item(name, peek=name not in ("RFC822", "RFC822.TEXT"), label=name.encode())
    raise p.error("a FETCH data item")


def parse_items(p: Parser) -> list[Item]:
    """``fetch-att`` / macro / ``"(" fetch-att *(SP fetch-att) ")"``."""
    if p.take(b"("):
        items = [parse_item(p)]
        while not p.take(b")"):
            p.sp()
            items.append(parse_item(p))
        return items
    for macro, names in MACROS.items():
        if p.peek(macro.encode()) and p.data[p.pos + len(macro) : p.pos + len(macro) + 1] in (b" ", b"\r"):
            p.pos += len(macro)
            return [Item(n, label=n.encode()) for n in names]
    return [parse_item(p)]


# --- the shared summary cache -----------------------------------------------------------------------------


class SummaryCache:
    """Parsed summaries and their rendered ENVELOPE / BODY / BODYSTRUCTURE, by blob id, least recently used out."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._parsed: OrderedDict[str, ParsedMessage] = OrderedDict()
        self._rendered: dict[tuple[str, str], bytes] = {}

    async def get_many(self, store: Store, blob_ids: Sequence[str]) -> dict[str, ParsedMessage]:
        out: dict[str, ParsedMessage] = {}
        missing: list[str] = []
        cache = self._parsed
        for b in blob_ids:
            pm = cache.get(b)
            if pm is None:
                missing.append(b)
            else:
                out[b] = pm
        for i in range(0, len(missing), 2000):
            got = await store.parsed(missing[i : i + 2000])
            out.update(got)
            for b, pm in got.items():
                cache[b] = pm
        if missing:
            while len(cache) > self.capacity:
                old, _ = cache.popitem(last=False)
                for kind in ("ENVELOPE", "BODY", "BODYSTRUCTURE", "BODY/rev1", "BODYSTRUCTURE/rev1"):
                    self._rendered.pop((old, kind), None)
        return out

    def rendered(self, blob_id: str, kind: str, pm: ParsedMessage, rev2: bool = True) -> bytes:
        # BODY and BODYSTRUCTURE differ between the grammars when there is a MESSAGE/GLOBAL part.
        key = (blob_id, kind if rev2 or kind == "ENVELOPE" else kind + "/rev1")
        value = self._rendered.get(key)
        if value is None:
            if kind == "ENVELOPE":
                value = mimap.envelope(pm.envelope)
            else:
                value = mimap.bodystructure(pm.body, kind == "BODYSTRUCTURE", rev2)
            self._rendered[key] = value
        return value


SUMMARIES = SummaryCache()


def _read_files(paths: list[str]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                out.append(f.read())
        except OSError:
            out.append(None)
    return out


async def read_messages(store: Store, blob_ids: Sequence[str]) -> dict[str, bytes]:
    """Message files by blob id, read in one worker-thread hop; missing files are left out."""
    unique = list(dict.fromkeys(blob_ids))
    data = await asyncio.to_thread(_read_files, [store.blob_path(b) for b in unique])
    return {b: d for b, d in zip(unique, data, strict=True) if d is not None}


# --- rendering ------------------------------------------------------------------------------------------------


def _literal(data: bytes, binary: bool = False) -> bytes:
    if b"\x00" in data:
        if binary:
            return b"~{%d}\r\n%s" % (len(data), data)
        # RFC 9051 9 / RFC 3501 9: a literal is *CHAR8, which excludes NUL, and BODY[] has no literal8 form;
        # a message appended as binary (RFC 3516 4.4) shows its NULs as 0x80 there, as Dovecot does, keeping
        # every offset and size. BINARY[] gives the exact octets.
        data = data.replace(b"\x00", b"\x80")
    return b"{%d}\r\n%s" % (len(data), data)


def _cut(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    origin, count = partial
    return data[origin : origin + count]


def check_binary(items: Sequence[Item], pm: ParsedMessage) -> None:
    """Raise the NO that a BINARY item would give for this message, before anything is sent or changed."""
    for item in items:
        if item.kind in ("BINARY", "BINARY.SIZE") and item.part:
            target = mimap.find_part(pm, item.part)
            if target is None:
                raise No("no such body part")
            if not target.parts and target.message is None:
                try:
                    mimap.decode_transfer_encoding(b"", target.encoding)
                except mimap.UnknownCTE:
                    raise No("unknown Content-Transfer-Encoding", code=b"UNKNOWN-CTE") from None


def render_item(
    item: Item,
    info: MessageInfo,
    pm: ParsedMessage | None,
    data: bytes | None,
    blob_id: str,
    rev2: bool = True,
) -> bytes:
    """One ``name value`` pair of a FETCH response (not UID, FLAGS or MODSEQ: the caller adds those).

    ``rev2``: the session speaks IMAP4rev2 (RFC 9051), which changes the BODYSTRUCTURE of MESSAGE/GLOBAL.
    """
    kind = item.kind
    if kind == "INTERNALDATE":
        return b"INTERNALDATE " + encode.internaldate(info.internaldate)
    if kind == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % info.size
    if kind in ("ENVELOPE", "BODY", "BODYSTRUCTURE"):
        assert pm is not None
        return item.label + b" " + SUMMARIES.rendered(blob_id, kind, pm, rev2)
    assert data is not None
    if kind == "RFC822":
        return b"RFC822 " + _literal(data)
    if kind == "RFC822.HEADER":
        from homemail.message import header_end

        return b"RFC822.HEADER " + _literal(data[: header_end(data)])
    if kind == "RFC822.TEXT":
        from homemail.message import header_end

        return b"RFC822.TEXT " + _literal(data[header_end(data) :])
    if kind == "BODY[]":
        if not item.part and item.spec is None:
            octets = data
        else:
            assert pm is not None
            octets = mimap.section(data, pm, item.part, item.spec, item.fields)
        label = item.label
        if item.partial is not None:
            label += b"<%d>" % item.partial[0]
        return label + b" " + _literal(_cut(octets, item.partial))
    if kind in ("BINARY", "BINARY.SIZE"):
        assert pm is not None
        try:
            octets = mimap.binary(data, pm, item.part)
        except mimap.UnknownCTE:
            raise No("unknown Content-Transfer-Encoding", code=b"UNKNOWN-CTE") from None
        if item.part and mimap.find_part(pm, item.part) is None:
            raise No("no such body part")
        if kind == "BINARY.SIZE":
            return item.label + b" %d" % len(octets)
        label = item.label
        if item.partial is not None:
            label += b"<%d>" % item.partial[0]
        return label + b" " + _literal(_cut(octets, item.partial), binary=True)
    raise AssertionError(kind)
