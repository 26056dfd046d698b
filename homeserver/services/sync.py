"""/sync: what changed for a user between two stream tokens, waiting for news when asked.

A response is computed against a fixed upper token taken at the start, so it is always
consistent; the next_batch token is that upper token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import DeferredSemaphore

from homeserver.core.clock import Clock
from homeserver.core.response_json import EncodedJSON, encode_json
from homeserver.events.model import Event
from homeserver.services.auth import Requester
from homeserver.services.ephemeral import ReceiptService, TypingService
from homeserver.services.events import RoomEventService
from homeserver.services.notifier import Notifier
from homeserver.services.presenter import EventPresenter
from homeserver.services.serialize import strip_state_event
from homeserver.services.streams import StreamToken
from homeserver.services.userdata import AccountDataService
from homeserver.storage.events import EventRepository, StoredEvent
from homeserver.storage.receipts import ReceiptRepository
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.state import StateMap, StateRepository
from homeserver.storage.timeline import TimelineRepository, TopoKey

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMEOUT_MS = 5 * 60 * 1000
# Initial (and full_state) syncs computed at once; the others wait their turn.  Each holds
# every room's timeline and state while it is built: 200 clients logging in together
# (after an outage, say) would otherwise hold 200 of them at once, for no gain in speed
# since the work is done on one thread (measured: +50 MB RSS with 200 at once, 25-member
# rooms).  Incremental syncs are not limited.
CONCURRENT_FULL_SYNCS = 4
# Joined rooms computed together (a handful of queries per batch).
ROOMS_PER_BATCH = 50
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)


class SyncFilter(Protocol):
    """What /sync needs of a client filter (see homeserver.filtering)."""

    def timeline_limit(self, default: int) -> int: ...
    def lazy_load_members(self) -> bool: ...
    def unread_thread_notifications(self) -> bool: ...
    def include_leave(self) -> bool: ...
    def room_included(self, room_id: str) -> bool: ...
    def timeline_matches(self, event: dict[str, Any]) -> bool: ...
    def state_matches(self, event: dict[str, Any]) -> bool: ...
    def ephemeral_matches(self, event: dict[str, Any]) -> bool: ...
    def account_data_matches(self, event: dict[str, Any]) -> bool: ...
    def room_account_data_matches(self, event: dict[str, Any]) -> bool: ...
    def presence_matches(self, event: dict[str, Any]) -> bool: ...


# Extra per-user sections filled by other features (to-device, device lists, key counts).
SyncExtension = Callable[[Requester, StreamToken | None, StreamToken, dict[str, Any]], Awaitable[None]]


@dataclass
class SyncRequest:
    requester: Requester
    since: StreamToken | None
    timeout_ms: int
    full_state: bool
    filter: SyncFilter


@dataclass(frozen=True, slots=True)
class _JoinedWork:
    """A joined room to report; ``since`` None means from the room's start."""

    room_id: str
    since: StreamToken | None
    has_events: bool
    account_data: list[dict[str, Any]]
    receipt: dict[str, Any] | None


def _filter_view(event: Event) -> dict[str, Any]:
    """What a client filter looks at in a timeline event (types, senders, rooms, contains_url),
    without serialising the whole event."""
    view: dict[str, Any] = {
        "type": event.type,
        "sender": event.sender,
        "room_id": event.room_id,
        "event_id": event.event_id,
        "content": event.content,
    }
    if event.is_state():
        view["state_key"] = event.state_key
    return view


def _split(flat: list[dict[str, Any]], groups: dict[str, list[StoredEvent]]) -> dict[str, list[dict[str, Any]]]:
    """Cut ``flat`` (serialised in the order of ``groups``) back into per-room lists."""
    out: dict[str, list[dict[str, Any]]] = {}
    start = 0
    for room_id, items in groups.items():
        out[room_id] = flat[start : start + len(items)]
        start += len(items)
    return out


class SyncService:
    def __init__(
        self,
        *,
        clock: Clock,
        notifier: Notifier,
        events: RoomEventService,
        event_store: EventRepository,
        state: StateRepository,
        timeline: TimelineRepository,
        rooms: RoomRepository,
        presenter: EventPresenter,
        account_data: AccountDataService,
        typing: TypingService,
        receipts: ReceiptService,
        receipt_store: ReceiptRepository,
    ) -> None:
        self._clock = clock
        self._notifier = notifier
        self._events = events
        self._store = event_store
        self._state = state
        self._timeline = timeline
        self._rooms = rooms
        self._presenter = presenter
        self._account_data = account_data
        self._typing = typing
        self._receipts = receipts
        self._receipt_store = receipt_store
        self.extensions: list[SyncExtension] = []
        # Streams owned by other features: name -> current position.
        self.positions: dict[str, Callable[[], Awaitable[int]]] = {}
        self._full_syncs = DeferredSemaphore(CONCURRENT_FULL_SYNCS)

    async def current_token(self) -> StreamToken:
        token = StreamToken(
            events=await self._store.current_stream_ordering(),
            account_data=await self._account_data.current_position(),
            receipts=await self._receipts.current_position(),
            typing=self._typing.position,
        )
        for stream, position in self.positions.items():
            token = token.advance(stream, await position())
        return token.max(self._notifier.current)

    async def sync(self, req: SyncRequest) -> dict[str, Any]:
        if req.since is None or req.full_state:
            async with self._full_syncs:  # such syncs never wait for news: the slot is soon free
                return await self._sync(req)
        return await self._sync(req)

    async def _sync(self, req: SyncRequest) -> dict[str, Any]:
        user_id = req.requester.user_id
        now = await self.current_token()
        body = await self._compute(req, now)
        timeout = min(max(req.timeout_ms, 0), MAX_TIMEOUT_MS)
        if req.since is not None and not req.full_state and timeout > 0 and self._is_empty(body):
            await self._notifier.wait_for_news(user_id, now, timeout)
            now = await self.current_token()
            body = await self._compute(req, now)
        return body

    @staticmethod
    def _is_empty(body: dict[str, Any]) -> bool:
        rooms = body["rooms"]
        if rooms["join"] or rooms["invite"] or rooms["leave"] or rooms["knock"]:
            return False
        if body["account_data"]["events"] or body["presence"]["events"] or body["to_device"]["events"]:
            return False
        lists = body.get("device_lists", {})
        return not (lists.get("changed") or lists.get("left"))

    async def _compute(self, req: SyncRequest, now: StreamToken) -> dict[str, Any]:
        user_id = req.requester.user_id
        since = None if req.full_state and req.since is None else req.since
        body: dict[str, Any] = {
            "next_batch": now.to_string(),
            "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
            "account_data": {"events": []},
            "presence": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
            "device_unused_fallback_key_types": [],
        }
        after_ad = since.account_data if since else 0
        room_data: dict[str, list[dict[str, Any]]] = {}
        # A stream that has not moved since the client's token needs no query.
        account_data = (
            await self._account_data.changed_since(user_id, after_ad, now.account_data)
            if after_ad < now.account_data
            else []
        )
        for room_id, data_type, content in account_data:
            event = {"type": data_type, "content": content}
            if room_id:
                room_data.setdefault(room_id, []).append(event)
            elif req.filter.account_data_matches(event):
                body["account_data"]["events"].append(event)

        memberships = await self._rooms.rooms_for_user(user_id, ("join", "invite", "leave", "ban", "knock"))
        changed: dict[str, list[tuple[str, str, int]]] = {}
        if since is not None and since.events < now.events:
            for room_id, membership, event_id, stream in await self._rooms.membership_changes_since(
                user_id, since.events, now.events
            ):
                changed.setdefault(room_id, []).append((membership, event_id, stream))
        joined = [m.room_id for m in memberships if m.membership == "join" and req.filter.room_included(m.room_id)]
        after_receipts = since.receipts if since else 0
        receipts = (
            await self._receipts.receipt_events(joined, user_id, after_receipts, now.receipts)
            if after_receipts < now.receipts
            else {}
        )
        rooms_with_events = (
            await self._timeline.rooms_with_events_between(joined, since.events, now.events) if since else set(joined)
        )
        joined_work = []
        for m in memberships:
            if not req.filter.room_included(m.room_id):
                continue
            if m.stream_ordering > now.events:
                continue  # changed after our upper token: next time
            if m.membership == "join":
                if since is not None and m.room_id not in rooms_with_events and m.room_id not in changed:
                    if not (
                        self._typing.typing_event(m.room_id, since.typing)
                        or receipts.get(m.room_id)
                        or room_data.get(m.room_id)
                        or req.full_state
                    ):
                        continue  # nothing new in this room: skip it without a query
                joined_work.append(m)
            if m.membership == "invite":
                if since is None or m.room_id in changed:
                    body["rooms"]["invite"][m.room_id] = await self._invited_room(m.room_id, m.event_id)
            elif m.membership == "knock":
                if since is None or m.room_id in changed:
                    body["rooms"]["knock"][m.room_id] = {
                        "knock_state": await self._stripped_state(m.room_id, m.event_id)
                    }
            elif m.membership in ("leave", "ban"):
                if since is None:
                    include = req.filter.include_leave()
                else:
                    # A room left since the last sync is reported once, so the client drops it.
                    include = m.room_id in changed and (
                        req.filter.include_leave() or await self._was_in_room(m.room_id, user_id, since)
                    )
                if include:
                    body["rooms"]["leave"][m.room_id] = await self._left_room(
                        req, m.room_id, m.event_id, m.stream_ordering, since
                    )
        # All joined rooms are computed together, a handful of queries for the whole batch.
        works = []
        for m in joined_work:
            newly = since is not None and m.room_id in changed and await self._was_not_joined(m.room_id, user_id, since)
            works.append(
                _JoinedWork(
                    room_id=m.room_id,
                    since=since if not newly and not req.full_state else None,
                    has_events=m.room_id in rooms_with_events or newly or req.full_state,
                    account_data=room_data.get(m.room_id, []),
                    receipt=receipts.get(m.room_id),
                )
            )
        join = body["rooms"]["join"]
        if len(works) <= ROOMS_PER_BATCH:
            join.update(await self._joined_rooms(req, works, now))
        else:
            # Hundreds of rooms: computed a batch at a time, each room encoded at once so
            # that its dicts are freed before the next batch (the API layer splices the
            # encoded rooms into the response).
            for start in range(0, len(works), ROOMS_PER_BATCH):
                batch = await self._joined_rooms(req, works[start : start + ROOMS_PER_BATCH], now)
                for room_id, room in batch.items():
                    join[room_id] = EncodedJSON(encode_json(room))
        for extension in self.extensions:
            await extension(req.requester, since, now, body)
        return body

    async def _was_not_joined(self, room_id: str, user_id: str, since: StreamToken) -> bool:
        at = await self._rooms.membership_at(room_id, user_id, since.events)
        return at is None or at[0] != "join"

    async def _was_in_room(self, room_id: str, user_id: str, since: StreamToken) -> bool:
        at = await self._rooms.membership_at(room_id, user_id, since.events)
        return at is not None and at[0] in ("join", "invite", "knock")

    async def _timeline_section(
        self, req: SyncRequest, room_id: str, after: int | None, upto: int, membership: str | None = None
    ) -> tuple[list[StoredEvent], bool, str]:
        memberships: dict[str, str | None] | None = {room_id: membership} if membership is not None else None
        limit = req.filter.timeline_limit(DEFAULT_TIMELINE_LIMIT)
        items, limited = await self._timeline.recent_event_ids(room_id, after=after, upto=upto, limit=limit)
        fetched = await self._store.get_events([e for e, _, _ in items])
        stored = [fetched[e] for e, _, _ in items if e in fetched]
        if stored:
            prev_batch = TopoKey(stored[0].event.depth, stored[0].stream_ordering).to_token()
        else:
            prev_batch = (await self._timeline.topo_key_for_stream(room_id, upto)).to_token()
        visible = await self._presenter.filter_visible(req.requester.user_id, stored, memberships=memberships)
        visible = [s for s in visible if req.filter.timeline_matches(_filter_view(s.event))]
        return visible, limited, prev_batch

    async def _state_at_timeline_start(self, timeline: list[StoredEvent], fallback: StateMap) -> StateMap:
        """The state just before the first timeline event: the state after the last one,
        with the timeline's own state changes undone."""
        if not timeline:
            return dict(fallback)
        state = await self._state.get_state_after_event(timeline[-1].event.event_id)
        state = dict(state if state is not None else fallback)
        for item in reversed(timeline):
            event = item.event
            if event.is_state() and state.get(event.state_key_tuple) == event.event_id:
                if item.replaces_state:
                    state[event.state_key_tuple] = item.replaces_state
                else:
                    del state[event.state_key_tuple]
        return state

    async def _state_at_stream(self, room_id: str, stream: int) -> StateMap:
        key = await self._timeline.topo_key_for_stream(room_id, stream)
        found = await self._timeline.paginate(room_id, start=key, backwards=True, limit=1)
        if not found:
            return {}
        return await self._state.get_state_after_event(found[0][0]) or {}

    async def _joined_rooms(self, req: SyncRequest, works: list[_JoinedWork], now: StreamToken) -> dict[str, Any]:
        """The ``rooms.join`` entries of the rooms in ``works``, computed in one batch:
        one query for all timelines, one for their state groups, one per kind of
        per-event data (edits, transaction IDs), one for unread counts, one for summaries."""
        user_id = req.requester.user_id
        todo: list[tuple[_JoinedWork, list[dict[str, Any]], list[dict[str, Any]]]] = []
        for work in works:
            typing = self._typing.typing_event(work.room_id, work.since.typing if work.since else 0)
            ephemeral = [e for e in (typing, work.receipt) if e is not None and req.filter.ephemeral_matches(e)]
            account_data = [e for e in work.account_data if req.filter.room_account_data_matches(e)]
            if work.since is not None and not work.has_events and not ephemeral and not account_data:
                continue
            todo.append((work, ephemeral, account_data))
        if not todo:
            return {}
        limit = req.filter.timeline_limit(DEFAULT_TIMELINE_LIMIT)
        recent = await self._timeline.recent_event_ids_many(
            {w.room_id: w.since.events if w.since else None for w, _, _ in todo}, upto=now.events, limit=limit
        )
        fetched = await self._store.get_events([e for items, _ in recent.values() for e, _, _ in items])
        stored = {room_id: [fetched[e] for e, _, _ in items if e in fetched] for room_id, (items, _) in recent.items()}
        visible = await self._presenter.filter_visible(
            user_id, [s for items in stored.values() for s in items], memberships=dict.fromkeys(stored, "join")
        )
        timelines: dict[str, list[StoredEvent]] = {room_id: [] for room_id in stored}
        for item in visible:
            if req.filter.timeline_matches(_filter_view(item.event)):
                timelines[item.event.room_id].append(item)

        state_ids: dict[str, StateMap] = {}
        prev_batches: dict[str, str] = {}
        for work, _, _ in todo:
            room_id, since, timeline = work.room_id, work.since, timelines[work.room_id]
            first = stored[room_id][0] if stored[room_id] else None
            prev_batches[room_id] = (
                TopoKey(first.event.depth, first.stream_ordering).to_token()
                if first is not None
                else (await self._timeline.topo_key_for_stream(room_id, now.events)).to_token()
            )
            ids: StateMap = {}
            if since is None:
                current = {} if timeline else await self._state_at_stream(room_id, now.events)
                ids = await self._state_at_timeline_start(timeline, current)
            elif recent[room_id][1]:
                at_since = await self._state_at_stream(room_id, since.events)
                at_start = await self._state_at_timeline_start(
                    timeline, await self._state_at_stream(room_id, now.events)
                )
                ids = {k: v for k, v in at_start.items() if at_since.get(k) != v}
            if req.filter.lazy_load_members() and ids:
                wanted = {s.event.sender for s in timeline} | {user_id}
                ids = {k: v for k, v in ids.items() if k[0] != "m.room.member" or k[1] in wanted}
            state_ids[room_id] = ids
        state_events = await self._store.get_events([e for ids in state_ids.values() for e in ids.values()])
        state_lists: dict[str, list[StoredEvent]] = {}
        for room_id, ids in state_ids.items():
            in_timeline = {s.event.event_id for s in timelines[room_id]}
            state_lists[room_id] = [state_events[e] for e in ids.values() if e in state_events and e not in in_timeline]
        state_json = await self._presenter.serialize(
            [s for items in state_lists.values() for s in items], user_id=None, device_id=None, with_relations=False
        )
        timeline_json = await self._presenter.serialize(
            [s for items in timelines.values() for s in items], user_id=user_id, device_id=req.requester.device_id
        )
        state_by_room = _split(state_json, state_lists)
        timeline_by_room = _split(timeline_json, timelines)

        room_ids = [w.room_id for w, _, _ in todo]
        unread = await self._receipt_store.unread_thread_counts_many(user_id, room_ids)
        # With unread_thread_notifications, threads get their own counts and the room's
        # counts are the main timeline's; without, the room's counts cover every thread.
        by_thread = req.filter.unread_thread_notifications()
        needs_summary = [
            w.room_id
            for w, _, _ in todo
            if w.since is None
            or recent[w.room_id][1]
            or any(s.event.type == "m.room.member" for s in timelines[w.room_id])
        ]
        summaries = await self._rooms.summaries(needs_summary, user_id)
        out: dict[str, Any] = {}
        for work, ephemeral, account_data in todo:
            room_id = work.room_id
            threads = unread.get(room_id, {})
            if by_thread:
                notifications, highlights = threads.get("", (0, 0))
            else:
                notifications, highlights = sum(n for n, _ in threads.values()), sum(h for _, h in threads.values())
            room: dict[str, Any] = {
                "timeline": {
                    "events": timeline_by_room[room_id],
                    "limited": recent[room_id][1],
                    "prev_batch": prev_batches[room_id],
                },
                "state": {"events": [e for e in state_by_room[room_id] if req.filter.state_matches(e)]},
                "ephemeral": {"events": ephemeral},
                "account_data": {"events": account_data},
                "unread_notifications": {"notification_count": notifications, "highlight_count": highlights},
            }
            if by_thread:
                room["unread_thread_notifications"] = {
                    thread: {"notification_count": n, "highlight_count": h}
                    for thread, (n, h) in threads.items()
                    if thread and (n or h)
                }
            if room_id in summaries:
                heroes, joined, invited = summaries[room_id]
                room["summary"] = {
                    "m.heroes": heroes,
                    "m.joined_member_count": joined,
                    "m.invited_member_count": invited,
                }
            out[room_id] = room
        return out

    async def _stripped_state(self, room_id: str, member_event_id: str) -> dict[str, Any]:
        current = await self._events.current_state_ids(room_id)
        if ("m.room.create", "") not in current:
            # A room we are not in (an invite or knock over federation): the stripped state
            # came with the membership event, in its unsigned section.
            stored = await self._store.get_event(member_event_id)
            if stored is not None:
                unsigned = stored.event.unsigned
                sent = unsigned.get("invite_room_state", unsigned.get("knock_room_state"))
                if isinstance(sent, list):
                    own = strip_state_event(stored.event)
                    events = [
                        e
                        for e in sent
                        if isinstance(e, dict)
                        and (e.get("type"), e.get("state_key")) != (own["type"], own["state_key"])
                    ]
                    return {"events": [*events, own]}
        ids = [current[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in current]
        fetched = await self._store.get_events([*ids, member_event_id])
        events = [strip_state_event(fetched[e].event) for e in ids if e in fetched]
        member = fetched.get(member_event_id)
        if member is not None:
            events.append(strip_state_event(member.event))
        return {"events": events}

    async def _invited_room(self, room_id: str, invite_event_id: str) -> dict[str, Any]:
        return {"invite_state": await self._stripped_state(room_id, invite_event_id)}

    async def _left_room(
        self, req: SyncRequest, room_id: str, leave_event_id: str, leave_stream: int, since: StreamToken | None
    ) -> dict[str, Any]:
        timeline, limited, prev_batch = await self._timeline_section(
            req, room_id, since.events if since else None, leave_stream
        )
        state_at_leave = await self._state.get_state_after_event(leave_event_id) or {}
        state_ids = await self._state_at_timeline_start(timeline, state_at_leave) if (since is None or limited) else {}
        fetched = await self._store.get_events(list(state_ids.values()))
        timeline_ids = {s.event.event_id for s in timeline}
        state_json = await self._presenter.serialize(
            [fetched[e] for e in state_ids.values() if e in fetched and e not in timeline_ids],
            user_id=None,
            device_id=None,
            with_relations=False,
        )
        return {
            "timeline": {
                "events": await self._presenter.serialize(
                    timeline, user_id=req.requester.user_id, device_id=req.requester.device_id
                ),
                "limited": limited,
                "prev_batch": prev_batch,
            },
            "state": {"events": state_json},
            "account_data": {"events": []},
        }
