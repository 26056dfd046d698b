"""Room access rules: the ``im.vector.room.access_rules`` state event, as Tchap defines it.

``{"rule": "restricted" | "unrestricted" | "direct"}``; a room without the event is
restricted.

- restricted: members of ``domains_forbidden_when_restricted`` (the external server) can
  neither be invited nor join;
- unrestricted: they may join only with an invite, and may never hold power
  (``users_default`` stays 0, their own level stays 0);
- direct: at most two members (plus one pending 3PID invite), no name, avatar or topic,
  never a public join rule.

Only restricted -> unrestricted is a permitted change, and not while the room is published;
only restricted rooms may be published.  Room creation gets the rule (direct if
``is_direct``, else restricted) and Tchap's power levels, and overrides below them are refused.
Server admins and ``bypass_for_users`` are exempt, as in the module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.events.model import Event
from homeserver.events.power_levels import get_required_level_for_event, get_user_power_level
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.services.rooms import CreateRoomRequest
from homeserver.storage.state import StateMap

ACCESS_RULES_TYPE = "im.vector.room.access_rules"
RESTRICTED = "restricted"
UNRESTRICTED = "unrestricted"
DIRECT = "direct"
VALID_RULES = (RESTRICTED, UNRESTRICTED, DIRECT)

# Loads events by ID (missing ones are left out).
FetchEvents = Callable[[list[str]], Awaitable[Mapping[str, Event]]]
IsAdmin = Callable[[str], Awaitable[bool]]
IsPublished = Callable[[str], Awaitable[bool]]
# A room's current state (event IDs), to read an upgraded room's predecessor.
RoomState = Callable[[str], Awaitable[StateMap]]


def domain_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def tchap_default_power_levels(creator: str | None) -> dict[str, Any]:
    """Tchap's power levels for new rooms: only admins change state, moderators invite."""
    return {
        "users": {creator: 100} if creator else {},
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
            # everyone may share a live location and join a call
            "m.beacon_info": 0,
            "org.matrix.msc3672.beacon_info": 0,
            "m.call.member": 0,
            "org.matrix.msc3401.call.member": 0,
        },
        "events_default": 0,
        "state_default": 100,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 50,
    }


def _fill_missing(custom: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    for key, value in defaults.items():
        if isinstance(value, dict):
            sub = custom.setdefault(key, {})
            if isinstance(sub, dict):
                _fill_missing(sub, value)
        else:
            custom.setdefault(key, value)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class RoomAccessRules:
    def __init__(
        self,
        *,
        forbidden_domains: tuple[str, ...],
        bypass_for_users: tuple[str, ...],
        fetch_events: FetchEvents,
        is_admin: IsAdmin,
        is_published: IsPublished,
        default_room_version: str,
        room_state: RoomState | None = None,
    ) -> None:
        self._room_state = room_state
        self._forbidden = frozenset(d.lower() for d in forbidden_domains)
        self._bypass = frozenset(bypass_for_users)
        self._fetch = fetch_events
        self._is_admin = is_admin
        self._is_published = is_published
        self._default_room_version = default_room_version

    def is_forbidden_domain(self, domain: str) -> bool:
        return domain.lower() in self._forbidden

    async def _can_bypass(self, user_id: str) -> bool:
        return user_id in self._bypass or await self._is_admin(user_id)

    async def rule_of(self, state: StateMap) -> str:
        """The room's rule (restricted when the event is absent or empty)."""
        event_id = state.get((ACCESS_RULES_TYPE, ""))
        if event_id is None:
            return RESTRICTED
        event = (await self._fetch([event_id])).get(event_id)
        rule = event.content.get("rule") if event is not None else None
        return rule if isinstance(rule, str) and rule else RESTRICTED

    # -- events ------------------------------------------------------------------------

    async def check_event(self, event: Event, state: StateMap) -> str | None:
        """The event policy check: a refusal reason, or None."""
        if not event.is_state() or await self._can_bypass(event.sender):
            return None
        if event.type == ACCESS_RULES_TYPE:
            return await self._on_rules_change(event, state)
        rule = await self.rule_of(state)
        if event.type == "m.room.power_levels":
            return self._check_power_levels(event.content, rule)
        if event.type in ("m.room.member", "m.room.third_party_invite"):
            return await self._on_membership(event, rule, state)
        if event.type == "m.room.join_rules":
            return await self._on_join_rules(event, rule, state)
        if event.type in ("m.room.name", "m.room.avatar", "m.room.topic") and rule == DIRECT:
            what = event.type.rsplit(".", 1)[1]
            return f"The {what} of a direct chat cannot be changed (room access rule 'direct')"
        if event.type == "m.room.encryption" and await self._join_rule(state) == "public":
            return "Encryption cannot be enabled in a public room"
        return None

    async def _join_rule(self, state: StateMap) -> str | None:
        event_id = state.get(("m.room.join_rules", ""))
        if event_id is None:
            return None
        event = (await self._fetch([event_id])).get(event_id)
        rule = event.content.get("join_rule") if event is not None else None
        return rule if isinstance(rule, str) else None

    async def _members_and_tokens(self, state: StateMap) -> tuple[list[str], list[str]]:
        """State keys of the room's member events and of its live (non-revoked) 3PID invites."""
        members = [k for (t, k) in state if t == "m.room.member"]
        invite_ids = [e for (t, _), e in state.items() if t == "m.room.third_party_invite"]
        tokens: list[str] = []
        if invite_ids:
            fetched = await self._fetch(invite_ids)
            tokens = [ev.state_key or "" for ev in fetched.values() if ev.content]
        return members, tokens

    async def _on_rules_change(self, event: Event, state: StateMap) -> str | None:
        new_rule = event.content.get("rule")
        if new_rule not in VALID_RULES:
            return f"Invalid room access rule {new_rule!r}: expected one of {', '.join(VALID_RULES)}"
        if new_rule == DIRECT:
            members, tokens = await self._members_and_tokens(state)
            if len(members) > 2 or len(tokens) > 1:
                return "A room with more than two members cannot become a direct chat"
        if new_rule != RESTRICTED and await self._is_published(event.room_id):
            return "A room published in the directory must stay restricted; unpublish it first"
        previous = state.get((ACCESS_RULES_TYPE, ""))
        if previous is None:
            return None
        prev_rule = await self.rule_of(state)
        if prev_rule == RESTRICTED and new_rule == UNRESTRICTED:
            return None
        return (
            f"The room access rule cannot change from {prev_rule!r} to {new_rule!r} (only restricted -> unrestricted)"
        )

    def _check_power_levels(
        self, content: Mapping[str, Any], rule: str, creation_defaults: Mapping[str, Any] | None = None
    ) -> str | None:
        if creation_defaults is not None:
            invite = int(creation_defaults["invite"])
            state_default = int(creation_defaults["state_default"])
            if _int(content.get("invite"), invite) < invite:
                return f"Power level 'invite' may not be below {invite}"
            if _int(content.get("state_default"), state_default) < state_default:
                return f"Power level 'state_default' may not be below {state_default}"
        if rule != UNRESTRICTED:
            return None
        if content.get("users_default", 0):
            return "In a room open to external users, users_default must stay 0"
        users = content.get("users", {})
        if isinstance(users, Mapping):
            for user_id, level in users.items():
                if self.is_forbidden_domain(domain_of(str(user_id))) and level != 0:
                    return f"External user {user_id} cannot be given power in this room"
        return None

    async def _on_membership(self, event: Event, rule: str, state: StateMap) -> str | None:
        target = event.state_key or ""
        if event.type == "m.room.member" and event.membership == "join":
            prev_id = state.get(("m.room.member", target))
            prev = (await self._fetch([prev_id])).get(prev_id) if prev_id else None
            if prev is not None and prev.membership == "invite" and await self._can_bypass(prev.sender):
                return None
        if event.type == "m.room.member" and event.membership == "invite" and await self._can_bypass(target):
            return None
        if rule == UNRESTRICTED:
            return await self._unrestricted(event, state)
        if rule == DIRECT:
            return await self._direct(event, state)
        return self._restricted(event)  # also for unknown rules, as the module does

    def _restricted(self, event: Event) -> str | None:
        if event.type == "m.room.third_party_invite":
            return None  # filtered before, by the address's server (check_threepid_invite)
        if event.membership not in ("join", "invite"):
            return None  # users already in may always leave
        target = event.state_key or ""
        if self.is_forbidden_domain(domain_of(target)):
            action = "be invited to" if event.membership == "invite" else "join"
            return f"{target} is an external user and cannot {action} a restricted room"
        return None

    async def _unrestricted(self, event: Event, state: StateMap) -> str | None:
        if event.type != "m.room.member" or event.membership != "join":
            return None
        target = event.state_key or ""
        if not self.is_forbidden_domain(domain_of(target)):
            return None
        prev_id = state.get(("m.room.member", target))
        prev = (await self._fetch([prev_id])).get(prev_id) if prev_id else None
        if prev is not None and prev.membership == "invite":
            return None
        return f"{target} is an external user and may join this room only when invited"

    async def _direct(self, event: Event, state: StateMap) -> str | None:
        members, tokens = await self._members_and_tokens(state)
        refusal = "A direct chat holds at most two members"
        if len(tokens) == 1 and event.type == "m.room.third_party_invite":
            return None if event.state_key in tokens else refusal
        if len(members) == 2:
            if event.type == "m.room.third_party_invite":
                return refusal
            return None if event.state_key in members else refusal
        if len(members) == 1 and len(tokens) == 1:
            signed = event.content.get("third_party_invite", {})
            token = signed.get("signed", {}).get("token", "") if isinstance(signed, Mapping) else ""
            return None if token == tokens[0] or event.state_key == members[0] else refusal
        return None

    async def _on_join_rules(self, event: Event, rule: str, state: StateMap) -> str | None:
        new = event.content.get("join_rule")
        if new == "public":
            return "A direct chat cannot be made public" if rule == DIRECT else None
        if await self._join_rule(state) == "public" and ("m.room.encryption", "") not in state:
            return "An unencrypted public room cannot be made private (enable encryption first)"
        return None

    # -- room creation and the directory -----------------------------------------------

    async def on_create_room(self, creator: str, req: CreateRoomRequest) -> CreateRoomRequest:
        """Give the new room its rule and Tchap's power levels; refuse what they forbid."""
        if await self._can_bypass(creator):
            return req
        initial = {(t, k): dict(c) for t, k, c in req.initial_state}
        carried = await self._upgraded_rule(creator, req)
        if carried is not None and (ACCESS_RULES_TYPE, "") not in initial:
            # An upgrade keeps the old room's rule and power levels (already checked there).
            initial[(ACCESS_RULES_TYPE, "")] = {"rule": carried}
            return dataclasses.replace(req, initial_state=tuple((t, k, c) for (t, k), c in initial.items()))
        given = initial.get((ACCESS_RULES_TYPE, ""))
        if given is not None:
            rule = given.get("rule")
            if rule not in VALID_RULES:
                raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid access rule {rule!r} in initial_state")
            if (req.is_direct and rule != DIRECT) or (rule == DIRECT and not req.is_direct):
                raise MatrixError(
                    400, Codes.INVALID_PARAM, "Access rule 'direct' is for rooms created with is_direct (and only them)"
                )
        else:
            rule = DIRECT if req.is_direct else RESTRICTED
            initial[(ACCESS_RULES_TYPE, "")] = {"rule": rule}
        join_rule = initial.get(("m.room.join_rules", ""), {}).get("join_rule")
        public = (
            join_rule == "public" or req.preset == "public_chat" or (req.preset is None and req.visibility == "public")
        )
        if public and rule == DIRECT:
            raise MatrixError(400, Codes.INVALID_PARAM, "A direct chat cannot be public")
        if req.visibility == "public" and rule != RESTRICTED:
            raise forbidden("Only restricted rooms can be published to the room directory")
        if rule == RESTRICTED:
            for invitee in req.invite:
                if self.is_forbidden_domain(domain_of(invitee)) and not await self._can_bypass(invitee):
                    raise forbidden(f"{invitee} is an external user and cannot be invited to a restricted room")
        if rule == DIRECT and (req.name is not None or req.topic is not None):
            raise forbidden("A direct chat has no name or topic (room access rule 'direct')")

        version = KNOWN_ROOM_VERSIONS.get(req.room_version or self._default_room_version)
        privileged = version is not None and version.privileged_creators
        defaults = tchap_default_power_levels(None if privileged else creator)
        if req.preset == "trusted_private_chat":
            for invitee in req.invite:
                defaults["users"][invitee] = 100
        override = dict(req.power_level_content_override or {})
        refusal = self._check_power_levels(override, rule, defaults)
        if refusal is not None:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid power_level_content_override: {refusal}")
        pl_state = initial.get(("m.room.power_levels", ""))
        if pl_state is not None:
            refusal = self._check_power_levels(pl_state, rule, defaults)
            if refusal is not None:
                raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid m.room.power_levels in initial_state: {refusal}")
            _fill_missing(pl_state, defaults)
        elif override:
            _fill_missing(override, defaults)
        else:
            override = defaults
        if ("m.room.history_visibility", "") not in initial:
            initial[("m.room.history_visibility", "")] = {"history_visibility": "shared" if public else "invited"}
        return dataclasses.replace(
            req,
            initial_state=tuple((t, k, c) for (t, k), c in initial.items()),
            power_level_content_override=override,
        )

    async def _upgraded_rule(self, creator: str, req: CreateRoomRequest) -> str | None:
        """The rule of the room this one replaces (``creation_content.predecessor``), when
        ``creator`` could upgrade that room (joined, with the power to send its tombstone);
        None for an ordinary creation.  Tchap carries the rule over on upgrades."""
        predecessor = req.creation_content.get("predecessor")
        old_room = predecessor.get("room_id") if isinstance(predecessor, Mapping) else None
        if self._room_state is None or not isinstance(old_room, str):
            return None
        state = await self._room_state(old_room)
        ids = [state.get(k) for k in (("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", creator))]
        fetched = await self._fetch([i for i in ids if i is not None])
        create, pl, member = (fetched.get(i) if i is not None else None for i in ids)
        if create is None or member is None or member.membership != "join":
            return None
        version = KNOWN_ROOM_VERSIONS.get(str(create.content.get("room_version", "1")))
        if version is None:
            return None
        needed = get_required_level_for_event("m.room.tombstone", "", pl.content if pl else {})
        if get_user_power_level(creator, create, pl, version) < needed:
            return None
        return await self.rule_of(state)

    async def check_publish(self, user_id: str, room_id: str, state: StateMap, visibility: str) -> None:
        """Only restricted rooms may be listed in the public room directory."""
        if visibility == "public" and not await self._can_bypass(user_id) and await self.rule_of(state) != RESTRICTED:
            raise forbidden("Only restricted rooms can be published to the room directory")

    async def check_threepid_invite(self, medium: str, address_server: str | None, state: StateMap) -> None:
        """A 3PID invite into a restricted room must not reach an address of a forbidden server."""
        if medium != "email":
            raise MatrixError(400, Codes.INVALID_PARAM, "Only e-mail addresses can be invited (medium 'email')")
        if await self.rule_of(state) != RESTRICTED:
            return
        if address_server is None or self.is_forbidden_domain(address_server):
            raise forbidden("This address belongs to an external user, who cannot be invited to a restricted room")
