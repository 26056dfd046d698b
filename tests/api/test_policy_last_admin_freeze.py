"""Rooms without an admin, ``manage_last_admin.mode: freeze``, over HTTP; both engines.

A frozen room is read-only: once its last admin has left, nobody remaining can change
its state, send messages, invite, kick or redact; members can still read it and leave."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from homeserver.config import ConfigError, parse_config
from tests.api.test_policy_rooms import POLICY, RULES, V3, create, state, user


def config(mode: str | None, promote_moderators: bool = False) -> dict[str, Any]:
    mla: dict[str, Any] = {"enabled": True, "promote_moderators": promote_moderators}
    if mode is not None:
        mla["mode"] = mode
    gp = {**POLICY["government_policy"], "manage_last_admin": mla}
    return {**POLICY, "government_policy": gp, "rc_registration": {"per_second": 10, "burst_count": 10}}


@pytest_twisted.ensureDeferred
async def test_last_admin_leaving_freezes_the_room(make_server: Any) -> None:
    """Tried after the freeze, as a moderator (50) and a member: renaming, sending a
    message, a reaction, changing the power levels, inviting, kicking, redacting (all
    403 M_FORBIDDEN); reading the history, updating one's own member event and leaving
    still work."""
    server = make_server(**config("freeze"))
    alice, bob, carol = [await user(server, n) for n in ("alice", "bob", "carol")]
    await user(server, "dan")
    room = await create(alice, invite=["@bob:test.local", "@carol:test.local"])
    for client in (bob, carol):
        assert (await client.post(f"{V3}/join/{room}", {})).code == 200
    pl = await state(alice, room, "m.room.power_levels")
    pl["users"]["@bob:test.local"] = 50
    assert (await alice.put(f"{V3}/rooms/{room}/state/m.room.power_levels/", pl)).code == 200
    sent = await carol.put(f"{V3}/rooms/{room}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi"})
    assert sent.code == 200, sent.body
    message_id = sent.body["event_id"]

    assert (await alice.post(f"{V3}/rooms/{room}/leave", {})).code == 200
    frozen = await state(bob, room, "m.room.power_levels")
    assert "@alice:test.local" not in frozen["users"]
    assert frozen["users"]["@bob:test.local"] == 50  # nobody was promoted
    for key in ("events_default", "state_default", "invite", "kick", "ban", "redact"):
        assert frozen[key] == 100, key
    assert set(frozen["events"].values()) == {100}
    assert frozen["users_default"] == 0

    refused = [
        await bob.put(f"{V3}/rooms/{room}/state/m.room.name/", {"name": "Mine now"}),
        await bob.put(f"{V3}/rooms/{room}/state/m.room.power_levels/", {**frozen, "users_default": 100}),
        await bob.put(f"{V3}/rooms/{room}/send/m.room.message/t2", {"msgtype": "m.text", "body": "?"}),
        await carol.put(f"{V3}/rooms/{room}/send/m.room.message/t3", {"msgtype": "m.text", "body": "?"}),
        await carol.put(
            f"{V3}/rooms/{room}/send/m.reaction/t4",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": message_id, "key": "+1"}},
        ),
        await bob.post(f"{V3}/rooms/{room}/invite", {"user_id": "@dan:test.local"}),
        await bob.post(f"{V3}/rooms/{room}/kick", {"user_id": "@carol:test.local"}),
        await bob.put(f"{V3}/rooms/{room}/redact/{message_id}/t5", {}),
    ]
    for resp in refused:
        assert resp.code == 403 and resp.body["errcode"] == "M_FORBIDDEN", resp.body

    history = await carol.get(f"{V3}/rooms/{room}/messages?dir=b&limit=50")
    assert history.code == 200
    assert any(e["event_id"] == message_id for e in history.body["chunk"])
    renamed_self = await carol.put(
        f"{V3}/rooms/{room}/state/m.room.member/@carol:test.local",
        {"membership": "join", "displayname": "Carol (left soon)"},
    )
    assert renamed_self.code == 200, renamed_self.body
    assert (await carol.post(f"{V3}/rooms/{room}/leave", {})).code == 200
    assert (await bob.post(f"{V3}/rooms/{room}/leave", {})).code == 200


@pytest_twisted.ensureDeferred
async def test_freeze_spares_rooms_keeping_an_admin(make_server: Any) -> None:
    """Tried: a member leaving and an admin leaving while another admin stays (no new
    power levels); then, with promote_moderators, the last admin leaving a room with a
    moderator (promoted, not frozen) and one without (frozen)."""
    server = make_server(**config("freeze", promote_moderators=True))
    alice, bob, carol = [await user(server, n) for n in ("alice", "bob", "carol")]
    room = await create(alice, preset="public_chat")
    for client in (bob, carol):
        assert (await client.post(f"{V3}/join/{room}", {})).code == 200
    pl = await state(alice, room, "m.room.power_levels")
    pl["users"]["@bob:test.local"] = 100
    assert (await alice.put(f"{V3}/rooms/{room}/state/m.room.power_levels/", pl)).code == 200
    assert (await carol.post(f"{V3}/rooms/{room}/leave", {})).code == 200
    assert (await alice.post(f"{V3}/rooms/{room}/leave", {})).code == 200  # bob stays admin
    assert await state(bob, room, "m.room.power_levels") == pl
    renamed = await bob.put(f"{V3}/rooms/{room}/state/m.room.name/", {"name": "Still open"})
    assert renamed.code == 200, renamed.body

    moderated = await create(bob, invite=["@carol:test.local"])
    assert (await carol.post(f"{V3}/join/{moderated}", {})).code == 200
    pl = await state(bob, moderated, "m.room.power_levels")
    pl["users"]["@carol:test.local"] = 50
    assert (await bob.put(f"{V3}/rooms/{moderated}/state/m.room.power_levels/", pl)).code == 200
    assert (await bob.post(f"{V3}/rooms/{moderated}/leave", {})).code == 200
    after = await state(carol, moderated, "m.room.power_levels")
    assert after["users"]["@carol:test.local"] == 100 and after["events_default"] == 0
    topic = await carol.put(f"{V3}/rooms/{moderated}/state/m.room.topic/", {"topic": "carol's"})
    assert topic.code == 200, topic.body

    unmoderated = await create(carol, invite=["@alice:test.local"])
    assert (await alice.post(f"{V3}/join/{unmoderated}", {})).code == 200
    assert (await carol.post(f"{V3}/rooms/{unmoderated}/leave", {})).code == 200
    frozen = await state(alice, unmoderated, "m.room.power_levels")
    assert frozen["events_default"] == 100 and frozen["users"].get("@alice:test.local", 0) == 0
    refused = await alice.put(f"{V3}/rooms/{unmoderated}/send/m.room.message/x", {"msgtype": "m.text", "body": "?"})
    assert refused.code == 403 and refused.body["errcode"] == "M_FORBIDDEN"


@pytest_twisted.ensureDeferred
async def test_promote_mode_is_the_default_and_unchanged(make_server: Any) -> None:
    """No mode key (existing configs) and mode: promote both hand an unrestricted room to
    its members of default level; nothing is frozen."""
    for n, mode in enumerate((None, "promote")):
        server = make_server(**config(mode))
        bob, carol = await user(server, f"bob{n}"), await user(server, f"carol{n}")
        room = await create(bob, invite=[f"@carol{n}:test.local"])
        assert (await bob.put(f"{V3}/rooms/{room}/state/{RULES}/", {"rule": "unrestricted"})).code == 200
        assert (await carol.post(f"{V3}/join/{room}", {})).code == 200
        assert (await bob.post(f"{V3}/rooms/{room}/leave", {})).code == 200
        promoted = await state(carol, room, "m.room.power_levels")
        assert promoted["users"][f"@carol{n}:test.local"] == 100, mode
        assert promoted["events_default"] == 0
        sent = await carol.put(f"{V3}/rooms/{room}/send/m.room.message/m", {"msgtype": "m.text", "body": "ok"})
        assert sent.code == 200, sent.body


def test_unknown_mode_is_a_config_error(tmp_path: Any) -> None:
    """Tried: mode: lock (not promote or freeze); the error names the key and the choices."""
    base = {"server_name": "test.local", "listeners": [{"port": 8008, "resources": [{"names": ["client"]}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config({**base, **config("lock")}, config_dir=str(tmp_path))
    assert "government_policy.manage_last_admin.mode" in str(err.value)
    assert '"freeze"' in str(err.value)


@pytest_twisted.ensureDeferred
async def test_last_admin_leaving_promotes_the_longest_joined_member(make_server: Any) -> None:
    """mode promote_oldest_member: only the member joined for the longest time becomes
    admin.  Carol joined first, but left and came back (her stay restarts); bob joined
    next and then changed his display name (join -> join does not restart it); dan
    joined last.  Bob is promoted, nobody else; the promoted admin can change state."""
    server = make_server(**config("promote_oldest_member"))
    alice, bob, carol, dan = [await user(server, n) for n in ("alice", "bob", "carol", "dan")]
    room = await create(alice, invite=["@bob:test.local", "@carol:test.local", "@dan:test.local"])
    assert (await carol.post(f"{V3}/join/{room}", {})).code == 200
    assert (await bob.post(f"{V3}/join/{room}", {})).code == 200
    assert (await bob.put(f"{V3}/profile/@bob:test.local/displayname", {"displayname": "Bob B"})).code == 200
    assert (await carol.post(f"{V3}/rooms/{room}/leave", {})).code == 200
    assert (await alice.post(f"{V3}/rooms/{room}/invite", {"user_id": "@carol:test.local"})).code == 200
    assert (await dan.post(f"{V3}/join/{room}", {})).code == 200
    assert (await carol.post(f"{V3}/join/{room}", {})).code == 200

    assert (await alice.post(f"{V3}/rooms/{room}/leave", {})).code == 200
    pl = await state(bob, room, "m.room.power_levels")
    assert pl["users"].get("@bob:test.local") == 100
    assert "@carol:test.local" not in pl["users"] and "@dan:test.local" not in pl["users"]
    assert (await bob.put(f"{V3}/rooms/{room}/state/m.room.name/", {"name": "Bob's now"})).code == 200
    refused = await dan.put(f"{V3}/rooms/{room}/state/m.room.name/", {"name": "Dan's"})
    assert refused.code == 403 and refused.body["errcode"] == "M_FORBIDDEN"
