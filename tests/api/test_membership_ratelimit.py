"""rc_room_creation, rc_joins, rc_joins_per_room and rc_invites (Synapse's keys), on both
engines: a request over a limit gets 429 M_LIMIT_EXCEEDED with retry_after_ms and changes
nothing; admins are not limited; a refused request costs no budget elsewhere.

Bad input tried: a fourth room, a join and an invite past each bucket, an invite refused by
one bucket (it must not be charged to the others), a re-join of a room the user is in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.test_media_api import user
from tests.api.test_rooms_api import V3, create_room

# Effectively no refill during a test: only the burst counts.
SLOW = 0.0001


def bucket(burst: int) -> dict[str, float]:
    return {"per_second": SLOW, "burst_count": burst}


# Many users registered from one address.
REGISTRATION = {"rc_registration": {"per_second": 100, "burst_count": 100}}


def assert_limited(resp: Any) -> None:
    assert resp.code == 429, resp.body
    assert resp.body["errcode"] == "M_LIMIT_EXCEEDED"
    assert resp.body["retry_after_ms"] > 0


async def joined(client: Client) -> list[str]:
    resp = await client.get(f"{V3}/joined_rooms")
    assert resp.code == 200
    return list(resp.body["joined_rooms"])


@pytest_twisted.ensureDeferred
async def test_room_creation_is_limited_per_user_but_not_for_admins(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(rc_room_creation=bucket(3), **REGISTRATION)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    admin = await user(server, "admin", admin=True)
    for _ in range(3):
        await create_room(alice)
    assert_limited(await alice.post(f"{V3}/createRoom", {"name": "one too many"}))
    assert len(await joined(alice)) == 3
    await create_room(bob)  # per user: Bob has his own budget
    for _ in range(5):
        await create_room(admin)
    assert len(await joined(admin)) == 5


@pytest_twisted.ensureDeferred
async def test_joins_per_user_and_per_room(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(
        rc_joins={"local": bucket(2), "remote": bucket(1)},
        rc_joins_per_room=bucket(3),
        **REGISTRATION,
    )
    owner = await user(server, "owner", admin=True)
    rooms = [await create_room(owner, preset="public_chat") for _ in range(3)]
    alice = await user(server, "alice")
    for room_id in rooms[:2]:
        assert (await alice.post(f"{V3}/join/{room_id}", {})).code == 200
    assert_limited(await alice.post(f"{V3}/rooms/{rooms[2]}/join", {}))
    assert rooms[2] not in await joined(alice)
    # Joining a room one is already in (a per-room profile change) is not counted.
    resp = await alice.put(
        f"{V3}/rooms/{rooms[0]}/state/m.room.member/@alice:test.local", {"membership": "join", "displayname": "A"}
    )
    assert resp.code == 200, resp.body

    # Three more users into one room: the room's own budget (3) runs out first.
    others = [await user(server, f"u{i}") for i in range(4)]
    for other in others[:2]:
        assert (await other.post(f"{V3}/join/{rooms[1]}", {})).code == 200  # Alice was the first
    assert_limited(await others[2].post(f"{V3}/join/{rooms[1]}", {}))
    assert (await others[2].post(f"{V3}/join/{rooms[2]}", {})).code == 200


@pytest_twisted.ensureDeferred
async def test_invites_per_issuer_per_room_and_per_invitee(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(
        rc_invites={"per_room": bucket(10), "per_user": bucket(2), "per_issuer": bucket(3)}, **REGISTRATION
    )
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    targets = [await user(server, f"t{i}") for i in range(4)]
    room = await create_room(alice)
    bobs_room = await create_room(bob)
    for i in range(3):
        resp = await alice.post(f"{V3}/rooms/{room}/invite", {"user_id": f"@t{i}:test.local"})
        assert resp.code == 200, resp.body
    assert_limited(await alice.post(f"{V3}/rooms/{room}/invite", {"user_id": "@t3:test.local"}))
    state = await alice.get(f"{V3}/rooms/{room}/state/m.room.member/@t3:test.local")
    assert state.code == 404  # no invite was sent

    # t0 already got one invite; a second from Bob is allowed, a third (per invitee) is not.
    assert (await bob.post(f"{V3}/rooms/{bobs_room}/invite", {"user_id": "@t0:test.local"})).code == 200
    other = await create_room(targets[3])
    assert_limited(
        await targets[3].put(f"{V3}/rooms/{other}/state/m.room.member/@t0:test.local", {"membership": "invite"})
    )
    # That refusal was not charged to the inviter: t3 can still invite twice elsewhere.
    for invitee in ("@t1:test.local", "@t2:test.local"):
        resp = await targets[3].post(f"{V3}/rooms/{other}/invite", {"user_id": invitee})
        assert resp.code == 200, resp.body


@pytest_twisted.ensureDeferred
async def test_user_directory_reports_and_presence_limits(make_server: Callable[..., HSFixture]) -> None:
    """rc_user_directory, rc_reports and rc_presence.per_user: per user, the refused request
    changes nothing; a malformed request is refused with 400 before it is counted."""
    server = make_server(
        rc_user_directory=bucket(2), rc_reports=bucket(1), rc_presence={"per_user": bucket(1)}, **REGISTRATION
    )
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    admin = await user(server, "admin", admin=True)
    search = f"{V3}/user_directory/search"
    assert (await alice.post(search, {"limit": 5})).code == 400  # no search_term: not counted
    for _ in range(2):
        assert (await alice.post(search, {"search_term": "bob"})).code == 200
    assert_limited(await alice.post(search, {"search_term": "bob"}))
    assert (await bob.post(search, {"search_term": "alice"})).code == 200
    for _ in range(3):
        assert (await admin.post(search, {"search_term": "alice"})).code == 200

    room = await create_room(alice)
    assert (await alice.post(f"{V3}/rooms/{room}/report", {})).code == 400  # no reason: not counted
    assert (await alice.post(f"{V3}/rooms/{room}/report", {"reason": "spam"})).code == 200
    assert_limited(await alice.post(f"{V3}/rooms/{room}/report", {"reason": "again"}))
    reports = await admin.get("/_synapse/admin/v1/event_reports")
    assert reports.code == 200 and reports.body["total"] == 1, reports.body

    status = f"{V3}/presence/@alice:test.local/status"
    assert (await alice.put(status, {"presence": "online", "status_msg": "first"})).code == 200
    assert_limited(await alice.put(status, {"presence": "unavailable", "status_msg": "second"}))
    shown = await alice.get(status)
    assert shown.code == 200 and shown.body["status_msg"] == "first", shown.body
