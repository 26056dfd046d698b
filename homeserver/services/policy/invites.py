"""Who may invite whom: Tchap's domain rule checker, and the limits on external users.

The domain rule checker (synapse-domain-rule-checker) decides invites by the domains of
inviter and invitee (``domain_mapping``), can forbid joining without an invite
(``can_only_join_rooms_with_invite``), inviting after a room's creation
(``can_only_invite_during_room_creation``) and inviting some domains into published rooms.
As a Synapse spam checker it judges this server's users' actions and invites sent to them.

External users are the accounts of the external server (``government_policy.external_server``);
when this server is that server, its users may not invite, nor create or publish public rooms
(each configurable).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from homeserver.config.policy import DomainRuleCheckerConfig, ExternalUsersConfig
from homeserver.core.errors import forbidden
from homeserver.events.model import Event
from homeserver.services.policy.access_rules import FetchEvents, domain_of
from homeserver.services.rooms import CreateRoomRequest
from homeserver.storage.state import StateMap

IsPublished = Callable[[str], Awaitable[bool]]


class DomainRuleChecker:
    def __init__(
        self,
        *,
        config: DomainRuleCheckerConfig,
        server_name: str,
        fetch_events: FetchEvents,
        is_published: IsPublished,
    ) -> None:
        self._config = config
        self._server_name = server_name
        self._mapping: Mapping[str, tuple[str, ...]] = config.domain_mapping or {}
        self._prevented = frozenset(config.domains_prevented_from_being_invited_to_published_rooms)
        self._fetch = fetch_events
        self._is_published = is_published

    def _is_mine(self, user_id: str) -> bool:
        return domain_of(user_id) == self._server_name

    async def check_event(self, event: Event, state: StateMap) -> str | None:
        if event.type != "m.room.member" or event.state_key is None:
            return None
        if event.membership == "invite" and (self._is_mine(event.sender) or self._is_mine(event.state_key)):
            return await self.may_invite(event.sender, event.state_key, event.room_id, state)
        if (
            event.membership == "join"
            and self._is_mine(event.state_key)
            and self._config.can_only_join_rooms_with_invite
        ):
            if not any(t == "m.room.member" for t, _ in state):
                return None  # the creator's own join, right after m.room.create
            prev_id = state.get(("m.room.member", event.state_key))
            prev = (await self._fetch([prev_id])).get(prev_id) if prev_id else None
            if prev is None or prev.membership not in ("invite", "join"):
                return "You can only join a room you were invited to"
        return None

    async def may_invite(self, inviter: str, invitee: str | None, room_id: str, state: StateMap) -> str | None:
        """A refusal reason for ``inviter`` inviting ``invitee`` (None: a 3PID invite), or None."""
        inviter_domain = domain_of(inviter)
        if (
            self._config.can_only_invite_during_room_creation
            and inviter_domain == self._server_name
            and not await self._is_new_room(state)
        ):
            return "Users of this server can only invite when creating a room"
        if invitee is None:
            if self._config.can_invite_by_third_party_id:
                return None
            return "Invitations by e-mail address are disabled on this server"
        invitee_domain = domain_of(invitee)
        if invitee_domain in self._prevented and await self._is_published(room_id):
            return f"Users of {invitee_domain} cannot be invited to a room published in the directory"
        if inviter_domain not in self._mapping:
            if self._config.can_invite_if_not_in_domain_mapping:
                return None
            return f"Users of {inviter_domain} may not send invitations"
        if invitee_domain in self._mapping[inviter_domain]:
            return None
        return f"Users of {inviter_domain} may not invite users of {invitee_domain}"

    async def _is_new_room(self, state: StateMap) -> bool:
        """A room looks new while its only members are the creator and those the creator invited."""
        create_id = state.get(("m.room.create", ""))
        if create_id is None:
            return False
        member_ids = {k: e for (t, k), e in state.items() if t == "m.room.member"}
        fetched = await self._fetch([create_id, *member_ids.values()])
        create = fetched.get(create_id)
        if create is None:
            return False
        creator = create.sender
        for user_id, event_id in member_ids.items():
            member = fetched.get(event_id)
            if user_id == creator or member is None:
                continue
            if member.sender != creator and member.membership != "invite":
                return False
        return True


class ExternalUserRules:
    """Applied when this server is the external server: its users are external users."""

    def __init__(self, *, config: ExternalUsersConfig, server_name: str, external_server: str | None) -> None:
        self._config = config
        self._server_name = server_name
        self.active = external_server is not None and external_server == server_name

    def _is_mine(self, user_id: str) -> bool:
        return domain_of(user_id) == self._server_name

    async def check_event(self, event: Event, state: StateMap) -> str | None:
        if not self.active or not self._is_mine(event.sender):
            return None
        if event.type == "m.room.member" and event.membership == "invite" and not self._config.can_invite:
            return "External users cannot invite other users"
        if event.type == "m.room.third_party_invite" and not self._config.can_invite:
            return "External users cannot invite other users"
        if (
            event.type == "m.room.join_rules"
            and event.content.get("join_rule") == "public"
            and not self._config.can_create_public_rooms
        ):
            return "External users cannot make a room public"
        return None

    async def on_create_room(self, creator: str, req: CreateRoomRequest) -> CreateRoomRequest:
        if not self.active:
            return req
        initial_join_rule = next(
            (c.get("join_rule") for t, k, c in req.initial_state if t == "m.room.join_rules" and k == ""), None
        )
        public = req.visibility == "public" or req.preset == "public_chat" or initial_join_rule == "public"
        if public and not self._config.can_create_public_rooms:
            raise forbidden("External users cannot create public rooms")
        if req.invite and not self._config.can_invite:
            raise forbidden("External users cannot invite other users")
        return req

    def check_publish(self, user_id: str, visibility: str) -> None:
        if self.active and visibility == "public" and not self._config.can_create_public_rooms:
            raise forbidden("External users cannot publish rooms in the directory")
