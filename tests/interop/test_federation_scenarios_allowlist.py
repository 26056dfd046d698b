"""The allowlist and forged inputs, against real Synapses over real HTTP, on both engines.

Three servers: ours (``127.0.0.1``, allowlist = [partner]), a partner Synapse
(``127.0.0.2``, allows ours and the outsider) and an outsider Synapse (``127.0.0.3``,
open federation: it would talk to anyone).

* The outsider cannot join our room, send us a transaction, query a profile, fetch an event
  or state, or download media: through its own users (Synapse making the requests) and
  through requests signed with its real key (the test forging them): 403 M_FORBIDDEN, and
  nothing stored.  Our server fetches not even its keys.
* Our server never contacts the outsider: inviting one of its users, joining its room or
  querying its profile fail cleanly, and in a partner room the outsider's user shares with
  ours, our messages, typing, receipts and profile changes go to the partner only.  The
  outsider's access log shows no request from our server at all.
* Forged inputs signed with the partner's real key (spec: Server-Server API,
  "Request Authentication", "Transactions"):
  - a replayed request: the same signed ``PUT /send/{txnId}`` sent twice is answered twice
    with the same result and processed once.  The spec has no nonce or timestamp in
    X-Matrix, so a byte-identical replay cannot be told from a retry; it is harmless because
    the signature binds method, URI, destination and body, and transactions are idempotent
    by (origin, txnId), which is what we check;
  - a destination in X-Matrix that is not us (properly signed for that other server): 401;
  - oversized transactions (51 PDUs; 101 EDUs): 400 M_TOO_LARGE, and the transaction ID is
    not burnt: a proper transaction under the same ID is processed afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.interop import harness as h
from tests.interop.conftest import ENGINE_PARAMS
from tests.interop.federation_scenarios import (
    User,
    ephemeral,
    federation_request,
    log_text,
    membership_in,
    signing_key,
    start_ours,
    start_theirs,
    upload,
    x_matrix,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

OUR_AGENT = "homeserver/"  # our User-Agent prefix, as Synapse's access log shows it


@pytest.fixture(scope="module")
def our_ports() -> dict[str, int]:
    return {engine: h.free_port("127.0.0.1") for engine in h.ENGINES}


@pytest.fixture(scope="module")
def outsider_port() -> int:
    return h.free_port("127.0.0.3")


@pytest.fixture(scope="module")
def partner(module_servers: h.ServerPool, our_ports: dict[str, int], outsider_port: int) -> h.RunningServer:
    allow = [f"127.0.0.1:{port}" for port in our_ports.values()] + [f"127.0.0.3:{outsider_port}"]
    return start_theirs(module_servers, host="127.0.0.2", allow=allow)


@pytest.fixture(scope="module")
def outsider(module_servers: h.ServerPool, outsider_port: int) -> h.RunningServer:
    return start_theirs(module_servers, host="127.0.0.3", allow=None, port=outsider_port)


class Trio:
    def __init__(self, ours: h.RunningServer, partner: h.RunningServer, outsider: h.RunningServer, engine: str):
        self.ours, self.partner, self.outsider = ours, partner, outsider
        self.engine = engine
        self.alice = User(ours, "alice")
        self.sam = User(partner, f"sam_{engine}")
        self.olga = User(outsider, f"olga_{engine}")
        for user in (self.alice, self.sam, self.olga):
            user.sync_until(lambda b: True, "an initial sync")

    def signed(
        self, signer: h.RunningServer, method: str, uri: str, content: Any = None, *, destination: str | None = None
    ) -> tuple[int, Any]:
        """A request to our federation listener signed with ``signer``'s real key."""
        header, _ = x_matrix(
            signing_key(signer),
            origin=signer.server_name,
            destination=destination or self.ours.server_name,
            method=method,
            uri=uri,
            content=content,
        )
        assert self.ours.federation_url
        return federation_request(self.ours.federation_url, method, uri, header, content)

    def our_requests_to(self, server: h.RunningServer) -> list[str]:
        return [line for line in log_text(server).splitlines() if OUR_AGENT in line and "Processed request" in line]


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def trio(
    request: pytest.FixtureRequest,
    module_servers: h.ServerPool,
    tmp_path_factory: pytest.TempPathFactory,
    partner: h.RunningServer,
    outsider: h.RunningServer,
    our_ports: dict[str, int],
) -> Iterator[Trio]:
    engine = str(request.param)
    ours = start_ours(
        module_servers,
        tmp_path_factory.mktemp("cert"),
        engine=engine,
        allow=[partner.server_name],
        port=our_ports[engine],
    )
    yield Trio(ours, partner, outsider, engine)
    problem = ours.stop()
    assert problem is None, problem


def _refused(answer: tuple[int, Any], what: str) -> None:
    status, body = answer
    assert status == 403 and isinstance(body, dict) and body.get("errcode") == "M_FORBIDDEN", (what, status, body)


def test_the_outsider_is_refused_everything(trio: Trio, tmp_path: Path) -> None:
    alice, olga = trio.alice, trio.olga
    alias = f"outsider_{trio.engine}"
    room_id = alice.ok("POST", "/createRoom", {"preset": "public_chat", "room_alias_name": alias})["room_id"]
    event_id = alice.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "for the allowlist only"})
    mxc = upload(alice, b"secret bytes", "text/plain")
    media_id = mxc.rsplit("/", 1)[1]

    # 1. Through the outsider's own user: Synapse makes the federation requests.
    status, body = olga.call("POST", f"/join/{quote(f'#{alias}:{trio.ours.server_name}')}", {})
    assert status != 200, body
    status, body = olga.call("POST", f"/join/{quote(room_id)}?via={quote(trio.ours.server_name)}", {})
    assert status != 200, body
    status, body = olga.call("GET", f"/profile/{quote(alice.user_id)}")
    assert status != 200, body
    status, body = olga.call("GET", f"/_matrix/client/v1/media/download/{trio.ours.server_name}/{media_id}")
    assert status != 200, body

    # 2. The same, and more, signed with the outsider's real key by this test.
    out = trio.outsider
    olga_id = olga.user_id
    _refused(
        trio.signed(
            out, "GET", f"/_matrix/federation/v1/make_join/{quote(room_id)}/{quote(olga_id)}?ver=10&ver=11&ver=12"
        ),
        "make_join",
    )
    _refused(
        trio.signed(out, "GET", f"/_matrix/federation/v1/make_knock/{quote(room_id)}/{quote(olga_id)}?ver=12"),
        "make_knock",
    )
    pdu = {
        "room_id": room_id,
        "type": "m.room.message",
        "sender": olga_id,
        "origin_server_ts": int(time.time() * 1000),
        "content": {"msgtype": "m.text", "body": "smuggled"},
        "prev_events": [event_id],
        "auth_events": [],
        "depth": 100,
        "hashes": {"sha256": "AAAA"},
    }
    typing = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": olga_id, "typing": True}}
    txn = {"origin": out.server_name, "origin_server_ts": int(time.time() * 1000), "pdus": [pdu], "edus": [typing]}
    _refused(trio.signed(out, "PUT", "/_matrix/federation/v1/send/outsider1", txn), "send")
    _refused(trio.signed(out, "GET", f"/_matrix/federation/v1/query/profile?user_id={quote(alice.user_id)}"), "profile")
    _refused(
        trio.signed(
            out,
            "GET",
            f"/_matrix/federation/v1/query/directory?room_alias={quote(f'#{alias}:{trio.ours.server_name}')}",
        ),
        "directory",
    )
    _refused(trio.signed(out, "GET", f"/_matrix/federation/v1/event/{quote(event_id)}"), "event")
    _refused(
        trio.signed(out, "GET", f"/_matrix/federation/v1/state_ids/{quote(room_id)}?event_id={quote(event_id)}"),
        "state_ids",
    )
    _refused(
        trio.signed(out, "GET", f"/_matrix/federation/v1/backfill/{quote(room_id)}?v={quote(event_id)}&limit=10"),
        "backfill",
    )
    _refused(trio.signed(out, "GET", f"/_matrix/federation/v1/media/download/{media_id}"), "media download")
    _refused(
        trio.signed(out, "GET", f"/_matrix/federation/v1/media/thumbnail/{media_id}?width=32&height=32"),
        "media thumbnail",
    )
    _refused(trio.signed(out, "GET", f"/_matrix/federation/v1/user/devices/{quote(alice.user_id)}"), "user devices")
    _refused(
        trio.signed(out, "POST", "/_matrix/federation/v1/user/keys/query", {"device_keys": {alice.user_id: []}}),
        "keys query",
    )
    _refused(trio.signed(out, "GET", "/_matrix/federation/v1/publicRooms"), "publicRooms")

    # 3. Nothing of it stored or shown: no member, no message, no typing from the outsider.
    time.sleep(1)
    members = alice.ok("GET", f"/rooms/{quote(room_id)}/joined_members")["joined"]
    assert set(members) == {alice.user_id}, members
    page = alice.ok("GET", f"/rooms/{quote(room_id)}/messages?dir=b&limit=50")
    assert all(e["sender"] != olga_id for e in page["chunk"]), page
    body = alice.sync_until(lambda b: b, "a sync after the attempts")
    assert not [e for e in ephemeral(body, room_id, "m.typing") if olga_id in e["content"]["user_ids"]]
    assert all(membership_in(b, room_id, olga_id) is None for b in alice.seen)
    # ... and our server did not even fetch the outsider's keys to check those signatures.
    assert trio.our_requests_to(out) == []
    assert "not on the federation allowlist" in log_text(trio.ours)


def test_the_outsider_is_never_contacted(trio: Trio) -> None:
    alice, sam, olga = trio.alice, trio.sam, trio.olga
    out = trio.outsider

    # Our user cannot reach the outsider's users or rooms: clean refusals, no request.
    room_id = alice.ok("POST", "/createRoom", {"preset": "private_chat"})["room_id"]
    status, body = alice.call("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": olga.user_id})
    assert status == 403 and body.get("errcode") == "M_FORBIDDEN", body
    their_room = olga.ok("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    status, body = alice.call("POST", f"/join/{quote(their_room)}?via={quote(out.server_name)}", {})
    assert status in (403, 404) and body.get("errcode") in ("M_FORBIDDEN", "M_NOT_FOUND"), body
    status, body = alice.call("GET", f"/profile/{quote(olga.user_id)}")
    assert status in (403, 404) and body.get("errcode") in ("M_FORBIDDEN", "M_NOT_FOUND"), body
    status, body = alice.call("POST", "/keys/query", {"device_keys": {olga.user_id: []}})
    assert status == 200 and olga.user_id not in body.get("device_keys", {}), body

    # A partner room that the outsider's user is in too: our events go to the partner only.
    shared = sam.ok("POST", "/createRoom", {"preset": "public_chat", "room_version": "12"})["room_id"]
    olga.ok("POST", f"/join/{quote(shared)}?via={quote(trio.partner.server_name)}", {})
    alice.ok("POST", f"/join/{quote(shared)}?via={quote(trio.partner.server_name)}", {})
    sam.wait_joined(shared, alice.user_id, "alice's join at the partner")
    # (The outsider's own events, signed by a server whose keys we may not fetch, cannot be
    # verified here: what our server makes of them is not this test's concern.)
    said = alice.send(shared, "m.room.message", {"msgtype": "m.text", "body": "partners only"})
    alice.ok("PUT", f"/rooms/{quote(shared)}/typing/{quote(alice.user_id)}", {"typing": True, "timeout": 10000})
    alice.ok("POST", f"/rooms/{quote(shared)}/receipt/m.read/{quote(said)}", {})
    alice.ok("PUT", f"/profile/{quote(alice.user_id)}/displayname", {"displayname": "Alice the careful"})
    sam.wait_event_id(shared, said, "alice's message at the partner")
    sam.sync_until(
        lambda b: any(
            e["type"] == "m.room.member" and e["state_key"] == alice.user_id and e["content"].get("displayname")
            for e in b.get("rooms", {}).get("join", {}).get(shared, {}).get("timeline", {}).get("events", [])
        ),
        "alice's new display name at the partner",
        past=True,
    )
    olga_says = olga.send(shared, "m.room.message", {"msgtype": "m.text", "body": "hello from outside"})
    sam.wait_event_id(shared, olga_says, "the outsider's message at the partner")
    # The outsider's events are in the room's graph now: the partner's next events (whose
    # prev_events are the outsider's) still reach us, and history still works.
    for n in range(3):
        after = sam.send(shared, "m.room.message", {"msgtype": "m.text", "body": f"after the outsider {n}"})
        alice.wait_event_id(shared, after, f"the partner's message {n} after the outsider's")
    page = alice.ok("GET", f"/rooms/{quote(shared)}/messages?dir=b&limit=50")
    assert said in [e["event_id"] for e in page["chunk"]], page
    time.sleep(2)  # give any wrong fan-out the time to happen
    assert trio.our_requests_to(out) == [], trio.our_requests_to(out)
    assert trio.our_requests_to(trio.partner), "the access-log check finds our requests where there are some"


def test_replayed_transaction_is_processed_once(trio: Trio) -> None:
    alice, sam = trio.alice, trio.sam
    room_id = alice.ok("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    sam.ok("POST", f"/join/{quote(room_id)}?via={quote(trio.ours.server_name)}", {})
    alice.wait_joined(room_id, sam.user_id, "sam's join")
    typing = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": sam.user_id, "typing": True}}
    txn_id = f"replay{time.monotonic_ns()}"
    txn = {
        "origin": trio.partner.server_name,
        "origin_server_ts": int(time.time() * 1000),
        "pdus": [],
        "edus": [typing],
    }
    uri = f"/_matrix/federation/v1/send/{txn_id}"
    header, _ = x_matrix(
        signing_key(trio.partner),
        origin=trio.partner.server_name,
        destination=trio.ours.server_name,
        method="PUT",
        uri=uri,
        content=txn,
    )
    assert trio.ours.federation_url
    first = federation_request(trio.ours.federation_url, "PUT", uri, header, txn)
    assert first == (200, {"pdus": {}}), first
    alice.sync_until(
        lambda b: any(sam.user_id in e["content"]["user_ids"] for e in ephemeral(b, room_id, "m.typing")),
        "the typing notification",
    )
    replay = federation_request(trio.ours.federation_url, "PUT", uri, header, txn)
    assert replay == first, replay
    # The same signature over a different URI (another transaction) does not verify.
    stolen = federation_request(trio.ours.federation_url, "PUT", uri + "x", header, txn)
    assert stolen[0] == 401 and stolen[1]["errcode"] == "M_UNAUTHORIZED", stolen


def test_wrong_destination_is_refused(trio: Trio) -> None:
    other = f"127.0.0.1:{h.free_port('127.0.0.1')}"
    uri = f"/_matrix/federation/v1/query/profile?user_id={quote(trio.alice.user_id)}"
    status, body = trio.signed(trio.partner, "GET", uri, destination=other)
    assert status == 401 and body["errcode"] == "M_UNAUTHORIZED", (status, body)
    # Signed for us but claiming another destination in the header: the signature is over
    # the header's destination, so it is wrong either way.
    header, _ = x_matrix(
        signing_key(trio.partner),
        origin=trio.partner.server_name,
        destination=trio.ours.server_name,
        method="GET",
        uri=uri,
    )
    forged = header.replace(f'destination="{trio.ours.server_name}"', f'destination="{other}"')
    assert trio.ours.federation_url
    status, body = federation_request(trio.ours.federation_url, "GET", uri, forged)
    assert status == 401 and body["errcode"] == "M_UNAUTHORIZED", (status, body)
    # The control: the same request, properly addressed, is answered.
    status, body = trio.signed(trio.partner, "GET", uri)
    assert status == 200 and isinstance(body, dict), (status, body)


def test_oversized_transactions_are_refused(trio: Trio) -> None:
    alice, sam = trio.alice, trio.sam
    room_id = alice.ok("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
    sam.ok("POST", f"/join/{quote(room_id)}?via={quote(trio.ours.server_name)}", {})
    alice.wait_joined(room_id, sam.user_id, "sam's join")
    now = int(time.time() * 1000)
    origin = trio.partner.server_name
    pdu = {"room_id": room_id, "type": "m.room.message", "sender": sam.user_id, "content": {"body": "x"}}
    typing = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": sam.user_id, "typing": True}}
    for label, txn in (
        ("51 PDUs", {"origin": origin, "origin_server_ts": now, "pdus": [pdu] * 51, "edus": []}),
        ("101 EDUs", {"origin": origin, "origin_server_ts": now, "pdus": [], "edus": [typing] * 101}),
    ):
        txn_id = f"big{time.monotonic_ns()}"
        status, body = trio.signed(trio.partner, "PUT", f"/_matrix/federation/v1/send/{txn_id}", txn)
        assert status == 400 and body["errcode"] == "M_TOO_LARGE", (label, status, body)
        # Nothing of it was processed: no typing from sam.
        body = alice.sync_until(lambda b: b, "a sync after the refused transaction")
        assert not [e for e in ephemeral(body, room_id, "m.typing") if sam.user_id in e["content"]["user_ids"]]
        # The refused transaction did not burn its ID: a proper one under it is processed.
        small = {"origin": origin, "origin_server_ts": now, "pdus": [], "edus": [typing]}
        status, body = trio.signed(trio.partner, "PUT", f"/_matrix/federation/v1/send/{txn_id}", small)
        assert (status, body) == (200, {"pdus": {}}), (label, status, body)
        alice.sync_until(
            lambda b: any(sam.user_id in e["content"]["user_ids"] for e in ephemeral(b, room_id, "m.typing")),
            f"{label}: the typing of the proper transaction",
        )
        stop = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": sam.user_id, "typing": False}}
        stop_txn = {"origin": origin, "origin_server_ts": now, "pdus": [], "edus": [stop]}
        status, _ = trio.signed(trio.partner, "PUT", f"/_matrix/federation/v1/send/stop{txn_id}", stop_txn)
        assert status == 200
        alice.sync_until(
            lambda b: any(sam.user_id not in e["content"]["user_ids"] for e in ephemeral(b, room_id, "m.typing")),
            f"{label}: typing stopped",
        )


def test_oversized_body_is_refused_before_anything(trio: Trio) -> None:
    """A body past max_request_size (10 MiB by default) is refused with 413 M_TOO_LARGE
    before any signature is checked; the server stays up."""
    assert trio.ours.federation_url
    padding = "x" * (11 * 2**20)
    txn = {"origin": trio.partner.server_name, "origin_server_ts": 1, "pdus": [], "edus": [], "pad": padding}
    raw = json.dumps(txn).encode()
    header, _ = x_matrix(
        signing_key(trio.partner),
        origin=trio.partner.server_name,
        destination=trio.ours.server_name,
        method="PUT",
        uri="/_matrix/federation/v1/send/huge",
    )
    try:
        status, body = federation_request(
            trio.ours.federation_url, "PUT", "/_matrix/federation/v1/send/huge", header, raw=raw
        )
    except OSError as exc:  # a server may also cut the connection once it has said no
        status, body = 413, {"errcode": "M_TOO_LARGE", "cut": repr(exc)}
    assert status == 413 and body["errcode"] == "M_TOO_LARGE", (status, body)
    status, body = trio.signed(trio.partner, "GET", "/_matrix/federation/v1/version")
    assert status == 200 and "server" in body, body
