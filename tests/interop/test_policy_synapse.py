"""Tchap's room access rules against a real Synapse as the external users' server.

Our server (CLI-started, ``127.0.0.1:PORT``, TLS) is an agent server: its
``government_policy`` names the Synapse (``127.0.0.2:PORT``) as ``external_server`` and
lists it in ``domains_forbidden_when_restricted``, so every Synapse account is an external
user.  The Synapse knows nothing of the rules: they hold because the room's server (ours)
enforces them on what the external users ask for (make_join, invites) and because our
server rejects events that break them when they arrive over federation (the rules act as
extra auth rules: the state such an event brings never becomes ours).  What each
side's clients see is asserted over real HTTP:

* restricted room: the Synapse user's join is refused, the error (403 M_FORBIDDEN naming
  the rule) reaches the Synapse client, and our database holds no event of theirs (both
  engines); an invite from our side is refused too;
* unrestricted room: no join without an invite; invited, the Synapse user joins and talks;
  our users cannot give them power; a power-levels change sent from Synapse (by an external
  user who was given power by a ``bypass_for_users`` officer) that raises an external user
  is accepted by Synapse but rejected by ours, and so are sam's events citing it;
* direct room: an external user cannot be invited into one already holding two members;
  in a direct chat with an external user who holds power (``trusted_private_chat``), the
  invite of a third user, that user's join, a room name and a change of the access rule,
  all sent from Synapse and accepted there, never enter our server's view; an invite of
  one of our users sent from Synapse into it is refused at our ``/invite`` endpoint.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
import yaml

from tests.interop import harness as h
from tests.interop.conftest import ENGINE_PARAMS
from tests.interop.federation_scenarios import User, log_text, membership_in, start_ours, start_theirs

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

RULES = "im.vector.room.access_rules"
AGENT_EMAIL_DOMAIN = "agent.gouv.example"


class Servers:
    """One Synapse (the external server) and our agent server per engine, started on demand."""

    def __init__(self, pool: h.ServerPool, tmp: Path, theirs: h.RunningServer, ports: dict[str, int]) -> None:
        self._pool, self._tmp, self._ports = pool, tmp, ports
        self.theirs = theirs
        self._ours: dict[str, h.RunningServer] = {}
        self._users: dict[tuple[str, str], User] = {}

    def ours(self, engine: str) -> h.RunningServer:
        if engine not in self._ours:
            name = f"127.0.0.1:{self._ports[engine]}"
            policy = {
                "email_domains": {name: [AGENT_EMAIL_DOMAIN]},
                "external_server": self.theirs.server_name,
                "room_access_rules": {
                    "enabled": True,
                    "domains_forbidden_when_restricted": [self.theirs.server_name],
                    "bypass_for_users": [f"@officer:{name}"],
                },
            }
            self._ours[engine] = start_ours(
                self._pool,
                self._tmp,
                engine=engine,
                allow=[self.theirs.server_name],
                port=self._ports[engine],
                extra={"government_policy": policy},
            )
        return self._ours[engine]

    def ours_showing_externals(self) -> h.RunningServer:
        """Our server (SQLite) with ``external_users.visible_in_directory: true`` and no
        access rules: the Synapse's users may be found in its user directory."""
        if "visible" not in self._ours:
            name = f"127.0.0.1:{self._ports['visible']}"
            policy = {"external_server": self.theirs.server_name, "external_users": {"visible_in_directory": True}}
            self._ours["visible"] = start_ours(
                self._pool,
                self._tmp,
                allow=[self.theirs.server_name],
                port=self._ports["visible"],
                extra={"government_policy": policy},
            )
            assert self._ours["visible"].server_name == name
        return self._ours["visible"]

    def user(self, engine: str, localpart: str, *, external: bool = False) -> User:
        """A user of ours (``engine``'s server), or of the Synapse (named per engine)."""
        key = ("theirs" if external else engine, f"{localpart}_{engine}" if external else localpart)
        if key not in self._users:
            server = self.theirs if external else self.ours(engine)
            self._users[key] = User(server, key[1])
        return self._users[key]


@pytest.fixture(scope="module")
def servers(module_servers: h.ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    ports = {engine: h.free_port("127.0.0.1") for engine in h.ENGINES}
    ports["visible"] = h.free_port("127.0.0.1")  # ours_showing_externals
    theirs = start_theirs(module_servers, allow=[f"127.0.0.1:{port}" for port in ports.values()])
    yield Servers(module_servers, tmp_path_factory.mktemp("cert"), theirs, ports)


# --------------------------------------------------------------------------- helpers


def _path(room_id: str, *parts: str) -> str:
    return "/rooms/" + "/".join([quote(room_id), *(quote(p, safe="") for p in parts)])


def _refused(status: int, body: Any, *words: str) -> None:
    """A 403 M_FORBIDDEN whose message names the rule (each of ``words``)."""
    assert status == 403 and body.get("errcode") == "M_FORBIDDEN", (status, body)
    assert all(w in body.get("error", "") for w in words), body


def _stored_rows(server: h.RunningServer, query: str, *params: str) -> list[str]:
    """The first column of ``query`` (``%s`` placeholders) on our server's database."""
    if server.engine == "sqlite":
        config = yaml.safe_load(server.config_path.read_text())
        path = server.data_dir / config["database"]["args"]["database"]
        with sqlite3.connect(path) as db:
            return [r[0] for r in db.execute(query.replace("%s", "?"), params)]
    assert server.database is not None
    with psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=server.database) as db:
        with db.cursor() as cursor:
            cursor.execute(query, params)
            return [r[0] for r in cursor.fetchall()]


def _stored_events_of(server: h.RunningServer, room_id: str, sender: str) -> list[str]:
    """The IDs of every event of ``sender`` in ``room_id`` our server's database holds
    (timeline, outliers, soft-failed or rejected alike)."""
    return _stored_rows(server, "SELECT event_id FROM events WHERE room_id = %s AND sender = %s", room_id, sender)


def _state(user: User, room_id: str, event_type: str, state_key: str = "") -> tuple[int, Any]:
    return user.call("GET", _path(room_id, "state", event_type, state_key))


def _wait_for_invite(user: User, room_id: str) -> None:
    user.sync_until(lambda b: room_id in b.get("rooms", {}).get("invite", {}), f"the invite to {room_id}", past=True)


def _join_over_federation(guest: User, room_id: str, host: User) -> tuple[int, Any]:
    return guest.call("POST", f"/join/{quote(room_id)}?server_name={quote(host.server.server_name)}", {})


def _rejected_at(ours: h.RunningServer, event_id: str, reason: str, deadline: float = 20.0) -> None:
    """Our ingest rejected ``event_id`` (received from Synapse) for ``reason``: waits for the
    line ``rejected <event_id> from <origin>: <reason>`` in our log."""
    end = time.monotonic() + deadline
    while True:
        lines = [line for line in log_text(ours).splitlines() if f"rejected {event_id} from" in line]
        if lines:
            assert reason in lines[-1], (event_id, reason, lines)
            return
        assert time.monotonic() < end, (f"{event_id} was not rejected", ours.log_tail(40))
        time.sleep(0.2)


def _after_marker(sender: User, reader: User, room_id: str, tag: str) -> None:
    """``sender`` sends a message after their refused events; once ``reader`` has it, our
    server has received (and judged) everything sent before it in the room."""
    event_id = sender.send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"marker {tag}"})
    reader.wait_event_id(room_id, event_id, f"the marker {tag}")


# --------------------------------------------------------------------------- restricted


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_restricted_room_refuses_the_synapse_user(servers: Servers, engine: str) -> None:
    ours = servers.ours(engine)
    alice = servers.user(engine, "alice")
    sam = servers.user(engine, "sam", external=True)

    # A public room (the join rules let anyone in), restricted by default.
    room_id = alice.ok("POST", "/createRoom", {"preset": "public_chat", "name": "Cellule de crise"})["room_id"]
    assert _state(alice, room_id, RULES)[1] == {"rule": "restricted"}

    # The Synapse client is told why, in our words.
    status, body = _join_over_federation(sam, room_id, alice)
    _refused(status, body, sam.user_id, "external user", "restricted room")
    status, body = alice.call("POST", _path(room_id, "invite"), {"user_id": sam.user_id})
    _refused(status, body, "external user", "restricted room")

    # Nothing of theirs in our view, nor in our database.
    assert set(alice.ok("GET", _path(room_id, "joined_members"))["joined"]) == {alice.user_id}
    assert _state(alice, room_id, "m.room.member", sam.user_id)[0] == 404
    assert _stored_events_of(ours, room_id, sam.user_id) == []
    # ... and Synapse does not count the room among sam's.
    assert room_id not in sam.ok("GET", "/joined_rooms")["joined_rooms"]


# --------------------------------------------------------------------------- unrestricted


def test_unrestricted_room_invite_only_and_no_power_for_the_synapse_user(servers: Servers) -> None:
    engine = "sqlite"
    ours = servers.ours(engine)
    alice, officer = servers.user(engine, "alice"), servers.user(engine, "officer")
    sam = servers.user(engine, "sam", external=True)
    sue = servers.user(engine, "sue", external=True)

    options = {
        "preset": "public_chat",
        "invite": [officer.user_id],
        "power_level_content_override": {"users": {officer.user_id: 100}},
    }
    room_id = alice.ok("POST", "/createRoom", options)["room_id"]
    officer.ok("POST", f"/join/{quote(room_id)}", {})
    alice.state(room_id, RULES, {"rule": "unrestricted"})

    # Uninvited: refused, even though the join rules are public.
    status, body = _join_over_federation(sam, room_id, alice)
    _refused(status, body, "external user", "only when invited")
    assert _stored_events_of(ours, room_id, sam.user_id) == []

    # Invited: sam joins from Synapse and both sides talk.
    alice.ok("POST", _path(room_id, "invite"), {"user_id": sam.user_id})
    _wait_for_invite(sam, room_id)
    sam.ok("POST", f"/join/{quote(room_id)}", {})
    alice.wait_joined(room_id, sam.user_id, "sam's join seen on our side")
    hello = sam.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "bonjour depuis Synapse"})
    assert alice.wait_event_id(room_id, hello, "sam's message")["content"]["body"] == "bonjour depuis Synapse"

    # Our users cannot give an external user power, nor raise everyone's default level.
    _, levels = _state(alice, room_id, "m.room.power_levels")
    status, body = alice.call(
        "PUT",
        _path(room_id, "state", "m.room.power_levels", ""),
        {**levels, "users": {**levels["users"], sam.user_id: 50}},
    )
    _refused(status, body, f"External user {sam.user_id}", "cannot be given power")
    status, body = alice.call(
        "PUT", _path(room_id, "state", "m.room.power_levels", ""), {**levels, "users_default": 50}
    )
    _refused(status, body, "users_default must stay 0")

    # The officer (bypass_for_users) may.  Then sam, at 100, sends from Synapse a change
    # that raises sue: Synapse accepts it (its auth rules allow it), ours rejects it, as an
    # auth rule would: its state never becomes ours, and sam's later events, whose auth
    # events cite it, are rejected too (the power they rely on is not sam's in our view).
    officer.state(room_id, "m.room.power_levels", {**levels, "users": {**levels["users"], sam.user_id: 100}})
    sam.sync_until(
        lambda b: any(
            e["type"] == "m.room.power_levels" and e["content"]["users"].get(sam.user_id) == 100
            for e in _timeline_events(b, room_id)
        ),
        "sam's power on Synapse",
        past=True,
    )
    _, theirs_levels = _state(sam, room_id, "m.room.power_levels")
    raised = sam.state(
        room_id, "m.room.power_levels", {**theirs_levels, "users": {**theirs_levels["users"], sue.user_id: 50}}
    )
    assert _state(sam, room_id, "m.room.power_levels")[1]["users"][sue.user_id] == 50  # Synapse took it
    # (the rule refuses any power for an external user: sam's own level is named first)
    _rejected_at(ours, raised, f"External user {sam.user_id} cannot be given power in this room")
    after = sam.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "after the power change"})
    _rejected_at(ours, after, f"auth event {raised} was rejected")
    _, our_levels = _state(alice, room_id, "m.room.power_levels")
    assert sue.user_id not in our_levels["users"] and our_levels["users"][sam.user_id] == 100, our_levels
    # Our users' messages still reach Synapse.
    still = alice.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "toujours là"})
    sam.wait_event_id(room_id, still, "alice's message after the refused change")
    assert all(e.get("event_id") not in (raised, after) for b in alice.seen for e in _timeline_events(b, room_id))


def _timeline_events(body: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    return list(body.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", []))


# --------------------------------------------------------------------------- direct


def test_direct_rooms_keep_the_synapse_user_to_two(servers: Servers) -> None:
    engine = "sqlite"
    ours = servers.ours(engine)
    alice, bob, carol = servers.user(engine, "alice"), servers.user(engine, "bob"), servers.user(engine, "carol")
    sam = servers.user(engine, "sam", external=True)
    sue = servers.user(engine, "sue", external=True)

    # A direct chat already holding two members: the external user cannot be added.
    dm = alice.ok("POST", "/createRoom", {"is_direct": True, "invite": [bob.user_id]})["room_id"]
    bob.ok("POST", f"/join/{quote(dm)}", {})
    status, body = alice.call("POST", _path(dm, "invite"), {"user_id": sam.user_id})
    _refused(status, body, "direct chat holds at most two members")
    assert _stored_events_of(ours, dm, sam.user_id) == []

    # A direct chat with sam, who holds power in it (trusted_private_chat).
    options = {"is_direct": True, "preset": "trusted_private_chat", "invite": [sam.user_id]}
    with_sam = alice.ok("POST", "/createRoom", options)["room_id"]
    _wait_for_invite(sam, with_sam)
    sam.ok("POST", f"/join/{quote(with_sam)}", {})
    alice.wait_joined(with_sam, sam.user_id, "sam in the direct chat")

    # An invite of one of our users, sent from Synapse: our server refuses to take it,
    # and the Synapse client hears why.
    status, body = sam.call("POST", _path(with_sam, "invite"), {"user_id": carol.user_id})
    _refused(status, body, "at most two members")

    # Sent from Synapse and accepted there, rejected by ours: a third member's invite, her
    # join, a name, a change of the access rule.  sam's message after them is accepted.
    invite = _invite_on_synapse(sam, with_sam, sue)
    _wait_for_invite(sue, with_sam)
    sue.ok("POST", f"/join/{quote(with_sam)}", {})
    join = _state(sue, with_sam, "m.room.member", sue.user_id)[1]
    assert join["membership"] == "join"  # Synapse's view
    named = sam.state(with_sam, "m.room.name", {"name": "Plus un direct"})
    opened = sam.state(with_sam, RULES, {"rule": "unrestricted"})
    _after_marker(sam, alice, with_sam, "after the forbidden changes")

    _rejected_at(ours, invite, "at most two members")
    _rejected_at(ours, named, "The name of a direct chat cannot be changed")
    _rejected_at(ours, opened, "cannot change from 'direct' to 'unrestricted'")
    assert set(alice.ok("GET", _path(with_sam, "joined_members"))["joined"]) == {alice.user_id, sam.user_id}
    assert _state(alice, with_sam, "m.room.member", sue.user_id)[0] == 404
    assert _state(alice, with_sam, "m.room.name")[0] == 404
    assert _state(alice, with_sam, RULES)[1] == {"rule": "direct"}
    assert all(membership_in(b, with_sam, sue.user_id) is None for b in alice.seen)
    # carol was never invited
    time.sleep(0.5)
    assert with_sam not in carol.sync_until(lambda b: b, "carol's sync").get("rooms", {}).get("invite", {})


def _invite_on_synapse(inviter: User, room_id: str, invitee: User) -> str:
    """``inviter`` invites ``invitee`` (both on Synapse); returns the invite's event ID."""
    inviter.ok("POST", _path(room_id, "invite"), {"user_id": invitee.user_id})
    event = _state(inviter, room_id, "m.room.member", invitee.user_id)
    status, content = event
    assert status == 200 and content["membership"] == "invite", event
    found = inviter.wait_event(
        room_id,
        lambda e: e["type"] == "m.room.member" and e.get("state_key") == invitee.user_id,
        "the invite on Synapse",
    )
    return str(found["event_id"])


# --------------------------------------------------------------------------- user directory


def _search(user: User, term: str) -> list[dict[str, Any]]:
    return list(user.ok("POST", "/user_directory/search", {"search_term": term})["results"])


def _invite_and_join(host: User, room_id: str, guest: User) -> None:
    host.ok("POST", _path(room_id, "invite"), {"user_id": guest.user_id})
    _wait_for_invite(guest, room_id)
    guest.ok("POST", f"/join/{quote(room_id)}", {})
    host.wait_joined(room_id, guest.user_id, f"{guest.user_id} in {room_id}")


def test_synapse_user_in_our_user_directory(servers: Servers) -> None:
    """A Synapse user joined to a room shared with our user is found in our user directory,
    named by their member event (and renamed with it), where external users are visible;
    on an agent server with the default (``visible_in_directory: false``) they are not,
    although they share the room."""
    sam = servers.user("sqlite", "dirsam", external=True)
    sam.ok("PUT", f"/profile/{quote(sam.user_id)}/displayname", {"displayname": "Samuel Synapse"})

    vic = User(servers.ours_showing_externals(), "vic")
    shared = vic.ok("POST", "/createRoom", {"name": "Annuaire"})["room_id"]
    _invite_and_join(vic, shared, sam)
    assert _search(vic, "samuel") == [{"user_id": sam.user_id, "display_name": "Samuel Synapse"}]
    assert [r["user_id"] for r in _search(vic, "dirsam")] == [sam.user_id]  # the localpart
    sam.ok("PUT", f"/profile/{quote(sam.user_id)}/displayname", {"displayname": "Samuel Renomme"})
    end = time.monotonic() + 30
    while _search(vic, "renomme") != [{"user_id": sam.user_id, "display_name": "Samuel Renomme"}]:
        assert time.monotonic() < end, ("sam's new name never reached our directory", _search(vic, "samuel"))
        time.sleep(0.3)
    assert _search(vic, "synapse") == []

    alice = servers.user("sqlite", "alice")
    room_id = alice.ok("POST", "/createRoom", {"name": "Annuaire restreint"})["room_id"]
    alice.state(room_id, RULES, {"rule": "unrestricted"})
    _invite_and_join(alice, room_id, sam)
    assert sam.user_id in alice.ok("GET", _path(room_id, "joined_members"))["joined"]
    assert _search(alice, "samuel") == []
    assert _search(alice, "dirsam") == []
