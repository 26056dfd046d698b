"""The checks on received PDUs: format, signatures, hashes, auth events, state, soft failure.

Events here are real: built, hashed and signed by ``build_event`` with generated keys,
and verified by the real Keyring holding those keys as pinned keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from _federation_helpers import FakeKeyStore, FakeTransport, make_clock, new_key, run

from homeserver.events.auth import auth_types_from_fields
from homeserver.events.builder import build_event
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.signing import SigningKey, get_verify_key, key_id, sign_event
from homeserver.federation.event_checks import (
    KnownEvents,
    PduFormatError,
    PduOutcome,
    PduStatus,
    SignatureCheckFailed,
    check_auth_against_auth_events,
    check_auth_against_state,
    check_signatures_and_hashes,
    check_soft_fail,
    parse_pdu,
    process_pdu_checks,
)
from homeserver.federation.keyring import Keyring
from homeserver.federation.server_keys import FOREVER_TS, FetchedKey

ALICE = "@alice:a.test"
BOB = "@bob:b.test"
CAROL = "@carol:c.test"
KEYS = {"a.test": new_key("a1"), "b.test": new_key("b1"), "c.test": new_key("c1")}
TS = 1_700_000_000_000
StateKey = tuple[str, str]

VERSIONS = [RoomVersions.V4, RoomVersions.V6, RoomVersions.V10, RoomVersions.V11, RoomVersions.V12]


def make_keyring(valid_until_ts: int = FOREVER_TS, keys: Mapping[str, SigningKey] = KEYS) -> Keyring:
    _, clock = make_clock()
    pinned = {
        server: {key_id(k): FetchedKey(server, key_id(k), get_verify_key(k), valid_until_ts, 0, "config")}
        for server, k in keys.items()
    }
    return Keyring(
        server_name="me.test",
        clock=clock,
        store=FakeKeyStore(),
        transport=FakeTransport(),
        local_keys=dict,
        is_allowed=lambda _: False,
        pinned_keys=pinned,
    )


class Room:
    """A room whose events are really signed; ``state`` follows the events sent."""

    def __init__(
        self, rv: RoomVersion, join_rule: str = "public", create_extra: Mapping[str, Any] = {}, **join_rules: Any
    ) -> None:
        self.rv = rv
        self.events: dict[str, Event] = {}
        self.state: dict[StateKey, Event] = {}
        self.last: list[str] = []
        content: dict[str, Any] = {"room_version": rv.identifier, **create_extra}
        if not rv.implicit_room_creator:
            content["creator"] = ALICE
        self.room_id = ""
        self.create = self.send("m.room.create", ALICE, content, state_key="")
        self.room_id = self.create.room_id
        self.send("m.room.member", ALICE, {"membership": "join"}, state_key=ALICE)
        self.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}}, state_key="")
        self.send("m.room.join_rules", ALICE, {"join_rule": join_rule, **join_rules}, state_key="")

    def build(
        self,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        auth: list[str] | None = None,
        auth_state: Mapping[StateKey, Event] | None = None,
        prev: list[str] | None = None,
    ) -> Event:
        """A signed event on top of the room (not added to it), citing the right auth
        events from ``auth_state`` (default: the room's state) unless given ``auth``."""
        if auth is None:
            state = self.state if auth_state is None else auth_state
            wanted = auth_types_from_fields(self.rv, type, sender, state_key, content)
            auth = [state[k].event_id for k in sorted(wanted) if k in state]
        server = sender.partition(":")[2]
        is_v12_create = self.rv.room_id_from_create_event and type == "m.room.create"
        return build_event(
            self.rv,
            room_id=None if is_v12_create else (self.room_id or "!room:a.test"),
            type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            prev_event_ids=self.last if prev is None else prev,
            auth_event_ids=auth,
            depth=len(self.events) + 1,
            origin_server_ts=TS + len(self.events),
            server_name=server,
            signing_key=KEYS[server],
        )

    def add(self, event: Event) -> Event:
        self.events[event.event_id] = event
        self.last = [event.event_id]
        if event.is_state():
            self.state[event.state_key_tuple] = event
        return event

    def send(self, type: str, sender: str, content: Mapping[str, Any], **kwargs: Any) -> Event:
        return self.add(self.build(type, sender, content, **kwargs))

    def join(self, user: str, **content: Any) -> Event:
        return self.send("m.room.member", user, {"membership": "join", **content}, state_key=user)

    def known(self, rejected: frozenset[str] = frozenset()) -> KnownEvents:
        return KnownEvents(dict(self.events), rejected)


def process(
    room: Room,
    pdu: Mapping[str, Any],
    *,
    rejected: frozenset[str] = frozenset(),
    state_before: Mapping[StateKey, Event] | None = None,
    current_state: Mapping[StateKey, Event] | None = None,
    keyring: Keyring | None = None,
) -> PduOutcome:
    before = dict(room.state if state_before is None else state_before)
    current = dict(room.state if current_state is None else current_state)

    async def fetch_auth_events(event: Event) -> KnownEvents:
        return room.known(rejected)

    async def fetch_state_before(event: Event) -> Mapping[StateKey, Event]:
        return before

    async def fetch_current_state(event: Event) -> Mapping[StateKey, Event]:
        return current

    outcome: PduOutcome = run(
        process_pdu_checks(
            room.rv,
            dict(pdu),
            keyring=keyring or make_keyring(),
            fetch_auth_events=fetch_auth_events,
            fetch_state_before=fetch_state_before,
            fetch_current_state=fetch_current_state,
        )
    )
    return outcome


def message(room: Room, sender: str = BOB, body: str = "hi", **kwargs: Any) -> Event:
    return room.build("m.room.message", sender, {"msgtype": "m.text", "body": body}, **kwargs)


# --- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_valid_events_are_accepted(rv: RoomVersion) -> None:
    room = Room(rv)
    join = room.build("m.room.member", BOB, {"membership": "join"}, state_key=BOB)
    outcome = process(room, join.dict)
    assert outcome.accepted and outcome.status is PduStatus.ACCEPTED
    assert outcome.event == join and not outcome.redacted_for_hash_mismatch
    assert outcome.rejection_reason is None
    room.add(join)

    outcome = process(room, message(room).dict)
    assert outcome.accepted


def test_the_create_event_itself_is_checked_alone() -> None:
    room = Room(RoomVersions.V12)
    outcome = process(room, room.create.dict, state_before={}, current_state={})
    assert outcome.accepted
    assert outcome.event.room_id == room.room_id


# --- 1. format ---------------------------------------------------------------------------------


def test_parse_pdu_accepts_a_valid_event_and_strips_untrusted_unsigned() -> None:
    room = Room(RoomVersions.V11)
    pdu = {**message(room).dict, "unsigned": {"age": 5, "redacted_because": {"fake": True}}}
    event = parse_pdu(room.rv, pdu)
    assert event.unsigned == {"age": 5}
    assert "redacted_because" in pdu["unsigned"], "the caller's dict is not modified"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.pop("sender"), id="missing sender"),
        pytest.param(lambda d: d.update(depth="1"), id="depth not an int"),
        pytest.param(lambda d: d.pop("hashes"), id="no hashes"),
        pytest.param(lambda d: d["content"].update(big="x" * 70_000), id="over 64 KiB"),
        pytest.param(lambda d: d.update(type="t" * 256), id="type over 255 bytes"),
        pytest.param(lambda d: d["content"].update(n=1.5), id="float in v6+"),
        pytest.param(lambda d: d["content"].update(n=2**53), id="integer out of range in v6+"),
    ],
)
def test_parse_pdu_drops_invalid_events(change: Any) -> None:
    room = Room(RoomVersions.V10)
    pdu = message(room).get_pdu_json()
    change(pdu)
    with pytest.raises(PduFormatError):
        parse_pdu(room.rv, pdu)


def test_parse_pdu_drops_non_objects_and_unsupported_versions() -> None:
    with pytest.raises(PduFormatError):
        parse_pdu(RoomVersions.V10, ["not", "an", "event"])
    room = Room(RoomVersions.V10)
    with pytest.raises(PduFormatError):
        parse_pdu(RoomVersions.V1, message(room).dict)


def test_floats_are_only_refused_from_v6() -> None:
    room = Room(RoomVersions.V4)
    pdu = message(room).get_pdu_json()
    pdu["content"]["n"] = 1.5
    assert parse_pdu(room.rv, pdu).content["n"] == 1.5


# --- 2. signatures -----------------------------------------------------------------------------


def test_a_bad_signature_drops_the_event() -> None:
    room = Room(RoomVersions.V12)
    pdu = message(room).get_pdu_json()
    # Signed by another key filed under b.test's key ID.
    impostor = new_key("b1")
    pdu["signatures"] = {}
    sign_event(room.rv, pdu, "b.test", impostor)
    with pytest.raises(SignatureCheckFailed, match="b.test"):
        process(room, pdu)


def test_a_signature_over_altered_signed_fields_drops_the_event() -> None:
    room = Room(RoomVersions.V11)
    pdu = message(room).get_pdu_json()
    pdu["origin_server_ts"] += 1  # covered by the signature, not only by the content hash
    with pytest.raises(SignatureCheckFailed):
        process(room, pdu)


def test_a_missing_required_signature_drops_the_event() -> None:
    room = Room(RoomVersions.V10)
    pdu = message(room).get_pdu_json()
    # Signed by a.test only: the sender's server b.test must sign.
    pdu["signatures"] = {}
    sign_event(room.rv, pdu, "a.test", KEYS["a.test"])
    with pytest.raises(SignatureCheckFailed, match="b.test"):
        process(room, pdu)


def test_a_signature_by_an_unknown_key_drops_the_event() -> None:
    room = Room(RoomVersions.V10)
    pdu = message(room).dict
    keyring = make_keyring(keys={"a.test": KEYS["a.test"], "b.test": new_key("other")})
    with pytest.raises(SignatureCheckFailed):
        process(room, pdu, keyring=keyring)


def test_keys_must_be_valid_at_origin_server_ts_from_v5() -> None:
    expired = make_keyring(valid_until_ts=TS - 1)
    room = Room(RoomVersions.V5)
    with pytest.raises(SignatureCheckFailed):
        run(check_signatures_and_hashes(room.rv, message(room), expired))
    # v4 does not enforce key validity.
    room = Room(RoomVersions.V4)
    event = message(room)
    assert run(check_signatures_and_hashes(room.rv, event, expired)) is event


# --- 3. hashes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rv", [RoomVersions.V10, RoomVersions.V12], ids=lambda v: f"v{v.identifier}")
def test_a_content_hash_mismatch_redacts_the_event_and_processes_it(rv: RoomVersion) -> None:
    room = Room(rv)
    room.join(BOB)
    original = message(room, body="the real text")
    pdu = original.get_pdu_json()
    pdu["content"]["body"] = "altered in transit"  # not signed (redacted away), but hashed
    pdu["unsigned"] = {"age": 1}

    outcome = process(room, pdu)
    assert outcome.redacted_for_hash_mismatch
    assert outcome.accepted, "the redacted event goes on through the checks"
    assert outcome.event.event_id == original.event_id
    assert outcome.event.content == {}
    assert outcome.event.unsigned == {}


def test_a_join_with_a_hash_mismatch_is_processed_as_the_redacted_join() -> None:
    room = Room(RoomVersions.V10)
    join = room.build("m.room.member", BOB, {"membership": "join", "displayname": "Bob"}, state_key=BOB)
    pdu = join.get_pdu_json()
    pdu["content"]["displayname"] = "Mallory"
    outcome = process(room, pdu)
    assert outcome.redacted_for_hash_mismatch and outcome.accepted
    assert outcome.event.content == {"membership": "join"}


def test_a_redacted_event_that_no_longer_passes_auth_is_rejected() -> None:
    # v8 redaction drops join_authorised_via_users_server (kept from v9): a restricted
    # join whose hash fails loses its authorisation, and so fails the join rules.
    rv = RoomVersions.V8
    room = Room(rv, "restricted", allow=[{"type": "m.room_membership", "room_id": "!space:a.test"}])
    content = {"membership": "join", "join_authorised_via_users_server": ALICE, "displayname": "Bob"}
    join = room.build("m.room.member", BOB, content, state_key=BOB)
    pdu = sign_event(rv, join.get_pdu_json(), "a.test", KEYS["a.test"])
    assert process(room, pdu).accepted

    pdu["content"]["displayname"] = "Mallory"
    outcome = process(room, pdu)
    assert outcome.redacted_for_hash_mismatch and outcome.rejected
    # The redacted join may not even cite the authoriser's membership any more.
    assert ALICE in (outcome.rejection_reason or "")


# --- 4. auth events ----------------------------------------------------------------------------


@pytest.mark.parametrize("rv", [RoomVersions.V10, RoomVersions.V12], ids=lambda v: f"v{v.identifier}")
def test_a_wrong_auth_event_selection_is_rejected(rv: RoomVersion) -> None:
    room = Room(rv)
    bob_join = room.join(BOB)
    # A message may not cite the join rules.
    auth = [
        room.state[k].event_id for k in [("m.room.power_levels", ""), ("m.room.member", BOB), ("m.room.join_rules", "")]
    ]
    if not rv.room_id_from_create_event:
        auth.append(room.create.event_id)
    outcome = process(room, message(room, auth=auth).dict)
    assert outcome.rejected and outcome.status is PduStatus.REJECTED
    assert outcome.rejection_reason is not None and "join_rules" in outcome.rejection_reason

    # Duplicates for one (type, state_key) are rejected too.
    dup = [*auth[:2], bob_join.event_id]
    assert process(room, message(room, auth=dup).dict).rejected


def test_v12_events_must_not_cite_the_create_event() -> None:
    room = Room(RoomVersions.V12)
    room.join(BOB)
    auth = [room.state[("m.room.power_levels", "")].event_id, room.state[("m.room.member", BOB)].event_id]
    assert process(room, message(room, auth=auth).dict).accepted
    outcome = process(room, message(room, auth=[*auth, room.create.event_id]).dict)
    assert outcome.rejected


def test_v3_to_v11_events_must_cite_the_create_event() -> None:
    room = Room(RoomVersions.V11)
    room.join(BOB)
    auth = [room.state[("m.room.power_levels", "")].event_id, room.state[("m.room.member", BOB)].event_id]
    outcome = process(room, message(room, auth=auth).dict)
    assert outcome.rejected and "m.room.create" in (outcome.rejection_reason or "")


def test_auth_events_that_cannot_be_found_reject_the_event() -> None:
    room = Room(RoomVersions.V11)
    bob_join = room.join(BOB)
    event = message(room)
    known = dict(room.events)
    del known[bob_join.event_id]
    reason = check_auth_against_auth_events(room.rv, event, known, set())
    assert reason is not None and bob_join.event_id in reason


@pytest.mark.parametrize("rv", [RoomVersions.V10, RoomVersions.V12], ids=lambda v: f"v{v.identifier}")
def test_a_rejected_auth_event_rejects_the_event(rv: RoomVersion) -> None:
    room = Room(rv)
    bob_join = room.join(BOB)
    outcome = process(room, message(room).dict, rejected=frozenset({bob_join.event_id}))
    assert outcome.rejected and "rejected" in (outcome.rejection_reason or "")


def test_auth_rules_are_checked_against_the_auth_events() -> None:
    room = Room(RoomVersions.V11)
    # Bob never joined: his message cites no membership of his and fails rule 6.
    outcome = process(room, message(room).dict)
    assert outcome.rejected and BOB in (outcome.rejection_reason or "")


def test_v12_room_id_names_the_create_event() -> None:
    room = Room(RoomVersions.V12)
    room.join(BOB)
    event = message(room)
    assert event.room_id == "!" + room.create.event_id[1:]
    assert room.create.event_id not in event.auth_event_ids
    assert check_auth_against_auth_events(room.rv, event, room.events, set()) is None

    # Unknown or rejected create event: rejected (v12 rule 2).
    without_create = {k: v for k, v in room.events.items() if k != room.create.event_id}
    reason = check_auth_against_auth_events(room.rv, event, without_create, set())
    assert reason is not None and "create event" in reason
    reason = check_auth_against_auth_events(room.rv, event, room.events, {room.create.event_id})
    assert reason is not None and "rejected" in reason


def test_a_v12_event_in_a_room_named_after_another_create_event_is_rejected() -> None:
    room = Room(RoomVersions.V12)
    other = Room(RoomVersions.V12, create_extra={"other": True})
    assert other.room_id != room.room_id
    room.join(BOB)
    # Bob's message claims to be in `other` while citing `room`'s events.
    event = room.build("m.room.message", BOB, {"body": "x"})
    pdu = event.get_pdu_json()
    pdu["room_id"] = other.room_id
    pdu["signatures"] = {}
    sign_event(room.rv, pdu, "b.test", KEYS["b.test"])
    known = KnownEvents({**room.events, **other.events})
    reason = check_auth_against_auth_events(room.rv, Event(pdu, room.rv), known.events, set())
    assert reason is not None


def test_a_create_event_with_auth_events_is_rejected() -> None:
    room = Room(RoomVersions.V11)
    bad = room.build("m.room.create", ALICE, room.create.content, state_key="", auth=[room.create.event_id], prev=[])
    assert check_auth_against_auth_events(room.rv, bad, room.events, set()) is not None


# --- 5. state before the event -----------------------------------------------------------------


def _banned_room(rv: RoomVersion) -> tuple[Room, Event, dict[StateKey, Event]]:
    """A room where Bob joined and was then banned; returns the room, Bob's join and the
    state before the ban."""
    room = Room(rv)
    bob_join = room.join(BOB)
    before_ban = dict(room.state)
    room.send("m.room.member", ALICE, {"membership": "ban"}, state_key=BOB)
    return room, bob_join, before_ban


@pytest.mark.parametrize("rv", [RoomVersions.V10, RoomVersions.V12], ids=lambda v: f"v{v.identifier}")
def test_failing_auth_against_the_state_before_rejects(rv: RoomVersion) -> None:
    room, bob_join, before_ban = _banned_room(rv)
    # Bob's message cites his join (so check 4 passes) and comes after the ban.
    event = message(room, auth_state=before_ban)
    assert check_auth_against_auth_events(rv, event, room.events, set()) is None
    reason = check_auth_against_state(rv, event, room.state)
    assert reason is not None and BOB in reason

    outcome = process(room, event.dict, state_before=room.state)
    assert outcome.rejected and outcome.rejection_reason == reason


# --- 6. soft failure ---------------------------------------------------------------------------


@pytest.mark.parametrize("rv", [RoomVersions.V10, RoomVersions.V12], ids=lambda v: f"v{v.identifier}")
def test_passing_the_state_before_but_failing_the_current_state_soft_fails(rv: RoomVersion) -> None:
    room, bob_join, before_ban = _banned_room(rv)
    # Bob's server sends on a fork from before the ban: allowed there, not now.
    event = message(room, auth_state=before_ban, prev=[bob_join.event_id])
    assert check_auth_against_state(rv, event, before_ban) is None
    assert check_soft_fail(rv, event, room.state)
    assert not check_soft_fail(rv, event, before_ban)

    outcome = process(room, event.dict, state_before=before_ban, current_state=room.state)
    assert outcome.soft_failed and outcome.status is PduStatus.SOFT_FAILED
    assert outcome.rejection_reason is None


def test_outliers_and_backfill_skip_the_state_checks() -> None:
    room, bob_join, before_ban = _banned_room(RoomVersions.V11)
    event = message(room, auth_state=before_ban, prev=[bob_join.event_id])

    async def fetch_auth_events(event: Event) -> KnownEvents:
        return room.known()

    async def fetch_state(event: Event) -> Mapping[StateKey, Event]:
        raise AssertionError("not asked")

    outcome: PduOutcome = run(
        process_pdu_checks(
            room.rv,
            event.dict,
            keyring=make_keyring(),
            fetch_auth_events=fetch_auth_events,
            fetch_state_before=None,
            fetch_current_state=None,
        )
    )
    assert outcome.accepted


# --- restricted joins --------------------------------------------------------------------------


@pytest.mark.parametrize("rv", [RoomVersions.V10, RoomVersions.V12], ids=lambda v: f"v{v.identifier}")
def test_a_restricted_join_needs_the_authorising_servers_signature(rv: RoomVersion) -> None:
    allow = [{"type": "m.room_membership", "room_id": "!space:a.test"}]
    room = Room(rv, "restricted", allow=allow)
    join = room.build(
        "m.room.member",
        BOB,
        {"membership": "join", "join_authorised_via_users_server": ALICE},
        state_key=BOB,
    )
    assert ("m.room.member", ALICE) in {room.events[i].state_key_tuple for i in join.auth_event_ids}

    # Signed by Bob's server only: a.test's signature is required, the event is dropped.
    with pytest.raises(SignatureCheckFailed, match="a.test"):
        process(room, join.dict)

    # Countersigned by the authorising server: accepted.
    countersigned = sign_event(rv, join.get_pdu_json(), "a.test", KEYS["a.test"])
    outcome = process(room, countersigned)
    assert outcome.accepted and outcome.event.event_id == join.event_id

    # A forged countersignature is dropped.
    forged = sign_event(rv, join.get_pdu_json(), "a.test", new_key("a1"))
    with pytest.raises(SignatureCheckFailed, match="a.test"):
        process(room, forged)


def test_a_restricted_join_authorised_by_a_non_member_is_rejected() -> None:
    rv = RoomVersions.V12
    room = Room(rv, "restricted", allow=[{"type": "m.room_membership", "room_id": "!space:a.test"}])
    join = room.build(
        "m.room.member", BOB, {"membership": "join", "join_authorised_via_users_server": CAROL}, state_key=BOB
    )
    pdu = sign_event(rv, join.get_pdu_json(), "c.test", KEYS["c.test"])
    outcome = process(room, pdu)
    assert outcome.rejected and CAROL in (outcome.rejection_reason or "")
