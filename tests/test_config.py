"""Configuration: defaults, the file's keys, and one clear line for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from homemail import config
from homemail.config import ConfigError, Endpoint


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "homemail.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = config.load()
    assert c.source is None
    assert c.data_dir == Path("homemail-data")
    assert c.listen.smtp is None and c.listen.imap is None
    assert c.smtp.max_message_size == 50 * 1024 * 1024
    assert c.hostname


def test_reads_homemail_toml_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, 'hostname = "mx.example.test"\n')
    monkeypatch.chdir(tmp_path)
    assert config.load().hostname == "mx.example.test"


def test_all_documented_keys(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    p = write(
        tmp_path,
        f"""
hostname = "MX.Example.Test"
data_dir = "state"
[listen]
smtp = "0.0.0.0:25"
submission = "0.0.0.0:587"
submissions = "0.0.0.0:465"
imap = "0.0.0.0:143"
imaps = "0.0.0.0:993"
pop3 = "0.0.0.0:110"
pop3s = "0.0.0.0:995"
http = "[::1]:8080"
[tls]
cert = "{cert}"
key = "{key}"
[smtp]
max_message_size = "10MB"
idle_timeout = "2m"
[dns]
nameservers = ["127.0.0.1:5353", "::1"]
""",
    )
    c = config.load(p)
    assert c.hostname == "mx.example.test"
    assert c.data_dir == (tmp_path / "state").resolve()  # relative to the file
    assert c.listen.smtp == Endpoint("0.0.0.0", 25)
    assert c.listen.http == Endpoint("::1", 8080)
    assert c.tls.cert == cert
    assert c.smtp.max_message_size == 10 * 1024 * 1024 and c.smtp.idle_timeout == 120
    assert c.dns.nameservers == [Endpoint("127.0.0.1", 5353), Endpoint("::1", 53)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "colour: unknown setting"),
        ("[listen]\nsmpt = '0.0.0.0:25'", "listen.smpt: unknown setting"),
        ("[listen]\nsmtp = 25", 'listen.smtp: expected a string "host:port"'),
        ("[listen]\nsmtp = 'localhost'", 'listen.smtp: expected "host:port"'),
        ("[listen]\nsmtp = '0.0.0.0:99999'", "listen.smtp: port 99999 out of range"),
        ("[smtp]\nmax_recipients = 0", "smtp.max_recipients: expected a positive integer"),
        ("[smtp]\nmax_message_size = '5 parsecs'", "smtp.max_message_size: expected a size"),
        (
            "[auth]\nallow_plaintext_on_loopback = 'yes'",
            "auth.allow_plaintext_on_loopback: expected true or false",
        ),
        ("[tls]\ncert = '/nonexistent/cert.pem'\nkey = '/nonexistent/key.pem'", "tls.cert: no such file"),
        ("hostname = 'bad host!'", "hostname: not a valid host name"),
        ("listen = 3", "listen: expected a table"),
        ("[listen", "not valid TOML"),
    ],
)
def test_mistakes_name_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith(str(p) + ": ")
    assert message in line


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")
