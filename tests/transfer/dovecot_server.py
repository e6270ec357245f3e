"""A throwaway Dovecot IMAP server on loopback: IMAP (STARTTLS) and IMAPS with a certificate from a test CA,
users from a passwd-file, Maildir storage. Dovecot refuses to run mail processes as root, so the mail belongs
to nobody, in a folder outside pytest's root-only temporary folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import trustme

from processes import free_port, stop_process

DOVECOT = "/usr/sbin/dovecot"


class DovecotServer:
    def __init__(self, users: dict[str, str]) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="homemail-dovecot-imap-"))
        self.work.chmod(0o755)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.cafile = self.work / "ca.pem"
        ca.cert_pem.write_to_path(str(self.cafile))
        cert.private_key_pem.write_to_path(str(self.work / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.work / "cert.pem"))
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(str(self.work / "cert.pem"), append=True)
        (self.work / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))
        (self.work / "home").mkdir()
        subprocess.run(["chown", "nobody:nogroup", str(self.work / "home")], check=True)
        self.imap_port = free_port()
        self.imaps_port = free_port()
        w = self.work
        self.config = w / "dovecot.conf"
        self.config.write_text(
            f"""
base_dir = {w}/run
state_dir = {w}/state
log_path = {w}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{w}/cert.pem
ssl_key = <{w}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {w}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={w}/home/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 1
namespace inbox {{
  inbox = yes
  separator = /
  mailbox "Sent Messages" {{
    special_use = \\Sent
    auto = create
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = create
  }}
  mailbox Spam {{
    special_use = \\Junk
    auto = create
  }}
  mailbox "All Mail" {{
    special_use = \\All
    auto = create
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> DovecotServer:
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.imaps_port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"dovecot did not start: {self.log()}") from None
                time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return (self.work / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
            self.proc = None
        if os.environ.get("HOMEMAIL_KEEP_DOVECOT") != "1":
            shutil.rmtree(self.work, ignore_errors=True)
