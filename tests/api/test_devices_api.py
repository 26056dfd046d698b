"""Devices over the HTTP API: list, read, rename, delete behind UIA."""

from __future__ import annotations

import pytest_twisted

from tests.api.conftest import HSFixture
from tests.api.helpers import login, password_auth, register


@pytest_twisted.ensureDeferred
async def test_device_lifecycle(server: HSFixture) -> None:
    c = server.client
    reg = await register(c, "mia", password="mia-password", device_id="DESK")
    c.token = reg["access_token"]
    laptop = await login(c, "mia", "mia-password", device_id="LAPTOP", initial_device_display_name="Laptop")
    phone = await login(c, "mia", "mia-password")

    listed = await c.get("/_matrix/client/v3/devices")
    ids = sorted(d["device_id"] for d in listed.body["devices"])
    assert ids == sorted(["DESK", "LAPTOP", phone["device_id"]])
    one = await c.get("/_matrix/client/v3/devices/LAPTOP")
    assert one.body["display_name"] == "Laptop" and one.body["last_seen_ts"] is None

    assert (await c.put("/_matrix/client/v3/devices/LAPTOP", {"display_name": "Old laptop"})).code == 200
    assert (await c.get("/_matrix/client/v3/devices/LAPTOP")).body["display_name"] == "Old laptop"
    missing = await c.put("/_matrix/client/v3/devices/NOPE", {"display_name": "x"})
    assert (missing.code, missing.body["errcode"]) == (404, "M_NOT_FOUND")
    wrong_type = await c.put("/_matrix/client/v3/devices/LAPTOP", {"display_name": 3})
    assert (wrong_type.code, wrong_type.body["errcode"]) == (400, "M_BAD_JSON")

    # DELETE needs the password; a wrong one leaves the device in place.
    first = await c.delete("/_matrix/client/v3/devices/LAPTOP", {})
    assert first.code == 401 and first.body["flows"] == [{"stages": ["m.login.password"]}]
    wrong = await c.delete(
        "/_matrix/client/v3/devices/LAPTOP", {"auth": password_auth("@mia:test.local", "bad", first.body["session"])}
    )
    assert wrong.code == 401 and wrong.body["errcode"] == "M_FORBIDDEN"
    assert (await c.get("/_matrix/client/v3/devices/LAPTOP")).code == 200
    ok = await c.delete(
        "/_matrix/client/v3/devices/LAPTOP",
        {"auth": password_auth("@mia:test.local", "mia-password", first.body["session"])},
    )
    assert ok.code == 200
    assert (await c.get("/_matrix/client/v3/devices/LAPTOP")).code == 404
    assert (await c.get("/_matrix/client/v3/account/whoami", token=laptop["access_token"])).code == 401

    # The same session can't be replayed for another operation.
    replay = await c.delete(
        "/_matrix/client/v3/devices/" + phone["device_id"],
        {"auth": password_auth("@mia:test.local", "mia-password", first.body["session"])},
    )
    assert replay.code in (400, 403)

    first = await c.post("/_matrix/client/v3/delete_devices", {"devices": [phone["device_id"], "UNKNOWN"]})
    assert first.code == 401
    ok = await c.post(
        "/_matrix/client/v3/delete_devices",
        {
            "devices": [phone["device_id"], "UNKNOWN"],
            "auth": password_auth("@mia:test.local", "mia-password", first.body["session"]),
        },
    )
    assert ok.code == 200
    remaining = await c.get("/_matrix/client/v3/devices")
    assert [d["device_id"] for d in remaining.body["devices"]] == ["DESK"]
    bad = await c.post("/_matrix/client/v3/delete_devices", {"devices": "DESK"})
    assert (bad.code, bad.body["errcode"]) == (400, "M_BAD_JSON")


@pytest_twisted.ensureDeferred
async def test_devices_are_private(server: HSFixture) -> None:
    c = server.client
    nia = await register(c, "nia", device_id="NIA1")
    oto = await register(c, "oto")
    resp = await c.get("/_matrix/client/v3/devices/NIA1", token=oto["access_token"])
    assert resp.code == 404
    assert (await c.get("/_matrix/client/v3/devices/NIA1", token=nia["access_token"])).code == 200
