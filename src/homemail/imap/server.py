"""The IMAP listeners: accept connections (STARTTLS on "plain", TLS from the first byte on "implicit"), enforce
the per-IP connection limit, and run one :class:`~homemail.imap.session.Session` per connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING

from homemail import proxyproto
from homemail.config import Endpoint
from homemail.imap.session import Session
from homemail.imap.wire import Conn

if TYPE_CHECKING:
    from homemail.server import Services

log = logging.getLogger(__name__)


async def start_listener(services: Services, endpoint: Endpoint, mode: str) -> asyncio.AbstractServer:
    if mode not in ("plain", "implicit"):
        raise ValueError(f"unknown IMAP listener mode {mode!r}")
    implicit = mode == "implicit"
    # One count per address for both listeners (STARTTLS and implicit TLS): the limit is the IMAP service's.
    per_ip: Counter[str] = services.extras.setdefault("imap.connections_per_ip", Counter())
    limit = services.config.imap.max_connections_per_ip

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: tuple[str, int]
    ) -> None:
        ip = client[0]  # the peer, or the client named by a trusted proxy's PROXY header
        try:
            conn = Conn(reader, writer, tls=implicit, peer_ip=ip)
            session = Session(services, conn, starttls_allowed=not implicit)
            await session.run()
        except asyncio.CancelledError:
            # Shutdown: the session has said BYE. The connection's task ends quietly (asyncio reports a cancelled
            # connection handler as an error).
            pass
        except Exception:
            log.exception("IMAP connection from %s failed", ip)

    return await proxyproto.start_stream_server(
        services,
        "imaps" if implicit else "imap",
        endpoint,
        proxyproto.limit_per_ip(per_ip, limit, b"* BYE too many connections from your address\r\n", handle),
        ssl=services.tls if implicit else None,
        limit=2**20,
    )
