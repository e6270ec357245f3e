"""Mail addresses: validation and the one normal form every part of homemail compares.

The normal form is ``local@domain`` with the domain lower-cased and, when internationalised, in its Unicode form
(IDNA A-labels are decoded); the local part keeps its case (RFC 5321 2.4: only the receiving host may interpret
it) but lookups are case-insensitive.
"""

from __future__ import annotations

import re

# RFC 5321 4.1.2 Dot-string atoms; RFC 6531 3.3 extends atext with UTF-8.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9\-\u0080-\U0010ffff]{1,63}(?<!-)")
MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 256  # RFC 5321 4.5.3.1.3


def normalize_domain(domain: str) -> str:
    """Lower-case a domain and check its syntax; ``xn--`` labels are shown in Unicode. Raises ValueError."""
    d = domain.strip().rstrip(".").lower()
    if d.startswith("[") and d.endswith("]"):
        raise ValueError(f"address literals are not mail domains here: {domain!r}")
    if not d or len(d) > MAX_DOMAIN:
        raise ValueError(f"invalid domain: {domain!r}")
    labels = d.split(".")
    out = []
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"invalid domain: {domain!r}")
        if label.startswith("xn--"):
            try:
                label = label.encode("ascii").decode("idna")
            except UnicodeError:
                raise ValueError(f"invalid domain: {domain!r}") from None
        out.append(label)
    return ".".join(out)


def domain_ascii(domain: str) -> str:
    """The A-label form of a normalised domain (for DNS)."""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at:
        raise ValueError(f"not an address (no @): {address!r}")
    return local, domain


def check_local_part(local: str) -> str:
    if not local or len(local.encode()) > MAX_LOCAL:
        raise ValueError(f"invalid local part: {local!r}")
    if _DOT_STRING.fullmatch(local):
        return local
    # RFC 5321 4.1.2 Quoted-string: accepted, kept as written.
    if len(local) >= 2 and local[0] == local[-1] == '"' and re.fullmatch(r'"(?:[^"\\\r\n]|\\[ -~])*"', local):
        return local
    raise ValueError(f"invalid local part: {local!r}")


def normalize(address: str) -> str:
    """``local@domain`` checked and normalised; raises ValueError with a clear reason."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, domain = split(address)
    return f"{check_local_part(local)}@{normalize_domain(domain)}"


def normalize_alias_source(source: str) -> str:
    """An alias source: an address, or ``@domain`` for the domain's catch-all."""
    source = source.strip()
    if source.startswith("@"):
        return "@" + normalize_domain(source[1:])
    return normalize(source)


def is_ascii(s: str) -> bool:
    return s.isascii()
