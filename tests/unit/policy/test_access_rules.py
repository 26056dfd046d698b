"""Room access rules and invite rules over plain events (no server): each rule with the
event it refuses and the one it lets through."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest_twisted

from homeserver.config.policy import DomainRuleCheckerConfig, ExternalUsersConfig
from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.services.policy.access_rules import ACCESS_RULES_TYPE, RoomAccessRules
from homeserver.services.policy.invites import DomainRuleChecker, ExternalUserRules
from homeserver.services.rooms import CreateRoomRequest

RV = KNOWN_ROOM_VERSIONS["10"]
ROOM = "!room:agent.example"
AGENT = "@alice:agent.example"
AGENT2 = "@bob:agent.example"
EXTERNAL = "@ext:e.example"
_ids = itertools.count()


class Room:
    """A room's state as events, and the StateMap (key -> event ID) the checks take."""

    def __init__(self) -> None:
        self.events: dict[str, Event] = {}
        self.state: dict[tuple[str, str], str] = {}
        self.published = False
        self.admins: set[str] = set()
        self.add("m.room.create", "", {"room_version": "10", "creator": AGENT})

    def event(self, type_: str, state_key: str | None, content: dict[str, Any], sender: str = AGENT) -> Event:
        d: dict[str, Any] = {
            "type": type_,
            "sender": sender,
            "content": content,
            "room_id": ROOM,
            "prev_events": [],
            "auth_events": [],
            "depth": 1,
            "origin_server_ts": 1,
            "hashes": {"sha256": "aGFzaA"},
        }
        if state_key is not None:
            d["state_key"] = state_key
        return Event(d, RV, event_id=f"$e{next(_ids)}")

    def add(self, type_: str, state_key: str, content: dict[str, Any], sender: str = AGENT) -> Event:
        ev = self.event(type_, state_key, content, sender)
        self.events[ev.event_id] = ev
        self.state[(type_, state_key)] = ev.event_id
        return ev

    async def fetch(self, ids: list[str]) -> Mapping[str, Event]:
        return {i: self.events[i] for i in ids if i in self.events}

    async def is_admin(self, user_id: str) -> bool:
        return user_id in self.admins

    async def is_published(self, room_id: str) -> bool:
        return self.published


def rules(room: Room, bypass: tuple[str, ...] = ()) -> RoomAccessRules:
    return RoomAccessRules(
        forbidden_domains=("e.example",),
        bypass_for_users=bypass,
        fetch_events=room.fetch,
        is_admin=room.is_admin,
        is_published=room.is_published,
        default_room_version="10",
    )


def member(room: Room, target: str, membership: str, sender: str | None = None) -> Event:
    return room.event("m.room.member", target, {"membership": membership}, sender or target)


@pytest_twisted.ensureDeferred
async def test_restricted_room_refuses_external_invite_and_join_but_not_agents() -> None:
    """Tried: inviting @ext:e.example and @ext joining a room without a rule (restricted)."""
    room = Room()
    r = rules(room)
    refusal = await r.check_event(member(room, EXTERNAL, "invite", AGENT), room.state)
    assert refusal is not None and "external user" in refusal
    assert await r.check_event(member(room, EXTERNAL, "join"), room.state) is not None
    assert await r.check_event(member(room, AGENT2, "invite", AGENT), room.state) is None
    # an external user already in (from before the rules) may always leave
    assert await r.check_event(member(room, EXTERNAL, "leave"), room.state) is None


@pytest_twisted.ensureDeferred
async def test_unrestricted_room_external_users_only_by_invite_and_without_power() -> None:
    """Tried: @ext joining uninvited; a power level of 50 for @ext; users_default 10."""
    room = Room()
    room.add(ACCESS_RULES_TYPE, "", {"rule": "unrestricted"})
    r = rules(room)
    assert await r.check_event(member(room, EXTERNAL, "invite", AGENT), room.state) is None
    assert await r.check_event(member(room, EXTERNAL, "join"), room.state) is not None
    room.add("m.room.member", EXTERNAL, {"membership": "invite"}, AGENT)
    assert await r.check_event(member(room, EXTERNAL, "join"), room.state) is None
    pl = room.event("m.room.power_levels", "", {"users": {AGENT: 100, EXTERNAL: 50}})
    assert "cannot be given power" in (await r.check_event(pl, room.state) or "")
    pl_default = room.event("m.room.power_levels", "", {"users": {AGENT: 100}, "users_default": 10})
    assert await r.check_event(pl_default, room.state) is not None
    fine = room.event("m.room.power_levels", "", {"users": {AGENT: 100, EXTERNAL: 0}})
    assert await r.check_event(fine, room.state) is None


@pytest_twisted.ensureDeferred
async def test_direct_room_two_members_no_name_no_public() -> None:
    """Tried: a third member invited; m.room.name/topic/avatar; join_rule public."""
    room = Room()
    room.add(ACCESS_RULES_TYPE, "", {"rule": "direct"})
    room.add("m.room.member", AGENT, {"membership": "join"})
    r = rules(room)
    assert await r.check_event(member(room, AGENT2, "invite", AGENT), room.state) is None
    room.add("m.room.member", AGENT2, {"membership": "invite"}, AGENT)
    third = member(room, "@carol:agent.example", "invite", AGENT)
    assert await r.check_event(third, room.state) == "A direct chat holds at most two members"
    # the two members themselves may still change membership
    assert await r.check_event(member(room, AGENT2, "join"), room.state) is None
    for t, content in (
        ("m.room.name", {"name": "x"}),
        ("m.room.topic", {"topic": "x"}),
        ("m.room.avatar", {"url": "mxc://a/b"}),
    ):
        assert "direct chat" in (await r.check_event(room.event(t, "", content), room.state) or "")
    public = room.event("m.room.join_rules", "", {"join_rule": "public"})
    assert await r.check_event(public, room.state) == "A direct chat cannot be made public"


@pytest_twisted.ensureDeferred
async def test_rule_changes_only_restricted_to_unrestricted_and_not_when_published() -> None:
    """Tried: unrestricted -> restricted, restricted -> direct, an unknown rule, and
    restricted -> unrestricted while published."""
    room = Room()
    room.add(ACCESS_RULES_TYPE, "", {"rule": "restricted"})
    r = rules(room)

    def change(rule: str) -> Event:
        return room.event(ACCESS_RULES_TYPE, "", {"rule": rule})

    assert await r.check_event(change("direct"), room.state) is not None
    assert "Invalid room access rule" in (await r.check_event(change("open"), room.state) or "")
    room.published = True
    assert "published" in (await r.check_event(change("unrestricted"), room.state) or "")
    room.published = False
    assert await r.check_event(change("unrestricted"), room.state) is None
    room.add(ACCESS_RULES_TYPE, "", {"rule": "unrestricted"})
    assert "cannot change" in (await r.check_event(change("restricted"), room.state) or "")


@pytest_twisted.ensureDeferred
async def test_admins_and_bypass_users_are_exempt() -> None:
    """Tried: an admin and a bypass_for_users user inviting @ext into a restricted room."""
    room = Room()
    room.admins.add(AGENT)
    assert await rules(room).check_event(member(room, EXTERNAL, "invite", AGENT), room.state) is None
    assert await rules(room, bypass=(AGENT2,)).check_event(member(room, EXTERNAL, "invite", AGENT2), room.state) is None


@pytest_twisted.ensureDeferred
async def test_create_room_defaults_and_refused_overrides() -> None:
    """Tried: power_level_content_override with invite 0 and state_default 50; a direct
    public room; a rule of 'direct' without is_direct; inviting @ext at creation."""
    room = Room()
    r = rules(room)
    req = await r.on_create_room(AGENT, CreateRoomRequest())
    initial = {(t, k): c for t, k, c in req.initial_state}
    assert initial[(ACCESS_RULES_TYPE, "")] == {"rule": "restricted"}
    assert initial[("m.room.history_visibility", "")] == {"history_visibility": "invited"}
    pl = req.power_level_content_override or {}
    assert (pl["state_default"], pl["invite"], pl["users"]) == (100, 50, {AGENT: 100})
    direct = await r.on_create_room(AGENT, CreateRoomRequest(is_direct=True, invite=(AGENT2,)))
    assert (ACCESS_RULES_TYPE, "", {"rule": "direct"}) in direct.initial_state
    for bad in (
        CreateRoomRequest(power_level_content_override={"invite": 0}),
        CreateRoomRequest(power_level_content_override={"state_default": 50}),
        CreateRoomRequest(is_direct=True, preset="public_chat"),
        CreateRoomRequest(initial_state=((ACCESS_RULES_TYPE, "", {"rule": "direct"}),)),
        CreateRoomRequest(initial_state=((ACCESS_RULES_TYPE, "", {"rule": "nope"}),)),
    ):
        try:
            await r.on_create_room(AGENT, bad)
        except Exception as e:
            assert getattr(e, "code", None) == 400, (bad, e)
        else:
            raise AssertionError(f"accepted {bad}")
    try:
        await r.on_create_room(AGENT, CreateRoomRequest(invite=(EXTERNAL,)))
    except Exception as e:
        assert getattr(e, "code", None) == 403
    else:
        raise AssertionError("invited an external user into a restricted room")
    # an override above the defaults is kept, and missing keys come from Tchap's defaults
    kept = await r.on_create_room(AGENT, CreateRoomRequest(power_level_content_override={"invite": 100}))
    assert kept.power_level_content_override is not None
    assert kept.power_level_content_override["invite"] == 100
    assert kept.power_level_content_override["state_default"] == 100


# -- domain rule checker and external users ----------------------------------------------


def checker(room: Room, **overrides: Any) -> DomainRuleChecker:
    config = DomainRuleCheckerConfig(enabled=True, **overrides)
    return DomainRuleChecker(
        config=config, server_name="agent.example", fetch_events=room.fetch, is_published=room.is_published
    )


@pytest_twisted.ensureDeferred
async def test_domain_mapping_decides_invites() -> None:
    """Tried: agent.example inviting a user of other.example when the mapping allows only
    agent.example and e.example; an inviter domain missing from the mapping."""
    room = Room()
    c = checker(
        room,
        domain_mapping={"agent.example": ("agent.example", "e.example")},
        can_invite_if_not_in_domain_mapping=False,
    )
    assert await c.check_event(member(room, "@x:other.example", "invite", AGENT), room.state) == (
        "Users of agent.example may not invite users of other.example"
    )
    assert await c.check_event(member(room, EXTERNAL, "invite", AGENT), room.state) is None
    refused = await c.check_event(member(room, AGENT, "invite", "@y:third.example"), room.state)
    assert refused == "Users of third.example may not send invitations"


@pytest_twisted.ensureDeferred
async def test_invites_only_at_creation_join_only_by_invite_published_rooms() -> None:
    """Tried: an invite after someone else joined (can_only_invite_during_room_creation);
    joining uninvited (can_only_join_rooms_with_invite); inviting a prevented domain into
    a published room."""
    room = Room()
    room.add("m.room.member", AGENT, {"membership": "join"})
    c = checker(room, can_only_invite_during_room_creation=True)
    assert await c.check_event(member(room, AGENT2, "invite", AGENT), room.state) is None
    room.add("m.room.member", AGENT2, {"membership": "join"}, AGENT2)
    assert await c.check_event(member(room, "@c:agent.example", "invite", AGENT), room.state) is not None

    j = checker(room, can_only_join_rooms_with_invite=True)
    assert await j.check_event(member(room, "@c:agent.example", "join"), room.state) == (
        "You can only join a room you were invited to"
    )
    room.add("m.room.member", "@c:agent.example", {"membership": "invite"}, AGENT)
    assert await j.check_event(member(room, "@c:agent.example", "join"), room.state) is None

    p = checker(room, domains_prevented_from_being_invited_to_published_rooms=("e.example",))
    assert await p.check_event(member(room, EXTERNAL, "invite", AGENT), room.state) is None
    room.published = True
    assert await p.check_event(member(room, EXTERNAL, "invite", AGENT), room.state) is not None


@pytest_twisted.ensureDeferred
async def test_external_server_users_cannot_invite_or_go_public() -> None:
    """Tried (on the external server): an invite, a public join rule, createRoom public."""
    room = Room()
    rules_ = ExternalUserRules(config=ExternalUsersConfig(), server_name="e.example", external_server="e.example")
    assert rules_.active
    assert await rules_.check_event(member(room, AGENT, "invite", EXTERNAL), room.state) is not None
    public = room.event("m.room.join_rules", "", {"join_rule": "public"}, EXTERNAL)
    assert await rules_.check_event(public, room.state) is not None
    try:
        await rules_.on_create_room(EXTERNAL, CreateRoomRequest(visibility="public"))
    except Exception as e:
        assert getattr(e, "code", None) == 403
    else:
        raise AssertionError("an external user created a public room")
    allowed = ExternalUserRules(
        config=ExternalUsersConfig(can_invite=True, can_create_public_rooms=True),
        server_name="e.example",
        external_server="e.example",
    )
    assert await allowed.check_event(member(room, AGENT, "invite", EXTERNAL), room.state) is None
    # on an agent server the rules are off
    assert not ExternalUserRules(
        config=ExternalUsersConfig(), server_name="agent.example", external_server="e.example"
    ).active
