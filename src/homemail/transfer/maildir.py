"""Maildir export: an account's folders as a Maildir++ tree that Dovecot and mutt read unchanged.

Layout (Dovecot's default ``maildir:`` layout, see also https://cr.yp.to/proto/maildir.html):
  DIR/{cur,new,tmp}                 INBOX
  DIR/.Sent/{cur,new,tmp}          a folder; "a/b" becomes ".a.b"; names in IMAP modified UTF-7
  DIR/.Sent/maildirfolder          marks a Maildir++ sub-folder
  DIR/<folder>/dovecot-keywords    keyword letters a..z -> names
  DIR/subscriptions                subscribed folders, one per line
Messages go to cur/ with their flags in the ``:2,`` suffix, LF line endings, and the file's mtime set to the
internal date (Dovecot's received date for Maildir).
"""

from __future__ import annotations

import os
import socket
import string
from pathlib import Path

from homemail import utf7
from homemail.store import HIERARCHY_DELIMITER, Mailbox, MessageInfo, Store

# Maildir info flags, which must appear in ASCII order in the file name.
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
KEYWORD_LETTERS = string.ascii_lowercase


def folder_dir(root: Path, mailbox: str) -> Path:
    if mailbox == "INBOX":
        return root
    parts = [utf7.encode(p).replace(".", "&AC4-") for p in mailbox.split(HIERARCHY_DELIMITER)]
    return root / ("." + ".".join(parts))


def file_name(index: int, info: MessageInfo, keywords: list[str], hostname: str, file_size: int) -> str:
    """Dovecot's naming: S= is the size of the file, W= the size with CRLF line endings (RFC822.SIZE)."""
    letters = sorted(
        [FLAG_LETTERS[f] for f in info.flags if f in FLAG_LETTERS]
        + [KEYWORD_LETTERS[keywords.index(k)] for k in info.flags if k in keywords[:26]]
    )
    when = int(info.internaldate.timestamp())
    return f"{when}.M{info.uid}P{os.getpid()}Q{index}.{hostname},S={file_size},W={info.size}:2,{''.join(letters)}"


def to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


async def export_account(store: Store, address: str, root: Path) -> dict[str, int]:
    """Write every folder of ``address`` under ``root``; returns the message count per folder."""
    account = await store.get_account(address)
    if account is None:
        raise LookupError(f"no such user: {address}")
    hostname = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    counts: dict[str, int] = {}
    mailboxes: list[Mailbox] = await store.list_mailboxes(account.id)
    for mailbox in mailboxes:
        folder = folder_dir(root, mailbox.name)
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        if mailbox.name != "INBOX":
            (folder / "maildirfolder").touch()
        keywords = await store.mailbox_keywords(account.id, mailbox.id)
        if keywords:
            (folder / "dovecot-keywords").write_text(
                "".join(f"{i} {k}\n" for i, k in enumerate(keywords[:26])), encoding="utf-8"
            )
        messages = await store.messages(account.id, mailbox.id)
        for i, info in enumerate(messages):
            data = to_lf(await store.read_blob(info.blob_id))
            name = file_name(i, info, keywords, hostname, len(data))
            tmp = folder / "tmp" / name
            tmp.write_bytes(data)
            when = info.internaldate.timestamp()
            os.utime(tmp, (when, when))
            os.rename(tmp, folder / "cur" / name)
        counts[mailbox.name] = len(messages)
    subscribed = await store.list_subscriptions(account.id)
    (root / "subscriptions").write_text("".join(utf7.encode(n) + "\n" for n in subscribed), encoding="utf-8")
    return counts
