"""Property tests: parse and every IMAP rendering accept any bytes without raising, and offsets stay sane."""

from __future__ import annotations

import logging

import message_samples as s
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homemail.message import BodyPart, ParsedMessage, parse
from homemail.message.imap import (
    UnknownCTE,
    binary,
    binary_size,
    bodystructure,
    envelope,
    search_text,
    section,
)

SPECS = [None, "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"]


def _check_offsets(part: BodyPart, lo: int, hi: int) -> None:
    assert lo <= part.header_start <= part.body_start <= part.end <= hi
    assert part.size == part.end - part.body_start
    previous = part.body_start
    for child in part.parts:
        assert child.header_start >= previous
        _check_offsets(child, part.body_start, part.end)
        previous = child.end
    if part.message is not None:
        inner = part.message[1]
        assert (inner.header_start, inner.end) == (part.body_start, part.end)
        _check_offsets(inner, part.body_start, part.end)


def _paths(part: BodyPart, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    children = part.parts or ([part.message[1]] if part.message else [])
    out = [prefix]
    for i, child in enumerate(children, 1):
        out.extend(_paths(child, (*prefix, i)))
    return out


def _exercise(data: bytes) -> None:
    parsed = parse(data)
    assert parsed.size == len(data)
    _check_offsets(parsed.body, 0, len(data))
    assert parsed.body.header_start == 0
    envelope(parsed.envelope)
    bodystructure(parsed.body, True)
    bodystructure(parsed.body, False)
    assert ParsedMessage.from_json(parsed.to_json()) == parsed
    search_text(data, parsed)
    for path in [*_paths(parsed.body)[:40], (1,), (2, 1), (9, 9)]:
        for spec in SPECS:
            section(data, parsed, path, spec, ["subject", "content-type"])
        try:
            binary_size(data, parsed, path)
            binary(data, parsed, path)
        except UnknownCTE:
            pass


@pytest.fixture(autouse=True)
def _no_fallback(caplog: pytest.LogCaptureFixture) -> object:
    """The last-resort handler in parse() must never be what kept it from raising."""
    with caplog.at_level(logging.ERROR, logger="homemail.message"):
        yield
    assert not [r for r in caplog.records if r.name.startswith("homemail.message")]


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    _exercise(data)


# Fragments that steer mutations towards the interesting corners of the grammar.
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"--",
    b"--x1",
    b"--foo bar--",
    b"\r\n--inner\r\n",
    b"Content-Type: multipart/mixed; boundary=x1\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"; filename*0*=utf-8''%E2; filename*1=\"x",
    b"=?utf-8?b?4oI=?=",
    b"(",
    b'"',
    b"\\",
    b"<",
    b":;",
    b"\x00",
    b"\xff\xfe",
    b" ",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(list(s.ALL.values()))))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "token", "delete", "duplicate", "truncate", "lf"]))
        if kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 40))]
        elif kind == "duplicate":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 200))]
        elif kind == "truncate":
            del data[pos:]
        else:
            data = bytearray(bytes(data).replace(b"\r\n", b"\n"))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    _exercise(data)


@pytest.mark.parametrize("name", sorted(s.ALL))
def test_samples(name: str) -> None:
    _exercise(s.ALL[name])


def test_adversarial_inputs() -> None:
    for data in [
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\n" * 2000,
        b"Content-Type: message/rfc822\r\n\r\n" * 200,
        b"From: " + b"(" * 5000 + b"\r\n\r\n",
        b"To: " + b'"' * 3001 + b"\r\n\r\n",
        b"Subject: " + b"=?utf-8?q?a?= " * 2000 + b"\r\n\r\n",
        b"Content-Type: a/b" + b"; x*9999999999999999=1" * 50 + b"\r\n\r\n",
        b"X: y\r\n" * 20000,
    ]:
        _exercise(data)
