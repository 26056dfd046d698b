"""Registration, login, tokens, password changes and deactivation over the real HTTP API."""

from __future__ import annotations

from collections.abc import Callable

import pytest_twisted

from homeserver.services.auth import hash_token
from tests.api.conftest import HSFixture
from tests.api.helpers import login, password_auth, register, shared_secret_mac

REG = "/_matrix/client/v3/register"


@pytest_twisted.ensureDeferred
async def test_register_login_whoami_logout(server: HSFixture) -> None:
    c = server.client
    reg = await register(c, "alice", device_id="PHONE", initial_device_display_name="Alice's phone")
    assert reg["user_id"] == "@alice:test.local" and reg["device_id"] == "PHONE"
    who = await c.get("/_matrix/client/v3/account/whoami", token=reg["access_token"])
    assert who.body == {"user_id": "@alice:test.local", "device_id": "PHONE", "is_guest": False}

    session = await login(c, "alice")
    assert session["user_id"] == "@alice:test.local" and session["device_id"] != "PHONE"
    # Full user IDs and any case of the localpart log in too.
    assert (await login(c, "@alice:test.local"))["user_id"] == "@alice:test.local"
    assert (await login(c, "ALICE"))["user_id"] == "@alice:test.local"

    assert (await c.post("/_matrix/client/v3/logout", {}, token=session["access_token"])).code == 200
    gone = await c.get("/_matrix/client/v3/account/whoami", token=session["access_token"])
    assert (gone.code, gone.body["errcode"], gone.body["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", False)
    # Logging out deleted that device, and only that one.
    devices = await c.get("/_matrix/client/v3/devices", token=reg["access_token"])
    assert session["device_id"] not in [d["device_id"] for d in devices.body["devices"]]

    assert (await c.post("/_matrix/client/v3/logout/all", {}, token=reg["access_token"])).code == 200
    assert (await c.get("/_matrix/client/v3/account/whoami", token=reg["access_token"])).code == 401


@pytest_twisted.ensureDeferred
async def test_registration_errors_change_nothing(server: HSFixture) -> None:
    """Bad input tried: taken, upper-case, empty, numeric and illegal names; weak types."""
    c = server.client
    await register(c, "bob")
    for username, errcode in [
        ("bob", "M_USER_IN_USE"),
        ("BOB", "M_INVALID_USERNAME"),
        ("bad name", "M_INVALID_USERNAME"),
        ("", "M_INVALID_USERNAME"),
        ("12345", "M_INVALID_USERNAME"),
        ("é", "M_INVALID_USERNAME"),
        ("x" * 300, "M_INVALID_PARAM"),
    ]:
        resp = await c.post(REG, {"username": username, "password": "pw-long-enough"})
        assert (resp.code, resp.body["errcode"]) == (400, errcode), username
    resp = await c.post(REG, {"username": "carol", "password": 12})
    assert (resp.code, resp.body["errcode"]) == (400, "M_BAD_JSON") and "password" in resp.body["error"]
    resp = await c.post(REG + "?kind=robot", {"username": "carol", "password": "x"})
    assert (resp.code, resp.body["errcode"]) == (400, "M_INVALID_PARAM")
    resp = await c.post(REG, {"username": "carol", "password": "x", "auth": {"type": "m.login.dummy", "session": "forged"}})
    assert resp.code == 400
    assert (await c.get("/_matrix/client/v3/register/available?username=carol")).body == {"available": True}
    taken = await c.get("/_matrix/client/v3/register/available?username=bob")
    assert taken.body["errcode"] == "M_USER_IN_USE"


@pytest_twisted.ensureDeferred
async def test_registration_can_be_closed(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(enable_registration=False)
    resp = await server.client.post(REG, {"username": "eve", "password": "pw"})
    assert (resp.code, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    guest = await server.client.post(REG + "?kind=guest", {})
    assert (guest.code, guest.body["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_registration_params_may_be_sent_once(server: HSFixture) -> None:
    first = await server.client.post(REG, {"username": "dora", "password": "secret-pass"})
    session = first.body["session"]
    assert first.body["flows"] == [{"stages": ["m.login.dummy"]}]
    done = await server.client.post(REG, {"auth": {"type": "m.login.dummy", "session": session}})
    assert done.code == 200 and done.body["user_id"] == "@dora:test.local"
    assert (await login(server.client, "dora", "secret-pass"))["user_id"] == "@dora:test.local"


@pytest_twisted.ensureDeferred
async def test_registration_tokens(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(registration_requires_token=True)
    c = server.client
    admin_id = await server.hs.services.registration.create_account("admin", "admin-pass", admin=True)
    admin = await login(c, admin_id, "admin-pass")
    created = await c.post(
        "/_synapse/admin/v1/registration_tokens/new", {"token": "invite-1", "uses_allowed": 1}, token=admin["access_token"]
    )
    assert created.code == 200 and created.body["token"] == "invite-1"
    valid = await c.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=invite-1")
    assert valid.body == {"valid": True}

    first = await c.post(REG, {"username": "newbie", "password": "pw-pw-pw"})
    assert first.body["flows"] == [{"stages": ["m.login.registration_token"]}]
    session = first.body["session"]
    wrong = await c.post(
        REG, {"username": "newbie", "password": "pw-pw-pw", "auth": {"type": "m.login.registration_token", "token": "nope", "session": session}}
    )
    assert wrong.code == 401 and wrong.body["errcode"] == "M_UNAUTHORIZED"
    done = await c.post(
        REG, {"username": "newbie", "password": "pw-pw-pw", "auth": {"type": "m.login.registration_token", "token": "invite-1", "session": session}}
    )
    assert done.code == 200, done.body
    # Used up: the next registration is refused at the token stage.
    again = await c.post(REG, {"username": "other", "password": "pw-pw-pw"})
    refused = await c.post(
        REG,
        {"username": "other", "password": "pw-pw-pw", "auth": {"type": "m.login.registration_token", "token": "invite-1", "session": again.body["session"]}},
    )
    assert refused.code == 401 and refused.body["errcode"] == "M_UNAUTHORIZED"
    # Non-admins can't manage tokens.
    not_admin = await c.get("/_synapse/admin/v1/registration_tokens", token=done.body["access_token"])
    assert (not_admin.code, not_admin.body["errcode"]) == (403, "M_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_rate_limit(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(rc_login={"failed_attempts": {"per_second": 0.01, "burst_count": 2}})
    c = server.client
    await register(c, "frank")
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "frank"}, "password": "wrong"}
    for _ in range(2):
        resp = await c.post("/_matrix/client/v3/login", body)
        assert (resp.code, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    limited = await c.post("/_matrix/client/v3/login", body)
    assert (limited.code, limited.body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert limited.body["retry_after_ms"] > 0
    unknown = await c.post("/_matrix/client/v3/login", {**body, "identifier": {"type": "m.id.user", "user": "nobody"}})
    assert (unknown.code, unknown.body["errcode"]) == (403, "M_FORBIDDEN")
    odd = await c.post("/_matrix/client/v3/login", {**body, "identifier": {"type": "m.id.phone"}})
    assert odd.code == 400
    other_type = await c.post("/_matrix/client/v3/login", {"type": "m.login.token", "token": "x"})
    assert (other_type.code, other_type.body["errcode"]) == (400, "M_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_forged_and_expired_tokens(server: HSFixture) -> None:
    c = server.client
    reg = await register(c, "gina")
    forged = await c.get("/_matrix/client/v3/account/whoami", token=reg["access_token"] + "x")
    assert (forged.code, forged.body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    bad_header = await c.get("/_matrix/client/v3/account/whoami", headers={"Authorization": "Basic abc"})
    assert (bad_header.code, bad_header.body["errcode"]) == (401, "M_MISSING_TOKEN")
    # The legacy query parameter works.
    legacy = await c.get(f"/_matrix/client/v3/account/whoami?access_token={reg['access_token']}")
    assert legacy.body["user_id"] == "@gina:test.local"
    tokens = server.hs.services.auth._tokens  # noqa: SLF001 - plant an already-expired token
    await tokens.add_access_token(hash_token("expired"), "@gina:test.local", reg["device_id"], 0, valid_until_ts=1)
    expired = await c.get("/_matrix/client/v3/account/whoami", token="expired")
    assert (expired.code, expired.body["errcode"], expired.body["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", True)


@pytest_twisted.ensureDeferred
async def test_refresh_tokens(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(refreshable_access_token_lifetime="5m")
    c = server.client
    await register(c, "hank")
    session = await login(c, "hank", refresh_token=True)
    assert session["expires_in_ms"] == 300_000 and "refresh_token" in session
    refreshed = await c.post("/_matrix/client/v3/refresh", {"refresh_token": session["refresh_token"]})
    assert refreshed.code == 200 and refreshed.body["refresh_token"] != session["refresh_token"]
    assert (await c.get("/_matrix/client/v3/account/whoami", token=refreshed.body["access_token"])).code == 200
    reused = await c.post("/_matrix/client/v3/refresh", {"refresh_token": session["refresh_token"]})
    assert (reused.code, reused.body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # Using the new refresh token retires the old access token.
    again = await c.post("/_matrix/client/v3/refresh", {"refresh_token": refreshed.body["refresh_token"]})
    assert again.code == 200
    assert (await c.get("/_matrix/client/v3/account/whoami", token=session["access_token"])).code == 401


@pytest_twisted.ensureDeferred
async def test_change_password(server: HSFixture) -> None:
    c = server.client
    reg = await register(c, "ivy", password="old-password")
    other = await login(c, "ivy", "old-password")
    url = "/_matrix/client/v3/account/password"
    first = await c.post(url, {"new_password": "new-password"}, token=reg["access_token"])
    assert first.code == 401 and first.body["flows"] == [{"stages": ["m.login.password"]}]
    wrong = await c.post(
        url,
        {"new_password": "new-password", "auth": password_auth("@ivy:test.local", "nope", first.body["session"])},
        token=reg["access_token"],
    )
    assert (wrong.code, wrong.body["errcode"]) == (401, "M_FORBIDDEN")
    ok = await c.post(
        url,
        {"new_password": "new-password", "auth": password_auth("@ivy:test.local", "old-password", first.body["session"])},
        token=reg["access_token"],
    )
    assert ok.code == 200, ok.body
    assert (await c.get("/_matrix/client/v3/account/whoami", token=reg["access_token"])).code == 200
    assert (await c.get("/_matrix/client/v3/account/whoami", token=other["access_token"])).code == 401
    bad = await c.post(
        "/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "ivy"}, "password": "old-password"},
    )
    assert bad.code == 403
    await login(c, "ivy", "new-password")


@pytest_twisted.ensureDeferred
async def test_uia_password_must_be_the_requesters(server: HSFixture) -> None:
    c = server.client
    ivy = await register(c, "ivy", password="ivy-password")
    await register(c, "jack", password="jack-password")
    first = await c.post("/_matrix/client/v3/account/password", {"new_password": "x1x1x1x1"}, token=ivy["access_token"])
    stolen = await c.post(
        "/_matrix/client/v3/account/password",
        {"new_password": "x1x1x1x1", "auth": password_auth("@jack:test.local", "jack-password", first.body["session"])},
        token=ivy["access_token"],
    )
    assert stolen.code == 401 and stolen.body["errcode"] == "M_FORBIDDEN"


@pytest_twisted.ensureDeferred
async def test_password_policy(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(password_config={"policy": {"enabled": True, "minimum_length": 10, "require_digit": True}})
    resp = await server.client.post(REG, {"username": "kim", "password": "short1"})
    assert (resp.code, resp.body["errcode"]) == (400, "M_WEAK_PASSWORD") and "10" in resp.body["error"]
    resp = await server.client.post(REG, {"username": "kim", "password": "longenough-nodigit"})
    assert (resp.code, resp.body["errcode"]) == (400, "M_WEAK_PASSWORD") and "digit" in resp.body["error"]
    assert (await register(server.client, "kim", password="longenough-1"))["user_id"] == "@kim:test.local"


@pytest_twisted.ensureDeferred
async def test_deactivate(server: HSFixture) -> None:
    c = server.client
    reg = await register(c, "leo", password="leo-password")
    url = "/_matrix/client/v3/account/deactivate"
    first = await c.post(url, {}, token=reg["access_token"])
    done = await c.post(
        url, {"auth": password_auth("@leo:test.local", "leo-password", first.body["session"])}, token=reg["access_token"]
    )
    assert done.code == 200 and done.body["id_server_unbind_result"] == "no-support"
    assert (await c.get("/_matrix/client/v3/account/whoami", token=reg["access_token"])).code == 401
    relogin = await c.post(
        "/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "leo"}, "password": "leo-password"},
    )
    assert relogin.code == 403
    # The name stays taken.
    assert (await c.get("/_matrix/client/v3/register/available?username=leo")).body["errcode"] == "M_USER_IN_USE"


@pytest_twisted.ensureDeferred
async def test_shared_secret_registration(server: HSFixture) -> None:
    c = server.client
    secret = "shared-secret-for-tests"
    nonce = (await c.get("/_synapse/admin/v1/register")).body["nonce"]
    body = {"nonce": nonce, "username": "ops", "password": "ops-password", "admin": True}
    bad = await c.post("/_synapse/admin/v1/register", {**body, "mac": "00" * 20})
    assert (bad.code, bad.body["errcode"]) == (403, "M_FORBIDDEN")
    # A nonce is single-use, even after a failed attempt.
    replay = await c.post(
        "/_synapse/admin/v1/register", {**body, "mac": shared_secret_mac(secret, nonce, "ops", "ops-password", True)}
    )
    assert replay.code == 400
    nonce = (await c.get("/_synapse/admin/v1/register")).body["nonce"]
    ok = await c.post(
        "/_synapse/admin/v1/register",
        {**body, "nonce": nonce, "mac": shared_secret_mac(secret, nonce, "ops", "ops-password", True)},
    )
    assert ok.code == 200 and ok.body["user_id"] == "@ops:test.local" and ok.body["access_token"]
    user = await server.hs.services.registration._accounts.get_user("@ops:test.local")  # noqa: SLF001
    assert user is not None and user.is_admin
