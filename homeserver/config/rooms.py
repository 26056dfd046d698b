"""Rooms, profiles and the user directory.

Synapse's ``default_room_version``, ``encryption_enabled_by_default_for_room_type``,
``require_auth_for_profile_requests``, ``limit_profile_requests_to_users_who_share_rooms``
and ``user_directory``.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.config.reader import Reader
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS

# Synapse's current default (room version 12: room IDs without a server part).
DEFAULT_ROOM_VERSION = "12"
ENCRYPTION_ROOM_TYPES = ("all", "invite", "off")


@dataclass(frozen=True, slots=True)
class UserDirectoryConfig:
    """``user_directory``: user search (by default, only users sharing a room or public rooms)."""

    enabled: bool = True
    search_all_users: bool = False
    prefer_local_users: bool = False
    exclude_remote_users: bool = False
    show_locked_users: bool = False


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """Room and profile settings."""

    default_room_version: str
    encryption_enabled_by_default_for_room_type: str
    require_auth_for_profile_requests: bool
    limit_profile_requests_to_users_who_share_rooms: bool
    user_directory: UserDirectoryConfig
    presence_enabled: bool
    event_cache_size: int


def _read_room_version(r: Reader) -> str:
    value = r.raw("default_room_version", DEFAULT_ROOM_VERSION)
    # YAML reads `default_room_version: 10` as a number; Synapse accepts that too.
    version = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if version not in KNOWN_ROOM_VERSIONS:
        r.expected(
            "default_room_version",
            "one of " + ", ".join(f'"{v}"' for v in KNOWN_ROOM_VERSIONS),
            value,
        )
        return DEFAULT_ROOM_VERSION
    return version


def _read_encryption_default(r: Reader) -> str:
    value = r.raw("encryption_enabled_by_default_for_room_type", "off")
    # YAML 1.1 reads an unquoted `off` as false.
    if value is False or value is None:
        return "off"
    if value not in ENCRYPTION_ROOM_TYPES:
        r.expected(
            "encryption_enabled_by_default_for_room_type",
            'one of "all", "invite", "off"',
            value,
        )
        return "off"
    return str(value)


def _read_user_directory(r: Reader) -> UserDirectoryConfig:
    section = r.section("user_directory")
    config = UserDirectoryConfig(
        enabled=section.boolean("enabled", True),
        search_all_users=section.boolean("search_all_users", False),
        prefer_local_users=section.boolean("prefer_local_users", False),
        exclude_remote_users=section.boolean("exclude_remote_users", False),
        show_locked_users=section.boolean("show_locked_users", False),
    )
    section.finish()
    return config


def _read_presence(r: Reader) -> bool:
    """Synapse's ``presence: {enabled: true}`` (``use_presence`` is its old spelling)."""
    section = r.section("presence")
    enabled = section.boolean("enabled", True)
    section.finish()
    return enabled


# Events kept in memory (ours; Synapse's default is "10K", i.e. 10,240).
DEFAULT_EVENT_CACHE_SIZE = 20_000


def _read_event_cache_size(r: Reader) -> int:
    """Synapse's ``event_cache_size``: how many events the event cache holds ("10K", 20000)."""
    size = r.size("event_cache_size", DEFAULT_EVENT_CACHE_SIZE)
    if size < 1:
        r.error("event_cache_size", "must be at least 1")
    return size


def read_rooms(r: Reader) -> RoomSettings:
    """Read the room and profile settings from the top-level reader."""
    settings = RoomSettings(
        default_room_version=_read_room_version(r),
        encryption_enabled_by_default_for_room_type=_read_encryption_default(r),
        require_auth_for_profile_requests=r.boolean("require_auth_for_profile_requests", False),
        limit_profile_requests_to_users_who_share_rooms=r.boolean(
            "limit_profile_requests_to_users_who_share_rooms", False
        ),
        user_directory=_read_user_directory(r),
        presence_enabled=_read_presence(r),
        event_cache_size=_read_event_cache_size(r),
    )
    if settings.limit_profile_requests_to_users_who_share_rooms and not settings.require_auth_for_profile_requests:
        r.error(
            "limit_profile_requests_to_users_who_share_rooms",
            "requires require_auth_for_profile_requests: true (the check needs to know who asks)",
        )
    return settings
