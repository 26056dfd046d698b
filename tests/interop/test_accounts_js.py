"""matrix-js-sdk (the SDK behind Element Web) signs in with a password over real sockets.

js/login.mjs does what an app's sign-in screen does: GET /versions, GET /login, POST
/login, then whoami and the device list, then logout. It prints one JSON result,
which this test checks. Runs once per storage engine; INTEROP_TARGET=synapse runs it
against a real Synapse instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.interop import harness as h
from tests.interop import js_node

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

PASSWORD = "js sdk password 1"


def _run_login(server: h.RunningServer, user: str, password: str, *extra: str) -> dict[str, Any]:
    try:
        return js_node.run_node_script(
            "login.mjs",
            [
                "--base-url",
                server.client_url,
                "--user",
                user,
                "--password",
                password,
                *extra,
            ],
        )
    except h.HarnessError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def _show(result: dict[str, Any]) -> str:
    return "\nmatrix-js-sdk result:\n" + json.dumps(result, indent=1)


def test_js_sdk_password_login_whoami_devices_logout(js_sdk: Path, homeserver: h.RunningServer) -> None:
    dana = homeserver.register_user("dana", PASSWORD)
    result = _run_login(homeserver, "dana", PASSWORD, "--device-name", "dana js-sdk", "--logout")
    assert result["ok"] is True, _show(result)
    steps = result["steps"]

    versions = steps["versions"]["versions"]
    assert any(v.startswith("v1.") for v in versions), _show(result)
    flows = [flow["type"] for flow in steps["loginFlows"]["flows"]]
    assert "m.login.password" in flows, _show(result)

    login = steps["login"]
    assert login["user_id"] == dana, _show(result)
    assert login["device_id"] and login["access_token"], _show(result)

    assert steps["whoami"]["user_id"] == dana, _show(result)
    assert steps["whoami"]["device_id"] == login["device_id"], _show(result)

    devices = {device["device_id"]: device for device in steps["devices"]["devices"]}
    assert login["device_id"] in devices, _show(result)
    assert devices[login["device_id"]].get("display_name") == "dana js-sdk", _show(result)

    assert steps["logout"] == {}, _show(result)
    after = steps["whoamiAfterLogout"]
    assert "error" in after, "the access token still works after logout" + _show(result)
    assert after["error"]["errcode"] == "M_UNKNOWN_TOKEN", _show(result)
    assert after["error"]["httpStatus"] == 401, _show(result)


def test_js_sdk_wrong_password_is_forbidden(js_sdk: Path, homeserver: h.RunningServer) -> None:
    homeserver.register_user("erin", PASSWORD)
    result = _run_login(homeserver, "erin", "not " + PASSWORD)
    assert result["ok"] is False, _show(result)
    assert result["failedStep"] == "login", _show(result)
    assert result["error"]["errcode"] == "M_FORBIDDEN", _show(result)
    assert result["error"]["httpStatus"] == 403, _show(result)
