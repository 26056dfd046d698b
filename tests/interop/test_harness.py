"""The harness itself, proven against a real Synapse.

If these fail, the interop harness (not our server) is broken: a Synapse upgrade,
a config key renamed, a port or TLS problem. Later federation tests build on
``synapse(federation_tls=True, host="127.0.0.2")`` exactly as the last test does.
"""

from __future__ import annotations

import ssl
import time
import urllib.parse
from collections.abc import Callable

import pytest

from tests.interop import harness as h

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

PASSWORD = "harness password"


def _login(server: h.RunningServer, localpart: str) -> str:
    server.register_user(localpart, PASSWORD)
    status, body = h.http_json(
        "POST",
        server.client_url + "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": PASSWORD,
        },
    )
    assert status == 200, body
    return str(body["access_token"])


@pytest.mark.parametrize("engine", [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)])
def test_synapse_fixture_starts_registers_and_stops_cleanly(
    synapse: Callable[..., h.RunningServer], engine: str
) -> None:
    server = synapse(engine=engine)
    status, versions = h.http_json("GET", server.client_url + "/_matrix/client/versions")
    assert status == 200 and versions["versions"], versions
    _login(server, "harness")  # register_new_matrix_user -c, then a password login
    # Teardown (the fixture) checks SIGTERM -> exit code 0 within 10 s and drops the database.


def test_synapse_fixture_serves_federation_keys_over_tls(
    synapse: Callable[..., h.RunningServer],
) -> None:
    server = synapse(federation_tls=True)
    assert server.federation_url and server.server_name == server.federation_url.removeprefix("https://")
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    status, body = h.http_json("GET", server.federation_url + "/_matrix/key/v2/server", context=insecure)
    assert status == 200 and body["server_name"] == server.server_name, body


def test_two_synapses_federate_over_loopback(
    synapse: Callable[..., h.RunningServer],
) -> None:
    one = synapse(federation_tls=True, host="127.0.0.1")
    two = synapse(federation_tls=True, host="127.0.0.2")
    alice, bob = _login(one, "alice"), _login(two, "bob")
    bob_id = two.user_id("bob")
    status, room = h.http_json(
        "POST",
        one.client_url + "/_matrix/client/v3/createRoom",
        {"invite": [bob_id]},
        token=alice,
    )
    assert status == 200, room
    room_id = urllib.parse.quote(room["room_id"])
    status, joined = h.http_json("POST", two.client_url + f"/_matrix/client/v3/join/{room_id}", {}, token=bob)
    assert status == 200, (joined, one.log_tail(30), two.log_tail(30))
    status, sent = h.http_json(
        "PUT",
        one.client_url + f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": "hello over federation"},
        token=alice,
    )
    assert status == 200, sent
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, messages = h.http_json(
            "GET",
            two.client_url + f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=10",
            token=bob,
        )
        assert status == 200, messages
        if any(e.get("event_id") == sent["event_id"] for e in messages["chunk"]):
            return
        time.sleep(0.2)
    pytest.fail(f"bob never saw alice's message {sent['event_id']}: {messages}")
