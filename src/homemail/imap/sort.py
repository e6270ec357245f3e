"""SORT and THREAD=REFERENCES (RFC 5256): the base-subject algorithm, sort keys, and the REFERENCES threading
of messages into trees, rendered as the THREAD response.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cmp_to_key
from typing import Any

from homemail.imap.errors import ParseError
from homemail.imap.parser import Parser
from homemail.message import ParsedMessage
from homemail.message.headers import decode_words
from homemail.store import MessageInfo

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")

# RFC 5256 5: subj-blob = "[" *BLOBCHAR "]" *WSP; subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_BLOB = r"\[[^\[\]]*\][ \t]*"
_REFWD = re.compile(r"(?:" + _BLOB + r")*(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:", re.IGNORECASE)
_LEADING_BLOB = re.compile(_BLOB)
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])\Z", re.IGNORECASE)
_WS = re.compile(r"[ \t\r\n]+")
# RFC 5256 3 compares strings with i;ascii-casemap: only a-z are upper-cased (RFC 4790 9.2).
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def ascii_upper(s: str) -> str:
    return s.translate(_ASCII_UPPER)


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 2.1: the base subject (a-z upper-cased, for i;ascii-casemap) and whether the subject was a
    reply or forward (it had a "Re:", "Fwd:" leader, a "(fwd)" trailer, or a "[fwd: ...]" wrapper)."""
    # (1) decoded to Unicode, whitespace runs made one space.
    s = _WS.sub(" ", decode_words(subject) if "=?" in subject else subject)
    reply = False
    while True:
        # (2) remove trailers: "(fwd)" and whitespace, repeatedly.
        while True:
            m = _TRAILER.search(s)
            if not m:
                break
            if m.group(0) != " " and m.group(0) != "\t":
                reply = True
            s = s[: m.start()]
        # (3)/(4) leaders and blobs, until nothing changes.
        while True:
            before = s
            s = s.lstrip(" \t")
            m = _REFWD.match(s)
            if m:
                s = s[m.end() :]
                reply = True
            m = _LEADING_BLOB.match(s)
            if m and s[m.end() :].strip():
                s = s[m.end() :]
            if s == before:
                break
        # (5) "[fwd:" ... "]" wrapper
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        break
    return ascii_upper(s.strip(" \t")), reply


def parse_criteria(p: Parser) -> list[tuple[str, bool]]:
    """``"(" sort-criterion *(SP sort-criterion) ")"`` with ``[REVERSE SP] sort-key``."""
    p.expect(b"(", "a list of sort criteria")
    out: list[tuple[str, bool]] = []
    while True:
        reverse = p.take(b"REVERSE ")
        key = p.atom().upper()
        if key not in SORT_KEYS:
            raise ParseError(f"unknown sort key {key}")
        out.append((key, reverse))
        if p.take(b")"):
            return out
        p.sp()


@dataclass(slots=True)
class Entry:
    seq: int
    info: MessageInfo
    summary: ParsedMessage | None


def _first_mailbox(addrs: Any) -> str:
    if not addrs:
        return ""
    for a in addrs:
        if a.mailbox is not None and a.host is not None:
            return ascii_upper(str(a.mailbox))
    return ""


def _display(addrs: Any) -> str:
    # RFC 5957: the display name when there is one, else the address.
    if not addrs:
        return ""
    for a in addrs:
        if a.mailbox is not None and a.host is not None:
            name = decode_words(a.name) if a.name else ""
            return ascii_upper(name or f"{a.mailbox}@{a.host}")
    return ""


def sent_time(e: Entry) -> float:
    """RFC 5256 3: the sent date, or the internal date when the Date header is missing or invalid."""
    if e.summary is not None and e.summary.search.date is not None:
        return e.summary.search.date
    return e.info.internaldate.timestamp()


def _key(e: Entry, key: str) -> Any:
    env = e.summary.envelope if e.summary is not None else None
    if key == "ARRIVAL":
        return e.info.internaldate.timestamp()
    if key == "DATE":
        return sent_time(e)
    if key == "SIZE":
        return e.info.size
    if key == "SUBJECT":
        return base_subject(env.subject or "")[0] if env else ""
    if key == "FROM":
        return _first_mailbox(env.from_ if env else None)
    if key == "TO":
        return _first_mailbox(env.to if env else None)
    if key == "CC":
        return _first_mailbox(env.cc if env else None)
    if key == "DISPLAYFROM":
        return _display(env.from_ if env else None)
    if key == "DISPLAYTO":
        return _display(env.to if env else None)
    raise AssertionError(key)


def sort(entries: Sequence[Entry], criteria: list[tuple[str, bool]]) -> list[Entry]:
    """RFC 5256 3: by each criterion in turn, ties broken by sequence number."""
    keyed = [([_key(e, k) for k, _ in criteria], e) for e in entries]

    def cmp(a: tuple[list[Any], Entry], b: tuple[list[Any], Entry]) -> int:
        for (_, reverse), x, y in zip(criteria, a[0], b[0], strict=True):
            if x != y:
                r = -1 if x < y else 1
                return -r if reverse else r
        return a[1].seq - b[1].seq

    return [e for _, e in sorted(keyed, key=cmp_to_key(cmp))]


# --- THREAD=REFERENCES ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Container:
    entry: Entry | None = None
    parent: _Container | None = None
    children: list[_Container] = field(default_factory=list)

    def is_ancestor_of(self, other: _Container) -> bool:
        node: _Container | None = other
        depth = 0
        while node is not None and depth < 100_000:
            if node is self:
                return True
            node = node.parent
            depth += 1
        return False

    def unlink(self) -> None:
        if self.parent is not None:
            self.parent.children.remove(self)
            self.parent = None

    def link(self, parent: _Container) -> None:
        self.unlink()
        self.parent = parent
        parent.children.append(self)


def _container_time(c: _Container) -> tuple[float, int]:
    node = c
    while node.entry is None and node.children:
        node = node.children[0]
    if node.entry is None:
        return (0.0, 0)
    return (sent_time(node.entry), node.entry.seq)


def _sort_tree(nodes: list[_Container]) -> None:
    for n in nodes:
        _sort_tree(n.children)
    nodes.sort(key=_container_time)


def _subject_of(c: _Container) -> tuple[str, bool] | None:
    node = c if c.entry is not None else (c.children[0] if c.children else None)
    if node is None or node.entry is None or node.entry.summary is None:
        return None
    return base_subject(node.entry.summary.envelope.subject or "")


def thread_references(entries: Sequence[Entry]) -> list[_Container]:
    """RFC 5256 4 REFERENCES: the root set of thread trees, sorted."""
    by_id: dict[str, _Container] = {}
    order: list[_Container] = []

    def container(msg_id: str) -> _Container:
        c = by_id.get(msg_id)
        if c is None:
            c = by_id[msg_id] = _Container()
            order.append(c)
        return c

    for e in entries:
        s = e.summary.search if e.summary is not None else None
        msg_id = s.message_id if s is not None else None
        # (1A) a message without a Message-ID, or a duplicate one, gets a unique id of its own.
        if not msg_id or (msg_id in by_id and by_id[msg_id].entry is not None):
            msg_id = f"\x00{e.seq}"
        this = container(msg_id)
        this.entry = e
        refs = list(s.references) if s is not None else []
        if not refs and s is not None and s.in_reply_to:
            refs = [s.in_reply_to]
        # (1B) link the references in order, parent to child, where no loop would result.
        prev: _Container | None = None
        for ref in refs:
            c = container(ref)
            if prev is not None and c.parent is None and c is not prev and not c.is_ancestor_of(prev):
                c.link(prev)
            prev = c
        # (1C) the message's parent is the last reference.
        if prev is not None and (prev is this or this.is_ancestor_of(prev)):
            prev = None
        if prev is None:
            this.unlink()
        elif this.parent is not prev:
            this.link(prev)
    # (2) the root set.
    roots = [c for c in order if c.parent is None]
    # (3) prune dummies.
    roots = _prune(roots, is_root=True)
    # (4) sort the root set by sent date.
    _sort_tree(roots)
    # (5) gather threads with the same base subject.
    table: dict[str, _Container] = {}
    for c in roots:
        subj = _subject_of(c)
        if subj is None or not subj[0]:
            continue
        old = table.get(subj[0])
        if old is None or (c.entry is None and old.entry is not None):
            table[subj[0]] = c
        elif old.entry is not None and c.entry is not None:
            old_subj = _subject_of(old)
            if old_subj is not None and old_subj[1] and not subj[1]:
                table[subj[0]] = c
    merged: list[_Container] = []
    for c in roots:
        subj = _subject_of(c)
        target = table.get(subj[0]) if subj is not None and subj[0] else None
        if target is None or target is c:
            merged.append(c)
            continue
        target_subj = _subject_of(target)
        if target.entry is None and c.entry is None:
            for child in list(c.children):
                child.link(target)
        elif target.entry is None:
            c.parent = None
            c.link(target)
        elif (
            c.entry is not None
            and subj is not None
            and subj[1]
            and target_subj is not None
            and not target_subj[1]
        ):
            c.link(target)
        else:
            dummy = _Container()
            idx = merged.index(target) if target in merged else -1
            target.link(dummy)
            c.link(dummy)
            if idx >= 0:
                merged[idx] = dummy
            else:
                merged.append(dummy)
            table[subj[0] if subj else ""] = dummy
    # (6) sort again: children by date, then the roots.
    _sort_tree(merged)
    return merged


def _prune(nodes: list[_Container], is_root: bool) -> list[_Container]:
    out: list[_Container] = []
    for n in nodes:
        n.children = _prune(n.children, is_root=False)
        for child in n.children:
            child.parent = n
        if n.entry is None:
            if not n.children:
                continue
            if not is_root or len(n.children) == 1:
                # Promote the children to this level (at the root only when there is one).
                for child in n.children:
                    child.parent = n.parent
                out.extend(n.children)
                continue
        out.append(n)
    return out


def _render(c: _Container, uid: bool) -> str:
    if c.entry is None:
        if len(c.children) == 1:
            return _render(c.children[0], uid)
        return "".join("(" + _render(ch, uid) + ")" for ch in c.children)
    s = str(c.entry.info.uid if uid else c.entry.seq)
    if len(c.children) == 1:
        s += " " + _render(c.children[0], uid)
    elif c.children:
        s += " " + "".join("(" + _render(ch, uid) + ")" for ch in c.children)
    return s


def render_threads(roots: list[_Container], uid: bool) -> bytes:
    """RFC 5256 4: thread-list = "(" (thread-members / thread-nested) ")"."""
    return "".join("(" + _render(r, uid) + ")" for r in roots).encode()
