"""Bridge configuration: the samples in config/ parse and match their registrations; bad
values are reported with the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from appservices.common.config import ConfigError, load_yaml
from appservices.email.config import parse as parse_email
from appservices.webhook.config import parse as parse_webhook
from appservices.xmpp.config import parse as parse_xmpp

CONFIG = Path(__file__).resolve().parents[2] / "config"
PARSERS = {"webhook": parse_webhook, "email": parse_email, "xmpp": parse_xmpp}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_samples_parse_and_match_their_registration(name: str) -> None:
    config = PARSERS[name](load_yaml(CONFIG / f"{name}-bridge.yaml"))
    registration = config.registration() if hasattr(config, "registration") else config.bridge.registration()
    assert yaml.safe_load((CONFIG / f"{name}-bridge-registration.yaml").read_text()) == registration
    assert registration["namespaces"]["users"][0]["regex"] == rf"@{name}_.*:ministere\.example\.gouv\.fr"


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "homeserver": {"url": "http://127.0.0.1:8008", "domain": "example.org"},
        "appservice": {"as_token": "a", "hs_token": "h"},
        **extra,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"appservice": {"as_token": "a", "hs_token": "h"}}, "homeserver.domain: missing"),
        ({**minimal(), "homeserver": {"url": "ftp://x", "domain": "d"}}, "homeserver.url: must start with http"),
        ({**minimal(), "appservice": {"hs_token": "h"}}, "appservice.as_token: missing"),
        (
            {**minimal(), "appservice": {"as_token": "a", "hs_token": "h", "ghost_prefix": "A!"}},
            "appservice.ghost_prefix",
        ),
        (
            {**minimal(), "appservice": {"as_token": "a", "hs_token": "h", "listen": {"port": 0}}},
            "appservice.listen.port",
        ),
        ({**minimal(), "encryption": {"enabled": "yes"}}, "encryption.enabled: must be true or false"),
        (minimal(webhook={"hooks": [{"id": "bad id", "room_id": "!r:x", "secret": "s"}]}), "webhook.hooks[0].id"),
        (minimal(webhook={"hooks": [{"id": "ok", "room_id": "r", "secret": "s"}]}), "webhook.hooks[0].room_id"),
        (minimal(webhook={"hooks": [{"id": "ok", "room_id": "!r:x"}]}), "webhook.hooks[0].secret: missing"),
        (minimal(webhook={"max_body_bytes": 10}), "webhook.max_body_bytes"),
    ],
)
def test_webhook_config_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_webhook(data)


def test_email_and_xmpp_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"email.rooms\[0\].recipients: 'nope' is not an e-mail address"):
        parse_email(minimal(email={"rooms": [{"name": "ops", "room_id": "!r:x", "recipients": ["nope"]}]}))
    with pytest.raises(ConfigError, match="email.relay.host: missing"):
        parse_email(minimal(email={"relay": {"port": 25}}))
    with pytest.raises(ConfigError, match="xmpp.component_secret: missing"):
        parse_xmpp(minimal(xmpp={"component_jid": "matrix.example.org"}))
    with pytest.raises(ConfigError, match="xmpp.component_jid: a domain"):
        parse_xmpp(minimal(xmpp={"component_jid": "a@b", "component_secret": "s"}))


def test_email_addresses() -> None:
    config = parse_email(minimal(email={"domain": "Salons.example.org"}))
    assert config.address("ops") == "room-ops@Salons.example.org"
    assert config.name_of("ROOM-ops@salons.example.org") == "ops"
    assert config.name_of("room-ops@elsewhere.org") is None
    assert config.name_of("ops@salons.example.org") is None


def test_registration_asks_for_keys_in_transactions_only_when_configured() -> None:
    plain = parse_webhook(minimal(encryption={"enabled": True})).bridge.registration()
    assert "org.matrix.msc3202" not in plain and "receive_ephemeral" not in plain
    keys = parse_webhook(minimal(encryption={"enabled": True, "appservice": True})).bridge.registration()
    assert keys["org.matrix.msc3202"] is True and keys["de.sorunome.msc2409.push_ephemeral"] is True
