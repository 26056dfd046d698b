"""Rooms without an admin (Tchap's manage-last-admin) over HTTP; both engines."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.api.test_policy_rooms import POLICY, RULES, V3, create, state, user


def config(promote_moderators: bool) -> dict[str, Any]:
    gp = {
        **POLICY["government_policy"],
        "manage_last_admin": {"enabled": True, "promote_moderators": promote_moderators},
    }
    return {**POLICY, "government_policy": gp, "rc_registration": {"per_second": 10, "burst_count": 10}}


@pytest_twisted.ensureDeferred
async def test_last_admin_leaving_makes_everyone_admin(make_server: Any) -> None:
    """Tried: a non-admin leaving, and an admin leaving while another admin stays (nothing
    changes); then the last admin leaving a restricted room (users_default becomes 100)."""
    server = make_server(**config(False))
    alice, bob, carol, dan = [await user(server, n) for n in ("alice", "bob", "carol", "dan")]
    room = await create(alice, preset="public_chat")
    for client in (bob, carol, dan):
        assert (await client.post(f"{V3}/join/{room}", {})).code == 200
    pl = await state(alice, room, "m.room.power_levels")
    pl["users"]["@dan:test.local"] = 100
    assert (await alice.put(f"{V3}/rooms/{room}/state/m.room.power_levels/", pl)).code == 200
    assert (await carol.post(f"{V3}/rooms/{room}/leave", {})).code == 200
    assert (await dan.post(f"{V3}/rooms/{room}/leave", {})).code == 200  # alice stays admin
    assert (await state(alice, room, "m.room.power_levels")) == pl

    assert (await alice.post(f"{V3}/rooms/{room}/leave", {})).code == 200
    after = await state(bob, room, "m.room.power_levels")
    assert after["users_default"] == 100
    renamed = await bob.put(f"{V3}/rooms/{room}/state/m.room.name/", {"name": "Still alive"})
    assert renamed.code == 200, renamed.body


@pytest_twisted.ensureDeferred
async def test_last_admin_promotes_moderators_or_members(make_server: Any) -> None:
    """promote_moderators raises the highest remaining level; in an unrestricted room with
    no moderator the members of default level are raised, external users never."""
    server = make_server(**config(True))
    alice, bob, carol = [await user(server, n) for n in ("alice", "bob", "carol")]
    room = await create(alice, invite=["@bob:test.local", "@carol:test.local"])
    for client in (bob, carol):
        assert (await client.post(f"{V3}/join/{room}", {})).code == 200
    pl = await state(alice, room, "m.room.power_levels")
    pl["users"]["@bob:test.local"] = 50
    assert (await alice.put(f"{V3}/rooms/{room}/state/m.room.power_levels/", pl)).code == 200
    assert (await alice.post(f"{V3}/rooms/{room}/leave", {})).code == 200
    after = await state(bob, room, "m.room.power_levels")
    assert after["users"]["@bob:test.local"] == 100 and "@carol:test.local" not in after["users"]
    assert after["users_default"] == 0

    other = await create(bob, invite=["@carol:test.local"])
    assert (await bob.put(f"{V3}/rooms/{other}/state/{RULES}/", {"rule": "unrestricted"})).code == 200
    assert (await carol.post(f"{V3}/join/{other}", {})).code == 200
    assert (await bob.post(f"{V3}/rooms/{other}/leave", {})).code == 200
    promoted = await state(carol, other, "m.room.power_levels")
    assert promoted["users"]["@carol:test.local"] == 100 and promoted["users_default"] == 0
