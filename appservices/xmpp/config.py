"""The XMPP bridge's configuration: the shared sections plus ``xmpp:``.

```yaml
xmpp:
  component_jid: matrix.xmpp.ministere.example.gouv.fr   # declared as a Component in Prosody
  component_secret: CHANGE-ME                            # its component_secret
  server_host: 127.0.0.1                                 # the XMPP server's component port
  server_port: 5347
  muc_nick: Matrix                                       # the bridge's own nick in MUC rooms
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appservices.common.config import BridgeConfig, ConfigError, integer, parse_bridge_config, section, string


@dataclass(frozen=True)
class XmppConfig:
    bridge: BridgeConfig
    component_jid: str
    component_secret: str
    server_host: str
    server_port: int
    muc_nick: str

    def registration(self) -> dict[str, Any]:
        registration = self.bridge.registration()
        registration["receive_ephemeral"] = True  # m.presence of Matrix users, for XMPP contacts
        return registration


def parse(data: Mapping[str, Any]) -> XmppConfig:
    bridge = parse_bridge_config(data, default_id="xmpp", default_port=29350)
    xmpp = section(data, "xmpp")
    component = string(xmpp, "component_jid", "xmpp.")
    if "@" in component or "/" in component:
        raise ConfigError("xmpp.component_jid: a domain (matrix.example.org), without @ or /")
    port = integer(xmpp, "server_port", "xmpp.", 5347)
    if not 0 < port < 65536:
        raise ConfigError("xmpp.server_port: must be between 1 and 65535")
    return XmppConfig(
        bridge=bridge,
        component_jid=component,
        component_secret=string(xmpp, "component_secret", "xmpp."),
        server_host=string(xmpp, "server_host", "xmpp.", "127.0.0.1"),
        server_port=port,
        muc_nick=string(xmpp, "muc_nick", "xmpp.", "Matrix"),
    )
