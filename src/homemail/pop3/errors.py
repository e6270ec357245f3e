"""The POP3 error: raised anywhere below a command, caught once at the command, sent as its ``-ERR`` line.

Response codes (RFC 2449 8, RFC 3206) travel with the error, so the code that knows why a command fails also
says how the client should take it: ``[AUTH]`` the credentials, ``[IN-USE]`` the maildrop lock, ``[SYS/TEMP]``
try again later, ``[SYS/PERM]`` do not.
"""

from __future__ import annotations

AUTH = "AUTH"  # RFC 3206 4: a problem with the user's credentials
IN_USE = "IN-USE"  # RFC 2449 8.1.1: the maildrop is locked by another session
SYS_TEMP = "SYS/TEMP"  # RFC 3206 5: a problem on our side that is likely temporary
SYS_PERM = "SYS/PERM"  # RFC 3206 5: a problem on our side that will not go away by itself


class POP3Error(Exception):
    """Refuses the command being handled. ``close=True`` ends the session after the ``-ERR`` line."""

    def __init__(self, text: str, code: str | None = None, close: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.close = close

    def line(self) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"-ERR {code}{self.text}\r\n".encode("utf-8", "replace")


class ConnectionLost(Exception):
    """The client went away (or sent EOF); nothing more can be said to it."""


class IdleTimeout(Exception):
    """The client sent nothing, or took nothing of what it was sent, for ``pop3.idle_timeout`` seconds (RFC 1939
    3: the autologout timer). ``writing``: it stopped reading, so there is no point in telling it."""

    def __init__(self, writing: bool = False) -> None:
        super().__init__()
        self.writing = writing
