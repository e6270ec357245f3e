"""Module-scoped fixtures of the sending tests: the knot DNS server serving the module's ``ZONES``, and remote
SMTP servers that are stopped when the module is done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from delivery_helpers import Remote

from dnsserver import KnotServer


@pytest.fixture(scope="module")
def knot(request: pytest.FixtureRequest) -> Iterator[KnotServer]:
    """knotd on 127.0.0.1, serving the test module's ``ZONES`` ({domain: [record lines]})."""
    zones = getattr(request.module, "ZONES", None)
    assert zones, "a module using the knot fixture defines ZONES"
    server = KnotServer(zones).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def remotes() -> Iterator[list[Remote]]:
    """Remotes a module starts are appended here, and stopped at the end of the module."""
    started: list[Remote] = []
    try:
        yield started
    finally:
        for r in started:
            r.stop()
