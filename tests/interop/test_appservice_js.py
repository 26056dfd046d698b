"""A bridge written with another framework: matrix-appservice (npm; the AppService layer of
matrix-appservice-bridge) on Node, against our homeserver started by its CLI.

The framework writes the registration (AppServiceRegistration.outputAsYaml) that our server
loads; the bridge then registers a ghost, creates a room as that ghost, receives the person's
message and typing notification in transactions, answers with a massaged timestamp, and
answers a user query. Its lack of a ping endpoint is reported by our server as the spec says.
(matrix-bot-sdk and matrix-appservice-bridge load a native crypto module downloaded from
GitHub at install time, which is not reachable here; matrix-appservice has no such need.)
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.interop import harness as h
from tests.interop.bridge_support import Person
from tests.interop.conftest import ENGINE_PARAMS

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_matrix_appservice_node_bridge(our_homeserver: Any, js_sdk: Path, tmp_path: Path, engine: str) -> None:
    as_port = h.free_port()
    registration = tmp_path / "js-bridge.yaml"
    tokens: dict[str, Any] = {}

    def patch(config: dict[str, Any]) -> None:
        out = h.run_command(
            [
                "node",
                str(js_sdk / "appservice_bridge.mjs"),
                "register",
                str(registration),
                f"http://127.0.0.1:{as_port}",
                re.escape(config["server_name"]),
            ],
            what="appservice_bridge.mjs register",
        )
        tokens.update(json.loads(out.strip().splitlines()[-1][len("RESULT ") :]))
        config["app_service_config_files"] = [str(registration)]

    server = our_homeserver(engine=engine, patch_config=patch)
    result = asyncio.run(_scenario(server, js_sdk, as_port, tokens))

    assert result["registered"]["status"] == 200, result["registered"]
    assert result["registered"]["body"]["user_id"] == server.user_id("js_alice")
    # outside the namespace: refused
    assert result["outside"]["status"] == 403 and result["outside"]["body"]["errcode"] == "M_FORBIDDEN"
    # no /ping in this framework: the homeserver reports the service's 404, it does not hang
    assert result["ping"]["status"] == 502 and result["ping"]["body"]["errcode"] == "M_BAD_STATUS", result["ping"]
    assert result["ping"]["body"].get("status") == 404, result["ping"]
    assert result["wrongPing"]["status"] == 403, result["wrongPing"]
    person = server.user_id("paul")
    received = result["received"]
    assert {
        "type": "m.room.message",
        "sender": person,
        "room_id": result["roomId"],
        "body": "bonjour le pont",
    }.items() <= next(e for e in received if e["type"] == "m.room.message").items()
    joins = [e for e in received if e["type"] == "m.room.member" and e["state_key"] == person]
    assert [e["membership"] for e in joins] == ["invite", "join"], joins
    typing = [e for e in result["ephemeral"] if e["type"] == "m.typing"]
    assert typing and person in typing[-1]["content"]["user_ids"], result["ephemeral"]
    assert result["queried"] == [server.user_id("js_unseen")]


async def _scenario(server: h.RunningServer, js_dir: Path, as_port: int, tokens: dict[str, Any]) -> dict[str, Any]:
    paul = await Person.login(server, "paul")
    process = await asyncio.create_subprocess_exec(
        "node",
        str(js_dir / "appservice_bridge.mjs"),
        "run",
        server.client_url,
        str(as_port),
        tokens["id"],
        tokens["as_token"],
        tokens["hs_token"],
        server.server_name,
        paul.user_id,
        cwd=str(js_dir),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("READY "), line + (await process.stderr.read()).decode()
        room_id = line.split()[1]
        await paul.call("POST", f"/join/{urllib.parse.quote(room_id)}", {})
        await paul.send(room_id, "bonjour le pont")
        await paul.call(
            "PUT",
            f"/rooms/{urllib.parse.quote(room_id)}/typing/{urllib.parse.quote(paul.user_id)}",
            {"typing": True, "timeout": 5000},
        )
        echo = await paul.wait_message(room_id, "écho: bonjour le pont")
        assert echo["sender"] == server.user_id("js_alice") and echo["origin_server_ts"] == 1_200_000_000_000
        assert await paul.displayname(server.user_id("js_alice")) == "Alice (JS)"
        # a user of the namespace nobody has seen: the homeserver asks the bridge, which creates it
        assert await paul.displayname(server.user_id("js_unseen")) == "Créé à la demande"
        out, err = await asyncio.wait_for(process.communicate(b"DONE\n"), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = [line for line in out.decode().splitlines() if line.startswith("RESULT ")]
    assert lines, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result
