"""The part of a bridge's YAML configuration every bridge shares, with errors naming the key.

```yaml
homeserver: {url: http://127.0.0.1:8008, domain: ministere.example.gouv.fr}
appservice:
  id: webhook                      # the registration's id
  as_token: ...                    # the bridge -> homeserver token
  hs_token: ...                    # the homeserver -> bridge token
  bot_localpart: webhookbot
  bot_displayname: Webhooks
  ghost_prefix: webhook_           # ghosts are @<prefix>...:domain
  listen: {host: 127.0.0.1, port: 29330}   # where the homeserver pushes transactions
data_dir: /var/lib/homeserver-webhook-bridge   # SQLite files (state, keys, the bridge's own)
encryption: {enabled: true, appservice: false}   # Olm/Megolm through mautrix.crypto (python-olm);
                                   # appservice: keys come in transactions (MSC2409/MSC3202)
permissions: ['@*:ministere.example.gouv.fr']  # who may give the bot commands (globs)
```
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key path."""


def section(data: Mapping[str, Any], key: str, path: str = "") -> Mapping[str, Any]:
    value = data.get(key, {})
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}{key}: must be a mapping")
    return value


def string(data: Mapping[str, Any], key: str, path: str = "", default: str | None = None) -> str:
    value = data.get(key, default)
    if value is None:
        raise ConfigError(f"{path}{key}: missing")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}{key}: must be a non-empty string")
    return value


def optional_string(data: Mapping[str, Any], key: str, path: str = "") -> str | None:
    if data.get(key) is None:
        return None
    return string(data, key, path)


def integer(data: Mapping[str, Any], key: str, path: str = "", default: int | None = None) -> int:
    value = data.get(key, default)
    if value is None:
        raise ConfigError(f"{path}{key}: missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}{key}: must be an integer")
    return value


def boolean(data: Mapping[str, Any], key: str, path: str = "", default: bool = False) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}{key}: must be true or false")
    return value


def string_list(data: Mapping[str, Any], key: str, path: str = "") -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{path}{key}: must be a list of strings")
    return list(value)


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, data: Mapping[str, Any], path: str, default_port: int) -> Listen:
        port = integer(data, "port", path, default_port)
        if not 0 < port < 65536:
            raise ConfigError(f"{path}port: must be between 1 and 65535")
        return cls(host=string(data, "host", path, "127.0.0.1"), port=port)


@dataclass(frozen=True)
class BridgeConfig:
    """The shared sections; ``raw`` keeps the whole document for the bridge's own section."""

    homeserver_url: str
    domain: str
    id: str
    as_token: str
    hs_token: str
    bot_localpart: str
    bot_displayname: str | None
    ghost_prefix: str
    listen: Listen
    data_dir: Path
    encryption: bool
    encryption_appservice: bool  # keys in transactions (MSC2409/MSC3202) instead of a /sync loop
    permissions: tuple[str, ...]
    raw: Mapping[str, Any]

    @property
    def bot_mxid(self) -> str:
        return f"@{self.bot_localpart}:{self.domain}"

    def ghost_mxid(self, suffix: str) -> str:
        return f"@{self.ghost_prefix}{suffix}:{self.domain}"

    def is_ghost(self, user_id: str) -> bool:
        return user_id.startswith("@" + self.ghost_prefix) and user_id.endswith(":" + self.domain)

    def is_bridge_user(self, user_id: str) -> bool:
        return user_id == self.bot_mxid or self.is_ghost(user_id)

    def may_command(self, user_id: str) -> bool:
        return any(fnmatch.fnmatchcase(user_id, pattern) for pattern in self.permissions)

    def registration(self) -> dict[str, Any]:
        """The registration file for the homeserver (Synapse's format)."""
        domain = re.escape(self.domain)
        registration: dict[str, Any] = {
            "id": self.id,
            "url": f"http://{self.listen.host}:{self.listen.port}",
            "as_token": self.as_token,
            "hs_token": self.hs_token,
            "sender_localpart": self.bot_localpart,
            "rate_limited": False,
            "namespaces": {
                "users": [{"exclusive": True, "regex": f"@{re.escape(self.ghost_prefix)}.*:{domain}"}],
                "aliases": [],
                "rooms": [],
            },
        }
        if self.encryption and self.encryption_appservice:
            # to-device messages, device lists and key counts of the bot's device in transactions
            registration["org.matrix.msc3202"] = True
            registration["receive_ephemeral"] = True
            registration["de.sorunome.msc2409.push_ephemeral"] = True
        return registration


def load_yaml(path: Path) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must be a YAML mapping")
    return data


def parse_bridge_config(data: Mapping[str, Any], *, default_id: str, default_port: int) -> BridgeConfig:
    hs = section(data, "homeserver")
    appservice = section(data, "appservice")
    encryption = section(data, "encryption")
    domain = string(hs, "domain", "homeserver.")
    url = string(hs, "url", "homeserver.")
    if not url.startswith(("http://", "https://")):
        raise ConfigError("homeserver.url: must start with http:// or https://")
    prefix = string(appservice, "ghost_prefix", "appservice.", f"{default_id}_")
    if not re.fullmatch(r"[a-z0-9._=/-]+", prefix):
        raise ConfigError("appservice.ghost_prefix: only a-z, 0-9 and ._=/- are allowed")
    return BridgeConfig(
        homeserver_url=url.rstrip("/"),
        domain=domain,
        id=string(appservice, "id", "appservice.", default_id),
        as_token=string(appservice, "as_token", "appservice."),
        hs_token=string(appservice, "hs_token", "appservice."),
        bot_localpart=string(appservice, "bot_localpart", "appservice.", f"{default_id}bot"),
        bot_displayname=optional_string(appservice, "bot_displayname", "appservice."),
        ghost_prefix=prefix,
        listen=Listen.parse(section(appservice, "listen", "appservice."), "appservice.listen.", default_port),
        data_dir=Path(string(data, "data_dir", "", ".")),
        encryption=boolean(encryption, "enabled", "encryption."),
        encryption_appservice=boolean(encryption, "appservice", "encryption."),
        permissions=tuple(string_list(data, "permissions") or [f"@*:{domain}"]),
        raw=data,
    )
