"""Application service registration files: parsing, validation, conflicts, check-config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.appservice.registration import AppServices, RegistrationError, load_registrations
from homeserver.cli import main
from homeserver.core.errors import MatrixError


def registration(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "irc",
        "url": "http://127.0.0.1:9000",
        "as_token": "as-irc",
        "hs_token": "hs-irc",
        "sender_localpart": "ircbot",
        "namespaces": {
            "users": [{"exclusive": True, "regex": "@irc_.*:example\\.org"}],
            "aliases": [{"exclusive": True, "regex": "#irc_.*:example\\.org"}],
            "rooms": [],
        },
        "rate_limited": False,
        "protocols": ["irc"],
        "receive_ephemeral": True,
        "org.matrix.msc3202": True,
    }
    data.update(overrides)
    return data


def write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_good_registration_loads(tmp_path: Path) -> None:
    (svc,) = load_registrations([write(tmp_path, "irc.yaml", registration())], "example.org")
    assert (svc.id, svc.url, svc.sender) == ("irc", "http://127.0.0.1:9000", "@ircbot:example.org")
    assert svc.is_exclusive_user("@irc_bob:example.org") and not svc.is_interested_in_user("@bob:example.org")
    assert svc.is_exclusive_alias("#irc_chan:example.org")
    assert (svc.rate_limited, svc.receive_ephemeral, svc.msc3202, svc.protocols) == (False, True, True, ("irc",))
    assert "as-irc" not in repr(svc)
    # null url: a service that receives nothing (Synapse's meaning), the unstable ephemeral key
    (quiet,) = load_registrations(
        [
            write(
                tmp_path,
                "q.yaml",
                registration(url=None, receive_ephemeral=None, **{"de.sorunome.msc2409.push_ephemeral": True}),
            )
        ],
        "example.org",
    )
    assert quiet.url is None and quiet.receive_ephemeral


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"url": "ftp://x"}, "irc.yaml: url: expected an http(s) URL or null"),
        ({"as_token": 5}, "irc.yaml: as_token: required, a non-empty string"),
        ({"hs_token": "as-irc"}, "irc.yaml: hs_token: must differ from as_token"),
        ({"sender_localpart": "Bad Name"}, "irc.yaml: sender_localpart: 'Bad Name' is not a valid user localpart"),
        (
            {"namespaces": {"users": [{"exclusive": True, "regex": "@irc_(.*"}]}},
            "irc.yaml: namespaces.users[0].regex: invalid regular expression",
        ),
        (
            {"namespaces": {"users": [{"regex": "@irc_.*"}]}},
            "irc.yaml: namespaces.users[0].exclusive: required, true or false",
        ),
        ({"namespaces": {"groups": []}}, "irc.yaml: namespaces.groups: unknown namespace"),
        ({"namespaces": None}, "irc.yaml: namespaces: required"),
        ({"rate_limited": "no"}, "irc.yaml: rate_limited: expected true or false"),
        ({"protocols": "irc"}, "irc.yaml: protocols: expected a list"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    path = write(tmp_path, "irc.yaml", registration(**change))
    with pytest.raises(RegistrationError) as err:
        load_registrations([path], "example.org")
    assert any(
        line.startswith(str(tmp_path / expected.split(":")[0])) and expected.split(": ", 1)[1] in line
        for line in err.value.errors
    ), err.value.errors


def test_missing_url_key_and_unreadable_files(tmp_path: Path) -> None:
    data = registration()
    del data["url"]
    with pytest.raises(RegistrationError) as err:
        load_registrations(
            [
                write(tmp_path, "a.yaml", data),
                str(tmp_path / "missing.yaml"),
                write(tmp_path, "b.yaml", "just a string"),
            ],
            "example.org",
        )
    text = str(err.value)
    assert "a.yaml: url: required" in text
    assert "missing.yaml: cannot read the registration file" in text
    assert "b.yaml: expected a mapping at the top level" in text


def test_conflicts_between_services(tmp_path: Path) -> None:
    first = write(tmp_path, "irc.yaml", registration())
    overlapping = write(
        tmp_path,
        "irc2.yaml",
        registration(
            id="irc2",
            as_token="as-2",
            hs_token="hs-2",
            sender_localpart="irc2bot",
            namespaces={"users": [{"exclusive": True, "regex": "@irc_staff_.*:example\\.org"}]},
        ),
    )
    duplicate = write(
        tmp_path,
        "dup.yaml",
        registration(
            as_token="as-irc",
            hs_token="hs-3",
            sender_localpart="dupbot",
            namespaces={"users": [{"exclusive": False, "regex": "@irc_.*"}]},
        ),
    )
    with pytest.raises(RegistrationError) as err:
        load_registrations([first, overlapping, duplicate], "example.org")
    text = str(err.value)
    assert "irc2.yaml: namespaces.users: exclusive regex '@irc_staff_.*:example\\\\.org' overlaps" in text
    assert "dup.yaml: id: the same id is already used by" in text
    assert "dup.yaml: as_token: the same as_token is already used by" in text
    # non-exclusive namespaces may overlap; disjoint exclusive ones are fine
    fine = write(
        tmp_path,
        "xmpp.yaml",
        registration(
            id="xmpp",
            as_token="as-x",
            hs_token="hs-x",
            sender_localpart="xmppbot",
            namespaces={
                "users": [
                    {"exclusive": True, "regex": "@xmpp_.*:example\\.org"},
                    {"exclusive": False, "regex": "@irc_.*"},
                ]
            },
        ),
    )
    assert len(load_registrations([first, fine], "example.org")) == 2


def test_reservations() -> None:
    from homeserver.appservice.registration import parse_registration

    errors: list[str] = []
    svc = parse_registration(registration(), "irc.yaml", "example.org", errors)
    assert svc is not None and not errors
    services = AppServices([svc])
    with pytest.raises(MatrixError) as e:
        services.check_username("@irc_bob:example.org", None)
    assert e.value.errcode == "M_EXCLUSIVE"
    services.check_username("@irc_bob:example.org", svc)
    services.check_username("@bob:example.org", None)
    with pytest.raises(MatrixError):
        services.check_username("@bob:example.org", svc)
    with pytest.raises(MatrixError):
        services.check_alias("#irc_x:example.org", "@bob:example.org")
    services.check_alias("#irc_x:example.org", "@irc_bob:example.org")


def test_check_config_reports_registration_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from homeserver.config import generate_config

    config_path = generate_config(server_name="example.org", data_dir=str(tmp_path / "data"))
    a = write(tmp_path, "a.yaml", registration())
    b = write(tmp_path, "b.yaml", registration(id="b", as_token="t2", hs_token="t3", sender_localpart="bbot"))
    with open(config_path, "a", encoding="utf-8") as f:
        f.write(f"\napp_service_config_files: [{a}, {b}]\n")
    assert main(["check-config", "-c", str(config_path)]) == 1
    err = capsys.readouterr().err
    assert "app_service_config_files:" in err and "b.yaml: namespaces.users: exclusive regex" in err
