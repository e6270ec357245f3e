"""The rspamd check: Debian's rspamd started here with a throwaway configuration (its normal worker on loopback,
DNS pointed at knot), homemail's [rspamd] pointed at it; verdicts made deterministic with GTUBE (reject) and
multimap rules on the Subject (junk, soft reject, rewrite subject)."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsserver import KnotServer
from harness import ServerProcess, free_port, require_peer
from homemail.mailauth import rspamd
from processes import stop_process

RSPAMD = "/usr/bin/rspamd"
RCPT = "user@local.test"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

MULTIMAP = """
HOMEMAIL_JUNK_TEST { type = "header"; header = "Subject"; regexp = true; map = "%(root)s/junk.map"; score = 10.0; }
HOMEMAIL_SOFT_TEST {
  type = "header"; header = "Subject"; regexp = true; map = "%(root)s/soft.map";
  prefilter = true; action = "soft reject"; message = "Busy, come back later";
}
HOMEMAIL_REWRITE_TEST {
  type = "header"; header = "Subject"; regexp = true; map = "%(root)s/rewrite.map";
  prefilter = true; action = "rewrite subject";
}
"""


class Rspamd:
    """One rspamd with the system's rules, our local.d, its state in a temporary folder."""

    def __init__(self, nameserver: str) -> None:
        require_peer(RSPAMD)
        self.root = Path(tempfile.mkdtemp(prefix="homemail-rspamd-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        local = self.root / "local.d"
        local.mkdir()
        for sub in ("db", "run", "log"):
            (self.root / sub).mkdir()
        (self.root / "tld.dat").write_text("com\norg\nnet\ntest\n")  # a short list: startup in a second
        (self.root / "junk.map").write_text("/JUNKTEST/\n")
        (self.root / "soft.map").write_text("/SOFTTEST/\n")
        (self.root / "rewrite.map").write_text("/REWRITETEST/\n")
        (local / "options.inc").write_text(
            f'url_tld = "{self.root}/tld.dat";\ndns {{ nameserver = ["{nameserver}"]; timeout = 1s; retransmits = 1; }}\n'
        )
        (local / "multimap.conf").write_text(MULTIMAP % {"root": self.root})
        (local / "actions.conf").write_text('subject = "[SPAM] %s";\n')
        (self.root / "rspamd.conf").write_text(
            '.include "$CONFDIR/common.conf"\n'
            "options {\n"
            '  pidfile = "$RUNDIR/rspamd.pid";\n'
            '  .include "$CONFDIR/options.inc"\n'
            '  .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"\n'
            "}\n"
            'logging { type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }\n'
            'worker "normal" {\n'
            f'  bind_socket = "127.0.0.1:{self.port}";\n'
            "  count = 1;\n"
            '  .include "$CONFDIR/worker-normal.inc"\n'
            "}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Rspamd:
        args = [RSPAMD, "-f", "-c", str(self.root / "rspamd.conf"), "-u", "root", "-g", "root"]
        for var, sub in (("LOCAL_CONFDIR", ""), ("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log")):
            args += ["--var", f"{var}={self.root / sub if sub else self.root}"]
        out = (self.root / "stdout").open("wb")
        self.proc = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rspamd exited: {(self.root / 'stdout').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.read().strip() == b"pong":
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("rspamd did not answer within 60 s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    zones = {
        "sender.test": ['@ TXT "v=spf1 ip4:127.0.0.0/8 -all"', "client A 127.0.0.1"],
        "127.in-addr.arpa": ["1.0.0 PTR client.sender.test."],
    }
    with KnotServer(zones) as server:
        yield server


@pytest.fixture(scope="module")
def scanner(knot: KnotServer) -> Iterator[Rspamd]:
    server = Rspamd(knot.nameserver).start()
    try:
        yield server
    finally:
        server.stop()


def mx_with(knot: KnotServer, **rspamd_config: object) -> ServerProcess:
    server = ServerProcess(config={"dns": {"nameservers": [knot.nameserver]}, "rspamd": rspamd_config})
    server.add_user(RCPT)
    return server.start()


@pytest.fixture(scope="module")
def mx(knot: KnotServer, scanner: Rspamd) -> Iterator[ServerProcess]:
    server = mx_with(knot, url=scanner.url, timeout="10s")
    try:
        yield server
    finally:
        server.stop()


def message(subject: str, body: str = "Hello there, a perfectly normal note.", extra: str = "") -> bytes:
    return (
        f"{extra}From: Sender <someone@sender.test>\r\nTo: {RCPT}\r\nSubject: {subject}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@sender.test>\r\n\r\n{body}\r\n"
    ).encode()


def send(mx: ServerProcess, data: bytes) -> tuple[int, str]:
    with smtplib.SMTP(mx.host, mx.port("smtp"), local_hostname="client.sender.test", timeout=60) as client:
        client.ehlo()
        assert client.mail("someone@sender.test")[0] == 250
        assert client.rcpt(RCPT)[0] == 250
        code, reply = client.data(data)
        return code, reply.decode()


def stored(mx: ServerProcess, marker: str) -> list[tuple[str, bytes]]:
    work = Path(tempfile.mkdtemp(prefix="homemail-export-"))
    try:
        mx.cli("export", RCPT, str(work / "m"))
        out = []
        for cur in (work / "m").rglob("cur"):
            folder = "INBOX" if cur.parent == work / "m" else cur.parent.name.lstrip(".")
            out += [(folder, p.read_bytes()) for p in cur.iterdir() if marker.encode() in p.read_bytes()]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def header_of(data: bytes) -> str:
    return data.split(b"\n\n")[0].decode()


def test_clean_message_delivered_with_status(mx: ServerProcess) -> None:
    m = uuid.uuid4().hex
    forged = "X-Spam-Status: No, score=-100\r\nX-Spam: No\r\n"
    code, text = send(mx, message(f"note {m}", extra=forged))
    assert code == 250, text
    ((folder, data),) = stored(mx, m)
    head = header_of(data)
    assert folder == "INBOX"
    assert head.count("X-Spam-Status:") == 1 and "action=no action" in head and "score=-100" not in head
    assert "X-Spam:" not in head


def test_gtube_rejected(mx: ServerProcess) -> None:
    m = uuid.uuid4().hex
    code, text = send(mx, message(f"spam {m}", body=GTUBE))
    assert (code, text[:5]) == (550, "5.7.1"), text
    assert stored(mx, m) == []


def test_add_header_goes_to_junk(mx: ServerProcess) -> None:
    m = uuid.uuid4().hex
    code, text = send(mx, message(f"JUNKTEST {m}"))
    assert code == 250, text
    ((folder, data),) = stored(mx, m)
    head = header_of(data)
    assert folder == "Junk" and "X-Spam: Yes" in head and "action=add header" in head


def test_rewrite_subject(mx: ServerProcess) -> None:
    m = uuid.uuid4().hex
    code, text = send(mx, message(f"REWRITETEST {m}"))
    assert code == 250, text
    ((folder, data),) = stored(mx, m)
    assert folder == "Junk" and f"Subject: [SPAM] REWRITETEST {m}" in header_of(data)


def test_soft_reject_is_temporary(mx: ServerProcess) -> None:
    m = uuid.uuid4().hex
    code, text = send(mx, message(f"SOFTTEST {m}"))
    assert (code, text) == (451, "4.7.1 Busy, come back later")
    assert stored(mx, m) == []


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_scanner_unavailable(knot: KnotServer, silent_port: int) -> None:
    # Default (fail open): delivered, marked unknown. on_error = "tempfail": 451.
    accepting = mx_with(knot, url=f"http://127.0.0.1:{silent_port}", timeout="1s")
    refusing = mx_with(knot, url=f"http://127.0.0.1:{free_port()}", on_error="tempfail")
    try:
        m = uuid.uuid4().hex
        started = time.monotonic()
        code, text = send(accepting, message(f"note {m}"))
        assert code == 250 and time.monotonic() - started < 10, text
        ((folder, data),) = stored(accepting, m)
        assert folder == "INBOX" and "X-Spam-Status: Unknown" in header_of(data)
        assert "rspamd: no verdict" in accepting.log()
        m = uuid.uuid4().hex
        assert send(refusing, message(f"note {m}"))[:2] == (
            451,
            "4.3.0 Content scanner unavailable; try again later",
        )
        assert stored(refusing, m) == []
    finally:
        accepting.stop()
        refusing.stop()


def test_interpret_actions_and_thresholds() -> None:
    def verdict(action: str, score: float, **kw: float) -> str:
        return rspamd.interpret({"action": action, "score": score, "required_score": 15}, **kw).verdict

    assert [verdict(a, 1) for a in rspamd.ACTIONS] == [
        "accept",
        "junk",
        "junk",
        "accept",
        "tempfail",
        "reject",
    ]
    assert verdict("no action", 5.0, junk_score=4.0) == "junk"
    assert verdict("no action", 3.9, junk_score=4.0) == "accept"
    assert verdict("add header", 9.0, reject_score=8.0) == "reject"
    assert verdict("reject", 1.0, junk_score=0.5) == "reject"  # never milder than rspamd
    with pytest.raises(rspamd.RspamdError):
        rspamd.interpret({"action": "explode", "score": 1})
    with pytest.raises(rspamd.RspamdError):
        rspamd.interpret({"action": "reject", "score": "many"})
