"""A newcomer's first hour, with matrix-nio over real sockets.

The operator generates a config, starts the server, creates an account with the
server's own CLI; then a real client (matrix-nio's AsyncClient) logs in, looks at
itself, manages its devices and logs out. Every assertion checks what the client
received. Runs once per storage engine; INTEROP_TARGET=synapse runs it against a
real Synapse instead, to prove the test right.
"""

from __future__ import annotations

import asyncio

import pytest
from nio import (
    DeleteDevicesAuthResponse,
    DeleteDevicesResponse,
    DevicesResponse,
    LoginError,
    LoginResponse,
    LogoutResponse,
    UpdateDeviceResponse,
    WhoamiError,
    WhoamiResponse,
)

from tests.interop import harness as h
from tests.interop.nio_client import RecordingClient

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

PASSWORD = "correct horse battery staple"


async def _login(
    server: h.RunningServer, user: str, password: str, device_name: str
) -> tuple[RecordingClient, LoginResponse]:
    client = RecordingClient(server.client_url, user)
    response = await client.login(password, device_name=device_name)
    if not isinstance(response, LoginResponse):
        await client.close()
        pytest.fail(f"login as {user} failed" + client.explain(response), pytrace=False)
    return client, response


async def _whoami_rejected(server: h.RunningServer, token: str, why: str) -> None:
    """A client holding `token` calls whoami and must get 401 M_UNKNOWN_TOKEN."""
    stale = RecordingClient(server.client_url)
    stale.access_token = token
    try:
        response = await stale.whoami()
        assert isinstance(response, WhoamiError), f"{why}: token still works" + stale.explain(response)
        assert response.status_code == "M_UNKNOWN_TOKEN", why + stale.explain(response)
        assert stale.last_status == 401, why + stale.explain(response)
    finally:
        await stale.close()


async def _newcomer(server: h.RunningServer, alice: str) -> None:
    laptop, login = await _login(server, "alice", PASSWORD, "alice laptop")
    phone = None
    try:
        assert login.user_id == alice, laptop.explain(login)
        assert login.device_id and login.access_token, laptop.explain(login)

        whoami = await laptop.whoami()
        assert isinstance(whoami, WhoamiResponse), laptop.explain(whoami)
        assert whoami.user_id == alice, laptop.explain(whoami)
        assert whoami.device_id == login.device_id, laptop.explain(whoami)
        assert whoami.is_guest is False, laptop.explain(whoami)

        # A second login is a second device with its own token.
        phone, second = await _login(server, "alice", PASSWORD, "alice phone")
        assert second.user_id == alice, phone.explain(second)
        assert second.device_id != login.device_id, phone.explain(second)
        assert second.access_token != login.access_token, phone.explain(second)

        devices = await laptop.devices()
        assert isinstance(devices, DevicesResponse), laptop.explain(devices)
        names = {device.id: device.display_name for device in devices.devices}
        # Subset, not equality: an operator tool may leave a device of its own (Synapse's does).
        assert names.get(login.device_id) == "alice laptop", laptop.explain(devices)
        assert names.get(second.device_id) == "alice phone", laptop.explain(devices)

        renamed = await laptop.update_device(login.device_id, {"display_name": "Alice's laptop"})
        assert isinstance(renamed, UpdateDeviceResponse), laptop.explain(renamed)
        devices = await laptop.devices()
        assert isinstance(devices, DevicesResponse), laptop.explain(devices)
        names = {device.id: device.display_name for device in devices.devices}
        assert names[login.device_id] == "Alice's laptop", laptop.explain(devices)
        assert names[second.device_id] == "alice phone", laptop.explain(devices)

        # Deleting a device needs user-interactive auth: first the 401 with the flows...
        challenge = await laptop.delete_devices([second.device_id])
        assert isinstance(challenge, DeleteDevicesAuthResponse), laptop.explain(challenge)
        assert laptop.last_status == 401, laptop.explain(challenge)
        assert challenge.session, laptop.explain(challenge)
        assert ["m.login.password"] in [flow.get("stages") for flow in challenge.flows], laptop.explain(challenge)

        # ...then the same request with the password stage completed.
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": PASSWORD,
            "session": challenge.session,
        }
        deleted = await laptop.delete_devices([second.device_id], auth=auth)
        assert isinstance(deleted, DeleteDevicesResponse), laptop.explain(deleted)
        devices = await laptop.devices()
        assert isinstance(devices, DevicesResponse), laptop.explain(devices)
        remaining = [device.id for device in devices.devices]
        assert login.device_id in remaining and second.device_id not in remaining, laptop.explain(devices)
        await _whoami_rejected(server, second.access_token, "the deleted device's access token")

        logout = await laptop.logout()
        assert isinstance(logout, LogoutResponse), laptop.explain(logout)
        await _whoami_rejected(server, login.access_token, "the logged-out access token")
    finally:
        await laptop.close()
        if phone is not None:
            await phone.close()


def test_newcomer_registers_logs_in_manages_devices_and_logs_out(
    homeserver: h.RunningServer,
) -> None:
    alice = homeserver.register_user("alice", PASSWORD)
    assert alice == f"@alice:{homeserver.server_name}"
    asyncio.run(_newcomer(homeserver, alice))


async def _login_rejected(server: h.RunningServer, user: str, password: str) -> None:
    client = RecordingClient(server.client_url, user)
    try:
        response = await client.login(password, device_name="should not exist")
        assert isinstance(response, LoginError), f"login as {user} with a bad password succeeded" + client.explain(
            response
        )
        assert response.status_code == "M_FORBIDDEN", client.explain(response)
        assert client.last_status == 403, client.explain(response)
    finally:
        await client.close()


def test_wrong_password_and_unknown_user_are_forbidden(
    homeserver: h.RunningServer,
) -> None:
    homeserver.register_user("carol", PASSWORD)
    asyncio.run(_login_rejected(homeserver, "carol", PASSWORD + " but wrong"))
    # An unknown user gets the same answer, so logins cannot probe for accounts.
    asyncio.run(_login_rejected(homeserver, "nobody-here", PASSWORD))


async def _login_and_whoami(server: h.RunningServer, user: str, expected_user_id: str) -> None:
    client, login = await _login(server, user, PASSWORD, f"{user} nio")
    try:
        assert login.user_id == expected_user_id, client.explain(login)
        whoami = await client.whoami()
        assert isinstance(whoami, WhoamiResponse), client.explain(whoami)
        assert whoami.user_id == expected_user_id, client.explain(whoami)
    finally:
        await client.close()


def test_synapse_register_new_matrix_user_then_nio_login(
    homeserver: h.RunningServer,
) -> None:
    """Synapse's operator tool works unchanged against the shared-secret admin endpoint."""
    bob = homeserver.register_user_with_synapse_tool("bob", PASSWORD, admin=True)
    assert bob == f"@bob:{homeserver.server_name}"
    asyncio.run(_login_and_whoami(homeserver, "bob", bob))
    # A fully-qualified user ID logs in too.
    asyncio.run(_login_and_whoami(homeserver, bob, bob))


def test_shared_secret_registration_rejects_a_wrong_secret(
    homeserver: h.RunningServer,
) -> None:
    script = h.venv_script("register_new_matrix_user")
    assert script is not None
    argv = [
        script,
        "-u",
        "mallory",
        "-p",
        PASSWORD,
        "--admin",
        "-k",
        "not-the-secret",
        homeserver.client_url,
    ]
    with pytest.raises(h.HarnessError, match="exited with"):
        h.run_command(argv, what="register_new_matrix_user with a wrong secret")
    asyncio.run(_login_rejected(homeserver, "mallory", PASSWORD))
