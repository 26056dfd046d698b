"""The resident side refuses what it must, on SQLite and PostgreSQL.

Requests are really signed by the sending server's FederationClient; events are built and
signed with its key as a joining server would.  Refusals come before anything is stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted

from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.events.signing import hash_and_sign_event
from tests.api.conftest import HSFixture
from tests.api.test_federation_keys import Peer, cleanups, start_peers
from tests.api.test_federation_membership import V3, create_room, members, user

__all__ = ["cleanups"]

FED1 = "/_matrix/federation/v1"
FED2 = "/_matrix/federation/v2"
ALL_VERSIONS = [v for v in KNOWN_ROOM_VERSIONS]


@pytest.fixture
def peers(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> dict[str, Peer]:
    """a.test allows b.test only; c.test would talk to a.test, which refuses it."""
    allow = {"a.test": ["b.test"], "b.test": ["a.test"], "c.test": ["a.test"]}
    return start_peers(make_server, database_config, tmp_path, cleanups, allow)


async def ask(sender: Peer, method: str, path: str, *, args: Any = None, content: Any = None) -> tuple[int, Any]:
    code, body = await sender.federation.client.request(method, "a.test", path, args=args, content=content)
    return code, json.loads(body) if body else None


async def make_join(sender: Peer, room_id: str, user_id: str, versions: list[str] | None = None) -> tuple[int, Any]:
    return await ask(
        sender, "GET", f"{FED1}/make_join/{quote(room_id)}/{quote(user_id)}", args={"ver": versions or ALL_VERSIONS}
    )


def sign_as(peer: Peer, room_version_id: str, template: dict[str, Any], **changes: Any) -> Event:
    """``peer``'s signed event from a template, with ``changes`` applied first."""
    room_version = KNOWN_ROOM_VERSIONS[room_version_id]
    event_dict = {k: v for k, v in template.items() if k != "origin"}
    event_dict.update(changes)
    hash_and_sign_event(room_version, event_dict, peer.name, peer.federation.local_keys.signing_key)
    return Event(event_dict, room_version)


async def send_join(sender: Peer, room_id: str, event: Event) -> tuple[int, Any]:
    return await ask(
        sender, "PUT", f"{FED2}/send_join/{quote(room_id)}/{quote(event.event_id)}", content=event.get_pdu_json()
    )


@pytest_twisted.ensureDeferred
async def test_a_stranger_can_neither_make_join_nor_send_join(peers: dict[str, Peer]) -> None:
    a, b, c = peers["a.test"], peers["b.test"], peers["c.test"]
    alice = await user(a, "alice")
    room_id = await create_room(alice, preset="public_chat")
    code, body = await make_join(c, room_id, "@carol:c.test")
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body
    # Even a well-formed join (built from a template b.test got) is refused unread.
    code, answer = await make_join(b, room_id, "@bob:b.test")
    assert code == 200, answer
    template = dict(answer["event"], sender="@carol:c.test", state_key="@carol:c.test")
    event = sign_as(c, answer["room_version"], template)
    code, body = await ask(
        c, "PUT", f"{FED2}/send_join/{quote(room_id)}/{quote(event.event_id)}", content=event.get_pdu_json()
    )
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert await a.hs.services.events.get_event(event.event_id) is None
    assert await members(alice, room_id) == {"@alice:a.test": "join"}


@pytest_twisted.ensureDeferred
async def test_make_join_checks_versions_users_rooms_and_rules(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await user(a, "alice")
    room_id = await create_room(alice, preset="public_chat", room_version="10")
    private_id = await create_room(alice, preset="private_chat")

    code, body = await make_join(b, room_id, "@bob:b.test", ["11", "12"])
    assert (code, body["errcode"], body["room_version"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION", "10"), body
    code, body = await ask(b, "GET", f"{FED1}/make_join/{quote(room_id)}/{quote('@bob:b.test')}")  # no ver: v1 only
    assert (code, body["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION"), body
    code, body = await make_join(b, room_id, "@carol:c.test")
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body
    code, body = await make_join(b, "!unknown:a.test", "@bob:b.test")
    assert (code, body["errcode"]) == (404, "M_NOT_FOUND"), body
    code, body = await make_join(b, private_id, "@bob:b.test")
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body

    code, answer = await make_join(b, room_id, "@bob:b.test")
    assert code == 200, answer
    assert answer["room_version"] == "10"
    template = answer["event"]
    assert (template["type"], template["sender"], template["state_key"]) == (
        "m.room.member",
        "@bob:b.test",
        "@bob:b.test",
    )
    assert template["content"] == {"membership": "join"}
    assert template["prev_events"] and template["auth_events"]

    # A server ACL denying b.test closes the door.
    resp = await alice.put(
        f"{V3}/rooms/{quote(room_id)}/state/m.room.server_acl/", {"allow": ["*"], "deny": ["b.test"]}
    )
    assert resp.code == 200, resp.body
    code, body = await make_join(b, room_id, "@bob:b.test")
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body


@pytest_twisted.ensureDeferred
async def test_send_join_refuses_bad_events(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    alice = await user(a, "alice")
    room_id = await create_room(alice, preset="public_chat")
    other_room = await create_room(alice, preset="public_chat")
    code, answer = await make_join(b, room_id, "@bob:b.test")
    assert code == 200, answer
    version, template = answer["room_version"], answer["event"]

    cases = [
        # A user of another server than the one asking.
        (sign_as(b, version, template, sender="@carol:c.test", state_key="@carol:c.test"), room_id, 403),
        # Not for this room.
        (sign_as(b, version, template), other_room, 400),
        # Another membership than the template's.
        (sign_as(b, version, template, content={"membership": "leave"}), room_id, 400),
        # Someone else's membership.
        (sign_as(b, version, template, state_key="@other:b.test"), room_id, 400),
        # Not a membership event at all.
        (sign_as(b, version, template, type="m.room.topic", state_key="", content={"topic": "x"}), room_id, 400),
    ]
    for event, path_room, expected in cases:
        code, body = await send_join(b, path_room, event)
        assert code == expected, (event.dict, body)
        assert body["errcode"] in ("M_FORBIDDEN", "M_INVALID_PARAM"), body
        assert await a.hs.services.events.get_event(event.event_id) is None
    # The event ID in the path must be the event's.
    good = sign_as(b, version, template)
    code, body = await ask(
        b, "PUT", f"{FED2}/send_join/{quote(room_id)}/{quote('$other')}", content=good.get_pdu_json()
    )
    assert (code, body["errcode"]) == (400, "M_INVALID_PARAM"), body
    # Signed by the wrong server: refused (b.test cannot speak for a user whose event it did not sign).
    unsigned = dict(good.get_pdu_json())
    unsigned["signatures"] = {}
    code, body = await ask(b, "PUT", f"{FED2}/send_join/{quote(room_id)}/{quote(good.event_id)}", content=unsigned)
    assert code in (400, 403), body
    assert await members(alice, room_id) == {"@alice:a.test": "join"}

    # The good one goes in, and the answer carries the room's state and auth chain.
    code, body = await send_join(b, room_id, good)
    assert code == 200, body
    state = {(e["type"], e["state_key"]) for e in body["state"]}
    assert {("m.room.create", ""), ("m.room.member", "@alice:a.test"), ("m.room.power_levels", "")} <= state
    assert ("m.room.member", "@bob:b.test") not in state  # the state *before* the join
    assert {e["type"] for e in body["auth_chain"]} >= {"m.room.create", "m.room.member"}
    assert Event(body["event"], KNOWN_ROOM_VERSIONS[version]).event_id == good.event_id
    assert await members(alice, room_id) == {"@alice:a.test": "join", "@bob:b.test": "join"}
    # v1 answers [200, {...}].
    code, body = await ask(
        b, "PUT", f"{FED1}/send_join/{quote(room_id)}/{quote(good.event_id)}", content=good.get_pdu_json()
    )
    assert code == 200 and body[0] == 200 and "state" in body[1], body


@pytest_twisted.ensureDeferred
async def test_invites_for_unknown_or_remote_users_are_refused(peers: dict[str, Peer]) -> None:
    a, b = peers["a.test"], peers["b.test"]
    await user(a, "alice")
    bob = await user(b, "bob")
    room_id = await create_room(bob, preset="private_chat", room_version="10")
    state = await b.hs.services.events.current_state_ids(room_id)
    create_id, pl_id, member_id = (
        state[("m.room.create", "")],
        state[("m.room.power_levels", "")],
        state[("m.room.member", "@bob:b.test")],
    )

    def invite(target: str) -> Event:
        template = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": "@bob:b.test",
            "state_key": target,
            "content": {"membership": "invite"},
            "prev_events": [member_id],
            "auth_events": [create_id, pl_id, member_id],
            "depth": 10,
            "origin_server_ts": 1_700_000_000_000,
        }
        return sign_as(b, "10", template)

    async def put_invite(event: Event, **body: Any) -> tuple[int, Any]:
        content = {"room_version": "10", "event": event.get_pdu_json(), "invite_room_state": [], **body}
        return await ask(b, "PUT", f"{FED2}/invite/{quote(room_id)}/{quote(event.event_id)}", content=content)

    code, body = await put_invite(invite("@nobody:a.test"))
    assert (code, body["errcode"]) == (404, "M_NOT_FOUND"), body
    code, body = await put_invite(invite("@carol:b.test"))
    assert (code, body["errcode"]) == (403, "M_FORBIDDEN"), body
    code, body = await put_invite(invite("@alice:a.test"), room_version="2")
    assert (code, body["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION"), body
    code, body = await put_invite(invite("@alice:a.test"), invite_room_state="nope")
    assert (code, body["errcode"]) == (400, "M_BAD_JSON"), body

    # A proper invite comes back signed by both servers.
    event = invite("@alice:a.test")
    code, body = await put_invite(event)
    assert code == 200, body
    assert set(body["event"]["signatures"]) == {"a.test", "b.test"}
    assert Event(body["event"], KNOWN_ROOM_VERSIONS["10"]).event_id == event.event_id
