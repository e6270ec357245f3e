"""mbox files: reading mboxrd/mboxo (and Gmail Takeout's, with its X-Gmail-Labels), writing mboxrd.

The format (https://www.loc.gov/preservation/digital/formats/fdd/fdd000383.shtml, and Qmail's mbox(5)): each
message starts with a "From " line (``From sender date``), its lines end in LF, and it is followed by an empty
line. In mboxrd a body line matching ``>*From `` gets one more ">" (so reading removes one from every such line);
in mboxo only "From " is quoted, which makes ">From " ambiguous: both are read as mboxrd, as Python's mailbox and
most readers do.

Flags live in header fields the mbox readers keep for themselves (mutt, Thunderbird, Dovecot): ``Status:`` (R
read, O old), ``X-Status:`` (A answered, F flagged, T draft, D deleted) and ``X-Keywords:``. They are read into
flags and removed from the message, as Dovecot does; :func:`export_account` writes them back at the top of the
header, so an export read back gives the same bytes and flags.

Gmail Takeout (one file for the whole account) names each message's labels in ``X-Gmail-Labels``: see
:func:`gmail_placement`.

Reading is one pass over an mmap: separators are found with ``bytes.find`` and each message is sliced, unquoted
and given CRLF line ends by C-level byte operations, so the per-message cost in Python is a handful of calls.
"""

from __future__ import annotations

import csv
import email.header
import email.utils
import functools
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from homemail.store import HIERARCHY_DELIMITER, Store

# "From " line: sender, then an asctime date with an optional zone before or after the year (Takeout writes
# "Wed Aug 02 14:34:03 +0000 2023", Unix mailers "Wed Aug  2 14:34:03 2023").
_FROM_DATE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s+(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+(\d{1,2})\s+"
    rb"(\d{1,2}):(\d{2})(?::(\d{2}))?\s+(?:([+-]\d{4})\s+|[A-Z]{1,5}\s+)?(\d{4})(?:\s+([+-]\d{4}))?\s*$"
)
_MONTHS = {m: i + 1 for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())}
# Written with a leading literal (not "^" and MULTILINE), so the regex engine skips ahead with a fast search.
_QUOTED_FROM = re.compile(rb"\n>(>*From )")
_TO_QUOTE = re.compile(rb"\n(>*From )")
_WEEKDAYS = frozenset(b"Mon Tue Wed Thu Fri Sat Sun".split())
_META_FIELD = re.compile(rb"^(Status|X-Status|X-Keywords):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)\r\n", re.I | re.M)
_GMAIL_LABELS = re.compile(rb"^X-Gmail-Labels:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)\r\n", re.I | re.M)
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_X_STATUS = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as found in the file: its "From " line and its bytes (still quoted, LF or CRLF)."""

    number: int  # 1-based position in the file
    offset: int  # of its "From " line
    end: int  # where the next one starts
    from_line: bytes
    data: bytes
    when: datetime | None  # the date of the "From " line


def read_mbox(path: Path) -> Iterator[RawMessage]:
    """The messages of an mbox file, in order. A file that does not start with "From " is one message."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield from _split(mm, size)


def _split(mm: mmap.mmap, size: int) -> Iterator[RawMessage]:
    start = 0
    number = 0
    when: datetime | None = None
    while start < size:
        if mm[start : start + 5] == b"From ":
            eol = mm.find(b"\n", start)
            body = size if eol < 0 else eol + 1
            from_line = mm[start:body].rstrip(b"\r\n")
            if start == 0:
                when = from_line_date(from_line)
        else:
            body, from_line, when = start, b"", None
        # The next separator: a "From " line that carries a date (a stray unquoted "From " in a body of an
        # mboxo file written without quoting does not split the message).
        pos = body
        next_when = None
        while True:
            nxt = mm.find(b"\nFrom ", pos - 1 if pos > 0 else 0)
            if nxt < 0:
                end = size
                break
            eol = mm.find(b"\n", nxt + 1)
            line = mm[nxt + 1 : size if eol < 0 else eol].rstrip(b"\r")
            next_when = from_line_date(line)
            if next_when is not None:
                end = nxt + 1
                break
            pos = nxt + 2
        number += 1
        yield RawMessage(number, start, end, from_line, mm[body:end], when)
        start, when = end, next_when


def unquote(data: bytes) -> bytes:
    """mboxrd: drop the separator's empty line at the end, one ">" from each ">+From " line; CRLF line ends."""
    if b"\r\n" in data:
        data = data.replace(b"\r\n", b"\n")
    if data.endswith(b"\n\n"):
        data = data[:-1]
    if b">From " in data:
        if b"\n>>" in data or data.startswith(b">"):
            data = _QUOTED_FROM.sub(rb"\n\1", data)
            if data.startswith(b">") and data.lstrip(b">").startswith(b"From "):
                data = data[1:]
        else:
            data = data.replace(b"\n>From ", b"\nFrom ")
    return data.replace(b"\n", b"\r\n")


def quote(data: bytes) -> bytes:
    """mboxrd: LF line ends, one more ">" on each ">*From " line, a final LF, and the separating empty line."""
    data = data.replace(b"\r\n", b"\n")
    if b"From " in data:
        if b"\n>" in data or data.startswith((b">", b"From ")):
            data = _TO_QUOTE.sub(rb"\n>\1", data)
            if data.lstrip(b">").startswith(b"From "):
                data = b">" + data
        else:
            data = data.replace(b"\nFrom ", b"\n>From ")
    if not data.endswith(b"\n"):
        data += b"\n"
    return data + b"\n"


def from_line_date(line: bytes) -> datetime | None:
    """The date of a "From " line: ``From sender Www Mmm dd hh:mm:ss [zone] yyyy [zone]``."""
    words = line.split()
    # The common layouts, read word by word; anything else goes to the regular expression.
    if len(words) >= 6 and len(words[-1]) == 4 and words[-1].isdigit():
        if len(words) >= 7 and words[-2][:1] in b"+-":
            weekday, month, day, clock, zone, year = words[-6:]
        else:
            weekday, month, day, clock, year = words[-5:]
            zone = b""
        hms = clock.split(b":")
        if weekday in _WEEKDAYS and month in _MONTHS and day.isdigit() and len(hms) == 3:
            try:
                hh, mi, ss = int(hms[0]), int(hms[1]), int(hms[2])
                return datetime(int(year), _MONTHS[month], int(day), hh, mi, ss, tzinfo=_zone(zone))
            except ValueError:
                pass
    m = _FROM_DATE.search(line)
    if not m:
        return None
    month, day, hour, minute, second, zone1, year, zone2 = m.groups()
    try:
        when = datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second or 0))
    except ValueError:
        return None
    return when.replace(tzinfo=_zone(zone1 or zone2))


@functools.cache
def _zone(zone: bytes | None) -> timezone:
    """A zone such as "+0200"; none (asctime has none) is read as UTC."""
    if not zone or len(zone) != 5 or not zone[1:].isdigit():
        return UTC
    minutes = int(zone[1:3]) * 60 + int(zone[3:5])
    return timezone(timedelta(minutes=-minutes if zone[:1] == b"-" else minutes))


def header_date(data: bytes) -> datetime | None:
    """The Date: field of a message (CRLF), when it parses."""
    head = data[: data.find(b"\r\n\r\n") + 2] if b"\r\n\r\n" in data else data
    m = re.search(rb"^Date:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.I | re.M)
    if not m:
        return None
    try:
        when = email.utils.parsedate_to_datetime(m.group(1).decode("ascii", "replace").strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def looks_like_message(data: bytes) -> str | None:
    """Why ``data`` is not a message, or None. A message has a header: its first line is a header field."""
    if not data or data.isspace():
        return "empty message"
    if not _FIELD_START.match(data):
        return "no header (the first line is not a header field)"
    return None


def take_flags(data: bytes) -> tuple[bytes, frozenset[str]]:
    """Read Status/X-Status/X-Keywords from the header and remove them. ``data`` has CRLF line ends."""
    end = data.find(b"\r\n\r\n")
    head_end = len(data) if end < 0 else end + 2
    head = data[:head_end]
    if not _META_FIELD.search(head):
        return data, frozenset()
    flags: set[str] = set()
    for m in _META_FIELD.finditer(head):
        name = m.group(1).lower()
        value = m.group(2).decode("utf-8", "replace").replace("\r\n", "").strip()
        if name == b"status":
            if "R" in value:
                flags.add("\\Seen")
        elif name == b"x-status":
            flags.update(_X_STATUS[c] for c in value if c in _X_STATUS)
        else:
            flags.update(k for k in re.split(r"[\s,]+", value) if k and not k.startswith("\\"))
    return _META_FIELD.sub(b"", head) + data[head_end:], frozenset(flags)


def meta_fields(flags: frozenset[str]) -> bytes:
    """The Status/X-Status/X-Keywords fields :func:`take_flags` reads back as ``flags``."""
    out = b""
    if "\\Seen" in flags:
        out += b"Status: RO\r\n"
    x_status = "".join(c for c, f in _X_STATUS.items() if f in flags)
    if x_status:
        out += f"X-Status: {x_status}\r\n".encode()
    keywords = sorted(f for f in flags if not f.startswith("\\"))
    if keywords:
        out += ("X-Keywords: " + " ".join(keywords) + "\r\n").encode("utf-8")
    return out


# --- Gmail Takeout -------------------------------------------------------------------------------------------

# Labels that are folders of their own (special-use, so they land in the account's Sent, Junk...).
GMAIL_FOLDERS = {
    "inbox": "INBOX",
    "sent": "\\Sent",
    "drafts": "\\Drafts",
    "spam": "\\Junk",
    "trash": "\\Trash",
    "archived": "\\Archive",
}
# Labels that are state, not places: the flags come from some, the others are dropped.
GMAIL_STATE = {"opened", "unread", "starred", "important"}


def gmail_labels(data: bytes) -> list[str] | None:
    """The labels of a Takeout message (CRLF), or None when it has no X-Gmail-Labels field."""
    end = data.find(b"\r\n\r\n")
    m = _GMAIL_LABELS.search(data, 0, len(data) if end < 0 else end + 2)
    if not m:
        return None
    raw = m.group(1).replace(b"\r\n", b"").decode("utf-8", "replace").strip()
    if "=?" in raw:
        try:
            raw = str(email.header.make_header(email.header.decode_header(raw)))
        except (ValueError, LookupError, UnicodeError):
            pass
    labels = next(csv.reader([raw], skipinitialspace=True), []) if '"' in raw else raw.split(",")
    return [label.strip() for label in labels if label.strip()]


def gmail_placement(labels: list[str]) -> tuple[tuple[str, ...], frozenset[str]]:
    """Folders (names, or special-use attributes such as "\\Sent") and flags for a message with these labels.

    Inbox is INBOX; Sent, Drafts, Spam, Trash and Archived go to the account's folders of that use; "a/b" is
    folder b inside a; a message with several labels is copied into each. Read messages carry no "Unread"
    label (and may carry "Opened"): they get \\Seen; "Starred" is \\Flagged, Drafts also \\Draft. A message
    with no folder label (archived, only in All Mail) goes to the Archive folder.
    """
    folders: list[str] = []
    flags: set[str] = set()
    lower = {label.lower() for label in labels}
    if "unread" not in lower or "opened" in lower:
        flags.add("\\Seen")
    if "starred" in lower:
        flags.add("\\Flagged")
    if "drafts" in lower:
        flags.add("\\Draft")
    for label in labels:
        key = label.lower()
        if key in GMAIL_STATE or key.startswith("category "):
            continue
        folder = GMAIL_FOLDERS.get(key) or folder_name(label)
        if folder and folder not in folders:
            folders.append(folder)
    if not folders:
        folders.append("\\Archive")
    return tuple(folders), frozenset(flags)


@functools.lru_cache(maxsize=4096)
def folder_name(label: str) -> str:
    """A label or path as a mailbox name: "/" separates levels; empty levels and control characters go."""
    if not label.isprintable():
        label = re.sub(r"[\x00-\x1f\x7f]", "", label)
    parts = [p.strip() for p in label.split(HIERARCHY_DELIMITER)]
    parts = [p for p in parts if p]
    if parts and parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return HIERARCHY_DELIMITER.join(parts)


# --- export ------------------------------------------------------------------------------------------------


def mbox_path(root: Path, mailbox: str) -> Path:
    """DIR/INBOX.mbox, DIR/Sent.mbox, DIR/Work/Projects.mbox: the hierarchy as directories."""
    parts = mailbox.split(HIERARCHY_DELIMITER)
    return root.joinpath(*parts[:-1], parts[-1] + ".mbox")


def from_line(sender: str, when: datetime) -> bytes:
    """``From sender Www Mmm dd hh:mm:ss +zzzz yyyy`` (Takeout's layout: the zone keeps the internal date's)."""
    stamp = when.strftime("%a %b %d %H:%M:%S %z %Y")
    return f"From {sender} {stamp}\n".encode()


_RETURN_PATH = re.compile(rb"^Return-Path:[ \t]*<([^>\r\n]*)>", re.I | re.M)


def envelope_sender(data: bytes) -> str:
    end = data.find(b"\r\n\r\n")
    m = _RETURN_PATH.search(data, 0, len(data) if end < 0 else end)
    sender = m.group(1).decode("utf-8", "replace") if m else ""
    sender = re.sub(r"\s", "", sender)
    return sender or "MAILER-DAEMON"


async def export_account(store: Store, address: str, root: Path) -> dict[str, int]:
    """Write each folder of ``address`` as an mboxrd file under ``root``; returns the message count per folder.
    The flags travel in Status/X-Status/X-Keywords fields at the top of each message's header."""
    account = await store.get_account(address)
    if account is None:
        raise LookupError(f"no such user: {address}")
    counts: dict[str, int] = {}
    root.mkdir(parents=True, exist_ok=True)
    for mailbox in await store.list_mailboxes(account.id):
        path = mbox_path(root, mailbox.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        messages = await store.messages(account.id, mailbox.id)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as out:
            for info in messages:
                data = await store.read_blob(info.blob_id)
                out.write(from_line(envelope_sender(data), info.internaldate))
                out.write(quote(meta_fields(info.flags) + data))
        os.replace(tmp, path)
        counts[mailbox.name] = len(messages)
    return counts
