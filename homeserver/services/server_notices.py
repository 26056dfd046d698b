"""Server notices, as Synapse sends them: a system user writing to users in per-user rooms.

``ServerNoticesService.send_notice`` finds the user's notices room (a room the user is
joined or invited to and the system user is joined to) or creates one: ``private_chat``
with ``users_default: -10``, so only the system user may send or invite there, named and
tagged ``m.server_notice`` for the user.  The user is invited (or joined with
``auto_join``) before the notice is sent.  The membership hook refuses rejecting the invite
(``M_CANNOT_LEAVE_SERVER_NOTICE_ROOM``; leaving after joining is allowed, and the next
notice opens a new room) and inviting the system user anywhere; its user ID can't be
registered.  Room name, topic, avatar and the system user's profile follow the
configuration: a notice to an existing room first updates what changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from homeserver.config.server_notices import ServerNoticesConfig
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.core.ids import InvalidID, UserID
from homeserver.services.events import RoomEventService
from homeserver.services.rooms import CreateRoomRequest, RoomService
from homeserver.services.userdata import AccountDataService
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.events import EventRepository, TxnIdInfo
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.server_notices import ServerNoticesStore
from homeserver.storage.userdata import ProfileRepository

logger = logging.getLogger(__name__)

SERVER_NOTICE_TAG = "m.server_notice"
# Synapse's power levels for the room: members below events_default and invite (0).
NOTICE_ROOM_POWER_LEVELS = {"users_default": -10}


class ServerNoticesService:
    def __init__(
        self,
        *,
        server_name: str,
        settings: ServerNoticesConfig,
        rooms: RoomService,
        room_events: RoomEventService,
        event_store: EventRepository,
        room_store: RoomRepository,
        store: ServerNoticesStore,
        accounts: AccountRepository,
        profiles: ProfileRepository,
        account_data: AccountDataService,
    ) -> None:
        self._server_name = server_name
        self.settings = settings
        self.system_user_id = settings.system_user_id(server_name)
        self._rooms = rooms
        self._events = room_events
        self._event_store = event_store
        self._room_store = room_store
        self._store = store
        self._accounts = accounts
        self._profiles = profiles
        self._account_data = account_data
        # One notice room creation at a time per user (two concurrent notices, one room).
        self._locks: dict[str, defer.DeferredLock] = {}

    # -- sending -----------------------------------------------------------------------

    async def check_recipient(self, user_id: str) -> None:
        """Refuse a recipient who is not an existing local user (400 / 404 naming user_id)."""
        try:
            parsed = UserID.parse(user_id)
        except InvalidID:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Parameter user_id is not a valid user ID: {user_id!r}"
            ) from None
        if parsed.domain != self._server_name:
            raise MatrixError(
                400,
                Codes.INVALID_PARAM,
                f"Parameter user_id: server notices can only be sent to local users, not {user_id}",
            )
        if user_id == self.system_user_id:
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter user_id: the system user gets no notices")
        if await self._accounts.get_user(user_id) is None:
            raise not_found(f"Parameter user_id: no such user {user_id}")

    async def send_notice(
        self,
        user_id: str,
        content: dict[str, Any],
        *,
        event_type: str = "m.room.message",
        state_key: str | None = None,
        txn: TxnIdInfo | None = None,
    ) -> str:
        """Send the notice (creating and joining the room as needed); returns its event ID.

        With ``txn`` a retry returns the first event and sends nothing."""
        await self.check_recipient(user_id)
        if txn is not None:
            existing = await self._event_store.get_event_id_for_txn(txn.user_id, txn.device_id, txn.txn_id)
            if existing is not None:
                return existing
        # under the user's lock until invited: the room is only found by the invite
        room_id = await self._locked(user_id, lambda: self._room_with_member(user_id))
        logger.info("sending a server notice to %s in %s", user_id, room_id)
        sent = await self._events.send(
            room_id=room_id,
            sender=self.system_user_id,
            event_type=event_type,
            content=content,
            state_key=state_key,
            txn=txn,
        )
        return sent.event.event_id

    async def notice_room_for(self, user_id: str) -> str | None:
        """The user's current notices room: one the user is joined or invited to and the
        system user is joined to (an invite of the system user elsewhere makes none)."""
        return await self._store.notice_room_for(user_id, self.system_user_id)

    async def is_notice_room(self, room_id: str) -> bool:
        system = await self._room_store.get_membership(room_id, self.system_user_id)
        return system is not None and system.membership == "join"

    async def _locked(self, user_id: str, fn: Callable[[], Any]) -> Any:
        lock = self._locks.setdefault(user_id, defer.DeferredLock())
        await lock.acquire()
        try:
            return await fn()
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)

    async def _room_with_member(self, user_id: str) -> str:
        room_id = await self._get_or_create_room(user_id)
        await self._ensure_member(user_id, room_id)
        return room_id

    async def _get_or_create_room(self, user_id: str) -> str:
        await self._sync_system_profile()
        room_id = await self.notice_room_for(user_id)
        if room_id is not None:
            await self._refresh_room(room_id)
            return room_id
        s = self.settings
        initial: tuple[tuple[str, str, dict[str, Any]], ...] = ()
        if s.room_avatar_url:
            initial = (("m.room.avatar", "", {"url": s.room_avatar_url}),)
        room_id, _ = await self._rooms.create_room(
            self.system_user_id,
            CreateRoomRequest(
                preset="private_chat",
                name=s.room_name or None,
                topic=s.room_topic or None,
                initial_state=initial,
                power_level_content_override=dict(NOTICE_ROOM_POWER_LEVELS),
                # notices are sent in clear: never encrypt this room by default (as Synapse)
                ignore_forced_encryption=True,
            ),
        )
        await self._account_data.set_tag(user_id, user_id, room_id, SERVER_NOTICE_TAG, {})
        logger.info("created the server notices room %s for %s", room_id, user_id)
        return room_id

    async def _ensure_member(self, user_id: str, room_id: str) -> None:
        current = await self._room_store.get_membership(room_id, user_id)
        if current is None or current.membership not in ("invite", "join"):
            await self._rooms.update_membership(
                sender=self.system_user_id, room_id=room_id, action="invite", target=user_id
            )
            current = None
        if self.settings.auto_join and (current is None or current.membership == "invite"):
            await self._rooms.update_membership(sender=user_id, room_id=room_id, action="join")

    # -- keeping the room as configured ------------------------------------------------

    async def _sync_system_profile(self) -> None:
        """The system user's profile is the configured one (its room joins carry it)."""
        wanted = (self.settings.system_mxid_display_name, self.settings.system_mxid_avatar_url)
        if (await self._profiles.get_profile(self.system_user_id) or (None, None)) != wanted:
            await self._profiles.set_field(self.system_user_id, "displayname", wanted[0])
            await self._profiles.set_field(self.system_user_id, "avatar_url", wanted[1])

    async def _refresh_room(self, room_id: str) -> None:
        """Apply configuration changes to an existing room: profile, name, avatar, topic."""
        s = self.settings
        me = await self._room_store.get_membership(room_id, self.system_user_id)
        if me is not None and (me.displayname, me.avatar_url) != (s.system_mxid_display_name, s.system_mxid_avatar_url):
            await self._rooms.update_membership(sender=self.system_user_id, room_id=room_id, action="join")
        for event_type, key, wanted in (
            ("m.room.name", "name", s.room_name),
            ("m.room.avatar", "url", s.room_avatar_url),
            ("m.room.topic", "topic", s.room_topic),
        ):
            event = await self._events.current_state_event(room_id, event_type)
            have = event.content.get(key) if event is not None else None
            if (have or None) != (wanted or None):
                await self._events.send(
                    room_id=room_id,
                    sender=self.system_user_id,
                    event_type=event_type,
                    content={key: wanted or ""},
                    state_key="",
                )

    # -- hooks -------------------------------------------------------------------------

    async def before_membership(self, sender: str, room_id: str, action: str, target: str) -> None:
        """RoomService hook: the system user can't be invited anywhere, and a notices
        room's invite can't be rejected (Synapse: M_CANNOT_LEAVE_SERVER_NOTICE_ROOM)."""
        if action == "invite" and target == self.system_user_id:
            raise forbidden("Cannot invite this user")
        if action == "leave" and target == sender and sender != self.system_user_id:
            current = await self._room_store.get_membership(room_id, sender)
            if current is not None and current.membership == "invite" and await self.is_notice_room(room_id):
                raise MatrixError(403, Codes.CANNOT_LEAVE_SERVER_NOTICE_ROOM, "You cannot reject this invite")

    def check_username(self, user_id: str) -> None:
        """Registration check: the system user's ID is reserved (Synapse: M_EXCLUSIVE)."""
        if user_id == self.system_user_id:
            raise MatrixError(400, Codes.EXCLUSIVE, "This user ID is reserved.")
