"""Helpers for the import/export tests: a data folder with accounts made directly in the store, the CLI run
against it, and an account's whole content read back for comparisons."""

from __future__ import annotations

import asyncio
import functools
import itertools
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harness import to_toml
from homemail.store import DeliveryTarget
from homemail.store.sqlite import SQLiteStore

DOMAIN = "example.test"
_counter = itertools.count(1)


@functools.cache
def _hashes() -> tuple[str, str]:
    from homemail.auth import hash_password

    return hash_password("password")


@dataclass(frozen=True)
class Stored:
    data: bytes
    flags: frozenset[str]
    internaldate: datetime

    @property
    def when(self) -> float:
        return self.internaldate.timestamp()


class Home:
    """A data folder and its config file; the CLI runs against it as a subprocess."""

    def __init__(self, root: Path, fsync: bool = False) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.config = root / "homemail.toml"
        self.config.write_text(to_toml({"data_dir": str(self.data_dir), "storage": {"fsync": fsync}}))
        asyncio.run(self._run(self._add_domain))

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        store = SQLiteStore(self.data_dir, fsync=False)
        await store.open()
        try:
            return await fn(store, *args)
        finally:
            await store.close()

    @staticmethod
    async def _add_domain(store: SQLiteStore) -> None:
        if DOMAIN not in {d.name for d in await store.list_domains()}:
            await store.add_domain(DOMAIN)

    def cli(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "homemail", "--config", str(self.config), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert r.returncode == 0, f"homemail {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "homemail", "--config", str(self.config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def new_account(self, name: str = "user") -> str:
        address = f"{name}{next(_counter)}@{DOMAIN}"

        async def add(store: SQLiteStore) -> None:
            await store.add_account(address, *_hashes())

        asyncio.run(self._run(add))
        return address

    def state(self, address: str) -> dict[str, list[Stored]]:
        """Every folder of the account (empty ones too) with its messages in UID order."""

        async def read(store: SQLiteStore) -> dict[str, list[Stored]]:
            account = await store.get_account(address)
            assert account is not None
            out: dict[str, list[Stored]] = {}
            for mb in await store.list_mailboxes(account.id):
                out[mb.name] = [
                    Stored(await store.read_blob(m.blob_id), m.flags, m.internaldate)
                    for m in await store.messages(account.id, mb.id)
                ]
            return out

        return asyncio.run(self._run(read))

    def fill(self, address: str, folders: dict[str, list[tuple[bytes, frozenset[str], datetime]]]) -> None:
        """Put messages into folders (made as needed) with their flags and internal dates."""

        async def put(store: SQLiteStore) -> None:
            account = await store.get_account(address)
            assert account is not None
            for name, messages in folders.items():
                mb = await store.get_mailbox(account.id, name) or await store.create_mailbox(account.id, name)
                for data, flags, when in messages:
                    await store.append(account.id, mb.id, data, flags, when)

        asyncio.run(self._run(put))

    def deliver(self, address: str, data: bytes) -> None:
        async def put(store: SQLiteStore) -> None:
            account = await store.get_account(address)
            assert account is not None
            await store.deliver(data, [DeliveryTarget(account.id)])

        asyncio.run(self._run(put))

    def subscriptions(self, address: str) -> list[str]:
        async def read(store: SQLiteStore) -> list[str]:
            account = await store.get_account(address)
            assert account is not None
            return sorted(await store.list_subscriptions(account.id))

        return asyncio.run(self._run(read))


def message_ids(messages: list[Stored]) -> list[str]:
    out = []
    for m in messages:
        for line in m.data.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out.append(line.split(b":", 1)[1].strip().decode())
                break
    return out
