"""Run Debian's mail programs as test peers: Dovecot's IMAP binary over a Maildir, neomutt in batch mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

DOVECOT_IMAP = "/usr/lib/dovecot/imap"


def dovecot_imap_session(maildir: Path, commands: list[str]) -> str:
    """Run Dovecot's imap binary pre-authenticated on a copy of ``maildir`` and return its output.

    Dovecot refuses to run as root, so the copy belongs to ``nobody``.
    """
    work = Path(tempfile.mkdtemp(prefix="homemail-dovecot-"))
    try:
        copy = work / "mail"
        shutil.copytree(maildir, copy)
        (work / "home").mkdir()
        (work / "run").mkdir()
        conf = work / "dovecot.conf"
        conf.write_text(
            f"base_dir = {work}/run\nlog_path = {work}/log\nstate_dir = {work}/run\n"
            f"mail_location = maildir:{copy}\n"
            "passdb {\n driver = static\n args = password=x\n}\n"
            f"userdb {{\n driver = static\n args = uid=nobody gid=nogroup home={work}/home\n}}\n"
        )
        subprocess.run(["chown", "-R", "nobody:nogroup", str(work)], check=True)
        script = "".join(f"t{i} {c}\r\n" for i, c in enumerate(commands)) + "z LOGOUT\r\n"
        result = subprocess.run(
            [DOVECOT_IMAP, "-c", str(conf), "-o", "mail_uid=nobody", "-o", "mail_gid=nogroup"],
            input=script.encode(),
            capture_output=True,
            timeout=60,
            env={**os.environ, "USER": "test", "HOME": str(work / "home")},
        )
        return result.stdout.decode("utf-8", "replace")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def neomutt_batch(muttrc_lines: list[str], folder: str, timeout: float = 60) -> str:
    """Run neomutt on ``folder`` with a muttrc whose last lines ``push`` keys, under a pseudo-terminal
    (neomutt needs one). Returns what neomutt printed."""
    work = Path(tempfile.mkdtemp(prefix="homemail-neomutt-"))
    try:
        rc = work / "muttrc"
        rc.write_text(
            "\n".join(
                [
                    "set wait_key=no",
                    "set quit=yes",
                    f"set folder={work}",
                    "set record=",
                    "set postponed=",
                    *muttrc_lines,
                ]
            )
            + "\n"
        )
        cmd = f"neomutt -n -R -F {rc} -f '{folder}'"
        result = subprocess.run(
            ["script", "-qec", cmd, "/dev/null"],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TERM": "xterm", "HOME": str(work)},
        )
        return result.stdout.decode("utf-8", "replace")
    finally:
        shutil.rmtree(work, ignore_errors=True)
