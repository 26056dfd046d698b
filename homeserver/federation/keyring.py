"""The Keyring: other servers' verify keys, from configuration, cache, the server itself or a notary.

``get_keys(server_name, key_ids, minimum_valid_until_ts)`` looks, in order, at

1. our own keys (for our server name);
2. ``federation_pinned_keys``: for a pinned server this is the only source, nothing is
   ever fetched for it;
3. the cache (memory, then the ``server_keys`` table);
4. the server's own ``/_matrix/key/v2/server``, which must be signed by the key itself
   and name the right server;
5. the ``trusted_key_servers`` (``POST /_matrix/key/v2/query``), whose answers must be
   signed by the notary with one of its configured ``verify_keys`` (unless none are
   configured) and still carry the origin's own signature.

Steps 4 and 5 only run for servers the allowlist accepts, and only ask notaries the
allowlist accepts: a closed federation never talks to anyone else.  A server is asked
at most once per ``refetch_interval_ms`` (an origin sending requests signed with made-up
key IDs cannot make us hammer it or the notaries), and concurrent lookups for one
server share one fetch.

A key is usable for a signature when its ``valid_until_ts`` (capped at 7 days after
fetching, see :mod:`homeserver.federation.server_keys`) is at least the caller's
``minimum_valid_until_ts``: now for requests, the event's ``origin_server_ts`` for
events, 0 for room versions 1-4 which ignore validity.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

from twisted.internet import defer

from homeserver.config.keys import TrustedKeyServer
from homeserver.core.clock import Clock
from homeserver.events.signing import SignatureError, VerifyKey, decode_verify_key_base64, verify_json
from homeserver.federation.server_keys import (
    FOREVER_TS,
    KEY_QUERY_PATH,
    SERVER_KEYS_PATH,
    FetchedKey,
    KeyResponseError,
    ServerKeysResponse,
    check_notary_signature,
    parse_server_keys,
    signature_key_ids,
)

logger = logging.getLogger(__name__)

DEFAULT_REFETCH_INTERVAL_MS = 30_000
# The origin should answer its key request quickly; notaries may have to ask the origin.
DIRECT_FETCH_TIMEOUT = 10.0
NOTARY_FETCH_TIMEOUT = 30.0
_MEMORY_CACHE_SIZE = 4096
_MAX_THROTTLE_ENTRIES = 10_000


class KeyLookupError(Exception):
    """No key usable for the signature could be found."""


class KeyStore(Protocol):
    async def get_keys(self, server_name: str, key_ids: Collection[str]) -> dict[str, FetchedKey]: ...

    async def store_response(self, response: ServerKeysResponse, *, source: str, fetched_ts: int) -> None: ...


class KeyTransport(Protocol):
    """The part of the federation client the keyring needs (unauthenticated JSON is fine)."""

    async def get_json(self, destination: str, path: str, *, timeout: float | None = None) -> Any: ...

    async def post_json(self, destination: str, path: str, content: Any, *, timeout: float | None = None) -> Any: ...


def pinned_keys_from_config(pinned: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, FetchedKey]]:
    """``federation_pinned_keys`` as never-expiring keys (the config was validated)."""
    return {
        server: {
            kid: FetchedKey(
                server, kid, decode_verify_key_base64("ed25519", kid.split(":", 1)[1], b64), FOREVER_TS, 0, "config"
            )
            for kid, b64 in keys.items()
        }
        for server, keys in pinned.items()
    }


def _notary_keys(server: TrustedKeyServer) -> dict[str, VerifyKey] | None:
    if server.verify_keys is None:
        return None
    return {
        kid: decode_verify_key_base64("ed25519", kid.split(":", 1)[1], b64) for kid, b64 in server.verify_keys.items()
    }


class Keyring:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        store: KeyStore,
        transport: KeyTransport,
        local_keys: Callable[[], Mapping[str, FetchedKey]],
        is_allowed: Callable[[str], bool],
        pinned_keys: Mapping[str, Mapping[str, FetchedKey]] | None = None,
        trusted_key_servers: Iterable[TrustedKeyServer] = (),
        refetch_interval_ms: int = DEFAULT_REFETCH_INTERVAL_MS,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._transport = transport
        self._local_keys = local_keys
        self._is_allowed = is_allowed
        self._pinned = {name: dict(keys) for name, keys in (pinned_keys or {}).items()}
        self._notaries = [(n, _notary_keys(n)) for n in trusted_key_servers]
        self._refetch_interval_ms = refetch_interval_ms
        self._memory: dict[tuple[str, str], FetchedKey] = {}
        self._last_attempt: dict[tuple[str, str], int] = {}
        self._in_flight: dict[str, defer.Deferred[None]] = {}

    # -- looking keys up -------------------------------------------------------------------

    async def get_keys(
        self, server_name: str, key_ids: Collection[str], minimum_valid_until_ts: int
    ) -> dict[str, FetchedKey]:
        """The keys among ``key_ids`` valid until ``minimum_valid_until_ts``; missing ones left out."""
        wanted = set(key_ids)
        if server_name == self._server_name:
            return self._usable(self._local_keys(), wanted, minimum_valid_until_ts)
        if server_name in self._pinned:
            return self._usable(self._pinned[server_name], wanted, minimum_valid_until_ts)

        found = await self._cached(server_name, wanted, minimum_valid_until_ts)
        if wanted <= found.keys():
            return found
        if not self._is_allowed(server_name):
            logger.info("not fetching keys of %s: federation with it is not allowed", server_name)
            return found

        for _ in range(2):  # if we only waited for someone else's fetch, try once ourselves
            missing = wanted - found.keys()
            ran = await self._exclusive(
                server_name,
                lambda: self._fetch(server_name, missing, minimum_valid_until_ts),  # noqa: B023
            )
            found = await self._cached(server_name, wanted, minimum_valid_until_ts)
            if ran or wanted <= found.keys():
                break
        return found

    async def refresh_from_origin(self, server_name: str) -> None:
        """Ask ``server_name`` for its keys now (for the notary), unless asked recently.

        Failures are logged, not raised: the caller serves what is stored either way.
        """
        if server_name == self._server_name or server_name in self._pinned or not self._is_allowed(server_name):
            return

        async def refresh() -> None:
            if self._may_attempt(server_name, server_name):
                try:
                    await self.fetch_from_origin(server_name)
                except Exception as e:
                    logger.info("could not refresh the keys of %s: %s", server_name, e)

        await self._exclusive(server_name, refresh)

    async def _exclusive(self, server_name: str, fetch: Callable[[], Awaitable[None]]) -> bool:
        """Run ``fetch`` unless a fetch for ``server_name`` is running: then wait for that one.

        Returns whether ``fetch`` ran.
        """
        running = self._in_flight.get(server_name)
        if running is not None:
            waiter: defer.Deferred[None] = defer.Deferred()
            running.addBoth(lambda _: waiter.callback(None))
            await waiter
            return False
        done: defer.Deferred[None] = defer.Deferred()
        self._in_flight[server_name] = done
        try:
            await fetch()
        finally:
            del self._in_flight[server_name]
            done.callback(None)
        return True

    async def get_key(self, server_name: str, key_id: str, minimum_valid_until_ts: int) -> FetchedKey:
        """One key, or :class:`KeyLookupError`."""
        found = await self.get_keys(server_name, [key_id], minimum_valid_until_ts)
        if key_id not in found:
            raise KeyLookupError(
                f"no key {key_id} of {server_name} valid until {minimum_valid_until_ts} could be found"
            )
        return found[key_id]

    async def verify_json_for_server(
        self, server_name: str, json_object: Mapping[str, Any], minimum_valid_until_ts: int
    ) -> None:
        """Check ``server_name``'s signature on ``json_object``.

        At least one signature must be checkable with a usable key, and every one that
        is checkable must verify.  Raises :class:`KeyLookupError` when no usable key was
        found, :class:`SignatureError` when a signature is wrong.
        """
        key_ids = [k for k in signature_key_ids(json_object, server_name) if k.startswith("ed25519:")]
        if not key_ids:
            raise SignatureError(f"not signed by {server_name}")
        keys = await self.get_keys(server_name, key_ids, minimum_valid_until_ts)
        if not keys:
            raise KeyLookupError(
                f"no key of {server_name} among {', '.join(key_ids)} valid until {minimum_valid_until_ts}"
            )
        for key in keys.values():
            verify_json(json_object, server_name, key.verify_key)

    # -- cache ----------------------------------------------------------------------------

    @staticmethod
    def _usable(keys: Mapping[str, FetchedKey], wanted: set[str], minimum: int) -> dict[str, FetchedKey]:
        return {kid: keys[kid] for kid in wanted if kid in keys and keys[kid].valid_until_ts >= minimum}

    async def _cached(self, server_name: str, wanted: set[str], minimum: int) -> dict[str, FetchedKey]:
        found = {}
        for kid in wanted:
            key = self._memory.get((server_name, kid))
            if key is not None and key.valid_until_ts >= minimum:
                found[kid] = key
        missing = wanted - found.keys()
        if missing:
            stored = await self._store.get_keys(server_name, missing)
            for key in stored.values():
                self._remember(key)
            found.update(self._usable(stored, missing, minimum))
        return found

    def _remember(self, key: FetchedKey) -> None:
        slot = (key.server_name, key.key_id)
        existing = self._memory.pop(slot, None)
        if existing is not None and existing.valid_until_ts > key.valid_until_ts:
            key = existing
        self._memory[slot] = key
        while len(self._memory) > _MEMORY_CACHE_SIZE:
            del self._memory[next(iter(self._memory))]

    async def _save(self, response: ServerKeysResponse, source: str, fetched_ts: int) -> None:
        await self._store.store_response(response, source=source, fetched_ts=fetched_ts)
        for key in response.keys.values():
            self._remember(key)

    # -- fetching -------------------------------------------------------------------------

    def _may_attempt(self, server_name: str, via: str) -> bool:
        """True (and the attempt recorded) unless ``via`` was asked about ``server_name`` recently."""
        now = self._clock.time_msec()
        slot = (server_name, via)
        last = self._last_attempt.get(slot)
        if last is not None and now - last < self._refetch_interval_ms:
            logger.debug("not asking %s about %s's keys again so soon", via, server_name)
            return False
        if len(self._last_attempt) >= _MAX_THROTTLE_ENTRIES:
            cutoff = now - self._refetch_interval_ms
            self._last_attempt = {k: t for k, t in self._last_attempt.items() if t >= cutoff}
        self._last_attempt[slot] = now
        return True

    async def _fetch(self, server_name: str, missing: set[str], minimum: int) -> None:
        if self._may_attempt(server_name, server_name):
            try:
                response = await self.fetch_from_origin(server_name)
            except Exception as e:
                logger.warning("could not fetch keys from %s: %s", server_name, e)
            else:
                if self._satisfies(response, missing, minimum):
                    return
        for notary, notary_keys in self._notaries:
            if notary.server_name == self._server_name or not self._is_allowed(notary.server_name):
                continue
            if not self._may_attempt(server_name, notary.server_name):
                continue
            try:
                responses = await self._fetch_from_notary(
                    notary.server_name, notary_keys, server_name, missing, minimum
                )
            except Exception as e:
                logger.warning("could not fetch keys of %s from notary %s: %s", server_name, notary.server_name, e)
                continue
            if any(self._satisfies(r, missing, minimum) for r in responses):
                return

    @staticmethod
    def _satisfies(response: ServerKeysResponse, missing: set[str], minimum: int) -> bool:
        return all(kid in response.keys and response.keys[kid].valid_until_ts >= minimum for kid in missing)

    async def fetch_from_origin(self, server_name: str) -> ServerKeysResponse:
        """Fetch, check and store ``server_name``'s own key response (no throttling).

        Raises :class:`KeyResponseError` for a bad response and the transport's errors.
        """
        if not self._is_allowed(server_name):
            raise KeyLookupError(f"federation with {server_name} is not allowed")
        fetched_ts = self._clock.time_msec()
        body = await self._transport.get_json(server_name, SERVER_KEYS_PATH, timeout=DIRECT_FETCH_TIMEOUT)
        response = parse_server_keys(body, expected_server_name=server_name, fetched_ts=fetched_ts, source=server_name)
        await self._save(response, server_name, fetched_ts)
        return response

    async def _fetch_from_notary(
        self,
        notary: str,
        notary_keys: Mapping[str, VerifyKey] | None,
        server_name: str,
        missing: set[str],
        minimum: int,
    ) -> list[ServerKeysResponse]:
        fetched_ts = self._clock.time_msec()
        query = {"server_keys": {server_name: {kid: {"minimum_valid_until_ts": minimum} for kid in sorted(missing)}}}
        body = await self._transport.post_json(notary, KEY_QUERY_PATH, query, timeout=NOTARY_FETCH_TIMEOUT)
        entries = body.get("server_keys") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise KeyResponseError(f"notary {notary} sent no server_keys list")
        responses = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("server_name") != server_name:
                continue  # a notary may add other servers' keys: we did not ask, we do not take them
            try:
                if notary_keys is not None:
                    check_notary_signature(entry, notary, notary_keys)
                response = parse_server_keys(
                    entry, expected_server_name=server_name, fetched_ts=fetched_ts, source=notary
                )
            except KeyResponseError as e:
                logger.warning("bad key response for %s from notary %s: %s", server_name, notary, e)
                continue
            await self._save(response, notary, fetched_ts)
            responses.append(response)
        return responses
