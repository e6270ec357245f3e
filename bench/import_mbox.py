"""Import speed: a generated Gmail Takeout-style mbox of N messages (default 10,000) into a fresh account, through
the same code as ``homemail import``. Prints messages/s (and MB/s, copies, CPU time per message).

Usage: .venv/bin/python bench/import_mbox.py [--count N] [--no-fsync] [--batch-size B] [--repeat R] [--keep DIR]
                                             [--per-message]

The store keeps its default durability (each message file fsync'd, one commit per batch with the WAL fsync'd)
unless --no-fsync. The mbox is written to a temporary folder first; its writing is not timed.

--per-message compares with what the importer would do without Store.import_messages: one Store.append per copy,
500 of them in flight so the writer's group commit still batches them (no import log, no shared files).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from homemail.store.sqlite import SQLiteStore
from homemail.transfer.importer import MboxSource, import_mail

LABELS = ["Inbox", "Sent", "Work", "Work/Projects", "Family", "Receipts/2023", "Travel", "Newsletters"]
STATE = ["Opened", "Unread", "Starred", "Important", "Category Updates"]
WORDS = [
    "the",
    "quarterly",
    "report",
    "figures",
    "attached",
    "please",
    "review",
    "section",
    "before",
    "friday",
    "call",
    "from",
    "meeting",
]


def generate(path: Path, count: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    with open(path, "wb") as out:
        for i in range(count):
            labels = rng.sample(LABELS, rng.choice([1, 1, 1, 2, 3])) + rng.sample(STATE, rng.randint(0, 2))
            lines = []
            for _ in range(rng.randint(20, 120)):
                line = " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))
                if rng.random() < 0.02:
                    line = "From " + line  # quoted as >From in the mbox
                lines.append(line)
            body = "\n".join(lines)
            body = body.replace("\nFrom ", "\n>From ")
            head = (
                f"From 17{i:017d}@xxx Wed Aug 02 14:{i % 60:02d}:03 +0000 2023\n"
                f"X-GM-THRID: {1700000000000000000 + i}\n"
                f"X-Gmail-Labels: {','.join(labels)}\n"
                f"Delivered-To: alice@example.test\n"
                f"Received: by 2002:a05:6a10:1234 with SMTP id abc{i}; Wed, 2 Aug 2023 07:34:03 -0700 (PDT)\n"
                f"From: Sender {i % 97} <sender{i % 97}@example.org>\n"
                f"To: Alice <alice@example.test>\n"
                f"Subject: Message number {i} about {rng.choice(WORDS)}\n"
                f"Date: Wed, 2 Aug 2023 14:{i % 60:02d}:03 +0000\n"
                f"Message-ID: <{i}.{seed}@example.org>\n"
                f"MIME-Version: 1.0\n"
                f"Content-Type: text/plain; charset=utf-8\n\n"
            )
            out.write(head.encode() + body.encode() + b"\n\n")
    return path.stat().st_size


async def run(
    data_dir: Path, mbox: Path, fsync: bool, batch_size: int, per_message: bool = False
) -> tuple[int, int, float, float]:
    store = SQLiteStore(data_dir, fsync=fsync)
    await store.open()
    try:
        await store.add_domain("example.test")
        await store.add_account("alice@example.test", "x")
        source = MboxSource(mbox)
        cpu, wall = time.process_time(), time.perf_counter()
        if per_message:
            imported, copies = await append_each(store, source)
        else:
            summary = await import_mail(store, "alice@example.test", source, batch_size)
            imported, copies = summary.imported, summary.copies
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await store.close()
    return imported, copies, wall, cpu


async def append_each(store: SQLiteStore, source: MboxSource) -> tuple[int, int]:
    account = await store.get_account("alice@example.test")
    assert account is not None
    ids: dict[str, int] = {}
    in_flight: set[asyncio.Task[tuple[int, int]]] = set()
    imported = copies = 0
    async for batch in source.batches(set(), 500):
        for item in batch:
            imported += 1
            for spec in item.folders:
                if spec not in ids:
                    mb = await store.get_mailbox(account.id, spec)
                    mb = mb or await store.create_mailbox(account.id, spec.lstrip("\\"), None)
                    ids[spec] = mb.id
                copies += 1
                in_flight.add(
                    asyncio.ensure_future(
                        store.append(account.id, ids[spec], item.data, item.flags, item.internaldate)
                    )
                )
                if len(in_flight) >= 500:
                    _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*in_flight)
    return imported, copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument(
        "--per-message", action="store_true", help="Store.append per copy instead, to compare"
    )
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="homemail-import-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        mbox = work / "takeout.mbox"
        size = generate(mbox, args.count)
        how = "one Store.append per copy" if args.per_message else f"batches of {args.batch_size}"
        print(f"{args.count} messages, {size / 1e6:.1f} MB, fsync {'off' if args.no_fsync else 'on'}, {how}")
        for r in range(args.repeat):
            data_dir = work / f"data{r}"
            shutil.rmtree(data_dir, ignore_errors=True)
            imported, copies, wall, cpu = asyncio.run(
                run(data_dir, mbox, not args.no_fsync, args.batch_size, args.per_message)
            )
            assert imported == args.count, imported
            print(
                f"run {r + 1}: {imported / wall:,.0f} messages/s ({size / wall / 1e6:.1f} MB/s, {copies} copies,"
                f" {wall:.2f} s, CPU {cpu / imported * 1e6:.0f} µs/message)"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
