"""Room upgrades keep the room access rule (as Tchap does); both engines."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.api.test_policy_rooms import POLICY, RULES, V3, create, state, user


@pytest_twisted.ensureDeferred
async def test_upgrade_carries_the_access_rule_over(make_server: Any) -> None:
    """Tried: a member without power creating a room that names an unrestricted room as its
    predecessor (gets an ordinary restricted room, not the old rule)."""
    server = make_server(**POLICY)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await create(alice, invite=["@bob:test.local"])
    assert (await bob.post(f"{V3}/join/{room}", {})).code == 200
    opened = await alice.put(f"{V3}/rooms/{room}/state/{RULES}/", {"rule": "unrestricted"})
    assert opened.code == 200, opened.body

    sneaky = await create(bob, creation_content={"predecessor": {"room_id": room}})
    assert (await state(bob, sneaky, RULES))["rule"] == "restricted"

    upgraded = await alice.post(f"{V3}/rooms/{room}/upgrade", {"new_version": "12"})
    assert upgraded.code == 200, upgraded.body
    new_room = upgraded.body["replacement_room"]
    assert (await state(alice, new_room, RULES))["rule"] == "unrestricted"
    # the old room's power levels came along (Tchap's, not the defaults reset)
    pl = await state(alice, new_room, "m.room.power_levels")
    assert pl["state_default"] == 100 and pl["invite"] == 50
    # and the rule still works: back to restricted is refused in the new room too
    back = await alice.put(f"{V3}/rooms/{new_room}/state/{RULES}/", {"rule": "restricted"})
    assert back.code == 403 and "cannot change" in back.body["error"]

    dm = await create(alice, is_direct=True, invite=["@bob:test.local"])
    dm_upgraded = await alice.post(f"{V3}/rooms/{dm}/upgrade", {"new_version": "12"})
    assert dm_upgraded.code == 200, dm_upgraded.body
    new_dm = dm_upgraded.body["replacement_room"]
    assert (await state(alice, new_dm, RULES))["rule"] == "direct"
    named = await alice.put(f"{V3}/rooms/{new_dm}/state/m.room.name/", {"name": "Secret"})
    assert named.code == 403 and "direct chat" in named.body["error"]
