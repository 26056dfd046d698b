"""The Keyring: cache, validity, direct fetch, notaries, pinned keys, the allowlist."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from _federation_helpers import DAY_MS, FakeKeyStore, FakeTransport, key_response, make_clock, new_key, notarise, run
from twisted.internet import defer

from homeserver.config.keys import TrustedKeyServer
from homeserver.events.signing import (
    SignatureError,
    encode_verify_key_base64,
    get_verify_key,
    key_id,
    sign_json,
)
from homeserver.federation.keyring import KeyLookupError, Keyring, pinned_keys_from_config
from homeserver.federation.server_keys import (
    KEY_QUERY_PATH,
    MAX_KEY_VALIDITY_MS,
    SERVER_KEYS_PATH,
    FetchedKey,
    OldVerifyKey,
)

ORIGIN = "remote.example"
NOTARY = "notary.example"
ME = "me.example"
REMOTE_KEY = new_key("r1")
NOTARY_KEY = new_key("n1")
MY_KEY = new_key("m1")


class Env:
    def __init__(
        self,
        *,
        allowed: set[str] | None = None,
        notaries: list[TrustedKeyServer] | None = None,
        pinned: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.reactor, self.clock = make_clock()
        self.store = FakeKeyStore()
        self.transport = FakeTransport()
        self.allowed = allowed if allowed is not None else {ORIGIN, NOTARY}
        my_key = FetchedKey(ME, key_id(MY_KEY), get_verify_key(MY_KEY), 2**62, 0, ME)
        self.keyring = Keyring(
            server_name=ME,
            clock=self.clock,
            store=self.store,
            transport=self.transport,
            local_keys=lambda: {my_key.key_id: my_key},
            is_allowed=lambda name: name in self.allowed,
            pinned_keys=pinned_keys_from_config(pinned or {}),
            trusted_key_servers=notaries or [],
        )

    @property
    def now(self) -> int:
        return self.clock.time_msec()

    def origin_serves(self, response: Any) -> None:
        self.transport.answers[("GET", ORIGIN, SERVER_KEYS_PATH)] = response

    def notary_serves(self, *entries: dict[str, Any]) -> None:
        self.transport.answers[("POST", NOTARY, KEY_QUERY_PATH)] = {"server_keys": list(entries)}

    def get(self, server: str, kid: str, minimum: int | None = None) -> FetchedKey:
        return run(self.keyring.get_key(server, kid, self.now if minimum is None else minimum))  # type: ignore[no-any-return]

    def origin_calls(self) -> int:
        return sum(1 for c in self.transport.calls if c[1] == ORIGIN)

    def notary_calls(self) -> list[Any]:
        return [c for c in self.transport.calls if c[1] == NOTARY]


def notary_config(verify: bool = True) -> TrustedKeyServer:
    keys = MappingProxyType({key_id(NOTARY_KEY): encode_verify_key_base64(get_verify_key(NOTARY_KEY))})
    return TrustedKeyServer(server_name=NOTARY, verify_keys=keys if verify else None)


RID = key_id(REMOTE_KEY)


def test_direct_fetch_then_cache() -> None:
    env = Env()
    env.origin_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS))
    key = env.get(ORIGIN, RID)
    assert key.key_base64 == encode_verify_key_base64(get_verify_key(REMOTE_KEY))
    assert (key.valid_until_ts, key.source, key.fetched_ts) == (env.now + DAY_MS, ORIGIN, env.now)
    assert (ORIGIN, RID) in env.store.keys and (ORIGIN, ORIGIN) in env.store.responses
    # Now cached (in memory: the store is not even read).
    reads = env.store.reads
    assert env.get(ORIGIN, RID) == key
    assert env.origin_calls() == 1 and env.store.reads == reads


def test_cache_in_the_store_survives_a_new_keyring() -> None:
    env = Env()
    env.origin_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS))
    env.get(ORIGIN, RID)
    other = Env()
    other.store = env.store
    other.keyring._store = env.store  # a restart: same database, empty memory
    assert other.get(ORIGIN, RID).key_base64 == encode_verify_key_base64(get_verify_key(REMOTE_KEY))
    assert other.transport.calls == []


def test_validity_is_capped_at_seven_days() -> None:
    env = Env()
    env.origin_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + 365 * DAY_MS))
    assert env.get(ORIGIN, RID).valid_until_ts == env.now + MAX_KEY_VALIDITY_MS
    # Asking for validity beyond the cap finds no usable key: refetching cannot help (and
    # is not even tried so soon after the first fetch).
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, RID, minimum=env.now + 8 * DAY_MS)
    assert env.origin_calls() == 1


def test_expired_cached_key_is_refetched_after_the_throttle() -> None:
    env = Env()
    env.origin_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + 60_000))
    env.get(ORIGIN, RID)
    env.reactor.advance(120)  # the cached key expired a minute ago
    env.origin_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS))
    assert env.get(ORIGIN, RID).valid_until_ts == env.now + DAY_MS
    assert env.origin_calls() == 2


def test_unknown_key_ids_do_not_hammer_the_origin() -> None:
    env = Env()
    env.origin_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS))
    for attempt in range(5):
        with pytest.raises(KeyLookupError):
            env.get(ORIGIN, f"ed25519:made_up_{attempt}")
    assert env.origin_calls() == 1
    env.reactor.advance(31)
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, "ed25519:made_up_again")
    assert env.origin_calls() == 2


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda now: key_response("evil.example", [REMOTE_KEY], now + DAY_MS), id="wrong-server-name"),
        pytest.param(
            lambda now: {**key_response(ORIGIN, [REMOTE_KEY], now + DAY_MS), "valid_until_ts": now + 2 * DAY_MS},
            id="tampered",
        ),
        pytest.param(
            lambda now: sign_json(
                {k: v for k, v in key_response(ORIGIN, [REMOTE_KEY], now + DAY_MS).items() if k != "signatures"},
                ORIGIN,
                new_key("other"),
            ),
            id="signed-by-another-key",
        ),
        pytest.param(
            lambda now: {
                k: v for k, v in key_response(ORIGIN, [REMOTE_KEY], now + DAY_MS).items() if k != "signatures"
            },
            id="unsigned",
        ),
        pytest.param(lambda now: ["not", "an", "object"], id="not-an-object"),
        pytest.param(
            lambda now: {
                k: v for k, v in key_response(ORIGIN, [REMOTE_KEY], now + DAY_MS).items() if k != "valid_until_ts"
            },
            id="no-validity",
        ),
    ],
)
def test_bad_origin_responses_are_refused(bad: Any) -> None:
    env = Env()
    env.origin_serves(bad(env.now))
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, RID)
    assert env.store.keys == {}


def test_notary_is_asked_when_the_origin_fails() -> None:
    env = Env(notaries=[notary_config()])
    env.origin_serves(ConnectionRefusedError("down"))
    env.notary_serves(notarise(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS), NOTARY, NOTARY_KEY))
    key = env.get(ORIGIN, RID)
    assert key.source == NOTARY
    (call,) = env.notary_calls()
    assert call[3] == {"server_keys": {ORIGIN: {RID: {"minimum_valid_until_ts": env.now}}}}
    assert (ORIGIN, NOTARY) in env.store.responses


def test_notary_answer_needs_the_notarys_signature() -> None:
    env = Env(notaries=[notary_config()])
    env.origin_serves(ConnectionRefusedError("down"))
    origin_signed = key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS)
    env.notary_serves(origin_signed)  # not co-signed
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, RID)
    env.reactor.advance(31)
    env.notary_serves(notarise(origin_signed, NOTARY, new_key("n1")))  # right key ID, wrong key
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, RID)


def test_notary_answer_needs_the_origins_own_signature() -> None:
    env = Env(notaries=[notary_config()])
    env.origin_serves(ConnectionRefusedError("down"))
    forged = key_response(ORIGIN, [new_key("r1")], env.now + DAY_MS)
    forged["signatures"] = {}
    env.notary_serves(notarise(forged, NOTARY, NOTARY_KEY))
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, RID)


def test_notary_without_configured_keys_is_trusted_on_tls_alone() -> None:
    env = Env(notaries=[notary_config(verify=False)])
    env.origin_serves(ConnectionRefusedError("down"))
    env.notary_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS))
    assert env.get(ORIGIN, RID).source == NOTARY


def test_notary_extra_servers_are_ignored() -> None:
    env = Env(notaries=[notary_config()], allowed={ORIGIN, NOTARY, "third.example"})
    env.origin_serves(ConnectionRefusedError("down"))
    third = new_key("t1")
    env.notary_serves(
        notarise(key_response("third.example", [third], env.now + DAY_MS), NOTARY, NOTARY_KEY),
        notarise(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS), NOTARY, NOTARY_KEY),
    )
    env.get(ORIGIN, RID)
    assert {server for server, _ in env.store.keys} == {ORIGIN}


def test_origin_response_that_lacks_the_key_falls_through_to_the_notary() -> None:
    env = Env(notaries=[notary_config()])
    rotated = new_key("r2")
    env.origin_serves(key_response(ORIGIN, [rotated], env.now + DAY_MS))  # no longer has r1
    env.notary_serves(notarise(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS), NOTARY, NOTARY_KEY))
    assert env.get(ORIGIN, RID).source == NOTARY
    assert env.get(ORIGIN, key_id(rotated)).source == ORIGIN


def test_old_verify_keys_are_valid_until_expiry() -> None:
    env = Env()
    old = new_key("old")
    expired = env.now - DAY_MS
    env.origin_serves(
        key_response(
            ORIGIN, [REMOTE_KEY], env.now + DAY_MS, old={key_id(old): OldVerifyKey(get_verify_key(old), expired)}
        )
    )
    # Good for an event from before the expiry, not for one after.
    assert env.get(ORIGIN, key_id(old), minimum=expired - 1).valid_until_ts == expired
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, key_id(old), minimum=expired + 1)
    # Room versions 1-4 ignore validity: minimum 0.
    assert env.get(ORIGIN, key_id(old), minimum=0).key_id == key_id(old)


def test_pinned_keys_are_used_and_nothing_is_ever_fetched() -> None:
    pinned_b64 = encode_verify_key_base64(get_verify_key(REMOTE_KEY))
    env = Env(notaries=[notary_config()], pinned={ORIGIN: {RID: pinned_b64}})
    env.origin_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS))
    env.notary_serves(notarise(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS), NOTARY, NOTARY_KEY))
    key = env.get(ORIGIN, RID, minimum=env.now + 365 * DAY_MS)  # pinned keys do not expire
    assert (key.key_base64, key.source) == (pinned_b64, "config")
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, "ed25519:not_pinned")
    assert env.transport.calls == []
    run(env.keyring.refresh_from_origin(ORIGIN))  # not even for the notary endpoint
    assert env.transport.calls == []


def test_servers_outside_the_allowlist_are_never_contacted() -> None:
    env = Env(notaries=[notary_config()], allowed={NOTARY})
    env.origin_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS))
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, RID)
    run(env.keyring.refresh_from_origin(ORIGIN))
    assert env.transport.calls == []
    with pytest.raises(KeyLookupError):
        run(env.keyring.fetch_from_origin(ORIGIN))
    assert env.transport.calls == []


def test_notaries_outside_the_allowlist_are_not_asked() -> None:
    env = Env(notaries=[notary_config()], allowed={ORIGIN})
    env.origin_serves(ConnectionRefusedError("down"))
    env.notary_serves(notarise(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS), NOTARY, NOTARY_KEY))
    with pytest.raises(KeyLookupError):
        env.get(ORIGIN, RID)
    assert env.notary_calls() == []


def test_our_own_keys_come_from_memory() -> None:
    env = Env()
    assert env.get(ME, key_id(MY_KEY)).verify_key == get_verify_key(MY_KEY)
    with pytest.raises(KeyLookupError):
        env.get(ME, "ed25519:unknown")
    assert env.transport.calls == []


def test_concurrent_lookups_share_one_fetch() -> None:
    env = Env()
    pending: defer.Deferred[Any] = defer.Deferred()
    env.origin_serves(lambda _: pending)
    first = defer.ensureDeferred(env.keyring.get_key(ORIGIN, RID, env.now))
    second = defer.ensureDeferred(env.keyring.get_key(ORIGIN, RID, env.now))
    assert not first.called and not second.called
    pending.callback(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS))
    assert first.result.key_id == second.result.key_id == RID
    assert env.origin_calls() == 1


def test_verify_json_for_server() -> None:
    env = Env()
    env.origin_serves(key_response(ORIGIN, [REMOTE_KEY], env.now + DAY_MS))
    signed = sign_json({"a": 1}, ORIGIN, REMOTE_KEY)
    run(env.keyring.verify_json_for_server(ORIGIN, signed, env.now))
    with pytest.raises(SignatureError):
        run(env.keyring.verify_json_for_server(ORIGIN, {**signed, "a": 2}, env.now))
    with pytest.raises(SignatureError, match="not signed"):
        run(env.keyring.verify_json_for_server(ORIGIN, {"a": 1}, env.now))
    unknown = sign_json({"a": 1}, ORIGIN, new_key("zz"))
    with pytest.raises(KeyLookupError):
        run(env.keyring.verify_json_for_server(ORIGIN, unknown, env.now))
