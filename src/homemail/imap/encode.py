"""Response encoding shared by the commands: flag lists, compact UID sets, INTERNALDATE, mailbox names.

Strings go through :mod:`homemail.message.imap` (quoted when they can be, literals otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from homemail import utf7
from homemail.message.imap import astring, string

_NOT_QUOTABLE_UTF8 = re.compile(rb"[\x00-\x1f\x7f]")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
_SYSTEM_ORDER = {"\\Answered": 0, "\\Flagged": 1, "\\Deleted": 2, "\\Seen": 3, "\\Draft": 4, "\\Recent": 5}


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Label1)``: system flags first in RFC order, keywords after, sorted (stable output)."""
    ordered = sorted(flags, key=lambda f: (_SYSTEM_ORDER.get(f, 9), f))
    return b"(" + " ".join(ordered).encode("utf-8", "replace") + b")"


def seq_set(numbers: Iterable[int]) -> bytes:
    """``1:3,7,9:10`` from any iterable of numbers (sorted, duplicates dropped); b"" when empty."""
    out: list[bytes] = []
    start = prev = -2
    for n in sorted(set(numbers)):
        if n == prev + 1:
            prev = n
            continue
        if start >= 0:
            out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = n
    if start >= 0:
        out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(out)


def seq_list(numbers: Iterable[int]) -> bytes:
    """A comma-separated list keeping the given order (COPYUID pairs source and destination in order)."""
    return b",".join(b"%d" % n for n in numbers)


def internaldate(value: datetime) -> bytes:
    """RFC 9051 9: date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE.

    date-day-fixed allows (SP DIGIT) or 2DIGIT; the day is zero-padded ("05-Jan-2024"), the form of the RFC
    examples and of other servers, which no client misreads.
    """
    off = value.utcoffset()
    minutes = int(off.total_seconds() // 60) if off is not None else 0
    sign = b"+" if minutes >= 0 else b"-"
    minutes = abs(minutes)
    return b'"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
        value.day,
        _MONTHS[value.month - 1],
        value.year,
        value.hour,
        value.minute,
        value.second,
        sign,
        minutes // 60,
        minutes % 60,
    )


def mailbox_name(name: str, utf8: bool) -> bytes:
    """A mailbox name for a response: modified UTF-7 (RFC 3501 5.1.3), or UTF-8 once IMAP4rev2 is on."""
    if utf8:
        raw = name.encode("utf-8")
        if not raw.isascii() and not _NOT_QUOTABLE_UTF8.search(raw) and len(raw) <= 1024:
            # RFC 9051 9: QUOTED-CHAR includes UTF8-2 / UTF8-3 / UTF8-4, so a UTF-8 name goes out quoted.
            return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return astring(raw)
    return astring(utf7.encode(name).encode("ascii"))


def quoted_text(text: str) -> bytes:
    return string(text)
