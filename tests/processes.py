"""Processes the tests and the benchmarks (bench/) run: homemail's server and CLI from a configuration file, and
what any peer program needs (a free port, waiting for a listener, stopping). No pytest here: the benchmarks
import this module too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

READY = b"homemail: ready"  # what ``homemail serve`` prints on stdout once its listeners are open


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 20) -> None:
    """Return once something accepts connections on ``host``:``port``; RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then SIGKILL when the process is still there after ``timeout`` s; its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def homemail_command(config_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "homemail", "--config", str(config_path), *args]


def homemail_cli(
    config_path: Path,
    *args: str,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """One ``homemail`` command with this configuration, its output captured; the caller checks the status."""
    return subprocess.run(
        homemail_command(config_path, *args),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def start_homemail(
    config_path: Path, log_path: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``homemail serve`` with this configuration, its log appended to ``log_path``; see :func:`wait_ready`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            homemail_command(config_path, "serve"), stdout=subprocess.PIPE, stderr=log, cwd=cwd, env=env
        )


def wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Wait for a server from :func:`start_homemail` to say it is ready: None once it has, else what went wrong
    ("exited with 1", "did not start within 30s"); the process is left as it is."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    while READY not in buf:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        if time.monotonic() > deadline:
            return f"did not start within {timeout}s"
        chunk = proc.stdout.read()
        if chunk:
            buf += chunk
        else:
            time.sleep(0.02)
    return None


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class HomemailServer:
    """A homemail server the benchmarks run: its folder ``root`` (created here) holds homemail.toml, which the
    user writes, data/ and server.log. ``env`` is the environment of its processes (None: this one's)."""

    def __init__(self, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        root.mkdir()
        self.env = env
        self.data_dir = root / "data"
        self.config_path = root / "homemail.toml"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, input: str | None = None) -> str:
        """A ``homemail`` command's output; RuntimeError when it fails."""
        result = homemail_cli(self.config_path, *args, input=input, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"homemail {' '.join(args)} failed: {result.stderr or result.stdout}")
        return result.stdout

    def start(self, timeout: float = 120) -> None:
        self.proc = start_homemail(self.config_path, self.log_path, self.root, self.env)
        problem = wait_ready(self.proc, timeout)
        if problem is not None:
            self.stop()
            raise RuntimeError(f"homemail {problem}: {self.log_path.read_text()[-2000:]}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)
            self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)
