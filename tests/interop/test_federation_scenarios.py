"""Room life over federation with a real Synapse, both directions, on both our engines.

Our server (CLI-started, ``127.0.0.1:PORT``, TLS) and a real Synapse (``127.0.0.2:PORT``)
allow each other only.  One Synapse serves the module; our server runs once per storage
engine (SQLite, PostgreSQL).  With a room on each side (ours in room version 10,
Synapse's in version 12), joined from the other: edits, reactions, redactions, state
changes (name, topic, power levels, each authorised by the power levels the other side
set), typing and read receipts flow both ways; invites both ways; a leave and a re-join
both ways; history from before the join reaches /messages on both sides (backfill).
Every outcome is asserted on the other side's /sync (or /messages, /event).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.interop import harness as h
from tests.interop.conftest import ENGINE_PARAMS
from tests.interop.federation_scenarios import (
    User,
    bodies,
    ephemeral,
    membership_in,
    room_section,
    start_ours,
    start_theirs,
    timeline,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]


class Pair:
    def __init__(self, ours: h.RunningServer, theirs: h.RunningServer, engine: str) -> None:
        self.ours, self.theirs = ours, theirs
        self.alice = User(ours, "alice")  # ours
        self.sam = User(theirs, f"sam_{engine}")  # Synapse's
        self.alice.sync_until(lambda b: True, "an initial sync")
        self.sam.sync_until(lambda b: True, "an initial sync")


@pytest.fixture(scope="module")
def our_ports() -> dict[str, int]:
    return {engine: h.free_port("127.0.0.1") for engine in h.ENGINES}


@pytest.fixture(scope="module")
def theirs(module_servers: h.ServerPool, our_ports: dict[str, int]) -> h.RunningServer:
    return start_theirs(module_servers, allow=[f"127.0.0.1:{port}" for port in our_ports.values()])


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def pair(
    request: pytest.FixtureRequest,
    module_servers: h.ServerPool,
    tmp_path_factory: pytest.TempPathFactory,
    theirs: h.RunningServer,
    our_ports: dict[str, int],
) -> Iterator[Pair]:
    engine = str(request.param)
    ours = start_ours(
        module_servers,
        tmp_path_factory.mktemp("cert"),
        engine=engine,
        allow=[theirs.server_name],
        port=our_ports[engine],
    )
    yield Pair(ours, theirs, engine)
    problem = ours.stop()  # the next engine's server starts on a fresh port; free this one now
    assert problem is None, problem


def _room(pair: Pair, where: str) -> tuple[User, User, str]:
    """(host user, guest user, room) for a public room created on ``where`` and joined."""
    host, guest = (pair.alice, pair.sam) if where == "ours" else (pair.sam, pair.alice)
    options: dict[str, Any] = {"preset": "public_chat", "name": f"room on {where}"}
    # Synapse's room in version 12 (its default), ours in version 10: both event formats.
    options["room_version"] = "12" if where == "theirs" else "10"
    room_id = host.ok("POST", "/createRoom", options)["room_id"]
    via = host.server.server_name
    guest.ok("POST", f"/join/{quote(room_id)}?via={quote(via)}", {})
    guest.wait_joined(room_id, guest.user_id, "the guest's own join")
    host.wait_joined(room_id, guest.user_id, "the guest's join at the host")
    return host, guest, room_id


def _exchange(sender: User, receiver: User, room_id: str, tag: str) -> None:
    """A message, its edit, a reaction to it, then its redaction, seen by ``receiver``."""
    original = sender.send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"original {tag}"})
    receiver.wait_event_id(room_id, original, f"{tag}: the message")
    edit = sender.send(
        room_id,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f"* edited {tag}",
            "m.new_content": {"msgtype": "m.text", "body": f"edited {tag}"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        },
    )
    seen = receiver.wait_event_id(room_id, edit, f"{tag}: the edit")
    assert seen["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": original}
    assert seen["content"]["m.new_content"]["body"] == f"edited {tag}"
    # The receiver's reaction to the sender's message goes the other way.
    reaction = receiver.send(
        room_id, "m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "👍"}}
    )
    seen = sender.wait_event_id(room_id, reaction, f"{tag}: the reaction")
    assert seen["content"]["m.relates_to"]["key"] == "👍"
    relations = receiver.ok("GET", f"/_matrix/client/v1/rooms/{quote(room_id)}/relations/{quote(original)}/m.replace")
    assert [e["event_id"] for e in relations["chunk"]] == [edit], relations

    redaction = sender.ok("PUT", f"/rooms/{quote(room_id)}/redact/{quote(original)}/r{tag}", {"reason": "oops"})[
        "event_id"
    ]
    seen = receiver.wait_event_id(room_id, redaction, f"{tag}: the redaction")
    assert original in (seen.get("redacts"), seen["content"].get("redacts")), seen
    fetched = receiver.ok("GET", f"/rooms/{quote(room_id)}/event/{quote(original)}")
    assert fetched["content"] == {}, fetched
    assert fetched["unsigned"]["redacted_because"]["event_id"] == redaction, fetched


def _state_changes(host: User, guest: User, room_id: str) -> None:
    """The host raises the guest to 100; the guest then renames, re-topics and re-powers."""
    levels = host.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.power_levels/")
    levels["users"][guest.user_id] = 100
    levels["events"]["m.room.topic"] = 100
    event_id = host.state(room_id, "m.room.power_levels", levels)
    seen = guest.wait_event_id(room_id, event_id, "the power levels raising the guest")
    assert seen["content"]["users"][guest.user_id] == 100

    for event_type, content in (("m.room.name", {"name": "renamed"}), ("m.room.topic", {"topic": "a topic"})):
        event_id = guest.state(room_id, event_type, content)
        seen = host.wait_event_id(room_id, event_id, f"the guest's {event_type}")
        assert seen["content"] == content
        assert host.ok("GET", f"/rooms/{quote(room_id)}/state/{event_type}/") == content

    levels = host.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.power_levels/")
    levels["users"]["@someone:example.org"] = 10
    levels["state_default"] = 60
    event_id = guest.state(room_id, "m.room.power_levels", levels)
    seen = host.wait_event_id(room_id, event_id, "the guest's power levels")
    assert seen["content"]["users"]["@someone:example.org"] == 10
    assert host.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.power_levels/")["users"] == levels["users"]


def _typing_and_receipts(sender: User, receiver: User, room_id: str, tag: str) -> None:
    sender.ok("PUT", f"/rooms/{quote(room_id)}/typing/{quote(sender.user_id)}", {"typing": True, "timeout": 30000})
    receiver.sync_until(
        lambda b: any(sender.user_id in e["content"]["user_ids"] for e in ephemeral(b, room_id, "m.typing")),
        f"{tag}: typing",
    )
    sender.ok("PUT", f"/rooms/{quote(room_id)}/typing/{quote(sender.user_id)}", {"typing": False})
    receiver.sync_until(
        lambda b: any(sender.user_id not in e["content"]["user_ids"] for e in ephemeral(b, room_id, "m.typing")),
        f"{tag}: typing stopped",
    )
    target = receiver.send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"read me {tag}"})
    sender.wait_event_id(room_id, target, f"{tag}: the message to mark read")
    sender.ok("POST", f"/rooms/{quote(room_id)}/receipt/m.read/{quote(target)}", {})

    def receipt(body: dict[str, Any]) -> bool:
        for event in ephemeral(body, room_id, "m.receipt"):
            readers = event["content"].get(target, {}).get("m.read", {})
            if sender.user_id in readers and isinstance(readers[sender.user_id].get("ts"), int):
                return True
        return False

    receiver.sync_until(receipt, f"{tag}: the read receipt")

    # A private receipt stays home; a threaded ("main") receipt travels with its thread_id.
    private = receiver.send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"private {tag}"})
    threaded = receiver.send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"threaded {tag}"})
    sender.wait_event_id(room_id, threaded, f"{tag}: the messages to mark read")
    sender.ok("POST", f"/rooms/{quote(room_id)}/receipt/m.read.private/{quote(private)}", {})
    sender.ok("POST", f"/rooms/{quote(room_id)}/receipt/m.read/{quote(threaded)}", {"thread_id": "main"})

    def threaded_receipt(body: dict[str, Any]) -> dict[str, Any] | None:
        for event in ephemeral(body, room_id, "m.receipt"):
            assert private not in event["content"], f"{tag}: a private receipt went over federation: {event}"
            mine = event["content"].get(threaded, {}).get("m.read", {}).get(sender.user_id)
            if mine:
                return dict(mine)
        return None

    assert receiver.sync_until(threaded_receipt, f"{tag}: the threaded receipt").get("thread_id") == "main"


@pytest.mark.parametrize("where", ["ours", "theirs"])
def test_room_life_both_ways(pair: Pair, where: str) -> None:
    host, guest, room_id = _room(pair, where)
    _exchange(host, guest, room_id, f"{where}-host")
    _exchange(guest, host, room_id, f"{where}-guest")
    _state_changes(host, guest, room_id)
    # A moderator redacts the other server's message (auth by power level, not by sender).
    theirs = guest.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "rude"})
    host.wait_event_id(room_id, theirs, "the guest's message to moderate")
    redaction = host.ok("PUT", f"/rooms/{quote(room_id)}/redact/{quote(theirs)}/mod", {})["event_id"]
    guest.wait_event_id(room_id, redaction, "the moderator's redaction")
    assert guest.ok("GET", f"/rooms/{quote(room_id)}/event/{quote(theirs)}")["content"] == {}
    # A display name change is a member event too.
    guest.ok("PUT", f"/profile/{quote(guest.user_id)}/displayname", {"displayname": f"guest in {where}"})
    host.sync_until(
        lambda b: any(
            e["type"] == "m.room.member" and e["content"].get("displayname") == f"guest in {where}"
            for e in room_section(b, room_id).get("timeline", {}).get("events", [])
        ),
        "the guest's new display name",
        past=True,
    )
    _typing_and_receipts(host, guest, room_id, f"{where}-host")
    _typing_and_receipts(guest, host, room_id, f"{where}-guest")


@pytest.mark.parametrize("version", ["10", "12"])
@pytest.mark.parametrize("direction", ["synapse invites ours", "ours invites synapse"])
def test_invites_both_ways(pair: Pair, direction: str, version: str) -> None:
    inviter, invitee = (pair.sam, pair.alice) if direction.startswith("synapse") else (pair.alice, pair.sam)
    options = {"preset": "private_chat", "name": direction, "room_version": version}
    room_id = inviter.ok("POST", "/createRoom", options)["room_id"]
    inviter.ok("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": invitee.user_id})

    def invited(body: dict[str, Any]) -> Any:
        room = room_section(body, room_id, "invite")
        events = room.get("invite_state", {}).get("events", [])
        return [e for e in events if e["type"] == "m.room.member" and e["state_key"] == invitee.user_id]

    (member,) = invitee.sync_until(invited, f"{direction}: the invite")
    assert member["content"]["membership"] == "invite"
    assert member["sender"] == inviter.user_id
    invitee.ok("POST", f"/join/{quote(room_id)}?via={quote(inviter.server.server_name)}", {})
    inviter.wait_joined(room_id, invitee.user_id, f"{direction}: the invitee's join")
    event_id = invitee.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "merci"})
    inviter.wait_event_id(room_id, event_id, f"{direction}: the invitee's message")


@pytest.mark.parametrize("direction", ["synapse invites ours", "ours invites synapse"])
def test_invites_rejected_both_ways(pair: Pair, direction: str) -> None:
    """The invitee's server has no copy of the room: its leave goes by make_leave/send_leave."""
    inviter, invitee = (pair.sam, pair.alice) if direction.startswith("synapse") else (pair.alice, pair.sam)
    room_id = inviter.ok("POST", "/createRoom", {"preset": "private_chat"})["room_id"]
    inviter.ok("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": invitee.user_id})
    invitee.sync_until(lambda b: room_section(b, room_id, "invite"), f"{direction}: the invite", past=True)
    invitee.ok("POST", f"/rooms/{quote(room_id)}/leave", {})
    inviter.sync_until(lambda b: membership_in(b, room_id, invitee.user_id) == "leave", f"{direction}: the rejection")
    invitee.sync_until(lambda b: room_section(b, room_id, "leave"), f"{direction}: the rejection at the invitee")
    members = inviter.ok("GET", f"/rooms/{quote(room_id)}/members")["chunk"]
    (mine,) = [m for m in members if m["state_key"] == invitee.user_id]
    assert mine["content"]["membership"] == "leave" and mine["sender"] == invitee.user_id, mine


@pytest.mark.parametrize("where", ["ours", "theirs"])
def test_knock_then_accepted(pair: Pair, where: str) -> None:
    host, guest = (pair.alice, pair.sam) if where == "ours" else (pair.sam, pair.alice)
    options = {
        "preset": "private_chat",
        "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
    }
    room_id = host.ok("POST", "/createRoom", options)["room_id"]
    guest.ok("POST", f"/knock/{quote(room_id)}?via={quote(host.server.server_name)}", {"reason": "let me in"})
    guest.sync_until(lambda b: room_section(b, room_id, "knock"), "the knock at the knocker", past=True)
    host.sync_until(lambda b: membership_in(b, room_id, guest.user_id) == "knock", "the knock at the host")
    host.ok("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": guest.user_id})
    guest.sync_until(lambda b: room_section(b, room_id, "invite"), "the knock accepted", past=True)
    guest.ok("POST", f"/join/{quote(room_id)}?via={quote(host.server.server_name)}", {})
    host.wait_joined(room_id, guest.user_id, "the knocker's join")


@pytest.mark.parametrize("where", ["ours", "theirs"])
def test_restricted_join_through_a_space(pair: Pair, where: str) -> None:
    """A restricted room (members of a space may join): the resident server authorises the
    join (join_authorised_via_users_server) and signs it."""
    host, guest = (pair.alice, pair.sam) if where == "ours" else (pair.sam, pair.alice)
    via = quote(host.server.server_name)
    space = host.ok("POST", "/createRoom", {"preset": "public_chat", "creation_content": {"type": "m.space"}})
    space_id = space["room_id"]
    rule = {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space_id}]}
    options = {
        "preset": "private_chat",
        "room_version": "10",
        "initial_state": [{"type": "m.room.join_rules", "content": rule}],
    }
    room_id = host.ok("POST", "/createRoom", options)["room_id"]
    status, body = guest.call("POST", f"/join/{quote(room_id)}?via={via}", {})
    assert status == 403, ("joined a restricted room without being in the space", status, body)
    guest.ok("POST", f"/join/{quote(space_id)}?via={via}", {})
    guest.wait_joined(space_id, guest.user_id, "the guest's join to the space")
    guest.ok("POST", f"/join/{quote(room_id)}?via={via}", {})
    guest.wait_joined(room_id, guest.user_id, "the guest's restricted join")
    host.wait_joined(room_id, guest.user_id, "the guest's restricted join at the host")
    member = host.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.member/{quote(guest.user_id)}")
    assert member["membership"] == "join"
    assert member["join_authorised_via_users_server"] == host.user_id, member
    said = guest.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "inside"})
    host.wait_event_id(room_id, said, "the guest's message in the restricted room")


@pytest.mark.parametrize("where", ["ours", "theirs"])
def test_ban_and_unban(pair: Pair, where: str) -> None:
    host, guest, room_id = _room(pair, where)
    via = quote(host.server.server_name)
    host.ok("POST", f"/rooms/{quote(room_id)}/ban", {"user_id": guest.user_id, "reason": "test"})
    guest.sync_until(lambda b: membership_in(b, room_id, guest.user_id) == "ban", "the ban at the banned")
    status, body = guest.call("POST", f"/join/{quote(room_id)}?via={via}", {})
    assert status == 403, (status, body)
    host.ok("POST", f"/rooms/{quote(room_id)}/unban", {"user_id": guest.user_id})
    guest.ok("POST", f"/join/{quote(room_id)}?via={via}", {})
    host.sync_until(lambda b: membership_in(b, room_id, guest.user_id) == "join", "the join after the unban")


def test_server_acl_in_our_room(pair: Pair) -> None:
    """Our room bans Synapse's server by m.room.server_acl: we stop sending to it and drop
    what it sends for that room; other rooms with it are unaffected."""
    host, guest, room_id = _room(pair, "ours")
    _, _, other_room = _room(pair, "ours")
    before = guest.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "before the ACL"})
    host.wait_event_id(room_id, before, "a message before the ACL")
    acl = {"allow": ["*"], "deny": [guest.server.server_name.split(":")[0]], "allow_ip_literals": True}
    host.state(room_id, "m.room.server_acl", acl)  # (not sent to the denied server either)
    refused = guest.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "after the ACL"})
    unseen = host.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "not for Synapse"})
    control = guest.send(other_room, "m.room.message", {"msgtype": "m.text", "body": "other room"})
    host.wait_event_id(other_room, control, "a message in a room without ACL")
    reply = host.send(other_room, "m.room.message", {"msgtype": "m.text", "body": "other room reply"})
    guest.wait_event_id(other_room, reply, "our reply in the room without ACL")
    assert all(e.get("event_id") != refused for b in host.seen for e in timeline(b, room_id))
    assert all(e.get("event_id") != unseen for b in guest.seen for e in timeline(b, room_id))
    status, _ = host.call("GET", f"/rooms/{quote(room_id)}/event/{quote(refused)}")
    assert status == 404


@pytest.mark.parametrize("where", ["ours", "theirs"])
def test_leave_and_rejoin(pair: Pair, where: str) -> None:
    host, guest, room_id = _room(pair, where)
    guest.ok("POST", f"/rooms/{quote(room_id)}/leave", {})
    host.sync_until(lambda b: membership_in(b, room_id, guest.user_id) == "leave", "the guest's leave")
    while_away = host.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "while you were away"})
    guest.ok("POST", f"/join/{quote(room_id)}?via={quote(host.server.server_name)}", {})
    # Not wait_joined: that would also accept the first join, from the /sync bodies seen before.
    host.sync_until(lambda b: membership_in(b, room_id, guest.user_id) == "join", "the guest's re-join")
    guest.sync_until(lambda b: membership_in(b, room_id, guest.user_id) == "join", "the guest's own re-join")
    after = host.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "welcome back"})
    guest.wait_event_id(room_id, after, "a message after the re-join")
    back = guest.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "I am back"})
    host.wait_event_id(room_id, back, "the guest's message after the re-join")
    # What was said while the guest was away is in the room's history for the guest too
    # (history_visibility "shared"), fetched from the host when the guest's server lacks it.
    page = guest.ok("GET", f"/rooms/{quote(room_id)}/messages?dir=b&limit=30")
    assert while_away in [e["event_id"] for e in page["chunk"]], page


@pytest.mark.parametrize("where", ["ours", "theirs"])
def test_history_from_before_the_join(pair: Pair, where: str) -> None:
    host, guest = (pair.alice, pair.sam) if where == "ours" else (pair.sam, pair.alice)
    options: dict[str, Any] = {
        "preset": "public_chat",
        "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "shared"}}
        ],
    }
    room_id = host.ok("POST", "/createRoom", options)["room_id"]
    history = [f"history {where} {n}" for n in range(30)]
    for text in history:
        host.send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
    guest.ok("POST", f"/join/{quote(room_id)}?via={quote(host.server.server_name)}", {})
    guest.wait_joined(room_id, guest.user_id, "the guest's join")
    seen: list[str] = []
    for body in guest.seen:
        seen += bodies(body, room_id)
    token = None
    for _ in range(10):
        path = f"/rooms/{quote(room_id)}/messages?dir=b&limit=20" + (f"&from={quote(token)}" if token else "")
        page = guest.ok("GET", path)
        seen += [e["content"]["body"] for e in page["chunk"] if e["type"] == "m.room.message"]
        token = page.get("end")
        if not token or all(text in seen for text in history):
            break
    in_order = sorted({text for text in seen if text in history}, key=history.index)
    assert in_order == history, f"the guest's /messages shows {len(in_order)} of {len(history)}: {in_order}"
