"""Rate limits: Synapse's ``rc_*`` keys with Synapse's defaults.

Each limiter is a token bucket: ``burst_count`` actions at once, refilled at
``per_second``.  Keys with sub-limiters (``rc_login``, ``rc_joins``, ``rc_invites``,
``rc_presence``) read each sub-key separately, so setting ``rc_login.address`` leaves
the defaults of ``rc_login.account`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from homeserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """A token bucket: ``burst_count`` at once, refilled at ``per_second``."""

    per_second: float
    burst_count: float


@dataclass(frozen=True, slots=True)
class LoginRateLimits:
    """``rc_login``: by client address, by account, and failed attempts per account."""

    address: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.003, 5))
    account: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.003, 5))
    failed_attempts: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.17, 3))


@dataclass(frozen=True, slots=True)
class JoinRateLimits:
    """``rc_joins``: joins to rooms this server is in, and joins over federation."""

    local: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.1, 10))
    remote: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.01, 10))


@dataclass(frozen=True, slots=True)
class InviteRateLimits:
    """``rc_invites``: invites into one room, to one user, and from one sender."""

    per_room: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.3, 10))
    per_user: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.003, 5))
    per_issuer: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.3, 10))


@dataclass(frozen=True, slots=True)
class PresenceRateLimits:
    """``rc_presence``: presence updates per user."""

    per_user: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.1, 1))


@dataclass(frozen=True, slots=True)
class FederationRateLimitConfig:
    """``rc_federation``: how hard one remote server may push on us.

    Within ``window_size`` ms, requests past ``sleep_limit`` are delayed by
    ``sleep_delay`` ms each, requests past ``reject_limit`` are refused, and at most
    ``concurrent`` are processed at once.
    """

    window_size: int = 1000
    sleep_limit: int = 10
    sleep_delay: int = 500
    reject_limit: int = 50
    concurrent: int = 3


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Every ``rc_*`` setting."""

    rc_message: RateLimitConfig
    rc_registration: RateLimitConfig
    rc_registration_token_validity: RateLimitConfig
    rc_login: LoginRateLimits
    rc_admin_redaction: RateLimitConfig | None
    rc_joins: JoinRateLimits
    rc_joins_per_room: RateLimitConfig
    rc_3pid_validation: RateLimitConfig
    rc_invites: InviteRateLimits
    rc_third_party_invite: RateLimitConfig
    rc_media_create: RateLimitConfig
    rc_federation: FederationRateLimitConfig
    rc_presence: PresenceRateLimits
    rc_delayed_event_mgmt: RateLimitConfig
    rc_reports: RateLimitConfig
    rc_room_creation: RateLimitConfig
    rc_user_directory: RateLimitConfig


def _bucket(r: Reader, key: str, default: RateLimitConfig) -> RateLimitConfig:
    section = r.section(key)
    bucket = RateLimitConfig(
        per_second=section.number("per_second", default.per_second, min=0),
        burst_count=section.number("burst_count", default.burst_count, min=0),
    )
    section.finish()
    return bucket


def _federation(r: Reader) -> FederationRateLimitConfig:
    section = r.section("rc_federation")
    defaults = FederationRateLimitConfig()
    config = FederationRateLimitConfig(
        window_size=section.integer("window_size", defaults.window_size, min=1),
        sleep_limit=section.integer("sleep_limit", defaults.sleep_limit, min=0),
        sleep_delay=section.integer("sleep_delay", defaults.sleep_delay, min=0),
        reject_limit=section.integer("reject_limit", defaults.reject_limit, min=0),
        concurrent=section.integer("concurrent", defaults.concurrent, min=1),
    )
    section.finish()
    return config


# Synapse's defaults.  ``rc_admin_redaction`` is unlimited unless configured; when it is
# configured, its unset fields default to ADMIN_REDACTION_DEFAULT.
ADMIN_REDACTION_DEFAULT = RateLimitConfig(0.17, 3)
DEFAULT_RATE_LIMITS = RateLimitSettings(
    rc_message=RateLimitConfig(0.2, 10),
    rc_registration=RateLimitConfig(0.17, 3),
    rc_registration_token_validity=RateLimitConfig(0.1, 5),
    rc_login=LoginRateLimits(),
    rc_admin_redaction=None,
    rc_joins=JoinRateLimits(),
    rc_joins_per_room=RateLimitConfig(1, 10),
    rc_3pid_validation=RateLimitConfig(0.003, 5),
    rc_invites=InviteRateLimits(),
    rc_third_party_invite=RateLimitConfig(0.0025, 5),
    rc_media_create=RateLimitConfig(10, 50),
    rc_federation=FederationRateLimitConfig(),
    rc_presence=PresenceRateLimits(),
    rc_delayed_event_mgmt=RateLimitConfig(1, 5),
    rc_reports=RateLimitConfig(1, 5),
    rc_room_creation=RateLimitConfig(0.016, 10),
    rc_user_directory=RateLimitConfig(0.016, 200),
)


def read_ratelimiting(r: Reader) -> RateLimitSettings:
    """Read every ``rc_*`` key from the top-level reader."""
    d = DEFAULT_RATE_LIMITS
    login = r.section("rc_login")
    joins = r.section("rc_joins")
    invites = r.section("rc_invites")
    presence = r.section("rc_presence")
    settings = RateLimitSettings(
        rc_message=_bucket(r, "rc_message", d.rc_message),
        rc_registration=_bucket(r, "rc_registration", d.rc_registration),
        rc_registration_token_validity=_bucket(r, "rc_registration_token_validity", d.rc_registration_token_validity),
        rc_login=LoginRateLimits(
            address=_bucket(login, "address", d.rc_login.address),
            account=_bucket(login, "account", d.rc_login.account),
            failed_attempts=_bucket(login, "failed_attempts", d.rc_login.failed_attempts),
        ),
        rc_admin_redaction=(
            _bucket(r, "rc_admin_redaction", ADMIN_REDACTION_DEFAULT) if r.has("rc_admin_redaction") else None
        ),
        rc_joins=JoinRateLimits(
            local=_bucket(joins, "local", d.rc_joins.local),
            remote=_bucket(joins, "remote", d.rc_joins.remote),
        ),
        rc_joins_per_room=_bucket(r, "rc_joins_per_room", d.rc_joins_per_room),
        rc_3pid_validation=_bucket(r, "rc_3pid_validation", d.rc_3pid_validation),
        rc_invites=InviteRateLimits(
            per_room=_bucket(invites, "per_room", d.rc_invites.per_room),
            per_user=_bucket(invites, "per_user", d.rc_invites.per_user),
            per_issuer=_bucket(invites, "per_issuer", d.rc_invites.per_issuer),
        ),
        rc_third_party_invite=_bucket(r, "rc_third_party_invite", d.rc_third_party_invite),
        rc_media_create=_bucket(r, "rc_media_create", d.rc_media_create),
        rc_federation=_federation(r),
        rc_presence=PresenceRateLimits(per_user=_bucket(presence, "per_user", d.rc_presence.per_user)),
        rc_delayed_event_mgmt=_bucket(r, "rc_delayed_event_mgmt", d.rc_delayed_event_mgmt),
        rc_reports=_bucket(r, "rc_reports", d.rc_reports),
        rc_room_creation=_bucket(r, "rc_room_creation", d.rc_room_creation),
        rc_user_directory=_bucket(r, "rc_user_directory", d.rc_user_directory),
    )
    for section in (login, joins, invites, presence):
        section.finish()
    r.ignore("rc_admin_redaction")  # null means "not limited", like absent
    for key in NOT_ENFORCED:
        if r.has(key):
            r.warn(key, "read, but this server does not enforce this limit yet")
    return settings


#: Keys parsed as Synapse does (so a Synapse file loads unchanged) whose limits no request
#: path applies yet.  Enforced: rc_message, rc_registration, rc_login, rc_media_create,
#: rc_room_creation, rc_joins, rc_joins_per_room, rc_invites, rc_user_directory, rc_reports,
#: rc_presence, rc_federation.
NOT_ENFORCED = (
    "rc_registration_token_validity",
    "rc_admin_redaction",
    "rc_3pid_validation",
    "rc_third_party_invite",
    "rc_delayed_event_mgmt",
)
