"""The change log /sync reads instead of the database (``StreamChanges``), on SQLite and
PostgreSQL.

Every answer the room and timeline repositories give from the log is compared with what
repositories without a log read from the database, for every pair of stream positions
of a room's history (timeline events, joins and leaves, a soft-failed event, a backfilled
one, an invite to a room we are not in), and the number of queries is counted.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from homeserver.events.model import Event
from homeserver.storage.database import Database
from homeserver.storage.events import EventRepository, StateBefore
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.state import StateGroupCache
from homeserver.storage.stream_changes import StreamChanges
from homeserver.storage.timeline import TimelineRepository
from tests.storage.test_event_caches import ROOM, V10, make_event, member

OTHER_ROOM = "!elsewhere:test"


class CountingDatabase:
    """A Database that records the description of each transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.engine = db.engine
        self.seen: list[str] = []

    async def run_interaction(self, desc: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        self.seen.append(desc)
        return await self._db.run_interaction(desc, func, *args, **kwargs)


async def persist(repo: EventRepository, event: Event, state: dict[Any, str], **kwargs: Any) -> int:
    delta = {event.state_key_tuple: event.event_id} if event.is_state() and not kwargs else None
    result = await repo.persist_event(
        event,
        state_before=StateBefore(group=None, base_group=None, delta=dict(state)),
        received_ts=0,
        current_state_delta=delta,
        new_extremities=None,
        **kwargs,
    )
    if delta:
        state.update(delta)
    return result.stream_ordering


@pytest_twisted.ensureDeferred
async def test_log_answers_like_the_database(db: Database) -> None:
    changes = StreamChanges()
    repo = EventRepository(db, StateGroupCache(), changes=changes)
    await repo.store_room(ROOM, "10", "@alice:test", 0)
    state: dict[Any, str] = {}
    create = make_event("m.room.create", state_key="", content={"room_version": "10"})
    positions = [await repo.current_stream_ordering()]
    positions.append(await persist(repo, create, state))
    join = member("@alice:test", [create.event_id])
    positions.append(await persist(repo, join, state))
    last = join.event_id
    # Everything before here was written before a second repository's log started.
    late_changes = StreamChanges()
    late = EventRepository(db, StateGroupCache(), changes=late_changes)
    start = await late.current_stream_ordering()
    for event in [
        make_event("m.room.message", content={"body": "hi"}, prev=[last]),
        member("@bob:test", [last]),
        make_event("m.room.message", content={"body": "soft-failed"}, prev=[last]),
        member("@bob:test", [last], "leave"),
    ]:
        hidden = event.content.get("body") == "soft-failed"
        positions.append(await persist(repo, event, state, **({"hidden": True} if hidden else {})))
        if not hidden:
            last = event.event_id
    backfilled = make_event("m.room.message", content={"body": "old"}, prev=[create.event_id])
    await persist(repo, backfilled, state, backfilled=True)
    invite_dict = dict(make_event("m.room.member", state_key="@alice:test", content={"membership": "invite"}).dict)
    invite = Event({**invite_dict, "room_id": OTHER_ROOM, "sender": "@x:far"}, V10, event_id="$invite")
    positions.append(await repo.persist_out_of_band_membership(invite, 0))
    positions.append(await persist(repo, make_event("m.room.message", content={"body": "end"}, prev=[last]), state))

    plain_timeline, plain_rooms = TimelineRepository(db), RoomRepository(db)
    counting = CountingDatabase(db)
    timeline = TimelineRepository(counting, changes)  # type: ignore[arg-type]
    rooms = RoomRepository(counting, changes)  # type: ignore[arg-type]
    for after in positions:
        for upto in positions:
            for user in ("@alice:test", "@bob:test", "@carol:test"):
                assert await rooms.membership_changes_since(user, after, upto) == (
                    await plain_rooms.membership_changes_since(user, after, upto)
                ), (user, after, upto)
                assert await rooms.member_changes_in_rooms_of(user, after, upto) == (
                    await plain_rooms.member_changes_in_rooms_of(user, after, upto)
                ), (user, after, upto)
            for ids in ([ROOM], [OTHER_ROOM], [ROOM, OTHER_ROOM, "!unknown:test"]):
                assert await timeline.rooms_with_events_between(ids, after, upto) == (
                    await plain_timeline.rooms_with_events_between(ids, after, upto)
                ), (ids, after, upto)
    # Positions the log covers were answered from memory, except where a room's last event
    # is past ``upto`` (then only that room is read).
    assert counting.seen.count("membership_changes") < len(positions) ** 2
    counting.seen.clear()
    end = positions[-1]
    assert await timeline.rooms_with_events_between([ROOM, OTHER_ROOM], end, end + 10) == set()
    assert await rooms.membership_changes_since("@alice:test", positions[-2], end + 10) == []
    assert await rooms.member_changes_in_rooms_of("@alice:test", positions[-2], end + 10) == []
    assert counting.seen == []

    # A log started later answers only for positions from its start on.
    assert late_changes.changed([("events", ROOM)], start - 1) is None
    late_timeline = TimelineRepository(counting, late_changes)  # type: ignore[arg-type]
    assert await late_timeline.rooms_with_events_between([ROOM], start - 1, start) == {ROOM}
    assert counting.seen == ["rooms_with_events"]
    # That repository wrote nothing: its log knows of no change at all since its start.
    assert late_changes.changed([("events", ROOM)], start) == {}


def test_stream_changes_floor_and_eviction() -> None:
    log = StreamChanges(size=2)
    # Not started: nothing is known.
    log.note([("events", "!a")], 5)
    assert log.changed([("events", "!a")], 10) is None and log.changed_since(("events", "!a"), 10)
    log.start(10)
    log.start(3)  # only the first start counts
    assert log.changed([("events", "!a")], 10) == {} and log.changed_after(10) == {}
    assert log.changed_after(9) is None
    log.note([("events", "!a")], 11)
    log.note([("events", "!b"), ("membership", "@u")], 12)  # "!a" is evicted: the floor is 11
    assert log.changed_after(10) is None
    assert log.changed([("events", "!a"), ("events", "!b")], 11) == {("events", "!b"): 12}
    assert log.changed_after(11) == {("events", "!b"): 12, ("membership", "@u"): 12}
    assert not log.changed_since(("events", "!c"), 11) and log.changed_since(("membership", "@u"), 11)
    log.note([("events", "!b")], 13)
    assert log.changed_after(12) == {("events", "!b"): 13}
