"""Helpers shared by the event-core tests: event factories and the Synapse oracle."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from typing import Any

from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.events.signing import SigningKey, decode_signing_key_base64

# The seed of the spec's cryptographic test vectors (appendix "Signing Key").
SPEC_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"

ALL_VERSIONS = list(KNOWN_ROOM_VERSIONS.values())
VERSION_IDS = [v.identifier for v in ALL_VERSIONS]

# Events built by these helpers carry placeholder signatures from every test server, so
# signature-presence checks pass and only the auth rules decide.
TEST_SERVERS = ("a.test", "b.test", "c.test")
FAKE_SIGNATURES = {s: {"ed25519:1": "c2ln"} for s in TEST_SERVERS}

_ts = itertools.count(1000)

# Set EVENTS_FUZZ_SCALE=20 (say) for a long differential run; the default keeps the
# suite fast.
_FUZZ_SCALE = float(os.environ.get("EVENTS_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    """Hypothesis max_examples for a test that runs ``n`` by default."""
    return max(1, int(n * _FUZZ_SCALE))


def spec_signing_key() -> SigningKey:
    return decode_signing_key_base64("ed25519", "1", SPEC_SEED)


def make_event(rv: RoomVersion, **fields: Any) -> Event:
    """An Event with defaults for the fields a test does not care about."""
    d: dict[str, Any] = {
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 1,
        "origin_server_ts": next(_ts),
        "hashes": {"sha256": "aGFzaA"},
        "signatures": FAKE_SIGNATURES,
    }
    d.update(fields)
    return Event(d, rv)


def make_create(rv: RoomVersion, creator: str = "@alice:a.test", **content: Any) -> Event:
    body: dict[str, Any] = {"room_version": rv.identifier, **content}
    if not rv.implicit_room_creator:
        body.setdefault("creator", creator)
    fields: dict[str, Any] = {"type": "m.room.create", "state_key": "", "sender": creator, "content": body}
    if not rv.room_id_from_create_event:
        fields["room_id"] = "!room:" + creator.partition(":")[2]
    return make_event(rv, **fields)


def state_map(events: Iterable[Event]) -> dict[tuple[str, str], Event]:
    return {e.state_key_tuple: e for e in events}


# --- the Synapse oracle -------------------------------------------------------------------


def synapse_room_version(rv: RoomVersion) -> Any:
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS as SYNAPSE_VERSIONS

    return SYNAPSE_VERSIONS[rv.identifier]


def synapse_event(event: Event) -> Any:
    from synapse.events import make_event_from_dict

    sev = make_event_from_dict(dict(event.dict), synapse_room_version(event.room_version))
    assert sev.event_id == event.event_id, "event IDs disagree"
    return sev


def synapse_allows(event: Event, state: Mapping[tuple[str, str], Event]) -> tuple[bool, str]:
    """Synapse's decision (the state-dependent rules, plus its create-event checks)."""
    from synapse import event_auth
    from synapse.api.errors import SynapseError

    try:
        sev = synapse_event(event)
    except SynapseError as e:  # Synapse refuses to parse it at all: a rejection too
        return False, f"unparseable: {e}"
    try:
        if event.type == "m.room.create":
            event_auth._check_create(sev)
        else:
            event_auth.check_state_dependent_auth_rules(sev, [synapse_event(e) for e in state.values()])
    except Exception as e:  # AuthError/SynapseError; anything else is a rejection too
        return False, f"{type(e).__name__}: {e}"
    return True, ""


class Room:
    """A room's state, built event by event, for writing auth rule cases briefly."""

    def __init__(self, rv: RoomVersion, creator: str = "@alice:a.test", **create_content: Any) -> None:
        self.rv = rv
        self.create = make_create(rv, creator, **create_content)
        self.room_id = self.create.room_id
        self.state: dict[tuple[str, str], Event] = {self.create.state_key_tuple: self.create}

    def event(self, type: str, sender: str, content: Mapping[str, Any] | None = None, **fields: Any) -> Event:
        """An event in this room (not added to the state)."""
        fields.setdefault("prev_events", ["$previous"])
        return make_event(
            self.rv, type=type, sender=sender, room_id=self.room_id, content=dict(content or {}), **fields
        )

    def set(self, type: str, state_key: str, content: Mapping[str, Any], sender: str | None = None) -> Event:
        """Put a state event into the state, bypassing the auth rules."""
        event = self.event(type, sender or self.create.sender, content, state_key=state_key)
        self.state[event.state_key_tuple] = event
        return event

    def member(self, user: str, membership: str, **content: Any) -> Event:
        return self.set("m.room.member", user, {"membership": membership, **content}, sender=user)

    def power_levels(self, **content: Any) -> Event:
        return self.set("m.room.power_levels", "", content)

    def join_rules(self, join_rule: str, **content: Any) -> Event:
        return self.set("m.room.join_rules", "", {"join_rule": join_rule, **content})
