"""Account, device and token repositories, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from homeserver.storage.accounts import AccountRepository
from homeserver.storage.database import Database
from homeserver.storage.devices import DeviceRepository
from homeserver.storage.registration_tokens import RegistrationTokenRepository
from homeserver.storage.tokens import TokenRepository


@pytest_twisted.ensureDeferred
async def test_create_user_once(db: Database) -> None:
    accounts = AccountRepository(db)
    assert await accounts.create_user("@alice:test", "hash", 1, is_admin=True)
    assert not await accounts.create_user("@alice:test", "other", 2)
    user = await accounts.get_user("@alice:test")
    assert user is not None and user.is_admin and user.password_hash == "hash" and not user.deactivated
    assert await accounts.find_user_case_insensitive("@ALICE:test") == ["@alice:test"]
    assert await accounts.get_user("@bob:test") is None


@pytest_twisted.ensureDeferred
async def test_deactivate_clears_password(db: Database) -> None:
    accounts = AccountRepository(db)
    await accounts.create_user("@alice:test", "hash", 1)
    await accounts.deactivate("@alice:test")
    user = await accounts.get_user("@alice:test")
    assert user is not None and user.deactivated and user.password_hash is None


@pytest_twisted.ensureDeferred
async def test_devices_and_their_tokens(db: Database) -> None:
    accounts, tokens = AccountRepository(db), TokenRepository(db)
    devices = DeviceRepository(db, tokens)
    await accounts.create_user("@alice:test", "hash", 1)
    assert await devices.store_device("@alice:test", "DEV1", "Phone", 1)
    assert not await devices.store_device("@alice:test", "DEV1", "Other name", 2)
    await devices.store_device("@alice:test", "DEV2", None, 3)
    await tokens.add_access_token("h1", "@alice:test", "DEV1", 1)
    await tokens.add_access_token("h2", "@alice:test", "DEV2", 1)
    assert [d.device_id for d in await devices.get_devices("@alice:test")] == ["DEV1", "DEV2"]
    assert (await devices.get_device("@alice:test", "DEV1")).display_name == "Phone"  # type: ignore[union-attr]

    assert await devices.update_display_name("@alice:test", "DEV2", "Laptop")
    assert not await devices.update_display_name("@alice:test", "NOPE", "x")

    await devices.delete_devices("@alice:test", ["DEV1"])
    assert await tokens.get_access_token("h1") is None
    info = await tokens.get_access_token("h2")
    assert info is not None and info.device_id == "DEV2" and not info.is_guest

    deleted = await devices.delete_all_devices("@alice:test", except_device_id="DEV2")
    assert deleted == []
    assert await devices.delete_all_devices("@alice:test") == ["DEV2"]
    assert await tokens.get_access_token("h2") is None


@pytest_twisted.ensureDeferred
async def test_refresh_token_rotation(db: Database) -> None:
    accounts, tokens = AccountRepository(db), TokenRepository(db)
    await accounts.create_user("@alice:test", "hash", 1)
    await tokens.add_refresh_token("r1", "@alice:test", "D", 1, None, None)
    await tokens.add_access_token("a1", "@alice:test", "D", 1, refresh_token_hash="r1")
    await tokens.add_refresh_token("r2", "@alice:test", "D", 2, None, None)
    assert await tokens.replace_refresh_token("r1", "r2")
    assert not await tokens.replace_refresh_token("r1", "r3")  # only once
    await tokens.forget_predecessors("r2")
    assert await tokens.get_refresh_token("r1") is None
    assert await tokens.get_access_token("a1") is None
    assert await tokens.get_refresh_token("r2") is not None


@pytest_twisted.ensureDeferred
async def test_registration_token_uses_are_limited(db: Database) -> None:
    repo = RegistrationTokenRepository(db)
    assert await repo.create("tok", 2, None)
    assert not await repo.create("tok", 5, None)
    # Concurrent reservations never exceed uses_allowed.
    results = await defer.gatherResults(
        [defer.ensureDeferred(repo.reserve("tok", 0)) for _ in range(5)]
    )
    assert sorted(results) == [False, False, False, True, True]
    await repo.complete("tok")
    token = await repo.get("tok")
    assert token is not None and token.pending == 1 and token.completed == 1 and not token.is_valid(0)
    assert await repo.create("old", None, 10)
    assert not await repo.reserve("old", 11)
