"""Passwords and sessions: ``password_config``, ``bcrypt_rounds`` and token lifetimes.

Durations are in milliseconds.  As in Synapse, ``refreshable_access_token_lifetime``
defaults to 5 minutes (set it to ``null`` to turn refresh tokens off) and the other
lifetimes default to "forever" (``None``); none of the token lifetimes may exceed
``session_lifetime`` when that is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from homeserver.config.reader import Reader

DEFAULT_BCRYPT_ROUNDS = 12
DEFAULT_REFRESHABLE_ACCESS_TOKEN_LIFETIME = "5m"


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """``password_config.policy``: rules for new passwords (off by default)."""

    enabled: bool = False
    minimum_length: int = 0
    require_digit: bool = False
    require_symbol: bool = False
    require_lowercase: bool = False
    require_uppercase: bool = False


@dataclass(frozen=True, slots=True)
class PasswordConfig:
    """``password_config``: whether password login works and how hashes are peppered."""

    enabled: bool = True
    localdb_enabled: bool = True
    pepper: str = ""
    policy: PasswordPolicy = field(default_factory=PasswordPolicy)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The password and session top-level settings."""

    password_config: PasswordConfig
    bcrypt_rounds: int
    session_lifetime: int | None
    refreshable_access_token_lifetime: int | None
    refresh_token_lifetime: int | None
    nonrefreshable_access_token_lifetime: int | None


def _read_policy(r: Reader) -> PasswordPolicy:
    policy = PasswordPolicy(
        enabled=r.boolean("enabled", False),
        minimum_length=r.integer("minimum_length", 0, min=0),
        require_digit=r.boolean("require_digit", False),
        require_symbol=r.boolean("require_symbol", False),
        require_lowercase=r.boolean("require_lowercase", False),
        require_uppercase=r.boolean("require_uppercase", False),
    )
    r.finish()
    return policy


def read_password_config(r: Reader) -> PasswordConfig:
    """Read ``password_config`` from the top-level reader."""
    section = r.section("password_config")
    config = PasswordConfig(
        enabled=section.boolean("enabled", True),
        localdb_enabled=section.boolean("localdb_enabled", True),
        pepper=section.string("pepper", ""),
        policy=_read_policy(section.section("policy")),
    )
    section.finish()
    return config


def read_auth(r: Reader) -> AuthSettings:
    """Read passwords, hashing cost and token lifetimes, checking them against each other."""
    session_lifetime = r.optional_duration("session_lifetime")
    settings = AuthSettings(
        password_config=read_password_config(r),
        bcrypt_rounds=r.integer("bcrypt_rounds", DEFAULT_BCRYPT_ROUNDS, min=4, max=31),
        session_lifetime=session_lifetime,
        refreshable_access_token_lifetime=r.optional_duration(
            "refreshable_access_token_lifetime",
            DEFAULT_REFRESHABLE_ACCESS_TOKEN_LIFETIME,
        ),
        refresh_token_lifetime=r.optional_duration("refresh_token_lifetime"),
        nonrefreshable_access_token_lifetime=r.optional_duration("nonrefreshable_access_token_lifetime"),
    )
    if session_lifetime is not None:
        for key in (
            "refreshable_access_token_lifetime",
            "refresh_token_lifetime",
            "nonrefreshable_access_token_lifetime",
        ):
            lifetime = getattr(settings, key)
            # Synapse only checks an explicitly set refreshable lifetime, not the default.
            if key == "refreshable_access_token_lifetime" and key not in r.data:
                continue
            if lifetime is not None and lifetime > session_lifetime:
                r.error(
                    key,
                    f"must not exceed session_lifetime ({session_lifetime} ms), got {lifetime} ms",
                )
    return settings
