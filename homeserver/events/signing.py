"""Signing JSON and events (spec: appendix "Signing JSON", server-server "Signing Events").

A thin layer over python-signedjson: the key objects are signedjson's (PyNaCl keys with
``alg`` and ``version`` attributes), so keys interoperate with anything built on it.
Events are signed over their *redacted* form, so a signature still verifies after the
event is redacted; the content hash (added first) protects the rest.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import signedjson.key
import signedjson.sign
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

from homeserver.core.json import encode_canonical_json
from homeserver.events.hashing import add_content_hash
from homeserver.events.redaction import redact_event_dict
from homeserver.events.room_versions import RoomVersion

__all__ = [
    "SignatureError",
    "SigningKey",
    "VerifyKey",
    "compute_event_signature",
    "decode_signing_key_base64",
    "decode_verify_key_base64",
    "encode_verify_key_base64",
    "generate_key_version",
    "generate_signing_key",
    "get_verify_key",
    "hash_and_sign_event",
    "key_id",
    "read_signing_keys",
    "sign_event",
    "sign_json",
    "verify_event_signature",
    "verify_json",
    "write_signing_keys",
]

ED25519 = "ed25519"


class SignatureError(ValueError):
    """A signature that is missing, malformed or does not verify."""


# --- keys -------------------------------------------------------------------------------


def generate_key_version() -> str:
    """A fresh key version in Synapse's style, "a_" + 4 random letters."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "a_" + "".join(secrets.choice(alphabet) for _ in range(4))


def generate_signing_key(version: str) -> SigningKey:
    """A new random ed25519 signing key with the given version (e.g. "a_AbCd")."""
    return signedjson.key.generate_signing_key(version)


def get_verify_key(signing_key: SigningKey) -> VerifyKey:
    """The public half of ``signing_key``, carrying the same ``alg`` and ``version``."""
    return signedjson.key.get_verify_key(signing_key)


def key_id(key: SigningKey | VerifyKey) -> str:
    """The key ID, "ed25519:<version>", under which signatures by ``key`` are filed."""
    return f"{key.alg}:{key.version}"


def decode_signing_key_base64(algorithm: str, version: str, key_base64: str) -> SigningKey:
    """A signing key from its unpadded base64 seed; raises ValueError if malformed."""
    try:
        return signedjson.key.decode_signing_key_base64(algorithm, version, key_base64)
    except ValueError:
        raise
    except Exception as e:  # binascii.Error, nacl errors: all "this is not a key"
        raise ValueError(f"invalid {algorithm} signing key: {e}") from e


def decode_verify_key_base64(algorithm: str, version: str, key_base64: str) -> VerifyKey:
    """A verify key from unpadded base64; raises ValueError if malformed."""
    try:
        return signedjson.key.decode_verify_key_base64(algorithm, version, key_base64)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"invalid {algorithm} verify key: {e}") from e


def encode_verify_key_base64(key: VerifyKey) -> str:
    """The unpadded base64 of the public key bytes (as served by /_matrix/key/v2)."""
    return encode_base64(bytes(key))


def read_signing_keys(text: str) -> list[SigningKey]:
    """Parse a signing key file: one "ed25519 <version> <base64 seed>" per line.

    This is Synapse's format, so its key files can be reused.  Blank lines are skipped;
    anything else malformed raises ValueError naming the line.
    """
    keys: list[SigningKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"signing key line {number}: expected 'algorithm version key'")
        algorithm, version, key_base64 = parts
        if algorithm != ED25519:
            raise ValueError(f"signing key line {number}: unsupported algorithm {algorithm!r}")
        try:
            keys.append(decode_signing_key_base64(algorithm, version, key_base64))
        except ValueError as e:
            raise ValueError(f"signing key line {number}: {e}") from e
    return keys


def write_signing_keys(keys: Iterable[SigningKey]) -> str:
    """Serialise keys in the format :func:`read_signing_keys` reads."""
    return "".join(f"{k.alg} {k.version} {encode_base64(k.encode())}\n" for k in keys)


# --- JSON ---------------------------------------------------------------------------------


def sign_json(json_object: Mapping[str, Any], server_name: str, signing_key: SigningKey) -> dict[str, Any]:
    """Return a copy of ``json_object`` with a signature by ``server_name`` added.

    Existing signatures (by this or other servers) are kept.
    """
    # signedjson mutates its argument; give it a copy whose `signatures` is also fresh.
    copy = dict(json_object)
    signatures = copy.get("signatures")
    copy["signatures"] = {name: dict(sigs) for name, sigs in (signatures or {}).items()}
    return signedjson.sign.sign_json(copy, server_name, signing_key)


def verify_json(json_object: Mapping[str, Any], server_name: str, verify_key: VerifyKey) -> None:
    """Check that ``server_name`` signed ``json_object`` with ``verify_key``.

    Raises :class:`SignatureError` if the signature is missing, undecodable or wrong.
    """
    signatures = json_object.get("signatures")
    if not isinstance(signatures, Mapping):
        raise SignatureError("no signatures")
    server_sigs = signatures.get(server_name)
    if not isinstance(server_sigs, Mapping):
        raise SignatureError(f"no signatures from {server_name}")
    signature_b64 = server_sigs.get(key_id(verify_key))
    if not isinstance(signature_b64, str):
        raise SignatureError(f"no signature from {server_name} with key {key_id(verify_key)}")
    try:
        signature = decode_base64(signature_b64)
    except Exception as e:
        raise SignatureError(f"undecodable signature from {server_name}") from e
    unsigned_copy = {k: v for k, v in json_object.items() if k not in ("signatures", "unsigned")}
    # Encoding is not strict: the object was valid where it was received, and old room
    # versions' events may contain values strict canonical JSON refuses.
    message = encode_canonical_json(unsigned_copy, strict=False)
    try:
        verify_key.verify(message, signature)
    except Exception as e:  # nacl.exceptions.BadSignatureError, ValueError for bad length
        raise SignatureError(f"invalid signature from {server_name} ({key_id(verify_key)})") from e


# --- events -------------------------------------------------------------------------------


def compute_event_signature(
    room_version: RoomVersion,
    event_dict: Mapping[str, Any],
    server_name: str,
    signing_key: SigningKey,
) -> str:
    """The base64 signature by ``signing_key`` over the redacted ``event_dict``."""
    redacted = redact_event_dict(room_version, event_dict)
    redacted.pop("signatures", None)
    signed = sign_json(redacted, server_name, signing_key)
    signature: str = signed["signatures"][server_name][key_id(signing_key)]
    return signature


def sign_event(
    room_version: RoomVersion,
    event_dict: dict[str, Any],
    server_name: str,
    signing_key: SigningKey,
) -> dict[str, Any]:
    """Add ``server_name``'s signature to ``event_dict`` (in place) and return it.

    The content hash must already be present (see :func:`hash_and_sign_event`): the
    signature covers it, and so the whole event.  Only call this on an event being
    built or countersigned, never on the dict behind an :class:`Event`.
    """
    signature = compute_event_signature(room_version, event_dict, server_name, signing_key)
    existing = event_dict.get("signatures")
    signatures = {n: dict(s) for n, s in existing.items()} if isinstance(existing, Mapping) else {}
    signatures.setdefault(server_name, {})[key_id(signing_key)] = signature
    event_dict["signatures"] = signatures
    return event_dict


def hash_and_sign_event(
    room_version: RoomVersion,
    event_dict: dict[str, Any],
    server_name: str,
    signing_key: SigningKey,
) -> dict[str, Any]:
    """Add the content hash, then the signature (in place), as an origin server does."""
    add_content_hash(event_dict)
    return sign_event(room_version, event_dict, server_name, signing_key)


def verify_event_signature(
    room_version: RoomVersion,
    event_dict: Mapping[str, Any],
    server_name: str,
    verify_key: VerifyKey,
) -> None:
    """Check ``server_name``'s signature on the redacted form of ``event_dict``.

    Raises :class:`SignatureError`.  Which servers must have signed (the sender's,
    the authorising server of a restricted join) and whether the key was valid at the
    event's ``origin_server_ts`` are the caller's decisions.
    """
    verify_json(redact_event_dict(room_version, event_dict), server_name, verify_key)
