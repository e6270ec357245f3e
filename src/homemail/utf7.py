"""IMAP's modified UTF-7 for mailbox names (RFC 3501 5.1.3), also used by Maildir++ folder names on disk."""

from __future__ import annotations

import base64
import re


def encode(name: str) -> str:
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")


def decode(name: str) -> str:
    """Decode; raises ValueError on a malformed name (RFC 3501 5.1.3 forbids, e.g., "&" unshifted)."""

    def shifted(m: re.Match[str]) -> str:
        b64 = m.group(1)
        if not b64:
            return "&"
        data = b64.replace(",", "/")
        data += "=" * (-len(data) % 4)
        try:
            text = base64.b64decode(data, validate=True).decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"bad modified UTF-7 in mailbox name: {name!r}") from None
        if encode(text) != m.group(0):  # RFC 3501 5.1.3: the encoding must be the shortest, canonical one
            raise ValueError(f"non-canonical modified UTF-7 in mailbox name: {name!r}")
        return text

    if any(not (0x20 <= ord(c) <= 0x7E) for c in name):
        raise ValueError(f"8-bit characters in a modified UTF-7 mailbox name: {name!r}")
    result = _SHIFTED.sub(shifted, name)
    if "&" in _SHIFTED.sub("", name):
        raise ValueError(f"bad modified UTF-7 in mailbox name: {name!r}")
    return result
