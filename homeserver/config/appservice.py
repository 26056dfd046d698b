"""Application service registrations: the files named by ``app_service_config_files``.

The key itself is read with the server keys (server.py); the files are read here, at
start-up and by ``homeserver check-config``, so both report the same problems.
"""

from __future__ import annotations

from homeserver.appservice.registration import AppServices, RegistrationError, load_registrations
from homeserver.config.reader import ConfigError


def load_app_services(paths: tuple[str, ...], server_name: str) -> AppServices:
    """Every registration, checked together; :class:`ConfigError` lists every problem."""
    try:
        return AppServices(load_registrations(paths, server_name))
    except RegistrationError as e:
        raise ConfigError([f"app_service_config_files: {line}" for line in e.errors]) from None
