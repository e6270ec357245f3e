"""Greeting, CAPABILITY, LOGIN/AUTHENTICATE (SASL-IR), STARTTLS, implicit TLS, ID, ENABLE, NAMESPACE, COMPRESS,
LOGOUT, and LOGINDISABLED on a server that allows no cleartext passwords."""

from __future__ import annotations

import base64
import imaplib
import zlib
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient

from harness import ServerProcess, no_verify
from imap.imaputil import PASSWORD, add_accounts, start_server
from imap.rawclient import Raw

EXPECTED = [
    "IMAP4rev1",
    "IMAP4rev2",
    "LITERAL+",
    "SASL-IR",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "ID",
    "UIDPLUS",
    "MOVE",
    "UNSELECT",
    "CHILDREN",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "SPECIAL-USE",
    "CONDSTORE",
    "QRESYNC",
    "ESEARCH",
    "SORT",
    "THREAD=REFERENCES",
    "STATUS=SIZE",
    "COMPRESS=DEFLATE",
]


def test_greeting_has_capabilities(server: ServerProcess) -> None:
    c = Raw(server.port("imap"))
    assert c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    caps = c.greeting.split(b"]")[0].split()[2:]
    for cap in EXPECTED:
        assert cap.encode() in caps
    assert any(x.startswith(b"APPENDLIMIT=") for x in caps)
    # loopback with allow_plaintext_on_loopback: cleartext mechanisms are offered, STARTTLS too
    assert b"STARTTLS" in caps and b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps
    untagged, tagged = c.cmd("CAPABILITY")
    assert untagged[0].startswith(b"* CAPABILITY IMAP4rev1 ")
    assert tagged == b"t1 OK CAPABILITY completed\r\n"
    c.close()


def test_login_and_capability_code(server: ServerProcess, user: str) -> None:
    c = Raw(server.port("imap"))
    _, tagged = c.cmd(f'LOGIN {user} "{PASSWORD}"')
    assert tagged.startswith(b"t1 OK [CAPABILITY IMAP4rev1 ")
    assert b"STARTTLS" not in tagged and b"AUTH=" not in tagged
    untagged, tagged = c.cmd("LOGOUT")
    assert untagged == [b"* BYE homemail logging out\r\n"] and tagged.startswith(b"t2 OK")


def test_login_failure(server: ServerProcess, user: str) -> None:
    c = Raw(server.port("imap"))
    _, tagged = c.cmd(f'LOGIN {user} "wrong"')
    assert tagged == b"t1 NO [AUTHENTICATIONFAILED] authentication failed\r\n"
    _, tagged = c.cmd('LOGIN nobody@example.test "x"')
    assert tagged.startswith(b"t2 NO [AUTHENTICATIONFAILED]")
    _, tagged = c.cmd("SELECT INBOX")
    assert tagged.startswith(b"t3 BAD")


def test_authenticate_plain_sasl_ir(server: ServerProcess, user: str) -> None:
    c = Raw(server.port("imap"))
    ir = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    _, tagged = c.cmd(f"AUTHENTICATE PLAIN {ir}")
    assert tagged.startswith(b"t1 OK [CAPABILITY ")


def test_authenticate_plain_continuation_and_cancel(server: ServerProcess, user: str) -> None:
    c = Raw(server.port("imap"))
    c.send(b"a AUTHENTICATE PLAIN\r\n")
    assert c.response() == b"+ \r\n"
    c.send(b"*\r\n")
    assert c.response().startswith(b"a BAD")
    c.send(b"b AUTHENTICATE PLAIN\r\n")
    assert c.response() == b"+ \r\n"
    c.send(base64.b64encode(f"{user}\0{user}\0{PASSWORD}".encode()) + b"\r\n")
    assert c.response().startswith(b"b OK [CAPABILITY")


def test_authenticate_login(server: ServerProcess, user: str) -> None:
    c = Raw(server.port("imap"))
    c.send(b"a AUTHENTICATE LOGIN\r\n")
    assert base64.b64decode(c.response()[2:]) == b"Username:"
    c.send(base64.b64encode(user.encode()) + b"\r\n")
    assert base64.b64decode(c.response()[2:]) == b"Password:"
    c.send(base64.b64encode(PASSWORD.encode()) + b"\r\n")
    assert c.response().startswith(b"a OK [CAPABILITY")


def test_imaplib_login_and_starttls(server: ServerProcess, user: str) -> None:
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    m.starttls(no_verify())
    assert "STARTTLS" not in m.capabilities
    assert m.login(user, PASSWORD)[0] == "OK"
    assert m.select("INBOX")[0] == "OK"
    m.logout()


def test_implicit_tls_with_imapclient(server: ServerProcess, user: str) -> None:
    with IMAPClient("127.0.0.1", port=server.port("imaps"), ssl=True, ssl_context=no_verify()) as c:
        assert b"STARTTLS" not in c.capabilities()
        c.login(user, PASSWORD)
        assert c.has_capability("IDLE")
        fields = c.id_({"name": "pytest"})[0]
        assert dict(zip(fields[::2], fields[1::2], strict=False))[b"name"] == b"homemail"
        assert c.namespace().personal == (("", "/"),)
        c.logout()


def test_starttls_discards_pipelined_plaintext(server: ServerProcess) -> None:
    c = Raw(server.port("imap"))
    c.send(b"a STARTTLS\r\nb CAPABILITY\r\n")
    assert c.response() == b"a OK Begin TLS negotiation now\r\n"
    tls = no_verify().wrap_socket(c.sock)
    tls.sendall(b"c NOOP\r\n")
    data = tls.recv(1000)
    assert data == b"c OK NOOP completed\r\n"


def test_enable_id_namespace(server: ServerProcess, user: str) -> None:
    c = Raw(server.port("imap"))
    c.login(user)
    assert c.ok("ENABLE CONDSTORE X-UNKNOWN") == [b"* ENABLED CONDSTORE\r\n"]
    assert c.ok("ENABLE CONDSTORE QRESYNC IMAP4rev2") == [b"* ENABLED QRESYNC IMAP4rev2\r\n"]
    assert c.ok('ID ("name" "test" "version" NIL)') == [b'* ID ("name" "homemail" "version" "0.1.0")\r\n']
    assert c.ok("ID NIL")
    assert c.ok("NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL NIL\r\n']


def test_compress_deflate(server: ServerProcess, user: str) -> None:
    c = Raw(server.port("imap"))
    c.login(user)
    _, tagged = c.cmd("COMPRESS DEFLATE")
    assert tagged == b"t2 OK DEFLATE active\r\n"
    c.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    c.inflate = zlib.decompressobj(-15)
    untagged = c.ok("SELECT INBOX")
    assert b"* 0 EXISTS\r\n" in untagged
    untagged, tagged = c.cmd("CAPABILITY")
    assert b"COMPRESS=DEFLATE" not in untagged[0]
    _, tagged = c.cmd("COMPRESS DEFLATE")
    assert tagged.startswith(b"t5 NO [COMPRESSIONACTIVE]")


def test_state_rules(server: ServerProcess, user: str) -> None:
    c = Raw(server.port("imap"))
    _, tagged = c.cmd("FETCH 1 FLAGS")
    assert tagged.startswith(b"t1 BAD")
    c.login(user)
    _, tagged = c.cmd("FETCH 1 FLAGS")
    assert tagged.startswith(b"t3 BAD")
    _, tagged = c.cmd("LOGIN a b")
    assert tagged.startswith(b"t4 BAD")
    _, tagged = c.cmd("STARTTLS")
    assert tagged.startswith(b"t5 BAD")


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        tmp_path_factory.mktemp("strict"), auth={"allow_plaintext_on_loopback": False, "failure_delay": 0.05}
    )
    yield srv
    srv.stop()


def test_logindisabled_before_tls(strict_server: ServerProcess) -> None:
    add_accounts(strict_server, ["strict@example.test"])
    c = Raw(strict_server.port("imap"))
    caps = c.greeting.split(b"]")[0].split()
    assert b"LOGINDISABLED" in caps and b"STARTTLS" in caps
    assert not any(x.startswith(b"AUTH=") for x in caps)
    _, tagged = c.cmd(f'LOGIN strict@example.test "{PASSWORD}"')
    assert tagged.startswith(b"t1 NO [PRIVACYREQUIRED]")
    _, tagged = c.cmd(
        "AUTHENTICATE PLAIN " + base64.b64encode(f"\0strict@example.test\0{PASSWORD}".encode()).decode()
    )
    assert tagged.startswith(b"t2 NO")
    m = imaplib.IMAP4("127.0.0.1", strict_server.port("imap"))
    m.starttls(no_verify())
    assert "LOGINDISABLED" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
    assert m.login("strict@example.test", PASSWORD)[0] == "OK"
    m.logout()
    t = Raw(strict_server.port("imaps"), tls=True)
    assert b"AUTH=PLAIN" in t.greeting and b"STARTTLS" not in t.greeting
    t.login("strict@example.test")
