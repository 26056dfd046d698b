"""Spaces: the room hierarchy below a space (``GET /rooms/{roomId}/hierarchy``).

The walk is breadth-first from the requested room over its ``m.space.child`` state events
(only those with a non-empty ``via``), in the spec's order: the child's ``order`` string,
then the ``origin_server_ts`` of the child event, then the room ID.  A room is listed when
the user may see it: joined, ``world_readable`` history, a ``public``/``knock``/
``knock_restricted`` join rule, or a ``restricted`` rule naming a room the user is joined to.

Only rooms this server holds state for are described (a local user is, or was, in them).
Other child rooms, whose state lives on remote servers, are skipped: this server does not
ask other servers for their hierarchy yet.  It answers theirs
(``GET /_matrix/federation/v1/hierarchy/{roomId}``, :meth:`HierarchyService.for_server`): one
level of children, listing rooms the asking server can see (one of its users is joined, or
the room is public, knockable, restricted or world-readable) and the others as inaccessible.

Pagination is stateless: the ``from`` token records the request's parameters and how many
rooms were already returned; each page re-walks the tree (bounded by ``MAX_ROOMS``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.events.model import Event
from homeserver.storage.rooms import Membership

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
# The most rooms one walk visits: bounds the work of a request over a huge or cyclic graph.
MAX_ROOMS = 2000
StateKey = tuple[str, str]


class RoomState(Protocol):
    async def current_state_events(self, room_id: str, keys: list[StateKey] | None = None) -> dict[StateKey, Event]: ...


class Memberships(Protocol):
    async def get_membership(self, room_id: str, user_id: str) -> Membership | None: ...

    async def members(self, room_id: str, memberships: tuple[str, ...] = ("join",)) -> list[Membership]: ...


@dataclass(frozen=True)
class HierarchyRequest:
    room_id: str
    suggested_only: bool = False
    max_depth: int | None = None
    limit: int | None = None
    from_token: str | None = None


def _valid_order(order: Any) -> bool:
    return isinstance(order, str) and len(order) <= 50 and all(0x20 <= ord(c) <= 0x7E for c in order)


def _child_sort_key(event: Event) -> tuple[int, str, int, str]:
    order = event.content.get("order")
    if _valid_order(order):
        return (0, str(order), event.origin_server_ts, event.state_key or "")
    return (1, "", event.origin_server_ts, event.state_key or "")


def _encode_token(req: HierarchyRequest, skip: int) -> str:
    data = {"r": req.room_id, "s": req.suggested_only, "d": req.max_depth, "k": skip}
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_token(req: HierarchyRequest) -> int:
    """How many rooms the earlier pages returned; the token must come from the same query."""
    assert req.from_token is not None
    try:
        raw = req.from_token + "=" * (-len(req.from_token) % 4)
        data = json.loads(base64.urlsafe_b64decode(raw.encode()))
        skip = data["k"]
        same = (data["r"], data["s"], data["d"]) == (req.room_id, req.suggested_only, req.max_depth)
    except (ValueError, KeyError, TypeError):
        raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter from is not a valid token") from None
    if not same:
        raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter from was issued for different parameters")
    if not isinstance(skip, int) or skip < 0:
        raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter from is not a valid token")
    return skip


class HierarchyService:
    def __init__(self, *, state: RoomState, memberships: Memberships) -> None:
        self._state = state
        self._memberships = memberships

    async def hierarchy(self, user_id: str, req: HierarchyRequest) -> dict[str, Any]:
        skip = _decode_token(req) if req.from_token is not None else 0
        limit = DEFAULT_LIMIT if req.limit is None else max(1, min(req.limit, MAX_LIMIT))
        root_state = await self._state.current_state_events(req.room_id)
        if not root_state or not await self._accessible(user_id, req.room_id, root_state):
            raise forbidden(f"User {user_id} cannot view room {req.room_id}")
        rooms: list[dict[str, Any]] = []
        seen = {req.room_id}
        queue: list[tuple[str, int, Mapping[StateKey, Event]]] = [(req.room_id, 0, root_state)]
        position = 0  # accessible rooms met so far, in walk order
        while queue and len(seen) <= MAX_ROOMS:
            room_id, depth, state = queue.pop(0)
            if position >= skip:
                if len(rooms) == limit:
                    return {"rooms": rooms, "next_batch": _encode_token(req, skip + limit)}
                # children_state lists every child, suggested or not (as Synapse does)
                rooms.append(await self._summary(room_id, state, self._children(state, False)))
            position += 1
            if req.max_depth is not None and depth >= req.max_depth:
                continue
            for child in self._children(state, req.suggested_only):
                child_id = child.state_key or ""
                if child_id in seen:
                    continue
                seen.add(child_id)
                child_state = await self._state.current_state_events(child_id)
                if child_state and await self._accessible(user_id, child_id, child_state):
                    queue.append((child_id, depth + 1, child_state))
        return {"rooms": rooms}

    async def for_server(self, origin: str, room_id: str, suggested_only: bool) -> dict[str, Any]:
        """The federation answer: the room, its visible children and the inaccessible ones."""
        state = await self._state.current_state_events(room_id)
        if not state or not await self._accessible_to_server(origin, room_id, state):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for child in self._children(state, suggested_only):
            child_id = child.state_key or ""
            child_state = await self._state.current_state_events(child_id)
            if not child_state:
                continue  # not a room we know: the asking server has to ask elsewhere
            if await self._accessible_to_server(origin, child_id, child_state):
                summary = await self._summary(child_id, child_state, self._children(child_state, False))
                children.append(summary)
            else:
                inaccessible.append(child_id)
        return {
            "room": await self._summary(room_id, state, self._children(state, False)),
            "children": children,
            "inaccessible_children": inaccessible,
        }

    async def _accessible_to_server(self, origin: str, room_id: str, state: Mapping[StateKey, Event]) -> bool:
        hv = state.get(("m.room.history_visibility", ""))
        if hv is not None and hv.content.get("history_visibility") == "world_readable":
            return True
        jr = state.get(("m.room.join_rules", ""))
        # restricted rooms too: the asking server's users may qualify (allowed_room_ids says how)
        if jr is not None and jr.content.get("join_rule") in ("public", "knock", "knock_restricted", "restricted"):
            return True
        suffix = ":" + origin
        return any(m.user_id.endswith(suffix) for m in await self._memberships.members(room_id))

    @staticmethod
    def _children(state: Mapping[StateKey, Event], suggested_only: bool) -> list[Event]:
        children = []
        for (event_type, state_key), event in state.items():
            if event_type != "m.space.child" or not state_key.startswith("!"):
                continue
            via = event.content.get("via")
            if not isinstance(via, list) or not via:
                continue  # an empty or missing via removes the child
            if suggested_only and event.content.get("suggested") is not True:
                continue
            children.append(event)
        return sorted(children, key=_child_sort_key)

    async def _accessible(self, user_id: str, room_id: str, state: Mapping[StateKey, Event]) -> bool:
        membership = await self._memberships.get_membership(room_id, user_id)
        if membership is not None and membership.membership in ("join", "invite"):
            return True
        hv = state.get(("m.room.history_visibility", ""))
        if hv is not None and hv.content.get("history_visibility") == "world_readable":
            return True
        jr = state.get(("m.room.join_rules", ""))
        rule = jr.content.get("join_rule") if jr is not None else None
        if rule in ("public", "knock", "knock_restricted"):
            return True
        if rule == "restricted" and jr is not None:
            for allowed in self._allowed_rooms(jr):
                joined = await self._memberships.get_membership(allowed, user_id)
                if joined is not None and joined.membership == "join":
                    return True
        return False

    @staticmethod
    def _allowed_rooms(join_rules: Event) -> list[str]:
        allow = join_rules.content.get("allow")
        if not isinstance(allow, list):
            return []
        return [
            a["room_id"]
            for a in allow
            if isinstance(a, dict) and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)
        ]

    async def _summary(self, room_id: str, state: Mapping[StateKey, Event], children: list[Event]) -> dict[str, Any]:
        def content(event_type: str) -> Mapping[str, Any]:
            event = state.get((event_type, ""))
            return event.content if event is not None else {}

        create = content("m.room.create")
        join_rule = content("m.room.join_rules").get("join_rule", "invite")
        entry: dict[str, Any] = {
            "room_id": room_id,
            "num_joined_members": len(await self._memberships.members(room_id)),
            "world_readable": content("m.room.history_visibility").get("history_visibility") == "world_readable",
            "guest_can_join": content("m.room.guest_access").get("guest_access") == "can_join",
            "join_rule": join_rule,
            "room_version": create.get("room_version", "1"),
            "children_state": [
                {
                    "type": c.type,
                    "state_key": c.state_key,
                    "content": dict(c.content),
                    "sender": c.sender,
                    "origin_server_ts": c.origin_server_ts,
                }
                for c in children
            ],
        }
        optional = {
            "name": content("m.room.name").get("name"),
            "topic": content("m.room.topic").get("topic"),
            "canonical_alias": content("m.room.canonical_alias").get("alias"),
            "avatar_url": content("m.room.avatar").get("url"),
            "room_type": create.get("type"),
            "encryption": content("m.room.encryption").get("algorithm"),
        }
        entry.update({k: v for k, v in optional.items() if isinstance(v, str)})
        if join_rule in ("restricted", "knock_restricted"):
            jr = state.get(("m.room.join_rules", ""))
            if jr is not None:
                entry["allowed_room_ids"] = self._allowed_rooms(jr)
        return entry
