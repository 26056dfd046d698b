"""Registration: who may create accounts, and what new accounts get.

The keys are top-level in homeserver.yaml, as in Synapse; here they are grouped into one
:class:`RegistrationConfig`.  Like Synapse we refuse open registration without any
verification unless ``enable_registration_without_verification`` says it is intended.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.config.reader import Reader
from homeserver.core.ids import InvalidID, RoomAlias, RoomID, is_valid_user_localpart

ROOM_PRESETS = ("public_chat", "private_chat", "trusted_private_chat")
THREEPID_MEDIA = ("email", "msisdn")


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """Account creation settings (Synapse's names and defaults)."""

    enable_registration: bool = False
    enable_registration_without_verification: bool = False
    registration_requires_token: bool = False
    registration_shared_secret: str | None = None
    registration_shared_secret_path: str | None = None
    registrations_require_3pid: tuple[str, ...] = ()
    disable_msisdn_registration: bool = False
    enable_3pid_lookup: bool = True
    enable_3pid_changes: bool = True
    allow_guest_access: bool = False
    inhibit_user_in_use_error: bool = False
    default_identity_server: str | None = None
    auto_join_rooms: tuple[str, ...] = ()
    autocreate_auto_join_rooms: bool = True
    autocreate_auto_join_rooms_federated: bool = True
    autocreate_auto_join_room_preset: str = "public_chat"
    auto_join_mxid_localpart: str | None = None
    auto_join_rooms_for_guests: bool = True
    enable_set_displayname: bool = True
    enable_set_avatar_url: bool = True


def _is_room_alias_or_id(value: str) -> bool:
    try:
        if value.startswith("#"):
            RoomAlias.parse(value)
        else:
            RoomID.parse(value)
    except InvalidID:
        return False
    return True


def _read_shared_secret(r: Reader) -> tuple[str | None, str | None]:
    secret = r.optional_string("registration_shared_secret")
    path = r.optional_path("registration_shared_secret_path")
    if path is None:
        return secret, None
    if secret is not None:
        r.error(
            "registration_shared_secret_path",
            "cannot be used together with registration_shared_secret; keep only one of them",
        )
        return secret, path
    try:
        with open(path, encoding="utf-8") as f:
            from_file = f.read().strip()
    except OSError as e:
        r.error("registration_shared_secret_path", f"cannot read {path}: {e.strerror or e}")
        return None, path
    if not from_file:
        r.error("registration_shared_secret_path", f"{path} is empty")
        return None, path
    return from_file, path


def read_registration(r: Reader) -> RegistrationConfig:
    """Read the registration keys from the top-level reader."""
    if r.has("disable_registration"):
        r.raw("disable_registration")
        r.error(
            "disable_registration",
            "no longer supported; use enable_registration: false",
        )
    secret, secret_path = _read_shared_secret(r)
    config = RegistrationConfig(
        enable_registration=r.boolean("enable_registration", False),
        enable_registration_without_verification=r.boolean("enable_registration_without_verification", False),
        registration_requires_token=r.boolean("registration_requires_token", False),
        registration_shared_secret=secret,
        registration_shared_secret_path=secret_path,
        registrations_require_3pid=r.strings(
            "registrations_require_3pid",
            item=lambda medium: medium in THREEPID_MEDIA,
            item_expected='"email" or "msisdn"',
            expected='a list of "email" and/or "msisdn"',
        ),
        disable_msisdn_registration=r.boolean("disable_msisdn_registration", False),
        enable_3pid_lookup=r.boolean("enable_3pid_lookup", True),
        enable_3pid_changes=r.boolean("enable_3pid_changes", True),
        allow_guest_access=r.boolean("allow_guest_access", False),
        inhibit_user_in_use_error=r.boolean("inhibit_user_in_use_error", False),
        default_identity_server=r.optional_string("default_identity_server", expected="a URL"),
        auto_join_rooms=r.strings(
            "auto_join_rooms",
            item=_is_room_alias_or_id,
            item_expected="a room alias such as #welcome:example.com (or a room ID)",
            expected="a list of room aliases",
        ),
        autocreate_auto_join_rooms=r.boolean("autocreate_auto_join_rooms", True),
        autocreate_auto_join_rooms_federated=r.boolean("autocreate_auto_join_rooms_federated", True),
        autocreate_auto_join_room_preset=r.choice("autocreate_auto_join_room_preset", "public_chat", ROOM_PRESETS),
        auto_join_mxid_localpart=r.optional_string("auto_join_mxid_localpart", expected="a user ID localpart"),
        auto_join_rooms_for_guests=r.boolean("auto_join_rooms_for_guests", True),
        enable_set_displayname=r.boolean("enable_set_displayname", True),
        enable_set_avatar_url=r.boolean("enable_set_avatar_url", True),
    )
    if config.auto_join_mxid_localpart is not None and not is_valid_user_localpart(config.auto_join_mxid_localpart):
        r.expected(
            "auto_join_mxid_localpart",
            "a user ID localpart such as welcomebot",
            config.auto_join_mxid_localpart,
        )
    if (
        config.autocreate_auto_join_rooms
        and config.auto_join_rooms
        and config.autocreate_auto_join_room_preset != "public_chat"
        and config.auto_join_mxid_localpart is None
    ):
        r.error(
            "auto_join_mxid_localpart",
            "required when autocreate_auto_join_room_preset is private_chat or trusted_private_chat "
            "(the user who sends the invitations)",
        )
    if (
        config.enable_registration
        and not config.enable_registration_without_verification
        and not config.registrations_require_3pid
        and not config.registration_requires_token
    ):
        r.error(
            "enable_registration",
            "open registration without any verification invites spam and abuse; require a "
            "registration token (registration_requires_token: true) or an email "
            "(registrations_require_3pid), or set enable_registration_without_verification: true "
            "if you really mean it",
        )
    return config
