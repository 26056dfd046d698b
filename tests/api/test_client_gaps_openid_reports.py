"""OpenID tokens, content reports (with Synapse's admin listing) and timestamp_to_event."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor

from tests.api.conftest import Client, HSFixture
from tests.api.test_policy_validity import admin_client
from tests.api.test_rooms_api import V3, create_room, send_text, user

V1 = "/_matrix/client/v1"
USERINFO = "/_matrix/federation/v1/openid/userinfo"


def federation_client(server: HSFixture) -> Client:
    site = server.hs.build_site({"federation"})
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    server.hs.ports.append(port)  # closed with the server
    return Client(f"http://127.0.0.1:{port.getHost().port}")


@pytest_twisted.ensureDeferred
async def test_openid_token_round_trip_and_expiry(server: HSFixture) -> None:
    alice = await user(server, "alice")
    fed = federation_client(server)
    try:
        resp = await alice.post(f"{V3}/user/@alice:test.local/openid/request_token", {})
        assert resp.code == 200, resp.body
        assert resp.body["token_type"] == "Bearer" and resp.body["matrix_server_name"] == "test.local"
        assert resp.body["expires_in"] == 3600
        token = resp.body["access_token"]
        info = await fed.get(f"{USERINFO}?access_token={token}")
        assert (info.code, info.body) == (200, {"sub": "@alice:test.local"})
        # the token is not an access token, and the federation side knows only its own tokens
        assert (await alice.get(f"{V3}/account/whoami", token=token)).code == 401
        unknown = await fed.get(f"{USERINFO}?access_token=nope")
        assert (unknown.code, unknown.body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        missing = await fed.get(USERINFO)
        assert missing.code == 401
        # someone else's token is refused
        other = await alice.post(f"{V3}/user/@bob:test.local/openid/request_token", {})
        assert (other.code, other.body["errcode"]) == (403, "M_FORBIDDEN")
        assert (await server.new_client().post(f"{V3}/user/@alice:test.local/openid/request_token", {})).code == 401
        # an hour later the token is expired
        clock: Any = server.hs.clock
        real = clock.time_msec
        clock.time_msec = lambda: real() + 3601 * 1000
        try:
            expired = await fed.get(f"{USERINFO}?access_token={token}")
        finally:
            clock.time_msec = real
        assert (expired.code, expired.body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    finally:
        for port in server.hs.ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_reports_are_stored_and_listed_for_admins(server: HSFixture) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    admin = await admin_client(server)
    room_id = await create_room(alice, preset="public_chat", name="Salon")
    assert (await bob.post(f"{V3}/join/{room_id}", {})).code == 200
    event_id = await send_text(alice, room_id, "offensive")
    private = await create_room(alice, preset="private_chat")
    hidden = await send_text(alice, private, "not for bob")

    ok = await bob.post(f"{V3}/rooms/{room_id}/report/{event_id}", {"reason": "rude", "score": -100})
    assert (ok.code, ok.body) == (200, {})
    assert (await bob.post(f"{V3}/rooms/{room_id}/report", {"reason": "whole room"})).code == 200
    bad_cases = [
        (await bob.post(f"{V3}/rooms/{room_id}/report/{event_id}", {"score": -101}), 400, "M_INVALID_PARAM"),
        (await bob.post(f"{V3}/rooms/{room_id}/report/{event_id}", {"score": "x"}), 400, "M_BAD_JSON"),
        (await bob.post(f"{V3}/rooms/{room_id}/report/{event_id}", {"reason": 5}), 400, "M_BAD_JSON"),
        (await bob.post(f"{V3}/rooms/{private}/report/{hidden}", {"reason": "x"}), 404, "M_NOT_FOUND"),
        (await bob.post(f"{V3}/rooms/{room_id}/report/$nope", {"reason": "x"}), 404, "M_NOT_FOUND"),
        (await bob.post(f"{V3}/rooms/{room_id}/report", {}), 400, "M_MISSING_PARAM"),
        (await bob.post(f"{V3}/rooms/!nope:test.local/report", {"reason": "x"}), 404, "M_NOT_FOUND"),
        (await bob.get("/_synapse/admin/v1/event_reports"), 403, "M_FORBIDDEN"),
        (await admin.get("/_synapse/admin/v1/event_reports?dir=x"), 400, "M_INVALID_PARAM"),
        (await admin.get("/_synapse/admin/v1/event_reports/999"), 404, "M_NOT_FOUND"),
    ]
    for resp, code, errcode in bad_cases:
        assert (resp.code, resp.body["errcode"]) == (code, errcode), resp.body

    listing = await admin.get("/_synapse/admin/v1/event_reports")
    assert listing.code == 200, listing.body
    assert listing.body["total"] == 2 and "next_token" not in listing.body
    newest, oldest = listing.body["event_reports"]
    assert newest["event_id"] is None and newest["reason"] == "whole room"
    assert oldest["event_id"] == event_id and oldest["user_id"] == "@bob:test.local"
    assert oldest["reason"] == "rude" and oldest["score"] == -100
    assert oldest["sender"] == "@alice:test.local" and oldest["name"] == "Salon" and oldest["room_id"] == room_id
    page = await admin.get("/_synapse/admin/v1/event_reports?limit=1&dir=f")
    assert [r["id"] for r in page.body["event_reports"]] == [oldest["id"]] and page.body["next_token"] == 1
    by_user = await admin.get("/_synapse/admin/v1/event_reports?user_id=@alice:test.local")
    assert by_user.body == {"event_reports": [], "total": 0}
    detail = await admin.get(f"/_synapse/admin/v1/event_reports/{oldest['id']}")
    assert detail.code == 200 and detail.body["event_json"]["content"]["body"] == "offensive"


@pytest_twisted.ensureDeferred
async def test_timestamp_to_event(server: HSFixture) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room_id = await create_room(alice)
    first = await send_text(alice, room_id, "one")
    first_ts = (await alice.get(f"{V3}/rooms/{room_id}/event/{first}")).body["origin_server_ts"]
    second = await send_text(alice, room_id, "two")
    url = f"{V1}/rooms/{room_id}/timestamp_to_event"

    after = await alice.get(f"{url}?ts={first_ts}&dir=f")
    assert after.code == 200 and after.body == {"event_id": first, "origin_server_ts": first_ts}
    latest = await alice.get(f"{url}?ts=99999999999999&dir=b")
    assert latest.body["event_id"] == second
    none = await alice.get(f"{url}?ts=99999999999999&dir=f")
    assert (none.code, none.body["errcode"]) == (404, "M_NOT_FOUND")
    early = await alice.get(f"{url}?ts=1&dir=f")
    assert early.code == 200 and early.body["origin_server_ts"] <= first_ts  # the room's creation
    for query, code, errcode in (
        ("?ts=1", 400, "M_INVALID_PARAM"),
        ("?dir=f", 400, "M_MISSING_PARAM"),
        ("?ts=x&dir=f", 400, "M_INVALID_PARAM"),
        ("?ts=1&dir=sideways", 400, "M_INVALID_PARAM"),
    ):
        resp = await alice.get(url + query)
        assert (resp.code, resp.body["errcode"]) == (code, errcode), query
    outsider = await bob.get(f"{url}?ts=1&dir=f")
    assert (outsider.code, outsider.body["errcode"]) == (403, "M_FORBIDDEN")
    unknown = await alice.get(f"{V1}/rooms/!nope:test.local/timestamp_to_event?ts=1&dir=f")
    assert (unknown.code, unknown.body["errcode"]) == (403, "M_FORBIDDEN")
