"""Maildir: an account's folders written as a Maildir++ tree that Dovecot and mutt read unchanged, and such a
tree (Dovecot's, Courier's, ours) read back for ``homemail import``.

Layout (Dovecot's default ``maildir:`` layout, see also https://cr.yp.to/proto/maildir.html):
  DIR/{cur,new,tmp}                 INBOX
  DIR/.Sent/{cur,new,tmp}          a folder; "a/b" becomes ".a.b"; names in IMAP modified UTF-7
  DIR/.Sent/maildirfolder          marks a Maildir++ sub-folder
  DIR/<folder>/dovecot-keywords    keyword letters a..z -> names
  DIR/<folder>/dovecot-uidlist     UIDVALIDITY, next UID and each file's UID, so Dovecot keeps the UIDs
  DIR/subscriptions                subscribed folders, one per line
Messages go to cur/ with their flags in the ``:2,`` suffix, LF line endings, and the file's mtime set to the
internal date (Dovecot's received date for Maildir).

Reading takes the same layout: the files of cur/ and new/ (new/ ones are unread), flags from the info suffix
(D draft, F flagged, P passed, R replied, S seen, T trashed; a-z keywords named by dovecot-keywords), the
internal date from the file's mtime; messages come in the order of dovecot-uidlist when there is one (the
UID order), else in the order of their names (which start with the delivery time).
"""

from __future__ import annotations

import os
import re
import socket
import string
from dataclasses import dataclass
from datetime import UTC, datetime
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
        uidlist = [f"3 V{mailbox.uidvalidity} N{mailbox.uidnext}\n"]
        for i, info in enumerate(messages):
            data = to_lf(await store.read_blob(info.blob_id))
            name = file_name(i, info, keywords, hostname, len(data))
            tmp = folder / "tmp" / name
            tmp.write_bytes(data)
            when = info.internaldate.timestamp()
            os.utime(tmp, (when, when))
            os.rename(tmp, folder / "cur" / name)
            uidlist.append(f"{info.uid} :{name.rpartition(':2,')[0]}\n")
        (folder / "dovecot-uidlist").write_text("".join(uidlist), encoding="utf-8")
        counts[mailbox.name] = len(messages)
    subscribed = await store.list_subscriptions(account.id)
    (root / "subscriptions").write_text("".join(utf7.encode(n) + "\n" for n in subscribed), encoding="utf-8")
    return counts


# --- reading ---------------------------------------------------------------------------------------------------

LETTER_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
_INFO = re.compile(r"[:;!]2,([A-Za-z]*)$")  # ":2," (";" or "!" where ":" is not allowed in file names)


@dataclass(frozen=True, slots=True)
class MaildirFolder:
    name: str  # the mailbox name ("INBOX", "Work/Projects")
    path: Path


@dataclass(frozen=True, slots=True)
class MaildirFile:
    folder: str
    path: Path
    unique: str  # the file name without its info suffix: the same in new/ and cur/, whatever the flags
    flags: frozenset[str]


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() or (path / "new").is_dir()


def folders(root: Path) -> list[MaildirFolder]:
    """INBOX (the root, when it has cur/ or new/) and every ``.Name.Sub`` folder, parents before children."""
    found = [MaildirFolder("INBOX", root)] if is_maildir(root) else []
    subs = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") and entry.is_dir() and is_maildir(Path(entry.path)):
            subs.append(MaildirFolder(folder_from_dir(entry.name), Path(entry.path)))
    return found + sorted(subs, key=lambda f: f.name.split(HIERARCHY_DELIMITER))


def folder_from_dir(dirname: str) -> str:
    """The folder a Maildir++ directory holds: ".Projekte.&ANw-bersicht" is "Projekte/Übersicht"."""
    parts = []
    for part in dirname[1:].split("."):
        # "&AC4-" is a "." inside a name (see folder_dir): modified UTF-7 proper never encodes ASCII.
        pieces = []
        for piece in part.split("&AC4-"):
            try:
                pieces.append(utf7.decode(piece))
            except ValueError:
                pieces.append(piece)
        parts.append(".".join(pieces).replace(HIERARCHY_DELIMITER, "_"))
    parts = [p for p in parts if p]
    if parts and parts[0].upper() == "INBOX" and len(parts) > 1:
        parts[0] = "INBOX"
    return HIERARCHY_DELIMITER.join(parts)


def keyword_names(folder: Path) -> dict[str, str]:
    """dovecot-keywords: "0 Work" names letter a, and so on."""
    names: dict[str, str] = {}
    try:
        text = (folder / "dovecot-keywords").read_text("utf-8", "replace")
    except OSError:
        return names
    for line in text.splitlines():
        index, _, name = line.partition(" ")
        if index.isdigit() and int(index) < len(KEYWORD_LETTERS) and name.strip():
            names[KEYWORD_LETTERS[int(index)]] = name.strip()
    return names


def uid_order(folder: Path) -> dict[str, int]:
    """dovecot-uidlist (Courier's courierimapuiddb likewise): each file's base name -> its UID."""
    order: dict[str, int] = {}
    try:
        text = (folder / "dovecot-uidlist").read_text("utf-8", "replace")
    except OSError:
        return order
    for line in text.splitlines()[1:]:
        uid, _, rest = line.partition(" ")
        base = rest.rpartition(":")[2] if ":" in rest else rest
        if uid.isdigit() and base:
            order[base] = int(uid)
    return order


def files(folder: MaildirFolder) -> list[MaildirFile]:
    """The messages of a folder (cur/ and new/), in UID order where dovecot-uidlist knows them, the others after
    them by name (which starts with the delivery time)."""
    keywords = keyword_names(folder.path)
    found = []
    for sub in ("new", "cur"):
        try:
            names = [n for n in os.listdir(folder.path / sub) if not n.startswith(".")]
        except FileNotFoundError:
            continue
        for name in names:
            m = _INFO.search(name)
            flags: set[str] = set()
            unique = name
            if m:
                unique = name[: m.start()]
                for letter in m.group(1):
                    flag = LETTER_FLAGS.get(letter) or keywords.get(letter)
                    if flag:
                        flags.add(flag)
            found.append(MaildirFile(folder.name, folder.path / sub / name, unique, frozenset(flags)))
    order = uid_order(folder.path)
    found.sort(key=lambda f: (0, order[f.unique], "") if f.unique in order else (1, 0, f.path.name))
    return found


def read_message(path: Path) -> tuple[bytes, datetime]:
    """The file's bytes with CRLF line ends, and its mtime (the internal date)."""
    with open(path, "rb") as f:
        data = f.read()
        mtime = os.fstat(f.fileno()).st_mtime
    if b"\r\n" in data:
        data = data.replace(b"\r\n", b"\n")
    return data.replace(b"\n", b"\r\n"), datetime.fromtimestamp(int(mtime), UTC)


def subscriptions(root: Path) -> list[str]:
    try:
        text = (root / "subscriptions").read_text("utf-8", "replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("V\t") or line == "V":
            continue  # Dovecot's "V\t2" version header
        try:
            out.append(utf7.decode(line))
        except ValueError:
            out.append(line)
    return out
