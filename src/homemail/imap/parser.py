"""The IMAP command grammar's building blocks (RFC 3501 9, RFC 9051 9): atoms, strings, literals, numbers,
sequence sets, flags and dates, read from one command buffer that holds the lines and their literals in place.

Every method raises :class:`ParseError` (a BAD for the command) on input that does not fit the grammar; none
raises anything else on any input, which the fuzz tests check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from homemail.imap.errors import ParseError

# RFC 9051 9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM = re.compile(rb"[^(){ \x00-\x1f\x7f%*\"\\\]\x80-\xff]+")
_ASTRING_CHARS = re.compile(rb"[^(){ \x00-\x1f\x7f%*\"\\\x80-\xff]+")
# list-mailbox = 1*list-char / string; list-char = ATOM-CHAR / list-wildcards / resp-specials
_LIST_CHARS = re.compile(rb"[^(){ \x00-\x1f\x7f\"\\\x80-\xff]+")
_TAG = re.compile(rb"[^(){ \x00-\x1f\x7f%*\"\\+\x80-\xff]+")
_NUMBER = re.compile(rb"[0-9]+")
_SEQ_SET = re.compile(rb"(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?(?:,(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?)*|\$")
_LITERAL = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\r\n")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
# date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
_DATE_TIME = re.compile(
    rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)

MAX_NUMBER = 0xFFFFFFFF  # RFC 9051 9: number is 32 bits, number64 63 bits
MAX_NUMBER64 = 0x7FFFFFFFFFFFFFFF
STAR = 0  # stands for "*" in a sequence range


@dataclass(frozen=True, slots=True)
class SeqSet:
    """A sequence set as written: ranges with STAR for ``*``; ``saved`` is the RFC 5182 ``$`` reference."""

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    def contains(self, n: int, largest: int) -> bool:
        for lo, hi in self.ranges:
            lo = lo or largest
            hi = hi or largest
            if lo > hi:
                lo, hi = hi, lo
            if lo <= n <= hi:
                return True
        return False


class Parser:
    """A cursor over one command buffer (lines with their literals, CRLF-terminated)."""

    __slots__ = ("data", "pos", "utf8")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.utf8 = True  # RFC 9051 / RFC 6855: quoted strings may carry UTF-8

    # --- low level -------------------------------------------------------------------------------------

    def error(self, what: str) -> ParseError:
        near = self.data[self.pos : self.pos + 20].split(b"\r\n")[0]
        # The bytes as a Python literal without the b: 7-bit, with no CR, LF or NUL, so fit for a response's
        # text whatever the client sent (RFC 9051 9: text = 1*TEXT-CHAR).
        where = f" near {repr(near)[1:]}" if near else " at the end of the line"
        return ParseError(f"syntax error: expected {what}{where}")

    def peek(self, lit: bytes) -> bool:
        end = self.pos + len(lit)
        return self.data[self.pos : end].upper() == lit

    def take(self, lit: bytes) -> bool:
        """Consume ``lit`` (upper-case ASCII, matched case-insensitively) when it comes next."""
        if self.peek(lit):
            self.pos += len(lit)
            return True
        return False

    def expect(self, lit: bytes, what: str | None = None) -> None:
        if not self.take(lit):
            raise self.error(what or repr(lit.decode()))

    def sp(self) -> None:
        if self.data[self.pos : self.pos + 1] != b" ":
            raise self.error("a space")
        self.pos += 1

    def at_end(self) -> bool:
        return self.data[self.pos :] == b"\r\n"

    def end(self) -> None:
        if not self.at_end():
            raise self.error("the end of the command")

    def next_byte(self) -> bytes:
        return self.data[self.pos : self.pos + 1]

    def _match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        m = pattern.match(self.data, self.pos)
        if m is None:
            raise self.error(what)
        self.pos = m.end()
        return m.group(0)

    # --- RFC 9051 9 productions -------------------------------------------------------------------------

    def tag(self) -> bytes:
        return self._match(_TAG, "a tag")

    def atom(self) -> str:
        return self._match(_ATOM, "an atom").decode("ascii")

    def number(self, nz: bool = False, limit: int = MAX_NUMBER) -> int:
        raw = self._match(_NUMBER, "a number")
        if len(raw) > 20:
            raise self.error("a smaller number")
        n = int(raw)
        if n > limit or (nz and n == 0):
            self.pos -= len(raw)
            raise self.error("a number in range" if n else "a non-zero number")
        return n

    def number64(self, nz: bool = False) -> int:
        return self.number(nz, MAX_NUMBER64)

    def quoted(self) -> bytes:
        data = self.data
        if data[self.pos : self.pos + 1] != b'"':
            raise self.error("a quoted string")
        i = self.pos + 1
        out = bytearray()
        while True:
            j = i
            # Fast path: copy runs of ordinary characters.
            while j < len(data) and data[j] not in (0x22, 0x5C, 0x0D, 0x0A):
                j += 1
            out += data[i:j]
            if j >= len(data) or data[j] in (0x0D, 0x0A):
                self.pos = j
                raise self.error("a closing quote")
            if data[j] == 0x22:
                self.pos = j + 1
                break
            # A backslash quotes only '"' and '\' (RFC 9051 9: quoted-specials).
            if j + 1 >= len(data) or data[j + 1] not in (0x22, 0x5C):
                self.pos = j
                raise self.error('\\" or \\\\ after a backslash')
            out.append(data[j + 1])
            i = j + 2
        if not self.utf8 and any(b > 0x7F for b in out):
            raise self.error("7-bit characters")
        if b"\x00" in out:
            raise self.error("no NUL in a quoted string")
        return bytes(out)

    def literal(self, allow8: bool = False) -> bytes:
        m = _LITERAL.match(self.data, self.pos)
        if m is None or (m.group(1) and not allow8):
            raise self.error("a literal")
        n = int(m.group(2))
        start = m.end()
        if start + n > len(self.data):
            raise self.error("the literal's octets")
        self.pos = start + n
        value = self.data[start : start + n]
        # RFC 9051 9: literal = "{" number64 ["+"] "}" CRLF *CHAR8; CHAR8 excludes NUL (literal8 allows it).
        if not m.group(1) and b"\x00" in value:
            raise ParseError("NUL in a literal; use literal8 (~{n}) for binary data")
        return value

    def string(self) -> bytes:
        c = self.next_byte()
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        raise self.error("a string")

    def astring(self) -> bytes:
        c = self.next_byte()
        if c in (b'"', b"{"):
            return self.string()
        return self._match(_ASTRING_CHARS, "an atom or string")

    def nstring(self) -> bytes | None:
        if self.take(b"NIL"):
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        c = self.next_byte()
        if c in (b'"', b"{"):
            return self.string()
        return self._match(_LIST_CHARS, "a mailbox pattern")

    def seq_set(self, allow_saved: bool = True) -> SeqSet:
        raw = self._match(_SEQ_SET, "a sequence set")
        if raw == b"$":
            if not allow_saved:
                raise self.error("a sequence set")
            return SeqSet((), saved=True)
        ranges: list[tuple[int, int]] = []
        for item in raw.split(b","):
            a, _, b = item.partition(b":")
            if len(a) > 10 or len(b) > 10:
                # Over 32 bits for sure; and int() refuses strings of thousands of digits with a ValueError.
                self.pos -= len(raw)
                raise self.error("sequence numbers from 1 to 4294967295")
            lo = STAR if a == b"*" else int(a)
            hi = lo if not b else (STAR if b == b"*" else int(b))
            if (a != b"*" and not 0 < lo <= MAX_NUMBER) or (b and b != b"*" and not 0 < hi <= MAX_NUMBER):
                self.pos -= len(raw)
                raise self.error("sequence numbers from 1 to 4294967295")
            ranges.append((lo, hi))
        return SeqSet(tuple(ranges))

    def flag(self) -> str:
        if self.take(b"\\"):
            if self.take(b"*"):
                return "\\*"
            return "\\" + self.atom()
        return self.atom()

    def flag_list(self, parens_optional: bool = False) -> list[str]:
        """``"(" [flag *(SP flag)] ")"``; for STORE also the bare ``flag *(SP flag)`` form."""
        flags: list[str] = []
        if not self.take(b"("):
            if not parens_optional:
                raise self.error("a flag list")
            flags.append(self.flag())
            while self.next_byte() == b" " and not self.data.startswith(b" (", self.pos):
                self.sp()
                flags.append(self.flag())
            return flags
        if self.take(b")"):
            return flags
        flags.append(self.flag())
        while not self.take(b")"):
            self.sp()
            flags.append(self.flag())
        return flags

    def search_date(self) -> datetime:
        """RFC 9051 9: date = date-text / DQUOTE date-text DQUOTE; a calendar day (midnight, no zone)."""
        quoted = self.take(b'"')
        m = _DATE.match(self.data, self.pos)
        if m is None:
            raise self.error("a date such as 1-Feb-2024")
        month = m.group(2).decode().lower()
        if month not in _MONTHS:
            raise self.error("a month name")
        try:
            value = datetime(int(m.group(3)), _MONTHS.index(month) + 1, int(m.group(1)))
        except ValueError:
            raise self.error("a valid date") from None
        self.pos = m.end()
        if quoted:
            self.expect(b'"', "a closing quote")
        return value

    def date_time(self) -> datetime:
        m = _DATE_TIME.match(self.data, self.pos)
        if m is None:
            raise self.error('a date-time such as "01-Feb-2024 10:00:00 +0100"')
        day, mon, year, hh, mm, ss, sign, zh, zm = (g.decode() for g in m.groups())
        if mon.lower() not in _MONTHS:
            raise self.error("a month name")
        offset = timedelta(hours=int(zh), minutes=int(zm))
        try:
            value = datetime(
                int(year),
                _MONTHS.index(mon.lower()) + 1,
                int(day),
                int(hh),
                int(mm),
                int(ss),
                tzinfo=timezone(-offset if sign == "-" else offset),
            )
        except ValueError:
            raise self.error("a valid date-time") from None
        self.pos = m.end()
        return value
