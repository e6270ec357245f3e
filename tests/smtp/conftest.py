"""The module-scoped MX server most SMTP test modules share (one server per module, not per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from smtp_helpers import setup_mx

from harness import ServerProcess


@pytest.fixture(scope="module")
def mx() -> Iterator[ServerProcess]:
    server = setup_mx()
    try:
        yield server
    finally:
        server.stop()
