"""IP warm-up against loopback peers: knot maps gmail.test and workspace.test to MX names under google.test, and
hotmail.test to one under outlook.test; ``[warmup] providers`` makes those Google and Microsoft. Homemail A
(NET.20) starts the ramp today at 3 recipients a day per provider.

- Google's cap is shared by both domains; the fourth message waits for tomorrow (queued, not counted as an
  attempt, the reason as last_error), and still waits after a restart (the count lives in the store).
- Microsoft's MX answers 421 after two messages: the ramp brakes (no more today, half the cap) and the message
  waits with the reason.
- With ``overflow = "relay:smart"``, what is over the cap goes through the relay instead.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deliverability_helpers import SmartRelay, start_relay
from delivery_helpers import Homemail, Remote, loopback_block, marker, submit, wait_for

from dnsserver import KnotServer
from harness import to_toml

NET = loopback_block()
A_IP, RELAY_IP, GOOGLE_IP, MS_IP = NET + "20", NET + "22", NET + "30", NET + "31"
ZONES = {
    "one.test": ["@ MX 10 mx", f"mx A {A_IP}"],
    "gmail.test": ["@ MX 5 gmail-smtp-in.l.google.test."],
    "workspace.test": ["@ MX 1 aspmx.l.google.test."],
    "google.test": [f"gmail-smtp-in.l A {GOOGLE_IP}", f"aspmx.l A {GOOGLE_IP}"],
    "hotmail.test": ["@ MX 10 hotmail-test.mail.protection.outlook.test."],
    "outlook.test": [f"hotmail-test.mail.protection A {MS_IP}"],
    "relay.test": [f"@ A {RELAY_IP}"],
}
ALICE = "alice@one.test"


def tomorrow() -> float:
    day = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


class World:
    def __init__(self, a: Homemail, relay: SmartRelay, google: Remote, ms: Remote) -> None:
        self.a, self.relay, self.google, self.ms = a, relay, google, ms

    def status(self) -> dict[str, dict[str, Any]]:
        out = json.loads(self.a.cli("warmup", "status", "--json").stdout)
        assert out["enabled"] is True
        return {p["provider"]: p for p in out["providers"]}

    def restart(self, **warmup: Any) -> None:
        self.a.stop()
        self.a.config["warmup"].update(warmup)
        self.a.config_path.write_text(to_toml(self.a.config))
        self.a.start()


@pytest.fixture(scope="module")
def world(knot: KnotServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work: Path = tmp_path_factory.mktemp("warmup")
    relay, relay_table = start_relay(RELAY_IP, work)
    google = Remote(GOOGLE_IP).start()
    accepted = 0
    lock = threading.Lock()

    def rate_limit(address: str) -> str | None:
        nonlocal accepted
        with lock:
            accepted += 1
            if accepted > 2:
                return "421 4.7.0 Too many messages from your IP, try again later"
        return None

    ms = Remote(MS_IP, rcpt_reply=rate_limit).start()
    a = Homemail(
        A_IP,
        "mx.one.test",
        knot.nameserver,
        config={
            "relay": [relay_table],
            "warmup": {
                "enabled": True,
                "start": dt.datetime.now(dt.UTC).date().isoformat(),
                "initial": 3,
                "growth": 2,
                "min_sample": 50,
                "providers": {"google": ["*.google.test"], "microsoft": ["*.outlook.test"]},
            },
        },
    )
    a.provision([ALICE])
    a.start()
    try:
        yield World(a, relay, google, ms)
    finally:
        a.stop()
        ms.stop()
        google.stop()
        relay.stop()


def test_cap_per_provider_waits_and_survives_a_restart(world: World) -> None:
    marks = [marker() for _ in range(4)]
    for mark, to in zip(
        marks, ["ann@gmail.test", "bob@workspace.test", "cid@gmail.test", "dan@workspace.test"], strict=True
    ):
        submit(world.a, ALICE, [to], mark)
    # Three go out; one waits (which one depends on the order the attempts ran).
    wait_for(lambda: sum(bool(world.google.with_marker(m)) for m in marks) == 3, message="three at Google")
    (waiting,) = wait_for(
        lambda: [r for m in marks for r in world.a.queued_with(m) if "Warm-up" in r["last_error"]],
        message="the fourth message waiting",
    )
    assert "today's 3 messages to google are used" in waiting["last_error"]
    assert waiting["attempts"] == 0 and waiting["next_attempt"] >= tomorrow() - 1
    google = world.status()["google"]
    assert (google["cap"], google["used"], google["sent"], google["health"]) == (3, 3, 3, "ok")
    assert world.status()["microsoft"]["used"] == 0

    world.restart()
    world.a.cli("queue", "retry")
    wait_for(
        lambda: (rows := world.a.queue()) and all(r["next_attempt"] >= tomorrow() - 1 for r in rows),
        message="the retried message back to waiting",
    )
    assert sum(bool(world.google.with_marker(m)) for m in marks) == 3
    assert world.status()["google"]["used"] == 3
    text = world.a.cli("warmup", "status").stdout
    assert "google" in text and "microsoft" in text and "apple" in text  # the built-in table, as configured


def test_rate_limit_brakes_the_ramp(world: World) -> None:
    marks = [marker() for _ in range(3)]
    for mark in marks:
        submit(world.a, ALICE, ["eve@hotmail.test"], mark)
        # One at a time: the brake is about the third.
        wait_for(lambda mark=mark: world.ms.with_marker(mark) or world.a.queued_with(mark), message=mark)
    assert [bool(world.ms.with_marker(m)) for m in marks] == [True, True, False]
    (row,) = wait_for(
        lambda: [r for r in world.a.queued_with(marks[2]) if "slow down" in r["last_error"]],
        message="the third message held by the brake",
    )
    assert "microsoft asked us to slow down (421 4.7.0 Too many messages" in row["last_error"]
    assert row["attempts"] == 1 and row["next_attempt"] >= tomorrow() - 1
    ms = world.status()["microsoft"]
    assert ms["cap"] == 1 and ms["throttled"] == 1 and ms["deferred"] == 1 and ms["sent"] == 2
    assert ms["health"].startswith("braked: 421 4.7.0")


def test_overflow_goes_through_the_relay(world: World) -> None:
    world.restart(overflow="relay:smart")
    mark = marker()
    submit(world.a, ALICE, ["fay@gmail.test"], mark)
    wait_for(lambda: world.relay.with_marker(mark), message="the new message at the relay")
    world.a.cli("queue", "retry")
    wait_for(lambda: not world.a.queue(), timeout=30, message="the waiting messages through the relay")
    assert len(world.relay.received) == 3  # fay's, the Google one waiting since the first test, eve's third
    assert not world.google.with_marker(mark) and world.status()["google"]["used"] == 3
    assert "warm-up overflow to google goes through relay smart" in world.a.log()
    assert time.time() < tomorrow()  # (the test did not run across midnight UTC)
