"""Pushers through a real client: matrix-nio sets an HTTP pusher (raw request, as Element's
mobile apps do it) on our server started by its CLI; a message from another nio user then
reaches an HTTP push gateway (a plain ``http.server`` in this process) with the spec's
notification.  Runs on both storage engines."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from nio import JoinResponse, LoginResponse, RoomCreateResponse, RoomSendResponse

from tests.interop import harness as h
from tests.interop.media_samples import register
from tests.interop.nio_client import RecordingClient

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

PASSWORD = "pusher interop password"
NOTIFY = "/_matrix/push/v1/notify"


class _Gateway(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.notes: queue.Queue[dict[str, Any]] = queue.Queue()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Gateway

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = self.path == NOTIFY
        if ok:
            self.server.notes.put(json.loads(body)["notification"])
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"rejected": []}')

    def log_message(self, *args: Any) -> None:
        pass


async def _scenario(server: h.RunningServer, gateway_url: str) -> tuple[str, str]:
    alice_id, _ = register(server.client_url, server.registration_shared_secret, "alice", PASSWORD)
    bob_id, _ = register(server.client_url, server.registration_shared_secret, "bob", PASSWORD)
    alice, bob = RecordingClient(server.client_url, alice_id), RecordingClient(server.client_url, bob_id)
    try:
        for client in (alice, bob):
            login = await client.login(PASSWORD, device_name="nio phone")
            assert isinstance(login, LoginResponse), client.explain(login)
        pusher = {
            "kind": "http",
            "app_id": "fr.gouv.tchap.android",
            "pushkey": "fcm-token-123",
            "app_display_name": "Tchap",
            "device_display_name": "nio phone",
            "lang": "fr",
            "data": {"url": gateway_url, "format": "event_id_only"},
        }
        # nio's raw send() adds no token: the client's own headers, as a raw call would.
        auth = {"Authorization": f"Bearer {alice.access_token}", "Content-Type": "application/json"}
        resp = await alice.send("POST", "/_matrix/client/v3/pushers/set", json.dumps(pusher), headers=auth)
        assert resp.status == 200, await resp.text()
        listed = await (await alice.send("GET", "/_matrix/client/v3/pushers", headers=auth)).json()
        assert [p["pushkey"] for p in listed["pushers"]] == ["fcm-token-123"]
        room = await bob.room_create(invite=[alice_id], is_direct=True)
        assert isinstance(room, RoomCreateResponse), bob.explain(room)
        joined = await alice.join(room.room_id)
        assert isinstance(joined, JoinResponse), alice.explain(joined)
        sent = await bob.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "Réunion à 15h"})
        assert isinstance(sent, RoomSendResponse), bob.explain(sent)
        return room.room_id, sent.event_id
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.parametrize("engine", h.ENGINES)
def test_nio_pusher_gets_notified(our_homeserver: Any, engine: str) -> None:
    gateway = _Gateway()
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{gateway.server_address[1]}{NOTIFY}"
        server = our_homeserver(engine=engine, patch_config=lambda c: c.update(ip_range_whitelist=["127.0.0.1/32"]))
        room_id, event_id = asyncio.run(_scenario(server, url))
        note = gateway.notes.get(timeout=20)
        # The invite notifies Alice first; the message follows.
        while note.get("event_id") != event_id:
            note = gateway.notes.get(timeout=20)
        assert note["room_id"] == room_id and note["prio"] == "high"
        assert "content" not in note  # event_id_only
        [device] = note["devices"]
        assert device["pushkey"] == "fcm-token-123" and device["data"] == {"format": "event_id_only"}
        assert note["counts"]["unread"] >= 1
    finally:
        gateway.shutdown()
        gateway.server_close()
