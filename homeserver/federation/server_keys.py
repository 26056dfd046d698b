"""Server signing keys as published at ``/_matrix/key/v2/server``: building and checking.

Pure functions over plain JSON, no I/O.  :func:`build_server_keys` writes our own
response; :func:`parse_server_keys` checks a response received from a server (directly
or through a notary) and turns it into :class:`FetchedKey` values.

Validity: a current key (``verify_keys``) is valid until the response's
``valid_until_ts``, but never more than 7 days after we fetched it (the spec's cap, so
a stolen key cannot be announced as valid for years); an old key
(``old_verify_keys``) only until its ``expired_ts``.  Room versions 1-4 ignore validity:
their callers ask for keys valid until 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.events.signing import (
    SignatureError,
    SigningKey,
    VerifyKey,
    decode_verify_key_base64,
    encode_verify_key_base64,
    get_verify_key,
    key_id,
    sign_json,
    verify_json,
)

SERVER_KEYS_PATH = "/_matrix/key/v2/server"
KEY_QUERY_PATH = "/_matrix/key/v2/query"
# The spec: "Servers MUST use the lesser of this field and 7 days into the future".
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
# For keys that never expire (ours, pinned ones): far future, still a valid BIGINT.
FOREVER_TS = 2**62

_KEY_ID_RE = re.compile(r"^ed25519:[A-Za-z0-9_]+$")


class KeyResponseError(ValueError):
    """A key response that is malformed, for the wrong server, or not properly signed."""


@dataclass(frozen=True, slots=True)
class FetchedKey:
    """One verify key of a server and how long it may be used to check signatures.

    ``valid_until_ts`` is already capped (7 days after fetching) or, for an old key, its
    ``expired_ts``.  ``source`` is the server we learnt it from: the server itself, a
    notary, or "config" for pinned keys.
    """

    server_name: str
    key_id: str
    verify_key: VerifyKey
    valid_until_ts: int
    fetched_ts: int = 0
    source: str = ""

    @property
    def key_base64(self) -> str:
        return encode_verify_key_base64(self.verify_key)


@dataclass(frozen=True, slots=True)
class ServerKeysResponse:
    """A checked key response: its keys, its published validity and the JSON as received."""

    server_name: str
    valid_until_ts: int
    keys: dict[str, FetchedKey]
    json: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class OldVerifyKey:
    """A key we no longer sign with, still published so that old events verify."""

    verify_key: VerifyKey
    expired_ts: int


def build_server_keys(
    server_name: str,
    signing_keys: Iterable[SigningKey],
    old_verify_keys: Mapping[str, OldVerifyKey],
    valid_until_ts: int,
) -> dict[str, Any]:
    """Our ``/_matrix/key/v2/server`` response, signed by every current key."""
    keys = list(signing_keys)
    body: dict[str, Any] = {
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "verify_keys": {key_id(k): {"key": encode_verify_key_base64(get_verify_key(k))} for k in keys},
        "old_verify_keys": {
            kid: {"key": encode_verify_key_base64(old.verify_key), "expired_ts": old.expired_ts}
            for kid, old in old_verify_keys.items()
        },
    }
    for signing_key in keys:
        body = sign_json(body, server_name, signing_key)
    return body


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _decode_key(kid: str, entry: Any, where: str) -> VerifyKey:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("key"), str):
        raise KeyResponseError(f"{where}.{kid}: expected an object with a base64 'key'")
    try:
        key = decode_verify_key_base64("ed25519", kid.split(":", 1)[1], entry["key"])
    except ValueError as e:
        raise KeyResponseError(f"{where}.{kid}: {e}") from None
    if len(bytes(key)) != 32:
        raise KeyResponseError(f"{where}.{kid}: not a 32-byte ed25519 key")
    return key


def parse_server_keys(response: Any, *, expected_server_name: str, fetched_ts: int, source: str) -> ServerKeysResponse:
    """Check a Server Keys object and return its keys.

    The object must name ``expected_server_name``, have a ``valid_until_ts`` and at
    least one ed25519 ``verify_keys`` entry, and be signed by the server with one of
    those keys (every such signature must verify).  Keys of other algorithms are
    skipped.  Raises :class:`KeyResponseError`.
    """
    if not isinstance(response, dict):
        raise KeyResponseError("key response is not a JSON object")
    server_name = response.get("server_name")
    if server_name != expected_server_name:
        raise KeyResponseError(f"key response is for {server_name!r}, expected {expected_server_name!r}")
    valid_until_ts = _int(response.get("valid_until_ts"))
    if valid_until_ts is None:
        raise KeyResponseError("key response has no integer valid_until_ts")
    verify_keys = response.get("verify_keys")
    if not isinstance(verify_keys, Mapping):
        raise KeyResponseError("key response has no verify_keys object")
    current_until = min(valid_until_ts, fetched_ts + MAX_KEY_VALIDITY_MS)
    keys: dict[str, FetchedKey] = {}
    for kid, entry in verify_keys.items():
        if isinstance(kid, str) and _KEY_ID_RE.match(kid):
            keys[kid] = FetchedKey(
                server_name, kid, _decode_key(kid, entry, "verify_keys"), current_until, fetched_ts, source
            )
    if not keys:
        raise KeyResponseError("key response has no ed25519 verify key")

    signed_with = [kid for kid in signature_key_ids(response, server_name) if kid in keys]
    if not signed_with:
        raise KeyResponseError(f"key response is not signed by {server_name} with any of its verify_keys")
    for kid in signed_with:
        try:
            verify_json(response, server_name, keys[kid].verify_key)
        except SignatureError as e:
            raise KeyResponseError(str(e)) from None

    old_keys = response.get("old_verify_keys", {})
    if not isinstance(old_keys, Mapping):
        raise KeyResponseError("old_verify_keys is not an object")
    for kid, entry in old_keys.items():
        if not (isinstance(kid, str) and _KEY_ID_RE.match(kid)) or kid in keys:
            continue
        expired_ts = _int(entry.get("expired_ts")) if isinstance(entry, Mapping) else None
        if expired_ts is None:
            raise KeyResponseError(f"old_verify_keys.{kid}: expected an integer expired_ts")
        keys[kid] = FetchedKey(
            server_name,
            kid,
            _decode_key(kid, entry, "old_verify_keys"),
            min(expired_ts, fetched_ts + MAX_KEY_VALIDITY_MS),
            fetched_ts,
            source,
        )
    return ServerKeysResponse(server_name=server_name, valid_until_ts=valid_until_ts, keys=keys, json=response)


def signature_key_ids(obj: Mapping[str, Any], server_name: str) -> list[str]:
    """The key IDs under which ``server_name`` signed ``obj`` (any algorithm)."""
    signatures = obj.get("signatures")
    if not isinstance(signatures, Mapping):
        return []
    by_server = signatures.get(server_name)
    return [str(k) for k in by_server] if isinstance(by_server, Mapping) else []


def check_notary_signature(response: Mapping[str, Any], notary: str, notary_keys: Mapping[str, VerifyKey]) -> None:
    """Check that ``notary`` signed ``response`` with at least one of ``notary_keys``.

    Every signature by the notary under a key we know must verify.  Raises
    :class:`KeyResponseError`.
    """
    signed_with = [kid for kid in signature_key_ids(response, notary) if kid in notary_keys]
    if not signed_with:
        raise KeyResponseError(f"response not signed by notary {notary} with a configured key")
    for kid in signed_with:
        try:
            verify_json(response, notary, notary_keys[kid])
        except SignatureError as e:
            raise KeyResponseError(str(e)) from None
