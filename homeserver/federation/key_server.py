"""Serving keys: our own (``/_matrix/key/v2/server``) and, as a notary, other servers' (``/query``).

:class:`LocalKeys` holds our signing keys and the signed response publishing them.
:class:`KeyNotary` answers key queries from what we have stored, co-signed by us,
asking the origin again (if the allowlist accepts it) when our copy is missing, too
short-lived for the query, or past half its lifetime (the spec: notaries "should cache
a response for half of its lifetime").  When the origin cannot be reached we still
serve the last response we had, so that old signatures stay checkable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from homeserver.core.clock import Clock
from homeserver.events.signing import SigningKey, decode_verify_key_base64, get_verify_key, key_id, sign_json
from homeserver.federation.server_keys import (
    FOREVER_TS,
    MAX_KEY_VALIDITY_MS,
    FetchedKey,
    OldVerifyKey,
    build_server_keys,
)
from homeserver.storage.server_keys import StoredKeyResponse

logger = logging.getLogger(__name__)

# A query may name this many servers; more is not a homeserver checking signatures.
MAX_SERVERS_PER_QUERY = 100


def old_verify_keys_from_config(old_signing_keys: Mapping[str, Mapping[str, Any]]) -> dict[str, OldVerifyKey]:
    """``old_signing_keys`` ({key_id: {key, expired_ts}}, validated by the config) as keys."""
    return {
        kid: OldVerifyKey(
            decode_verify_key_base64("ed25519", kid.split(":", 1)[1], str(entry["key"])), int(entry["expired_ts"])
        )
        for kid, entry in old_signing_keys.items()
    }


class LocalKeys:
    """Our signing keys: the first signs requests and events; all are published."""

    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        signing_keys: Sequence[SigningKey],
        old_verify_keys: Mapping[str, OldVerifyKey],
        key_refresh_interval_ms: int,
    ) -> None:
        if not signing_keys:
            raise ValueError("at least one signing key is needed")
        self.server_name = server_name
        self._clock = clock
        self.signing_keys = list(signing_keys)
        self._old = dict(old_verify_keys)
        # Other servers may trust a response for at most 7 days anyway; promise no more.
        self._lifetime_ms = max(1, min(key_refresh_interval_ms, MAX_KEY_VALIDITY_MS))
        self._response: dict[str, Any] | None = None
        self._valid_until_ts = 0

    @property
    def signing_key(self) -> SigningKey:
        return self.signing_keys[0]

    def verify_keys(self) -> dict[str, FetchedKey]:
        """Our keys as the keyring sees them: current ones forever, old ones until expiry."""
        keys = {
            kid: FetchedKey(self.server_name, kid, old.verify_key, old.expired_ts, 0, self.server_name)
            for kid, old in self._old.items()
        }
        for signing_key in self.signing_keys:
            kid = key_id(signing_key)
            keys[kid] = FetchedKey(self.server_name, kid, get_verify_key(signing_key), FOREVER_TS, 0, self.server_name)
        return keys

    def server_keys(self) -> dict[str, Any]:
        """The signed ``/_matrix/key/v2/server`` response, re-issued when half its life is gone."""
        now = self._clock.time_msec()
        if self._response is None or now + self._lifetime_ms // 2 > self._valid_until_ts:
            self._valid_until_ts = now + self._lifetime_ms
            self._response = build_server_keys(self.server_name, self.signing_keys, self._old, self._valid_until_ts)
        return self._response

    def countersign(self, key_response: Mapping[str, Any]) -> dict[str, Any]:
        """``key_response`` with our (notary) signature added by every current key."""
        signed = dict(key_response)
        for signing_key in self.signing_keys:
            signed = sign_json(signed, self.server_name, signing_key)
        return signed


@dataclass(frozen=True, slots=True)
class KeyQuery:
    """What a notary query asks about one server: some key IDs (each with an optional
    ``minimum_valid_until_ts``), or every key (empty ``key_ids``) valid until
    ``minimum_valid_until_ts``.  An absent timestamp means "now", as the spec says."""

    key_ids: Mapping[str, int | None] = field(default_factory=dict)
    minimum_valid_until_ts: int | None = None


class ResponseStore(Protocol):
    async def get_responses(self, server_name: str) -> list[StoredKeyResponse]: ...


class OriginFetcher(Protocol):
    async def refresh_from_origin(self, server_name: str) -> None: ...


class KeyNotary:
    def __init__(
        self,
        *,
        local: LocalKeys,
        clock: Clock,
        store: ResponseStore,
        fetcher: OriginFetcher,
        is_allowed: Callable[[str], bool],
    ) -> None:
        self._local = local
        self._clock = clock
        self._store = store
        self._fetcher = fetcher
        self._is_allowed = is_allowed

    async def query(self, criteria: Mapping[str, KeyQuery]) -> list[dict[str, Any]]:
        """Key responses for the servers in ``criteria``, co-signed by us.

        Servers we know nothing about and cannot reach are left out of the answer.
        """
        results: list[dict[str, Any]] = []
        for server_name, key_query in criteria.items():
            if server_name == self._local.server_name:
                results.append(self._local.server_keys())
                continue
            responses = await self._store.get_responses(server_name)
            if self._needs_refresh(responses, key_query) and self._is_allowed(server_name):
                # Throttled and deduplicated by the keyring; failures leave the old copy.
                await self._fetcher.refresh_from_origin(server_name)
                responses = await self._store.get_responses(server_name)
            results.extend(self._local.countersign(r.key_json) for r in responses)
        return results

    def _needs_refresh(self, responses: list[StoredKeyResponse], key_query: KeyQuery) -> bool:
        if not responses:
            return True
        now = self._clock.time_msec()
        newest = max(responses, key=lambda r: r.fetched_ts)
        if (newest.fetched_ts + newest.valid_until_ts) // 2 < now:
            return True
        if not key_query.key_ids:
            wanted = now if key_query.minimum_valid_until_ts is None else key_query.minimum_valid_until_ts
            return max(r.valid_until_ts for r in responses) < wanted
        for kid, minimum in key_query.key_ids.items():
            wanted_until = now if minimum is None else minimum
            if not any(
                kid in r.key_json.get("verify_keys", {}) and r.valid_until_ts >= wanted_until for r in responses
            ):
                return True
        return False
