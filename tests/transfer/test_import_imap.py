"""homemail import from a remote IMAP account: a throwaway Dovecot with folders (hierarchy, non-ASCII names,
special-use ones under other names, a \\All folder), flags, keywords and internal dates, read over IMAPS and over
STARTTLS; a rerun fetches only what is new."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from dovecot_server import DOVECOT, DovecotServer
from transfer_helpers import Home

from harness import require_peer
from homemail.transfer.imapsource import IMAPSource, _list_entries

PASSWORD = "s3cret pass"


def message(n: int, size: int = 0) -> bytes:
    body = f"Body of message {n}.\r\n" + ("x" * 76 + "\r\n") * (size // 78)
    return (
        f"From: Sender <s{n}@example.org>\r\nTo: alice@example.test\r\nSubject: remote {n}\r\n"
        f"Message-ID: <remote{n}@example.org>\r\n\r\n{body}"
    ).encode()


# Dovecot folder (modified UTF-7) -> (our folder, messages as (data, flags, internal date))
def content() -> dict[str, tuple[str | None, list[tuple[bytes, str, datetime]]]]:
    t = datetime(2022, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    inbox = [(message(i), "" if i % 3 else "\\Seen", t + timedelta(hours=i)) for i in range(120)]
    inbox[5] = (message(5, size=300_000), "\\Seen \\Flagged $Label1 Work", t)
    inbox[6] = (message(6), "\\Answered \\Deleted", datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC))
    return {
        "INBOX": ("INBOX", inbox),
        "Sent Messages": ("Sent", [(message(200), "\\Seen", t)]),  # \Sent: our Sent
        "Drafts": ("Drafts", [(message(201), "\\Draft", t)]),
        "Spam": ("Junk", [(message(202), "", t)]),  # \Junk
        "Work/Projects": ("Work/Projects", [(message(203), "\\Seen", t), (message(204), "Work", t)]),
        "&ANw-bersicht": ("Übersicht", [(message(205), "", t)]),
        "Empty": ("Empty", []),
        "All Mail": (None, [(message(206), "", t)]),  # \All: a virtual folder's copies are not imported
    }


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotServer]:
    require_peer(DOVECOT)
    server = DovecotServer({"alice": PASSWORD}).start()
    try:
        c = connect(server)
        for folder, (_, messages) in content().items():
            if folder not in ("INBOX", "Sent Messages", "Drafts", "Spam", "All Mail"):
                assert c.create(f'"{folder}"')[0] == "OK"
            for data, flags, when in messages:
                typ, resp = c.append(f'"{folder}"', f"({flags})", when, data)
                assert typ == "OK", resp
        c.logout()
        yield server
    finally:
        server.stop()


def connect(server: DovecotServer) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(server.cafile))
    c = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=ctx, timeout=30)
    c.login("alice", PASSWORD)
    return c


def remote_state(server: DovecotServer) -> dict[str, list[tuple[bytes, frozenset[str], float]]]:
    """What Dovecot has, under our folder names, read over IMAP (the reference for the import)."""
    c = connect(server)
    out: dict[str, list[tuple[bytes, frozenset[str], float]]] = {}
    try:
        for folder, (ours, _) in content().items():
            if ours is None:
                continue
            c.select(f'"{folder}"', readonly=True)
            _, data = c.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
            items = []
            for part in data:
                if not isinstance(part, tuple):
                    continue
                head = part[0].decode()
                flags = re.search(r"FLAGS \(([^)]*)\)", head)
                date = re.search(r'INTERNALDATE "([^"]+)"', head)
                assert flags and date, head
                when = datetime.strptime(date.group(1), "%d-%b-%Y %H:%M:%S %z").timestamp()
                items.append((part[1], frozenset(flags.group(1).split()) - {"\\Recent"}, when))
            out[ours] = items
    finally:
        c.logout()
    return out


def imported(home: Home, user: str) -> dict[str, list[tuple[bytes, frozenset[str], float]]]:
    state = home.state(user)
    return {name: [(m.data, m.flags, m.when) for m in state[name]] for name in state}


def summary(out: str) -> tuple[int, ...]:
    m = re.search(
        r"imported (\d+) messages \((\d+) copies in (\d+) folders\), (\d+) already there, (\d+) broken", out
    )
    assert m, out
    return tuple(int(x) for x in m.groups())


def test_import_over_imaps_keeps_folders_flags_and_dates(home: Home, dovecot: DovecotServer) -> None:
    user = home.new_account()
    url = f"imaps://alice@127.0.0.1:{dovecot.imaps_port}"
    r = home.cli(
        "import", user, url, "--password-stdin", "--cafile", str(dovecot.cafile), "--batch-size", "50",
        input=PASSWORD + "\n",
    )  # fmt: skip
    assert summary(r.stdout) == (126, 126, 6, 0, 0)
    reference = remote_state(dovecot)
    ours = imported(home, user)
    for folder, messages in reference.items():
        assert ours[folder] == messages, folder
    assert ours["Empty"] == [] and "Work" in ours  # the \Noselect parent exists as a folder here
    assert not any(name in ours for name in ("Sent Messages", "Spam", "All Mail"))
    # The 300 kB message whole, the internal date as Dovecot keeps it (to the second).
    big = next(m for m in ours["INBOX"] if b"Subject: remote 5\r\n" in m[0])
    assert len(big[0]) > 300_000 and big[1] == {"\\Seen", "\\Flagged", "$Label1", "Work"}

    # STARTTLS this time (certificate not checked): the same account on another port, so nothing new.
    plain = f"imap://alice@127.0.0.1:{dovecot.imap_port}"
    r = home.cli("import", user, plain, "--password-stdin", "--insecure", input=PASSWORD + "\n")
    assert summary(r.stdout) == (0, 0, 0, 126, 0)
    assert imported(home, user) == ours


def test_rerun_fetches_only_new_mail(home: Home, dovecot: DovecotServer) -> None:
    user = home.new_account()
    url = f"imaps://alice@127.0.0.1:{dovecot.imaps_port}"
    args = ("import", user, url, "--password-stdin", "--cafile", str(dovecot.cafile))
    first = summary(home.cli(*args, input=PASSWORD + "\n").stdout)
    assert first[0] > 0 and first[3:] == (0, 0)
    c = connect(dovecot)
    try:
        c.append("Work/Projects", "(\\Flagged)", datetime(2024, 1, 1, tzinfo=UTC), message(300))
    finally:
        c.logout()
    again = summary(home.cli(*args, input=PASSWORD + "\n").stdout)
    assert again == (1, 1, 1, first[0], 0)
    assert imported(home, user)["Work/Projects"][-1] == (message(300), frozenset({"\\Flagged"}), 1704067200.0)


def test_login_and_certificate_failures_are_one_line_errors(home: Home, dovecot: DovecotServer) -> None:
    user = home.new_account()
    url = f"imaps://alice@127.0.0.1:{dovecot.imaps_port}"
    r = home.cli(
        "import", user, url, "--password-stdin", "--cafile", str(dovecot.cafile), input="wrong\n", check=False
    )
    assert r.returncode == 1 and "login as alice failed" in r.stderr and "Traceback" not in r.stderr
    r = home.cli("import", user, url, "--password-stdin", input=PASSWORD + "\n", check=False)
    assert r.returncode == 1 and "certificate" in r.stderr and "--cafile" in r.stderr
    r = home.cli("import", user, "imaps://127.0.0.1", "--password-stdin", input="x\n", check=False)
    assert r.returncode == 1 and "imaps://user@host" in r.stderr
    assert home.state(user)["INBOX"] == []


# --- without a server ---------------------------------------------------------------------------------------


def test_no_starttls_no_login(home: Home) -> None:
    """A server that offers no STARTTLS never sees the password: imap:// requires it."""
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"* OK IMAP4rev1 ready\r\n")
            f = conn.makefile("rb")
            while line := f.readline():
                seen.append(line)
                tag = line.split(b" ")[0]
                if b"CAPABILITY" in line.upper():
                    conn.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
                else:
                    conn.sendall(tag + b" OK done\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    user = home.new_account()
    r = home.cli(
        "import", user, f"imap://alice@127.0.0.1:{port}", "--password-stdin", input="secret\n", check=False
    )
    listener.close()
    assert r.returncode == 1 and "offers no STARTTLS" in r.stderr
    assert not any(b"secret" in line or b"LOGIN" in line.upper() for line in seen), seen


def test_fetch_responses_in_any_order() -> None:
    """UID may come before or after the literal (RFC 3501 7.4.2 leaves the order to the server); a message the
    server sent nothing for is missing, not an error."""

    class Conn:
        def uid(self, *args: str) -> tuple[str, list[object]]:
            assert args == ("FETCH", "4:6,9", "(UID BODY.PEEK[])")
            return "OK", [
                (b"1 (UID 4 BODY[] {7}", b"A: b\r\n\r\n"),
                b")",
                (b"2 (BODY[] {9}", b"C: d\n\nx\n"),
                b" UID 5)",
                (b"4 (FLAGS (\\Seen) UID 9 BODY[] {0}", b""),
                b")",
            ]

    source = IMAPSource("imaps://alice@example.org", "pw")
    source.conn = Conn()  # type: ignore[assignment]
    assert source._bodies([4, 5, 6, 9]) == {4: b"A: b\r\n\r\n", 5: b"C: d\r\n\r\nx\r\n", 9: b""}


def test_list_parsing() -> None:
    data = [
        b'(\\HasNoChildren \\Sent) "/" "Sent Messages"',
        b'(\\Noselect \\HasChildren) "." INBOX',
        (b'(\\HasNoChildren) "." {11}', b'INBOX.a "b"'),
        b"(\\HasNoChildren) NIL Flat",
        b'(\\HasNoChildren) "\\\\" "back\\\\slash"',
    ]
    assert _list_entries(data) == [
        (b"Sent Messages", "/", {"\\hasnochildren", "\\sent"}),
        (b"INBOX", ".", {"\\noselect", "\\haschildren"}),
        (b'INBOX.a "b"', ".", {"\\hasnochildren"}),
        (b"Flat", None, {"\\hasnochildren"}),
        (b"back\\slash", "\\", {"\\hasnochildren"}),
    ]
