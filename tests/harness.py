"""Test harness: real homemail server processes on loopback, the CLI against them, and peer-tool checks.

A test module starts its servers once (module-scoped fixtures) and talks to them over real sockets.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from processes import free_port, homemail_cli, start_homemail, stop_process, wait_ready

if TYPE_CHECKING:
    from homemail.store.sqlite import SQLiteStore

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
LISTENER_KEYS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http")


def require_peer(*tools: str) -> None:
    """Skip when a peer program is missing, unless HOMEMAIL_REQUIRE_PEERS=1 (CI), where that is a failure."""
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        message = f"peer program(s) not installed: {', '.join(missing)}"
        if os.environ.get("HOMEMAIL_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def no_verify() -> ssl.SSLContext:
    """A TLS client context that takes any certificate (the test servers' are self-signed)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@functools.cache
def password_hashes(password: str = "password") -> tuple[str, str]:
    """``hash_password(password)``, made once per test run (argon2 is slow on purpose)."""
    from homemail.auth import hash_password

    return hash_password(password)


def with_store(data_dir: Path, fn: Callable[[SQLiteStore], Awaitable[T]]) -> T:
    """``fn`` on the store of ``data_dir`` (fsync off), opened and closed around it, in an event loop of its own:
    what the CLI or a second process does to a server's store."""
    from homemail.store.sqlite import SQLiteStore

    async def run() -> T:
        store = SQLiteStore(data_dir, fsync=False)
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def issue_certificate(folder: Path, *names: str, prefix: str = "") -> tuple[Any, Path, Path, Path]:
    """A new test CA and a certificate it issued for ``names``: (the trustme CA, its certificate file, the
    certificate chain file, the key file), written to ``folder`` as {prefix}ca.pem, {prefix}cert.pem and
    {prefix}key.pem."""
    import trustme

    ca = trustme.CA()
    ca_file = folder / f"{prefix}ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert(*names)
    cert_file, key_file = folder / f"{prefix}cert.pem", folder / f"{prefix}key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca, ca_file, cert_file, key_file


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(table: Mapping[str, Any], prefix: str = "") -> str:
    """Enough TOML for test configs: scalars, lists, nested tables, and lists of tables."""
    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for k, v in table.items():
        if isinstance(v, Mapping) or (isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v)):
            nested.append((k, v))
        else:
            lines.append(f"{k} = {toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in nested:
        name = f"{prefix}{k}"
        if isinstance(v, list):
            for item in v:
                out += f"\n[[{name}]]\n" + to_toml(item, name + ".")
        else:
            out += f"\n[{name}]\n" + to_toml(v, name + ".")
    return out


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = v
    return base


def _uid_of(name: str) -> int:
    """The UID in the name of a file ``homemail export`` wrote."""
    m = re.search(r"\.M(\d+)P", name)
    return int(m.group(1)) if m else 0


class ServerProcess:
    """One homemail server in a subprocess, with its own data folder, config file and free ports."""

    def __init__(
        self,
        root: Path | None = None,
        listeners: tuple[str, ...] = ("smtp",),
        config: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        hostname: str = "mx.example.test",
    ) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="homemail-test-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.ports = {key: free_port(host) for key in listeners}
        table: dict[str, Any] = {
            "hostname": hostname,
            "data_dir": str(self.root / "data"),
            "log_level": "info",
            "listen": {key: f"{host}:{port}" for key, port in self.ports.items()},
            "auth": {"allow_plaintext_on_loopback": True, "failure_delay": 0.05},
        }
        deep_merge(table, config or {})
        self.config = table
        self.config_path = self.root / "homemail.toml"
        self.config_path.write_text(to_toml(table))
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.config["data_dir"])

    def port(self, key: str) -> int:
        return self.ports[key]

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = homemail_cli(self.config_path, *args, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"homemail {' '.join(args)} failed: {result.stderr or result.stdout}")
        return result

    def add_user(self, address: str, password: str = "password") -> None:
        domain = address.rpartition("@")[2]
        if domain not in self.cli("domain", "list").stdout.split():
            self.cli("domain", "add", domain)
        self.cli("user", "add", address, "--password-stdin", input=password + "\n")

    def export(self, address: str) -> dict[str, list[bytes]]:
        """``homemail export`` of a user's folders (LF line endings), by folder, by ascending UID."""
        work = Path(tempfile.mkdtemp(prefix="homemail-export-"))
        try:
            self.cli("export", address, str(work / "m"))
            out: dict[str, list[bytes]] = {}
            for cur in (work / "m").rglob("cur"):
                folder = "INBOX" if cur.parent == work / "m" else cur.parent.name
                files = sorted(cur.iterdir(), key=lambda p: _uid_of(p.name))
                out[folder] = [p.read_bytes() for p in files]
            return out
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def start(self, timeout: float = 30) -> ServerProcess:
        self.proc = start_homemail(self.config_path, self.log_path, self.root)
        problem = wait_ready(self.proc, timeout)
        if problem is not None:
            if self.proc.poll() is None:
                self.kill()
            raise RuntimeError(f"homemail {problem}: {self.log()[-3000:]}")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: the crash tests' power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
