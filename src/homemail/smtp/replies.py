"""SMTP replies: the reply type every part of the SMTP server answers with, and the error that carries one.

Every reply has its enhanced status code (RFC 2034, RFC 3463): ``Reply(550, "5.1.1", "No such user")``. A hook or
command that refuses raises :class:`SMTPError`; the session catches it once, at the command, and sends the reply
(so no command can forget to answer). ``close=True`` ends the session after the reply (421).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    status: str  # enhanced status code "x.y.z" (RFC 3463); "" only for the greeting and EHLO lines
    text: str = ""

    def encode(self) -> bytes:
        """The reply as sent: one line, or several joined with "-" (RFC 5321 4.2.1)."""
        lines = self.text.split("\n") if self.text else [""]
        prefix = f"{self.status} " if self.status else ""
        out = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            text = f"{self.code}{sep}{prefix}{line}"
            # A SASL challenge keeps its space even when empty ("334 "): RFC 4954 4 sends the challenge as the
            # reply's text, and clients (msmtp, GNU SASL) read "334" alone as a malformed reply.
            out.append((text if self.code == 334 else text.rstrip(" ")) + "\r\n")
        return "".join(out).encode("utf-8", "replace")

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}".replace("\n", " / ")


class SMTPError(Exception):
    """Unwinds to the command being handled and becomes its reply."""

    def __init__(self, code: int, status: str, text: str, close: bool = False) -> None:
        super().__init__(f"{code} {status} {text}")
        self.reply = Reply(code, status, text)
        self.close = close


class ConnectionLost(Exception):
    """The client went away (or sent EOF); nothing more can be said to it."""


# Replies used often enough to be encoded once.
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
OK_BYTES = OK.encode()
SENDER_OK_BYTES = SENDER_OK.encode()
RCPT_OK_BYTES = RCPT_OK.encode()
