"""What our server tells the others: room events (PDUs) and ephemeral data (EDUs).

:class:`FederationOutbound` decides *who* gets what; the persisted per-destination
queues of :class:`~homeserver.federation.sender.FederationSender` decide *when* (in
order, retried until the destination answers, resumed after a restart).

Every event persisted with a sender of ours (not an outlier, not rejected) goes, as its
stored JSON, to the servers in the room: those of the members joined in the state after
it, plus, for a membership change, the server of a member who was joined before it (a
kicked or leaving server hears it) and the target's server for invites, kicks and bans.
Never to ourselves, never to a server off the allowlist (``federation_domain_whitelist``)
and never to one the room's ``m.room.server_acl`` refuses.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from homeserver.events.model import Event
from homeserver.federation.acl import server_matches_acl
from homeserver.federation.edus import EphemeralFederation, server_of
from homeserver.storage.events import StoredEvent
from homeserver.storage.state import StateMap

if TYPE_CHECKING:
    from homeserver.federation.components import Federation
    from homeserver.services.ephemeral import ReceiptService, TypingService
    from homeserver.services.events import RoomEventService
    from homeserver.services.presence import PresenceService

logger = logging.getLogger(__name__)

ACL_KEY = ("m.room.server_acl", "")
_ACL_CACHE_SIZE = 10_000

EduHandler = Callable[[str, Mapping[str, Any]], Awaitable[None]]


class OutboundQueues(Protocol):
    """:class:`~homeserver.federation.sender.FederationSender`."""

    async def send_pdu(
        self, destinations: Iterable[str], pdu_json: Mapping[str, Any], stream: int, *, event_id: str | None = None
    ) -> None: ...

    async def send_edu(
        self, destination: str, edu_type: str, content: Mapping[str, Any], key: str | None = None
    ) -> None: ...


class EventLookup(Protocol):
    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]: ...


class RoomMembers(Protocol):
    """:class:`~homeserver.services.events.RoomEventService`."""

    async def joined_users(self, room_id: str) -> Collection[str]: ...

    async def current_state_ids(self, room_id: str) -> StateMap: ...


class FederationOutbound:
    """Sends room events and EDUs to the servers concerned; see the module docstring.

    ``on_event_persisted`` is the post-persist hook of
    :class:`~homeserver.services.events.RoomEventService`; ``edu_handlers`` are the
    inbound EDU handlers (filled by :mod:`homeserver.federation.edus`) for the
    transaction receiver.
    """

    def __init__(
        self,
        *,
        server_name: str,
        queues: OutboundQueues,
        events: EventLookup,
        rooms: RoomMembers,
        is_allowed: Callable[[str], bool],
    ) -> None:
        self.server_name = server_name
        self._queues = queues
        self._events = events
        self._rooms = rooms
        self._is_allowed = is_allowed
        # room -> (ID of its m.room.server_acl or None, content or None); bounded, LRU
        self._acls: OrderedDict[str, tuple[str | None, Mapping[str, Any] | None]] = OrderedDict()
        self.edu_handlers: dict[str, EduHandler] = {}

    # -- rooms and servers ---------------------------------------------------------------

    def is_local(self, user_id: str) -> bool:
        return server_of(user_id) == self.server_name

    async def servers_in_room(self, room_id: str) -> set[str]:
        """The servers with a member joined to the room now (ours included if one of ours is)."""
        return {server_of(u) for u in await self._rooms.joined_users(room_id)}

    async def destinations_for_room(self, room_id: str) -> set[str]:
        """The servers in the room we may send to: not us, allowlisted, allowed by the ACL."""
        return await self._filter(room_id, await self.servers_in_room(room_id), None)

    async def server_allowed_in_room(self, room_id: str, server_name: str) -> bool:
        """False when the room's current ``m.room.server_acl`` refuses ``server_name``."""
        acl = await self._acl(room_id, None)
        return acl is None or server_matches_acl(acl, server_name)

    # -- room events ---------------------------------------------------------------------

    async def on_event_persisted(self, event: Event, stream: int, state_after: StateMap) -> None:
        """Post-persist hook: send an event of ours to the servers in its room.

        It runs under the room's lock right after the room's current state became
        ``state_after``, so the cached joined members are those of ``state_after``.
        """
        if event.type == ACL_KEY[0] and event.state_key == "":
            self._acls.pop(event.room_id, None)
        if not self.is_local(event.sender) or stream <= 0:  # not ours, or backfilled history
            return
        destinations = await self._filter(event.room_id, await self._servers_for_event(event), state_after)
        if not destinations:
            return  # no other server in the room: no storage lookup either (the common case)
        stored = (await self._events.get_events([event.event_id])).get(event.event_id)
        if stored is None or stored.outlier or stored.rejected_reason is not None:
            return
        await self._enqueue(stored.event, stream, destinations)

    async def send_event(
        self,
        event: Event,
        stream: int,
        *,
        destinations: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
    ) -> None:
        """Send a persisted event (at ``stream`` in our event stream) as its stored JSON.

        ``destinations`` defaults to the servers that should hear of it (see the module
        docstring); ``exclude`` is taken out (the server a relayed join came from, say).
        The allowlist and the room's server ACL always apply.
        """
        if destinations is None:
            stored = (await self._events.get_events([event.event_id])).get(event.event_id)
            if stored is not None:
                event = stored.event
            servers = await self._servers_for_event(event)
        else:
            servers = set(destinations)
        servers -= set(exclude)
        await self._enqueue(event, stream, await self._filter(event.room_id, servers, None))

    async def _enqueue(self, event: Event, stream: int, destinations: set[str]) -> None:
        if destinations:
            await self._queues.send_pdu(sorted(destinations), event.dict, stream, event_id=event.event_id)

    async def _servers_for_event(self, event: Event) -> set[str]:
        servers = await self.servers_in_room(event.room_id)
        if event.type == "m.room.member" and event.state_key is not None:
            # Only the target's membership changes, so "joined before or after, plus the
            # target of an invite, kick or ban" is the joined servers plus the target's.
            servers.add(server_of(event.state_key))
        return servers

    async def _filter(self, room_id: str, servers: Iterable[str], state_after: StateMap | None) -> set[str]:
        candidates = {s for s in servers if s and s != self.server_name and self._is_allowed(s)}
        if not candidates:
            return candidates
        acl = await self._acl(room_id, state_after)
        return candidates if acl is None else {s for s in candidates if server_matches_acl(acl, s)}

    async def _acl(self, room_id: str, state: StateMap | None) -> Mapping[str, Any] | None:
        """The content of the room's ACL in ``state`` (None: the current state)."""
        cached = self._acls.get(room_id)
        if state is None:
            if cached is not None:
                self._acls.move_to_end(room_id)
                return cached[1]
            state = await self._rooms.current_state_ids(room_id)
        acl_id = state.get(ACL_KEY)
        if cached is not None and cached[0] == acl_id:
            return cached[1]
        content: Mapping[str, Any] | None = None
        if acl_id is not None:
            found = (await self._events.get_events([acl_id])).get(acl_id)
            content = found.event.content if found is not None else None
        self._acls[room_id] = (acl_id, content)
        while len(self._acls) > _ACL_CACHE_SIZE:
            self._acls.popitem(last=False)
        return content

    # -- EDUs ----------------------------------------------------------------------------

    async def send_edu(
        self, destinations: Iterable[str], edu_type: str, content: Mapping[str, Any], key: str | None = None
    ) -> None:
        """Queue an EDU for each destination we may federate with (never ourselves).

        ``key``: a later EDU of the same type and key replaces a pending one.
        """
        for destination in sorted(set(destinations)):
            if destination and destination != self.server_name and self._is_allowed(destination):
                await self._queues.send_edu(destination, edu_type, content, key)


def build_federation_outbound(
    *,
    federation: Federation,
    is_allowed: Callable[[str], bool],
    room_events: RoomEventService,
    event_store: EventLookup,
    shared_room_users: Callable[[str], Awaitable[Collection[str]]],
    typing: TypingService,
    receipts: ReceiptService,
    presence: PresenceService,
) -> FederationOutbound:
    """Wire outbound federation (called once, by ``app.build_homeserver``): the post-persist
    hook for room events, the listeners of typing, receipts and presence, and the inbound
    EDU handlers (in ``edu_handlers``, for the transaction receiver)."""
    outbound = FederationOutbound(
        server_name=room_events.server_name,
        queues=federation.sender,
        events=event_store,
        rooms=room_events,
        is_allowed=is_allowed,
    )
    room_events.post_persist_hooks.append(outbound.on_event_persisted)
    ephemeral = EphemeralFederation(
        outbound=outbound,
        joined_users=room_events.joined_users,
        shared_room_users=shared_room_users,
        typing=typing,
        receipts=receipts,
        presence=presence,
    )
    typing.on_local_typing = ephemeral.local_typing
    receipts.on_local_receipt = ephemeral.local_receipt
    presence.on_local_presence = ephemeral.local_presence
    outbound.edu_handlers.update(ephemeral.handlers())
    federation.outbound = outbound
    return outbound
