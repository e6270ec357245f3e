"""SMTP ingest speed: homemail against a throwaway Postfix, both fed by Postfix's smtp-source. Prints messages/s.

Usage: .venv/bin/python bench/smtp_ingest.py [--quick] [--count N] [--parallel 1,10,50] [--sizes 4096,102400]
                                             [--reuse] [--repeat R] [--only homemail|postfix] [--checks]
                                             [--src DIR] [--keep]

Runs as root (Postfix's master must). Both servers use the same disk (temporary folders under /tmp) and keep
their default durability: homemail fsyncs the message file (and the folder of its name, unless made in advance)
and the SQLite WAL before its 250; Postfix's cleanup fsyncs the queue file before its 250 and virtual(8) fsyncs
each Maildir file.

Like for like: both look up the client's reverse DNS name; homemail's SPF and DKIM/ARC/DMARC checks are off
unless --checks, since this Postfix does neither. Otherwise homemail runs with its defaults (the loopback client
is exempt from the rate limits and the greeting pause by default).

Figures, per message size and number of smtp-source connections open at once (-s):
- "250s": messages/s from smtp-source's start until it exits, i.e. until every message was acknowledged. For
  homemail a 250 means stored in the mailbox, so this is also its delivery rate.
- "delivered" (Postfix only): messages/s until every message is a file in the Maildir. Postfix delivers after
  its 250, from its queue.
- ratio: homemail's rate over Postfix's, against both Postfix figures.
- homemail's peak RSS during the run (VmHWM, reset before each run) and CPU time per message.

--src DIR runs homemail from another source folder (e.g. ``git worktree add /tmp/before HEAD~3``, then
--src /tmp/before/src), to compare two versions under the same conditions.

By default every message gets its own connection (connect, EHLO/HELO, MAIL, RCPT, DATA, QUIT), as MX traffic
mostly does; --reuse sends each stream's messages over one connection (smtp-source -d).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from postfix_instance import POSTFIX, PostfixInstance  # noqa: E402  (the tests' throwaway Postfix)
from processes import HomemailServer, free_port, wait_port  # noqa: E402  (the tests' process helpers)

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
DOMAIN = "example.test"
USER = f"bench@{DOMAIN}"
SENDER = "sender@source.test"
HOMEMAIL_HOST = "127.0.0.1"
POSTFIX_HOST = "127.0.0.2"

# Messages per run, by (size, parallel connections): about 5-15 s per run for each server on a 2-core machine.
COUNTS = {
    (4096, 1): 600,
    (4096, 10): 3000,
    (4096, 50): 3000,
    (102400, 1): 400,
    (102400, 10): 1500,
    (102400, 50): 1500,
}


def count_files(*dirs: Path) -> int:
    n = 0
    for d in dirs:
        try:
            with os.scandir(d) as it:
                n += sum(1 for e in it if e.is_file())
        except FileNotFoundError:
            pass
    return n


class Homemail(HomemailServer):
    """A homemail server process with default settings (fsync on), one local domain and one user."""

    def __init__(self, root: Path, src: Path | None = None, checks: bool = False) -> None:
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
        super().__init__(root, env)
        self.port = free_port(HOMEMAIL_HOST)
        # Only what a benchmark on one address needs: 50 parallel connections come from one client IP.
        self.config_path.write_text(
            f'hostname = "mx.bench.test"\n'
            f'data_dir = "{self.data_dir}"\n'
            f"\n[listen]\n"
            f'smtp = "{HOMEMAIL_HOST}:{self.port}"\n'
            f"\n[smtp]\n"
            f"max_connections_per_ip = 200\n"
            f"\n[spf]\n"
            f"enabled = {'true' if checks else 'false'}\n"
            f"\n[dmarc]\n"
            f"enabled = {'true' if checks else 'false'}\n"
        )

    def setup(self) -> None:
        self.cli("domain", "add", DOMAIN)
        self.cli("user", "add", USER, "--password-stdin", input="bench-password\n")

    def start(self, timeout: float = 120) -> None:
        super().start(timeout)
        wait_port(HOMEMAIL_HOST, self.port)

    def delivered(self) -> int:
        blobs = self.data_dir / "blobs"
        return count_files(*(blobs / d for d in os.listdir(blobs))) if blobs.exists() else 0

    def reset_peak_rss(self) -> None:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM
        except OSError:
            pass

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


# The smtpd listener; after the internal services, local and virtual(8), which delivers into the Maildir.
LISTENER = "{host}:{port} inet n - n - - smtpd\n"
DELIVERY_SERVICES = """\
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
"""


class Postfix(PostfixInstance):
    """A throwaway Postfix instance (tests/postfix_instance.py) delivering into a Maildir with virtual(8) as the
    "nobody" uid. Listens only on POSTFIX_HOST:port."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        root.mkdir(mode=0o755)
        self.port = free_port(POSTFIX_HOST)
        self.mail = root / "mail"
        self.maildir = self.mail / DOMAIN / "bench"

    def setup(self) -> None:
        nobody = pwd.getpwnam("nobody")
        self.make_folders(self.mail)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        (self.etc / "vmailbox").write_text(f"{USER} {DOMAIN}/bench/\n")
        self.write_config(
            "postfix.bench.test",
            [
                "mynetworks = 127.0.0.0/8",
                f"virtual_mailbox_domains = {DOMAIN}",
                f"virtual_mailbox_base = {self.mail}",
                f"virtual_mailbox_maps = texthash:{self.etc / 'vmailbox'}",
                f"virtual_uid_maps = static:{nobody.pw_uid}",
                f"virtual_gid_maps = static:{nobody.pw_gid}",
            ],
            LISTENER.format(host=POSTFIX_HOST, port=self.port),
            DELIVERY_SERVICES,
        )

    def version(self) -> str:
        out = subprocess.run(
            [POSTCONF, "-c", str(self.etc), "-h", "mail_version"], capture_output=True, text=True
        )
        return out.stdout.strip()

    def start(self) -> None:
        self.start_postfix()
        wait_port(POSTFIX_HOST, self.port)

    def stop(self) -> None:
        self.stop_postfix()

    def delivered(self) -> int:
        return count_files(self.maildir / "new")

    def clear_maildir(self) -> None:
        new = self.maildir / "new"
        if new.exists():
            for e in os.scandir(new):
                os.unlink(e.path)

    def wait_delivered(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.delivered() < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def smtp_source(host: str, port: int, parallel: int, count: int, size: int, reuse: bool) -> float:
    """Send ``count`` messages of ``size`` payload bytes, ``parallel`` at a time; seconds taken."""
    argv = [SMTP_SOURCE, "-s", str(parallel), "-m", str(count), "-l", str(size)]
    argv += ["-M", "client.bench.test", "-f", SENDER, "-t", USER]
    if reuse:
        argv.append("-d")
    argv.append(f"{host}:{port}")
    t0 = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"smtp-source against {host}:{port} failed: {result.stderr.strip()[-1000:]}")
    return elapsed


def run_homemail(hm: Homemail, parallel: int, count: int, size: int, reuse: bool) -> dict[str, float]:
    smtp_source(HOMEMAIL_HOST, hm.port, parallel, parallel, size, reuse)  # warm-up
    before = hm.delivered()
    hm.reset_peak_rss()
    cpu0 = hm.cpu_seconds()
    elapsed = smtp_source(HOMEMAIL_HOST, hm.port, parallel, count, size, reuse)
    cpu = hm.cpu_seconds() - cpu0
    stored = hm.delivered() - before
    if stored != count:
        raise RuntimeError(f"homemail acknowledged {count} messages but {stored} files are in blobs/")
    return {"rate": count / elapsed, "rss": hm.peak_rss_mib(), "cpu_ms": cpu / count * 1000}


def run_postfix(pf: Postfix, parallel: int, count: int, size: int, reuse: bool) -> dict[str, float]:
    smtp_source(POSTFIX_HOST, pf.port, parallel, parallel, size, reuse)  # warm-up: processes forked
    if not pf.wait_delivered(parallel, 60):
        raise RuntimeError("postfix did not deliver the warm-up messages")
    pf.clear_maildir()
    t0 = time.perf_counter()
    elapsed = smtp_source(POSTFIX_HOST, pf.port, parallel, count, size, reuse)
    if not pf.wait_delivered(count, 600):
        raise RuntimeError(f"postfix delivered only {pf.delivered()} of {count} messages into the Maildir")
    delivered = time.perf_counter() - t0
    n = pf.delivered()
    pf.clear_maildir()
    if n != count:
        raise RuntimeError(f"postfix delivered {n} messages, {count} sent")
    return {"rate": count / elapsed, "delivered": count / delivered}


def size_name(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a quarter of the messages")
    ap.add_argument("--count", type=int, help="messages per run (instead of the built-in counts)")
    ap.add_argument("--parallel", default="1,10,50", help="connections at once, comma separated")
    ap.add_argument("--sizes", default="4096,102400", help="message payload sizes in bytes, comma separated")
    ap.add_argument("--reuse", action="store_true", help="each stream's messages over one connection")
    ap.add_argument("--repeat", type=int, default=1, help="runs per figure; the best is printed")
    ap.add_argument("--only", choices=("homemail", "postfix"), help="measure one server only")
    ap.add_argument(
        "--checks", action="store_true", help="homemail's SPF and DKIM/ARC/DMARC checks on (its default)"
    )
    ap.add_argument("--src", type=Path, help="run homemail from this source folder (holding homemail/)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders (logs, data)")
    args = ap.parse_args()
    parallel_list = [int(s) for s in args.parallel.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    if os.geteuid() != 0 and args.only != "homemail":
        sys.exit("smtp_ingest: Postfix needs root; run as root or with --only homemail")
    for tool in (SMTP_SOURCE, POSTFIX):
        if not Path(tool).exists():
            sys.exit(f"smtp_ingest: {tool} not found (Debian package postfix)")

    def count_for(size: int, parallel: int) -> int:
        if args.count:
            return args.count
        n = COUNTS.get((size, parallel)) or max(200, 60 * parallel) * (2 if size <= 16384 else 1)
        return max(parallel * 2, n // 4) if args.quick else n

    root = Path(tempfile.mkdtemp(prefix="smtp-ingest-", dir="/tmp"))
    os.chmod(root, 0o755)  # Postfix's daemons (user postfix) reach their queue below it
    hm = Homemail(root / "homemail", args.src, args.checks) if args.only != "postfix" else None
    pf = Postfix(root / "postfix") if args.only != "homemail" else None
    try:
        if hm is not None:
            hm.setup()
            hm.start()
        if pf is not None:
            pf.setup()
            pf.start()
        print(
            f"smtp-source -> homemail {HOMEMAIL_HOST}:{hm.port if hm else '-'} (fsync on, SPF and DMARC "
            f"{'on' if args.checks else 'off'}{', from ' + str(args.src) if args.src else ''}) and Postfix "
            f"{pf.version() if pf else '-'} {POSTFIX_HOST}:{pf.port if pf else '-'}; {os.cpu_count()} CPUs; "
            f"{'one connection per stream' if args.reuse else 'one connection per message'}; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            "msg/s: '250s' = until every message was acknowledged; 'delivered' = until all are in the Maildir"
        )
        head = (
            f"{'size':>7} {'par':>4} {'msgs':>5} | {'homemail':>8} {'RSS MiB':>7} {'CPU ms':>6} |"
            f" {'Postfix 250s':>12} {'delivered':>9} | {'hm/pf 250s':>10} {'hm/pf deliv':>11}"
        )
        print(head)
        print("-" * len(head))
        for size in sizes:
            for parallel in parallel_list:
                count = count_for(size, parallel)
                h: dict[str, float] = {}
                p: dict[str, float] = {}
                for _ in range(args.repeat):
                    if hm is not None:
                        r = run_homemail(hm, parallel, count, size, args.reuse)
                        if r["rate"] > h.get("rate", 0):
                            h = r
                    if pf is not None:
                        r = run_postfix(pf, parallel, count, size, args.reuse)
                        if r["rate"] > p.get("rate", 0):
                            p = r
                line = f"{size_name(size):>7} {parallel:>4} {count:>5} |"
                line += (
                    f" {h['rate']:>8.0f} {h['rss']:>7.0f} {h['cpu_ms']:>6.2f} |"
                    if h
                    else f" {'-':>8} {'':>14} |"
                )
                line += f" {p['rate']:>12.0f} {p['delivered']:>9.0f} |" if p else f" {'-':>12} {'-':>9} |"
                if h and p:
                    line += f" {h['rate'] / p['rate']:>10.2f} {h['rate'] / p['delivered']:>11.2f}"
                print(line, flush=True)
        print(
            f"load average at the end {os.getloadavg()[0]:.1f} (other work on this machine skews the figures)"
        )
    finally:
        if pf is not None:
            pf.stop()
        if hm is not None:
            hm.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
