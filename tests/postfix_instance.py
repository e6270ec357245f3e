"""A throwaway Postfix instance: its own configuration, queue and data folders below one folder, its log in
``maillog`` there. What it listens on and does with mail is its user's part (the relay of the delivery tests,
bench/smtp_ingest.py's Maildir server); the start, the stop and the settings every such instance shares are
here.

Runs as root: Postfix's master must; Postfix drops to its ``postfix`` user. No pytest here: the benchmarks import
this module too.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

# master.cf's internal services (the listeners, and services a use adds, come in front of and after these).
SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """Postfix run from ``root``: etc/ (main.cf, master.cf), queue/, data/ and the log file maillog.

    inet_interfaces is "all" because Postfix refuses an address no interface has (127.0.0.2 is reachable on
    Linux's lo but not configured on it); the listeners are the lines master.cf starts with."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc"
        self.queue = root / "queue"
        self.data = root / "data"
        self.started = False

    @property
    def log_path(self) -> Path:
        return self.root / "maillog"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def make_folders(self, *more: Path) -> None:
        """etc/, queue/, data/ (Postfix's own) and ``more``, below a root Postfix's processes can reach."""
        postfix = pwd.getpwnam("postfix")
        os.chmod(self.root, 0o755)
        for d in (self.etc, self.queue, self.data, *more):
            d.mkdir(mode=0o755)
        os.chown(self.data, postfix.pw_uid, postfix.pw_gid)

    def write_config(self, hostname: str, settings: list[str], listeners: str, services: str = "") -> None:
        """main.cf: the settings of every instance (no local delivery, no aliases), then ``settings``; master.cf:
        ``listeners``, the internal services, then ``services``."""
        main_cf = [
            "compatibility_level = 3.6",
            f"config_directory = {self.etc}",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "meta_directory = /etc/postfix",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = all",
            "inet_protocols = ipv4",
            f"myhostname = {hostname}",
            "mydestination =",
            "alias_maps =",
            "alias_database =",
            "biff = no",
            *settings,
            "maillog_file_prefixes = /tmp",
            f"maillog_file = {self.log_path}",
            "",
        ]
        (self.etc / "main.cf").write_text("\n".join(main_cf))
        (self.etc / "master.cf").write_text(listeners + SERVICES + services)

    def start_postfix(self) -> None:
        result = subprocess.run([POSTFIX, "-c", str(self.etc), "start"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {result.stderr}{self.log()[-2000:]}")
        self.started = True

    def stop_postfix(self) -> None:
        """``postfix stop``, then wait (up to 20 s) for the master process to be gone."""
        if not self.started:
            return
        pid_file = self.queue / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True)
        deadline = time.monotonic() + 20
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        self.started = False
