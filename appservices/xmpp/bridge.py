"""The XMPP bridge: a slixmpp component (XEP-0114) on one side, the appservice on the other.

* one-to-one: an XMPP contact writing to ``anne%hs@<component>`` gets a direct Matrix room
  with @anne (created by the contact's ghost); a Matrix user inviting a ghost
  ``@xmpp_<escaped JID>`` opens the same kind of room; messages flow both ways;
* MUC: ``!xmpp join room@conference.example`` in a Matrix room (the bot being there) joins
  the MUC as the bridge; occupants' messages come in as ghosts, Matrix users speak in the
  MUC under their own nick (one occupant each);
* presence: contacts subscribed to a Matrix user's JID get its presence (from m.presence in
  transactions); a contact's presence sets its ghost's Matrix presence.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import Any

from mautrix.types import (
    Event,
    EventType,
    Membership,
    MessageEvent,
    MessageType,
    PresenceEvent,
    PresenceState,
    RoomID,
    StateEvent,
    TextMessageEventContent,
    UserID,
)
from slixmpp import JID, ComponentXMPP

from appservices.common.core import BridgeCore
from appservices.common.names import escape_localpart, unescape_localpart
from appservices.xmpp.addresses import matrix_presence, matrix_user_jid, mxid_of_jid, xmpp_presence
from appservices.xmpp.config import XmppConfig
from appservices.xmpp.store import XmppStore

log = logging.getLogger("bridge.xmpp")

COMMAND = "!xmpp"
MUC_NS = "http://jabber.org/protocol/muc"
HELP = "XMPP bridge commands:\n!xmpp join <room@conference.domain>: bridge this room with a MUC"


class XmppBridge:
    def __init__(self, config: XmppConfig) -> None:
        self.config = config
        self.core = BridgeCore(config.bridge, "xmpp", self._on_matrix_event)
        self.store = XmppStore(config.bridge.data_dir / "xmpp.db")
        self.bot_jid = f"bridge@{config.component_jid}/bridge"
        # slixmpp's annotations want JID objects everywhere; strings are what it accepts.
        self.xmpp: Any = ComponentXMPP(  # type: ignore[no-untyped-call]
            config.component_jid, config.component_secret, config.server_host, config.server_port
        )
        self.xmpp.add_event_handler("session_start", self._on_session_start)
        self.xmpp.add_event_handler("message", self._queued(self._on_xmpp_message))
        self.xmpp.add_event_handler("presence_subscribe", self._queued(self._on_subscribe))
        # slixmpp names presence events by their show ("presence_away"): take them all here.
        self.xmpp.add_event_handler("presence", self._queued(self._on_contact_presence))
        self._connected = asyncio.Event()
        self._incoming: asyncio.Queue[tuple[Callable[[Any], Awaitable[None]], Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._puppets: dict[str, dict[str, str]] = {}  # MUC -> Matrix user -> nick in it
        self._profiles: dict[str, str] = {}

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.core.start()
        self._worker = asyncio.create_task(self._work(), name="xmpp incoming")
        self.xmpp.connect(self.config.server_host, self.config.server_port)
        await asyncio.wait_for(self._connected.wait(), 30)
        log.info(
            "XMPP component %s connected to %s:%s",
            self.config.component_jid,
            self.config.server_host,
            self.config.server_port,
        )

    async def stop(self) -> None:
        for room_jid, _ in self.store.mucs():
            self.xmpp.send_presence(pto=f"{room_jid}/{self.config.muc_nick}", pfrom=self.bot_jid, ptype="unavailable")
        self.xmpp.disconnect()
        if self._worker is not None:
            self._worker.cancel()
        await self.core.stop()
        self.store.close()

    async def _on_session_start(self, _: Any) -> None:
        for room_jid, _room_id in self.store.mucs():
            self._join_muc(room_jid, self.config.muc_nick, self.bot_jid)
        self._connected.set()

    def _queued(self, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], None]:
        """slixmpp runs handlers concurrently: queue them so stanzas are bridged in order."""

        def enqueue(stanza: Any) -> None:
            self._incoming.put_nowait((handler, stanza))

        return enqueue

    async def _work(self) -> None:
        while True:
            handler, stanza = await self._incoming.get()
            try:
                await handler(stanza)
            except Exception:  # noqa: BLE001 (one bad stanza must not stop the bridge)
                log.exception("failed to bridge %s", stanza)

    def _join_muc(self, room_jid: str, nick: str, from_jid: str) -> None:
        presence = self.xmpp.make_presence(pto=f"{room_jid}/{nick}", pfrom=from_jid)
        muc = ET.Element(f"{{{MUC_NS}}}x")
        ET.SubElement(muc, f"{{{MUC_NS}}}history", maxstanzas="0")
        presence.append(muc)
        presence.send()

    # ---------------------------------------------------------------- XMPP -> Matrix

    async def _ghost_for(self, suffix: str, displayname: str) -> Any:
        ghost = self.core.ghost(escape_localpart(suffix)[:200])
        await ghost.ensure_registered()
        if self._profiles.get(str(ghost.mxid)) != displayname:
            await ghost.set_displayname(displayname)
            self._profiles[str(ghost.mxid)] = displayname
        return ghost

    async def _on_xmpp_message(self, msg: Any) -> None:
        body = str(msg["body"] or "")
        if not body:
            return
        if msg["type"] == "groupchat":
            await self._on_muc_message(msg, body)
        elif msg["type"] in ("chat", "normal"):
            await self._on_direct_message(msg, body)

    async def _on_direct_message(self, msg: Any, body: str) -> None:
        contact = str(msg["from"].bare)
        mxid = mxid_of_jid(str(msg["to"].user))
        if mxid is None or not mxid.endswith(":" + self.core.config.domain):
            self._bounce(msg, "no such Matrix user")
            return
        ghost = await self._ghost_for(contact, str(msg["from"].user) or contact)
        room_id = self.store.direct_room(contact, mxid)
        if room_id is None:
            try:
                room_id = await ghost.create_room(invitees=[UserID(mxid)], is_direct=True)
                await self.core.state_store.joined(room_id, ghost.mxid)
            except Exception as exc:  # noqa: BLE001 (e.g. the Matrix user does not exist)
                self._bounce(msg, f"cannot reach {mxid}: {exc}")
                return
            self.store.put_direct(contact, mxid, room_id)
        await self.core.send(ghost, RoomID(room_id), TextMessageEventContent(msgtype=MessageType.TEXT, body=body))

    def _bounce(self, msg: Any, text: str) -> None:
        reply = msg.reply(text)
        reply["type"] = "error"
        reply["error"]["condition"] = "item-not-found"
        reply["error"]["text"] = text
        reply.send()

    async def _on_muc_message(self, msg: Any, body: str) -> None:
        if str(msg["to"]) != self.bot_jid:
            return  # each of our occupants gets a copy: bridge the bridge's own only
        room_jid = str(msg["from"].bare)
        nick = str(msg["from"].resource)
        room_id = self.store.muc_room(room_jid)
        if room_id is None or not nick or nick == self.config.muc_nick:
            return
        if nick in self._puppets.get(room_jid, {}).values() or msg.xml.find("{urn:xmpp:delay}delay") is not None:
            return  # our own Matrix users' echo, or history
        ghost = await self._ghost_for(f"{room_jid}/{nick}", nick)
        await self.core.send(ghost, RoomID(room_id), TextMessageEventContent(msgtype=MessageType.TEXT, body=body))

    async def _on_subscribe(self, presence: Any) -> None:
        local = str(presence["to"].bare)
        if mxid_of_jid(str(presence["to"].user)) is None:
            return
        contact = str(presence["from"].bare)
        self.store.add_subscriber(local, contact)
        self.xmpp.send_presence(pto=contact, pfrom=local, ptype="subscribed")
        self.xmpp.send_presence(pto=contact, pfrom=local)
        # and the other way: the contact's presence then reaches us, for its ghost
        self.xmpp.send_presence(pto=contact, pfrom=local, ptype="subscribe")
        log.info("%s subscribed to %s", contact, local)

    async def _on_contact_presence(self, presence: Any) -> None:
        if presence["type"] not in ("available", "away", "chat", "dnd", "xa", "unavailable"):
            return  # subscriptions, probes, errors
        sender = presence["from"]
        if sender.domain == self.config.component_jid or self.store.muc_room(str(sender.bare)) is not None:
            return
        if mxid_of_jid(str(presence["to"].user)) is None:
            return
        contact = str(sender.bare)
        ghost = await self._ghost_for(contact, str(sender.user) or contact)
        state = matrix_presence("unavailable" if presence["type"] == "unavailable" else "", str(presence["show"] or ""))
        await ghost.set_presence(PresenceState(state), status=str(presence["status"] or "") or None)

    # ---------------------------------------------------------------- Matrix -> XMPP

    async def _on_matrix_event(self, event: Event) -> None:
        if isinstance(event, PresenceEvent):
            await self._on_matrix_presence(event)
            return
        if isinstance(event, StateEvent) and event.type == EventType.ROOM_MEMBER:
            await self._on_member(event)
            return
        if not isinstance(event, MessageEvent) or event.type != EventType.ROOM_MESSAGE:
            return
        body = str(getattr(event.content, "body", "") or "")
        if body.strip().startswith(COMMAND):
            await self._command(event, body.strip()[len(COMMAND) :].split())
            return
        direct = self.store.direct_of_room(event.room_id)
        if direct is not None and direct[1] == event.sender:
            self.xmpp.send_message(
                mto=direct[0], mbody=body, mtype="chat", mfrom=matrix_user_jid(event.sender, self.config.component_jid)
            )
            return
        room_jid = self.store.muc_of_room(event.room_id)
        if room_jid is not None:
            await self._say_in_muc(room_jid, event, body)

    async def _on_member(self, event: StateEvent) -> None:
        target = str(event.state_key)
        content: Any = event.content
        if content.membership != Membership.INVITE:
            return
        if target == self.core.config.bot_mxid:
            await self.core.send(
                self.core.bot, event.room_id, TextMessageEventContent(msgtype=MessageType.NOTICE, body=HELP)
            )
        elif self.core.config.is_ghost(target):
            # A Matrix user opens a chat with an XMPP contact by inviting the contact's ghost.
            localpart = target[1:].split(":", 1)[0][len(self.core.config.ghost_prefix) :]
            contact = unescape_localpart(localpart)
            if "/" in contact or "@" not in contact:
                return  # a MUC occupant's ghost: not a contact one can chat with
            ghost = self.core.appservice.intent.user(UserID(target))
            await ghost.join_room(event.room_id)
            self.store.put_direct(contact, str(event.sender), event.room_id)

    async def _say_in_muc(self, room_jid: str, event: MessageEvent, body: str) -> None:
        puppets = self._puppets.setdefault(room_jid, {})
        sender = str(event.sender)
        occupant_jid = matrix_user_jid(sender, self.config.component_jid) + "/matrix"
        if sender not in puppets:
            member = await self.core.state_store.get_member(event.room_id, event.sender)
            nick = str(member.displayname) if member and member.displayname else sender[1:].split(":")[0]
            puppets[sender] = nick
            self._join_muc(room_jid, nick, occupant_jid)
            await asyncio.sleep(0.2)  # let the MUC seat the occupant before it speaks
        self.xmpp.send_message(mto=room_jid, mbody=body, mtype="groupchat", mfrom=occupant_jid)

    async def _on_matrix_presence(self, event: PresenceEvent) -> None:
        sender = str(event.sender)
        if self.core.config.is_bridge_user(sender) or not sender.endswith(":" + self.core.config.domain):
            return
        local = matrix_user_jid(sender, self.config.component_jid)
        ptype, show = xmpp_presence(str(event.content.presence.value))
        status = event.content.status_msg
        for contact in self.store.subscribers(local):
            self.xmpp.send_presence(pto=contact, pfrom=local, ptype=ptype, pshow=show, pstatus=status)

    async def _command(self, event: MessageEvent, words: list[str]) -> None:
        room_id = event.room_id
        reply = HELP
        if not self.core.config.may_command(str(event.sender)):
            reply = f"{event.sender} may not give commands to this bridge."
        elif len(words) == 2 and words[0] == "join":
            room_jid = JID(words[1])
            if not room_jid.user or room_jid.resource:
                reply = "Give a MUC address: room@conference.domain"
            else:
                self.store.put_muc(str(room_jid.bare), room_id)
                self._join_muc(str(room_jid.bare), self.config.muc_nick, self.bot_jid)
                reply = f"This room is bridged with {room_jid.bare}"
        await self.core.send(self.core.bot, room_id, TextMessageEventContent(msgtype=MessageType.NOTICE, body=reply))
