"""What encrypting and presence-aware bridges get in their transactions, both engines:
presence (receive_ephemeral), device-list changes and one-time-key counts (MSC3202),
to-device messages (MSC2409), and what survives a stop of the homeserver.

Durability, compared with Synapse: Synapse stores a transaction's event IDs only, so the
ephemeral data and to-device messages of a transaction that fails, or still queued in memory
when it stops, are dropped.  Here they are queued in the same table as events and kept until
the service acknowledges them; to-device messages that were never queued stay in the device
inboxes and are read again at start-up.  Typing, receipts, presence and device-list changes
that happen while the host is not running are not replayed (it starts from the streams'
current positions), as in Synapse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted

from tests.api.conftest import HSFixture
from tests.api.test_appservice_api import (
    AS_TOKEN,
    GHOST,
    V3,
    Env,
    as_user,
    new_user,
    register_ghost,
    running_env,
    wait_for,
)

BOT = "@bridgebot:test.local"


@pytest_twisted.async_yield_fixture
async def env(make_server: Callable[..., HSFixture], tmp_path: Path) -> AsyncIterator[Env]:
    async with running_env(make_server, tmp_path) as e:
        yield e


async def login_device(env: Env, user_id: str, device_id: str) -> None:
    resp = await env.bridge.post(
        f"{V3}/login",
        {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": user_id},
            "device_id": device_id,
        },
    )
    assert resp.code == 200, resp.body


async def upload_one_time_keys(env: Env, user_id: str, device_id: str, count: int) -> None:
    keys = {f"signed_curve25519:K{i}": {"key": f"key{i}", "signatures": {}} for i in range(count)}
    path = as_user(f"{V3}/keys/upload", user_id) + f"&org.matrix.msc3202.device_id={device_id}"
    resp = await env.bridge.post(path, {"one_time_keys": keys})
    assert resp.code == 200 and resp.body["one_time_key_counts"]["signed_curve25519"] == count, resp.body


def otk_counts(env: Env) -> list[dict[str, Any]]:
    return [
        body["org.matrix.msc3202.device_one_time_keys_count"]
        for _, body in env.fake.transactions
        if "org.matrix.msc3202.device_one_time_keys_count" in body
    ]


async def bridged_room(env: Env, bob: Any) -> str:
    room = str((await bob.post(f"{V3}/createRoom", {"invite": [GHOST]})).body["room_id"])
    assert (await env.bridge.post(as_user(f"{V3}/join/{room}", GHOST), {})).code == 200
    return room


@pytest_twisted.ensureDeferred
async def test_presence_device_lists_and_one_time_key_counts(env: Env) -> None:
    bob = await new_user(env, "bob")
    await register_ghost(env)
    await login_device(env, BOT, "BOTDEV")
    await login_device(env, GHOST, "GHOSTDEV")
    await upload_one_time_keys(env, BOT, "BOTDEV", 3)
    await upload_one_time_keys(env, GHOST, "GHOSTDEV", 2)
    room = await bridged_room(env, bob)
    await wait_for(lambda: any(e.get("state_key") == GHOST for e in env.fake.events()))

    # presence of someone sharing a room with the bridge's users
    assert (await bob.put(f"{V3}/presence/@bob:test.local/status", {"presence": "online"})).code == 200
    await wait_for(lambda: any(e["type"] == "m.presence" for e in env.fake.field("ephemeral")))
    presence = next(e for e in env.fake.field("ephemeral") if e["type"] == "m.presence")
    assert presence["sender"] == "@bob:test.local" and presence["content"]["presence"] == "online"

    # bob's devices change (a new name): the bridge learns whose device list to refetch
    devices = (await bob.get(f"{V3}/devices")).body["devices"]
    renamed = await bob.put(f"{V3}/devices/{devices[0]['device_id']}", {"display_name": "laptop"})
    assert renamed.code == 200

    def changed() -> list[str]:
        return [
            u for _, b in env.fake.transactions for u in b.get("org.matrix.msc3202.device_lists", {}).get("changed", [])
        ]

    await wait_for(lambda: "@bob:test.local" in changed())

    # to-device for the ghost's device: delivered, with that device's key counts
    sent = await bob.put(f"{V3}/sendToDevice/m.test/otk1", {"messages": {GHOST: {"GHOSTDEV": {"n": 1}}}})
    assert sent.code == 200
    await wait_for(lambda: bool(env.fake.field("de.sorunome.msc2409.to_device")))
    counts = otk_counts(env)
    assert counts, "no one-time-key counts in any transaction"
    assert counts[-1][BOT]["BOTDEV"]["signed_curve25519"] == 3
    assert counts[-1][GHOST]["GHOSTDEV"]["signed_curve25519"] == 2
    # Synapse's other spelling of the same field is there too
    last_with_counts = next(
        b for _, b in reversed(env.fake.transactions) if "org.matrix.msc3202.device_one_time_keys_count" in b
    )
    assert last_with_counts["org.matrix.msc3202.device_one_time_key_counts"] == counts[-1]

    # a key claimed by someone starting an Olm session: the next transaction says so
    claim = await bob.post(f"{V3}/keys/claim", {"one_time_keys": {BOT: {"BOTDEV": "signed_curve25519"}}})
    assert list(claim.body["one_time_keys"][BOT]["BOTDEV"]) == ["signed_curve25519:K0"], claim.body
    await bob.put(f"{V3}/rooms/{room}/send/m.room.message/c1", {"msgtype": "m.text", "body": "after claim"})
    await wait_for(lambda: bool(otk_counts(env)) and otk_counts(env)[-1][BOT]["BOTDEV"]["signed_curve25519"] == 2)


@pytest_twisted.ensureDeferred
async def test_ephemeral_without_asking_gets_none(env: Env, tmp_path: Any) -> None:
    """A service without receive_ephemeral / MSC3202 gets events only (bad input: a flag set
    to a string is refused at start-up, by key)."""
    from tests.api.test_appservice_api import start_server, write_registration

    path = write_registration(tmp_path, env.fake.port.getHost().port, receive_ephemeral=False)
    path_yaml = tmp_path / "bridge.yaml"
    text = path_yaml.read_text().replace("org.matrix.msc3202: true", "org.matrix.msc3202: false")
    path_yaml.write_text(text)
    assert env.server.hs.appservices is not None
    await env.server.hs.appservices.stop()
    env.server = await start_server(env.make, path)
    env.bridge = env.server.new_client()
    env.bridge.token = AS_TOKEN
    bob = await new_user(env, "bob")
    await register_ghost(env)
    await login_device(env, GHOST, "GHOSTDEV")
    room = await bridged_room(env, bob)
    await bob.put(f"{V3}/rooms/{room}/typing/@bob:test.local", {"typing": True, "timeout": 30000})
    await bob.put(f"{V3}/sendToDevice/m.test/q1", {"messages": {GHOST: {"GHOSTDEV": {"n": 1}}}})
    await bob.put(f"{V3}/rooms/{room}/send/m.room.message/q2", {"msgtype": "m.text", "body": "last"})
    await wait_for(lambda: any(e["type"] == "m.room.message" for e in env.fake.events()))
    for _, body in env.fake.transactions:
        assert set(body) == {"events"}, body

    import pytest
    import yaml

    from homeserver.config.reader import ConfigError

    bad = yaml.safe_load(path_yaml.read_text())
    bad["receive_ephemeral"] = "yes"
    path_yaml.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as raised:
        env.make(app_service_config_files=[path])
    assert "receive_ephemeral" in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_ephemeral_and_to_device_survive_a_stop(env: Env) -> None:
    bob = await new_user(env, "bob")
    await register_ghost(env)
    await login_device(env, GHOST, "GHOSTDEV")
    room = await bridged_room(env, bob)
    await wait_for(
        lambda: any(e.get("state_key") == GHOST and e["content"]["membership"] == "join" for e in env.fake.events())
    )
    env.fake.mode = "error"
    sent = await bob.put(f"{V3}/rooms/{room}/send/m.room.message/s1", {"msgtype": "m.text", "body": "queued"})
    await bob.put(f"{V3}/rooms/{room}/typing/@bob:test.local", {"typing": True, "timeout": 30000})
    await bob.post(f"{V3}/rooms/{room}/receipt/m.read/{sent.body['event_id']}", {})
    await bob.put(f"{V3}/sendToDevice/m.test/d1", {"messages": {GHOST: {"GHOSTDEV": {"n": 1}}}})
    attempts = env.fake.attempts
    await wait_for(lambda: env.fake.attempts >= attempts + 2)
    depth = (await env.server.hs.appservices.metrics())[0]["queue_depth"]  # type: ignore[union-attr]
    assert depth >= 4, depth  # the message, typing, the receipt, the to-device message
    # the homeserver stops; a to-device message arrives while the bridge host is down
    assert env.server.hs.appservices is not None
    await env.server.hs.appservices.stop()
    await bob.put(f"{V3}/sendToDevice/m.test/d2", {"messages": {GHOST: {"GHOSTDEV": {"n": 2}}}})
    env.fake.mode = "ok"
    await env.restart()

    def delivered() -> bool:
        eph = env.fake.field("ephemeral")
        return (
            any(e["type"] == "m.typing" for e in eph)
            and any(e["type"] == "m.receipt" for e in eph)
            and len(env.fake.field("de.sorunome.msc2409.to_device")) == 2
        )

    await wait_for(delivered, timeout=20)
    assert [m["content"]["n"] for m in env.fake.field("de.sorunome.msc2409.to_device")] == [1, 2]
    assert [e["content"]["body"] for e in env.fake.events() if e["type"] == "m.room.message"] == ["queued"]
