"""Helpers for the import/export tests: a data folder with accounts made directly in the store, the CLI run
against it, and an account's whole content read back for comparisons."""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harness import password_hashes, to_toml, with_store
from homemail.store import DeliveryTarget
from homemail.store.sqlite import SQLiteStore
from processes import homemail_cli, homemail_command

DOMAIN = "example.test"
_counter = itertools.count(1)


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
        with_store(self.data_dir, self._add_domain)

    @staticmethod
    async def _add_domain(store: SQLiteStore) -> None:
        if DOMAIN not in {d.name for d in await store.list_domains()}:
            await store.add_domain(DOMAIN)

    def cli(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        r = homemail_cli(self.config, *args, input=input, timeout=timeout)
        if check:
            assert r.returncode == 0, f"homemail {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            homemail_command(self.config, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def new_account(self, name: str = "user") -> str:
        address = f"{name}{next(_counter)}@{DOMAIN}"

        async def add(store: SQLiteStore) -> None:
            await store.add_account(address, *password_hashes())

        with_store(self.data_dir, add)
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

        return with_store(self.data_dir, read)

    def fill(self, address: str, folders: dict[str, list[tuple[bytes, frozenset[str], datetime]]]) -> None:
        """Put messages into folders (made as needed) with their flags and internal dates."""

        async def put(store: SQLiteStore) -> None:
            account = await store.get_account(address)
            assert account is not None
            for name, messages in folders.items():
                mb = await store.get_mailbox(account.id, name) or await store.create_mailbox(account.id, name)
                for data, flags, when in messages:
                    await store.append(account.id, mb.id, data, flags, when)

        with_store(self.data_dir, put)

    def deliver(self, address: str, data: bytes) -> None:
        async def put(store: SQLiteStore) -> None:
            account = await store.get_account(address)
            assert account is not None
            await store.deliver(data, [DeliveryTarget(account.id)])

        with_store(self.data_dir, put)

    def subscriptions(self, address: str) -> list[str]:
        async def read(store: SQLiteStore) -> list[str]:
            account = await store.get_account(address)
            assert account is not None
            return sorted(await store.list_subscriptions(account.id))

        return with_store(self.data_dir, read)


def message_ids(messages: list[Stored]) -> list[str]:
    out = []
    for m in messages:
        for line in m.data.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out.append(line.split(b":", 1)[1].strip().decode())
                break
    return out
