"""Sending and reading room content: messages, state, redactions, /messages, /context."""

from __future__ import annotations

import re
from typing import Any, Protocol

from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.events.power_levels import get_redact_level, get_user_power_level
from homeserver.filtering import RoomEventFilter
from homeserver.services.auth import Requester
from homeserver.services.events import RoomEventService, SentEvent
from homeserver.services.presenter import EventPresenter
from homeserver.storage.events import EventRepository, StoredEvent, TxnIdInfo
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.state import StateRepository
from homeserver.storage.timeline import TimelineRepository, TopoKey

MAX_PAGE = 1000
# Backward pages fetch missing history from other servers at most this many times.
BACKFILL_ROUNDS = 3


class Backfiller(Protocol):
    """Fetches a room's missing history from other servers (federation/backfill.py)."""

    async def backfill(self, room_id: str, *, min_depth: int | None, max_depth: int, limit: int) -> bool:
        """Fill the holes behind the events of ``room_id`` between depths ``min_depth``
        (None: no lower bound) and ``max_depth``; True when events were added.  Bounded in
        time: answers False rather than keep a client waiting."""
        ...


_TOPO_TOKEN = re.compile(r"t(-?[0-9]{1,19})-(-?[0-9]{1,19})")


def parse_topo_token(token: str, param: str) -> TopoKey | None:
    """A /messages token: ``t<depth>-<stream>``, or a /sync ``s...`` token (None: resolve later)."""
    if token.startswith("t"):
        # the bounds /messages answers as ``start`` without ``from`` are negative: t-1--1
        matched = _TOPO_TOKEN.fullmatch(token)
        if matched and all(abs(int(n)) <= 2**62 for n in matched.groups()):  # SQL BIGINT range
            return TopoKey(int(matched[1]), int(matched[2]))
    elif token.startswith("s"):
        return None
    raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid {param} token: {token!r}")


class MessageService:
    def __init__(
        self,
        *,
        events: RoomEventService,
        event_store: EventRepository,
        state: StateRepository,
        timeline: TimelineRepository,
        rooms: RoomRepository,
        presenter: EventPresenter,
    ) -> None:
        self._events = events
        self._store = event_store
        self._state = state
        self._timeline = timeline
        self._rooms = rooms
        self.presenter = presenter
        # Set when federation is on: /messages then pages into history from before our join.
        self.backfiller: Backfiller | None = None

    async def _require_joined(self, user_id: str, room_id: str) -> None:
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            # An unknown room answers as a room one is not in (spec and Synapse: 403).
            raise forbidden(f"User {user_id} not in room {room_id}")

    # -- writing -----------------------------------------------------------------------

    async def send(
        self,
        requester: Requester,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        *,
        state_key: str | None = None,
        txn_id: str | None = None,
        origin_server_ts: int | None = None,
    ) -> SentEvent:
        if event_type == "m.room.create":
            raise forbidden("m.room.create can only be sent at room creation")
        if event_type == "m.room.redaction" and state_key is None:
            redacts = content.get("redacts")
            if not isinstance(redacts, str):
                raise MatrixError(400, Codes.BAD_JSON, "Parameter redacts must be an event ID")
            return await self.redact(requester, room_id, redacts, content, txn_id=txn_id)
        if not await self._rooms.room_exists(room_id):
            raise forbidden(f"User {requester.user_id} not in room {room_id}")  # as Synapse: 403
        if event_type == "m.room.encryption" and state_key == "":
            await self._check_encryption_not_weakened(room_id, content)
        txn = TxnIdInfo(requester.user_id, requester.device_id or "", txn_id) if txn_id is not None else None
        return await self._events.send(
            room_id=room_id, sender=requester.user_id, event_type=event_type, content=content,
            state_key=state_key, txn=txn, origin_server_ts=origin_server_ts,
        )

    async def _check_encryption_not_weakened(self, room_id: str, content: dict[str, Any]) -> None:
        """Once a room is encrypted it stays so: no removal, no change of algorithm."""
        current = await self._events.current_state_event(room_id, "m.room.encryption")
        algorithm = content.get("algorithm")
        if not isinstance(algorithm, str) or not algorithm:
            raise MatrixError(400, Codes.BAD_JSON, "Parameter algorithm must be a non-empty string")
        if current is not None and current.content.get("algorithm") not in (None, algorithm):
            raise forbidden("Encryption cannot be changed or turned off in a room once enabled")

    async def redact(
        self, requester: Requester, room_id: str, target_id: str, content: dict[str, Any], *, txn_id: str | None
    ) -> SentEvent:
        await self._require_joined(requester.user_id, room_id)
        target = await self._store.get_event(target_id)
        if target is None or target.event.room_id != room_id:
            raise not_found("Event not found")
        if target.event.type == "m.room.encryption" and target.event.state_key == "":
            # Redacting it would strip the algorithm from the room's encryption state.
            raise forbidden("The encryption settings of a room cannot be redacted")
        if target.event.sender != requester.user_id:
            state = await self._events.current_state_events(
                room_id, [("m.room.create", ""), ("m.room.power_levels", "")]
            )
            pl = state.get(("m.room.power_levels", ""))
            create = state.get(("m.room.create", ""))
            version = await self._events.room_version(room_id)
            level = get_user_power_level(requester.user_id, create, pl, version) if create else 0
            if level < get_redact_level(pl.content if pl else {}):
                raise forbidden("You don't have permission to redact this event")
        body = {k: v for k, v in content.items() if k != "redacts"}
        txn = TxnIdInfo(requester.user_id, requester.device_id or "", txn_id) if txn_id is not None else None
        sent = await self._events.send(
            room_id=room_id, sender=requester.user_id, event_type="m.room.redaction", content=body,
            redacts=target_id, txn=txn,
        )
        await self._store.mark_redacted(target_id, sent.event.event_id)
        return sent

    # -- reading -----------------------------------------------------------------------

    async def get_event(self, requester: Requester, room_id: str, event_id: str) -> dict[str, Any]:
        stored = await self._store.get_event(event_id)
        if stored is None or stored.event.room_id != room_id:
            raise not_found("Event not found")
        visible = await self.presenter.filter_visible(requester.user_id, [stored])
        if not visible:
            raise not_found("Event not found")
        return (await self.presenter.serialize(visible, user_id=requester.user_id, device_id=requester.device_id))[0]

    async def _state_for_reader(self, user_id: str, room_id: str) -> dict[tuple[str, str], str]:
        """Current state for members; the state when they left for former members."""
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is not None and membership.membership == "join":
            return await self._events.current_state_ids(room_id)
        if membership is not None and membership.membership in ("leave", "ban"):
            state = await self._state.get_state_after_event(membership.event_id)
            if state is not None:
                return state
        if await self._world_readable(room_id):
            return await self._events.current_state_ids(room_id)
        # An unknown room answers as a room one is not in (spec for /state, /messages: 403).
        raise forbidden(f"User {user_id} not in room {room_id}")

    async def _world_readable(self, room_id: str) -> bool:
        hv = await self._events.current_state_event(room_id, "m.room.history_visibility")
        return hv is not None and hv.content.get("history_visibility") == "world_readable"

    async def get_state(self, requester: Requester, room_id: str) -> list[dict[str, Any]]:
        state = await self._state_for_reader(requester.user_id, room_id)
        events = await self._store.get_events(list(state.values()))
        return await self.presenter.serialize(
            [events[e] for e in state.values() if e in events], user_id=None, device_id=None, with_relations=False
        )

    async def get_state_event(self, requester: Requester, room_id: str, event_type: str, state_key: str) -> Any:
        state = await self._state_for_reader(requester.user_id, room_id)
        event_id = state.get((event_type, state_key))
        stored = await self._store.get_event(event_id) if event_id else None
        if stored is None:
            raise not_found("Event not found")
        return stored

    async def members(
        self,
        requester: Requester,
        room_id: str,
        *,
        at: str | None = None,
        membership: str | None = None,
        not_membership: str | None = None,
    ) -> list[dict[str, Any]]:
        state = await self._state_for_reader(requester.user_id, room_id)
        if at is not None:
            state = await self._state_at_token(requester.user_id, room_id, at, state)
        member_ids = [e for (t, _), e in state.items() if t == "m.room.member"]
        events = await self._store.get_events(member_ids)
        chosen = []
        for event_id in member_ids:
            stored = events.get(event_id)
            if stored is None:
                continue
            m = stored.event.content.get("membership")
            if membership is not None and m != membership:
                continue
            if not_membership is not None and m == not_membership:
                continue
            chosen.append(stored)
        return await self.presenter.serialize(chosen, user_id=None, device_id=None, with_relations=False)

    async def _state_at_token(
        self, user_id: str, room_id: str, at: str, readable: dict[tuple[str, str], str]
    ) -> dict[tuple[str, str], str]:
        """The state at a /messages (``t...``) or /sync (``s...``) token: after the room's
        last event before it; empty before the room's first event.  A former member sees
        the state when they left at the latest (``readable``, from ``_state_for_reader``)."""
        key = parse_topo_token(at, "at")
        if key is None:
            from homeserver.services.streams import StreamToken

            key = await self._timeline.topo_key_for_stream(room_id, StreamToken.parse(at, "at").events)
        found = await self._timeline.paginate(room_id, start=key, backwards=True, limit=1)
        if not found:
            return {}
        event_id, position = found[0]
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is not None and membership.membership in ("leave", "ban"):
            if position.stream > membership.stream_ordering:
                return readable
        at_state = await self._state.get_state_after_event(event_id)
        return readable if at_state is None else at_state

    async def joined_members(self, requester: Requester, room_id: str) -> dict[str, Any]:
        await self._require_joined(requester.user_id, room_id)
        return {
            m.user_id: {"display_name": m.displayname, "avatar_url": m.avatar_url}
            for m in await self._rooms.members(room_id)
        }

    async def messages(
        self,
        requester: Requester,
        room_id: str,
        *,
        from_token: str | None,
        to_token: str | None,
        backwards: bool,
        limit: int,
        event_filter: RoomEventFilter | None = None,
    ) -> dict[str, Any]:
        await self._state_for_reader(requester.user_id, room_id)
        limit = max(0, min(limit, MAX_PAGE))
        if from_token is None:
            start = TopoKey(2**62, 2**62) if backwards else TopoKey(-1, -1)
        else:
            parsed = parse_topo_token(from_token, "from")
            if parsed is None:
                from homeserver.services.streams import StreamToken

                start = await self._timeline.topo_key_for_stream(room_id, StreamToken.parse(from_token, "from").events)
            else:
                start = parsed
        end_key = parse_topo_token(to_token, "to") if to_token else None
        collected, cursor, exhausted = await self._page(requester, room_id, start, end_key, backwards, limit, event_filter)
        rounds = BACKFILL_ROUNDS if backwards and self.backfiller is not None and limit > 0 else 0
        for _ in range(rounds):
            # History before the page's oldest event, or a hole inside the page: ask
            # the room's other servers for it, then read the page again.
            assert self.backfiller is not None
            lowest = None if exhausted else cursor.depth
            if not await self.backfiller.backfill(room_id, min_depth=lowest, max_depth=start.depth, limit=limit):
                break
            collected, cursor, exhausted = await self._page(
                requester, room_id, start, end_key, backwards, limit, event_filter
            )
        end: TopoKey | None = None
        if len(collected) > limit:
            collected = collected[:limit]
            end = _key(collected[-1])
        elif not exhausted:
            end = cursor
        chunk = await self.presenter.serialize(collected, user_id=requester.user_id, device_id=requester.device_id)
        body: dict[str, Any] = {"chunk": chunk, "start": from_token or start.to_token()}
        if end is not None:
            body["end"] = end.to_token()
        if event_filter is not None and event_filter.lazy_load_members:
            senders = {s.event.sender for s in collected}
            current = await self._events.current_state_ids(room_id)
            members = await self._store.get_events([current[("m.room.member", u)] for u in senders if ("m.room.member", u) in current])
            body["state"] = await self.presenter.serialize(list(members.values()), user_id=None, device_id=None, with_relations=False)
        return body

    async def _page(
        self,
        requester: Requester,
        room_id: str,
        start: TopoKey,
        end_key: TopoKey | None,
        backwards: bool,
        limit: int,
        event_filter: RoomEventFilter | None,
    ) -> tuple[list[StoredEvent], TopoKey, bool]:
        """The visible events from ``start`` on (at least ``limit`` unless history ends),
        the position reached and whether history ended there."""
        collected: list[StoredEvent] = []
        cursor = start
        exhausted = False
        # Filtering can drop events: page on until the limit is met or history ends.
        while len(collected) < limit and not exhausted:
            page = await self._timeline.paginate(room_id, start=cursor, backwards=backwards, limit=limit, end=end_key)
            if len(page) < limit:
                exhausted = True
            if not page:
                break
            cursor = page[-1][1]
            fetched = await self._store.get_events([e for e, _ in page])
            batch = [fetched[e] for e, _ in page if e in fetched]
            if event_filter is not None:
                batch = [s for s in batch if event_filter.matches(s.event.dict)]
            collected.extend(await self.presenter.filter_visible(requester.user_id, batch))
        return collected, cursor, exhausted

    async def context(
        self, requester: Requester, room_id: str, event_id: str, *, limit: int, event_filter: RoomEventFilter | None = None
    ) -> dict[str, Any]:
        stored = await self._store.get_event(event_id)
        if stored is None or stored.event.room_id != room_id:
            raise not_found("Event not found")
        if not await self.presenter.filter_visible(requester.user_id, [stored]):
            raise not_found("Event not found")
        key = TopoKey(stored.event.depth, stored.stream_ordering)
        half = max(0, min(limit, MAX_PAGE)) // 2
        before = await self.messages(
            requester, room_id, from_token=key.to_token(), to_token=None, backwards=True,
            limit=half, event_filter=event_filter,
        )
        after = await self.messages(
            requester, room_id, from_token=key.to_token(), to_token=None, backwards=False,
            limit=max(0, min(limit, MAX_PAGE)) - half, event_filter=event_filter,
        )
        event_json = (await self.presenter.serialize([stored], user_id=requester.user_id, device_id=requester.device_id))[0]
        state = await self.get_state(requester, room_id)
        return {
            "event": event_json,
            "events_before": before["chunk"],
            "events_after": after["chunk"],
            "start": before.get("end", key.to_token()),
            "end": after.get("end", key.to_token()),
            "state": state,
        }

    async def relations(
        self,
        requester: Requester,
        room_id: str,
        event_id: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        limit: int,
        backwards: bool,
        from_token: str | None,
    ) -> dict[str, Any]:
        parent = await self._store.get_event(event_id)
        if parent is None or parent.event.room_id != room_id:
            raise not_found("Event not found")
        if not await self.presenter.filter_visible(requester.user_id, [parent]):
            raise not_found("Event not found")
        rows = await self._timeline.relations(event_id, rel_type=rel_type, event_type=event_type)
        if backwards:
            rows.reverse()
        offset = 0
        if from_token is not None:
            try:
                offset = int(from_token)
            except ValueError:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid from token") from None
        page = rows[offset : offset + max(1, min(limit, MAX_PAGE))]
        fetched = await self._store.get_events([r[0] for r in page])
        visible = await self.presenter.filter_visible(requester.user_id, [fetched[r[0]] for r in page if r[0] in fetched])
        body: dict[str, Any] = {
            "chunk": await self.presenter.serialize(visible, user_id=requester.user_id, device_id=requester.device_id)
        }
        if offset + len(page) < len(rows):
            body["next_batch"] = str(offset + len(page))
        return body

    async def threads(self, requester: Requester, room_id: str, *, limit: int, include: str) -> dict[str, Any]:
        await self._require_joined(requester.user_id, room_id)
        roots = await self._timeline.thread_roots(room_id)
        fetched = await self._store.get_events(roots)
        chosen = []
        for root in roots:
            stored = fetched.get(root)
            if stored is None:
                continue
            if include == "participated":
                rels = await self._timeline.relations(root, rel_type="m.thread")
                if stored.event.sender != requester.user_id and all(r[3] != requester.user_id for r in rels):
                    continue
            chosen.append(stored)
        visible = await self.presenter.filter_visible(requester.user_id, chosen[: max(1, min(limit, MAX_PAGE))])
        return {"chunk": await self.presenter.serialize(visible, user_id=requester.user_id, device_id=requester.device_id)}


def _key(stored: StoredEvent) -> TopoKey:
    return TopoKey(stored.event.depth, stored.stream_ordering)
