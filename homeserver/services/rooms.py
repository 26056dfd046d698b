"""Rooms: creation with presets, and every membership change a client asks for."""

from __future__ import annotations

import secrets
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.core.ids import InvalidID, RoomAlias, RoomID, UserID
from homeserver.events.model import Event
from homeserver.events.power_levels import (
    CREATOR_DEFAULT_LEVEL,
    CREATOR_POWER_LEVEL,
    get_invite_level,
    get_required_level_for_event,
    get_user_power_level,
    is_valid_power_level,
    parse_power_level,
)
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.services.events import RoomEventService, SentEvent
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.state import StateMap

PRESETS = ("private_chat", "trusted_private_chat", "public_chat")
MEMBERSHIP_ACTIONS = ("invite", "join", "leave", "kick", "ban", "unban", "knock")


@dataclass(frozen=True)
class CreateRoomRequest:
    """A validated /createRoom body."""

    visibility: str = "private"
    room_alias_name: str | None = None
    name: str | None = None
    topic: str | None = None
    invite: tuple[str, ...] = ()
    room_version: str | None = None
    creation_content: dict[str, Any] = field(default_factory=dict)
    initial_state: tuple[tuple[str, str, dict[str, Any]], ...] = ()
    preset: str | None = None
    is_direct: bool = False
    power_level_content_override: dict[str, Any] | None = None
    # ``{medium, address, id_server?, id_access_token?}``: invited by address once created
    invite_3pid: tuple[dict[str, Any], ...] = ()
    # server notices rooms: never encrypted by encryption_enabled_by_default_for_room_type
    ignore_forced_encryption: bool = False


ProfileLookup = Callable[[str], Awaitable[tuple[str | None, str | None]]]
# Policy hooks run before a room is created (creator, request): they may refuse it (raise a
# MatrixError) or return an amended request (initial state, power levels).
CreateRoomHook = Callable[[str, CreateRoomRequest], Awaitable[CreateRoomRequest]]


class RemoteMembership(Protocol):
    """Membership through other servers (``homeserver.federation.membership``): used when
    no local user is joined to the room, for remote aliases and for remote invitees."""

    async def resolve_alias(self, alias: str) -> tuple[str, list[str]]: ...

    async def candidate_servers(self, room_id: str, user_id: str, given: Sequence[str]) -> list[str]: ...

    async def join(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[Event, int]: ...

    async def knock(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[Event, int]: ...

    async def leave(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[Event, int]: ...

    async def countersign_invite(self, event: Event, state_before: StateMap) -> None: ...


def _check_initial_power_levels(
    room_version: RoomVersion, creator: str, req: CreateRoomRequest, pl: Mapping[str, Any], state: list[tuple[str, str]]
) -> None:
    """Refuse, before anything is created, power levels the auth rules would refuse or that
    leave the creator unable to send the room's initial state or invites: the spec's 400
    ``M_INVALID_ROOM_STATE`` for "the initial state implied by the parameters is invalid"."""

    def invalid(problem: str) -> MatrixError:
        return MatrixError(400, Codes.INVALID_ROOM_STATE, f"Invalid power_level_content_override: {problem}")

    for name in ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"):
        if name in pl and not is_valid_power_level(pl[name], room_version):
            raise invalid(f"{name} is not an integer")
    for name in ("events", "notifications", "users"):
        levels = pl.get(name, {})
        if not isinstance(levels, Mapping):
            raise invalid(f"{name} is not an object")
        for key, level in levels.items():
            if not is_valid_power_level(level, room_version):
                raise invalid(f"{name}[{key!r}] is not an integer")
    users: Mapping[str, Any] = pl.get("users", {})
    for user_id in users:
        try:
            UserID.parse(user_id)
        except InvalidID:
            raise invalid(f"users has a key that is not a user ID: {user_id!r}") from None
    if room_version.privileged_creators:
        additional = req.creation_content.get("additional_creators")
        creators = {creator, *(additional if isinstance(additional, list) else ())}
        listed = sorted(str(u) for u in creators if u in users)
        if listed:
            raise invalid(f"room creators have unlimited power and may not be listed in users ({', '.join(listed)})")
        return  # a creator may send anything
    if ("m.room.power_levels", "") in state:
        return  # initial_state replaces these power levels: the auth rules judge what follows
    level = parse_power_level(users.get(creator, pl.get("users_default", 0))) or 0
    for event_type, state_key in state:
        needed = get_required_level_for_event(event_type, state_key, pl)
        if level < needed:
            raise MatrixError(
                400, Codes.INVALID_ROOM_STATE,
                f"Invalid initial state: {event_type} needs power level {needed}; the creator would have {level}",
            )
    if req.invite and level < get_invite_level(pl):
        raise MatrixError(
            400, Codes.INVALID_ROOM_STATE,
            f"Invalid initial state: inviting needs power level {get_invite_level(pl)}; the creator would have {level}",
        )


def _random_string(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(n))


class RoomService:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        events: RoomEventService,
        rooms: RoomRepository,
        profile_of: ProfileLookup,
        default_room_version: str,
        encryption_by_default: str = "off",
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._events = events
        self._rooms = rooms
        self._profile_of = profile_of
        self.default_room_version = default_room_version
        self._encryption_by_default = encryption_by_default
        self.create_room_hooks: list[CreateRoomHook] = []
        # Application services: (user_id, alias) -> raise if reserved; ask about unknown aliases.
        self.alias_checks: list[Callable[[str, str], None]] = []
        self.unknown_alias_resolver: Callable[[str], Awaitable[tuple[str, str] | None]] | None = None
        # Set by app.py when federation is configured: joins of rooms we are not in, etc.
        self.remote: RemoteMembership | None = None
        # Set by the government policy: invites by e-mail address (inviter, room_id, body).
        self.threepid_inviter: Callable[[str, str, Mapping[str, Any]], Awaitable[None]] | None = None
        # Policy hooks run before a local membership change is sent (sender, room, action,
        # target): the last admin leaving hands over power first (services/policy).
        self.before_membership_hooks: list[Callable[[str, str, str, str], Awaitable[None]]] = []

    # -- creation ----------------------------------------------------------------------

    async def create_room(self, creator: str, req: CreateRoomRequest) -> tuple[str, str | None]:
        """Create the room; returns (room_id, alias).  Everything is validated first, so a
        bad request creates nothing."""
        if req.invite_3pid and self.threepid_inviter is None:
            raise MatrixError(400, Codes.UNRECOGNIZED, "Parameter invite_3pid: e-mail invites are not supported")
        for hook in self.create_room_hooks:
            req = await hook(creator, req)
        version_id = req.room_version or self.default_room_version
        room_version = KNOWN_ROOM_VERSIONS.get(version_id)
        if room_version is None or not room_version.supported:
            raise MatrixError(400, Codes.UNSUPPORTED_ROOM_VERSION, f"Room version {version_id} is not supported")
        alias: str | None = None
        if req.room_alias_name is not None:
            alias = f"#{req.room_alias_name}:{self._server_name}"
            try:
                RoomAlias.parse(alias)
            except InvalidID:
                raise MatrixError(400, Codes.INVALID_PARAM, "Parameter room_alias_name is not a valid alias") from None
            if ":" in req.room_alias_name or not req.room_alias_name:
                raise MatrixError(400, Codes.INVALID_PARAM, "Parameter room_alias_name must not contain ':'")
            if await self._rooms.get_alias(alias) is not None:
                raise MatrixError(400, Codes.ROOM_IN_USE, "Room alias already taken")
        for invitee in req.invite:
            try:
                UserID.parse(invitee)
            except InvalidID:
                raise MatrixError(400, Codes.INVALID_PARAM, f"Parameter invite contains an invalid user ID: {invitee}") from None
        preset = req.preset or ("public_chat" if req.visibility == "public" else "private_chat")
        pl = self._power_levels(room_version, creator, preset, req)
        initial = {(t, k): c for t, k, c in req.initial_state}
        join_rule = "public" if preset == "public_chat" else "invite"
        defaults: list[tuple[str, dict[str, Any]]] = [
            ("m.room.join_rules", {"join_rule": join_rule}),
            ("m.room.history_visibility", {"history_visibility": "shared"}),
        ]
        if preset != "public_chat":
            defaults.append(("m.room.guest_access", {"guest_access": "can_join"}))
        forced = self._encrypt_new_room(preset) and not req.ignore_forced_encryption
        state_to_send = [(t, "") for t, _ in defaults if (t, "") not in initial]
        state_to_send += [("m.room.canonical_alias", "")] if alias is not None else []
        state_to_send += [("m.room.encryption", "")] if forced and ("m.room.encryption", "") not in initial else []
        state_to_send += list(initial)
        state_to_send += [("m.room.name", "")] if req.name is not None else []
        state_to_send += [("m.room.topic", "")] if req.topic is not None else []
        _check_initial_power_levels(room_version, creator, req, pl, state_to_send)

        create_content: dict[str, Any] = dict(req.creation_content)
        create_content["room_version"] = room_version.identifier
        if not room_version.implicit_room_creator:
            create_content["creator"] = creator
        if room_version.room_id_from_create_event:
            created = await self._events.send(
                room_id=None, sender=creator, event_type="m.room.create", content=create_content,
                state_key="", room_version=room_version,
            )
        else:
            room_id = f"!{_random_string(18)}:{self._server_name}"
            created = await self._events.send(
                room_id=room_id, sender=creator, event_type="m.room.create", content=create_content,
                state_key="", room_version=room_version,
            )
        room_id = created.event.room_id
        await self._send_state(room_id, creator, "m.room.member", creator, await self._member_content(creator, "join"))

        await self._send_state(room_id, creator, "m.room.power_levels", "", pl)
        if alias is not None:
            await self._send_state(room_id, creator, "m.room.canonical_alias", "", {"alias": alias})
        for event_type, content in defaults:
            if (event_type, "") not in initial:
                await self._send_state(room_id, creator, event_type, "", content)
        if forced and ("m.room.encryption", "") not in initial:
            await self._send_state(room_id, creator, "m.room.encryption", "", {"algorithm": "m.megolm.v1.aes-sha2"})
        for (event_type, state_key), content in initial.items():
            await self._send_state(room_id, creator, event_type, state_key, content)
        if req.name is not None:
            await self._send_state(room_id, creator, "m.room.name", "", {"name": req.name})
        if req.topic is not None:
            await self._send_state(room_id, creator, "m.room.topic", "", {"topic": req.topic})
        for invitee in req.invite:
            content = {"membership": "invite"}
            if req.is_direct:
                content["is_direct"] = True
            remote = self.remote if UserID.parse(invitee).domain != self._server_name else None
            await self._events.send(
                room_id=room_id,
                sender=creator,
                event_type="m.room.member",
                content=content,
                state_key=invitee,
                # a remote invitee's server signs the invite first (and so learns of it)
                extra_check=remote.countersign_invite if remote is not None else None,
            )
        for threepid in req.invite_3pid:
            await self.invite_threepid(creator, room_id, threepid)
        if alias is not None:
            await self._rooms.create_alias(alias, room_id, creator, self._clock.time_msec())
        if req.visibility == "public":
            await self._rooms.set_published(room_id, True)
        return room_id, alias

    def _encrypt_new_room(self, preset: str) -> bool:
        if self._encryption_by_default == "all":
            return True
        return self._encryption_by_default == "invite" and preset in ("private_chat", "trusted_private_chat")

    def _power_levels(self, room_version: RoomVersion, creator: str, preset: str, req: CreateRoomRequest) -> dict[str, Any]:
        users: dict[str, int] = {}
        if not room_version.privileged_creators:
            users[creator] = CREATOR_DEFAULT_LEVEL
        if preset == "trusted_private_chat":
            for invitee in req.invite:
                users[invitee] = CREATOR_DEFAULT_LEVEL
        content: dict[str, Any] = {
            "users": users,
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
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 50 if preset == "public_chat" else 0,
            "historical": 100,
        }
        if req.power_level_content_override:
            content.update(req.power_level_content_override)
        return content

    async def _send_state(self, room_id: str, sender: str, event_type: str, state_key: str, content: dict[str, Any]) -> SentEvent:
        return await self._events.send(
            room_id=room_id, sender=sender, event_type=event_type, content=content, state_key=state_key
        )

    async def _member_content(self, user_id: str, membership: str, reason: str | None = None) -> dict[str, Any]:
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            displayname, avatar_url = await self._profile_of(user_id)
            if displayname is not None:
                content["displayname"] = displayname
            if avatar_url is not None:
                content["avatar_url"] = avatar_url
        if reason is not None:
            content["reason"] = reason
        return content

    # -- membership --------------------------------------------------------------------

    async def resolve_room(self, room_id_or_alias: str) -> str:
        return (await self.resolve_room_and_servers(room_id_or_alias))[0]

    async def resolve_room_and_servers(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """The room ID, and for a remote alias the servers its server says are in the room."""
        if room_id_or_alias.startswith("#"):
            try:
                alias = RoomAlias.parse(room_id_or_alias)
            except InvalidID:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room alias") from None
            if alias.domain != self._server_name and self.remote is not None:
                return await self.remote.resolve_alias(room_id_or_alias)
            found = await self._rooms.get_alias(room_id_or_alias)
            if found is None and self.unknown_alias_resolver is not None:
                found = await self.unknown_alias_resolver(room_id_or_alias)
            if found is None:
                raise not_found("Room alias not found")
            return found[0], []
        try:
            RoomID.parse(room_id_or_alias)
        except InvalidID:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room ID or alias") from None
        return room_id_or_alias, []

    async def is_host_in_room(self, room_id: str) -> bool:
        """Whether a local user is joined to the room (so we have its current state)."""
        suffix = ":" + self._server_name
        return any(m.user_id.endswith(suffix) for m in await self._rooms.members(room_id))

    async def update_membership(
        self,
        *,
        sender: str,
        room_id: str,
        action: str,
        target: str | None = None,
        reason: str | None = None,
        txn: Any = None,
        extra_content: dict[str, Any] | None = None,
        servers: Sequence[str] = (),
    ) -> SentEvent:
        """Join, leave, invite, kick, ban, unban or knock; the auth rules decide what is allowed.

        ``servers`` are the servers to try (the client's ``via``, an alias's servers) when
        the room must be joined or knocked on through another server."""
        target = target or sender
        try:
            invitee = UserID.parse(target)
        except InvalidID:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid user ID: {target}") from None
        if action == "leave" and target == sender:
            # Leaving again a room one left oneself: the same event again, as Synapse answers.
            previous = await self._already_left(sender, room_id, reason)
            if previous is not None:
                return previous
        if (
            self.remote is not None
            and target == sender
            and action in ("join", "knock", "leave")
            and not await self.is_host_in_room(room_id)
        ):
            candidates = await self.remote.candidate_servers(room_id, sender, servers)
            # A room of ours that every user left and no other server is in stays local.
            if candidates or not await self._rooms.room_exists(room_id):
                return await self._remote_membership(sender, room_id, action, reason, extra_content, candidates)
        if not await self._rooms.room_exists(room_id):
            raise not_found("Unknown room")
        current = await self._events.current_state_event(room_id, "m.room.member", target)
        current_membership = current.content.get("membership") if current else None
        membership = {
            "invite": "invite",
            "join": "join",
            "leave": "leave",
            "kick": "leave",
            "ban": "ban",
            "unban": "leave",
            "knock": "knock",
        }[action]
        if action == "unban" and current_membership != "ban":
            raise forbidden(f"{target} is not banned")
        if action == "kick" and current_membership not in ("join", "invite", "knock"):
            raise forbidden(f"{target} is not in the room")
        if action == "leave" and current_membership in (None, "leave"):
            raise forbidden(f"{target} is not in the room")
        if action == "invite" and current_membership == "join":
            raise forbidden(f"{target} is already in the room")
        if action == "invite" and current_membership == "ban":
            raise forbidden(f"{target} is banned from the room")
        if action == "join" and current_membership == "ban":
            raise forbidden("You are banned from this room")
        if action == "knock":
            version = await self._events.room_version(room_id)
            if not version.knock_join_rule:
                raise forbidden(f"Room version {version.identifier} does not support knocking")
        for hook in self.before_membership_hooks:
            await hook(sender, room_id, action, target)
        content = await self._member_content(target, membership, reason)
        if extra_content:
            content.update({k: v for k, v in extra_content.items() if k not in ("membership",)})
        countersign = None
        if action == "invite" and invitee.domain != self._server_name and self.remote is not None:
            countersign = self.remote.countersign_invite  # the invitee's server signs first
        return await self._events.send(
            room_id=room_id,
            sender=sender,
            event_type="m.room.member",
            content=content,
            state_key=target,
            txn=txn,
            extra_check=countersign,
        )

    async def _already_left(self, user_id: str, room_id: str, reason: str | None) -> SentEvent | None:
        """The user's own leave event when it is their current membership with this reason."""
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "leave" or membership.sender != user_id:
            return None
        stored = await self._events.get_event(membership.event_id)
        if stored is None or stored.event.content.get("reason") != reason:
            return None
        return SentEvent(stored.event, membership.stream_ordering)

    async def _remote_membership(
        self,
        user_id: str,
        room_id: str,
        action: str,
        reason: str | None,
        extra_content: dict[str, Any] | None,
        servers: Sequence[str],
    ) -> SentEvent:
        """Join, knock on or leave (reject an invite to) a room no local user is in."""
        assert self.remote is not None
        if action == "leave":
            current = await self._rooms.get_membership(room_id, user_id)
            if current is None or current.membership not in ("invite", "knock"):
                raise forbidden(f"{user_id} is not in the room") if current else not_found("Unknown room")
        content = await self._member_content(user_id, action, reason)
        if extra_content:
            content.update({k: v for k, v in extra_content.items() if k not in ("membership",)})
        handshake = {"join": self.remote.join, "knock": self.remote.knock, "leave": self.remote.leave}[action]
        event, stream = await handshake(user_id, room_id, servers, content)
        return SentEvent(event, stream)

    async def invite_threepid(self, sender: str, room_id: str, body: Mapping[str, Any]) -> None:
        """``/invite`` with ``medium`` and ``address`` instead of ``user_id``."""
        if self.threepid_inviter is None:
            raise MatrixError(400, Codes.UNRECOGNIZED, "Invites by medium/address are not supported on this server")
        await self.threepid_inviter(sender, room_id, body)

    async def forget(self, user_id: str, room_id: str) -> None:
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is None:
            raise not_found("Unknown room")
        if membership.membership in ("join", "invite", "knock"):
            raise MatrixError(400, Codes.UNKNOWN, "You must leave the room before forgetting it")
        await self._rooms.forget(room_id, user_id)

    async def joined_rooms(self, user_id: str) -> list[str]:
        return sorted(m.room_id for m in await self._rooms.rooms_for_user(user_id))

    # -- aliases and directory ---------------------------------------------------------

    async def create_alias(self, user_id: str, alias: str, room_id: str) -> None:
        try:
            parsed = RoomAlias.parse(alias)
        except InvalidID:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room alias") from None
        if parsed.domain != self._server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "Room alias must be on this server")
        for check in self.alias_checks:
            check(user_id, alias)
        if not await self._rooms.room_exists(room_id):
            raise not_found("Unknown room")
        if not await self._rooms.create_alias(alias, room_id, user_id, self._clock.time_msec()):
            raise MatrixError(409, Codes.UNKNOWN, "Room alias already exists")

    async def get_alias(self, alias: str) -> dict[str, Any]:
        room_id, servers = await self.resolve_room_and_servers(alias)
        return {"room_id": room_id, "servers": servers or [self._server_name]}

    async def delete_alias(self, user_id: str, alias: str, is_admin: bool) -> None:
        found = await self._rooms.get_alias(alias)
        if found is None:
            raise not_found("Room alias not found")
        room_id, creator = found
        if creator != user_id and not is_admin:
            pl = await self._events.current_state_event(room_id, "m.room.power_levels")
            level = int((pl.content.get("users", {}) if pl else {}).get(user_id, 0))
            if level < 50:
                raise forbidden("You may not delete this alias")
        await self._rooms.delete_alias(alias)

    async def aliases(self, room_id: str) -> list[str]:
        return await self._rooms.aliases_for_room(room_id)

    # -- upgrades ---------------------------------------------------------------------

    async def upgrade_room(self, user_id: str, old_room_id: str, new_version_id: str) -> str:
        """Replace the room by a new one of ``new_version_id``: copy its state, tombstone the
        old room and restrict it, move the local aliases."""
        new_version = KNOWN_ROOM_VERSIONS.get(new_version_id)
        if new_version is None or not new_version.supported:
            raise MatrixError(400, Codes.UNSUPPORTED_ROOM_VERSION, f"Room version {new_version_id} is not supported")
        membership = await self._rooms.get_membership(old_room_id, user_id)
        if membership is None or membership.membership != "join":
            raise forbidden("You are not in this room")
        state = await self._events.current_state_events(old_room_id)
        old_create = state[("m.room.create", "")]
        pl = state.get(("m.room.power_levels", ""))
        version = await self._events.room_version(old_room_id)
        level = get_user_power_level(user_id, old_create, pl, version)
        needed = get_required_level_for_event("m.room.tombstone", "", pl.content if pl else {})
        if level < needed:
            raise forbidden("You don't have permission to upgrade this room")
        last_event = await self._events.current_state_ids(old_room_id)
        create_content: dict[str, Any] = {
            k: v for k, v in old_create.content.items() if k in ("m.federate", "type")
        }
        create_content["predecessor"] = {"room_id": old_room_id}
        if not new_version.room_id_from_create_event:
            create_content["predecessor"]["event_id"] = last_event[("m.room.create", "")]
        copied = (
            "m.room.join_rules", "m.room.history_visibility", "m.room.guest_access", "m.room.name",
            "m.room.topic", "m.room.avatar", "m.room.encryption", "m.room.server_acl", "m.room.canonical_alias",
        )
        initial = tuple((t, "", dict(state[(t, "")].content)) for t in copied if (t, "") in state)
        pl_content = dict(pl.content) if pl else None
        if pl_content is not None and new_version.privileged_creators:
            users = dict(pl_content.get("users", {}))
            users.pop(user_id, None)
            pl_content["users"] = users
        elif pl_content is not None and version.privileged_creators:
            # Creators of the old room had unlimited power without a users entry; in a
            # version without privileged creators the upgrader needs an explicit level.
            users = dict(pl_content.get("users", {}))
            numeric = [v for v in (*users.values(), *pl_content.values()) if isinstance(v, int)]
            users[user_id] = int(level) if level < CREATOR_POWER_LEVEL else max([100, *numeric])
            pl_content["users"] = users
        new_room_id, _ = await self.create_room(
            user_id,
            CreateRoomRequest(
                room_version=new_version.identifier,
                creation_content=create_content,
                initial_state=initial,
                preset="private_chat",
                power_level_content_override=pl_content,
            ),
        )
        await self._send_state(
            old_room_id, user_id, "m.room.tombstone", "",
            {"body": "This room has been replaced", "replacement_room": new_room_id},
        )
        if pl is not None:
            restricted = dict(pl.content)
            floor = max(50, int(restricted.get("users_default", 0)) + 1)
            restricted["events_default"] = max(int(restricted.get("events_default", 0)), floor)
            restricted["invite"] = max(int(restricted.get("invite", 0)), floor)
            try:
                await self._send_state(old_room_id, user_id, "m.room.power_levels", "", restricted)
            except MatrixError:
                pass  # the tombstone is what matters; restricting is best effort
        for alias in await self._rooms.aliases_for_room(old_room_id):
            await self._rooms.delete_alias(alias)
            await self._rooms.create_alias(alias, new_room_id, user_id, self._clock.time_msec())
        if await self._rooms.is_published(old_room_id):
            await self._rooms.set_published(old_room_id, False)
            await self._rooms.set_published(new_room_id, True)
        return new_room_id
