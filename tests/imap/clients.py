"""Real mail clients as IMAP test peers: mbsync (isync), offlineimap and neomutt, configured against a test server,
and views of both sides of a synchronisation to compare: the server's mailboxes over IMAP and the client's
Maildir on disk."""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from imapclient import IMAPClient

from harness import ServerProcess
from imap.imaputil import PASSWORD

TIMEOUT = 30
# Maildir info letters and the IMAP flags mbsync and offlineimap map them to.
MAILDIR_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
LETTERS = {flag: letter for letter, flag in MAILDIR_FLAGS.items()}


@dataclass(frozen=True)
class Mail:
    """One message as either side holds it: its exact bytes (CRLF lines) and its flags."""

    data: bytes
    flags: frozenset[str]


State = dict[str, dict[int, Mail]]


# --- the server side ---------------------------------------------------------------------------------------------


def connect(server: ServerProcess, user: str) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False, timeout=TIMEOUT)
    c.login(user, PASSWORD)
    return c


def server_state(server: ServerProcess, user: str) -> State:
    """Every mailbox of ``user``: UID -> (BODY[], FLAGS without \\Recent), read without changing anything."""
    state: State = {}
    with connect(server, user) as c:
        for _, _, name in c.list_folders():
            c.select_folder(name, readonly=True)
            uids = c.search("ALL")
            box: dict[int, Mail] = {}
            if uids:
                for uid, item in c.fetch(uids, ["BODY.PEEK[]", "FLAGS"]).items():
                    flags = frozenset(
                        f.decode() if isinstance(f, bytes) else str(f) for f in item[b"FLAGS"]
                    ) - {"\\Recent"}
                    box[uid] = Mail(item[b"BODY[]"], flags)
            state[name] = box
    return state


def deliver_smtp(server: ServerProcess, rcpt: str, data: bytes, sender: str = "bob@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as s:
        refused = s.sendmail(sender, [rcpt], data)
    assert refused == {}


def mailbox_uids(server: ServerProcess, user: str, mailbox: str) -> list[int]:
    with connect(server, user) as c:
        c.select_folder(mailbox, readonly=True)
        return sorted(c.search("ALL"))


# --- the client side: a Maildir tree -------------------------------------------------------------------------------

_UID = re.compile(r",U=(\d+)")


def maildir_files(folder: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") if (folder / sub).is_dir() for p in (folder / sub).iterdir())


def file_flags(path: Path) -> frozenset[str]:
    info = path.name.rpartition(":2,")[2] if ":2," in path.name else ""
    return frozenset(MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS)


def file_uid(path: Path) -> int | None:
    m = _UID.search(path.name.split(":2,")[0])
    return int(m.group(1)) if m else None


def without_header(data: bytes, name: bytes) -> bytes:
    """``data`` without the header field ``name`` (a field a client adds for its own bookkeeping, such as
    mbsync's X-TUID, which it writes into both copies)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    head = re.sub(rb"(?mi)^" + re.escape(name) + rb": [^\r\n]*\r\n", b"", head + b"\r\n")[:-2]
    return head + sep + body


def to_wire(data: bytes, strip_header: bytes | None = None) -> bytes:
    """A Maildir file's bytes as the server holds them: LF lines back to CRLF (less ``strip_header``)."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return without_header(data, strip_header) if strip_header is not None else data


def strip_state(state: State, name: bytes) -> State:
    return {
        box: {uid: Mail(without_header(m.data, name), m.flags) for uid, m in msgs.items()}
        for box, msgs in state.items()
    }


def maildir_state(root: Path, strip_header: bytes | None = None) -> State:
    """Every Maildir folder under ``root`` (named by its path below root, with '/'): UID -> Mail. A file with
    no UID in its name (not synchronised yet) fails the comparison on purpose."""
    state: State = {}
    for cur in sorted(root.rglob("cur")):
        folder = cur.parent
        name = folder.relative_to(root).as_posix()
        box: dict[int, Mail] = {}
        for path in maildir_files(folder):
            uid = file_uid(path)
            assert uid is not None, f"{path} has no UID after synchronising"
            assert uid not in box, f"two files for UID {uid} in {name}"
            box[uid] = Mail(to_wire(path.read_bytes(), strip_header), file_flags(path))
        state[name] = box
    return state


def find_file(folder: Path, uid: int) -> Path:
    for path in maildir_files(folder):
        if file_uid(path) == uid:
            return path
    raise AssertionError(f"no file for UID {uid} in {folder}")


def set_file_flags(path: Path, flags: str) -> Path:
    """Give a Maildir message exactly the info letters ``flags`` (moving it into cur/, as a reader does)."""
    base = path.name.split(":2,")[0]
    target = path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}"
    os.rename(path, target)
    return target


def make_maildir(folder: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


def add_local(folder: Path, name: str, data: bytes, flags: str | None = None) -> Path:
    """A message written by a local program: LF lines, into new/ (no flags) or cur/ (with ``flags``)."""
    make_maildir(folder)
    data = data.replace(b"\r\n", b"\n")
    path = folder / "new" / name if flags is None else folder / "cur" / f"{name}:2,{flags}"
    path.write_bytes(data)
    return path


# --- the clients ---------------------------------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(cwd)},
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{cmd[0]} exited with {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
            f"stderr:\n{result.stderr[-6000:]}"
        )
    return result


class Mbsync:
    """mbsync with one channel between the server account (far) and a Maildir tree (near)."""

    def __init__(
        self,
        server: ServerProcess,
        user: str,
        work: Path,
        tls: str = "STARTTLS",
        auth: str = "PLAIN",
        far_extra: str = "",
        channel_extra: str = "",
    ) -> None:
        self.server, self.user = server, user
        self.work = work
        self.root = work / "mail"
        self.root.mkdir(parents=True, exist_ok=True)
        port = server.port("imaps" if tls == "IMAPS" else "imap")
        cert = server.data_dir / "tls" / "cert.pem"
        self.rc = work / "mbsyncrc"
        self.rc.write_text(
            f"IMAPAccount acc\nHost 127.0.0.1\nPort {port}\nUser {user}\nPass {PASSWORD}\n"
            f"SSLType {tls}\nCertificateFile {cert}\nAuthMechs {auth}\nTimeout 20\n\n"
            f"IMAPStore far\nAccount acc\n{far_extra}\n"
            f"MaildirStore near\nPath {self.root}/\nInbox {self.root}/INBOX\nSubFolders Verbatim\n\n"
            "Channel ch\nFar :far:\nNear :near:\nPatterns *\nCreate Both\nExpunge Both\n"
            f"SyncState {work}/state/\n"
            f"{channel_extra}\n"
        )

    def sync(self, *args: str) -> subprocess.CompletedProcess[str]:
        # mbsync sleeps a second before reading a Maildir folder changed within the current second (so that a
        # change later in that second cannot go unseen); date the folders back to skip that wait.
        past = time.time() - 5
        for d in [self.root, *self.root.rglob("*")]:
            if d.is_dir():
                os.utime(d, (past, past))
        return run(["mbsync", "-c", str(self.rc), *(args or ("-a",))], self.work)

    def state(self) -> State:
        return maildir_state(self.root, strip_header=b"X-TUID")

    def remote(self) -> State:
        """The server's side, less the X-TUID field mbsync puts into the messages it uploads."""
        return strip_state(server_state(self.server, self.user), b"X-TUID")


class OfflineImap:
    """offlineimap (offlineimap3) with a Maildir local repository and the server as the IMAP remote, over
    implicit TLS (IMAPS) with the server's certificate as the trusted CA."""

    def __init__(self, server: ServerProcess, user: str, work: Path) -> None:
        self.work = work
        self.root = work / "mail"
        cert = server.data_dir / "tls" / "cert.pem"
        self.rc = work / "offlineimaprc"
        # imaplib2 matches the certificate against DNS names only, so the host is "localhost" (in the SAN).
        self.rc.write_text(
            f"[general]\naccounts = acc\nmetadata = {work}/meta\nui = basic\n\n"
            "[Account acc]\nlocalrepository = local\nremoterepository = remote\n\n"
            f"[Repository local]\ntype = Maildir\nlocalfolders = {self.root}\nsep = /\n\n"
            f"[Repository remote]\ntype = IMAP\nremotehost = localhost\nremoteport = {server.port('imaps')}\n"
            f"remoteuser = {user}\nremotepass = {PASSWORD}\nssl = yes\nstarttls = no\n"
            f"sslcacertfile = {cert}\nmaxconnections = 1\nholdconnectionsopen = no\n"
        )

    def sync(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = run(["offlineimap", "-c", str(self.rc), "-o", "-u", "basic", *args], self.work)
        # offlineimap reports a failed folder or message in its output and still exits 0.
        output = result.stdout + result.stderr
        assert "ERROR" not in output, output[-6000:]
        return result

    def state(self) -> State:
        return maildir_state(self.root)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\([A-Z0-9]|\x1b[=>]")


def neomutt_imap(
    server: ServerProcess,
    user: str,
    work: Path,
    keys: str,
    mailbox: str = "INBOX",
    readonly: bool = True,
    settings: tuple[str, ...] = ("set header_cache=",),
    log: Path | None = None,
) -> str:
    """Run neomutt on ``imap://user@127.0.0.1:port/mailbox`` (STARTTLS, the server's certificate trusted) under
    a pseudo-terminal, type ``keys`` (push syntax) and return the screen text without terminal escapes.
    ``settings`` are further muttrc lines; with ``log``, neomutt writes its IMAP dialogue there."""
    work.mkdir(parents=True, exist_ok=True)
    account = user.replace("@", "%40")
    base = f"imap://{account}@127.0.0.1:{server.port('imap')}"
    cert = server.data_dir / "tls" / "cert.pem"
    rc = work / "muttrc"
    rc.write_text(
        "\n".join(
            [
                "set wait_key=no",
                "set quit=yes",
                "set move=no",
                "set delete=yes",
                "set confirmappend=no",
                f"set folder={base}/",
                f"set imap_pass={PASSWORD}",
                "set ssl_starttls=yes",
                "set ssl_force_tls=yes",
                f"set certificate_file={work}/certificates",
                f"set ssl_ca_certificates_file={cert}",
                "set record=",
                "set postponed=",
                "set pipe_decode=no",
                "set message_cachedir=",
                "set imap_passive=yes",
                "set sort=mailbox-order",
                "set sleep_time=0",
                "set resolve=yes",
                *settings,
                f'push "{keys}"',
            ]
        )
        + "\n"
    )
    debug = f"-d 5 -l {log} " if log is not None else ""
    cmd = f"neomutt -n {'-R ' if readonly else ''}{debug}-F {rc} -f '{base}/{mailbox}'"
    result = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"],
        capture_output=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TERM": "xterm", "HOME": str(work), "COLUMNS": "100", "LINES": "40"},
    )
    screen = ANSI.sub("\n", result.stdout.decode("utf-8", "replace"))
    assert result.returncode == 0, screen[-3000:]
    return screen
