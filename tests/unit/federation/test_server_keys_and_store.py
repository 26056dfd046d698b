"""Key responses (pure), the server_keys repository (both engines), LocalKeys, the config keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import signedjson.key
import signedjson.sign
from _federation_helpers import DAY_MS, make_clock, new_key, run
from twisted.internet import reactor

from homeserver.config import ConfigError, parse_config
from homeserver.events.signing import encode_verify_key_base64, get_verify_key, key_id, sign_json
from homeserver.federation.key_server import KeyNotary, KeyQuery, LocalKeys, old_verify_keys_from_config
from homeserver.federation.server_keys import (
    MAX_KEY_VALIDITY_MS,
    KeyResponseError,
    OldVerifyKey,
    build_server_keys,
    check_notary_signature,
    parse_server_keys,
)
from homeserver.storage.database import Database
from homeserver.storage.engines import create_engine
from homeserver.storage.migrations import prepare_database
from homeserver.storage.server_keys import ServerKeyRepository

NOW = 1_700_000_000_000
KEY = new_key("k1")
OLD = new_key("old")


def test_build_server_keys_is_signed_and_lists_old_keys() -> None:
    body = build_server_keys("a.example", [KEY], {key_id(OLD): OldVerifyKey(get_verify_key(OLD), 123)}, NOW)
    signedjson.sign.verify_signed_json(body, "a.example", get_verify_key(KEY))
    assert body["verify_keys"] == {"ed25519:k1": {"key": encode_verify_key_base64(get_verify_key(KEY))}}
    assert body["old_verify_keys"] == {
        "ed25519:old": {"key": encode_verify_key_base64(get_verify_key(OLD)), "expired_ts": 123}
    }
    assert body["valid_until_ts"] == NOW and body["server_name"] == "a.example"


def test_parse_server_keys() -> None:
    body = build_server_keys(
        "a.example", [KEY], {key_id(OLD): OldVerifyKey(get_verify_key(OLD), NOW - 5)}, NOW + DAY_MS
    )
    body["verify_keys"]["curve25519:x"] = {"key": "whatever"}  # other algorithms are skipped
    body = sign_json({k: v for k, v in body.items() if k != "signatures"}, "a.example", KEY)
    parsed = parse_server_keys(body, expected_server_name="a.example", fetched_ts=NOW, source="a.example")
    assert set(parsed.keys) == {"ed25519:k1", "ed25519:old"}
    assert parsed.keys["ed25519:k1"].valid_until_ts == NOW + DAY_MS
    assert parsed.keys["ed25519:old"].valid_until_ts == NOW - 5
    assert parsed.valid_until_ts == NOW + DAY_MS and parsed.json is body


def test_parse_server_keys_caps_validity() -> None:
    body = build_server_keys("a.example", [KEY], {}, NOW + 100 * DAY_MS)
    parsed = parse_server_keys(body, expected_server_name="a.example", fetched_ts=NOW, source="x")
    assert parsed.keys["ed25519:k1"].valid_until_ts == NOW + MAX_KEY_VALIDITY_MS
    assert parsed.valid_until_ts == NOW + 100 * DAY_MS  # the published value, for notary answers


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda b: b.update(verify_keys={}), "no ed25519 verify key"),
        (lambda b: b.update(verify_keys={"ed25519:k1": {"key": "!!!"}}), "verify_keys.ed25519:k1"),
        (lambda b: b.update(verify_keys={"ed25519:k1": {"key": "AAAA"}}), "32"),
        (lambda b: b.update(valid_until_ts="soon"), "valid_until_ts"),
        (lambda b: b.update(old_verify_keys={"ed25519:o": {"key": "x"}}), "expired_ts"),
        (lambda b: b.update(old_verify_keys=[]), "old_verify_keys"),
    ],
)
def test_parse_server_keys_rejects(mutate: Any, problem: str) -> None:
    body = {k: v for k, v in build_server_keys("a.example", [KEY], {}, NOW).items() if k != "signatures"}
    mutate(body)
    with pytest.raises(KeyResponseError, match=problem):
        parse_server_keys(
            sign_json(body, "a.example", KEY), expected_server_name="a.example", fetched_ts=NOW, source="x"
        )


def test_check_notary_signature() -> None:
    notary_key = new_key("n")
    body = sign_json(build_server_keys("a.example", [KEY], {}, NOW), "notary.example", notary_key)
    check_notary_signature(body, "notary.example", {key_id(notary_key): get_verify_key(notary_key)})
    with pytest.raises(KeyResponseError, match="configured key"):
        check_notary_signature(body, "notary.example", {"ed25519:other": get_verify_key(notary_key)})
    with pytest.raises(KeyResponseError):
        check_notary_signature(body, "notary.example", {key_id(notary_key): get_verify_key(new_key("n"))})


# -- LocalKeys --------------------------------------------------------------------------------


def test_local_keys_response_refresh_and_cap() -> None:
    clock_reactor, clock = make_clock(NOW)
    second = new_key("k2")
    local = LocalKeys(
        server_name="me.example",
        clock=clock,
        signing_keys=[KEY, second],
        old_verify_keys={key_id(OLD): OldVerifyKey(get_verify_key(OLD), NOW - 1)},
        key_refresh_interval_ms=DAY_MS,
    )
    body = local.server_keys()
    assert body["valid_until_ts"] == NOW + DAY_MS
    for key in (KEY, second):  # signed by every current key
        signedjson.sign.verify_signed_json(body, "me.example", get_verify_key(key))
    assert set(body["verify_keys"]) == {"ed25519:k1", "ed25519:k2"} and set(body["old_verify_keys"]) == {"ed25519:old"}
    clock_reactor.advance(DAY_MS / 1000 / 2 - 1)
    assert local.server_keys() is body  # still more than half its life left
    clock_reactor.advance(2)
    assert local.server_keys()["valid_until_ts"] == clock.time_msec() + DAY_MS
    assert local.verify_keys()["ed25519:old"].valid_until_ts == NOW - 1
    assert local.signing_key is KEY

    capped = LocalKeys(
        server_name="me.example",
        clock=clock,
        signing_keys=[KEY],
        old_verify_keys={},
        key_refresh_interval_ms=30 * DAY_MS,
    )
    assert capped.server_keys()["valid_until_ts"] == clock.time_msec() + MAX_KEY_VALIDITY_MS


def test_old_verify_keys_from_config() -> None:
    b64 = encode_verify_key_base64(get_verify_key(OLD))
    old = old_verify_keys_from_config({"ed25519:old": {"key": b64, "expired_ts": 42}})
    assert old["ed25519:old"].expired_ts == 42 and old["ed25519:old"].verify_key == get_verify_key(OLD)


# -- the notary's freshness rules, over a fake store ------------------------------------------


class _Store:
    def __init__(self) -> None:
        self.responses: list[Any] = []

    async def get_responses(self, server_name: str) -> list[Any]:
        return [r for r in self.responses if r.server_name == server_name]


class _Fetcher:
    def __init__(self) -> None:
        self.refreshed: list[str] = []

    async def refresh_from_origin(self, server_name: str) -> None:
        self.refreshed.append(server_name)


def test_notary_refreshes_stale_or_insufficient_answers_only() -> None:
    from homeserver.storage.server_keys import StoredKeyResponse

    clock_reactor, clock = make_clock(NOW)
    local = LocalKeys(
        server_name="me.example", clock=clock, signing_keys=[KEY], old_verify_keys={}, key_refresh_interval_ms=DAY_MS
    )
    store, fetcher = _Store(), _Fetcher()
    notary = KeyNotary(
        local=local, clock=clock, store=store, fetcher=fetcher, is_allowed=lambda n: n != "banned.example"
    )
    remote_body = build_server_keys("r.example", [new_key("r1")], {}, NOW + DAY_MS)
    store.responses.append(StoredKeyResponse("r.example", "r.example", NOW + DAY_MS, NOW - 1000, remote_body))

    answer = run(notary.query({"r.example": KeyQuery()}))
    assert fetcher.refreshed == []  # fresh enough
    (served,) = answer
    assert served["signatures"]["r.example"] == remote_body["signatures"]["r.example"]
    signedjson.sign.verify_signed_json(served, "me.example", get_verify_key(KEY))

    run(notary.query({"r.example": KeyQuery(key_ids={"ed25519:r1": NOW + 2 * DAY_MS})}))
    run(notary.query({"r.example": KeyQuery(key_ids={"ed25519:unknown": None})}))
    run(notary.query({"r.example": KeyQuery(minimum_valid_until_ts=NOW + 2 * DAY_MS)}))
    assert fetcher.refreshed == ["r.example"] * 3
    clock_reactor.advance(DAY_MS / 1000 / 2 + 1)  # past half its lifetime
    run(notary.query({"r.example": KeyQuery()}))
    assert len(fetcher.refreshed) == 4

    assert run(notary.query({"unknown.example": KeyQuery()})) == []
    assert run(notary.query({"banned.example": KeyQuery()})) == []
    assert fetcher.refreshed[-1] == "unknown.example"  # never for a server outside the allowlist
    (own,) = run(notary.query({"me.example": KeyQuery()}))
    assert own == local.server_keys()


# -- the repository, on both engines -----------------------------------------------------------


@pytest.fixture
def key_db(database_config: dict[str, Any]) -> Iterator[Database]:
    database = Database(create_engine(database_config["name"], database_config["args"]), reactor)
    prepare_database(database, 0)
    yield database
    database.close()


@pytest_twisted.ensureDeferred
async def test_repository_round_trip_and_longest_validity_wins(key_db: Database) -> None:
    repo = ServerKeyRepository(key_db)
    body = build_server_keys(
        "r.example", [KEY], {key_id(OLD): OldVerifyKey(get_verify_key(OLD), NOW - 1)}, NOW + DAY_MS
    )
    first = parse_server_keys(body, expected_server_name="r.example", fetched_ts=NOW, source="r.example")
    await repo.store_response(first, source="r.example", fetched_ts=NOW)
    keys = await repo.get_keys("r.example", ["ed25519:k1", "ed25519:old", "ed25519:none"])
    assert set(keys) == {"ed25519:k1", "ed25519:old"}
    assert keys["ed25519:k1"].verify_key == get_verify_key(KEY)
    assert (keys["ed25519:k1"].valid_until_ts, keys["ed25519:k1"].fetched_ts) == (NOW + DAY_MS, NOW)
    assert set(await repo.get_keys("r.example", [])) == {"ed25519:k1", "ed25519:old"}
    assert await repo.get_keys("other.example", []) == {}

    # A notary's older copy does not shorten the validity; a newer, longer one extends it.
    shorter = build_server_keys("r.example", [KEY], {}, NOW + 1000)
    await repo.store_response(
        parse_server_keys(shorter, expected_server_name="r.example", fetched_ts=NOW + 5, source="n.example"),
        source="n.example",
        fetched_ts=NOW + 5,
    )
    assert (await repo.get_keys("r.example", ["ed25519:k1"]))["ed25519:k1"].valid_until_ts == NOW + DAY_MS
    longer = build_server_keys("r.example", [KEY], {}, NOW + 2 * DAY_MS)
    await repo.store_response(
        parse_server_keys(longer, expected_server_name="r.example", fetched_ts=NOW + 10, source="r.example"),
        source="r.example",
        fetched_ts=NOW + 10,
    )
    key = (await repo.get_keys("r.example", ["ed25519:k1"]))["ed25519:k1"]
    assert (key.valid_until_ts, key.fetched_ts, key.source) == (NOW + 2 * DAY_MS, NOW + 10, "r.example")

    responses = await repo.get_responses("r.example")
    assert [(r.source, r.fetched_ts, r.valid_until_ts) for r in responses] == [
        ("r.example", NOW + 10, NOW + 2 * DAY_MS),
        ("n.example", NOW + 5, NOW + 1000),
    ]
    assert responses[0].key_json == longer
    signedjson.sign.verify_signed_json(responses[0].key_json, "r.example", get_verify_key(KEY))


# -- configuration ----------------------------------------------------------------------------


def _parse(tmp_path: Path, **extra: Any) -> Any:
    config, _ = parse_config({"server_name": "me.example", "listeners": [], **extra}, config_dir=str(tmp_path))
    return config


def test_config_pinned_keys_and_static_routes(tmp_path: Path) -> None:
    b64 = encode_verify_key_base64(get_verify_key(KEY))
    config = _parse(
        tmp_path,
        federation_pinned_keys={"a.example": {"ed25519:k1": b64}},
        federation_static_routes={"a.example": "10.0.0.5:8448", "b.example:8448": "hs-b.internal"},
    )
    assert config.federation_pinned_keys == {"a.example": {"ed25519:k1": b64}}
    assert config.federation_static_routes == {"a.example": "10.0.0.5:8448", "b.example:8448": "hs-b.internal"}
    assert _parse(tmp_path).federation_pinned_keys == {}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"federation_pinned_keys": {"a.example": {"k1": "x"}}},
            'federation_pinned_keys.a.example.k1: expected a key ID such as "ed25519:abc123"',
        ),
        (
            {"federation_pinned_keys": {"a.example": {"ed25519:k1": "short"}}},
            "federation_pinned_keys.a.example.ed25519:k1: expected an unpadded-base64 ed25519 public key",
        ),
        ({"federation_pinned_keys": {"bad name": {}}}, "federation_pinned_keys.bad name: expected a server name"),
        (
            {"federation_pinned_keys": {"a.example": {}}},
            "federation_pinned_keys.a.example: expected at least one pinned key",
        ),
        ({"federation_pinned_keys": ["a"]}, "federation_pinned_keys: expected a mapping"),
        (
            {"federation_static_routes": {"a.example": "not a host"}},
            'federation_static_routes.a.example: expected a "host:port" address',
        ),
        (
            {"federation_static_routes": {"a.example": 8448}},
            'federation_static_routes.a.example: expected a "host:port" address',
        ),
        (
            {"federation_static_routes": {"bad name": "h:1"}},
            "federation_static_routes.bad name: expected a server name",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, **extra)
    assert any(e.startswith(message) for e in info.value.errors), info.value.errors


def test_signedjson_reads_our_key_format() -> None:
    # The verify key we publish decodes with signedjson, as Synapse would read it.
    b64 = encode_verify_key_base64(get_verify_key(KEY))
    assert signedjson.key.decode_verify_key_base64("ed25519", "k1", b64) == get_verify_key(KEY)
