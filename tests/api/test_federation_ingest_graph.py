"""The room graph across servers: a join's state, gaps filled from the sender, the serving
endpoints, and out-of-band memberships (on SQLite and PostgreSQL).

a.test joins b.test's room the way FED-MEMBERSHIP will after a send_join: b.test's
``/state`` at alice's join is handed to a.test's ``persist_join_state``.  Then events
created on a.test reach b.test one at a time, so that b.test has to fetch what it missed
from a.test's ``/get_missing_events``, ``/state_ids`` and ``/event``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted

from homeserver.events.builder import build_event
from homeserver.events.model import Event
from homeserver.federation import ingest as ingest_module
from homeserver.federation.ingest import RemoteStateError
from homeserver.federation.transport import HttpResponseError
from tests.api.conftest import HSFixture
from tests.api.test_federation_ingest import Room, make_room, send, start_servers, timeline_bodies
from tests.api.test_federation_keys import Peer, cleanups

__all__ = ["cleanups"]  # the fixture, shared with the key server tests

FED = "/_matrix/federation/v1"


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture], database_config: dict[str, Any], tmp_path: Path, cleanups: list[Any]
) -> dict[str, Peer]:
    return start_servers(make_server, database_config, tmp_path, cleanups, "d.test")


async def join_from_a(room: Room) -> Any:
    """Alice joins over /send, then a.test builds its copy of the room from b.test's /state."""
    join = await room.join_alice()
    a = room.a
    state = await a.federation.client.get_json(
        "b.test", f"{FED}/state/{quote(room.room_id)}", args={"event_id": join.event_id}
    )
    ingest = a.hs.federation_ingest
    assert ingest is not None
    stream = await ingest.persist_join_state("b.test", room.version, join, state["pdus"], state["auth_chain"])
    assert stream > 0
    return join


async def a_sends(room: Room, body: str) -> str:
    sent = await room.a.hs.services.events.send(
        room_id=room.room_id,
        sender="@alice:a.test",
        event_type="m.room.message",
        content={"msgtype": "m.text", "body": body},
    )
    return str(sent.event.event_id)


async def pdu_of(peer: Peer, event_id: str) -> dict[str, Any]:
    stored = await peer.hs.services.events.get_event(event_id)
    assert stored is not None
    pdu = stored.event.get_pdu_json()
    pdu.pop("unsigned", None)
    return pdu


@pytest.mark.parametrize("version", ["10", "12"])
@pytest_twisted.ensureDeferred
async def test_join_state_then_missing_events_fetched_from_origin(peers: dict[str, Peer], version: str) -> None:
    room = await make_room(peers, version)
    join = await join_from_a(room)
    a_events = room.a.hs.services.events
    # a.test now has the room: state as outliers, the join in its timeline and current state.
    assert await a_events._events.get_forward_extremities(room.room_id) == [join.event_id]
    a_state = await a_events.current_state_ids(room.room_id)
    assert a_state == await room.events.current_state_ids(room.room_id)
    create = await a_events.get_event(a_state[("m.room.create", "")])
    assert create is not None and create.outlier
    assert not (await a_events.get_event(join.event_id)).outlier
    assert await room.a.hs.federation_ingest.is_resident(room.room_id)  # alice of a.test is joined
    # Three messages on a.test; b.test only gets the last one and asks for the others.
    ids = [await a_sends(room, f"m{i}") for i in range(3)]
    assert await send(room.a, "b.test", [await pdu_of(room.a, ids[-1])]) == {"pdus": {ids[-1]: {}}}
    assert await timeline_bodies(room) == ["m0", "m1", "m2"]
    assert await room.events._events.get_forward_extremities(room.room_id) == [ids[-1]]


@pytest_twisted.ensureDeferred
async def test_gap_filled_with_state_from_origin(peers: dict[str, Peer], monkeypatch: pytest.MonkeyPatch) -> None:
    room = await make_room(peers)
    join = await join_from_a(room)
    first = await a_sends(room, "lost")
    renamed = await room.a.hs.services.events.send(
        room_id=room.room_id,
        sender="@alice:a.test",
        event_type="m.room.member",
        state_key="@alice:a.test",
        content={"membership": "join", "displayname": "Alice A."},
    )
    after = [await a_sends(room, "after1"), await a_sends(room, "after2")]
    # b.test asks for one missing event only: the one before it is a gap, whose state
    # b.test gets from /state_ids (and the member event itself from /event).
    monkeypatch.setattr(ingest_module, "MISSING_EVENTS_LIMIT", 1)
    assert await send(room.a, "b.test", [await pdu_of(room.a, after[-1])]) == {"pdus": {after[-1]: {}}}
    assert await room.events.get_event(first) is None  # the gap: not fetched with the new event
    member = await room.state_event("m.room.member", "@alice:a.test")
    assert member is not None and member.event_id == renamed.event.event_id
    stored_rename = await room.events.get_event(renamed.event.event_id)
    assert stored_rename is not None and stored_rename.outlier
    # The join stays a leaf of what b.test knows, next to the newest message.
    assert set(await room.events._events.get_forward_extremities(room.room_id)) == {join.event_id, after[-1]}
    # Paginating back through the gap backfills it from a.test: the lost message takes its
    # place in /messages, not in /sync's stream.
    sync = await room.bob.get("/_matrix/client/v3/sync")
    assert await timeline_bodies(room) == ["lost", "after1", "after2"]
    stored_first = await room.events.get_event(first)
    assert stored_first is not None and stored_first.stream_ordering < 0
    later = await room.bob.get(f"/_matrix/client/v3/sync?since={sync.body['next_batch']}&timeout=0")
    assert room.room_id not in later.body["rooms"]["join"]
    assert set(await room.events._events.get_forward_extremities(room.room_id)) == {join.event_id, after[-1]}
    # The member event b.test only had as an outlier joins the graph when it arrives: it is
    # history now (newer events cite it), so the extremities and current state stay as they are.
    rename_pdu = await pdu_of(room.a, renamed.event.event_id)
    assert await send(room.a, "b.test", [rename_pdu]) == {"pdus": {renamed.event.event_id: {}}}
    placed = await room.events.get_event(renamed.event.event_id)
    assert placed is not None and not placed.outlier and not placed.hidden
    assert set(await room.events._events.get_forward_extremities(room.room_id)) == {join.event_id, after[-1]}
    member = await room.state_event("m.room.member", "@alice:a.test")
    assert member is not None and member.event_id == renamed.event.event_id


@pytest_twisted.ensureDeferred
async def test_serving_endpoints(peers: dict[str, Peer]) -> None:
    room = await make_room(peers)
    await room.join_alice()
    a, d = room.a, peers["d.test"]
    message = await room.build("m.room.message", {"body": "served", "msgtype": "m.text"})
    assert await send(a, "b.test", [message.get_pdu_json()]) == {"pdus": {message.event_id: {}}}
    room_q = quote(room.room_id)
    state = await room.events.current_state_ids(room.room_id)

    body = await a.federation.client.get_json("b.test", f"{FED}/event/{quote(message.event_id)}")
    assert body["origin"] == "b.test" and body["pdus"] == [message.get_pdu_json()]
    ids = await a.federation.client.get_json("b.test", f"{FED}/state_ids/{room_q}", args={"event_id": message.event_id})
    assert set(ids["pdu_ids"]) == set(state.values())
    assert state[("m.room.create", "")] in ids["auth_chain_ids"]
    full = await a.federation.client.get_json("b.test", f"{FED}/state/{room_q}", args={"event_id": message.event_id})
    assert {Event(p, room.version).event_id for p in full["pdus"]} == set(state.values())
    auth = await a.federation.client.get_json("b.test", f"{FED}/event_auth/{room_q}/{quote(message.event_id)}")
    assert {p["type"] for p in auth["auth_chain"]} >= {"m.room.create", "m.room.power_levels", "m.room.member"}
    back = await a.federation.client.get_json(
        "b.test", f"{FED}/backfill/{room_q}", args={"v": [message.event_id], "limit": "3"}
    )
    assert len(back["pdus"]) == 3 and back["pdus"][0] == message.get_pdu_json()
    assert [p["depth"] for p in back["pdus"]] == sorted((p["depth"] for p in back["pdus"]), reverse=True)
    extremities_before = (await room.events.get_event(message.prev_event_ids[0])).event.prev_event_ids
    missing = await a.federation.client.post_json(
        "b.test",
        f"{FED}/get_missing_events/{room_q}",
        {"earliest_events": extremities_before, "latest_events": [message.event_id], "limit": 10},
    )
    assert [p["type"] for p in missing["events"]] == ["m.room.member"]
    # Bad input is a 400 naming the field.
    with pytest.raises(HttpResponseError) as info:
        await a.federation.client.post_json("b.test", f"{FED}/get_missing_events/{room_q}", {"latest_events": "x"})
    assert info.value.code == 400 and "latest_events" in (info.value.error or "")
    with pytest.raises(HttpResponseError) as info:
        await a.federation.client.get_json("b.test", f"{FED}/state_ids/{room_q}")
    assert info.value.code == 400 and info.value.errcode == "M_MISSING_PARAM"

    # d.test is allowed to federate but nobody of it is in the room.
    with pytest.raises(HttpResponseError) as info:
        await d.federation.client.get_json("b.test", f"{FED}/state_ids/{room_q}", args={"event_id": message.event_id})
    assert info.value.code == 403
    with pytest.raises(HttpResponseError) as info:
        await d.federation.client.get_json(
            "b.test", f"{FED}/backfill/{room_q}", args={"v": message.event_id, "limit": "5"}
        )
    assert info.value.code == 403
    # Shared history: any server may fetch the event; "joined" history: only members' servers.
    assert (await d.federation.client.get_json("b.test", f"{FED}/event/{quote(message.event_id)}"))["pdus"]
    resp = await room.bob.put(
        f"/_matrix/client/v3/rooms/{room.room_id}/state/m.room.history_visibility/", {"history_visibility": "joined"}
    )
    assert resp.code == 200
    later = await room.build("m.room.message", {"body": "members only", "msgtype": "m.text"})
    assert await send(a, "b.test", [later.get_pdu_json()]) == {"pdus": {later.event_id: {}}}
    with pytest.raises(HttpResponseError) as info:
        await d.federation.client.get_json("b.test", f"{FED}/event/{quote(later.event_id)}")
    assert info.value.code == 403
    assert (await a.federation.client.get_json("b.test", f"{FED}/event/{quote(later.event_id)}"))["pdus"]
    with pytest.raises(HttpResponseError) as info:
        await a.federation.client.get_json("b.test", f"{FED}/event/{quote('$nope')}")
    assert info.value.code == 404


@pytest_twisted.ensureDeferred
async def test_join_state_that_does_not_allow_the_join_is_refused(peers: dict[str, Peer]) -> None:
    room = await make_room(peers, preset="private_chat")
    a = room.a
    state = await room.events.current_state_ids(room.room_id)
    join = build_event(
        room.version,
        room_id=room.room_id,
        type="m.room.member",
        sender="@alice:a.test",
        state_key="@alice:a.test",
        content={"membership": "join"},
        prev_event_ids=await room.events._events.get_forward_extremities(room.room_id),
        auth_event_ids=sorted(
            state[k] for k in [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", "")]
        ),
        depth=10,
        origin_server_ts=a.hs.clock.time_msec(),
        server_name="a.test",
        signing_key=a.federation.local_keys.signing_key,
    )
    stored = await room.events._events.get_events(list(state.values()))
    pdus = [s.event.get_pdu_json() for s in stored.values()]
    ingest = a.hs.federation_ingest
    assert ingest is not None
    with pytest.raises(RemoteStateError):
        await ingest.persist_join_state("b.test", room.version, join, pdus, [])
    assert await a.hs.services.events.get_event(join.event_id) is None


@pytest_twisted.ensureDeferred
async def test_out_of_band_invite_reaches_sync(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    from tests.api.helpers import register

    bob = b.fx.new_client()
    bob.token = (await register(bob, "bob"))["access_token"]
    version = ingest_module.get_room_version("10")
    invite = build_event(
        version,
        room_id="!elsewhere:a.test",
        type="m.room.member",
        sender="@alice:a.test",
        state_key="@bob:b.test",
        content={"membership": "invite"},
        prev_event_ids=["$prev"],
        auth_event_ids=["$create", "$alice"],
        depth=4,
        origin_server_ts=a.hs.clock.time_msec(),
        server_name="a.test",
        signing_key=a.federation.local_keys.signing_key,
    )
    stripped = [
        {"type": "m.room.name", "state_key": "", "sender": "@alice:a.test", "content": {"name": "Ailleurs"}},
        {"type": "m.room.create", "state_key": "", "sender": "@alice:a.test", "content": {"room_version": "10"}},
    ]
    ingest = b.hs.federation_ingest
    assert ingest is not None
    stream = await ingest.persist_out_of_band_membership(version, invite, stripped)
    assert stream > 0
    stored = await b.hs.services.events.get_event(invite.event_id)
    assert stored is not None and stored.outlier
    assert stored.event.unsigned["invite_room_state"] == stripped
    sync = await bob.get("/_matrix/client/v3/sync")
    assert sync.code == 200, sync.body
    invited = sync.body["rooms"]["invite"]["!elsewhere:a.test"]["invite_state"]["events"]
    assert any(e["type"] == "m.room.member" and e["state_key"] == "@bob:b.test" for e in invited)
    assert "!elsewhere:a.test" not in sync.body["rooms"]["join"]
    assert await b.hs.services.events._events.get_forward_extremities("!elsewhere:a.test") == []
    assert await b.hs.services.events.current_state_ids("!elsewhere:a.test") == {}
