"""One data folder per test module for the import/export tests (no server: the CLI works on the store)."""

from __future__ import annotations

import pytest
from transfer_helpers import Home


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return Home(tmp_path_factory.mktemp("transfer"))
