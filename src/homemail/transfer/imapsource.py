"""A remote IMAP account as an import source: ``imaps://user@host[:port]`` (TLS from the first byte, RFC 8314)
or ``imap://user@host[:port]`` (STARTTLS, which must be offered: the password never travels in the clear).

Every folder LIST shows (RFC 3501 6.3.8) is read with EXAMINE, so nothing changes on the server; \\Noselect
folders and the virtual ones of RFC 6154 (\\All, \\Flagged, \\Important: Gmail's All Mail, Starred...) are left
out, since their messages are in the real folders too. Folders marked \\Sent, \\Drafts, \\Junk, \\Trash or
\\Archive, or named as such folders commonly are ("Sent Items", "Deleted Messages", "Spam"), go to the account's
folder of that use. Flags (keywords too) and INTERNALDATE are kept. A message is named by its folder,
UIDVALIDITY and UID, so a rerun fetches only what it did not import before.

imaplib does the talking, in a worker thread, one call at a time: while one batch is stored the next is fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from homemail import tls, utf7
from homemail.store import HIERARCHY_DELIMITER
from homemail.transfer import mbox
from homemail.transfer.importer import BATCH_BYTES, Item, Source, SourceError

T = TypeVar("T")

_LIST = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<delim>"(?:[^"\\]|\\.)*"|NIL) ?(?P<name>.*)$', re.I)
_UID = re.compile(rb"\bUID (\d+)", re.I)
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)", re.I)
_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"', re.I)
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)", re.I)
SPECIAL_USE = {
    "\\sent": "\\Sent",
    "\\drafts": "\\Drafts",
    "\\junk": "\\Junk",
    "\\trash": "\\Trash",
    "\\archive": "\\Archive",
}
VIRTUAL = {"\\all", "\\flagged", "\\important", "\\noselect", "\\nonexistent"}
COMMON_NAMES = {
    "sent": "\\Sent",
    "sent items": "\\Sent",
    "sent messages": "\\Sent",
    "sent mail": "\\Sent",
    "drafts": "\\Drafts",
    "trash": "\\Trash",
    "deleted items": "\\Trash",
    "deleted messages": "\\Trash",
    "junk": "\\Junk",
    "junk e-mail": "\\Junk",
    "junk email": "\\Junk",
    "spam": "\\Junk",
    "archive": "\\Archive",
    "archives": "\\Archive",
}


@dataclass(frozen=True, slots=True)
class RemoteFolder:
    raw: bytes  # the name as the server spells it (modified UTF-7), for EXAMINE
    name: str  # decoded, with "/" between levels
    target: str  # where its messages go: a folder name or a special-use attribute
    messages: int


@dataclass(frozen=True, slots=True)
class RemoteMessage:
    uid: int
    flags: frozenset[str]
    internaldate: datetime | None
    size: int


class IMAPSource(Source):
    def __init__(
        self, url: str, password: str, insecure: bool = False, cafile: str | None = None, timeout: float = 60
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("imap", "imaps") or not parts.hostname or not parts.username:
            raise ValueError(f"{url}: expected imaps://user@host[:port] or imap://user@host[:port]")
        self.implicit = parts.scheme == "imaps"
        self.host = parts.hostname
        self.port = parts.port or (993 if self.implicit else 143)
        self.user = unquote(parts.username)
        self.password = password
        self.insecure = insecure
        self.cafile = cafile
        self.timeout = timeout
        # The account, however reached (IMAPS or STARTTLS, whichever port): keys name UIDVALIDITY and UID.
        self.name = f"imap:{self.user}@{self.host.lower()}"
        self.conn: imaplib.IMAP4 | None = None
        self.remote: list[RemoteFolder] = []
        self._subscribed: list[str] = []

    # --- the session ---

    async def open(self) -> None:
        await self._call(self._connect)

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(Exception):
                await asyncio.to_thread(conn.logout)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except (imaplib.IMAP4.error, OSError, EOFError) as e:
            raise SourceError(f"{self.host}:{self.port}: {_text(e)}") from None

    def _connect(self) -> None:
        ctx = tls.client_context(verify=not self.insecure, cafile=self.cafile)
        conn: imaplib.IMAP4
        if self.implicit:
            conn = imaplib.IMAP4_SSL(self.host, self.port, ssl_context=ctx, timeout=self.timeout)
        else:
            conn = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
            if "STARTTLS" not in conn.capabilities:
                conn.shutdown()
                raise SourceError(f"{self.host}:{self.port} offers no STARTTLS: use imaps:// (the password is "
                                  "not sent in the clear)")  # fmt: skip
            conn.starttls(ssl_context=ctx)
        try:
            conn.login(self.user, self.password)
        except imaplib.IMAP4.error as e:
            conn.shutdown()
            raise SourceError(f"{self.host}: login as {self.user} failed: {_text(e)}") from None
        self.conn = conn
        self.remote = self._folders(conn)

    def _folders(self, conn: imaplib.IMAP4) -> list[RemoteFolder]:
        typ, data = conn.list('""', '"*"')
        _check(typ, data, "LIST")
        listed: list[tuple[bytes, str, str, set[str]]] = []
        for raw, delim, attrs in _list_entries(data):
            name = _decode(raw)
            levels = name.split(delim) if delim else [name]
            if delim != HIERARCHY_DELIMITER:
                levels = [level.replace(HIERARCHY_DELIMITER, "_") for level in levels]
            listed.append((raw, mbox.folder_name(HIERARCHY_DELIMITER.join(levels)), delim or "", attrs))
        # Courier-style servers put every folder below INBOX ("INBOX.Sent"): take them out.
        others = [n for _, n, _, _ in listed if n != "INBOX"]
        strip = bool(others) and all(n.startswith("INBOX" + HIERARCHY_DELIMITER) for n in others)
        folders = []
        for raw, name, _, attrs in listed:
            if attrs & VIRTUAL or not name:
                continue
            if strip and name != "INBOX":
                name = name[len("INBOX" + HIERARCHY_DELIMITER) :]
            target = next((SPECIAL_USE[a] for a in attrs if a in SPECIAL_USE), None)
            if target is None and HIERARCHY_DELIMITER not in name:
                target = COMMON_NAMES.get(name.lower())
            typ, status = conn.status(_quote(raw), "(MESSAGES)")
            count = 0
            if typ == "OK" and status and isinstance(status[0], bytes):
                m = re.search(rb"MESSAGES (\d+)", status[0])
                count = int(m.group(1)) if m else 0
            folders.append(RemoteFolder(raw, name, target or name, count))
        typ, data = conn.lsub('""', '"*"')
        if typ == "OK":
            by_raw = {f.raw: f.target for f in folders}
            self._subscribed = [by_raw[raw] for raw, _, _ in _list_entries(data) if raw in by_raw]
        return folders

    # --- Source ---

    def total(self) -> int:
        return sum(f.messages for f in self.remote)

    def folders(self) -> list[str]:
        return list(dict.fromkeys(f.target for f in self.remote))

    def subscriptions(self) -> list[str]:
        return self._subscribed

    async def batches(self, known: set[str], size: int) -> AsyncIterator[list[Item]]:
        for folder in self.remote:
            try:
                uidvalidity, messages = await self._call(self._examine, folder)
            except SourceError as e:
                yield [Item("", folder.name, broken=f"cannot read the folder: {e}", units=folder.messages)]
                continue
            skipped: list[Item] = []
            wanted: list[tuple[str, RemoteMessage]] = []
            for m in messages:
                key = f"{uidvalidity}:{m.uid}:{folder.name}"
                if key in known:
                    skipped.append(Item(key, f"{folder.name} UID {m.uid}"))
                else:
                    wanted.append((key, m))
            if skipped:
                yield skipped
            start = 0
            while start < len(wanted):
                end, volume = start, 0
                while end < len(wanted) and end - start < size and (volume < BATCH_BYTES or end == start):
                    volume += wanted[end][1].size
                    end += 1
                chunk = wanted[start:end]
                start = end
                bodies = await self._call(self._bodies, [m.uid for _, m in chunk])
                items = []
                for key, m in chunk:
                    where = f"{folder.name} UID {m.uid}"
                    data = bodies.get(m.uid)
                    problem = "the server sent no body" if data is None else mbox.looks_like_message(data)
                    if problem or data is None:
                        items.append(Item("", where, broken=problem))
                        continue
                    items.append(Item(key, where, (folder.target,), data, m.flags, m.internaldate))
                yield items

    def _examine(self, folder: RemoteFolder) -> tuple[int, list[RemoteMessage]]:
        conn = self.conn
        assert conn is not None
        typ, data = conn.select(_quote(folder.raw), readonly=True)
        _check(typ, data, f"EXAMINE {folder.name}")
        _, validity = conn.response("UIDVALIDITY")
        uidvalidity = int(validity[0]) if validity and validity[0] else 0
        if not data or data[0] in (b"0", None):
            return uidvalidity, []
        typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE)")
        _check(typ, data, f"FETCH in {folder.name}")
        out = []
        for line in data:
            if isinstance(line, tuple):
                line = line[0]
            if not isinstance(line, bytes):
                continue
            uid, flags, date, size = (
                _UID.search(line),
                _FLAGS.search(line),
                _DATE.search(line),
                _SIZE.search(line),
            )
            if not uid:
                continue
            names = flags.group(1).decode("utf-8", "replace").split() if flags else []
            out.append(
                RemoteMessage(
                    int(uid.group(1)),
                    frozenset(f for f in names if f.lower() != "\\recent"),
                    _internaldate(date.group(1).decode("ascii", "replace")) if date else None,
                    int(size.group(1)) if size else 0,
                )
            )
        return uidvalidity, sorted(out, key=lambda m: m.uid)

    def _bodies(self, uids: list[int]) -> dict[int, bytes]:
        conn = self.conn
        assert conn is not None
        typ, data = conn.uid("FETCH", _uid_set(uids), "(UID BODY.PEEK[])")
        _check(typ, data, "FETCH")
        out: dict[int, bytes] = {}
        for i, part in enumerate(data):
            if not isinstance(part, tuple):
                continue
            head, literal = part
            m = _UID.search(head)
            if m is None and i + 1 < len(data) and isinstance(data[i + 1], bytes):
                m = _UID.search(data[i + 1])  # items after the literal come in the next piece
            if m is not None and isinstance(literal, bytes):
                out[int(m.group(1))] = _crlf(literal)
        return out


def _list_entries(data: list[Any]) -> list[tuple[bytes, str | None, set[str]]]:
    """(raw name, delimiter, lower-case attributes) of each LIST/LSUB line imaplib returned."""
    out = []
    for item in data:
        if isinstance(item, tuple):  # the name came as a literal
            line, name = item[0], item[1]
        elif isinstance(item, bytes):
            line, name = item, None
        else:
            continue
        m = _LIST.match(line)
        if not m:
            continue
        attrs = {a.lower() for a in m.group("attrs").decode("ascii", "replace").split()}
        delim_raw = m.group("delim")
        delim = None if delim_raw.upper() == b"NIL" else _unquote(delim_raw).decode("utf-8", "replace")
        if name is None:
            raw = m.group("name").strip()
            name = _unquote(raw) if raw.startswith(b'"') else raw
        out.append((name, delim or None, attrs))
    return out


def _unquote(s: bytes) -> bytes:
    return re.sub(rb"\\(.)", rb"\1", s[1:-1]) if s.startswith(b'"') and s.endswith(b'"') else s


def _quote(raw: bytes) -> str:
    text = raw.decode("utf-8", "surrogateescape")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _decode(raw: bytes) -> str:
    try:
        return utf7.decode(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return raw.decode("utf-8", "replace")


def _internaldate(text: str) -> datetime | None:
    try:
        return datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None


def _uid_set(uids: list[int]) -> str:
    """1,2,3,5 -> "1:3,5"."""
    out = []
    start = prev = uids[0]
    for uid in uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        out.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    out.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(out)


def _crlf(data: bytes) -> bytes:
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _check(typ: str, data: list[Any], what: str) -> None:
    if typ != "OK":
        detail = data[0].decode("utf-8", "replace") if data and isinstance(data[0], bytes) else ""
        raise imaplib.IMAP4.error(f"{what} failed: {detail}")


def _text(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"{e.verify_message} (use --cafile for a private CA, or --insecure)"
    arg = e.args[0] if len(e.args) == 1 else str(e)
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
