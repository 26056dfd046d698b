"""Federation that survives: three of our servers in one room, a peer that goes down, a
restart of our server with a non-empty outbound queue.

* Three of our CLI-started servers (``127.0.0.1``, ``127.0.0.2``, ``127.0.0.3``, the middle
  one on PostgreSQL) allowing each other: a room on the first, joined from the other two,
  and every message reaches every server, in order.
* Our server (both engines) and a real Synapse: Synapse is stopped, our users send messages
  (and a read receipt) meanwhile, Synapse is started again on the same port and database:
  its user sees everything it missed, in order, without anyone on Synapse doing anything.
* Synapse stopped, our users send, our server is stopped (SIGTERM) with those events still
  queued, Synapse is started, then our server: nothing is lost, the order is kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.interop import harness as h
from tests.interop.conftest import ENGINE_PARAMS
from tests.interop.federation_scenarios import (
    User,
    bodies,
    ephemeral,
    membership_in,
    start_again,
    start_ours,
    start_theirs,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]


def _received_in_order(user: User, room_id: str, expected: list[str], what: str, deadline: float = 60.0) -> None:
    """Wait until ``user``'s /sync has shown all of ``expected`` in ``room_id``; check the order."""
    seen: list[str] = []

    def all_there(body: dict[str, Any]) -> bool:
        seen.extend(bodies(body, room_id))
        return all(text in seen for text in expected)

    user.sync_until(all_there, what, deadline=deadline)
    shown = [text for text in seen if text in expected]
    assert shown == expected, f"{what}: {user.user_id} saw them in the order {shown}"


def test_three_of_our_servers_in_one_room(servers: h.ServerPool, tmp_path: Path) -> None:
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    ports = [h.free_port(host) for host in hosts]
    names = [f"{host}:{port}" for host, port in zip(hosts, ports, strict=True)]
    started = []
    for index, (host, port) in enumerate(zip(hosts, ports, strict=True)):
        others = [name for name in names if name != names[index]]
        engine = "postgres" if index == 1 else "sqlite"
        directory = tmp_path / f"cert{index}"
        directory.mkdir()
        started.append(start_ours(servers, directory, host=host, engine=engine, allow=others, port=port))
    users = [User(server, f"user{index}") for index, server in enumerate(started)]
    for user in users:
        user.sync_until(lambda b: True, "an initial sync")
    first, second, third = users

    room_id = first.ok("POST", "/createRoom", {"preset": "public_chat", "name": "trois serveurs"})["room_id"]
    for joiner in (second, third):
        joiner.ok("POST", f"/join/{quote(room_id)}?via={quote(names[0])}", {})
    for watcher in users:
        for joiner in (second, third):
            watcher.wait_joined(room_id, joiner.user_id, f"{joiner.user_id}'s join at {watcher.server.server_name}")

    expected = []
    for round_ in range(2):
        for user in users:
            text = f"round {round_} from {user.server.server_name}"
            user.send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
            expected.append(text)
            time.sleep(0.2)  # each message after the previous one reached its sender's timeline
    for user in users:
        _received_in_order(user, room_id, expected, f"every message at {user.server.server_name}")
    # The third server joined through the first, yet talks to the second directly: the
    # second's /state shows the third's user as a member.
    members = second.ok("GET", f"/rooms/{quote(room_id)}/joined_members")["joined"]
    assert set(members) == {user.user_id for user in users}, members

    # The second leaves and comes back through the third server (not the room's creator),
    # whose resident side then serves make_join/send_join for a room born elsewhere.
    second.ok("POST", f"/rooms/{quote(room_id)}/leave", {})
    for watcher in (first, third):
        watcher.sync_until(lambda b: membership_in(b, room_id, second.user_id) == "leave", "the second's leave")
    while_away = third.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "while the second is away"})
    first.wait_event_id(room_id, while_away, "the third's message while the second is away")
    second.ok("POST", f"/join/{quote(room_id)}?via={quote(names[2])}", {})
    for watcher in (first, third):
        watcher.sync_until(lambda b: membership_in(b, room_id, second.user_id) == "join", "the second's re-join")
    renamed = first.state(room_id, "m.room.name", {"name": "encore trois"})
    for user in (second, third):
        user.wait_event_id(room_id, renamed, f"the new name at {user.server.server_name}")
        assert user.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.name/") == {"name": "encore trois"}
    last = second.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "back through the third"})
    for user in (first, third):
        user.wait_event_id(room_id, last, f"the second's message at {user.server.server_name}")


class Pair:
    def __init__(self, ours: h.RunningServer, theirs: h.RunningServer, engine: str) -> None:
        self.ours, self.theirs = ours, theirs
        self.alice = User(ours, "alice")
        self.sam = User(theirs, f"sam_{engine}")
        self.alice.sync_until(lambda b: True, "an initial sync")
        self.sam.sync_until(lambda b: True, "an initial sync")

    def shared_room(self) -> str:
        room_id = str(self.alice.ok("POST", "/createRoom", {"preset": "public_chat"})["room_id"])
        self.sam.ok("POST", f"/join/{quote(room_id)}?via={quote(self.ours.server_name)}", {})
        self.sam.wait_joined(room_id, self.sam.user_id, "sam's join")
        self.alice.wait_joined(room_id, self.sam.user_id, "sam's join at our server")
        return room_id


@pytest.fixture(scope="module")
def our_ports() -> dict[str, int]:
    return {engine: h.free_port("127.0.0.1") for engine in h.ENGINES}


@pytest.fixture(scope="module")
def theirs(module_servers: h.ServerPool, our_ports: dict[str, int]) -> h.RunningServer:
    return start_theirs(module_servers, allow=[f"127.0.0.1:{port}" for port in our_ports.values()])


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def pair(
    request: pytest.FixtureRequest,
    module_servers: h.ServerPool,
    tmp_path_factory: pytest.TempPathFactory,
    theirs: h.RunningServer,
    our_ports: dict[str, int],
) -> Iterator[Pair]:
    engine = str(request.param)
    ours = start_ours(
        module_servers,
        tmp_path_factory.mktemp("cert"),
        engine=engine,
        allow=[theirs.server_name],
        port=our_ports[engine],
    )
    yield Pair(ours, theirs, engine)
    if not theirs.is_running():  # a failed test left it down
        start_again(theirs)
    problem = ours.stop()
    assert problem is None, problem


def _stop(server: h.RunningServer) -> None:
    problem = server.stop()
    assert problem is None, problem


def test_peer_down_then_back_gets_everything_in_order(pair: Pair) -> None:
    room_id = pair.shared_room()
    last = pair.sam.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "before the outage"})
    pair.alice.wait_event_id(room_id, last, "sam's message before the outage")

    _stop(pair.theirs)
    missed = [f"missed {n}" for n in range(52)]  # more than one transaction
    for text in missed:
        pair.alice.send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
    pair.alice.ok("POST", f"/rooms/{quote(room_id)}/receipt/m.read/{quote(last)}", {})
    time.sleep(2)  # our server tries, fails, and backs off
    start_again(pair.theirs)

    _received_in_order(pair.sam, room_id, missed, "what sam missed while Synapse was down")

    def receipt(body: dict[str, Any]) -> bool:
        return any(
            pair.alice.user_id in e["content"].get(last, {}).get("m.read", {})
            for e in ephemeral(body, room_id, "m.receipt")
        )

    if not any(receipt(body) for body in pair.sam.seen):
        pair.sam.sync_until(receipt, "alice's read receipt sent while Synapse was down")


def test_our_restart_with_a_non_empty_queue_loses_nothing(pair: Pair) -> None:
    room_id = pair.shared_room()
    last = pair.sam.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "before"})
    pair.alice.wait_event_id(room_id, last, "sam's message")

    _stop(pair.theirs)
    queued = [f"queued {n}" for n in range(52)]
    for text in queued:
        pair.alice.send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
    pair.alice.ok("POST", f"/rooms/{quote(room_id)}/receipt/m.read/{quote(last)}", {})
    _stop(pair.ours)  # with those still queued for Synapse
    start_again(pair.theirs)
    start_again(pair.ours)

    _received_in_order(pair.sam, room_id, queued, "what our server had queued when it stopped")

    def receipt(body: dict[str, Any]) -> bool:
        return any(
            pair.alice.user_id in e["content"].get(last, {}).get("m.read", {})
            for e in ephemeral(body, room_id, "m.receipt")
        )

    if not any(receipt(body) for body in pair.sam.seen):
        pair.sam.sync_until(receipt, "alice's read receipt queued across our restart")
    after = pair.alice.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "after the restarts"})
    pair.sam.wait_event_id(room_id, after, "a message after both restarts")


def test_synapse_catches_us_up_after_our_outage(pair: Pair) -> None:
    """Our server is down while Synapse's user talks; once ours is back, Synapse's retries
    deliver what it queued, and /messages at our server shows all of it, in order."""
    room_id = pair.shared_room()
    _stop(pair.ours)
    missed = [f"while ours was down {n}" for n in range(15)]
    for text in missed:
        pair.sam.send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
    start_again(pair.ours)
    # Synapse retries a destination when it hears from it: our user speaks first.
    hello = pair.alice.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "I am back"})
    pair.sam.wait_event_id(room_id, hello, "our message after our restart")

    def shown() -> list[str]:
        page = pair.alice.ok("GET", f"/rooms/{quote(room_id)}/messages?dir=b&limit=50")
        return [e["content"]["body"] for e in reversed(page["chunk"]) if e["type"] == "m.room.message"]

    deadline = time.monotonic() + 60
    while [t for t in shown() if t in missed] != missed and time.monotonic() < deadline:
        time.sleep(1)
    assert [t for t in shown() if t in missed] == missed, shown()
