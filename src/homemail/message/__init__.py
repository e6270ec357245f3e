"""The MIME message parser: run once at delivery, its result is what IMAP serves structure and search from.

``parse(data)`` scans the raw bytes once and returns a :class:`ParsedMessage` (envelope, MIME tree with
byte offsets, decoded search fields) that round-trips through compact JSON; :mod:`homemail.message.imap`
renders it as IMAP ENVELOPE, BODYSTRUCTURE, BODY[section] and BINARY data.
"""

from homemail.message.headers import header_end as _header_end
from homemail.message.headers import header_fields as _header_fields
from homemail.message.model import Address, BodyPart, Envelope, ParsedMessage, SearchFields
from homemail.message.parser import parse

__all__ = [
    "Address",
    "BodyPart",
    "Envelope",
    "ParsedMessage",
    "SearchFields",
    "header_end",
    "header_fields",
    "parse",
]


def header_fields(data: bytes) -> list[tuple[str, bytes]]:
    """The top-level header fields: names as written, values raw (everything after the colon, folding kept)."""
    return _header_fields(data)


def header_end(data: bytes) -> int:
    """Offset of the body: just past the blank line that ends the header (len(data) if there is none)."""
    return _header_end(data)
