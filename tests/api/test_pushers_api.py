"""Pushers: /pushers, /pushers/set, and delivery to a real (in-test) push gateway over HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web import resource, server

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import login
from tests.api.test_rooms_api import V3, create_room, send_text, user

ALICE, BOB = "@alice:test.local", "@bob:test.local"
# The gateway listens on loopback, which the default ip_range_blacklist refuses.
LOOPBACK_ALLOWED = {"ip_range_whitelist": ["127.0.0.1/32"]}


class Gateway(resource.Resource):
    """A push gateway: records each notification; answers ``rejected`` for chosen pushkeys."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        self.reject: set[str] = set()
        self.fail_next = 0  # answer 500 this many times first

    def render_POST(self, request: server.Request) -> bytes:  # noqa: N802
        assert request.path == b"/_matrix/push/v1/notify"
        if self.fail_next:
            self.fail_next -= 1
            request.setResponseCode(500)
            return b"{}"
        note = json.loads(request.content.read())["notification"]
        pushkeys = [d["pushkey"] for d in note["devices"]]
        answer = json.dumps({"rejected": [k for k in pushkeys if k in self.reject]}).encode()
        self.received.put(note)  # (resumes the waiting test at once: answer decided before)
        return answer

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        d = self.received.get()
        d.addTimeout(timeout, reactor)
        return await d


@pytest.fixture
def gateway() -> Any:
    gw = Gateway()
    port = reactor.listenTCP(0, server.Site(gw), interface="127.0.0.1")
    gw.url = f"http://127.0.0.1:{port.getHost().port}/_matrix/push/v1/notify"  # type: ignore[attr-defined]
    yield gw
    port.stopListening()


def pusher_body(url: str, pushkey: str = "key-1", **extra: Any) -> dict[str, Any]:
    return {
        "kind": "http",
        "app_id": "fr.gouv.tchap.android",
        "pushkey": pushkey,
        "app_display_name": "Tchap",
        "device_display_name": "Pixel",
        "lang": "fr",
        "data": {"url": url, **extra.pop("data", {})},
        **extra,
    }


async def dm(alice: Client, bob: Client) -> str:
    room_id = await create_room(alice, invite=[BOB], is_direct=True, preset="trusted_private_chat")
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    return room_id


async def pushers_of(client: Client) -> list[dict[str, Any]]:
    resp = await client.get(f"{V3}/pushers")
    assert resp.code == 200, resp.body
    return list(resp.body["pushers"])


@pytest_twisted.ensureDeferred
async def test_set_list_update_and_delete(server: HSFixture) -> None:
    alice = await user(server, "alice")
    assert await pushers_of(alice) == []
    url = "https://push.example.gouv.fr/_matrix/push/v1/notify"
    body = pusher_body(url, profile_tag="tag", data={"format": "event_id_only", "custom": 1})
    assert (await alice.post(f"{V3}/pushers/set", body)).code == 200
    [listed] = await pushers_of(alice)
    assert listed == {
        "pushkey": "key-1",
        "kind": "http",
        "app_id": "fr.gouv.tchap.android",
        "app_display_name": "Tchap",
        "device_display_name": "Pixel",
        "profile_tag": "tag",
        "lang": "fr",
        "data": {"url": url, "format": "event_id_only", "custom": 1},
    }
    # Same app_id and pushkey: updated, not duplicated.
    assert (await alice.post(f"{V3}/pushers/set", pusher_body(url, lang="en"))).code == 200
    assert [p["lang"] for p in await pushers_of(alice)] == ["en"]
    assert (await alice.post(f"{V3}/pushers/set", pusher_body(url, pushkey="key-2"))).code == 200
    assert sorted(p["pushkey"] for p in await pushers_of(alice)) == ["key-1", "key-2"]
    # kind null deletes.
    delete = {"kind": None, "app_id": "fr.gouv.tchap.android", "pushkey": "key-1"}
    assert (await alice.post(f"{V3}/pushers/set", delete)).code == 200
    assert [p["pushkey"] for p in await pushers_of(alice)] == ["key-2"]
    assert (await server.new_client().get(f"{V3}/pushers")).code == 401


@pytest_twisted.ensureDeferred
async def test_bad_input_names_the_field(server: HSFixture) -> None:
    alice = await user(server, "alice")
    good = pusher_body("https://push.example.gouv.fr/_matrix/push/v1/notify")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({k: v for k, v in good.items() if k != "app_id"}, "M_MISSING_PARAM", "app_id"),
        ({k: v for k, v in good.items() if k != "kind"}, "M_MISSING_PARAM", "kind"),
        ({k: v for k, v in good.items() if k != "lang"}, "M_MISSING_PARAM", "lang"),
        ({**good, "data": {}}, "M_MISSING_PARAM", "data.url"),
        ({**good, "data": {"url": "https://push.example/notify"}}, "M_INVALID_PARAM", "data.url"),
        ({**good, "data": {"url": "ftp://push.example/_matrix/push/v1/notify"}}, "M_INVALID_PARAM", "data.url"),
        ({**good, "data": {"url": good["data"]["url"], "format": "full"}}, "M_INVALID_PARAM", "data.format"),
        ({**good, "kind": "carrier-pigeon"}, "M_INVALID_PARAM", "kind"),
        ({**good, "kind": 3}, "M_BAD_JSON", "kind"),
        ({**good, "lang": "x" * 100}, "M_INVALID_PARAM", "lang"),
        ({**good, "app_id": "a" * 65}, "M_INVALID_PARAM", "app_id"),
        ({**good, "pushkey": "k" * 513}, "M_INVALID_PARAM", "pushkey"),
        ({**good, "append": "yes"}, "M_BAD_JSON", "append"),
    ]
    for body, errcode, field in cases:
        resp = await alice.post(f"{V3}/pushers/set", body)
        assert (resp.code, resp.body["errcode"]) == (400, errcode), (body, resp.body)
        assert field in resp.body["error"], (field, resp.body)
    assert (await alice.post(f"{V3}/pushers/set", raw=b"[1]")).code == 400
    assert await pushers_of(alice) == []


@pytest_twisted.ensureDeferred
async def test_dm_message_reaches_the_gateway(make_server: Any, gateway: Gateway) -> None:
    hs = make_server(**LOOPBACK_ALLOWED)
    alice, bob = await user(hs, "alice"), await user(hs, "bob")
    assert (await bob.put(f"{V3}/profile/{BOB}/displayname", {"displayname": "Bob Martin"})).code == 200
    room_id = await dm(alice, bob)
    assert (await alice.post(f"{V3}/pushers/set", pusher_body(gateway.url, data={"custom": "x"}))).code == 200  # type: ignore[attr-defined]
    event_id = await send_text(bob, room_id, "Bonjour, on se voit à 15h ?")
    note = await gateway.next()
    assert note["event_id"] == event_id and note["room_id"] == room_id
    assert note["type"] == "m.room.message" and note["sender"] == BOB
    assert note["sender_display_name"] == "Bob Martin"
    assert note["content"] == {"msgtype": "m.text", "body": "Bonjour, on se voit à 15h ?"}
    assert note["counts"] == {"unread": 1}
    [device] = note["devices"]
    assert device["app_id"] == "fr.gouv.tchap.android" and device["pushkey"] == "key-1"
    assert device["data"] == {"custom": "x"}  # everything but the url
    assert isinstance(device["pushkey_ts"], int) and device["pushkey_ts"] > 0
    # A one-to-one message rings: sound, not a highlight.
    assert device["tweaks"] == {"sound": "default"} and note["prio"] == "high"
    # Alice's own messages do not notify her.
    await send_text(alice, room_id, "Salut")
    await hs.hs.pushers.wait_idle()
    assert gateway.received.pending == []


@pytest_twisted.ensureDeferred
async def test_mention_highlights_and_event_id_only(make_server: Any, gateway: Gateway) -> None:
    hs = make_server(**LOOPBACK_ALLOWED)
    alice, bob, carol = await user(hs, "alice"), await user(hs, "bob"), await user(hs, "carol")
    room_id = await create_room(alice, name="Cellule de crise", invite=[BOB, "@carol:test.local"])
    for member in (bob, carol):
        assert (await member.post(f"{V3}/join/{room_id}", {})).code == 200
    body = pusher_body(gateway.url, data={"format": "event_id_only"})  # type: ignore[attr-defined]
    assert (await alice.post(f"{V3}/pushers/set", body)).code == 200
    plain = await send_text(bob, room_id, "point de situation")
    note = await gateway.next()
    # Group message: notify without sound, low priority; event_id_only carries no content.
    assert note["event_id"] == plain and note["prio"] == "low"
    assert set(note) == {"event_id", "room_id", "counts", "prio", "devices"}
    assert note["devices"][0]["tweaks"] == {} and note["devices"][0]["data"] == {"format": "event_id_only"}
    # A full-format pusher for another device sees the room name and the highlight.
    phone = hs.new_client()
    phone.token = (await login(phone, "alice"))["access_token"]
    assert (await phone.post(f"{V3}/pushers/set", pusher_body(gateway.url, pushkey="key-2"))).code == 200  # type: ignore[attr-defined]
    mention = await bob.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/m1",
        {"msgtype": "m.text", "body": "alice: urgent", "m.mentions": {"user_ids": [ALICE]}},
    )
    notes = {n["devices"][0]["pushkey"]: n for n in [await gateway.next(), await gateway.next()]}
    full, short = notes["key-2"], notes["key-1"]
    assert full["event_id"] == short["event_id"] == mention.body["event_id"]
    assert full["room_name"] == "Cellule de crise" and full["prio"] == "high"
    assert full["devices"][0]["tweaks"] == {"sound": "default", "highlight": True}
    assert "content" not in short and short["prio"] == "high"


@pytest_twisted.ensureDeferred
async def test_rejected_pushkey_removes_the_pusher_and_retries_on_5xx(make_server: Any, gateway: Gateway) -> None:
    hs = make_server(**LOOPBACK_ALLOWED)
    hs.hs.pushers._retry_delays = (0.05, 0.05)
    alice, bob = await user(hs, "alice"), await user(hs, "bob")
    room_id = await dm(alice, bob)
    assert (await alice.post(f"{V3}/pushers/set", pusher_body(gateway.url))).code == 200  # type: ignore[attr-defined]
    gateway.fail_next = 2  # two 500s, then delivered on the third attempt
    first = await send_text(bob, room_id, "un")
    assert (await gateway.next())["event_id"] == first
    gateway.reject.add("key-1")
    await send_text(bob, room_id, "deux")
    await gateway.next()
    await hs.hs.pushers.wait_idle()
    assert await pushers_of(alice) == []
    await send_text(bob, room_id, "trois")
    await hs.hs.pushers.wait_idle()
    assert gateway.received.pending == []


@pytest_twisted.ensureDeferred
async def test_logout_and_other_user_remove_pushers(make_server: Any, gateway: Gateway) -> None:
    hs = make_server(**LOOPBACK_ALLOWED)
    alice, bob = await user(hs, "alice"), await user(hs, "bob")
    url = gateway.url  # type: ignore[attr-defined]
    phone = hs.new_client()
    phone.token = (await login(phone, "alice"))["access_token"]
    assert (await phone.post(f"{V3}/pushers/set", pusher_body(url, pushkey="phone"))).code == 200
    assert (await alice.post(f"{V3}/pushers/set", pusher_body(url, pushkey="laptop"))).code == 200
    assert (await phone.post(f"{V3}/logout", {})).code == 200
    assert [p["pushkey"] for p in await pushers_of(alice)] == ["laptop"]
    # Bob registers the same app_id + pushkey: Alice's goes (the device changed hands) ...
    assert (await bob.post(f"{V3}/pushers/set", pusher_body(url, pushkey="laptop"))).code == 200
    assert await pushers_of(alice) == []
    # ... unless append is set.
    assert (await alice.post(f"{V3}/pushers/set", pusher_body(url, pushkey="laptop", append=True))).code == 200
    assert len(await pushers_of(alice)) == 1 and len(await pushers_of(bob)) == 1
    # A password change logs the other devices out, and their pushers with them.
    tablet = hs.new_client()
    tablet.token = (await login(tablet, "alice"))["access_token"]
    assert (await tablet.post(f"{V3}/pushers/set", pusher_body(url, pushkey="tablet"))).code == 200
    change = {
        "new_password": "another horse battery staple",
        "auth": {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "correct horse battery",
        },
    }
    assert (await tablet.post(f"{V3}/account/password", change)).code == 200
    assert [p["pushkey"] for p in await pushers_of(tablet)] == ["tablet"]
    await hs.hs.pushers.wait_idle()


@pytest_twisted.ensureDeferred
async def test_blacklisted_gateway_gets_nothing(make_server: Any, gateway: Gateway) -> None:
    hs = make_server()  # default ip_range_blacklist: loopback refused
    alice, bob = await user(hs, "alice"), await user(hs, "bob")
    room_id = await dm(alice, bob)
    assert (await alice.post(f"{V3}/pushers/set", pusher_body(gateway.url))).code == 200  # type: ignore[attr-defined]
    await send_text(bob, room_id, "hello")
    await hs.hs.pushers.wait_idle()
    assert gateway.received.pending == []


@pytest_twisted.ensureDeferred
async def test_expired_account_gets_no_push(make_server: Any, gateway: Gateway) -> None:
    from tests.api.test_policy_validity import admin_client, set_expiry

    hs = make_server(**LOOPBACK_ALLOWED, account_validity={"enabled": True, "period": "6w"})
    admin = await admin_client(hs)
    alice, bob = await user(hs, "alice"), await user(hs, "bob")
    room_id = await dm(alice, bob)
    assert (await alice.post(f"{V3}/pushers/set", pusher_body(gateway.url))).code == 200  # type: ignore[attr-defined]
    before = await send_text(bob, room_id, "avant")
    assert (await gateway.next())["event_id"] == before
    assert (await set_expiry(admin, ALICE, int(time.time() * 1000) - 1000)).code == 200
    await send_text(bob, room_id, "après")
    await hs.hs.pushers.wait_idle()
    assert gateway.received.pending == []
