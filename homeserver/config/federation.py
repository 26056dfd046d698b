"""Federation: which servers we talk to, and how outbound connections are checked.

``federation_domain_whitelist`` is Synapse's allowlist.  We add an explicit opt-in,
``federation_allow_open``: federation with *any* server happens only when the allowlist
is absent or empty **and** ``federation_allow_open: true``.  So a forgotten allowlist
means "no federation", never "federate with everyone".

``ip_range_blacklist`` / ``ip_range_whitelist`` keep outbound requests away from private
networks, with Synapse's default list of unroutable ranges.

Two keys are ours, for closed federations (see homeserver.sample.yaml):
``federation_pinned_keys`` fixes peers' signing keys in configuration, so their keys are
never fetched over the network, and ``federation_static_routes`` sends traffic for a
server name to a fixed host and port instead of using .well-known and DNS SRV discovery.

``federation_whitelist_endpoint_enabled`` (Synapse's, default false) serves the allowlist
to signed-in users at ``/_synapse/client/v1/config/federation_whitelist``.
"""

from __future__ import annotations

import binascii
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from unpaddedbase64 import decode_base64

from homeserver.config.reader import Reader
from homeserver.core.ids import is_valid_server_name

# Synapse's default: private, loopback, link-local, multicast and documentation ranges.
DEFAULT_IP_RANGE_BLACKLIST: tuple[str, ...] = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
)

_CIDR_EXPECTED = "an IP address or CIDR range such as 10.0.0.0/8"


def is_ip_range(value: str) -> bool:
    """True for an IP address or a CIDR range (host bits may be set, as in Synapse)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class FederationSettings:
    """The federation top-level settings."""

    federation_domain_whitelist: tuple[str, ...] | None
    federation_allow_open: bool
    federation_verify_certificates: bool
    federation_custom_ca_list: tuple[str, ...]
    ip_range_blacklist: tuple[str, ...]
    ip_range_whitelist: tuple[str, ...]
    # server name -> key ID -> unpadded-base64 ed25519 public key
    federation_pinned_keys: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # server name -> "host:port" to connect to (no .well-known, no SRV)
    federation_static_routes: Mapping[str, str] = field(default_factory=dict)
    # serve Synapse's GET /_synapse/client/v1/config/federation_whitelist to signed-in users
    federation_whitelist_endpoint_enabled: bool = False


def _is_ed25519_key(value: str) -> bool:
    try:
        return len(decode_base64(value)) == 32
    except (binascii.Error, ValueError):
        return False


def _read_pinned_keys(r: Reader) -> dict[str, dict[str, str]]:
    section = r.section("federation_pinned_keys")
    pinned: dict[str, dict[str, str]] = {}
    for server_name in list(section.data):
        name = str(server_name)
        if not is_valid_server_name(name):
            section.ignore(server_name)
            section.error(name, "expected a server name such as example.com as the key")
            continue
        keys_section = section.section(name)
        keys: dict[str, str] = {}
        for key_id in list(keys_section.data):
            value = keys_section.raw(key_id)
            if not str(key_id).startswith("ed25519:") or len(str(key_id)) == len("ed25519:"):
                keys_section.error(str(key_id), 'expected a key ID such as "ed25519:abc123"')
            elif not isinstance(value, str) or not _is_ed25519_key(value):
                keys_section.expected(str(key_id), "an unpadded-base64 ed25519 public key", value)
            else:
                keys[str(key_id)] = value
        if not keys and not keys_section.data:
            section.error(name, "expected at least one pinned key (key ID: base64 key)")
        pinned[name] = keys
    return pinned


def _read_static_routes(r: Reader) -> dict[str, str]:
    section = r.section("federation_static_routes")
    routes: dict[str, str] = {}
    for server_name in list(section.data):
        name = str(server_name)
        target = section.raw(server_name)
        if not is_valid_server_name(name):
            section.error(name, "expected a server name such as example.com as the key")
        elif not isinstance(target, str) or not is_valid_server_name(target):
            section.expected(name, 'a "host:port" address such as 10.1.2.3:8448', target)
        else:
            routes[name] = target
    return routes


def read_federation(r: Reader) -> FederationSettings:
    """Read the federation settings from the top-level reader."""
    allowlist = r.optional_strings(
        "federation_domain_whitelist",
        item=is_valid_server_name,
        item_expected="a server name such as example.com",
        expected="a list of server names",
    )
    allow_open = r.boolean("federation_allow_open", False)
    if allow_open and allowlist:
        r.error(
            "federation_allow_open",
            "cannot be true while federation_domain_whitelist lists servers; "
            "empty the list to federate openly, or drop federation_allow_open to keep the list",
        )

    ca_list = tuple(r.resolve(path) for path in r.strings("federation_custom_ca_list", expected="a list of file paths"))
    for index, path in enumerate(ca_list):
        if not os.path.isfile(path):
            r.problems.errors.append(f"federation_custom_ca_list[{index}]: no such file: {path}")

    return FederationSettings(
        federation_domain_whitelist=allowlist,
        federation_allow_open=allow_open,
        federation_verify_certificates=r.boolean("federation_verify_certificates", True),
        federation_custom_ca_list=ca_list,
        ip_range_blacklist=r.strings(
            "ip_range_blacklist",
            DEFAULT_IP_RANGE_BLACKLIST,
            item=is_ip_range,
            item_expected=_CIDR_EXPECTED,
            expected="a list of CIDR ranges",
        ),
        ip_range_whitelist=r.strings(
            "ip_range_whitelist",
            item=is_ip_range,
            item_expected=_CIDR_EXPECTED,
            expected="a list of CIDR ranges",
        ),
        federation_pinned_keys=_read_pinned_keys(r),
        federation_static_routes=_read_static_routes(r),
        federation_whitelist_endpoint_enabled=r.boolean("federation_whitelist_endpoint_enabled", False),
    )
