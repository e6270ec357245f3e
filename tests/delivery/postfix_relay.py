"""A throwaway Postfix acting as an authenticating relay (smarthost), with Dovecot's auth server for SASL.

Postfix listens on ``host``:587 (STARTTLS required, then AUTH required), ``host``:2525 (neither TLS nor AUTH)
and ``host``:2526 (STARTTLS, no AUTH), and hands everything it accepts to ``onward`` (``[ip]:port``, no DNS).
Its certificate is issued by a trustme CA for ``name``; :attr:`ca_file` is that CA. Recipients listed in
``refuse`` are rejected at RCPT with a 554. Dovecot runs with only its auth service, a passwd-file with one
user, and a socket in the temporary folder that Postfix's smtpd_sasl_path names.

Runs as root: Postfix's master must; Postfix drops to its ``postfix`` user, Dovecot's auth to ``dovecot``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness import require_peer
from postfix_instance import POSTFIX, PostfixInstance
from processes import stop_process, wait_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

LISTENERS = """\
{host}:587 inet n - n - - smtpd
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
{host}:2525 inet n - n - - smtpd
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
{host}:2526 inet n - n - - smtpd
  -o smtpd_tls_security_level=may
  -o smtpd_sasl_auth_enable=no
"""
TLSMGR = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"


class PostfixRelay(PostfixInstance):
    def __init__(
        self,
        host: str,
        name: str,
        onward: str,
        username: str,
        password: str,
        refuse: dict[str, str] | None = None,
    ) -> None:
        require_peer(POSTFIX, DOVECOT)
        self.host = host
        self.name = name
        self.onward = onward
        self.username = username
        self.password = password
        self.refuse = refuse or {}
        super().__init__(Path(tempfile.mkdtemp(prefix="homemail-relay-")))
        self.dovecot_dir = self.root / "dovecot"
        self.auth_socket = self.dovecot_dir / "auth-client"
        self.ca_file = self.root / "ca.pem"
        self.dovecot: subprocess.Popen[bytes] | None = None

    def _certificate(self) -> tuple[Path, Path]:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert(self.name)
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert_path, key_path = self.etc / "cert.pem", self.etc / "key.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)
        return cert_path, key_path

    def _write(self) -> None:
        # Postfix's processes (as "postfix") must reach the auth socket and the maillog folder.
        self.make_folders(self.dovecot_dir)
        cert, key = self._certificate()
        (self.etc / "recipient_access").write_text(
            "".join(f"{address} REJECT {text}\n" for address, text in self.refuse.items()) or "\n"
        )
        self.write_config(
            self.name,
            [
                # No client is trusted by address: relaying needs AUTH.
                "mynetworks = 192.0.2.1/32",
                "smtpd_peername_lookup = no",
                f"relayhost = {self.onward}",
                "smtp_dns_support_level = disabled",
                f"smtp_bind_address = {self.host}",
                "smtp_tls_security_level = may",
                f"smtpd_tls_cert_file = {cert}",
                f"smtpd_tls_key_file = {key}",
                "smtpd_tls_received_header = yes",
                "smtpd_sasl_type = dovecot",
                f"smtpd_sasl_path = {self.auth_socket}",
                "smtpd_sasl_authenticated_header = yes",
                "smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination",
                f"smtpd_recipient_restrictions = check_recipient_access texthash:{self.etc}/recipient_access",
            ],
            LISTENERS.format(host=self.host),
            TLSMGR,
        )
        (self.dovecot_dir / "passwd").write_text(f"{self.username}:{{PLAIN}}{self.password}\n")
        (self.dovecot_dir / "dovecot.conf").write_text(
            f"base_dir = {self.dovecot_dir}/run\n"
            f"state_dir = {self.dovecot_dir}/state\n"
            f"log_path = {self.dovecot_dir}/dovecot.log\n"
            "protocols =\n"
            "ssl = no\n"
            "auth_mechanisms = plain login\n"
            "auth_failure_delay = 0\n"
            "passdb {\n"
            "  driver = passwd-file\n"
            f"  args = {self.dovecot_dir}/passwd\n"
            "}\n"
            "userdb {\n"
            "  driver = static\n"
            "  args = uid=nobody gid=nogroup home=/nonexistent\n"
            "}\n"
            "service auth {\n"
            f"  unix_listener {self.auth_socket} {{\n"
            "    mode = 0666\n"
            "  }\n"
            "}\n"
        )

    def prepare(self) -> PostfixRelay:
        """Write the configurations and the certificate (so :attr:`ca_file` exists before the start)."""
        if not self.etc.exists():
            self._write()
        return self

    def start(self) -> PostfixRelay:
        self.prepare()
        self.dovecot = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.dovecot_dir / "dovecot.conf")],
            stdout=(self.dovecot_dir / "stderr").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not self.auth_socket.exists():
            if self.dovecot.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot auth did not start: {self._dovecot_errors()}")
            time.sleep(0.05)
        try:
            self.start_postfix()
        except RuntimeError:
            self.stop()
            raise
        for port in (587, 2525, 2526):
            wait_port(self.host, port)
        return self

    def _dovecot_errors(self) -> str:
        out = ""
        for name in ("stderr", "dovecot.log"):
            p = self.dovecot_dir / name
            if p.exists():
                out += p.read_text(errors="replace")[-2000:]
        return out

    def stop(self) -> None:
        self.stop_postfix()
        if self.dovecot is not None:
            stop_process(self.dovecot, 10)
            self.dovecot = None
        shutil.rmtree(self.root, ignore_errors=True)
