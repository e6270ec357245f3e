"""Fuzzing the command grammar (RFC 9051 9): every production of :class:`homemail.imap.parser.Parser`, and the
FETCH, SEARCH and SORT argument parsers built on it, either parse or raise the typed errors (ParseError, or the
IMAPError a command answers with) on any input; valid input round-trips. Then a socket-level run: a couple of
hundred random and mutated command lines to a live server, each answered (tagged when it has a tag), and the
server still answers NOOP afterwards, with no internal error.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness import ServerProcess
from homemail.imap import encode, fetch, search, sort
from homemail.imap.errors import IMAPError, ParseError
from homemail.imap.parser import MAX_NUMBER, STAR, Parser
from homemail.message.imap import string as encode_string
from imap.imaputil import message
from imap.rawclient import Raw, well_formed

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- building blocks -------------------------------------------------------------------------------------------

ATOM_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\]')
atoms = st.text(alphabet=ATOM_CHARS, min_size=1, max_size=12)
# Anything a quoted string can carry: no CR, LF or NUL; 8-bit allowed (RFC 9051: UTF-8 in quoted strings).
quotable = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))
numbers = st.integers(min_value=1, max_value=MAX_NUMBER)


def quote(b: bytes) -> bytes:
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(b: bytes, plus: bool = False, eight: bool = False) -> bytes:
    return (b"~" if eight else b"") + b"{%d%s}\r\n" % (len(b), b"+" if plus else b"") + b


@st.composite
def strings(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(wire form, value): quoted, or a literal in one of its forms."""
    value = draw(quotable)
    form = draw(st.sampled_from(["quoted", "literal", "literal+"]))
    if form == "quoted":
        return quote(value), value
    return literal(value, plus=form == "literal+"), value


@st.composite
def seq_sets(draw: st.DrawFn) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    ranges = draw(
        st.lists(
            st.tuples(st.one_of(numbers, st.just(STAR)), st.one_of(st.none(), numbers, st.just(STAR))),
            min_size=1,
            max_size=5,
        )
    )
    parts = []
    out = []
    for lo, hi in ranges:
        a = b"*" if lo == STAR else b"%d" % lo
        if hi is None:
            parts.append(a)
            out.append((lo, lo))
        else:
            parts.append(a + b":" + (b"*" if hi == STAR else b"%d" % hi))
            out.append((lo, hi))
    return b",".join(parts), tuple(out)


def args() -> st.SearchStrategy[bytes]:
    """Any argument of the grammar's shapes, nested in parentheses too."""
    leaf = st.one_of(
        atoms.map(str.encode),
        strings().map(lambda t: t[0]),
        seq_sets().map(lambda t: t[0]),
        st.sampled_from([b"NIL", b"\\Seen", b"\\*", b"$", b"()", b"BODY[HEADER.FIELDS (SUBJECT)]<0.10>"]),
        st.just(b'"01-Jan-2024 10:00:00 +0100"'),
        numbers.map(lambda n: b"%d" % n),
        st.binary(min_size=1, max_size=6).map(lambda b: literal(b, eight=True)),
    )
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4).map(lambda xs: b"(" + b" ".join(xs) + b")"),
        max_leaves=8,
    )


COMMANDS = [
    "CAPABILITY", "NOOP", "LOGIN", "AUTHENTICATE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
    "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE", "ID", "ENABLE", "CHECK", "CLOSE", "UNSELECT",
    "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID FETCH", "UID SEARCH", "UID STORE", "UID COPY",
    "UID MOVE", "UID EXPUNGE", "SORT", "THREAD", "UID SORT", "IDLE",
]  # fmt: skip


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    tag = draw(st.text(alphabet=ATOM_CHARS.replace("+", ""), min_size=1, max_size=6)).encode()
    name = draw(st.sampled_from(COMMANDS)).encode()
    parts = draw(st.lists(args(), max_size=5))
    return b" ".join([tag, name, *parts]) + b"\r\n"


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate"]))
        i = draw(st.integers(0, len(data)))
        if op == "insert":
            data[i:i] = draw(st.sampled_from([b"(", b")", b'"', b"\\", b"{", b"}", b"{5}\r\n", b" ", b"\r\n", b"\x00",
                                              b"\xff", b"\xc3\xa9", b"*", b"%", b"]", b"[", b"~", b"+", b"0",
                                              b"99999999999999999999999", b":", b","]))  # fmt: skip
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 3))]
        elif op == "replace" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "duplicate" and data:
            j = draw(st.integers(i, len(data)))
            data[i:i] = data[i:j]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


# --- the command driver ---------------------------------------------------------------------------------------------


def generic_argument(p: Parser, depth: int = 0) -> Any:
    """One argument, read with the production its first byte calls for (the way the handlers do)."""
    c = p.next_byte()
    if c == b"(":
        if depth > 20:
            raise p.error("less nesting")
        p.pos += 1
        items: list[Any] = []
        while not p.take(b")"):
            if items:
                p.sp()
            items.append(generic_argument(p, depth + 1))
        return items
    if c in (b'"', b"{"):
        return p.string()
    if c == b"~":
        return p.literal(allow8=True)
    if c.isdigit() or c in (b"*", b"$"):
        return p.seq_set()
    if c == b"\\":
        return p.flag()
    if p.peek(b"BODY[") or p.peek(b"BINARY"):
        return fetch.parse_items(p)
    return p.list_mailbox()


def parse_command(data: bytes) -> list[Any]:
    p = Parser(data)
    out: list[Any] = [p.tag()]
    p.sp()
    name = p.atom().upper()
    out.append(name)
    if name == "UID":
        p.sp()
        name = p.atom().upper()
    rest = p.pos
    # The commands with their own argument grammar, as the handlers read them.
    if name in ("FETCH", "STORE", "COPY", "MOVE") and p.take(b" "):
        out.append(p.seq_set())
        p.sp()
        if name == "FETCH":
            out.append(fetch.parse_items(p))
        elif name == "STORE":
            out.append(p.atom())
            p.sp()
            out.append(p.flag_list(parens_optional=True))
        else:
            out.append(p.astring())
        p.end()
        return out
    if name == "SEARCH" and p.take(b" "):
        out.append(search.parse_query(p))
        p.end()
        return out
    if name == "SORT" and p.take(b" "):
        out.append(sort.parse_criteria(p))
        p.sp()
        out.append(p.astring())
        p.sp()
        out.append(search.parse_query(p, allow_charset=False))
        p.end()
        return out
    if name == "APPEND" and p.take(b" "):
        out.append(p.astring())
        p.sp()
        if p.next_byte() == b"(":
            out.append(p.flag_list())
            p.sp()
        if p.next_byte() == b'"':
            out.append(p.date_time())
            p.sp()
        out.append(p.literal(allow8=True))
        p.end()
        return out
    p.pos = rest
    while not p.at_end():
        p.sp()
        out.append(generic_argument(p))
    p.end()
    return out


def parses_or_typed_error(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except IMAPError:
        pass  # ParseError (BAD) or the NO a parser may raise (SEARCH CHARSET)


# --- properties ----------------------------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(command_lines(), mutated(command_lines()), st.binary(max_size=200)))
@example(b"a FETCH 1:99999999999999999999999999999 FLAGS\r\n")
@example(b"a SEARCH " + b"(" * 200 + b"ALL" + b")" * 200 + b"\r\n")
@example(b"a SEARCH " + b"NOT " * 200 + b"ALL\r\n")
@example(b"a LOGIN ~{3}\r\n\x00\x01\x02 x\r\n")
@example(b"a APPEND INBOX {99999999999999999999}\r\n")
def test_command_lines_parse_or_raise_typed_errors(data: bytes) -> None:
    parses_or_typed_error(lambda: parse_command(data))


PRODUCTIONS: list[Callable[[Parser], Any]] = [
    Parser.tag,
    Parser.atom,
    Parser.astring,
    Parser.string,
    Parser.nstring,
    Parser.quoted,
    Parser.list_mailbox,
    Parser.seq_set,
    lambda p: p.seq_set(allow_saved=False),
    Parser.flag,
    Parser.flag_list,
    lambda p: p.flag_list(parens_optional=True),
    Parser.search_date,
    Parser.date_time,
    Parser.number,
    lambda p: p.number(nz=True),
    Parser.number64,
    lambda p: p.literal(allow8=True),
    Parser.literal,
    Parser.sp,
    Parser.end,
    fetch.parse_items,
    fetch.parse_item,
    search.parse_query,
    search.parse_key,
    sort.parse_criteria,
    generic_argument,
]


@FUZZ
@given(
    st.one_of(command_lines(), mutated(command_lines()), st.binary(max_size=120)),
    st.lists(st.integers(0, len(PRODUCTIONS) - 1), min_size=1, max_size=12),
    st.integers(0, 200),
)
def test_every_production_on_any_input(data: bytes, order: list[int], start: int) -> None:
    p = Parser(data, min(start, len(data)))
    for i in order:
        before = p.pos
        try:
            PRODUCTIONS[i](p)
        except ParseError:
            pass
        except IMAPError as e:
            assert PRODUCTIONS[i] is search.parse_query, e  # only SEARCH's CHARSET answers NO
        assert 0 <= p.pos <= len(data), (i, before, p.pos)


@FUZZ
@given(strings())
def test_strings_round_trip(pair: tuple[bytes, bytes]) -> None:
    wire, value = pair
    p = Parser(wire + b"\r\n")
    assert p.astring() == value
    p.end()
    # What the server itself writes as a string reads back the same.
    p = Parser(encode_string(value) + b"\r\n")
    assert p.string() == value
    p.end()


@FUZZ
@given(atoms)
def test_atoms_round_trip(value: str) -> None:
    p = Parser(value.encode() + b" x\r\n")
    assert p.astring() == value.encode()
    p.sp()


@FUZZ
@given(seq_sets())
def test_sequence_sets_round_trip(pair: tuple[bytes, tuple[tuple[int, int], ...]]) -> None:
    wire, ranges = pair
    p = Parser(wire + b"\r\n")
    assert p.seq_set().ranges == ranges
    p.end()


def test_bad_sequence_sets() -> None:
    # Over 32 bits is a syntax error, not an exception of another kind (int() refuses thousands of digits).
    for bad in (b"0", b"4294967296", b"1:0", b"9" * 5000, b"1:" + b"9" * 5000, b"1,", b":1", b"1::2"):
        p = Parser(bad + b"\r\n")
        try:
            p.seq_set()
            p.end()
        except ParseError:
            continue
        raise AssertionError(f"{bad[:20]!r} was accepted")


@FUZZ
@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 30)),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_date_times_round_trip(value: datetime, offset: int) -> None:
    value = value.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=offset)))
    p = Parser(encode.internaldate(value) + b"\r\n")
    parsed = p.date_time()
    assert parsed == value and parsed.utcoffset() == value.utcoffset()
    p.end()


@FUZZ
@given(st.integers(0, 2**64))
def test_numbers_in_range(n: int) -> None:
    for parse, limit in ((Parser.number, MAX_NUMBER), (Parser.number64, 2**63 - 1)):
        p = Parser(b"%d\r\n" % n)
        if n <= limit:
            assert parse(p) == n
        else:
            try:
                parse(p)
            except ParseError:
                continue
            raise AssertionError(n)


def test_literal_rules() -> None:
    # RFC 9051 9: a literal's CHAR8 excludes NUL; literal8 (~{n}) allows it.
    assert Parser(b"~{3}\r\na\x00b\r\n").literal(allow8=True) == b"a\x00b"
    for data, allow8 in ((b"{3}\r\na\x00b\r\n", True), (b"~{3}\r\nabc\r\n", False), (b"{5}\r\nabc", False)):
        try:
            Parser(data).literal(allow8)
        except ParseError:
            continue
        raise AssertionError(data)
    assert Parser(b"{0}\r\n\r\n").string() == b""
    assert Parser(b"{3+}\r\nabc\r\n").string() == b"abc"


def test_quoted_rules() -> None:
    assert Parser(b'"a\\"b\\\\c"').quoted() == b'a"b\\c'
    assert Parser('"héllo"'.encode()).quoted() == "héllo".encode()
    # RFC 9051 9: only '"' and '\' may follow a backslash; CR and LF end the line, not the string.
    for bad in (b'"a\\nb"', b'"abc', b'"a\r\nb"', b'"a\x00b"', b'"a\\'):
        try:
            Parser(bad).quoted()
        except ParseError:
            continue
        raise AssertionError(bad)


def test_nesting_is_bounded() -> None:
    for data in (b"(" * 5000 + b"ALL" + b")" * 5000, b"NOT " * 5000 + b"ALL", b"OR ALL " * 5000 + b"ALL"):
        parses_or_typed_error(lambda d=data: search.parse_query(Parser(d + b"\r\n")))  # type: ignore[misc]


# --- a live server -------------------------------------------------------------------------------------------------

_TAG = re.compile(rb"[^(){ \x00-\x1f\x7f%*\"\\+\x80-\xff]+")
LIVE_COMMANDS = [c for c in COMMANDS if c not in ("AUTHENTICATE", "IDLE")]


def _pick(rng: random.Random, *options: bytes) -> bytes:
    return rng.choice(options)


def _seq(rng: random.Random) -> bytes:
    return _pick(
        rng, b"1", b"1:*", b"*", b"2:3", b"1,3", b"$", b"3:1", b"0", b"99", b"4294967295", b"1:4294967296"
    )


def _mailbox(rng: random.Random) -> bytes:
    return _pick(
        rng, b"INBOX", b"inbox", b"Junk", b"Fuzz", b"Fuzz/Sub", b'"Fuzz &AOk-"', '"Fuzz é"'.encode(), b'"a\\b"',
        b'""', b"{4+}\r\nFuzz", b"/", b"Fuzz/", b'"&Jjo"', b"%", b"*", b'"\xff"',
    )  # fmt: skip


def _search_keys(rng: random.Random, depth: int = 0) -> bytes:
    keys = []
    for _ in range(rng.randint(1, 3)):
        key = _pick(
            rng, b"ALL", b"SEEN", b"UNSEEN", b"NEW", b"OLD", b"RECENT", b"DELETED", b"FLAGGED", b"DRAFT",
            b"FROM bob", b"SUBJECT fuzz", b'BODY "Hello"', b"TEXT world", b"HEADER Message-ID example",
            b"KEYWORD $Junk", b"LARGER 10", b"SMALLER 100000", b"BEFORE 1-Jan-2030", b'SINCE "1-Jan-2000"',
            b"SENTON 01-Jan-2024", b"UID 1:*", b"MODSEQ 1", b"YOUNGER 100", b"OLDER 1", b"1:2", b"$",
            '"é"'.encode(), b"SUBJECT {3+}\r\n\xc3\xa9x",
        )  # fmt: skip
        if depth < 2 and rng.random() < 0.2:
            key = b"(" + _search_keys(rng, depth + 1) + b")"
        if depth < 2 and rng.random() < 0.15:
            key = b"NOT " + key
        if depth < 2 and rng.random() < 0.15:
            key = b"OR " + key + b" " + _search_keys(rng, depth + 1).split(b" ")[0]
        keys.append(key)
    return b" ".join(keys)


FETCH_ITEMS = (
    b"FLAGS", b"UID", b"ENVELOPE", b"BODYSTRUCTURE", b"BODY", b"INTERNALDATE", b"RFC822.SIZE", b"RFC822.HEADER",
    b"BODY.PEEK[]", b"BODY[TEXT]", b"BODY.PEEK[HEADER.FIELDS (Subject From)]", b"BODY[HEADER.FIELDS.NOT (To)]<0.10>",
    b"BODY[1]", b"BODY[1.MIME]", b"BINARY.PEEK[1]", b"BINARY.SIZE[1]", b"BODY[2.1.HEADER]", b"MODSEQ", b"BODY[]<5.5>",
    b"RFC822", b"BINARY[]<0.3>", b"EMAILID",
)  # fmt: skip


def _fetch_items(rng: random.Random) -> bytes:
    items = [rng.choice(FETCH_ITEMS) for _ in range(rng.randint(1, 4))]
    if len(items) == 1 and rng.random() < 0.5:
        return items[0]
    return b"(" + b" ".join(items) + b")"


def _args(rng: random.Random, name: str) -> bytes:
    """Arguments that mostly fit the command's grammar."""
    if name in ("FETCH", "UID FETCH"):
        mod = _pick(rng, b"", b"", b" (CHANGEDSINCE 1)", b" (CHANGEDSINCE 1 VANISHED)", b" (CHANGEDSINCE 0)")
        return _seq(rng) + b" " + _fetch_items(rng) + mod
    if name in ("STORE", "UID STORE"):
        op = _pick(rng, b"FLAGS", b"+FLAGS", b"-FLAGS", b"+FLAGS.SILENT", b"FLAGS.SILENT")
        mod = _pick(rng, b"", b"", b"(UNCHANGEDSINCE 1) ", b"(UNCHANGEDSINCE 0) ")
        flags = _pick(rng, b"(\\Seen)", b"(\\Deleted $Junk)", b"()", b"\\Flagged", b"($Label1 \\Draft)",
                      b"(\\Recent)", b"(\\Bogus)")  # fmt: skip
        return _seq(rng) + b" " + mod + op + b" " + flags
    if name in ("SEARCH", "UID SEARCH"):
        ret = _pick(
            rng, b"", b"", b"RETURN () ", b"RETURN (MIN MAX) ", b"RETURN (SAVE) ", b"RETURN (COUNT ALL) "
        )
        charset = _pick(rng, b"", b"", b"CHARSET UTF-8 ", b"CHARSET KOI8-R ")
        return ret + charset + _search_keys(rng)
    if name in ("SORT", "UID SORT"):
        crit = _pick(rng, b"(ARRIVAL)", b"(REVERSE DATE SUBJECT)", b"(FROM TO CC SIZE)", b"(DISPLAYFROM)")
        return crit + b" " + _pick(rng, b"UTF-8", b"US-ASCII", b"X-BOGUS") + b" " + _search_keys(rng)
    if name in ("THREAD", "UID THREAD"):
        return _pick(rng, b"REFERENCES", b"ORDEREDSUBJECT") + b" UTF-8 " + _search_keys(rng)
    if name in ("COPY", "MOVE", "UID COPY", "UID MOVE"):
        return _seq(rng) + b" " + _mailbox(rng)
    if name in ("SELECT", "EXAMINE"):
        return _mailbox(rng) + _pick(
            rng, b"", b"", b" (CONDSTORE)", b" (QRESYNC (1 1 1:*))", b" (QRESYNC (1 1))"
        )
    if name == "STATUS":
        return _mailbox(rng) + b" " + _pick(rng, b"(MESSAGES)", b"(UIDNEXT UIDVALIDITY UNSEEN SIZE)",
                                           b"(HIGHESTMODSEQ RECENT DELETED)", b"()")  # fmt: skip
    if name in ("LIST", "LSUB"):
        opts = _pick(rng, b"", b"", b"(SUBSCRIBED) ", b"(SPECIAL-USE RECURSIVEMATCH) ")
        ret = _pick(
            rng, b"", b"", b" RETURN (CHILDREN)", b" RETURN (STATUS (MESSAGES))", b" RETURN (SPECIAL-USE)"
        )
        return (
            opts
            + _pick(rng, b'""', b"Fuzz", b'"Fuzz/"')
            + b" "
            + _pick(rng, b"*", b"%", b"Fuzz*", b"(INBOX Junk)")
            + ret
        )
    if name == "APPEND":
        data = message(subject="fuzz append")
        flags = _pick(rng, b"", b" (\\Seen)", b" ()", b" ($Junk \\Flagged)")
        date = _pick(rng, b"", b' "01-Jan-2024 10:00:00 +0100"', b' "31-Feb-2024 10:00:00 +0000"')
        lit = _pick(rng, b"{%d}" % len(data), b"{%d+}" % len(data), b"~{%d+}" % len(data))
        return _mailbox(rng) + flags + date + b" " + lit + b"\r\n" + data
    if name in ("CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE"):
        return _mailbox(rng)
    if name == "RENAME":
        return _mailbox(rng) + b" " + _mailbox(rng)
    if name == "UID EXPUNGE":
        return _seq(rng)
    if name == "ENABLE":
        return _pick(rng, b"CONDSTORE", b"QRESYNC", b"IMAP4rev2", b"UTF8=ACCEPT", b"X-UNKNOWN")
    if name == "ID":
        return _pick(rng, b"NIL", b'("name" "fuzz")', b'("a" NIL "b" "c")', b"()")
    if name == "LOGIN":
        return b"someone password"
    return b""


def _random_line(rng: random.Random, n: int) -> bytes:
    if rng.random() < 0.1:
        # raw noise, 8-bit included (never ending in "}": that would announce a literal)
        noise = bytes(
            rng.choice([*range(0x20, 0x7F), *range(0x80, 0x100)]) for _ in range(rng.randint(0, 60))
        )
        return noise.rstrip(b"}")
    name = rng.choice(LIVE_COMMANDS)
    args = _args(rng, name)
    line = b"f%d " % n + name.encode() + (b" " + args if args else b"")
    # Mutations stop before the first literal, so its announced size stays true.
    cut = line.find(b"{") if b"\r\n" in line else len(line)
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        # a mutation: a byte replaced, removed or doubled (CR and LF excepted)
        i = rng.randrange(cut)
        op = rng.random()
        if op < 0.5:
            line = line[:i] + bytes([rng.randrange(0x20, 0x100)]) + line[i + 1 :]
        elif op < 0.8:
            line = line[:i] + line[i + 1 :]
            cut -= 1
        else:
            line = line[:i] + line[i : i + 1] + line[i:]
            cut += 1
        if cut <= 0:
            break
    return line


def _exchange(c: Raw, line: bytes) -> list[bytes]:
    """Send one command (its synchronising literals after the continuation requests); return the responses up to
    its answer: tagged with its tag, or an untagged BAD when it has none."""
    m = _TAG.match(line)
    tag = m.group(0) if m else None
    pieces = re.split(rb"(\{\d+\}\r\n)", line)
    c.send(pieces[0])
    got: list[bytes] = []
    i = 1
    while i < len(pieces):
        c.send(pieces[i])
        while True:
            resp = c.response()
            got.append(resp)
            assert well_formed(resp), (line, resp)
            if resp.startswith(b"+"):
                break
            if (tag and resp.startswith(tag + b" ")) or (resp.startswith(b"* BAD ") and not tag):
                return got  # the command was refused before its literal
        c.send(pieces[i + 1])
        i += 2
    c.send(b"\r\n")
    while True:
        resp = c.response()
        got.append(resp)
        assert well_formed(resp), (line, resp)
        assert not resp.startswith(b"* BYE"), (line, got)
        if resp.startswith(b"+"):
            # A literal announced by the noise: send its octets and end the command.
            size = re.search(rb"\{(\d+)\}$", line)
            assert size, (line, got)
            c.send(b"x" * int(size.group(1)) + b"\r\n")
            continue
        if (tag and resp.startswith(tag + b" ")) or (resp.startswith(b"* BAD ") and not tag):
            # RFC 9051 9: the status text is 7-bit (before IMAP4rev2) and one line, whatever the command held.
            assert re.fullmatch(rb"[\x20-\x7e]*\r\n", resp), (line, resp)
            return got


def test_random_commands_to_a_live_server(server: ServerProcess, user: str) -> None:
    rng = random.Random(20240101)
    c = Raw(server.port("imap"))
    c.login(user)
    for i in range(3):
        data = message(subject=f"fuzz {i}")
        c.ok(b"APPEND INBOX {%d+}\r\n" % len(data) + data)
    c.ok("SELECT INBOX")
    log_before = len(server.log())
    answered = 0
    for n in range(200):
        line = _random_line(rng, n)
        got = _exchange(c, line)
        assert not any(b"[SERVERBUG]" in r for r in got), (line, got)
        answered += 1
        if n % 10 == 9:
            # A good command now and then keeps the count of bad ones low; it must always work.
            untagged, tagged = c.cmd("NOOP")
            assert tagged.endswith(b" OK NOOP completed\r\n"), (tagged, untagged)
            c.ok("SELECT INBOX")
    assert answered == 200
    untagged, tagged = c.cmd("NOOP")
    assert tagged.endswith(b" OK NOOP completed\r\n")
    assert "Traceback" not in server.log()[log_before:], server.log()[log_before:][-3000:]
