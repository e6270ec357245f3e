"""LIST, LSUB and their extensions (RFC 9051 6.3.9, LIST-EXTENDED RFC 5258, SPECIAL-USE RFC 6154, CHILDREN
RFC 3348): which names a pattern matches and what attributes each gets. Pure functions of the account's
mailboxes and subscriptions, so the rules are testable without a connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from homemail.store import HIERARCHY_DELIMITER, Mailbox

SEP = HIERARCHY_DELIMITER


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(SEP)}]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def canonical_pattern(reference: str, pattern: str) -> str:
    """RFC 3501 6.3.8: the reference is prefixed to the pattern; INBOX matches in any case."""
    if pattern.startswith(SEP) and reference.endswith(SEP):
        full = reference + pattern[1:]
    else:
        full = reference + pattern
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in (SEP, "*", "%")):
        full = "INBOX" + full[5:]
    return full


def _order(name: str) -> tuple[bool, str]:
    """LIST order: INBOX and the names below it first, then the rest by name."""
    return (name != "INBOX" and not name.startswith("INBOX" + SEP), name)


def matches(name: str, patterns: list[str]) -> bool:
    return any(_pattern(p).fullmatch(name) for p in patterns)


@dataclass
class Listed:
    name: str
    attributes: list[str] = field(default_factory=list)
    child_info: bool = False  # RFC 5258 CHILDINFO ("SUBSCRIBED")
    mailbox: Mailbox | None = None


@dataclass
class ListOptions:
    subscribed: bool = False  # selection SUBSCRIBED
    recursive: bool = False  # RECURSIVEMATCH
    special_use_only: bool = False  # selection SPECIAL-USE
    return_subscribed: bool = False
    extended: bool = False  # the client used LIST-EXTENDED syntax, or IMAP4rev2 is on


def list_mailboxes(
    mailboxes: list[Mailbox], subscriptions: list[str], patterns: list[str], opts: ListOptions
) -> list[Listed]:
    by_name = {m.name: m for m in mailboxes}
    subscribed = set(subscriptions)
    names: set[str] = set(by_name)
    # Levels that exist only as parents of deeper names (after a DELETE of the parent, for instance).
    parents: set[str] = set()
    for n in list(by_name) + list(subscribed):
        parts = n.split(SEP)
        for i in range(1, len(parts)):
            parents.add(SEP.join(parts[:i]))
    has_children = {p for p in parents if any(n.startswith(p + SEP) for n in by_name)}
    out: list[Listed] = []
    if opts.subscribed:
        candidates = set(subscribed)
        if opts.recursive:
            candidates |= {p for p in parents if any(s.startswith(p + SEP) for s in subscribed)}
    else:
        candidates = names | parents
    for name in sorted(candidates, key=_order):
        if not matches(name, patterns):
            continue
        mb = by_name.get(name)
        item = Listed(name, mailbox=mb)
        attrs = item.attributes
        is_sub = name in subscribed
        child_info = opts.recursive and opts.subscribed and any(s.startswith(name + SEP) for s in subscribed)
        if opts.subscribed and not is_sub and not child_info:
            continue
        if mb is None:
            if opts.extended or opts.subscribed:
                attrs.append("\\NonExistent")
            else:
                attrs.append("\\Noselect")
        if opts.special_use_only and (mb is None or not mb.special_use):
            continue
        # RFC 3348 / RFC 5258 4: the child attributes go out whether asked for or not.
        if name in has_children:
            attrs.append("\\HasChildren")
        elif mb is not None:
            attrs.append("\\HasNoChildren")
        if is_sub and (opts.subscribed or opts.return_subscribed):
            attrs.append("\\Subscribed")
        if mb is not None and mb.special_use:
            attrs.append(mb.special_use)
        item.child_info = child_info
        if mb is None and not child_info and name not in has_children and not is_sub:
            continue
        out.append(item)
    return out


def attributes(mailbox: Mailbox, mailboxes: list[Mailbox]) -> list[str]:
    """The attributes LIST gives one existing mailbox (for the LIST response of SELECT, RFC 9051 6.3.2)."""
    prefix = mailbox.name + SEP
    attrs = ["\\HasChildren" if any(m.name.startswith(prefix) for m in mailboxes) else "\\HasNoChildren"]
    if mailbox.special_use:
        attrs.append(mailbox.special_use)
    return attrs


def lsub(subscriptions: list[str], mailboxes: list[Mailbox], patterns: list[str]) -> list[Listed]:
    """RFC 3501 6.3.9: subscribed names; with ``%`` a level holding subscribed names below is \\Noselect."""
    existing = {m.name for m in mailboxes}
    subscribed = set(subscriptions)
    out: list[Listed] = []
    seen: set[str] = set()
    for name in sorted(subscribed, key=_order):
        if matches(name, patterns):
            attrs = [] if name in existing else ["\\Noselect"]
            out.append(Listed(name, attrs))
            seen.add(name)
    for name in sorted(subscribed):
        if name in seen:
            continue  # listed itself: its superiors are not needed to reach it
        parts = name.split(SEP)
        for i in range(1, len(parts)):
            parent = SEP.join(parts[:i])
            if parent not in seen and parent not in subscribed and matches(parent, patterns):
                seen.add(parent)
                out.append(Listed(parent, ["\\Noselect"]))
    return out
