"""Configuration files: load_config, the sample file and generate_config."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path

import pytest
from signedjson.key import read_signing_keys

from homeserver.config import (
    ConfigError,
    HomeserverConfig,
    RegistrationConfig,
    generate_config,
    load_config,
    parse_config,
    parse_postgres_url,
)
from homeserver.config.ratelimiting import NOT_ENFORCED

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "config" / "homeserver.sample.yaml"


# -- load_config -----------------------------------------------------------------------


def test_load_resolves_paths_against_the_file(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "homeserver.yaml"
    path.write_text(
        "server_name: example.com\nlisteners: []\ndatabase:\n  name: sqlite3\n  args: {database: db/hs.db}\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        config, warnings = load_config("../etc/homeserver.yaml")
    finally:
        os.chdir(cwd)
    assert warnings == []
    assert config.config_dir == str(conf_dir)
    assert config.database.sqlite_path == str(conf_dir / "db" / "hs.db")
    assert config.signing_key_path == str(conf_dir / "example.com.signing.key")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert info.value.errors == [f"{tmp_path / 'nope.yaml'}: configuration file not found"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: example.com\nlisteners:\n  - port: 8008\n   type: http\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    (message,) = info.value.errors
    assert message.startswith(f"{path}: invalid YAML at line 4, column ")


def test_tab_indentation_error_has_line_number(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: example.com\nlisteners:\n\t- port: 8008\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3, column 1"):
        load_config(str(path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="the configuration is empty"):
        load_config(str(path))


def test_duplicate_keys_warn(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: a.example\nlisteners: []\nserver_name: b.example\n")
    config, warnings = load_config(str(path))
    assert config.server_name == "b.example"
    assert warnings == [f'{path}: line 3: key "server_name" is given twice (first on line 1); the last one wins']


def test_errors_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: example.com\nlisteners:\n  - port: abc\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == ['listeners[0].port: expected an integer 1-65535, got "abc"']


# -- the sample file -------------------------------------------------------------------


def _uncomment_settings(text: str) -> str:
    """Uncomment every "#key: value" setting (and its "#  indented" continuation lines).

    Prose is "# text"; a setting is "#" directly followed by YAML; a continuation is "#"
    followed by two or more spaces, right after a setting or another continuation.
    """
    out: list[str] = []
    in_setting = False
    for line in text.splitlines():
        if re.match(r"^#[^\s#]", line):
            out.append(line[1:])
            in_setting = True
        elif in_setting and line.startswith("#  "):
            out.append(line[1:])
        else:
            out.append(line)
            in_setting = False
    return "\n".join(out) + "\n"


def test_sample_file_parses_without_warnings(tmp_path: Path) -> None:
    config, warnings = load_config(str(SAMPLE))
    assert warnings == []
    assert config.server_name == "example.com"


def test_sample_documents_the_real_defaults(tmp_path: Path) -> None:
    """Uncommenting every documented default must not change the configuration."""
    sample = SAMPLE.read_text()
    uncommented = _uncomment_settings(sample)
    assert uncommented.count("\n#") < sample.count("\n#")
    (tmp_path / "sample.yaml").write_text(sample)
    (tmp_path / "uncommented.yaml").write_text(uncommented)
    as_shipped, _ = load_config(str(tmp_path / "sample.yaml"))
    with_defaults, warnings = load_config(str(tmp_path / "uncommented.yaml"))
    # The only warnings: the rate limits documented as read but not enforced yet (the
    # sample's rc_admin_redaction is null, which means absent).
    assert warnings == [
        f"{key}: read, but this server does not enforce this limit yet"
        for key in NOT_ENFORCED
        if key != "rc_admin_redaction"
    ]
    assert with_defaults == as_shipped


def test_sample_documents_every_key() -> None:
    sample = SAMPLE.read_text()
    documented = set(re.findall(r"^#?([a-z_0-9]+):", sample, flags=re.MULTILINE))
    keys = {f.name for f in dataclasses.fields(HomeserverConfig)} - {"config_dir", "registration"}
    keys |= {f.name for f in dataclasses.fields(RegistrationConfig)}
    # Fields whose YAML key is a section of its own.
    keys = {"presence" if k == "presence_enabled" else k for k in keys}
    assert keys - documented == set()


# -- generate_config -------------------------------------------------------------------


def test_generated_config_loads_without_warnings(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = generate_config(server_name="example.com", data_dir=str(data_dir))
    assert path == str(data_dir / "homeserver.yaml")
    config, warnings = load_config(path)
    assert warnings == []
    assert config.server_name == "example.com"
    (listener,) = config.listeners
    assert (listener.port, listener.bind_addresses) == (8008, ("127.0.0.1",))
    assert listener.serves("client") and listener.serves("federation") and listener.serves("keys")
    assert config.database.engine == "sqlite"
    assert config.database.sqlite_path == str(data_dir / "homeserver.db")
    assert config.media_store_path == str(data_dir / "media_store")
    assert config.federation_domain_whitelist == ()
    assert not config.federation_allows("other.example")
    assert not config.registration.enable_registration
    secret = config.registration.registration_shared_secret
    assert secret is not None and len(secret) >= 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    key_path = config.signing_key_path
    assert key_path == str(data_dir / "example.com.signing.key")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    with open(key_path) as f:
        (key,) = read_signing_keys(f)
    assert key.alg == "ed25519"
    assert re.fullmatch(r"a_[A-Za-z0-9]{4}", key.version)


def test_generate_with_federation_port_postgres_and_registration(tmp_path: Path) -> None:
    path = generate_config(
        server_name="127.0.0.1:8448",
        data_dir=str(tmp_path),
        client_port=8080,
        federation_port=8448,
        database_url="postgresql://hs%40user:p%3Ass@db.internal:5433/homeserver?sslmode=require",
        enable_registration=True,
        bind_address="::",
    )
    config, warnings = load_config(path)
    assert warnings == []
    client, federation = config.listeners
    assert client.port == 8080 and client.serves("client") and not client.serves("federation")
    assert federation.port == 8448 and federation.serves("federation") and federation.serves("keys")
    assert federation.bind_addresses == ("::",)
    assert config.database.engine == "postgres"
    assert config.database.postgres_connect_kwargs == {
        "user": "hs@user",
        "password": "p:ss",
        "dbname": "homeserver",
        "host": "db.internal",
        "port": 5433,
        "sslmode": "require",
    }
    assert config.registration.enable_registration
    assert config.registration.enable_registration_without_verification
    assert os.path.exists(tmp_path / "127.0.0.1:8448.signing.key")


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = generate_config(server_name="example.com", data_dir=str(tmp_path))
    before = Path(path).read_text()
    key_before = (tmp_path / "example.com.signing.key").read_text()
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite it"):
        generate_config(server_name="example.com", data_dir=str(tmp_path))
    assert Path(path).read_text() == before
    assert (tmp_path / "example.com.signing.key").read_text() == key_before


def test_generate_keeps_an_existing_signing_key(tmp_path: Path) -> None:
    key_file = tmp_path / "example.com.signing.key"
    key_file.write_text("ed25519 a_keep l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ\n")
    generate_config(server_name="example.com", data_dir=str(tmp_path))
    assert key_file.read_text().startswith("ed25519 a_keep ")


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        generate_config(
            server_name="bad name",
            data_dir=str(tmp_path),
            client_port=0,
            bind_address="localhost",
            database_url="mysql://x/y",
        )
    assert info.value.errors == [
        "server name: expected a server name such as example.com, got 'bad name'",
        "client port: expected an integer 1-65535, got 0",
        "bind address: expected an IP address such as 127.0.0.1 or ::, got 'localhost'",
        'database URL: expected the scheme "postgresql://" (like postgresql://user:password@host:5432/dbname), '
        "got 'mysql://x/y'",
    ]
    assert not (tmp_path / "homeserver.yaml").exists()


def test_generated_secrets_differ(tmp_path: Path) -> None:
    a, _ = load_config(generate_config(server_name="example.com", data_dir=str(tmp_path / "a")))
    b, _ = load_config(generate_config(server_name="example.com", data_dir=str(tmp_path / "b")))
    assert a.registration.registration_shared_secret != b.registration.registration_shared_secret


# -- postgres URLs ---------------------------------------------------------------------


def test_parse_postgres_url() -> None:
    assert parse_postgres_url("postgresql://alice:pw@localhost:5432/hs") == {
        "user": "alice",
        "password": "pw",
        "dbname": "hs",
        "host": "localhost",
        "port": 5432,
    }
    assert parse_postgres_url("postgres:///hs") == {"dbname": "hs"}
    assert parse_postgres_url("postgresql://bob@[::1]/hs") == {"user": "bob", "dbname": "hs", "host": "::1"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///hs.db", 'expected the scheme "postgresql://"'),
        ("postgresql://localhost", "expected a database name after the host"),
        ("postgresql://localhost/", "expected a database name after the host"),
        ("postgresql://localhost:notaport/hs", "database URL: Port could not be cast to integer value"),
        ("postgresql://localhost:99999/hs", "database URL: Port out of range"),
        ("postgresql://localhost/hs#frag", "a #fragment is not allowed"),
        ("localhost/hs", 'expected the scheme "postgresql://"'),
    ],
)
def test_bad_postgres_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_postgres_url(url)


def test_parsed_postgres_url_round_trips_through_config(tmp_path: Path) -> None:
    args = parse_postgres_url("postgresql://u:p@h:1234/d")
    config, _ = parse_config(
        {"server_name": "example.com", "listeners": [], "database": {"name": "psycopg2", "args": args}},
        config_dir=str(tmp_path),
    )
    assert config.database.postgres_connect_kwargs == args
