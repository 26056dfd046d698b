"""The XMPP bridge (appservices/xmpp), started by its console command, as a component
(XEP-0114) of a real Prosody (Debian's package, generated config, loopback ports), with real
XMPP clients (slixmpp) on the other side and our homeserver started by its CLI:

* one-to-one: an XMPP user writes to a Matrix user's JID, the Matrix user is invited to a
  direct room by the contact's ghost and reads it; the answer reaches the XMPP client;
  a Matrix user invites an XMPP contact's ghost and writes: the contact receives it;
* presence both ways: the contact's "away" becomes its ghost's Matrix presence, the Matrix
  user's presence reaches the subscribed contact;
* MUC: "!xmpp join room@conference" bridges a Matrix room with a MUC; an occupant's message
  lands in the room as a ghost, the Matrix user's message is said in the MUC under their name.
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.interop import harness as h
from tests.interop.bridge_support import BridgeProcess, Person, Prosody, start_with_bridge, until
from tests.interop.conftest import ENGINE_PARAMS

pytestmark = pytest.mark.interop


class XmppUser:
    """A real XMPP client (slixmpp) on Prosody's c2s port."""

    def __init__(self, jid: str, password: str, port: int) -> None:
        from slixmpp import ClientXMPP

        self.port = port
        self.client: Any = ClientXMPP(jid, password)  # type: ignore[no-untyped-call]
        self.client.enable_starttls = False
        self.client.enable_direct_tls = False
        self.client.enable_plaintext = True
        self.client["feature_mechanisms"].unencrypted_plain = True
        self.client.register_plugin("xep_0045")
        self.messages: list[Any] = []
        self.presences: list[Any] = []
        self.ready = asyncio.Event()
        self.client.add_event_handler("session_start", self._started)
        self.client.add_event_handler("message", self.messages.append)
        self.client.add_event_handler("presence", self.presences.append)
        self.client.add_event_handler("groupchat_presence", self.presences.append)  # the MUC plugin's

    async def _started(self, _: Any) -> None:
        await self.client.get_roster()  # an "interested resource": Prosody then routes subscriptions to it
        self.client.send_presence()
        self.ready.set()

    async def connect(self) -> XmppUser:
        self.client.connect("127.0.0.1", self.port)
        await asyncio.wait_for(self.ready.wait(), 15)
        return self

    def bodies(self, mtype: str) -> list[tuple[str, str]]:
        return [(str(m["from"]), str(m["body"])) for m in self.messages if m["type"] == mtype and m["body"]]


@pytest.fixture
def prosody(tmp_path: Path) -> Any:
    if shutil.which("prosody") is None:
        reason = "prosody is not installed (make test installs it: apt-get install -y prosody)"
        if h.in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    server = Prosody(tmp_path / "prosody")
    server.write_config()
    yield server
    server.stop()


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_xmpp_bridge(our_homeserver: Any, prosody: Prosody, tmp_path: Path, engine: str) -> None:
    alice = prosody.register("alice", "alice-pw")
    bob = prosody.register("bob", "bob-pw")
    prosody.start()
    server, config_path, config = start_with_bridge(
        our_homeserver,
        engine,
        "xmpp",
        tmp_path,
        xmpp={
            "component_jid": prosody.component,
            "component_secret": prosody.secret,
            "server_host": "127.0.0.1",
            "server_port": prosody.component_port,
        },
    )
    bridge = BridgeProcess("xmpp", config_path, tmp_path / "xmpp-bridge.log").start()
    try:
        bridge.wait_for_log("XMPP component")
        asyncio.run(_scenario(server, config, prosody, alice, bob))
    except BaseException:
        print(bridge.log_tail(120))
        print(prosody.log_tail())
        raise
    finally:
        problem = bridge.stop()
    assert problem is None, problem
    assert "Traceback" not in bridge.log_tail(2000), bridge.log_tail(200)


def ghost_of(server: h.RunningServer, jid: str) -> str:
    return f"@xmpp_{jid.replace('@', '=40')}:{server.server_name}"


async def _scenario(
    server: h.RunningServer, config: dict[str, Any], prosody: Prosody, alice_jid: str, bob_jid: str
) -> None:
    anne = await Person.login(server, "anne")
    anne_jid = f"anne%{server.server_name.replace(':', '=3a')}@{prosody.component}"
    alice = await XmppUser(alice_jid, "alice-pw", prosody.c2s_port).connect()
    bob = await XmppUser(bob_jid, "bob-pw", prosody.c2s_port).connect()
    try:
        # XMPP -> Matrix, one-to-one: a direct room appears
        alice.client.send_message(mto=anne_jid, mbody="Salut Anne, depuis XMPP", mtype="chat")
        room_id = await anne.wait_invite()
        await anne.call("POST", f"/join/{urllib.parse.quote(room_id)}", {})
        first = await anne.wait_message(room_id, "Salut Anne, depuis XMPP")
        alice_ghost = ghost_of(server, alice_jid)
        assert first["sender"] == alice_ghost
        assert await anne.displayname(alice_ghost) == "alice"

        # Matrix -> XMPP
        await anne.send(room_id, "Bonjour Alice, depuis Matrix")
        await until(
            "alice to receive anne's answer",
            lambda: "Bonjour Alice, depuis Matrix" in [b for _, b in alice.bodies("chat")],
        )
        sender = next(f for f, b in alice.bodies("chat") if b == "Bonjour Alice, depuis Matrix")
        assert sender.split("/")[0] == anne_jid

        # presence, XMPP -> Matrix: alice subscribes to anne, then goes away
        alice.client.send_presence_subscription(pto=anne_jid)
        await until(
            "anne's JID to accept",
            lambda: any(str(p["from"].bare) == anne_jid and p["type"] == "subscribed" for p in alice.presences),
        )
        # the bridge subscribes back (alice's client accepts): alice's presence now reaches it,
        # i.e. Prosody's roster of alice has anne with "from" (asked of Prosody, not the
        # client's local copy, which raced roster pushes under load). Prosody does not always
        # record alice's own "to" after the component's "subscribed" (seen: "from", where the
        # client's copy said "both"); anne's presence reaching alice is asserted below.
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            await alice.client.get_roster()
            if alice.client.client_roster[anne_jid]["subscription"] in ("from", "both"):
                break
            assert asyncio.get_running_loop().time() < deadline, (
                "timed out waiting for the bridge to subscribe to alice: roster says "
                f"{alice.client.client_roster[anne_jid]['subscription']!r}"
            )
            await asyncio.sleep(0.2)
        alice.client.send_presence(pshow="away", pstatus="en réunion")

        async def ghost_presence() -> dict[str, Any]:
            return dict(await anne.call("GET", f"/presence/{urllib.parse.quote(alice_ghost)}/status"))

        deadline = asyncio.get_running_loop().time() + 15
        status = await ghost_presence()
        while status.get("status_msg") != "en réunion" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            status = await ghost_presence()
        assert status["presence"] == "unavailable" and status["status_msg"] == "en réunion", status

        # presence, Matrix -> XMPP
        await anne.call(
            "PUT",
            f"/presence/{urllib.parse.quote(anne.user_id)}/status",
            {"presence": "unavailable", "status_msg": "absente"},
        )
        await until(
            "alice to see anne away",
            lambda: any(
                str(p["from"].bare) == anne_jid and p["show"] == "away" and p["status"] == "absente"
                for p in alice.presences
            ),
        )

        # Matrix -> XMPP, started from Matrix: anne invites bob's ghost
        bob_ghost = ghost_of(server, bob_jid)
        dm = (await anne.call("POST", "/createRoom", {"invite": [bob_ghost], "is_direct": True}))["room_id"]
        await anne.wait_joined(dm, bob_ghost)
        await anne.send(dm, "Bob, tu es là ?")
        await until("bob to receive anne's message", lambda: "Bob, tu es là ?" in [b for _, b in bob.bodies("chat")])

        # MUC
        muc = f"salon@conference.{prosody.domain}"
        await bob.client.plugin["xep_0045"].join_muc_wait(muc, "bob", maxstanzas=0, timeout=10)
        bot = server.user_id(config["appservice"]["bot_localpart"])
        room = (await anne.call("POST", "/createRoom", {"name": "Salon", "invite": [bot]}))["room_id"]
        await anne.wait_joined(room, bot)
        await anne.send(room, f"!xmpp join {muc}")
        await anne.wait_message(room, f"bridged with {muc}")
        await until("the bridge in the MUC", lambda: any(str(p["from"]) == f"{muc}/Matrix" for p in bob.presences))
        bob.client.send_message(mto=muc, mbody="Bonjour le salon", mtype="groupchat")
        said = await anne.wait_message(room, "Bonjour le salon")
        assert said["sender"] == f"@xmpp_salon=40conference.{prosody.domain}/bob:{server.server_name}"
        assert await anne.displayname(said["sender"]) == "bob"
        await anne.send(room, "Bonjour Bob, ici Matrix")
        await until(
            "bob to read anne in the MUC", lambda: (f"{muc}/anne", "Bonjour Bob, ici Matrix") in bob.bodies("groupchat")
        )
        # the MUC echo of anne's message does not come back into the room
        await asyncio.sleep(0.5)
        await anne.sync_once()
        echoes = [
            e
            for e in anne.events
            if e["room_id"] == room and e.get("content", {}).get("body") == "Bonjour Bob, ici Matrix"
        ]
        assert len(echoes) == 1, echoes
    finally:
        for user in (alice, bob):
            user.client.disconnect()
