"""SEARCH (RFC 9051 6.4.4, RFC 3501 6.4.4): search keys parsed into a tree of :class:`Key`, then matched against
the messages of the selected mailbox.

Matching reads as little as it can: flags, sizes, dates and UIDs come from the session's view; address and
subject keys from the summary parsed at delivery; only BODY, TEXT and HEADER read message files (in a worker
thread). Strings match as case-insensitive substrings (RFC 9051 6.4.4) after RFC 2047 decoding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_tz

from homemail.imap.errors import Bad, No
from homemail.imap.parser import Parser, SeqSet
from homemail.message import ParsedMessage, header_end, header_fields
from homemail.message import imap as mimap
from homemail.message.headers import decode_words, unfold
from homemail.store import MessageInfo

CHARSETS = ("UTF-8", "US-ASCII")

_NO_ARG = {
    "ALL",
    "ANSWERED",
    "DELETED",
    "DRAFT",
    "FLAGGED",
    "NEW",
    "OLD",
    "RECENT",
    "SEEN",
    "UNANSWERED",
    "UNDELETED",
    "UNDRAFT",
    "UNFLAGGED",
    "UNSEEN",
}
_STRING_ARG = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_ARG = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_NUMBER_ARG = {"LARGER", "SMALLER", "OLDER", "YOUNGER"}
_FLAG_OF = {
    "ANSWERED": "\\Answered",
    "DELETED": "\\Deleted",
    "DRAFT": "\\Draft",
    "FLAGGED": "\\Flagged",
    "SEEN": "\\Seen",
}


@dataclass(slots=True)
class Key:
    op: str
    arg: object = None
    children: list[Key] = field(default_factory=list)


@dataclass(slots=True)
class Query:
    key: Key
    charset: str = "UTF-8"
    needs_summary: bool = False
    needs_data: bool = False
    uses_modseq: bool = False


def _text(p: Parser) -> str:
    return p.astring().decode("utf-8", "replace")


def parse_key(p: Parser, depth: int = 0) -> Key:
    if depth > 50:
        raise p.error("less deeply nested search keys")
    if p.take(b"("):
        keys = [parse_key(p, depth + 1)]
        while not p.take(b")"):
            p.sp()
            keys.append(parse_key(p, depth + 1))
        return Key("AND", children=keys)
    c = p.next_byte()
    if c.isdigit() or c in (b"*", b"$"):
        return Key("SEQ", p.seq_set())
    name = p.atom().upper()
    if name in _NO_ARG:
        return Key(name)
    if name == "NOT":
        p.sp()
        return Key("NOT", children=[parse_key(p, depth + 1)])
    if name == "OR":
        p.sp()
        a = parse_key(p, depth + 1)
        p.sp()
        return Key("OR", children=[a, parse_key(p, depth + 1)])
    p.sp()
    if name in _STRING_ARG:
        return Key(name, _text(p))
    if name in _DATE_ARG:
        return Key(name, p.search_date().date())
    if name in _NUMBER_ARG:
        # RFC 9051 9: LARGER/SMALLER take a number64; RFC 5032 4: OLDER/YOUNGER an nz-number
        if name in ("OLDER", "YOUNGER"):
            return Key(name, p.number(nz=True))
        return Key(name, p.number64())
    if name in ("KEYWORD", "UNKEYWORD"):
        return Key(name, p.flag())
    if name == "HEADER":
        field_name = _text(p)
        p.sp()
        return Key(name, (field_name.lower(), _text(p)))
    if name == "UID":
        return Key(name, p.seq_set())
    if name == "MODSEQ":
        # RFC 7162 3.1.5 / 7: MODSEQ [entry-name SP entry-type-req SP] mod-sequence-valzer, where
        # entry-name = DQUOTE "/flags/" attr-flag DQUOTE and entry-type-req = "priv" / "shared" / "all".
        # Metadata items have no mod-sequences of their own here: the message's MODSEQ is compared.
        if p.next_byte() == b'"':
            if not p.quoted().lower().startswith(b"/flags/"):
                raise p.error('an entry name "/flags/..."')
            p.sp()
            if p.atom().lower() not in ("priv", "shared", "all"):
                raise p.error("priv, shared or all")
            p.sp()
        return Key(name, p.number64())
    raise p.error("a search key")


def parse_query(p: Parser, allow_charset: bool = True) -> Query:
    """``[CHARSET SP astring SP] search-key *(SP search-key)``, at the parser's position (to the end)."""
    charset = "UTF-8"
    if allow_charset and p.take(b"CHARSET "):
        charset = _text(p).upper()
        p.sp()
        if charset not in CHARSETS:
            # Parse on, so a syntax error still gets its BAD, then refuse the charset.
            keys = _keys(p)
            raise No(f"charset {charset} is not supported", code=b"BADCHARSET (UTF-8 US-ASCII)")
    keys = _keys(p)
    key = keys[0] if len(keys) == 1 else Key("AND", children=keys)
    q = Query(key, charset)
    _analyse(key, q)
    return q


def _keys(p: Parser) -> list[Key]:
    keys = [parse_key(p)]
    while not p.at_end():
        p.sp()
        keys.append(parse_key(p))
    return keys


def _analyse(key: Key, q: Query) -> None:
    if key.op in ("BCC", "CC", "FROM", "SUBJECT", "TO", "SENTBEFORE", "SENTON", "SENTSINCE"):
        q.needs_summary = True
    elif key.op in ("BODY", "TEXT", "HEADER"):
        q.needs_summary = True
        q.needs_data = True
    elif key.op == "MODSEQ":
        q.uses_modseq = True
    for child in key.children:
        _analyse(child, q)


# --- matching -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Candidate:
    seq: int
    info: MessageInfo
    recent: bool
    summary: ParsedMessage | None = None
    data: bytes | None = None


def _fold(s: str) -> str:
    return s.casefold()


def _sent_date(pm: ParsedMessage | None) -> date | None:
    """RFC 9051 6.4.4: SENT* compare the Date header's date, in its own zone, disregarding time."""
    if pm is None or not pm.envelope.date:
        return None
    t = parsedate_tz(pm.envelope.date)
    if t is None:
        return None
    try:
        return date(t[0], t[1], t[2])
    except ValueError:
        return None


def _internal_day(info: MessageInfo) -> date:
    return info.internaldate.date()


def _header_text(data: bytes | None, name: str) -> list[str] | None:
    if data is None:
        return None
    return [decode_words(unfold(v)) for n, v in header_fields(data) if n.lower() == name]


def _body_text(c: Candidate) -> str:
    if c.data is None or c.summary is None:
        return ""
    return mimap.search_text(c.data, c.summary)


def _header_block(raw: bytes) -> str:
    head = raw.decode("utf-8", "replace")
    return decode_words(head.replace("\r\n ", " ").replace("\r\n\t", " "))


def _full_text(c: Candidate) -> str:
    """TEXT: the header, the MIME header fields of every part (RFC 3501 6.4.4) and the decoded text."""
    if c.data is None:
        return ""
    heads = [_header_block(c.data[: header_end(c.data)])]
    if c.summary is not None:
        stack = list(reversed(c.summary.body.parts))
        if c.summary.body.message is not None:
            stack.append(c.summary.body.message[1])
        while stack:
            node = stack.pop()
            heads.append(_header_block(c.data[node.header_start : node.body_start]))
            stack.extend(reversed(node.parts))
            if node.message is not None:
                stack.append(node.message[1])
    return "\n".join(heads) + "\n" + _body_text(c)


def matcher(
    key: Key, exists: int, largest_uid: int, saved: Sequence[int], now: datetime
) -> Callable[[Candidate], bool]:
    """Compile a key tree into one function of a :class:`Candidate`."""
    op = key.op
    arg = key.arg
    if op == "AND":
        parts = [matcher(k, exists, largest_uid, saved, now) for k in key.children]
        return lambda c: all(f(c) for f in parts)
    if op == "OR":
        a, b = (matcher(k, exists, largest_uid, saved, now) for k in key.children)
        return lambda c: a(c) or b(c)
    if op == "NOT":
        f = matcher(key.children[0], exists, largest_uid, saved, now)
        return lambda c: not f(c)
    if op == "ALL":
        return lambda c: True
    if op in _FLAG_OF:
        flag = _FLAG_OF[op]
        return lambda c: flag in c.info.flags
    if op.startswith("UN") and op[2:] in _FLAG_OF:
        flag = _FLAG_OF[op[2:]]
        return lambda c: flag not in c.info.flags
    if op == "NEW":
        return lambda c: c.recent and "\\Seen" not in c.info.flags
    if op == "OLD":
        return lambda c: not c.recent
    if op == "RECENT":
        return lambda c: c.recent
    if op in ("KEYWORD", "UNKEYWORD"):
        assert isinstance(arg, str)
        want = arg.lower()
        if op == "KEYWORD":
            return lambda c: any(f.lower() == want for f in c.info.flags)
        return lambda c: not any(f.lower() == want for f in c.info.flags)
    if op == "LARGER":
        assert isinstance(arg, int)
        return lambda c: c.info.size > arg
    if op == "SMALLER":
        assert isinstance(arg, int)
        return lambda c: c.info.size < arg
    if op in ("OLDER", "YOUNGER"):  # RFC 5032 WITHIN
        assert isinstance(arg, int)
        limit = now - timedelta(seconds=arg)
        if op == "OLDER":
            return lambda c: c.info.internaldate <= limit
        return lambda c: c.info.internaldate >= limit
    if op in ("BEFORE", "ON", "SINCE"):
        assert isinstance(arg, date)
        if op == "BEFORE":
            return lambda c: _internal_day(c.info) < arg
        if op == "ON":
            return lambda c: _internal_day(c.info) == arg
        return lambda c: _internal_day(c.info) >= arg
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        assert isinstance(arg, date)

        def sent(c: Candidate, op: str = op, arg: date = arg) -> bool:
            d = _sent_date(c.summary)
            if d is None:
                return False
            return d < arg if op == "SENTBEFORE" else d == arg if op == "SENTON" else d >= arg

        return sent
    if op == "SEQ":
        assert isinstance(arg, SeqSet)
        if arg.saved:
            saved_set = set(saved)
            return lambda c: c.info.uid in saved_set
        return lambda c: arg.contains(c.seq, exists)
    if op == "UID":
        assert isinstance(arg, SeqSet)
        if arg.saved:
            saved_set = set(saved)
            return lambda c: c.info.uid in saved_set
        return lambda c: arg.contains(c.info.uid, largest_uid)
    if op == "MODSEQ":
        assert isinstance(arg, int)
        return lambda c: c.info.modseq >= arg
    if op in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        assert isinstance(arg, str)
        needle = _fold(arg)
        attr = {"FROM": "from_", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}[op]

        def field_has(c: Candidate, attr: str = attr) -> bool:
            if c.summary is None:
                return False
            return needle in _fold(getattr(c.summary.search, attr))

        return field_has
    if op == "HEADER":
        assert isinstance(arg, tuple)
        name, value = arg
        needle = _fold(value)

        def header_has(c: Candidate) -> bool:
            values = _header_text(c.data, name) or []
            return any(needle in _fold(v) for v in values)

        return header_has
    if op == "BODY":
        assert isinstance(arg, str)
        needle = _fold(arg)
        return lambda c: needle in _fold(_body_text(c))
    if op == "TEXT":
        assert isinstance(arg, str)
        needle = _fold(arg)
        return lambda c: needle in _fold(_full_text(c))
    raise Bad(f"search key {op} not supported")


def run(candidates: list[Candidate], match: Callable[[Candidate], bool]) -> list[Candidate]:
    return [c for c in candidates if match(c)]


async def run_async(
    candidates: list[Candidate], match: Callable[[Candidate], bool], heavy: bool
) -> list[Candidate]:
    """Match; searches that decode message text run in a worker thread so the loop keeps serving."""
    if heavy:
        return await asyncio.to_thread(run, candidates, match)
    return run(candidates, match)


def now_utc() -> datetime:
    return datetime.now(UTC)
