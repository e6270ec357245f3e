"""The running server: builds the store and shared services from the config, starts every configured listener
and background worker on one asyncio loop, and shuts them down gracefully on SIGTERM/SIGINT.

Each protocol module offers ``start_listener(services, endpoint, mode) -> asyncio.Server``; the table
:data:`LISTENERS` says which module serves which ``[listen]`` key. Background workers (the outbound queue,
dynamic-DNS checks) register in :data:`WORKERS` the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from homemail.auth import Authenticator
from homemail.config import Config, Endpoint
from homemail.store import Store

log = logging.getLogger("homemail")

# [listen] key -> (module, mode passed to its start_listener)
LISTENERS: dict[str, tuple[str, str]] = {
    "smtp": ("homemail.smtp.server", "mx"),
    "submission": ("homemail.smtp.server", "submission"),
    "submissions": ("homemail.smtp.server", "submissions"),
    "imap": ("homemail.imap.server", "plain"),
    "imaps": ("homemail.imap.server", "implicit"),
    "pop3": ("homemail.pop3.server", "plain"),
    "pop3s": ("homemail.pop3.server", "implicit"),
    "http": ("homemail.web.server", "http"),
    "https": ("homemail.web.server", "https"),
}

# Background workers: module paths offering ``start_worker(services) -> asyncio.Task | None``.
WORKERS: list[str] = ["homemail.delivery.queue", "homemail.doctor.dyndns"]


@dataclass
class Services:
    """What every listener and worker shares. One per process."""

    config: Config
    store: Store
    auth: Authenticator
    tls: ssl.SSLContext
    # Extra shared services set up by workers (the DNS resolver, the outbound queue...), by name.
    extras: dict[str, Any] = field(default_factory=dict)
    # Coroutines to run at shutdown, after the listeners close, before the store closes.
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def open_store(config: Config) -> Store:
    from homemail.store.sqlite import SQLiteStore

    return SQLiteStore(config.data_dir, fsync=config.storage.fsync)


async def build_services(config: Config) -> Services:
    from homemail import tls

    store = open_store(config)
    await store.open()
    cert, key = tls.certificate_paths(config)
    return Services(config, store, Authenticator(store, config.auth), tls.server_context(cert, key))


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.services: Services | None = None
        self.listeners: list[tuple[str, Endpoint, asyncio.AbstractServer]] = []
        self.workers: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        self.services = services = await build_services(self.config)
        for key, (module_name, mode) in LISTENERS.items():
            endpoint: Endpoint | None = getattr(self.config.listen, key)
            if endpoint is None:
                continue
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if e.name is None or not (module_name + ".").startswith(e.name + "."):
                    raise  # a missing dependency inside the module, not the module itself
                log.warning("listen.%s: this homemail has no %s server yet; not listening", key, key)
                continue
            server = await module.start_listener(services, endpoint, mode)
            self.listeners.append((key, endpoint, server))
            log.info("listening: %s on %s", key, endpoint)
        for module_name in WORKERS:
            task = await importlib.import_module(module_name).start_worker(services)
            if task is not None:
                self.workers.append(task)

    async def stop(self) -> None:
        for _, _, server in self.listeners:
            server.close()
        for task in self.workers:
            task.cancel()
        for task in self.workers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for _, _, server in self.listeners:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        if self.services:
            for hook in self.services.on_close:
                with contextlib.suppress(Exception):
                    await hook()
            await self.services.store.close()
        self._stopped.set()

    async def run(self) -> None:
        """Start, then serve until SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        print("homemail: ready", flush=True)
        await stop.wait()
        log.info("shutting down")
        await self.stop()


class _Formatter(logging.Formatter):
    """The standard format, with the time formatted once per second rather than once per line."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._text},{int(record.msecs):03d}"


def setup_logging(level: str) -> None:
    # A line per message is on the hot path: skip what the format does not show (the caller's file and line,
    # thread and process names). See "Optimization" in the logging documentation.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def serve(config: Config) -> None:
    setup_logging(config.log_level)
    try:
        import uvloop  # a dependency where it builds; the standard loop otherwise
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    # Run outside the except block: every traceback logged later would otherwise carry the ImportError.
    run(Server(config).run())
