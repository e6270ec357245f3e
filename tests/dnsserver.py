"""A real authoritative DNS server for tests: Debian's knotd on a loopback address, serving test zones.

Zones are given as record lines relative to the origin (``"@ MX 10 mx"``, ``"mx A 127.0.0.2"``); SOA and NS are
added. Zones can be changed while knot runs (:meth:`KnotServer.set_zone` reloads), and a TSIG key accepts RFC 2136
dynamic updates. homemail is pointed at it with ``[dns] nameservers = ["127.0.0.1:PORT"]``.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from harness import require_peer
from processes import free_port, stop_process

KNOTD = "/usr/sbin/knotd"
KNOTC = "/usr/sbin/knotc"
TSIG_NAME = "homemail-test"


def _zone_text(origin: str, records: Iterable[str], serial: int) -> str:
    head = [
        f"$ORIGIN {origin}.",
        "$TTL 300",
        f"@ SOA ns.{origin}. hostmaster.{origin}. {serial} 3600 600 86400 60",
        f"@ NS ns.{origin}.",
        "ns A 127.0.0.1",
    ]
    return "\n".join([*head, *records]) + "\n"


class KnotServer:
    """One knotd with its own config, zone files and control socket in a temporary folder."""

    def __init__(self, zones: Mapping[str, Iterable[str]], host: str = "127.0.0.1") -> None:
        require_peer(KNOTD, KNOTC)
        self.host = host
        self.port = free_port(host)
        self.root = Path(tempfile.mkdtemp(prefix="homemail-knot-"))
        self.tsig_secret = base64.b64encode(os.urandom(32)).decode()
        self.zones: dict[str, list[str]] = {name.rstrip(".").lower(): list(r) for name, r in zones.items()}
        self._serial = int(time.time())
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """For homemail's ``[dns] nameservers``."""
        return f"{self.host}:{self.port}"

    def _write_config(self) -> None:
        zone_lines = "".join(
            f"  - domain: {name}\n    file: {self.root}/{name}.zone\n    acl: update\n" for name in self.zones
        )
        (self.root / "knot.conf").write_text(
            "server:\n"
            f"  rundir: {self.root}\n"
            f"  listen: {self.host}@{self.port}\n"
            "  user: root:root\n"
            "log:\n"
            f"  - target: {self.root}/knot.log\n"
            "    any: info\n"
            "database:\n"
            f"  storage: {self.root}/db\n"
            "key:\n"
            f"  - id: {TSIG_NAME}\n"
            "    algorithm: hmac-sha256\n"
            f"    secret: {self.tsig_secret}\n"
            "acl:\n"
            "  - id: update\n"
            f"    key: {TSIG_NAME}\n"
            "    action: update\n"
            "template:\n"
            "  - id: default\n"
            "    semantic-checks: off\n"
            "    zonefile-sync: -1\n"
            "    zonefile-load: whole\n"
            "    journal-content: changes\n"
            "zone:\n" + zone_lines
        )

    def _write_zones(self) -> None:
        self._serial += 100  # well past any serial bumps from dynamic updates
        for name, records in self.zones.items():
            (self.root / f"{name}.zone").write_text(_zone_text(name, records, self._serial))

    def start(self) -> KnotServer:
        (self.root / "db").mkdir(exist_ok=True)
        self._write_config()
        self._write_zones()
        log = (self.root / "stderr").open("ab")
        self.proc = subprocess.Popen(
            [KNOTD, "-c", str(self.root / "knot.conf")], stdout=log, stderr=log, cwd=self.root
        )
        first = next(iter(self.zones))
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"knotd exited: {(self.root / 'stderr').read_text()}")
            try:
                # A short timeout: a query sent before knotd listens gets no answer at all (UDP).
                if self.query(first, "SOA", timeout=0.2):
                    return self
            except Exception:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("knotd did not answer within 15 s")
            time.sleep(0.05)

    def control(self, *args: str) -> str:
        result = subprocess.run(
            [KNOTC, "-c", str(self.root / "knot.conf"), *args], capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise RuntimeError(f"knotc {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def set_zone(self, name: str, records: Iterable[str]) -> None:
        """Replace a zone's records (a new zone needs a restart) and have knot load them."""
        name = name.rstrip(".").lower()
        if name not in self.zones:
            raise KeyError(f"{name}: zones can only be added before start")
        self.zones[name] = list(records)
        self._write_zones()
        self.control("zone-reload", name)
        self._wait_serial(name)

    def _wait_serial(self, name: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            soa = self.query(name, "SOA")
            if soa and soa[0].split()[2] == str(self._serial):
                return
            time.sleep(0.05)
        raise RuntimeError(f"knot did not load the new {name} zone")

    def query(self, name: str, rdtype: str, timeout: float = 2) -> list[str]:
        """Ask knot directly (not through homemail): the answer's records as text."""
        q = dns.message.make_query(name.rstrip(".") + ".", dns.rdatatype.from_text(rdtype))
        r = dns.query.udp(q, self.host, port=self.port, timeout=timeout)
        return [rd.to_text() for rrset in r.answer for rd in rrset]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> KnotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
