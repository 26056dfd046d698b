"""The whole configuration: :class:`HomeserverConfig`, one flat, frozen record.

Fields carry Synapse's top-level key names, so ``config.rc_login.failed_attempts`` is
``rc_login.failed_attempts`` in homeserver.yaml.  The exceptions group keys that Synapse
keeps top-level but that belong together: ``registration`` (the registration keys).

Each concern's module reads its own keys (see ``read_*`` below); :meth:`from_dict` runs
them all against one :class:`Reader`, so every error in the file is reported at once.
Durations are in milliseconds, sizes in bytes, paths absolute.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from homeserver.config.auth import DEFAULT_BCRYPT_ROUNDS, PasswordConfig, read_auth
from homeserver.config.database import DatabaseConfig, read_database
from homeserver.config.emailconfig import EmailConfig, read_email
from homeserver.config.federation import DEFAULT_IP_RANGE_BLACKLIST, read_federation
from homeserver.config.federation_sending import FederationSection, read_federation_section
from homeserver.config.keys import TrustedKeyServer, read_keys
from homeserver.config.listeners import ListenerConfig, read_listeners
from homeserver.config.media import (
    DEFAULT_THUMBNAIL_SIZES,
    MediaRetention,
    MediaUploadLimit,
    ThumbnailSize,
    read_media,
)
from homeserver.config.policy import AccountValidityConfig, PolicyConfig, read_account_validity, read_policy
from homeserver.config.ratelimiting import (
    DEFAULT_RATE_LIMITS as _RL,
)
from homeserver.config.ratelimiting import (
    FederationRateLimitConfig,
    InviteRateLimits,
    JoinRateLimits,
    LoginRateLimits,
    PresenceRateLimits,
    RateLimitConfig,
    read_ratelimiting,
)
from homeserver.config.reader import ConfigError, Problems, Reader, show
from homeserver.config.registration import RegistrationConfig, read_registration
from homeserver.config.rooms import (
    DEFAULT_ROOM_VERSION,
    UserDirectoryConfig,
    read_rooms,
)
from homeserver.config.server import read_server, read_server_name
from homeserver.config.server_notices import ServerNoticesConfig, read_server_notices
from homeserver.config.synapse_keys import SYNAPSE_TOP_LEVEL_KEYS
from homeserver.config.units import parse_duration, parse_size
from homeserver.config.voip import read_turn


@dataclass(frozen=True, slots=True, kw_only=True)
class HomeserverConfig:
    """The parsed homeserver.yaml.  Build it with :meth:`from_dict` (or ``load_config``).

    Constructing one directly (in tests) needs only ``server_name``; relative paths are
    then taken relative to ``config_dir``, as they are in the file.
    """

    # -- identity and process (server.py) ----------------------------------------------
    server_name: str
    config_dir: str = "."
    public_baseurl: str | None = None
    serve_server_wellknown: bool = False
    extra_well_known_client_content: dict[str, Any] = field(default_factory=dict)
    pid_file: str | None = None
    log_config: str | None = None
    log_level: str = "INFO"
    admin_contact: str | None = None
    report_stats: bool = False
    app_service_config_files: tuple[str, ...] = ()

    # -- listeners (listeners.py) ------------------------------------------------------
    listeners: tuple[ListenerConfig, ...] = ()
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None

    # -- database (database.py) --------------------------------------------------------
    database: DatabaseConfig = field(default_factory=DatabaseConfig)

    # -- signing keys and notaries (keys.py) -------------------------------------------
    signing_key_path: str = ""  # "" means "<config_dir>/<server_name>.signing.key"
    old_signing_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    key_refresh_interval: int = parse_duration("1d")
    suppress_key_server_warning: bool = False
    trusted_key_servers: tuple[TrustedKeyServer, ...] = ()

    # -- registration (registration.py) ------------------------------------------------
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)

    # -- passwords and sessions (auth.py) ----------------------------------------------
    password_config: PasswordConfig = field(default_factory=PasswordConfig)
    bcrypt_rounds: int = DEFAULT_BCRYPT_ROUNDS
    session_lifetime: int | None = None
    refreshable_access_token_lifetime: int | None = parse_duration("5m")
    refresh_token_lifetime: int | None = None
    nonrefreshable_access_token_lifetime: int | None = None

    # -- rate limits (ratelimiting.py) -------------------------------------------------
    rc_message: RateLimitConfig = _RL.rc_message
    rc_registration: RateLimitConfig = _RL.rc_registration
    rc_registration_token_validity: RateLimitConfig = _RL.rc_registration_token_validity
    rc_login: LoginRateLimits = _RL.rc_login
    rc_admin_redaction: RateLimitConfig | None = None
    rc_joins: JoinRateLimits = _RL.rc_joins
    rc_joins_per_room: RateLimitConfig = _RL.rc_joins_per_room
    rc_3pid_validation: RateLimitConfig = _RL.rc_3pid_validation
    rc_invites: InviteRateLimits = _RL.rc_invites
    rc_third_party_invite: RateLimitConfig = _RL.rc_third_party_invite
    rc_media_create: RateLimitConfig = _RL.rc_media_create
    rc_federation: FederationRateLimitConfig = _RL.rc_federation
    rc_presence: PresenceRateLimits = _RL.rc_presence
    rc_delayed_event_mgmt: RateLimitConfig = _RL.rc_delayed_event_mgmt
    rc_reports: RateLimitConfig = _RL.rc_reports
    rc_room_creation: RateLimitConfig = _RL.rc_room_creation
    rc_user_directory: RateLimitConfig = _RL.rc_user_directory

    # -- federation (federation.py) ----------------------------------------------------
    federation_domain_whitelist: tuple[str, ...] | None = None
    federation_allow_open: bool = False
    federation_verify_certificates: bool = True
    federation_custom_ca_list: tuple[str, ...] = ()
    ip_range_blacklist: tuple[str, ...] = DEFAULT_IP_RANGE_BLACKLIST
    ip_range_whitelist: tuple[str, ...] = ()
    federation_pinned_keys: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    federation_static_routes: Mapping[str, str] = field(default_factory=dict)
    federation_whitelist_endpoint_enabled: bool = False
    # Synapse's federation: section (destination retry intervals; federation_sending.py)
    federation: FederationSection = field(default_factory=FederationSection)

    # -- sizes and media (media.py) ----------------------------------------------------
    max_request_size: int = parse_size("10M")
    max_upload_size: int = parse_size("50M")
    media_store_path: str = "media_store"
    max_image_pixels: int = parse_size("32M")
    dynamic_thumbnails: bool = False
    thumbnail_sizes: tuple[ThumbnailSize, ...] = DEFAULT_THUMBNAIL_SIZES
    max_pending_media_uploads: int = 5
    unused_expiration_time: int = parse_duration("24h")
    media_upload_limits: tuple[MediaUploadLimit, ...] = ()
    media_retention: MediaRetention = MediaRetention()
    enable_authenticated_media: bool = False
    url_preview_enabled: bool = False
    url_preview_ip_range_blacklist: tuple[str, ...] = DEFAULT_IP_RANGE_BLACKLIST
    url_preview_ip_range_whitelist: tuple[str, ...] = ()
    max_spider_size: int = parse_size("10M")

    # -- rooms, profiles, user directory (rooms.py) ------------------------------------
    default_room_version: str = DEFAULT_ROOM_VERSION
    encryption_enabled_by_default_for_room_type: str = "off"
    require_auth_for_profile_requests: bool = False
    limit_profile_requests_to_users_who_share_rooms: bool = False
    user_directory: UserDirectoryConfig = field(default_factory=UserDirectoryConfig)
    presence_enabled: bool = True
    event_cache_size: int = 20_000

    # -- TURN servers for VoIP (voip.py) -----------------------------------------------
    turn_uris: tuple[str, ...] = ()
    turn_shared_secret: str | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    turn_user_lifetime: int = parse_duration("1h")
    turn_allow_guests: bool = True

    # -- email (emailconfig.py) --------------------------------------------------------
    email: EmailConfig | None = None

    # -- government policy (policy.py) -------------------------------------------------
    government_policy: PolicyConfig = field(default_factory=PolicyConfig)
    account_validity: AccountValidityConfig = field(default_factory=AccountValidityConfig)

    # -- server notices (server_notices.py); None: off ------------------------------------
    server_notices: ServerNoticesConfig | None = None

    def __post_init__(self) -> None:
        # Relative paths given to the constructor are relative to config_dir, as in the file.
        config_dir = os.path.abspath(self.config_dir)
        object.__setattr__(self, "config_dir", config_dir)
        key_path = self.signing_key_path or f"{self.server_name}.signing.key"
        object.__setattr__(self, "signing_key_path", os.path.join(config_dir, key_path))
        object.__setattr__(self, "media_store_path", os.path.join(config_dir, self.media_store_path))
        database = str(self.database.args.get("database", ""))
        if self.database.name == "sqlite3" and database != ":memory:":
            args = dict(
                self.database.args,
                database=os.path.join(config_dir, database or "homeserver.db"),
            )
            object.__setattr__(self, "database", replace(self.database, args=MappingProxyType(args)))

    def federation_allows(self, server_name: str) -> bool:
        """True when federation with ``server_name`` is allowed by the configuration.

        A non-empty ``federation_domain_whitelist`` allows exactly the servers it lists;
        without one, federation is open only if ``federation_allow_open`` is true.
        """
        if self.federation_domain_whitelist:
            return server_name in self.federation_domain_whitelist
        return self.federation_allow_open

    @classmethod
    def from_dict(cls, data: Any, *, config_dir: str) -> tuple[HomeserverConfig, list[str]]:
        """Parse a loaded homeserver.yaml; return the config and the warnings.

        Raises :class:`ConfigError` listing every error found (by key path).
        """
        if data is None:
            raise ConfigError("the configuration is empty; at least server_name is required")
        if not isinstance(data, dict):
            raise ConfigError(f"the configuration must be a mapping of keys to values, got {show(data)}")
        problems = Problems()
        r = Reader(data, "", problems, config_dir=os.path.abspath(config_dir))

        server_name = read_server_name(r)
        server = read_server(r, server_name)
        listening = read_listeners(r)
        database = read_database(r)
        federation = read_federation(r)
        federation_section = read_federation_section(r)
        keys = read_keys(
            r,
            server_name=server_name,
            verify_certificates=federation.federation_verify_certificates,
        )
        registration = read_registration(r)
        auth = read_auth(r)
        limits = read_ratelimiting(r)
        media = read_media(r)
        rooms = read_rooms(r)
        turn = read_turn(r)
        email = read_email(r)
        government_policy = read_policy(r)
        account_validity = read_account_validity(r)
        server_notices = read_server_notices(r)
        r.finish(unsupported=SYNAPSE_TOP_LEVEL_KEYS)
        problems.raise_if_errors()

        config = cls(
            server_name=server.server_name,
            config_dir=r.config_dir,
            public_baseurl=server.public_baseurl,
            serve_server_wellknown=server.serve_server_wellknown,
            extra_well_known_client_content=server.extra_well_known_client_content,
            pid_file=server.pid_file,
            log_config=server.log_config,
            log_level=server.log_level,
            admin_contact=server.admin_contact,
            report_stats=server.report_stats,
            app_service_config_files=server.app_service_config_files,
            listeners=listening.listeners,
            tls_certificate_path=listening.tls_certificate_path,
            tls_private_key_path=listening.tls_private_key_path,
            database=database,
            signing_key_path=keys.signing_key_path,
            old_signing_keys=keys.old_signing_keys,
            key_refresh_interval=keys.key_refresh_interval,
            suppress_key_server_warning=keys.suppress_key_server_warning,
            trusted_key_servers=keys.trusted_key_servers,
            registration=registration,
            password_config=auth.password_config,
            bcrypt_rounds=auth.bcrypt_rounds,
            session_lifetime=auth.session_lifetime,
            refreshable_access_token_lifetime=auth.refreshable_access_token_lifetime,
            refresh_token_lifetime=auth.refresh_token_lifetime,
            nonrefreshable_access_token_lifetime=auth.nonrefreshable_access_token_lifetime,
            rc_message=limits.rc_message,
            rc_registration=limits.rc_registration,
            rc_registration_token_validity=limits.rc_registration_token_validity,
            rc_login=limits.rc_login,
            rc_admin_redaction=limits.rc_admin_redaction,
            rc_joins=limits.rc_joins,
            rc_joins_per_room=limits.rc_joins_per_room,
            rc_3pid_validation=limits.rc_3pid_validation,
            rc_invites=limits.rc_invites,
            rc_third_party_invite=limits.rc_third_party_invite,
            rc_media_create=limits.rc_media_create,
            rc_federation=limits.rc_federation,
            rc_presence=limits.rc_presence,
            rc_delayed_event_mgmt=limits.rc_delayed_event_mgmt,
            rc_reports=limits.rc_reports,
            rc_room_creation=limits.rc_room_creation,
            rc_user_directory=limits.rc_user_directory,
            federation_domain_whitelist=federation.federation_domain_whitelist,
            federation_allow_open=federation.federation_allow_open,
            federation_verify_certificates=federation.federation_verify_certificates,
            federation_custom_ca_list=federation.federation_custom_ca_list,
            ip_range_blacklist=federation.ip_range_blacklist,
            ip_range_whitelist=federation.ip_range_whitelist,
            federation_pinned_keys=federation.federation_pinned_keys,
            federation_static_routes=federation.federation_static_routes,
            federation_whitelist_endpoint_enabled=federation.federation_whitelist_endpoint_enabled,
            federation=federation_section,
            max_request_size=media.max_request_size,
            max_upload_size=media.max_upload_size,
            media_store_path=media.media_store_path,
            max_image_pixels=media.max_image_pixels,
            dynamic_thumbnails=media.dynamic_thumbnails,
            thumbnail_sizes=media.thumbnail_sizes,
            max_pending_media_uploads=media.max_pending_media_uploads,
            unused_expiration_time=media.unused_expiration_time,
            media_upload_limits=media.media_upload_limits,
            media_retention=media.media_retention,
            enable_authenticated_media=media.enable_authenticated_media,
            url_preview_enabled=media.url_preview_enabled,
            url_preview_ip_range_blacklist=media.url_preview_ip_range_blacklist,
            url_preview_ip_range_whitelist=media.url_preview_ip_range_whitelist,
            max_spider_size=media.max_spider_size,
            default_room_version=rooms.default_room_version,
            encryption_enabled_by_default_for_room_type=rooms.encryption_enabled_by_default_for_room_type,
            require_auth_for_profile_requests=rooms.require_auth_for_profile_requests,
            limit_profile_requests_to_users_who_share_rooms=rooms.limit_profile_requests_to_users_who_share_rooms,
            user_directory=rooms.user_directory,
            presence_enabled=rooms.presence_enabled,
            event_cache_size=rooms.event_cache_size,
            turn_uris=turn.turn_uris,
            turn_shared_secret=turn.turn_shared_secret,
            turn_username=turn.turn_username,
            turn_password=turn.turn_password,
            turn_user_lifetime=turn.turn_user_lifetime,
            turn_allow_guests=turn.turn_allow_guests,
            email=email,
            government_policy=government_policy,
            account_validity=account_validity,
            server_notices=server_notices,
        )
        return config, problems.warnings
