"""Signing: the spec's test vectors, key files, and agreement with Synapse's signing code."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from _events_helpers import ALL_VERSIONS, SPEC_SEED, examples, spec_signing_key, synapse_room_version
from hypothesis import given, settings
from hypothesis import strategies as st
from unpaddedbase64 import decode_base64

from homeserver.events.hashing import check_content_hash
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.signing import (
    SignatureError,
    decode_verify_key_base64,
    encode_verify_key_base64,
    generate_key_version,
    generate_signing_key,
    get_verify_key,
    hash_and_sign_event,
    key_id,
    read_signing_keys,
    sign_event,
    sign_json,
    verify_event_signature,
    verify_json,
    write_signing_keys,
)

# --- appendix "Cryptographic Test Vectors" -----------------------------------------------


def test_spec_json_signing_empty_object() -> None:
    signed = sign_json({}, "domain", spec_signing_key())
    assert signed == {
        "signatures": {
            "domain": {
                "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
            }
        }
    }
    verify_json(signed, "domain", get_verify_key(spec_signing_key()))


def test_spec_json_signing_with_data() -> None:
    original = {"one": 1, "two": "Two"}
    signed = sign_json(original, "domain", spec_signing_key())
    assert signed == {
        "one": 1,
        "signatures": {
            "domain": {
                "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
            }
        },
        "two": "Two",
    }
    assert original == {"one": 1, "two": "Two"}, "sign_json must not modify its input"


# The spec's event vectors keep `origin`, so they use the pre-v11 redaction algorithm.
PRE_V11 = [v for v in ALL_VERSIONS if not v.updated_redaction_rules]


@pytest.mark.parametrize("rv", PRE_V11, ids=lambda v: f"v{v.identifier}")
def test_spec_minimal_event_signing(rv: RoomVersion) -> None:
    event = {
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "signatures": {},
        "hashes": {},
        "type": "X",
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 3,
        "unsigned": {"age_ts": 1000000},
    }
    hash_and_sign_event(rv, event, "domain", spec_signing_key())
    assert event["hashes"] == {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"}
    assert event["signatures"] == {
        "domain": {
            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        }
    }
    assert event["unsigned"] == {"age_ts": 1000000}
    verify_event_signature(rv, event, "domain", get_verify_key(spec_signing_key()))
    assert check_content_hash(event)


@pytest.mark.parametrize("rv", PRE_V11, ids=lambda v: f"v{v.identifier}")
def test_spec_redactable_event_signing(rv: RoomVersion) -> None:
    event = {
        "content": {"body": "Here is the message content"},
        "event_id": "$0:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "type": "m.room.message",
        "room_id": "!r:domain",
        "sender": "@u:domain",
        "signatures": {},
        "unsigned": {"age_ts": 1000000},
    }
    hash_and_sign_event(rv, event, "domain", spec_signing_key())
    assert event["hashes"] == {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"}
    assert event["signatures"] == {
        "domain": {
            "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
        }
    }
    verify_key = get_verify_key(spec_signing_key())
    verify_event_signature(rv, event, "domain", verify_key)
    # The signature covers only the redacted form: it survives redaction, the hash does not.
    event["content"] = {}
    verify_event_signature(rv, event, "domain", verify_key)
    assert not check_content_hash(event)


# --- verification failures ----------------------------------------------------------------


def test_verify_rejects_tampering_and_missing_signatures() -> None:
    key = spec_signing_key()
    verify_key = get_verify_key(key)
    signed = sign_json({"a": 1}, "domain", key)
    with pytest.raises(SignatureError):
        verify_json({**signed, "a": 2}, "domain", verify_key)
    with pytest.raises(SignatureError):
        verify_json(signed, "other", verify_key)
    with pytest.raises(SignatureError):
        verify_json({"a": 1}, "domain", verify_key)
    with pytest.raises(SignatureError):
        verify_json({**signed, "signatures": {"domain": {"ed25519:1": "!!notbase64"}}}, "domain", verify_key)
    with pytest.raises(SignatureError):
        verify_json(signed, "domain", get_verify_key(generate_signing_key("1")))
    # unsigned is not covered.
    verify_json({**signed, "unsigned": {"x": 1}}, "domain", verify_key)


def test_event_signature_fails_when_essential_field_changes() -> None:
    rv = RoomVersions.V12
    key = spec_signing_key()
    event: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": "!r",
        "sender": "@u:domain",
        "content": {"body": "hi"},
        "prev_events": [],
        "auth_events": [],
        "depth": 3,
        "origin_server_ts": 5,
    }
    hash_and_sign_event(rv, event, "domain", key)
    with pytest.raises(SignatureError):
        verify_event_signature(rv, {**event, "depth": 4}, "domain", get_verify_key(key))


def test_countersigning_keeps_other_signatures() -> None:
    rv = RoomVersions.V10
    event: dict[str, Any] = {"type": "X", "room_id": "!r:a", "sender": "@u:a", "content": {}, "depth": 1}
    hash_and_sign_event(rv, event, "a", spec_signing_key())
    other = generate_signing_key("b1")
    sign_event(rv, event, "b", other)
    verify_event_signature(rv, event, "a", get_verify_key(spec_signing_key()))
    verify_event_signature(rv, event, "b", get_verify_key(other))


# --- keys -----------------------------------------------------------------------------------


def test_key_file_round_trip_in_synapse_format() -> None:
    text = f"ed25519 1 {SPEC_SEED}\n"
    keys = read_signing_keys(text)
    assert [key_id(k) for k in keys] == ["ed25519:1"]
    # The spec's seed has non-zero padding bits ("...XA1"); re-encoding gives "...XA0".
    assert write_signing_keys(keys) == text.replace("XA1", "XA0")
    assert bytes(read_signing_keys(write_signing_keys(keys))[0]) == bytes(keys[0])
    fresh = generate_signing_key(generate_key_version())
    assert key_id(fresh).startswith("ed25519:a_")
    (reread,) = read_signing_keys("\n" + write_signing_keys([fresh]) + "\n")
    assert bytes(reread) == bytes(fresh)


def test_key_file_is_readable_by_synapse() -> None:
    from signedjson.key import read_signing_keys as synapse_read

    key = generate_signing_key("a_Abcd")
    (theirs,) = synapse_read(write_signing_keys([key]).splitlines())
    assert bytes(theirs) == bytes(key) and theirs.version == "a_Abcd"


@pytest.mark.parametrize("text", ["ed25519 1", "rsa 1 AAAA", "ed25519 1 !!!!", "ed25519 1 AAAA"])
def test_bad_key_files_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="line 1"):
        read_signing_keys(text)


def test_verify_key_encoding_round_trip() -> None:
    verify_key = get_verify_key(spec_signing_key())
    encoded = encode_verify_key_base64(verify_key)
    decoded = decode_verify_key_base64("ed25519", "1", encoded)
    assert bytes(decoded) == bytes(verify_key)
    assert key_id(decoded) == "ed25519:1"


# --- agreement with Synapse ------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=10)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)
event_types = st.sampled_from(
    [
        "m.room.message",
        "m.room.member",
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.redaction",
        "m.room.history_visibility",
        "m.room.aliases",
        "m.room.topic",
    ]
)
content_keys = st.sampled_from(
    [
        "membership",
        "body",
        "creator",
        "join_rule",
        "allow",
        "users",
        "invite",
        "redacts",
        "join_authorised_via_users_server",
        "third_party_invite",
        "history_visibility",
        "aliases",
        "x",
    ]
)


@st.composite
def signable_events(draw: st.DrawFn) -> tuple[RoomVersion, dict[str, Any]]:
    rv = draw(st.sampled_from(ALL_VERSIONS))
    event: dict[str, Any] = {
        "type": draw(event_types),
        "room_id": "!r:a.test",
        "sender": "@u:a.test",
        "content": draw(st.dictionaries(content_keys, json_value, max_size=4)),
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "depth": draw(st.integers(0, 2**53 - 1)),
        "origin_server_ts": draw(st.integers(0, 2**53 - 1)),
    }
    if draw(st.booleans()):
        event["state_key"] = draw(st.text(max_size=5))
    for extra in draw(st.lists(st.sampled_from(["origin", "membership", "prev_state", "redacts", "foo"]), max_size=2)):
        event[extra] = draw(json_value)
    return rv, event


@settings(max_examples=examples(200), deadline=None)
@given(signable_events())
def test_signatures_and_hashes_match_synapse(case: tuple[RoomVersion, dict[str, Any]]) -> None:
    import hashlib

    from synapse.crypto.event_signing import add_hashes_and_signatures, compute_content_hash

    rv, event = case
    key = spec_signing_key()
    ours = hash_and_sign_event(rv, copy.deepcopy(event), "a.test", key)
    theirs = copy.deepcopy(event)
    add_hashes_and_signatures(synapse_room_version(rv), theirs, "a.test", key)
    # ed25519 is deterministic: agreeing on the redacted bytes means identical output.
    assert ours == theirs
    verify_event_signature(rv, theirs, "a.test", get_verify_key(key))
    assert check_content_hash(theirs)
    assert compute_content_hash(ours, hashlib.sha256)[1] == decode_base64(ours["hashes"]["sha256"])


@settings(max_examples=examples(100), deadline=None)
@given(signable_events())
def test_synapse_verifies_our_event_signatures(case: tuple[RoomVersion, dict[str, Any]]) -> None:
    from signedjson.sign import verify_signed_json
    from synapse.synapse_rust.events import redact_event_dict as synapse_redact

    rv, event = case
    key = generate_signing_key("k1")
    ours = hash_and_sign_event(rv, copy.deepcopy(event), "a.test", key)
    verify_signed_json(synapse_redact(synapse_room_version(rv), ours), "a.test", get_verify_key(key))
