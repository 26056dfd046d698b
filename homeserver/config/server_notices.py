"""``server_notices`` (Synapse's section): the system user that sends notices to users.

With the section present, admins send a user a notice with Synapse's admin API
(``POST /_synapse/admin/v1/send_server_notice``); it lands in a per-user room created by
``@<system_mxid_localpart>:<server_name>`` and tagged ``m.server_notice`` for the user.
``system_mxid_localpart`` is the only required key; the others are Synapse's, with its
defaults (``room_name`` "Server Notices", ``auto_join`` false).
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.config.reader import Reader
from homeserver.core.ids import is_valid_user_localpart


@dataclass(frozen=True, slots=True)
class ServerNoticesConfig:
    """The parsed ``server_notices`` section (present means enabled)."""

    system_mxid_localpart: str
    system_mxid_display_name: str | None = None
    system_mxid_avatar_url: str | None = None
    room_name: str | None = "Server Notices"
    room_avatar_url: str | None = None
    room_topic: str | None = None
    # join users to the notices room instead of inviting them
    auto_join: bool = False

    def system_user_id(self, server_name: str) -> str:
        return f"@{self.system_mxid_localpart}:{server_name}"


def _mxc(r: Reader, key: str) -> str | None:
    value = r.optional_string(key, expected="an mxc:// URL")
    if value is not None and not value.startswith("mxc://"):
        r.expected(key, "an mxc:// URL", value)
        return None
    return value


def read_server_notices(r: Reader) -> ServerNoticesConfig | None:
    """Read ``server_notices``; None when absent (server notices off, as in Synapse)."""
    raw = r.raw("server_notices")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.expected("server_notices", "a mapping with at least system_mxid_localpart", raw)
        return None
    s = r.section("server_notices")
    localpart = s.required_string("system_mxid_localpart", expected="a user localpart such as server")
    if localpart and not is_valid_user_localpart(localpart):
        s.expected("system_mxid_localpart", "a user localpart (a-z, 0-9, =_-./+) such as server", localpart)
    config = ServerNoticesConfig(
        system_mxid_localpart=localpart,
        system_mxid_display_name=s.optional_string("system_mxid_display_name"),
        system_mxid_avatar_url=_mxc(s, "system_mxid_avatar_url"),
        room_name=s.optional_string("room_name", "Server Notices"),
        room_avatar_url=_mxc(s, "room_avatar_url"),
        room_topic=s.optional_string("room_topic"),
        auto_join=s.boolean("auto_join", False),
    )
    s.finish()
    return config
