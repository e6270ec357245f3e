"""The homemail command: domains, users, aliases, export, config check; one clear line for every error."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def homemail(tmp_path: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homemail", *args],
        cwd=tmp_path,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(tmp_path: Path, *args: str, input: str | None = None) -> str:
    r = homemail(tmp_path, *args, input=input)
    assert r.returncode == 0, r.stderr
    return r.stdout


def error(tmp_path: Path, *args: str, input: str | None = None) -> str:
    r = homemail(tmp_path, *args, input=input)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("homemail: error: "), r.stderr
    return lines[0]


def test_domains_users_aliases(tmp_path: Path) -> None:
    ok(tmp_path, "domain", "add", "Example.ORG")
    assert ok(tmp_path, "domain", "list").split() == ["example.org"]
    assert "exists already" in error(tmp_path, "domain", "add", "example.org")
    ok(tmp_path, "user", "add", "alice@example.org", "--password-stdin", input="s3cret\n")
    assert "exists already" in error(
        tmp_path, "user", "add", "alice@example.org", "--password-stdin", input="x\n"
    )
    assert "unknown domain" in error(
        tmp_path, "user", "add", "bob@nowhere.test", "--password-stdin", input="x\n"
    )
    assert "not an address" in error(tmp_path, "user", "add", "bob", "--password-stdin", input="x\n")
    assert "invalid" in error(tmp_path, "user", "add", "a b@example.org", "--password-stdin", input="x\n")
    assert "empty" in error(tmp_path, "user", "add", "carol@example.org", "--password-stdin", input="\n")
    ok(tmp_path, "user", "add", "bob@example.org", "--password-stdin", input="pw\n")
    assert ok(tmp_path, "user", "list").split() == ["alice@example.org", "bob@example.org"]
    ok(tmp_path, "alias", "add", "team@example.org", "alice@example.org", "bob@example.org")
    ok(tmp_path, "alias", "add", "@example.org", "alice@example.org")
    assert ok(tmp_path, "alias", "list").splitlines() == [
        "@example.org -> alice@example.org",
        "team@example.org -> alice@example.org",
        "team@example.org -> bob@example.org",
    ]
    assert "unknown domain" in error(tmp_path, "alias", "add", "x@other.test", "alice@example.org")
    ok(tmp_path, "alias", "remove", "team@example.org", "bob@example.org")
    assert "no such alias" in error(tmp_path, "alias", "remove", "team@example.org", "bob@example.org")
    assert "still has" in error(tmp_path, "domain", "remove", "example.org")
    ok(tmp_path, "user", "remove", "bob@example.org")
    assert "no such user" in error(tmp_path, "user", "remove", "bob@example.org")


def test_passwords_are_argon2id_hashes(tmp_path: Path) -> None:
    ok(tmp_path, "domain", "add", "example.org")
    ok(tmp_path, "user", "add", "alice@example.org", "--password-stdin", input="first\n")
    db = tmp_path / "homemail-data" / "homemail.db"

    def stored() -> str:
        with sqlite3.connect(db) as conn:
            return str(conn.execute("SELECT password_hash FROM account").fetchone()[0])

    first = stored()
    assert first.startswith("$argon2id$") and "first" not in first
    ok(tmp_path, "user", "passwd", "alice@example.org", "--password-stdin", input="second\n")
    assert stored() != first and stored().startswith("$argon2id$")
    from homemail.auth import verify_password

    assert verify_password(stored(), "second") and not verify_password(stored(), "first")


def test_config_check(tmp_path: Path) -> None:
    (tmp_path / "good.toml").write_text('hostname = "mx.example.test"\n[listen]\nsmtp = "127.0.0.1:2525"\n')
    assert "ok" in ok(tmp_path, "--config", "good.toml", "config", "check")
    (tmp_path / "bad.toml").write_text('[listen]\nsmtp = "nowhere"\n')
    line = error(tmp_path, "--config", "bad.toml", "config", "check")
    assert "bad.toml: listen.smtp" in line
    assert "file not found" in error(tmp_path, "--config", "missing.toml", "config", "check")


@pytest.mark.parametrize("args", [["serve"], ["domain", "list"]])
def test_bad_config_stops_every_command(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "homemail.toml").write_text("[smtp]\nmax_errors = -1\n")
    assert "homemail.toml: smtp.max_errors" in error(tmp_path, *args)
