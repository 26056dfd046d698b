"""Parsing configuration data: values, defaults, every error message, warnings."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from homeserver.config import (
    ConfigError,
    HomeserverConfig,
    ListenerConfig,
    ListenerResource,
    RateLimitConfig,
    parse_config,
)

LISTENER = {"port": 8008, "resources": [{"names": ["client"]}]}


def parse(tmp_path: Path, **data: Any) -> tuple[HomeserverConfig, list[str]]:
    """Parse ``data`` on top of a minimal valid configuration."""
    base: dict[str, Any] = {"server_name": "example.com", "listeners": [LISTENER]}
    base.update(data)
    return parse_config(base, config_dir=str(tmp_path))


def errors_of(tmp_path: Path, **data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, **data)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# -- good configurations ---------------------------------------------------------------


def test_minimal_config_uses_defaults(tmp_path: Path) -> None:
    config, warnings = parse(tmp_path)
    assert warnings == []
    assert config == HomeserverConfig(
        server_name="example.com",
        config_dir=str(tmp_path),
        listeners=(ListenerConfig(port=8008, resources=(ListenerResource(names=("client",)),)),),
    )
    assert config.database.engine == "sqlite"
    assert config.database.sqlite_path == str(tmp_path / "homeserver.db")
    assert config.signing_key_path == str(tmp_path / "example.com.signing.key")
    assert config.media_store_path == str(tmp_path / "media_store")
    assert config.default_room_version == "12"
    assert config.bcrypt_rounds == 12
    assert config.rc_login.failed_attempts == RateLimitConfig(0.17, 3)
    assert config.rc_message == RateLimitConfig(0.2, 10)
    assert config.max_request_size == 10 * 1024 * 1024
    assert config.max_upload_size == 50 * 1024 * 1024
    assert config.federation_domain_whitelist is None
    assert config.trusted_key_servers == ()
    assert "10.0.0.0/8" in config.ip_range_blacklist
    assert not config.federation_allows("other.example")


def test_default_room_version_is_one_we_implement(tmp_path: Path) -> None:
    from homeserver.events.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS

    config, _ = parse(tmp_path)
    assert config.default_room_version == DEFAULT_ROOM_VERSION.identifier
    assert config.default_room_version in KNOWN_ROOM_VERSIONS


def test_config_is_frozen(tmp_path: Path) -> None:
    config, _ = parse(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server_name = "other.example"  # type: ignore[misc]


SYNAPSE_STYLE = """
server_name: "gov.example"
pid_file: /var/run/matrix-synapse.pid
public_baseurl: https://matrix.gov.example
serve_server_wellknown: true
listeners:
  - port: 8008
    tls: false
    type: http
    x_forwarded: true
    bind_addresses: ['::1', '127.0.0.1']
    resources:
      - names: [client, federation]
        compress: false
  - port: 9000
    type: metrics
    bind_address: 127.0.0.1
database:
  name: psycopg2
  txn_limit: 10000
  args:
    user: synapse_user
    password: secretpassword
    database: synapse
    host: localhost
    port: 5432
    cp_min: 5
    cp_max: 10
    keepalives_idle: 10
log_config: "/etc/matrix-synapse/log.yaml"
media_store_path: /var/lib/matrix-synapse/media
signing_key_path: "/etc/matrix-synapse/homeserver.signing.key"
registration_shared_secret: "s3cret"
report_stats: false
macaroon_secret_key: "abc"
form_secret: "def"
trusted_key_servers:
  - server_name: "matrix.org"
suppress_key_server_warning: true
enable_registration: false
max_upload_size: 100M
url_preview_enabled: false
federation_domain_whitelist:
  - other.gov.example
  - "[::1]:8448"
rc_login:
  failed_attempts:
    per_second: 0.5
    burst_count: 5
encryption_enabled_by_default_for_room_type: invite
default_room_version: 10
password_config:
  policy:
    enabled: true
    minimum_length: 12
    require_digit: true
user_directory:
  search_all_users: true
email:
  smtp_host: mail.gov.example
  smtp_port: 587
  require_transport_security: true
  notif_from: "Your Friendly %(app)s homeserver <noreply@gov.example>"
  enable_notifs: true
"""


def test_synapse_style_homeserver_yaml(tmp_path: Path) -> None:
    import yaml

    config, warnings = parse_config(yaml.safe_load(SYNAPSE_STYLE), config_dir=str(tmp_path))
    assert sorted(warnings) == [
        "database.txn_limit: not supported yet, ignored",
        "email.enable_notifs: not supported yet, ignored",
        "form_secret: not supported yet, ignored",
        "macaroon_secret_key: not supported yet, ignored",
    ]
    assert config.server_name == "gov.example"
    assert config.public_baseurl == "https://matrix.gov.example/"
    assert config.pid_file == "/var/run/matrix-synapse.pid"
    client, metrics = config.listeners
    assert client.bind_addresses == ("::1", "127.0.0.1")
    assert client.x_forwarded and client.serves("client") and client.serves("keys")
    assert client.serves("health") and not client.serves("metrics")
    assert metrics.type == "metrics" and metrics.bind_addresses == ("127.0.0.1",)
    assert metrics.serves("metrics") and not metrics.serves("client")
    db = config.database
    assert db.engine == "postgres" and (db.cp_min, db.cp_max) == (5, 10)
    assert db.postgres_connect_kwargs == {
        "user": "synapse_user",
        "password": "secretpassword",
        "dbname": "synapse",
        "host": "localhost",
        "port": 5432,
        "keepalives_idle": 10,
    }
    assert config.registration.registration_shared_secret == "s3cret"
    assert config.trusted_key_servers[0].server_name == "matrix.org"
    assert config.max_upload_size == 100 * 1024 * 1024
    assert config.federation_domain_whitelist == ("other.gov.example", "[::1]:8448")
    assert config.federation_allows("other.gov.example")
    assert not config.federation_allows("evil.example")
    assert config.rc_login.failed_attempts == RateLimitConfig(0.5, 5)
    assert config.rc_login.address == RateLimitConfig(0.003, 5)  # siblings keep defaults
    assert config.encryption_enabled_by_default_for_room_type == "invite"
    assert config.default_room_version == "10"
    assert config.password_config.policy.minimum_length == 12
    assert config.password_config.policy.require_digit
    assert config.user_directory.search_all_users
    assert config.email is not None and config.email.smtp_port == 587
    assert config.log_config == "/etc/matrix-synapse/log.yaml"


def test_unquoted_off_means_off(tmp_path: Path) -> None:
    config, _ = parse(tmp_path, encryption_enabled_by_default_for_room_type=False)
    assert config.encryption_enabled_by_default_for_room_type == "off"


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("from-a-file\n")
    config, _ = parse(
        tmp_path,
        database={"name": "sqlite3", "args": {"database": "data/hs.db"}},
        signing_key_path="keys/hs.key",
        media_store_path="../media",
        log_config="log.yaml",
        pid_file="hs.pid",
        app_service_config_files=["as/irc.yaml"],
        registration_shared_secret_path="secret.txt",
    )
    assert config.database.sqlite_path == str(tmp_path / "data" / "hs.db")
    assert config.signing_key_path == str(tmp_path / "keys" / "hs.key")
    assert config.media_store_path == str(tmp_path.parent / "media")
    assert config.log_config == str(tmp_path / "log.yaml")
    assert config.pid_file == str(tmp_path / "hs.pid")
    assert config.app_service_config_files == (str(tmp_path / "as" / "irc.yaml"),)
    assert config.registration.registration_shared_secret == "from-a-file"
    assert config.registration.registration_shared_secret_path == str(tmp_path / "secret.txt")
    absolute, _ = parse(tmp_path, signing_key_path="/etc/hs.key")
    assert absolute.signing_key_path == "/etc/hs.key"


def test_sqlite_in_memory(tmp_path: Path) -> None:
    config, _ = parse(tmp_path, database={"name": "sqlite3", "args": {"database": ":memory:"}})
    assert config.database.sqlite_path == ":memory:"


def test_listener_defaults_and_serves(tmp_path: Path) -> None:
    config, _ = parse(
        tmp_path,
        listeners=[
            {"port": 8448, "resources": [{"names": ["federation"], "compress": True}]},
        ],
    )
    (listener,) = config.listeners
    assert listener.bind_addresses == ("::", "0.0.0.0")
    assert listener.type == "http" and not listener.tls
    assert listener.serves("federation") and listener.serves("keys") and listener.serves("media")
    assert not listener.serves("client")
    assert listener.compresses("federation")


def test_open_registration_with_confirmation(tmp_path: Path) -> None:
    config, _ = parse(tmp_path, enable_registration=True, enable_registration_without_verification=True)
    assert config.registration.enable_registration
    token, _ = parse(tmp_path, enable_registration=True, registration_requires_token=True)
    assert token.registration.registration_requires_token


def test_federation_allow_open(tmp_path: Path) -> None:
    closed, _ = parse(tmp_path, federation_domain_whitelist=[])
    assert closed.federation_domain_whitelist == ()
    assert not closed.federation_allows("anyone.example")
    open_, _ = parse(tmp_path, federation_domain_whitelist=[], federation_allow_open=True)
    assert open_.federation_allows("anyone.example")
    absent, _ = parse(tmp_path, federation_allow_open=True)
    assert absent.federation_allows("anyone.example")


def test_ip_ranges_can_be_emptied(tmp_path: Path) -> None:
    config, _ = parse(tmp_path, ip_range_blacklist=[], ip_range_whitelist=["192.168.1.1", "10.1.0.0/16"])
    assert config.ip_range_blacklist == ()
    assert config.ip_range_whitelist == ("192.168.1.1", "10.1.0.0/16")


def test_keys(tmp_path: Path) -> None:
    key = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ"
    config, _ = parse(
        tmp_path,
        old_signing_keys={"ed25519:old": {"key": key, "expired_ts": 1_600_000_000_000}},
        trusted_key_servers=[{"server_name": "keys.gov.example", "verify_keys": {"ed25519:auto": key}}],
        federation_verify_certificates=False,
    )
    assert config.old_signing_keys == {"ed25519:old": {"key": key, "expired_ts": 1_600_000_000_000}}
    (server,) = config.trusted_key_servers
    assert server.verify_keys == {"ed25519:auto": key}


def test_custom_ca_list(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config, _ = parse(tmp_path, federation_custom_ca_list=["ca.pem"])
    assert config.federation_custom_ca_list == (str(tmp_path / "ca.pem"),)


# -- warnings --------------------------------------------------------------------------


def test_unknown_and_unsupported_keys_warn(tmp_path: Path) -> None:
    _, warnings = parse(
        tmp_path,
        enable_registraton=True,
        frobnicate=1,
        templates={"custom_template_directory": "/etc/templates"},
        listeners=[{**LISTENER, "tag": "main", "colour": "blue", "path": "/run/hs.sock"}],
        rc_login={"adress": {"per_second": 1}},
    )
    assert warnings == [
        "listeners[0].tag: not supported yet, ignored",
        "listeners[0].colour: unknown key, ignored",
        "listeners[0].path: not supported yet, ignored",
        'rc_login.adress: unknown key, ignored (did you mean "address"?)',
        'enable_registraton: unknown key, ignored (did you mean "enable_registration"?)',
        "frobnicate: unknown key, ignored",
        "templates: not supported yet, ignored",
    ]


def test_rate_limits_not_enforced_yet_warn(tmp_path: Path) -> None:
    """A Synapse rc_* key we parse but do not apply says so, instead of loading silently."""
    config, warnings = parse(
        tmp_path,
        rc_third_party_invite={"per_second": 1, "burst_count": 2},
        rc_3pid_validation={"per_second": 1, "burst_count": 2},
        rc_message={"per_second": 1, "burst_count": 5},
        rc_joins={"local": {"per_second": 0.5, "burst_count": 3}},
        rc_presence={"per_user": {"per_second": 0.5, "burst_count": 3}},
    )
    assert warnings == [
        "rc_3pid_validation: read, but this server does not enforce this limit yet",
        "rc_third_party_invite: read, but this server does not enforce this limit yet",
    ]
    assert config.rc_3pid_validation.burst_count == 2  # still parsed as Synapse does
    assert parse(tmp_path)[1] == []


def test_non_string_key_warns(tmp_path: Path) -> None:
    _, warnings = parse(tmp_path, **{"x": 1})
    assert warnings == ["x: unknown key, ignored"]
    config, warnings = parse_config({"server_name": "example.com", "listeners": [], 1: 2}, config_dir=str(tmp_path))
    assert warnings == ["(top level): ignoring non-string key 1"]


def test_no_listeners_warns(tmp_path: Path) -> None:
    _, warnings = parse_config({"server_name": "example.com"}, config_dir=str(tmp_path))
    assert warnings == ["listeners: no listeners configured: the server will not accept any connection"]


def test_unknown_resource_warns(tmp_path: Path) -> None:
    config, warnings = parse(tmp_path, listeners=[{"port": 8008, "resources": [{"names": ["client", "webclient"]}]}])
    assert warnings == [
        'listeners[0].resources[0].names: unknown resource "webclient", ignored (known: client, consent, '
        "federation, health, keys, media, metrics, openid, replication, static)"
    ]
    assert config.listeners[0].resources[0].names == ("client",)


# -- errors ----------------------------------------------------------------------------


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping of keys to values, got a list"):
        parse_config([1, 2], config_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="the configuration is empty"):
        parse_config(None, config_dir=str(tmp_path))


def test_server_name_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": []}, config_dir=str(tmp_path))
    assert info.value.errors == [
        "server_name: required key is missing; expected a server name such as example.com or matrix.example.com:8448"
    ]
    assert errors_of(tmp_path, server_name="bad name!") == [
        'server_name: expected a server name such as example.com or matrix.example.com:8448, got "bad name!"'
    ]
    assert errors_of(tmp_path, server_name=42) == [
        "server_name: expected a server name such as example.com or matrix.example.com:8448, got 42"
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"listeners": [{"port": "abc"}]}, 'listeners[0].port: expected an integer 1-65535, got "abc"'),
        ({"listeners": [{"port": 0}]}, "listeners[0].port: expected an integer 1-65535, got 0"),
        ({"listeners": [{"port": True}]}, "listeners[0].port: expected an integer 1-65535, got true"),
        ({"listeners": [{"resources": []}]}, "listeners[0].port: required key is missing; expected an integer 1-65535"),
        (
            {"listeners": [{**LISTENER, "type": "ftp"}]},
            'listeners[0].type: expected one of "http", "metrics", got "ftp"',
        ),
        ({"listeners": [{**LISTENER, "type": "manhole"}]}, 'listeners[0].type: "manhole" listeners are not supported'),
        (
            {"listeners": [{**LISTENER, "bind_addresses": ["localhost"]}]},
            'listeners[0].bind_addresses[0]: expected an IP address such as 127.0.0.1 or ::, got "localhost"',
        ),
        (
            {"listeners": [{**LISTENER, "bind_addresses": "127.0.0.1"}]},
            'listeners[0].bind_addresses: expected a list of IP addresses, got "127.0.0.1"',
        ),
        ({"listeners": [{**LISTENER, "tls": "yes"}]}, 'listeners[0].tls: expected true or false, got "yes"'),
        (
            {"listeners": [{**LISTENER, "tls": True}]},
            "listeners[0].tls: a TLS listener needs both tls_certificate_path and tls_private_key_path to be set",
        ),
        (
            {"listeners": [{"port": 8008, "resources": [{"names": []}]}]},
            "listeners[0].resources[0].names: expected a non-empty list of resource names",
        ),
        (
            {"listeners": [{"port": 8008, "resources": ["client"]}]},
            'listeners[0].resources[0]: expected a mapping, got "client"',
        ),
        ({"listeners": {"port": 8008}}, "listeners: expected a list, got a mapping"),
        ({"listeners": [8008]}, "listeners[0]: expected a mapping, got 8008"),
        (
            {"listeners": [{"path": "/run/hs.sock"}]},
            "listeners[0].path: UNIX socket listeners are not supported yet; give a port instead",
        ),
        (
            {"listeners": [LISTENER, {**LISTENER, "bind_addresses": ["127.0.0.1"]}]},
            "listeners[1].port: port 8008 is already bound by listeners[0]",
        ),
        ({"database": {"name": "mysql"}}, 'database.name: expected one of "sqlite3", "psycopg2", got "mysql"'),
        ({"database": "sqlite"}, 'database: expected a mapping, got "sqlite"'),
        (
            {"database": {"name": "psycopg2", "args": {"port": "x"}}},
            'database.args.port: expected an integer 1-65535, got "x"',
        ),
        (
            {"database": {"name": "psycopg2", "args": {"password": 1234}}},
            "database.args.password: expected a string, got 1234",
        ),
        (
            {"database": {"name": "psycopg2", "args": {"cp_min": 20}}},
            "database.args.cp_min: must not exceed cp_max (10), got 20",
        ),
        (
            {"databases": {"main": {}}},
            "databases: several databases are not supported; use a single `database` section",
        ),
        (
            {"public_baseurl": "matrix.example.com"},
            'public_baseurl: expected an http(s) URL such as https://matrix.example.com/, got "matrix.example.com"',
        ),
        (
            {"public_baseurl": "https://x.example/?a=b"},
            "public_baseurl: must not have a ?query or #fragment, got 'https://x.example/?a=b'",
        ),
        (
            {"extra_well_known_client_content": {"m.homeserver": {}}},
            'extra_well_known_client_content: must not contain "m.homeserver"; set public_baseurl instead',
        ),
        ({"extra_well_known_client_content": []}, "extra_well_known_client_content: expected a mapping, got a list"),
        ({"log_level": "LOUD"}, 'log_level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got "LOUD"'),
        (
            {"app_service_config_files": "irc.yaml"},
            'app_service_config_files: expected a list of file paths, got "irc.yaml"',
        ),
        (
            {"key_refresh_interval": True},
            'key_refresh_interval: expected a duration such as "30s", "5m", "12h", "1d", "2w", "1y" or a number of milliseconds, got true',
        ),
        (
            {"signing_key": "ed25519 a_abcd xyz"},
            "signing_key: an inline signing key is not supported yet; use signing_key_path",
        ),
        ({"old_signing_keys": {"rsa:1": {}}}, 'old_signing_keys.rsa:1: expected a key ID starting with "ed25519:"'),
        (
            {"old_signing_keys": {"ed25519:1": {"key": "!!", "expired_ts": 1}}},
            'old_signing_keys.ed25519:1.key: expected an unpadded-base64 ed25519 public key, got "!!"',
        ),
        (
            {"old_signing_keys": {"ed25519:1": {"key": "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ"}}},
            "old_signing_keys.ed25519:1.expired_ts: required key is missing; expected a timestamp in milliseconds",
        ),
        (
            {"trusted_key_servers": [{}]},
            "trusted_key_servers[0].server_name: required key is missing; expected a server name such as matrix.example.org",
        ),
        (
            {"trusted_key_servers": [{"server_name": "k.example"}], "federation_verify_certificates": False},
            "trusted_key_servers[0].verify_keys: required when federation_verify_certificates is false "
            "(or set accept_keys_insecurely: true to trust this server's keys blindly)",
        ),
        (
            {"trusted_key_servers": [{"server_name": "k.example", "verify_keys": {"ed25519:a": "short"}}]},
            'trusted_key_servers[0].verify_keys.ed25519:a: expected an unpadded-base64 ed25519 public key, got "short"',
        ),
        ({"enable_registration": "yes"}, 'enable_registration: expected true or false, got "yes"'),
        (
            {"enable_registration": True},
            "enable_registration: open registration without any verification invites spam and abuse; require a "
            "registration token (registration_requires_token: true) or an email (registrations_require_3pid), or "
            "set enable_registration_without_verification: true if you really mean it",
        ),
        ({"disable_registration": True}, "disable_registration: no longer supported; use enable_registration: false"),
        (
            {"registrations_require_3pid": ["fax"]},
            'registrations_require_3pid[0]: expected "email" or "msisdn", got "fax"',
        ),
        (
            {"registration_shared_secret": "a", "registration_shared_secret_path": "b"},
            "registration_shared_secret_path: cannot be used together with registration_shared_secret; keep only one of them",
        ),
        (
            {"auto_join_rooms": ["welcome"]},
            'auto_join_rooms[0]: expected a room alias such as #welcome:example.com (or a room ID), got "welcome"',
        ),
        (
            {"auto_join_rooms": ["#a:example.com"], "autocreate_auto_join_room_preset": "private_chat"},
            "auto_join_mxid_localpart: required when autocreate_auto_join_room_preset is private_chat or "
            "trusted_private_chat (the user who sends the invitations)",
        ),
        (
            {"autocreate_auto_join_room_preset": "secret"},
            'autocreate_auto_join_room_preset: expected one of "public_chat", "private_chat", "trusted_private_chat", got "secret"',
        ),
        ({"bcrypt_rounds": 100}, "bcrypt_rounds: expected an integer 4-31, got 100"),
        (
            {"password_config": {"policy": {"minimum_length": -1}}},
            "password_config.policy.minimum_length: expected an integer >= 0, got -1",
        ),
        ({"password_config": {"pepper": 5}}, "password_config.pepper: expected a string, got 5"),
        (
            {"session_lifetime": "1h", "refresh_token_lifetime": "1d"},
            "refresh_token_lifetime: must not exceed session_lifetime (3600000 ms), got 86400000 ms",
        ),
        ({"rc_message": {"per_second": "fast"}}, 'rc_message.per_second: expected a number >= 0, got "fast"'),
        (
            {"rc_login": {"failed_attempts": {"burst_count": -3}}},
            "rc_login.failed_attempts.burst_count: expected a number >= 0, got -3",
        ),
        ({"rc_joins": {"local": 5}}, "rc_joins.local: expected a mapping, got 5"),
        ({"rc_federation": {"concurrent": 0}}, "rc_federation.concurrent: expected an integer >= 1, got 0"),
        (
            {"federation_domain_whitelist": ["good.example", "bad example"]},
            'federation_domain_whitelist[1]: expected a server name such as example.com, got "bad example"',
        ),
        (
            {"federation_domain_whitelist": "good.example"},
            'federation_domain_whitelist: expected a list of server names, got "good.example"',
        ),
        (
            {"federation_domain_whitelist": ["a.example"], "federation_allow_open": True},
            "federation_allow_open: cannot be true while federation_domain_whitelist lists servers; "
            "empty the list to federate openly, or drop federation_allow_open to keep the list",
        ),
        (
            {"ip_range_blacklist": ["10.0.0.0/33"]},
            'ip_range_blacklist[0]: expected an IP address or CIDR range such as 10.0.0.0/8, got "10.0.0.0/33"',
        ),
        (
            {"ip_range_whitelist": ["nope"]},
            'ip_range_whitelist[0]: expected an IP address or CIDR range such as 10.0.0.0/8, got "nope"',
        ),
        ({"max_request_size": 10}, "max_request_size: must be at least 1K, got 10 bytes"),
        (
            {"default_room_version": "99"},
            'default_room_version: expected one of "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", got "99"',
        ),
        (
            {"encryption_enabled_by_default_for_room_type": "some"},
            'encryption_enabled_by_default_for_room_type: expected one of "all", "invite", "off", got "some"',
        ),
        (
            {"limit_profile_requests_to_users_who_share_rooms": True},
            "limit_profile_requests_to_users_who_share_rooms: requires require_auth_for_profile_requests: true "
            "(the check needs to know who asks)",
        ),
        ({"user_directory": {"enabled": 1}}, "user_directory.enabled: expected true or false, got 1"),
        ({"email": {"smtp_port": 99999}}, "email.smtp_port: expected an integer 1-65535, got 99999"),
        ({"email": {"enable_tls": False, "force_tls": True}}, "email.force_tls: requires enable_tls to be true"),
        ({"email": {"notif_from": "nobody"}}, 'email.notif_from: expected a sender address containing @, got "nobody"'),
    ],
)
def test_error_messages(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    assert errors_of(tmp_path, **data) == [expected]


def test_missing_shared_secret_file(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, registration_shared_secret_path="nope.txt")
    assert error.startswith(f"registration_shared_secret_path: cannot read {tmp_path / 'nope.txt'}: ")


def test_missing_ca_file(tmp_path: Path) -> None:
    assert errors_of(tmp_path, federation_custom_ca_list=["ca.pem"]) == [
        f"federation_custom_ca_list[0]: no such file: {tmp_path / 'ca.pem'}"
    ]


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        server_name="",
        listeners=[{"port": "abc", "bind_addresses": ["nowhere"]}, {"port": 70000}],
        database={"name": "oracle"},
        bcrypt_rounds="many",
        rc_message={"per_second": None, "burst_count": "x"},
        max_upload_size="huge",
        email={"smtp_port": "smtp"},
    )
    assert errors == [
        'server_name: expected a server name such as example.com or matrix.example.com:8448, got ""',
        'listeners[0].port: expected an integer 1-65535, got "abc"',
        'listeners[0].bind_addresses[0]: expected an IP address such as 127.0.0.1 or ::, got "nowhere"',
        "listeners[1].port: expected an integer 1-65535, got 70000",
        'database.name: expected one of "sqlite3", "psycopg2", got "oracle"',
        'bcrypt_rounds: expected an integer 4-31, got "many"',
        'rc_message.burst_count: expected a number >= 0, got "x"',
        'max_upload_size: expected a size such as "512K", "10M", "1G" or a number of bytes, got "huge"',
        'email.smtp_port: expected an integer 1-65535, got "smtp"',
    ]
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, bcrypt_rounds="many", max_upload_size="huge")
    assert str(info.value).splitlines() == info.value.errors


def test_constructed_config_resolves_relative_paths(tmp_path: Path) -> None:
    config = HomeserverConfig(server_name="example.com", config_dir=str(tmp_path), media_store_path="m")
    assert config.media_store_path == os.path.join(tmp_path, "m")
    assert config.database.sqlite_path == os.path.join(tmp_path, "homeserver.db")
    assert config.signing_key_path == os.path.join(tmp_path, "example.com.signing.key")


def test_turn_keys(tmp_path: Path) -> None:
    (tmp_path / "turn.secret").write_text("s3cret\n")
    config, warnings = parse(
        tmp_path,
        turn_uris=["turn:turn.example.com?transport=udp"],
        turn_shared_secret_path="turn.secret",
        turn_user_lifetime="2h",
        turn_allow_guests=False,
    )
    assert warnings == []
    assert config.turn_uris == ("turn:turn.example.com?transport=udp",)
    assert config.turn_shared_secret == "s3cret"
    assert config.turn_user_lifetime == 7_200_000
    assert config.turn_allow_guests is False
    with pytest.raises(ConfigError, match="turn_shared_secret_path"):
        parse(tmp_path, turn_shared_secret="a", turn_shared_secret_path="turn.secret")
    with pytest.raises(ConfigError, match="turn_uris"):
        parse(tmp_path, turn_uris="turn:one")


def test_event_cache_size(tmp_path: Path) -> None:
    """Synapse's event_cache_size: "10K" is 10,240 entries; bad values tried: a word, 0."""
    assert parse(tmp_path)[0].event_cache_size == 20_000
    assert parse(tmp_path, event_cache_size="10K")[0].event_cache_size == 10_240
    assert parse(tmp_path, event_cache_size=5000)[0].event_cache_size == 5000
    for bad in ("lots", 0):
        assert any("event_cache_size" in e for e in errors_of(tmp_path, event_cache_size=bad))
