"""The webhook bridge's configuration: the shared sections plus ``webhook:``.

```yaml
webhook:
  listen: {host: 0.0.0.0, port: 29331}      # where applications POST /hooks/<id>
  public_url: https://hooks.ministere.example.gouv.fr   # shown in "!webhook create" answers
  max_body_bytes: 1048576
  hooks:                                    # hooks defined here, besides "!webhook create"
    - {id: ci, room_id: '!abc:example', secret: s3cret, name: CI, callback_url: null}
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
    integer,
    optional_string,
    parse_bridge_config,
    section,
    string,
)

HOOK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class StaticHook:
    id: str
    room_id: str
    secret: str
    name: str
    callback_url: str | None


@dataclass(frozen=True)
class WebhookConfig:
    bridge: BridgeConfig
    listen: Listen
    public_url: str
    max_body_bytes: int
    hooks: tuple[StaticHook, ...]


def parse(data: Mapping[str, Any]) -> WebhookConfig:
    bridge = parse_bridge_config(data, default_id="webhook", default_port=29330)
    webhook = section(data, "webhook")
    listen = Listen.parse(section(webhook, "listen", "webhook."), "webhook.listen.", 29331)
    hooks = []
    raw_hooks = webhook.get("hooks") or []
    if not isinstance(raw_hooks, list):
        raise ConfigError("webhook.hooks: must be a list")
    for index, raw in enumerate(raw_hooks):
        path = f"webhook.hooks[{index}]."
        if not isinstance(raw, Mapping):
            raise ConfigError(f"webhook.hooks[{index}]: must be a mapping")
        hook_id = string(raw, "id", path)
        if not HOOK_ID.fullmatch(hook_id):
            raise ConfigError(f"{path}id: 1 to 64 of A-Z a-z 0-9 _ -")
        room_id = string(raw, "room_id", path)
        if not room_id.startswith("!"):
            raise ConfigError(f"{path}room_id: must be a room ID (!...)")
        callback = optional_string(raw, "callback_url", path)
        if callback is not None and not callback.startswith(("http://", "https://")):
            raise ConfigError(f"{path}callback_url: must be an http(s) URL")
        hooks.append(
            StaticHook(
                id=hook_id,
                room_id=room_id,
                secret=string(raw, "secret", path),
                name=string(raw, "name", path, hook_id),
                callback_url=callback,
            )
        )
    public_url = string(webhook, "public_url", "webhook.", f"http://{listen.host}:{listen.port}")
    max_body = integer(webhook, "max_body_bytes", "webhook.", 1024 * 1024)
    if max_body < 1024:
        raise ConfigError("webhook.max_body_bytes: at least 1024")
    return WebhookConfig(
        bridge=bridge, listen=listen, public_url=public_url.rstrip("/"), max_body_bytes=max_body, hooks=tuple(hooks)
    )
