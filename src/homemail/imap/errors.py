"""The errors an IMAP command raises: each unwinds to the command loop, which turns it into the tagged answer.

Handlers stay straight lines: deep inside FETCH or SEARCH a ``raise No("...", code=b"TRYCREATE")`` is all it
takes; the loop writes ``tag NO [TRYCREATE] ...`` and goes on with the next command.
"""

from __future__ import annotations


class IMAPError(Exception):
    """A command's failure: ``status`` is b"NO" or b"BAD"; ``code`` an RFC 5530 response code (without brackets)."""

    status = b"NO"

    def __init__(self, text: str, code: bytes | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class No(IMAPError):
    """The command was understood but failed (RFC 9051 7.1.2)."""

    status = b"NO"


class Bad(IMAPError):
    """The command is not valid: syntax, state or arguments (RFC 9051 7.1.3)."""

    status = b"BAD"


class ParseError(Bad):
    """A syntax error in the command; the text says where."""


class Bye(Exception):
    """End the connection after an untagged BYE with this text (RFC 9051 7.1.5)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class LineTooLong(Exception):
    """A command line longer than the configured limit; the connection cannot be resynchronised."""


class LiteralRefused(Exception):
    """A literal announced by the client is refused before it is read.

    For a synchronising literal the tagged answer replaces the continuation request and the connection goes on
    (RFC 9051 7.5); for a non-synchronising one the connection must close (RFC 7888 4).
    """

    def __init__(self, tag: bytes, status: bytes, text: str, code: bytes | None, close: bool) -> None:
        super().__init__(text)
        self.tag = tag
        self.status = status
        self.text = text
        self.code = code
        self.close = close
