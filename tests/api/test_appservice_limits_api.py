"""rc_message and the application services' ``rate_limited`` flag; invites of users a bridge
has not created yet (the service is asked first, ``GET /_matrix/app/v1/users/{userId}``).
Both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest_twisted
import yaml

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register
from tests.api.test_appservice_api import (
    AS_TOKEN,
    GHOST,
    HS_TOKEN,
    V3,
    FakeAppService,
    as_user,
    start_fake,
    write_registration,
)

SLOW = {"per_second": 0.001, "burst_count": 3}
LIMITED_TOKEN = "limited-as-token"
LIMITED_GHOST = "@_lim_carol:test.local"


@dataclass
class Limits:
    server: HSFixture
    fake: FakeAppService
    bridge: Client  # rate_limited: false
    limited: Client  # rate_limited: true (the default)


def limited_registration(tmp_path: Path, port: int) -> str:
    path = tmp_path / "limited.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "id": "limited",
                "url": f"http://127.0.0.1:{port}",
                "as_token": LIMITED_TOKEN,
                "hs_token": HS_TOKEN + "-limited",
                "sender_localpart": "limitedbot",
                "namespaces": {"users": [{"exclusive": True, "regex": "@_lim_.*:test\\.local"}]},
            }
        )
    )
    return str(path)


@pytest_twisted.async_yield_fixture
async def limits(make_server: Callable[..., HSFixture], tmp_path: Path) -> AsyncIterator[Limits]:
    fake = FakeAppService()
    port = start_fake(fake)
    srv = make_server(
        app_service_config_files=[write_registration(tmp_path, port), limited_registration(tmp_path, port)],
        rc_message=SLOW,
    )
    assert srv.hs.appservices is not None
    await srv.hs.appservices.ready
    bridge, limited = srv.new_client(), srv.new_client()
    bridge.token, limited.token = AS_TOKEN, LIMITED_TOKEN
    yield Limits(srv, fake, bridge, limited)
    await srv.hs.appservices.stop()
    await fake.port.stopListening()


async def person(limits: Limits, name: str) -> Client:
    c = limits.server.new_client()
    c.token = (await register(c, name))["access_token"]
    return c


async def send(client: Client, room: str, n: int, path_user: str | None = None, prefix: str = "x") -> list[int]:
    codes = []
    for i in range(n):
        path = f"{V3}/rooms/{room}/send/m.room.message/{prefix}{i}"
        if path_user:
            path = as_user(path, path_user)
        codes.append((await client.put(path, {"msgtype": "m.text", "body": f"m{i}"})).code)
    return codes


@pytest_twisted.ensureDeferred
async def test_rc_message_limits_people_not_unlimited_services_or_admins(limits: Limits) -> None:
    bob = await person(limits, "bob")
    room = (await bob.post(f"{V3}/createRoom", {"preset": "public_chat"})).body["room_id"]
    # createRoom and joins are not messages: three sends go through, the fourth is refused
    assert await send(bob, room, 3) == [200, 200, 200]
    refused = await bob.put(f"{V3}/rooms/{room}/send/m.room.message/x3", {"msgtype": "m.text", "body": "4th"})
    assert (refused.code, refused.body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert isinstance(refused.body["retry_after_ms"], int) and refused.body["retry_after_ms"] > 0
    # state events and redactions count too; memberships do not
    topic = await bob.put(f"{V3}/rooms/{room}/state/m.room.topic", {"topic": "t"})
    assert (topic.code, topic.body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    event_id = (await bob.get(f"{V3}/rooms/{room}/messages?dir=b&limit=1")).body["chunk"][0]["event_id"]
    redact = await bob.put(f"{V3}/rooms/{room}/redact/{event_id}/r1", {})
    assert (redact.code, redact.body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert (await bob.post(f"{V3}/rooms/{room}/invite", {"user_id": "@someone:test.local"})).code == 200
    # bad input is still answered as such, not counted as a 500
    bad = await bob.put(f"{V3}/rooms/{room}/send/m.room.message/bad", raw=b"{not json")
    assert (bad.code, bad.body["errcode"]) == (400, "M_NOT_JSON")
    # another person has a bucket of their own
    dave = await person(limits, "dave")
    assert (await dave.post(f"{V3}/join/{room}", {})).code == 200
    assert await send(dave, room, 4, prefix="dave") == [200, 200, 200, 429]

    # a service with rate_limited: false, as its bot and as its ghosts: never limited
    registered = await limits.bridge.post(
        f"{V3}/register", {"type": "m.login.application_service", "username": "_bridge_alice", "inhibit_login": True}
    )
    assert registered.code == 200, registered.body
    assert (await limits.bridge.post(f"{V3}/join/{room}", {})).code == 200
    assert (await limits.bridge.post(as_user(f"{V3}/join/{room}", GHOST), {})).code == 200
    assert await send(limits.bridge, room, 6, prefix="bot") == [200] * 6
    assert await send(limits.bridge, room, 6, path_user=GHOST, prefix="ghost") == [200] * 6

    # a service with the default rate_limited: true: its ghosts are limited, its bot is not
    reg = await limits.limited.post(
        f"{V3}/register", {"type": "m.login.application_service", "username": "_lim_carol", "inhibit_login": True}
    )
    assert reg.code == 200, reg.body
    assert (await limits.limited.post(as_user(f"{V3}/join/{room}", LIMITED_GHOST), {})).code == 200
    assert await send(limits.limited, room, 4, path_user=LIMITED_GHOST, prefix="carol") == [200, 200, 200, 429]
    assert (await limits.limited.post(f"{V3}/join/{room}", {})).code == 200
    assert await send(limits.limited, room, 5, prefix="limitedbot") == [200] * 5

    # a server admin is not limited
    await limits.server.hs.db.run_interaction(
        "make_admin", lambda txn: txn.execute("UPDATE users SET is_admin = 1 WHERE user_id = ?", ("@bob:test.local",))
    )
    assert await send(bob, room, 5, prefix="admin") == [200] * 5
    ok = await bob.put(f"{V3}/rooms/{room}/state/m.room.topic", {"topic": "admin"})
    assert ok.code == 200, ok.body


@pytest_twisted.ensureDeferred
async def test_inviting_an_unknown_namespaced_user_asks_the_service_first(limits: Limits) -> None:
    asked: list[str] = []

    async def create_user(user_id: str) -> bool:
        asked.append(user_id)
        localpart = user_id[1:].split(":")[0]
        resp = await limits.bridge.post(
            f"{V3}/register", {"type": "m.login.application_service", "username": localpart, "inhibit_login": True}
        )
        return resp.code == 200

    limits.fake.on_user_query = create_user
    bob = await person(limits, "bob")
    room = (await bob.post(f"{V3}/createRoom", {})).body["room_id"]
    invited = await bob.post(f"{V3}/rooms/{room}/invite", {"user_id": GHOST})
    assert invited.code == 200, invited.body
    assert asked == [GHOST]
    # the ghost exists now (the bridge created it before the invite was sent) and can join
    assert (await limits.bridge.post(as_user(f"{V3}/join/{room}", GHOST), {})).code == 200
    # an existing ghost is not asked about again; people outside any namespace never are
    other = (await bob.post(f"{V3}/createRoom", {})).body["room_id"]
    assert (await bob.post(f"{V3}/rooms/{other}/invite", {"user_id": GHOST})).code == 200
    assert (await bob.post(f"{V3}/rooms/{other}/invite", {"user_id": "@nobody:test.local"})).code == 200
    assert asked == [GHOST]
    # createRoom's invite list, too
    new_ghost = "@_bridge_zed:test.local"
    created = await bob.post(f"{V3}/createRoom", {"invite": [new_ghost], "is_direct": True})
    assert created.code == 200, created.body
    assert asked == [GHOST, new_ghost]
    assert (await limits.bridge.post(as_user(f"{V3}/join/{created.body['room_id']}", new_ghost), {})).code == 200
    # the service that does not know the user (404) or is down: the invite still goes out,
    # as in Synapse, and the ghost stays unregistered
    limits.fake.on_user_query = None
    unknown = "@_bridge_ghost_nobody_made:test.local"
    assert (await bob.post(f"{V3}/rooms/{other}/invite", {"user_id": unknown})).code == 200
    await limits.fake.port.stopListening()
    down = "@_bridge_while_down:test.local"
    assert (await bob.post(f"{V3}/rooms/{other}/invite", {"user_id": down})).code == 200
    denied = await limits.bridge.get(as_user(f"{V3}/account/whoami", down))
    assert denied.code == 403
    limits.fake.port = _Restarted()


class _Restarted:
    """The fixture stops the fake's port at the end; this test already did."""

    async def stopListening(self) -> None:  # noqa: N802 (Twisted's name)
        return None
