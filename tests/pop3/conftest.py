"""POP3 test servers, one per test module: ``pop3_server`` (POP3 with STLS, POP3S, IMAP and SMTP on loopback,
plaintext logins allowed from loopback) and ``strict_server`` (POP3 and POP3S, no plaintext login before TLS, a
short idle timeout); and a fresh account per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pop3_helpers import new_user, start

from harness import ServerProcess


@pytest.fixture(scope="module")
def pop3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start(
        tmp_path_factory.mktemp("pop3"),
        ("pop3", "pop3s", "imap", "smtp"),
        {"auth": {"failure_delay": 0.2, "max_failures": 5, "failure_window": 60}},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start(
        tmp_path_factory.mktemp("pop3-strict"),
        ("pop3", "pop3s"),
        {"auth": {"allow_plaintext_on_loopback": False}, "pop3": {"idle_timeout": 1.5}},
    )
    yield server
    server.stop()


@pytest.fixture
def user(pop3_server: ServerProcess) -> str:
    return new_user(pop3_server)
