"""The e-mail bridge's configuration: the shared sections plus ``email:``.

```yaml
email:
  domain: salons.ministere.example.gouv.fr   # a room's address: room-<name>@<domain>
  address_prefix: room-
  smtp_listen: {host: 0.0.0.0, port: 2525}   # where the MX (or senders) deliver
  max_message_bytes: 10485760
  relay: {host: smtp.ministere.example.gouv.fr, port: 25, starttls: false, username: null, password: null}
  rooms:                                     # rooms bridged here, besides "!email link"
    - {name: exploitation, room_id: '!abc:example', recipients: [astreinte@example.gouv.fr]}
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appservices.common.config import (
    BridgeConfig,
    ConfigError,
    Listen,
    boolean,
    integer,
    optional_string,
    parse_bridge_config,
    section,
    string,
    string_list,
)

ROOM_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    starttls: bool
    username: str | None
    password: str | None


@dataclass(frozen=True)
class StaticRoom:
    name: str
    room_id: str
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class EmailConfig:
    bridge: BridgeConfig
    domain: str
    address_prefix: str
    smtp_listen: Listen
    max_message_bytes: int
    relay: Relay | None
    rooms: tuple[StaticRoom, ...]

    def address(self, name: str) -> str:
        return f"{self.address_prefix}{name}@{self.domain}"

    def name_of(self, address: str) -> str | None:
        """The room name of one of our addresses (``room-ops@domain`` -> ``ops``), else None."""
        local, _, domain = address.strip().lower().rpartition("@")
        if domain != self.domain.lower() or not local.startswith(self.address_prefix):
            return None
        name = local[len(self.address_prefix) :]
        return name if ROOM_NAME.fullmatch(name) else None


def recipients(values: list[str], path: str) -> tuple[str, ...]:
    for value in values:
        if not ADDRESS.fullmatch(value):
            raise ConfigError(f"{path}: {value!r} is not an e-mail address")
    return tuple(values)


def parse(data: Mapping[str, Any]) -> EmailConfig:
    bridge = parse_bridge_config(data, default_id="email", default_port=29340)
    email = section(data, "email")
    relay_data = email.get("relay")
    relay = None
    if relay_data is not None:
        if not isinstance(relay_data, Mapping):
            raise ConfigError("email.relay: must be a mapping")
        relay = Relay(
            host=string(relay_data, "host", "email.relay."),
            port=integer(relay_data, "port", "email.relay.", 25),
            starttls=boolean(relay_data, "starttls", "email.relay."),
            username=optional_string(relay_data, "username", "email.relay."),
            password=optional_string(relay_data, "password", "email.relay."),
        )
    rooms = []
    raw_rooms = email.get("rooms") or []
    if not isinstance(raw_rooms, list):
        raise ConfigError("email.rooms: must be a list")
    for index, raw in enumerate(raw_rooms):
        path = f"email.rooms[{index}]."
        if not isinstance(raw, Mapping):
            raise ConfigError(f"email.rooms[{index}]: must be a mapping")
        name = string(raw, "name", path)
        if not ROOM_NAME.fullmatch(name):
            raise ConfigError(f"{path}name: lower-case letters, digits and ._- (at most 64)")
        room_id = string(raw, "room_id", path)
        if not room_id.startswith("!"):
            raise ConfigError(f"{path}room_id: must be a room ID (!...)")
        rooms.append(StaticRoom(name, room_id, recipients(string_list(raw, "recipients", path), path + "recipients")))
    max_bytes = integer(email, "max_message_bytes", "email.", 10 * 1024 * 1024)
    if max_bytes < 1024:
        raise ConfigError("email.max_message_bytes: at least 1024")
    return EmailConfig(
        bridge=bridge,
        domain=string(email, "domain", "email.", bridge.domain),
        address_prefix=string(email, "address_prefix", "email.", "room-"),
        smtp_listen=Listen.parse(section(email, "smtp_listen", "email."), "email.smtp_listen.", 2525),
        max_message_bytes=max_bytes,
        relay=relay,
        rooms=tuple(rooms),
    )
