"""The selected mailbox as one session sees it: its own UID <-> sequence-number map, the flags and MODSEQ it has
announced, the \\Recent messages it holds, and the bringing up to date of that view from :meth:`Store.changes`.

A session's view changes only when the session announces the change (EXISTS, EXPUNGE/VANISHED, FETCH), so the
sequence numbers the client holds stay valid between responses (RFC 9051 7.5.1). Expunges seen while they may
not be announced (during FETCH, STORE and SEARCH, RFC 9051 7.5.1) wait in :attr:`Selected.gone`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from homemail.imap import encode
from homemail.imap.errors import Bad
from homemail.imap.parser import STAR, SeqSet
from homemail.store import Mailbox, MessageInfo, Store


@dataclass
class Updates:
    """Untagged responses a sync produced, already encoded, in the order they must go out."""

    lines: list[bytes] = field(default_factory=list)


@dataclass
class Selected:
    mailbox: Mailbox
    readonly: bool
    uids: list[int]
    info: dict[int, MessageInfo]
    modseq: int  # the store's changes are known up to here
    recent: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)  # expunged in the store, not yet announced
    saved: list[int] = field(default_factory=list)  # RFC 5182 search result, as UIDs
    dirty: bool = False

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq(self, uid: int) -> int:
        """The sequence number of a UID in the view (0 when absent)."""
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def resolve(self, seqs: SeqSet, uid: bool) -> list[int]:
        """The UIDs a sequence set names, ascending. RFC 9051 6.4.8: a UID set names the UIDs that exist; a
        message sequence number beyond the mailbox is an error."""
        if seqs.saved:
            return [u for u in self.saved if u in self.info]
        uids = self.uids
        if not uids:
            if uid:
                return []
            raise Bad("no messages in the mailbox; message sequence numbers are not valid")
        out: set[int] = set()
        if uid:
            largest = uids[-1]
            for lo, hi in seqs.ranges:
                lo = lo or largest
                hi = hi or largest
                if lo > hi:
                    lo, hi = hi, lo
                out.update(uids[bisect.bisect_left(uids, lo) : bisect.bisect_right(uids, hi)])
        else:
            n = len(uids)
            for lo, hi in seqs.ranges:
                lo = lo or n
                hi = hi or n
                if lo > hi:
                    lo, hi = hi, lo
                if hi > n:
                    raise Bad(f"message sequence number {hi} is past the last message ({n})")
                out.update(uids[lo - 1 : hi])
        return sorted(out)

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Drop UIDs from the view; returns their sequence numbers, highest first (the order EXPUNGE goes)."""
        drop = {u for u in uids if u in self.info}
        if not drop:
            return []
        seqs = [i + 1 for i, u in enumerate(self.uids) if u in drop]
        self.uids = [u for u in self.uids if u not in drop]
        for u in drop:
            del self.info[u]
            self.recent.discard(u)
            self.gone.discard(u)
        return sorted(seqs, reverse=True)

    def expunge_lines(self, uids: Iterable[int], qresync: bool) -> list[bytes]:
        """Announce removals: EXPUNGE per message, or one VANISHED under QRESYNC (RFC 7162 3.2.10)."""
        uid_list = sorted(u for u in set(uids) if u in self.info)
        seqs = self.remove(uid_list)
        if not seqs:
            return []
        if qresync:
            return [b"* VANISHED " + encode.seq_set(uid_list) + b"\r\n"]
        return [b"* %d EXPUNGE\r\n" % s for s in seqs]

    def add(self, messages: Sequence[MessageInfo]) -> None:
        for m in messages:
            self.info[m.uid] = m
        self.uids.extend(m.uid for m in messages)
        if self.uids and any(a >= b for a, b in zip(self.uids, self.uids[1:], strict=False)):
            self.uids = sorted(set(self.uids))


async def open_view(
    store: Store, account_id: int, mailbox: Mailbox, readonly: bool, claim_recent: bool
) -> Selected:
    """Read the mailbox into a new view. ``mailbox`` was read just before: every change after its
    HIGHESTMODSEQ comes again from :meth:`Store.changes` and is recognised there as known."""
    recent_from = 0
    if claim_recent:
        recent_from = await store.claim_recent(account_id, mailbox.id)
    messages = await store.messages(account_id, mailbox.id)
    view = Selected(
        mailbox, readonly, [m.uid for m in messages], {m.uid: m for m in messages}, mailbox.highestmodseq
    )
    if claim_recent:
        view.recent = {u for u in view.uids if u >= recent_from}
    return view


def parse_uids(seqs: SeqSet, largest: int) -> list[tuple[int, int]]:
    """Ranges of a UID set with ``*`` made concrete, low to high (for sets that name UIDs not in the view)."""
    out = []
    for lo, hi in seqs.ranges:
        lo = largest if lo == STAR else lo
        hi = largest if hi == STAR else hi
        out.append((min(lo, hi), max(lo, hi)))
    return out
