"""Core accounts: storage, password hashing, tokens, login, registration, UIA, admin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.services.account import AccountService
from homeserver.services.admin import AdminService
from homeserver.services.auth import AuthService, TokenLifetimes
from homeserver.services.login import LoginRatelimiters, LoginService
from homeserver.services.passwords import PasswordHasher
from homeserver.services.ratelimit import Rate, Ratelimiter
from homeserver.services.registration import RegistrationService
from homeserver.services.uia import UserInteractiveAuth
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.database import Database
from homeserver.storage.devices import DeviceRepository
from homeserver.storage.registration_tokens import RegistrationTokenRepository
from homeserver.storage.tokens import TokenRepository
from homeserver.storage.uia import UIARepository

RunInThread = Callable[..., defer.Deferred[Any]]


def rate(cfg: Any) -> Rate:
    """A ``Rate`` from a Synapse ``rc_*`` section (``per_second``, ``burst_count``)."""
    return Rate(float(cfg.per_second), float(cfg.burst_count))


@dataclass
class CoreAccounts:
    accounts: AccountRepository
    tokens: TokenRepository
    devices_repo: DeviceRepository
    registration_tokens: RegistrationTokenRepository
    hasher: PasswordHasher
    auth: AuthService
    login: LoginService
    registration: RegistrationService
    uia: UserInteractiveAuth
    account: AccountService
    admin: AdminService


async def _dummy_stage(auth: dict[str, Any], ctx: Any) -> bool:
    return True


def build_core_accounts(
    config: HomeserverConfig, *, clock: Clock, db: Database, run_in_thread: RunInThread
) -> CoreAccounts:
    accounts = AccountRepository(db)
    tokens = TokenRepository(db)
    devices_repo = DeviceRepository(db, tokens)
    reg_tokens = RegistrationTokenRepository(db)

    password_cfg = config.password_config
    hasher = PasswordHasher(rounds=config.bcrypt_rounds, pepper=password_cfg.pepper, run_in_thread=run_in_thread)
    auth = AuthService(
        clock=clock,
        accounts=accounts,
        devices=devices_repo,
        tokens=tokens,
        lifetimes=TokenLifetimes(
            refreshable_access_token_lifetime=config.refreshable_access_token_lifetime,
            refresh_token_lifetime=config.refresh_token_lifetime,
            nonrefreshable_access_token_lifetime=config.nonrefreshable_access_token_lifetime,
            session_lifetime=config.session_lifetime,
        ),
    )
    login = LoginService(
        server_name=config.server_name,
        clock_ms=clock.time_msec,
        accounts=accounts,
        devices=devices_repo,
        auth=auth,
        hasher=hasher,
        ratelimiters=LoginRatelimiters(
            address=Ratelimiter(clock, rate(config.rc_login.address)),
            account=Ratelimiter(clock, rate(config.rc_login.account)),
            failed_attempts=Ratelimiter(clock, rate(config.rc_login.failed_attempts)),
        ),
        password_login_enabled=password_cfg.enabled and password_cfg.localdb_enabled,
    )
    registration = RegistrationService(
        server_name=config.server_name,
        clock=clock,
        accounts=accounts,
        registration_tokens=reg_tokens,
        hasher=hasher,
        settings=config.registration,
        password_policy=password_cfg.policy,
    )
    uia = UserInteractiveAuth(
        clock=clock,
        sessions=UIARepository(db),
        stages={
            "m.login.dummy": _dummy_stage,
            "m.login.password": login.password_stage,
            "m.login.registration_token": registration.registration_token_stage,
        },
    )
    account = AccountService(
        accounts=accounts,
        devices=devices_repo,
        tokens=tokens,
        hasher=hasher,
        password_policy=password_cfg.policy,
        password_changes_enabled=password_cfg.enabled and password_cfg.localdb_enabled,
    )
    return CoreAccounts(
        accounts=accounts,
        tokens=tokens,
        devices_repo=devices_repo,
        registration_tokens=reg_tokens,
        hasher=hasher,
        auth=auth,
        login=login,
        registration=registration,
        uia=uia,
        account=account,
        admin=AdminService(clock=clock, accounts=accounts, registration_tokens=reg_tokens),
    )
