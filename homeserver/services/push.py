"""Push rules per user (the /pushrules API) and the notification counts they produce.

Every new room event is evaluated against each member's rules; what notifies is recorded
so /sync can show unread and highlight counts.  Rulesets are cached per user.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.core.errors import not_found
from homeserver.events.model import Event
from homeserver.events.power_levels import get_user_power_level
from homeserver.push import (
    PushRuleset,
    counts_for,
    default_rules,
    evaluate,
    get_rule,
    merge_user_rules,
    parse_actions_body,
    parse_enabled_body,
    parse_put_rule,
    parse_rule_kind,
    place_user_rule,
)
from homeserver.services.events import RoomEventService
from homeserver.services.userdata import AccountDataService
from homeserver.storage.push import PushRuleRepository
from homeserver.storage.receipts import ReceiptRepository
from homeserver.storage.rooms import Membership, RoomRepository
from homeserver.storage.state import StateMap

_CACHE_SIZE = 10_000


# Up to this many local members, their rows are read one by one; above, the room's in one go.
_FEW_LOCAL_MEMBERS = 20


class PushRuleService:
    def __init__(
        self,
        *,
        rules: PushRuleRepository,
        account_data: AccountDataService,
        rooms: RoomRepository,
        receipts: ReceiptRepository,
        events: RoomEventService,
        server_name: str,
    ) -> None:
        self._server_name = server_name
        self._rules = rules
        self._account_data = account_data
        self._rooms = rooms
        self._receipts = receipts
        self._events = events
        self._cache: dict[str, PushRuleset] = {}
        # Users who get no notifications at all (the policy's expired accounts).
        self.muted_users: list[Callable[[str], Awaitable[bool]]] = []
        # Told of each event that notifies local users, with each user's actions (pushers).
        self.notify_listeners: list[Callable[[Event, list[tuple[str, list[Any]]]], Awaitable[None]]] = []

    async def ruleset(self, user_id: str) -> PushRuleset:
        cached = self._cache.get(user_id)
        if cached is None:
            user_rules, enabled, actions = await self._rules.load(user_id)
            # The pre-v1.17 body-based mention rules stay on, as in Synapse: bots and bridges
            # that send no m.mentions must still be able to mention someone.
            cached = merge_user_rules(
                default_rules(user_id, legacy_mention_rules=True), user_rules, enabled, actions
            )
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[user_id] = cached
        return cached

    async def _changed(self, user_id: str) -> None:
        self._cache.pop(user_id, None)
        # Clients learn of changes through the m.push_rules account data in /sync.
        await self._account_data.put_internal(user_id, "", "m.push_rules", (await self.ruleset(user_id)).to_json())

    # -- the /pushrules API ------------------------------------------------------------

    async def get_all(self, user_id: str) -> dict[str, Any]:
        return (await self.ruleset(user_id)).to_json()

    async def get_one(self, user_id: str, kind: str, rule_id: str) -> dict[str, Any]:
        return get_rule(await self.ruleset(user_id), kind, rule_id).to_json()

    async def put_rule(self, user_id: str, kind: str, rule_id: str, body: Any, before: str | None, after: str | None) -> None:
        rule = parse_put_rule(kind, rule_id, body)
        user_rules, _, _ = await self._rules.load(user_id)
        rows = place_user_rule([r for r in user_rules if r.kind == kind], rule, before=before, after=after)
        await self._rules.replace_kind(user_id, kind, rows)
        await self._changed(user_id)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        parse_rule_kind(kind)
        user_rules, _, _ = await self._rules.load(user_id)
        mine = [r for r in user_rules if r.kind == kind]
        if not any(r.rule_id == rule_id for r in mine):
            raise not_found("The push rule was not found.")
        await self._rules.replace_kind(user_id, kind, [r for r in mine if r.rule_id != rule_id])
        await self._changed(user_id)

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, body: Any) -> None:
        get_rule(await self.ruleset(user_id), kind, rule_id)
        await self._rules.set_override(user_id, kind, rule_id, enabled=parse_enabled_body(body))
        await self._changed(user_id)

    async def set_actions(self, user_id: str, kind: str, rule_id: str, body: Any) -> None:
        get_rule(await self.ruleset(user_id), kind, rule_id)
        await self._rules.set_override(user_id, kind, rule_id, actions=list(parse_actions_body(body)))
        await self._changed(user_id)

    # -- notification counts -----------------------------------------------------------

    async def on_new_event(self, event: Event, stream: int, state: StateMap) -> None:
        """Evaluate ``event`` for every local joined member but its sender and record what
        notifies.  Remote members are left to their own servers, which hold their rules."""
        # The joined members are cached in memory: in a big federated room, reading every
        # member row per event (to keep the few local ones) was O(members) an event.
        joined = await self._events.joined_users(event.room_id)
        local = [u for u in await self._events.local_joined_users(event.room_id) if u != event.sender and self.is_local(u)]
        targets: list[Membership] = []
        if len(local) <= _FEW_LOCAL_MEMBERS:
            for user_id in local:
                member = await self._rooms.get_membership(event.room_id, user_id)
                if member is not None and member.membership == "join":
                    targets.append(member)
        else:
            members = await self._rooms.members(event.room_id)
            targets = [m for m in members if m.user_id != event.sender and self.is_local(m.user_id)]
        if event.type == "m.room.member" and event.state_key and event.state_key != event.sender:
            # An invite notifies its target, who is not yet a member.
            invitee = event.state_key
            if event.content.get("membership") == "invite" and self.is_local(invitee):
                if all(m.user_id != invitee for m in targets):
                    targets.append(Membership(event.room_id, invitee, "invite", event.event_id, stream, event.sender, None, None))
        if not targets:
            return
        fetched = await self._events.current_state_events(
            event.room_id, [("m.room.create", ""), ("m.room.power_levels", "")]
        )
        create = fetched.get(("m.room.create", ""))
        pl = fetched.get(("m.room.power_levels", ""))
        sender_level = get_user_power_level(event.sender, create, pl, event.room_version) if create else 0
        event_json = {**event.dict, "event_id": event.event_id, "room_id": event.room_id}
        relates = event.content.get("m.relates_to")
        thread_id = relates.get("event_id") if isinstance(relates, dict) and relates.get("rel_type") == "m.thread" else None
        actions: list[tuple[str, bool, bool]] = []
        notified: list[tuple[str, list[Any]]] = []
        for member in targets:
            if self.muted_users and any([await muted(member.user_id) for muted in self.muted_users]):
                continue
            result = evaluate(
                await self.ruleset(member.user_id),
                event_json,
                user_id=member.user_id,
                display_name=member.displayname,
                room_member_count=len(joined),
                power_levels=pl.content if pl else {},
                sender_power_level=sender_level,
            )
            notify, highlight = counts_for(result)
            if notify:
                actions.append((member.user_id, notify, highlight))
                notified.append((member.user_id, list(result or ())))
        await self._receipts.add_push_actions(event.room_id, event.event_id, stream, thread_id or "", actions)
        for listener in self.notify_listeners if notified else ():
            await listener(event, notified)

    def is_local(self, user_id: str) -> bool:
        """Whether ``user_id`` belongs to this server (push rules exist only for those)."""
        return user_id.partition(":")[2] == self._server_name

    async def sync_extension(self, requester: Any, since: Any, now: Any, body: dict[str, Any]) -> None:
        """An initial /sync carries the push rules as m.push_rules account data."""
        if since is not None:
            return
        events = body["account_data"]["events"]
        if not any(e.get("type") == "m.push_rules" for e in events):
            events.append({"type": "m.push_rules", "content": await self.get_all(requester.user_id)})
