"""Signing keys and the servers trusted to vouch for other servers' keys.

Synapse's keys: ``signing_key_path``, ``old_signing_keys``, ``key_refresh_interval``,
``trusted_key_servers`` and ``suppress_key_server_warning``.  One deliberate difference:
when ``trusted_key_servers`` is absent we trust no notary (Synapse defaults to
matrix.org), because a closed federation has no business asking a public server.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from unpaddedbase64 import decode_base64

from homeserver.config.reader import Reader
from homeserver.core.ids import is_valid_server_name

DEFAULT_KEY_REFRESH_INTERVAL = "1d"


@dataclass(frozen=True, slots=True)
class TrustedKeyServer:
    """A notary server: ``verify_keys`` maps key IDs to unpadded-base64 ed25519 keys."""

    server_name: str
    verify_keys: Mapping[str, str] | None = None
    accept_keys_insecurely: bool = False


@dataclass(frozen=True, slots=True)
class KeySettings:
    """The key-related top-level settings."""

    signing_key_path: str
    old_signing_keys: dict[str, dict[str, Any]]
    key_refresh_interval: int
    suppress_key_server_warning: bool
    trusted_key_servers: tuple[TrustedKeyServer, ...]


def _is_ed25519_key(value: str) -> bool:
    try:
        return len(decode_base64(value)) == 32
    except (binascii.Error, ValueError):
        return False


def _read_verify_keys(r: Reader, key: str) -> dict[str, str]:
    section = r.section(key)
    keys: dict[str, str] = {}
    for key_id in section.data:
        value = section.raw(key_id)
        if not str(key_id).startswith("ed25519:"):
            section.error(str(key_id), 'expected a key ID starting with "ed25519:"')
        elif not isinstance(value, str) or not _is_ed25519_key(value):
            section.expected(str(key_id), "an unpadded-base64 ed25519 public key", value)
        else:
            keys[str(key_id)] = value
    return keys


def _read_old_signing_keys(r: Reader) -> dict[str, dict[str, Any]]:
    section = r.section("old_signing_keys")
    result: dict[str, dict[str, Any]] = {}
    for key_id in list(section.data):
        if not str(key_id).startswith("ed25519:"):
            section.ignore(key_id)
            section.error(str(key_id), 'expected a key ID starting with "ed25519:"')
            continue
        entry = section.section(str(key_id))
        public_key = entry.required_string("key", expected="an unpadded-base64 ed25519 public key")
        if public_key and not _is_ed25519_key(public_key):
            entry.expected("key", "an unpadded-base64 ed25519 public key", public_key)
        if not entry.has("expired_ts"):
            entry.raw("expired_ts")
            entry.error(
                "expired_ts",
                "required key is missing; expected a timestamp in milliseconds",
            )
        expired_ts = entry.integer("expired_ts", 0, min=0)
        entry.finish()
        result[str(key_id)] = {"key": public_key, "expired_ts": expired_ts}
    return result


def _read_trusted_key_servers(r: Reader, *, verify_certificates: bool) -> tuple[TrustedKeyServer, ...]:
    servers: list[TrustedKeyServer] = []
    for entry in r.sections("trusted_key_servers"):
        name = entry.required_string("server_name", expected="a server name such as matrix.example.org")
        if name and not is_valid_server_name(name):
            entry.expected("server_name", "a server name such as matrix.example.org", name)
        verify_keys = _read_verify_keys(entry, "verify_keys") if entry.has("verify_keys") else None
        entry.ignore("verify_keys")
        insecure = entry.boolean("accept_keys_insecurely", False)
        if verify_keys is None and not insecure and not verify_certificates:
            entry.error(
                "verify_keys",
                "required when federation_verify_certificates is false "
                "(or set accept_keys_insecurely: true to trust this server's keys blindly)",
            )
        entry.finish()
        servers.append(
            TrustedKeyServer(
                server_name=name,
                verify_keys=None if verify_keys is None else MappingProxyType(verify_keys),
                accept_keys_insecurely=insecure,
            )
        )
    return tuple(servers)


def read_keys(r: Reader, *, server_name: str, verify_certificates: bool) -> KeySettings:
    """Read the signing-key settings; paths resolve against the configuration directory."""
    if r.has("signing_key"):
        r.raw("signing_key")
        r.error(
            "signing_key",
            "an inline signing key is not supported yet; use signing_key_path",
        )
    return KeySettings(
        signing_key_path=r.path_value("signing_key_path", f"{server_name or 'homeserver'}.signing.key"),
        old_signing_keys=_read_old_signing_keys(r),
        key_refresh_interval=r.duration("key_refresh_interval", DEFAULT_KEY_REFRESH_INTERVAL),
        suppress_key_server_warning=r.boolean("suppress_key_server_warning", False),
        trusted_key_servers=_read_trusted_key_servers(r, verify_certificates=verify_certificates),
    )
