"""The HTTP listeners: the web application under uvicorn's h11 protocol, in homemail's event loop.

uvicorn's ``Server.serve()`` is not used: it takes over SIGINT/SIGTERM, which are homemail's. Each connection
gets uvicorn's protocol object directly, made by :func:`homemail.proxyproto.start_server` (so a PROXY header
from a trusted proxy names the client here too), and :class:`WebServer` gives ``server.py`` the close/wait
interface of an :class:`asyncio.Server`, letting open keep-alive connections finish their response.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from homemail import proxyproto
from homemail.web.app import make_app

if TYPE_CHECKING:
    from homemail.config import Endpoint
    from homemail.server import Services


FIRST_REQUEST_TIMEOUT = 30.0  # a connection that sends nothing is closed (uvicorn itself would wait forever)


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the client address from a PROXY header when there was one."""

    def __init__(self, *args: Any, client: tuple[str, int] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._proxied_client = client
        self._silence: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._proxied_client is not None:
            self.client = self._proxied_client
        self._silence = self.loop.call_later(FIRST_REQUEST_TIMEOUT, self._close_silent)

    def data_received(self, data: bytes) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        super().connection_lost(exc)

    def _close_silent(self) -> None:
        self._silence = None
        if not self.transport.is_closing():
            self.transport.close()


class WebServer(asyncio.AbstractServer):
    def __init__(
        self, server: asyncio.AbstractServer, state: ServerState, ticker: asyncio.Task[None]
    ) -> None:
        self.server = server
        self.state = state
        self.ticker = ticker

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(getattr(self.server, "sockets", ()) or ())

    def close(self) -> None:
        self.server.close()
        for connection in list(self.state.connections):
            connection.shutdown()  # idle ones close now, busy ones after their response
        self.ticker.cancel()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()
        while self.state.connections:
            await asyncio.sleep(0.05)
        with contextlib.suppress(asyncio.CancelledError):
            await self.ticker

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.server.get_loop()

    def is_serving(self) -> bool:
        return self.server.is_serving()

    async def start_serving(self) -> None:
        await self.server.start_serving()

    async def serve_forever(self) -> None:
        await self.server.serve_forever()


async def start_listener(services: Services, endpoint: Endpoint, mode: str) -> asyncio.AbstractServer:
    """Listen on ``endpoint``: "http", or "https" with the server's certificate."""
    if mode not in ("http", "https"):
        raise ValueError(f"unknown web listener mode {mode!r}")
    config = uvicorn.Config(
        make_app(services),
        host=endpoint.host,
        port=endpoint.port,
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,  # homemail's logging stays as it is
        access_log=False,
        proxy_headers=False,  # client addresses come from the PROXY protocol, not X-Forwarded-For
        server_header=False,
        timeout_keep_alive=5,
        limit_concurrency=1000,  # beyond it: 503
    )
    config.load()
    state = ServerState()

    async def tick() -> None:
        # What uvicorn's main loop would do: a fresh Date header once a second.
        while True:
            state.default_headers = [(b"date", email.utils.formatdate(usegmt=True).encode("ascii"))]
            await asyncio.sleep(1)

    def factory(client: tuple[str, int] | None) -> asyncio.BaseProtocol:
        return _Protocol(config=config, server_state=state, app_state={}, client=client)

    server = await proxyproto.start_server(
        services,
        mode,
        endpoint,
        factory,
        ssl=services.tls if mode == "https" else None,
        ssl_handshake_timeout=30.0,
    )
    return WebServer(server, state, asyncio.get_running_loop().create_task(tick()))
