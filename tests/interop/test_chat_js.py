"""People chatting through matrix-js-sdk (the SDK behind Element Web), over real sockets.

js/chat.mjs runs two js-sdk users through a conversation (create and invite, join, talk,
edit, react, redact, type, read receipts) and a second device that scrolls back to the
room's creation; each side records what its listeners received (RoomEvent.Timeline,
RoomMemberEvent.Typing, RoomEvent.Receipt, RoomEvent.Redaction). js/chat_peer.mjs is one
js-sdk user talking with a matrix-nio user in the same room. The scripts print JSON; the
assertions here check what each client received.

Runs once per storage engine; INTEROP_TARGET=synapse runs it against a real Synapse
instead, to prove the test right.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from nio import (
    LoginResponse,
    ReactionEvent,
    ReceiptEvent,
    RoomCreateResponse,
    RoomMemberEvent,
    RoomMessageText,
    RoomReadMarkersResponse,
    RoomRedactResponse,
    RoomSendResponse,
    RoomTypingResponse,
    SyncResponse,
    TypingNoticeEvent,
)

from tests.interop import harness as h
from tests.interop import js_node
from tests.interop.nio_client import RecordingClient

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]

PASSWORD = "js chat password"
SCRIPT_TIMEOUT = 60  # seconds: each script's own global timeout; the subprocess gets a little more


def _show(result: dict[str, Any], limit: int = 12000) -> str:
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if len(text) > limit:
        text = text[: limit // 2] + "\n...\n" + text[-limit // 2 :]
    return "\nmatrix-js-sdk result:\n" + text


def _run(script: str, args: list[str]) -> dict[str, Any]:
    try:
        return js_node.run_node_script(script, [*args, "--timeout", str(SCRIPT_TIMEOUT)], timeout=SCRIPT_TIMEOUT + 15)
    except h.HarnessError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def _received(result: dict[str, Any], user: str) -> dict[str, Any]:
    return result["users"][user]["received"]


def _timeline(result: dict[str, Any], user: str, room_id: str) -> dict[str, dict[str, Any]]:
    return {e["eventId"]: e for e in _received(result, user)["timeline"] if e["roomId"] == room_id}


# --------------------------------------------------------------------------- two js-sdk users


def test_js_sdk_users_chat_edit_react_redact_type_read_and_scroll_back(
    js_sdk: Path, homeserver: h.RunningServer
) -> None:
    alice = homeserver.register_user("js_alice", PASSWORD)
    bob = homeserver.register_user("js_bob", PASSWORD)
    result = _run(
        "chat.mjs",
        ["--base-url", homeserver.client_url, "--alice", "js_alice", "--bob", "js_bob", "--password", PASSWORD],
    )
    assert result["ok"] is True, f"failed at step {result.get('failedStep')!r}" + _show(result)
    assert result["_exit_code"] == 0, _show(result)
    room_id, sent = result["roomId"], result["sent"]
    problems: list[str] = []

    def check(ok: bool, problem: str) -> None:
        if not ok:
            problems.append(problem)

    check(result["inviteRoomName"] == "js garden", "bob's invite did not carry the room name in its stripped state")

    at_alice = _timeline(result, "alice", room_id)
    at_bob = _timeline(result, "bob", room_id)

    hello = at_bob[sent["hello"]]
    check(hello["sender"] == alice and hello["originalContent"]["body"] == "Hello Bob", "bob's copy of hello")
    reply = at_alice[sent["reply"]]
    check(reply["sender"] == bob and reply["content"]["body"] == "Hi Alice", "alice's copy of the reply")
    check(
        reply["content"].get("m.relates_to") == {"m.in_reply_to": {"event_id": sent["hello"]}},
        "the reply lost its m.in_reply_to",
    )

    edit = at_bob[sent["edit"]]
    check(edit["relation"] == {"rel_type": "m.replace", "event_id": sent["hello"]}, "bob's copy of the edit")
    check(edit["originalContent"]["m.new_content"]["body"] == "Hello Bob!", "the edit's m.new_content")
    for side in ("helloAtBob", "helloAtAlice"):  # the SDK applied the edit to the original
        view = result["views"][side]
        check(
            view["replacingEventId"] == sent["edit"] and view["content"]["body"] == "Hello Bob!",
            f"{side}: the SDK does not show the edit: {view}",
        )

    reaction = at_alice[sent["reaction"]]
    check(reaction["type"] == "m.reaction" and reaction["sender"] == bob, "alice's copy of the reaction")
    check(
        reaction["relation"] == {"rel_type": "m.annotation", "event_id": sent["hello"], "key": "🌹"},
        "the reaction's m.relates_to",
    )
    check(result["views"]["reactionsAtAlice"] == ["🌹"], "alice's SDK does not aggregate the reaction")

    redaction = at_bob[sent["redaction"]]
    check(
        sent["mistake"] in (redaction["content"].get("redacts"), redaction["topLevelRedacts"]),
        f"bob's copy of the redaction names no redacted event: {redaction}",
    )
    redactions = [r for r in _received(result, "bob")["redactions"] if r["roomId"] == room_id]
    check(
        {"roomId": room_id, "eventId": sent["redaction"], "redacts": sent["mistake"]} in redactions,
        "matrix-js-sdk did not apply the live redaction (no RoomEvent.Redaction): it reads the top-level "
        f"`redacts` (Synapse serves it in every room version), and the event had {redaction['topLevelRedacts']!r}",
    )
    mistake = result["views"]["mistakeAtBob"]
    check(mistake["redacted"] is True and "body" not in mistake["content"], f"bob still shows the mistake: {mistake}")

    typing = [(t["userId"], t["typing"]) for t in _received(result, "alice")["typing"] if t["roomId"] == room_id]
    started = typing.index((bob, True)) if (bob, True) in typing else None
    check(started is not None and (bob, False) in typing[started:], f"alice's typing notifications: {typing}")

    receipts = [r["content"] for r in _received(result, "alice")["receipts"] if r["roomId"] == room_id]
    check(any(bob in c.get(sent["last"], {}).get("m.read", {}) for c in receipts), f"alice's receipts: {receipts}")
    check(result["readUpTo"]["bobAccordingToAlice"] == sent["last"], f"read up to: {result['readUpTo']}")

    # Bob's phone: a short first sync, then scrollback to the creation event.
    history = result["history"]
    ids = [e["eventId"] for e in history]
    check(result["historyComplete"] and history[0]["type"] == "m.room.create", "scrollback did not reach m.room.create")
    check(len(ids) == len(set(ids)), f"duplicate events in scrollback: {ids}")
    conversation = [sent[k] for k in ("hello", "reply", "edit", "reaction", "mistake", "redaction", "question", "last")]
    check([i for i in ids if i in conversation] == conversation, f"scrollback order: {ids} vs {conversation}")
    by_id = {e["eventId"]: e for e in history}
    check(by_id.get(sent["mistake"], {}).get("redacted") is True, "the mistake is not redacted in scrollback")
    check(
        by_id.get(sent["hello"], {}).get("replacingEventId") == sent["edit"],
        "hello does not show its edit in scrollback",
    )
    joins = [
        e["stateKey"] for e in history if e["type"] == "m.room.member" and e["content"].get("membership") == "join"
    ]
    check(joins == [alice, bob], f"joins in scrollback: {joins}")
    check(result["forwards"] == ids, f"dir=f from the start gave {result['forwards']}, scrollback gave {ids}")
    assert not problems, "\n".join(problems) + _show(result)


# --------------------------------------------------------------------------- nio and js-sdk together


class _NioSide:
    """The matrix-nio user's /sync loop, keeping what it received."""

    def __init__(self, client: RecordingClient) -> None:
        self.client = client
        self.timeline: list[Any] = []
        self.ephemeral: list[Any] = []
        self.raw: list[Any] = []

    async def until(self, room_id: str, what: str, find: Any, timeout: float = 30.0) -> Any:
        for event in [*self.timeline, *self.ephemeral]:
            if find(event):
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = await self.client.sync(timeout=1000)
            assert isinstance(response, SyncResponse), self.client.explain(response)
            self.raw.append(self.client.exchanges[-1].get("response_body"))
            room = response.rooms.join.get(room_id)
            if room is None:
                continue
            self.timeline.extend(room.timeline.events)
            self.ephemeral.extend(room.ephemeral)
            for event in [*room.timeline.events, *room.ephemeral]:
                if find(event):
                    return event
        tail = "\n".join(json.dumps(body, default=str)[:2000] for body in self.raw[-5:])
        pytest.fail(f"the nio user never saw {what} within {timeout:.0f}s; last /sync bodies:\n{tail}", pytrace=False)


def _receipt_from(user_id: str, event_id: str) -> Any:
    def find(event: Any) -> bool:
        return isinstance(event, ReceiptEvent) and any(
            (r.user_id, r.event_id, r.receipt_type) == (user_id, event_id, "m.read") for r in event.receipts
        )

    return find


async def _nio_talks_with_js(server: h.RunningServer, js_user: str) -> tuple[dict[str, Any], dict[str, str]]:
    mia = RecordingClient(server.client_url, "nio_mia")
    login = await mia.login(PASSWORD, device_name="mia nio")
    assert isinstance(login, LoginResponse), mia.explain(login)
    try:
        created = await mia.room_create(name="Mixed company", invite=[js_user])
        assert isinstance(created, RoomCreateResponse), mia.explain(created)
        room_id = created.room_id
        side = _NioSide(mia)
        await mia.sync(timeout=0)
        args = ["--base-url", server.client_url, "--user", "js_jay", "--password", PASSWORD]
        args += ["--room-id", room_id, "--peer", server.user_id("nio_mia")]
        js_run = asyncio.ensure_future(asyncio.to_thread(_run, "chat_peer.mjs", args))
        sent: dict[str, str] = {"room_id": room_id}

        async def send(body: str, **extra: Any) -> str:
            response = await mia.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body, **extra})
            assert isinstance(response, RoomSendResponse), mia.explain(response)
            return str(response.event_id)

        async def wait(what: str, find: Any) -> Any:
            """The nio side waits; it stops early only if the js side has already failed."""
            waiting = asyncio.ensure_future(side.until(room_id, what, find))
            await asyncio.wait({waiting, js_run}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done() and not js_run.result()["ok"]:
                waiting.cancel()
                result = js_run.result()
                pytest.fail(
                    f"the js-sdk script failed while the nio user waited for {what}" + _show(result), pytrace=False
                )
            return await waiting

        await wait(
            "the js user's join",
            lambda e: isinstance(e, RoomMemberEvent) and e.state_key == js_user and e.membership == "join",
        )
        js_hi = await wait("the js user's hello", lambda e: isinstance(e, RoomMessageText) and e.body == "hi from js")
        sent["js_hi"] = js_hi.event_id
        sent["nio_hi"] = await send("hi from nio")
        markers = await mia.room_read_markers(room_id, js_hi.event_id, read_event=js_hi.event_id)
        assert isinstance(markers, RoomReadMarkersResponse), mia.explain(markers)
        typing = await mia.room_typing(room_id, True, timeout=20000)
        assert isinstance(typing, RoomTypingResponse), mia.explain(typing)
        sent["nio_mistake"] = await send("delete me")
        redacted = await mia.room_redact(room_id, sent["nio_mistake"], reason="typo")
        assert isinstance(redacted, RoomRedactResponse), mia.explain(redacted)
        sent["nio_redaction"] = redacted.event_id
        sent["nio_edit"] = await send(
            "* hi from nio (edited)",
            **{
                "m.new_content": {"msgtype": "m.text", "body": "hi from nio (edited)"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": sent["nio_hi"]},
            },
        )

        reaction = await wait(
            "the js user's reaction", lambda e: isinstance(e, ReactionEvent) and e.reacts_to == sent["nio_hi"]
        )
        assert (reaction.sender, reaction.key) == (js_user, "🎉")
        await wait("the js user typing", lambda e: isinstance(e, TypingNoticeEvent) and js_user in e.users)
        await wait("the js user's read receipt", _receipt_from(js_user, sent["nio_hi"]))
        stopped = await mia.room_typing(room_id, False)  # the js side waits for this before it says bye
        assert isinstance(stopped, RoomTypingResponse), mia.explain(stopped)
        bye = await wait("the js user's goodbye", lambda e: isinstance(e, RoomMessageText) and e.body == "bye from js")
        assert bye.sender == js_user
        return await js_run, sent
    finally:
        await mia.close()


def test_nio_user_and_js_sdk_user_talk_in_one_room(js_sdk: Path, homeserver: h.RunningServer) -> None:
    mia = homeserver.register_user("nio_mia", PASSWORD)
    jay = homeserver.register_user("js_jay", PASSWORD)
    result, sent = asyncio.run(_nio_talks_with_js(homeserver, jay))
    assert result["ok"] is True, f"failed at step {result.get('failedStep')!r}" + _show(result)
    room_id = sent["room_id"]
    at_jay = _timeline(result, "jay", room_id)
    problems: list[str] = []

    def check(ok: bool, problem: str) -> None:
        if not ok:
            problems.append(problem)

    hi = at_jay[sent["nio_hi"]]
    check(hi["sender"] == mia and hi["originalContent"]["body"] == "hi from nio", f"jay's copy of mia's hi: {hi}")
    edit = at_jay[sent["nio_edit"]]
    check(edit["relation"] == {"rel_type": "m.replace", "event_id": sent["nio_hi"]}, f"jay's copy of the edit: {edit}")
    view = result["views"]["nioHi"]
    check(
        view["replacingEventId"] == sent["nio_edit"] and view["content"]["body"] == "hi from nio (edited)",
        f"jay's SDK does not show mia's edit: {view}",
    )

    redaction = result["views"]["nioRedaction"]
    check(
        redaction["eventId"] == sent["nio_redaction"] and redaction["redacts"] == sent["nio_mistake"],
        f"jay's copy of the redaction: {redaction}",
    )
    check(
        {"roomId": room_id, "eventId": sent["nio_redaction"], "redacts": sent["nio_mistake"]}
        in _received(result, "jay")["redactions"],
        "matrix-js-sdk did not apply the live redaction (no RoomEvent.Redaction): it reads the top-level "
        f"`redacts`, and the event had {redaction['topLevelRedacts']!r}",
    )
    check(result["views"]["nioMistake"]["redacted"] is True, f"jay still shows {result['views']['nioMistake']}")

    typing = [(t["userId"], t["typing"]) for t in _received(result, "jay")["typing"] if t["roomId"] == room_id]
    started = typing.index((mia, True)) if (mia, True) in typing else None
    check(started is not None and (mia, False) in typing[started:], f"jay's typing notifications: {typing}")
    receipts = [r["content"] for r in _received(result, "jay")["receipts"] if r["roomId"] == room_id]
    check(any(mia in c.get(sent["js_hi"], {}).get("m.read", {}) for c in receipts), f"jay's receipts: {receipts}")
    check(result["sent"]["hi"] == sent["js_hi"], "mia saw a different hello from jay's")
    assert not problems, "\n".join(problems) + _show(result)
