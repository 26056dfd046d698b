"""EventRepository's in-memory copies (current state, forward extremities, events cached on
write, event -> state group) and its bulk writes, on SQLite and PostgreSQL.

Each test compares what the repository answers from memory with what a fresh repository
reads from the database, including when a read races a write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest_twisted
from twisted.internet import defer

from homeserver.events.model import Event
from homeserver.events.room_versions import get_room_version
from homeserver.storage.database import Database
from homeserver.storage.events import EventRepository, StateBefore
from homeserver.storage.state import StateGroupCache, StateRepository
from homeserver.storage.write_log import WriteLog

V10 = get_room_version("10")
ROOM = "!room:test"
_counter = [0]


def make_event(
    event_type: str,
    *,
    state_key: str | None = None,
    content: dict[str, Any] | None = None,
    prev: list[str] | None = None,
    auth: list[str] | None = None,
    sender: str = "@alice:test",
) -> Event:
    _counter[0] += 1
    d: dict[str, Any] = {
        "type": event_type,
        "room_id": ROOM,
        "sender": sender,
        "content": content or {},
        "origin_server_ts": 1000 + _counter[0],
        "depth": _counter[0],
        "prev_events": prev or [],
        "auth_events": auth or [],
        "hashes": {"sha256": "x"},
        "signatures": {},
    }
    if state_key is not None:
        d["state_key"] = state_key
    return Event(d, V10, event_id=f"$e{_counter[0]}")


def member(user: str, prev: list[str], membership: str = "join", name: str | None = None) -> Event:
    content: dict[str, Any] = {"membership": membership}
    if name is not None:
        content["displayname"] = name
    return make_event("m.room.member", state_key=user, content=content, prev=prev, sender=user)


class GatedDatabase:
    """A Database whose transactions named ``gated`` run at once but answer only when the
    gate opens: a read that saw the database before a write, answering after it."""

    def __init__(self, db: Database, gated: str) -> None:
        self._db = db
        self._gated = gated
        self.gate: defer.Deferred[None] = defer.Deferred()
        self.ran: defer.Deferred[None] = defer.Deferred()
        self.engine = db.engine

    async def run_interaction(self, desc: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = await self._db.run_interaction(desc, func, *args, **kwargs)
        if desc == self._gated and not self.ran.called:  # only the first such read
            self.ran.callback(None)
            await self.gate
        return result


async def new_room(db: Database) -> tuple[EventRepository, list[Event]]:
    repo = EventRepository(db, StateGroupCache())
    await repo.store_room(ROOM, "10", "@alice:test", 0)
    create = make_event("m.room.create", state_key="", content={"room_version": "10"})
    join = member("@alice:test", [create.event_id])
    events = [create, join]
    await repo.persist_event(
        create,
        state_before=StateBefore(delta={}),
        received_ts=0,
        current_state_delta={create.state_key_tuple: create.event_id},
        new_extremities=None,
    )
    result = await repo.persist_event(
        join,
        state_before=StateBefore(group=None, base_group=None, delta={create.state_key_tuple: create.event_id}),
        received_ts=0,
        current_state_delta={join.state_key_tuple: join.event_id},
        new_extremities=None,
    )
    assert result.state_after[join.state_key_tuple] == join.event_id
    return repo, events


async def fresh_view(db: Database) -> tuple[dict[Any, str], list[str]]:
    fresh = EventRepository(db, StateGroupCache())
    return await fresh.get_current_state_ids(ROOM), await fresh.get_forward_extremities(ROOM)


@pytest_twisted.ensureDeferred
async def test_current_state_and_extremities_follow_every_write(db: Database) -> None:
    repo, (create, join) = await new_room(db)
    # Filled on first read, then kept up to date by writes (no further reads needed).
    assert await repo.get_current_state_ids(ROOM) == {
        create.state_key_tuple: create.event_id,
        join.state_key_tuple: join.event_id,
    }
    assert await repo.get_forward_extremities(ROOM) == [join.event_id]
    topic = make_event("m.room.topic", state_key="", content={"topic": "t"}, prev=[join.event_id])
    await repo.persist_event(
        topic,
        state_before=StateBefore(delta={}, base_group=None),
        received_ts=0,
        current_state_delta={topic.state_key_tuple: topic.event_id},
        new_extremities=None,
    )
    # A fork, then a merge that removes the topic (a state reset by resolution) and sets
    # the extremities explicitly.
    side = make_event("m.room.message", content={"body": "x"}, prev=[join.event_id])
    await repo.persist_event(
        side, state_before=StateBefore(delta={}), received_ts=0, current_state_delta=None, new_extremities=None
    )
    assert await repo.get_forward_extremities(ROOM) == sorted([topic.event_id, side.event_id])
    merge = make_event("m.room.message", content={"body": "m"}, prev=[topic.event_id, side.event_id])
    await repo.persist_event(
        merge,
        state_before=StateBefore(delta={}),
        received_ts=0,
        current_state_delta={topic.state_key_tuple: None},
        new_extremities=[merge.event_id, side.event_id],
    )
    state, extremities = await fresh_view(db)
    assert topic.state_key_tuple not in state
    assert await repo.get_current_state_ids(ROOM) == state
    assert await repo.get_forward_extremities(ROOM) == extremities == sorted([merge.event_id, side.event_id])
    # A hidden (soft-failed) event changes neither.
    hidden = make_event("m.room.message", content={"body": "h"}, prev=[merge.event_id])
    await repo.persist_event(
        hidden,
        state_before=StateBefore(delta={}),
        received_ts=0,
        current_state_delta=None,
        new_extremities=None,
        hidden=True,
    )
    assert await repo.get_forward_extremities(ROOM) == extremities
    # Callers get a copy: changing it changes nothing stored.
    copy = await repo.get_current_state_ids(ROOM)
    copy.clear()
    assert await repo.get_current_state_ids(ROOM) == state


@pytest_twisted.ensureDeferred
async def test_a_read_racing_a_write_is_not_cached(db: Database) -> None:
    _, (create, join) = await new_room(db)
    for desc in ("get_current_state", "get_forward_extremities"):
        gated = GatedDatabase(db, desc)
        repo = EventRepository(gated, StateGroupCache())  # type: ignore[arg-type]
        reader = defer.ensureDeferred(
            repo.get_current_state_ids(ROOM) if desc == "get_current_state" else repo.get_forward_extremities(ROOM)
        )
        await gated.ran
        extremities = (await fresh_view(db))[1]
        bob = member(f"@bob{desc}:test", extremities)
        await repo.persist_event(
            bob,
            state_before=StateBefore(delta={}),
            received_ts=0,
            current_state_delta={bob.state_key_tuple: bob.event_id},
            new_extremities=None,
        )
        gated.gate.callback(None)
        stale: Any = await reader  # saw the database before bob's join committed
        assert bob.event_id not in (stale.values() if isinstance(stale, dict) else stale)
        state, extremities = await fresh_view(db)
        assert await repo.get_current_state_ids(ROOM) == state
        assert state[bob.state_key_tuple] == bob.event_id
        assert await repo.get_forward_extremities(ROOM) == extremities == [bob.event_id]


@pytest_twisted.ensureDeferred
async def test_events_are_cached_on_write_and_a_racing_read_never_wins(db: Database) -> None:
    repo, (create, join) = await new_room(db)
    stored = await repo.get_event(join.event_id)
    assert stored is not None and not stored.outlier and stored.event is join  # from memory
    # An auth event first stored as an outlier, then received in the timeline while a
    # read of its outlier copy is in flight: the read's older copy must not be cached.
    pl = make_event("m.room.power_levels", state_key="", content={"users": {}}, prev=[join.event_id])
    await repo.persist_outliers([(pl, None)], 0)
    outlier = await repo.get_event(pl.event_id)
    assert outlier is not None and outlier.outlier
    gated = GatedDatabase(db, "get_events")
    racing = EventRepository(gated, StateGroupCache())  # type: ignore[arg-type]
    reader = defer.ensureDeferred(racing.get_events([pl.event_id]))
    await gated.ran
    await racing.persist_event(
        pl,
        state_before=StateBefore(delta={}),
        received_ts=0,
        current_state_delta={pl.state_key_tuple: pl.event_id},
        new_extremities=None,
    )
    gated.gate.callback(None)
    assert (await reader)[pl.event_id].outlier  # the read saw the outlier row
    again = await racing.get_event(pl.event_id)
    assert again is not None and not again.outlier
    fresh = await EventRepository(db, StateGroupCache()).get_event(pl.event_id)
    assert fresh is not None and not fresh.outlier
    # Redaction drops the cached copy.
    await racing.mark_redacted(pl.event_id, "$redaction")
    redacted = await racing.get_event(pl.event_id)
    assert redacted is not None and redacted.redacted_by == "$redaction"


@pytest_twisted.ensureDeferred
async def test_absent_since_is_ignored_when_an_outlier_copy_was_written_since(db: Database) -> None:
    repo, (create, join) = await new_room(db)
    position = repo.write_position()
    late = make_event("m.room.message", content={"body": "late"}, prev=[join.event_id])
    # Stored as an outlier after the caller looked (an auth chain fetched meanwhile).
    await repo.persist_outliers([(late, None)], 0)
    await repo.persist_event(
        late,
        state_before=StateBefore(delta={}),
        received_ts=0,
        current_state_delta=None,
        new_extremities=None,
        absent_since=position,
    )
    fresh = await EventRepository(db, StateGroupCache()).get_event(late.event_id)
    assert fresh is not None and not fresh.outlier


@pytest_twisted.ensureDeferred
async def test_bulk_outliers_and_a_big_state_delta(db: Database) -> None:
    repo, (create, join) = await new_room(db)
    members = [member(f"@u{i}:remote", [join.event_id], name=f"User {i}") for i in range(700)]
    auth_edges = [create.event_id, join.event_id]
    members = [Event({**m.dict, "auth_events": auth_edges}, V10, event_id=m.event_id) for m in members]
    # Duplicates in the batch and an event stored before are left alone.
    await repo.persist_outliers([(members[0], None)], 0)
    await repo.persist_outliers([(m, None) for m in members] + [(members[1], "dup")], 0)
    fresh = EventRepository(db, StateGroupCache())
    got = await fresh.get_events([m.event_id for m in members])
    assert len(got) == 700 and all(g.outlier and g.rejected_reason is None for g in got.values())

    def counts(txn: Any) -> tuple[int, int]:
        ids = [m.event_id for m in members]
        marks = ",".join("?" * len(ids))
        edges = txn.select_one(f"SELECT COUNT(*) FROM event_edges WHERE event_id IN ({marks})", ids)
        auth = txn.select_one(f"SELECT COUNT(*) FROM event_auth WHERE event_id IN ({marks})", ids)
        return int(edges[0]), int(auth[0])

    assert await db.run_interaction("counts", counts) == (700, 1400)
    # Half of them known in memory, half read back in the transaction: every membership row.
    fresh_for_half = EventRepository(db, StateGroupCache())
    await fresh_for_half.get_events([m.event_id for m in members[:350]])
    msg = make_event("m.room.message", content={"body": "joined"}, prev=[join.event_id])
    delta: dict[Any, str | None] = {m.state_key_tuple: m.event_id for m in members}
    delta[join.state_key_tuple] = None  # alice's membership leaves the current state
    await fresh_for_half.persist_event(
        msg, state_before=StateBefore(delta={}), received_ts=0, current_state_delta=delta, new_extremities=None
    )
    state = await EventRepository(db, StateGroupCache()).get_current_state_ids(ROOM)
    assert len(state) == 701 and join.state_key_tuple not in state

    def memberships(txn: Any) -> dict[str, tuple[str, str | None]]:
        rows = txn.select_all(
            "SELECT user_id, membership, displayname FROM room_memberships WHERE room_id = ?", (ROOM,)
        )
        return {str(r[0]): (str(r[1]), r[2]) for r in rows}

    rows = await db.run_interaction("memberships", memberships)
    assert len(rows) == 700 and "@alice:test" not in rows
    assert rows["@u5:remote"] == ("join", "User 5") and rows["@u600:remote"] == ("join", "User 600")


@pytest_twisted.ensureDeferred
async def test_state_groups_of_written_events_are_known_without_a_read(db: Database) -> None:
    cache = StateGroupCache()
    repo = EventRepository(db, cache)
    await repo.store_room(ROOM, "10", "@alice:test", 0)
    create = make_event("m.room.create", state_key="", content={"room_version": "10"})
    result = await repo.persist_event(
        create,
        state_before=StateBefore(delta={}),
        received_ts=0,
        current_state_delta={create.state_key_tuple: create.event_id},
        new_extremities=None,
    )
    states = StateRepository(db, cache)
    reads: list[str] = []
    real: Callable[..., Awaitable[Any]] = db.run_interaction

    async def spy(desc: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        reads.append(desc)
        return await real(desc, func, *args, **kwargs)

    db.run_interaction = spy  # type: ignore[method-assign]
    try:
        assert await states.get_groups_for_events([create.event_id]) == {create.event_id: result.state_group_after}
        assert await states.get_state_after_event(create.event_id) == {create.state_key_tuple: create.event_id}
    finally:
        del db.run_interaction
    assert reads == []


@pytest_twisted.ensureDeferred
async def test_prefetched_lookups_are_rechecked_against_later_writes(db: Database) -> None:
    repo, (create, join) = await new_room(db)
    parent = make_event("m.room.message", content={"body": "p"}, prev=[join.event_id])
    child = make_event("m.room.message", content={"body": "c"}, prev=[parent.event_id])
    lookup = await repo.lookup_received([parent.event_id, child.event_id, join.event_id])
    assert lookup.found[parent.event_id] == (None, False) and lookup.found[child.event_id] == (None, False)
    assert lookup.found[join.event_id][1] is True
    # The child arrives first (its prev unknown yet) and is stored in the timeline.
    await repo.persist_event(
        child, state_before=StateBefore(delta={}), received_ts=0, current_state_delta=None, new_extremities=None
    )
    # The prefetched "nobody cites the parent" no longer holds: asked again.
    stored, has_children, position = await repo.get_event_and_children(parent.event_id, lookup)
    assert stored is None and has_children is True and position > lookup.position
    assert repo.cited_since(parent.event_id, lookup.position)
    # The prefetched "not stored" for the child no longer holds either: it is in memory now.
    stored, has_children, _ = await repo.get_event_and_children(child.event_id, lookup)
    assert stored is not None and not stored.outlier
    # An event nothing touched since: the prefetched answer is used as is.
    other = make_event("m.room.message", content={"body": "o"}, prev=[join.event_id])
    lookup = await repo.lookup_received([other.event_id])
    assert await repo.get_event_and_children(other.event_id, lookup) == (None, False, lookup.position)


def test_write_log_answers_changed_once_it_no_longer_covers_a_position() -> None:
    log = WriteLog(2)
    start = log.position
    log.note(["a"])
    assert log.changed_since("a", start) and not log.changed_since("b", start)
    assert not log.changed_since("a", log.position)
    middle = log.position
    log.note(["b"])
    log.note(["c"])  # "a" is dropped: nothing can be said about positions before its write
    assert log.changed_since("zzz", start)
    assert not log.changed_since("zzz", middle) and log.changed_since("c", middle)
