"""Typing notifications, read receipts and presence over federation, both ways.

Outbound, the services hand local changes to :class:`EphemeralFederation` (their
``on_local_*`` listeners): typing (``m.typing``) and public read receipts (``m.receipt``)
go to the servers in the room, presence (``m.presence``) to the servers sharing a room
with the user.  Inbound, the handlers registered in ``FederationOutbound.edu_handlers``
check that the origin owns the user and that the user is in the room (for presence: in
a room with one of our users) before the change is applied locally, where /sync shows it.
EDUs get no answer, so a malformed one is logged and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

logger = logging.getLogger(__name__)

TYPING = "m.typing"
RECEIPT = "m.receipt"
PRESENCE = "m.presence"
PRESENCE_STATES = ("online", "unavailable", "offline")


class Outbound(Protocol):
    """:class:`~homeserver.federation.outbound.FederationOutbound`."""

    def is_local(self, user_id: str) -> bool: ...

    async def destinations_for_room(self, room_id: str) -> set[str]: ...

    async def server_allowed_in_room(self, room_id: str, server_name: str) -> bool: ...

    async def send_edu(
        self, destinations: Iterable[str], edu_type: str, content: Mapping[str, Any], key: str | None = None
    ) -> None: ...


class TypingSink(Protocol):
    async def set_remote_typing(self, room_id: str, user_id: str, typing: bool) -> None: ...


class ReceiptSink(Protocol):
    async def apply_remote_receipt(
        self, room_id: str, receipt_type: str, user_id: str, event_ids: Collection[str], data: dict[str, Any]
    ) -> bool: ...


class PresenceSink(Protocol):
    enabled: bool

    async def apply_remote_presence(
        self, user_id: str, state: str, status_msg: str | None, last_active_ago: int
    ) -> None: ...


SharedRoomUsers = Callable[[str], Awaitable[Collection[str]]]
JoinedUsers = Callable[[str], Awaitable[Collection[str]]]


def server_of(user_id: str) -> str:
    """The server part of a user ID (``@a:example.com:8448`` -> ``example.com:8448``)."""
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EphemeralFederation:
    def __init__(
        self,
        *,
        outbound: Outbound,
        joined_users: JoinedUsers,
        shared_room_users: SharedRoomUsers,
        typing: TypingSink,
        receipts: ReceiptSink,
        presence: PresenceSink,
    ) -> None:
        self._outbound = outbound
        self._joined_users = joined_users
        self._shared_room_users = shared_room_users
        self._typing = typing
        self._receipts = receipts
        self._presence = presence

    def handlers(self) -> dict[str, Callable[[str, Mapping[str, Any]], Awaitable[None]]]:
        """Inbound EDU type -> handler(origin, content)."""
        return {TYPING: self.on_typing, RECEIPT: self.on_receipt, PRESENCE: self.on_presence}

    # -- outbound ------------------------------------------------------------------------
    # Listeners of the local services: a federation problem never fails the user's request.

    async def local_typing(self, room_id: str, user_id: str, typing: bool) -> None:
        try:
            destinations = await self._outbound.destinations_for_room(room_id)
            content = {"room_id": room_id, "user_id": user_id, "typing": typing}
            await self._outbound.send_edu(destinations, TYPING, content)
        except Exception:
            logger.exception("could not send the typing notification of %s in %s", user_id, room_id)

    async def local_receipt(
        self, room_id: str, receipt_type: str, user_id: str, event_id: str, data: dict[str, Any]
    ) -> None:
        try:
            destinations = await self._outbound.destinations_for_room(room_id)
            content = {room_id: {receipt_type: {user_id: {"event_ids": [event_id], "data": data}}}}
            await self._outbound.send_edu(destinations, RECEIPT, content)
        except Exception:
            logger.exception("could not send the receipt of %s in %s", user_id, room_id)

    async def local_presence(self, user_id: str, content: dict[str, Any]) -> None:
        try:
            servers = {server_of(u) for u in await self._shared_room_users(user_id)}
            push = {"push": [{**content, "user_id": user_id}]}
            await self._outbound.send_edu(servers, PRESENCE, push, key=user_id)
        except Exception:
            logger.exception("could not send the presence of %s", user_id)

    # -- inbound -------------------------------------------------------------------------

    async def _may_speak_for(self, origin: str, room_id: Any, user_id: Any) -> bool:
        """The origin owns the user, the user is joined to the room, the ACL lets origin in."""
        if not isinstance(room_id, str) or not isinstance(user_id, str) or server_of(user_id) != origin:
            return False
        if user_id not in await self._joined_users(room_id):
            return False
        return await self._outbound.server_allowed_in_room(room_id, origin)

    async def on_typing(self, origin: str, content: Mapping[str, Any]) -> None:
        room_id, user_id, typing = content.get("room_id"), content.get("user_id"), content.get("typing")
        if not isinstance(typing, bool):
            logger.info("m.typing from %s: typing is not a boolean, ignored", origin)
            return
        if not await self._may_speak_for(origin, room_id, user_id):
            logger.info(
                "m.typing from %s for %r in %r: not theirs or not in the room, ignored", origin, user_id, room_id
            )
            return
        assert isinstance(room_id, str) and isinstance(user_id, str)
        await self._typing.set_remote_typing(room_id, user_id, typing)

    async def on_receipt(self, origin: str, content: Mapping[str, Any]) -> None:
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                continue
            users = by_type.get("m.read")  # other types (m.read.private) never cross servers
            if not isinstance(users, dict):
                continue
            for user_id, receipt in users.items():
                event_ids = receipt.get("event_ids") if isinstance(receipt, dict) else None
                if not isinstance(event_ids, list) or not all(isinstance(e, str) for e in event_ids):
                    logger.info("m.receipt from %s for %r: no event_ids, ignored", origin, user_id)
                    continue
                if not await self._may_speak_for(origin, room_id, user_id):
                    logger.info(
                        "m.receipt from %s for %r in %r: not theirs or not in the room", origin, user_id, room_id
                    )
                    continue
                data = _receipt_data(receipt.get("data"))
                await self._receipts.apply_remote_receipt(room_id, "m.read", user_id, event_ids[:10], data)

    async def on_presence(self, origin: str, content: Mapping[str, Any]) -> None:
        if not self._presence.enabled:
            return
        push = content.get("push")
        if not isinstance(push, list):
            logger.info("m.presence from %s: push is not a list, ignored", origin)
            return
        for entry in push:
            if not isinstance(entry, dict):
                continue
            user_id, state = entry.get("user_id"), entry.get("presence")
            if not isinstance(user_id, str) or server_of(user_id) != origin or state not in PRESENCE_STATES:
                logger.info("m.presence from %s for %r: not theirs or no valid presence, ignored", origin, user_id)
                continue
            if not any(self._outbound.is_local(u) for u in await self._shared_room_users(user_id)):
                continue  # none of our users shares a room with them
            status_msg = entry.get("status_msg")
            ago = entry.get("last_active_ago")
            await self._presence.apply_remote_presence(
                user_id,
                state,
                status_msg if isinstance(status_msg, str) else None,
                ago if isinstance(ago, int) and not isinstance(ago, bool) and ago >= 0 else 0,
            )


def _receipt_data(data: Any) -> dict[str, Any]:
    """What we keep of a receipt's data (and show in /sync): its time and thread."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        if _is_int(data.get("ts")):
            out["ts"] = data["ts"]
        if isinstance(data.get("thread_id"), str) and data["thread_id"]:
            out["thread_id"] = data["thread_id"]
    return out
