"""The ``server_notices`` section: Synapse's keys, its defaults, errors naming the key."""

from __future__ import annotations

from pathlib import Path

from homeserver.config.server_notices import ServerNoticesConfig
from tests.unit.config.test_config_parse import errors_of, parse


def test_absent_means_off(tmp_path: Path) -> None:
    config, warnings = parse(tmp_path)
    assert config.server_notices is None and warnings == []
    config, _ = parse(tmp_path, server_notices=None)
    assert config.server_notices is None


def test_only_the_localpart_is_required_and_synapse_defaults_apply(tmp_path: Path) -> None:
    config, warnings = parse(tmp_path, server_notices={"system_mxid_localpart": "server"})
    assert warnings == []
    assert config.server_notices == ServerNoticesConfig(system_mxid_localpart="server", room_name="Server Notices")
    assert config.server_notices.system_user_id(config.server_name) == "@server:example.com"
    assert config.server_notices.auto_join is False


def test_every_synapse_key(tmp_path: Path) -> None:
    section = {
        "system_mxid_localpart": "notices",
        "system_mxid_display_name": "Avis du ministère",
        "system_mxid_avatar_url": "mxc://example.com/abc",
        "room_name": "Avis",
        "room_avatar_url": "mxc://example.com/def",
        "room_topic": "Informations de l'administrateur",
        "auto_join": True,
    }
    config, warnings = parse(tmp_path, server_notices=section)
    assert warnings == []
    assert config.server_notices == ServerNoticesConfig(**section)  # type: ignore[arg-type]


def test_errors_name_the_key(tmp_path: Path) -> None:
    """Tried: no localpart, an upper-case localpart, a non-mxc avatar, a string auto_join,
    a list for the section; an unknown key is a warning."""
    assert errors_of(tmp_path, server_notices={"room_name": "x"}) == [
        "server_notices.system_mxid_localpart: required key is missing; expected a user localpart such as server"
    ]
    (error,) = errors_of(tmp_path, server_notices={"system_mxid_localpart": "Server"})
    assert error.startswith("server_notices.system_mxid_localpart: expected a user localpart")
    (error,) = errors_of(
        tmp_path, server_notices={"system_mxid_localpart": "server", "room_avatar_url": "https://x/a.png"}
    )
    assert error == 'server_notices.room_avatar_url: expected an mxc:// URL, got "https://x/a.png"'
    (error,) = errors_of(tmp_path, server_notices={"system_mxid_localpart": "server", "auto_join": "yes please"})
    assert error.startswith("server_notices.auto_join:")
    (error,) = errors_of(tmp_path, server_notices=["server"])
    assert error == "server_notices: expected a mapping with at least system_mxid_localpart, got a list"
    _, warnings = parse(tmp_path, server_notices={"system_mxid_localpart": "server", "room_nmae": "x"})
    assert len(warnings) == 1 and warnings[0].startswith("server_notices.room_nmae: unknown key")
