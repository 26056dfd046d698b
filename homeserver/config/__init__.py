"""The homeserver's configuration: typed, frozen sections parsed from homeserver.yaml.

Keys follow Synapse's homeserver.yaml wherever Synapse has the concept, so operators can
carry their knowledge (and most of their file) over.  Every supported key and its
default is documented in config/homeserver.sample.yaml.

    config, warnings = load_config("/etc/homeserver/homeserver.yaml")

Errors are collected across the whole file and raised together as one
:class:`ConfigError` (``listeners[0].port: expected an integer 1-65535, got "abc"``);
unknown keys only produce warnings, which the caller logs.
"""

from homeserver.config.auth import PasswordConfig, PasswordPolicy
from homeserver.config.database import DatabaseConfig, parse_postgres_url
from homeserver.config.emailconfig import EmailConfig
from homeserver.config.generate import generate_config
from homeserver.config.homeserver import HomeserverConfig
from homeserver.config.keys import TrustedKeyServer
from homeserver.config.listeners import ListenerConfig, ListenerResource
from homeserver.config.loader import load_config, parse_config
from homeserver.config.ratelimiting import (
    FederationRateLimitConfig,
    InviteRateLimits,
    JoinRateLimits,
    LoginRateLimits,
    PresenceRateLimits,
    RateLimitConfig,
)
from homeserver.config.reader import ConfigError
from homeserver.config.registration import RegistrationConfig
from homeserver.config.rooms import UserDirectoryConfig
from homeserver.config.units import parse_duration, parse_size

__all__ = [
    "ConfigError",
    "DatabaseConfig",
    "EmailConfig",
    "FederationRateLimitConfig",
    "HomeserverConfig",
    "InviteRateLimits",
    "JoinRateLimits",
    "ListenerConfig",
    "ListenerResource",
    "LoginRateLimits",
    "PasswordConfig",
    "PasswordPolicy",
    "PresenceRateLimits",
    "RateLimitConfig",
    "RegistrationConfig",
    "TrustedKeyServer",
    "UserDirectoryConfig",
    "generate_config",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_postgres_url",
    "parse_size",
]
