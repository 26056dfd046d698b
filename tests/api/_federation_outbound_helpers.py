"""Shared by the outbound federation tests: peers whose /send is a recording stand-in.

Each peer's ``PUT /_matrix/federation/v1/send/{txnId}`` authenticates the request (the
X-Matrix signature, with the sender's keys fetched over TLS), records the transaction,
and hands its EDUs to the peer's own inbound EDU handlers; it can be told to be "down"
(503, nothing recorded).  Remote members are joined to a room on its host server with
join events really built and signed by their own server's key.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import reactor, task

from homeserver.app import Homeserver
from homeserver.events.signing import generate_signing_key
from tests.api.conftest import HSFixture
from tests.api.helpers import register
from tests.api.test_federation_keys import Peer, start_peers

V3 = "/_matrix/client/v3"
RETRY = {"destination_min_retry_interval": 200, "destination_max_retry_interval": 1000}


class Inbox:
    """What arrived at one peer's /send, in order of arrival."""

    def __init__(self) -> None:
        self.transactions: list[tuple[str, str, dict[str, Any]]] = []  # (origin, txn ID, body)
        self.down = False
        self.refused = 0  # requests answered 503 while down

    def pdus(self) -> list[dict[str, Any]]:
        return [p for _, _, body in self.transactions for p in body.get("pdus", [])]

    def edus(self, edu_type: str) -> list[dict[str, Any]]:
        return [
            e["content"]
            for _, _, body in self.transactions
            for e in body.get("edus", [])
            if e.get("edu_type") == edu_type
        ]


def recording_routes(inboxes: dict[str, Inbox]) -> Callable[[Homeserver], Callable[[Any], None]]:
    def for_server(hs: Homeserver) -> Callable[[Any], None]:
        inbox = inboxes.setdefault(hs.config.server_name, Inbox())

        def add(router: Any) -> None:
            async def send(request: Any, txn_id: str) -> tuple[int, Any]:
                if inbox.down:
                    inbox.refused += 1
                    return 503, {"errcode": "M_UNKNOWN", "error": "down for maintenance"}
                assert hs.federation is not None and hs.federation.outbound is not None
                origin = await hs.federation.authenticator.authenticate(request)
                body = json.loads(request.content.read())
                inbox.transactions.append((origin, txn_id, body))
                for edu in body.get("edus", []):
                    handler = hs.federation.outbound.edu_handlers.get(edu["edu_type"])
                    if handler is not None:
                        await handler(origin, edu["content"])
                return 200, {"pdus": {}}

            router.add("PUT", "^/_matrix/federation/v1/send/(?P<txn_id>[^/]+)$", send)

        return add

    return for_server


def peers_with_inboxes(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
    allow: dict[str, list[str]],
    *,
    retry: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Peer], dict[str, Inbox]]:
    """``start_peers`` with recording /send stand-ins and short retry intervals (``retry``:
    server name -> its ``federation:`` section instead)."""
    inboxes: dict[str, Inbox] = {}

    def make(**kwargs: Any) -> HSFixture:
        return make_server(federation=(retry or {}).get(kwargs["server_name"], RETRY), **kwargs)

    peers = start_peers(make, database_config, tmp_path, cleanups, allow, federation_routes=recording_routes(inboxes))
    return peers, inboxes


async def eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    """Wait until ``check()`` (maybe async) is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


async def local_user(peer: Peer, name: str) -> str:
    """Register ``name`` on ``peer``; its client then acts as that user."""
    body = await register(peer.fx.client, name)
    peer.fx.client.token = body["access_token"]
    return str(body["user_id"])


async def create_room(peer: Peer) -> str:
    resp = await peer.fx.client.post(f"{V3}/createRoom", {"preset": "public_chat"})
    assert resp.code == 200, resp.body
    return str(resp.body["room_id"])


async def send_message(peer: Peer, room_id: str, text: str) -> str:
    resp = await peer.fx.client.put(
        f"{V3}/rooms/{quote(room_id)}/send/m.room.message/{quote(text)}", {"msgtype": "m.text", "body": text}
    )
    assert resp.code == 200, resp.body
    return str(resp.body["event_id"])


async def remote_join(host: Peer, guest: Peer | str, room_id: str, user_id: str) -> str:
    """Join ``user_id`` of ``guest`` to ``room_id`` on ``host``, as a received join would be:
    the event is built and signed by the guest's server (a throwaway key for a server
    given by name only) and persisted by the host's room event service (hooks included)."""
    events = host.hs.services.events
    forger = copy.copy(events)  # shares the host's stores, locks and hooks
    if isinstance(guest, str):
        forger.server_name = guest
        forger._signing_key = generate_signing_key("x")
    else:
        forger.server_name = guest.name
        forger._signing_key = guest.federation.local_keys.signing_key
    sent = await forger.send(
        room_id=room_id, sender=user_id, event_type="m.room.member", state_key=user_id, content={"membership": "join"}
    )
    assert user_id in await events.joined_users(room_id)
    return sent.event.event_id
