"""Invites by e-mail address (``POST /rooms/{id}/invite`` with ``medium`` and ``address``).

The address is resolved through the address -> server mapping, never through an outside
identity server (``id_server`` and ``id_access_token`` are accepted and ignored):

- an account bound to the address here, or the account the mapping derives for it
  (``@jean.dupont-interieur.gouv.fr:<owning server>``, see :mod:`.email_accounts`) on this
  server, is invited directly; so is the derived account on another server when that
  server knows it;
- otherwise the room gets an ``m.room.third_party_invite`` event (state key: a random
  token; the public key: this server's signing key, this server acting as its own identity
  server), the address gets an invitation e-mail, and the invite is kept.  When an account
  of this server is bound to the address (registration or ``/account/3pid/add``) the
  inviter's server sends the real invite, carrying ``third_party_invite.signed`` (mxid,
  token, sender) signed with that key, which the auth rules check against the
  ``m.room.third_party_invite`` event.  For an address owned by another server, the
  derived account is invited over federation by a periodic retry once that server has it.

Only ``medium: email`` is accepted (400 M_INVALID_PARAM naming ``medium``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.events.signing import SigningKey, encode_verify_key_base64, get_verify_key, sign_json
from homeserver.services.events import RoomEventService
from homeserver.services.policy.access_rules import ACCESS_RULES_TYPE, RESTRICTED, RoomAccessRules
from homeserver.services.policy.email_accounts import EmailMapping, localpart_for_email, normalise_email
from homeserver.services.policy.invites import DomainRuleChecker
from homeserver.services.policy.mailer import Mailer
from homeserver.services.rooms import CreateRoomRequest, RoomService
from homeserver.storage.threepids import PendingThreepidInvite, ThreepidInviteRepository

logger = logging.getLogger(__name__)

THIRD_PARTY_INVITE = "m.room.third_party_invite"
KEY_VALIDITY_PATH = "/_matrix/identity/v2/pubkey/isvalid"


def obfuscated(address: str) -> str:
    """What the room shows of an invited address: ``jea...@interieur.gouv.fr``."""
    local, _, domain = address.partition("@")
    return f"{local[: max(1, min(3, len(local) // 2))]}...@{domain}"


def _optional_str(body: Mapping[str, Any], key: str) -> None:
    if key in body and body[key] is not None and not isinstance(body[key], str):
        raise MatrixError(400, Codes.BAD_JSON, f"Parameter {key} must be a string")


class ThreepidInviteService:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        signing_key: SigningKey,
        public_baseurl: str | None,
        mapping: EmailMapping,
        invites: ThreepidInviteRepository,
        user_for_email: Callable[[str], Awaitable[str | None]],
        user_exists: Callable[[str], Awaitable[bool]],
        rooms: RoomService,
        room_events: RoomEventService,
        mailer: Mailer | None,
        access_rules: RoomAccessRules | None,
        domain_rules: DomainRuleChecker | None,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._key = signing_key
        self._baseurl = (public_baseurl or "").rstrip("/")
        self._mapping = mapping
        self._repo = invites
        self._user_for_email = user_for_email
        self._user_exists = user_exists
        self._rooms = rooms
        self._events = room_events
        self._mailer = mailer
        self._access = access_rules
        self._domain_rules = domain_rules

    @property
    def public_key(self) -> str:
        return encode_verify_key_base64(get_verify_key(self._key))

    def _address_and_server(self, body: Mapping[str, Any], prefix: str = "") -> tuple[str, str]:
        """The normalised address of an invite body and the server the mapping gives it."""
        medium, address = body.get("medium"), body.get("address")
        if medium is None:
            raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {prefix}medium")
        if medium != "email":
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Parameter {prefix}medium must be 'email' (only e-mail invites)"
            )
        if not isinstance(address, str) or not address:
            raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {prefix}address")
        for key in ("id_server", "id_access_token"):
            _optional_str(body, key)
        try:
            address = normalise_email(address)
        except MatrixError:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Parameter {prefix}address is not a valid e-mail address"
            ) from None
        server = self._mapping.server_for(address)
        if server is None:
            raise forbidden(f"No homeserver is configured for the address {address}")
        return address, server

    async def on_create_room(self, creator: str, req: CreateRoomRequest) -> CreateRoomRequest:
        """``/createRoom``'s ``invite_3pid``, checked before the room exists (the invites
        themselves go out once it does): e-mail addresses the mapping knows, and none of a
        forbidden server when the room will be restricted."""
        rule = next((c.get("rule") for t, k, c in req.initial_state if (t, k) == (ACCESS_RULES_TYPE, "")), None)
        for i, body in enumerate(req.invite_3pid):
            _, server = self._address_and_server(body, f"invite_3pid[{i}].")
            if self._access is not None and rule in (None, RESTRICTED) and self._access.is_forbidden_domain(server):
                raise forbidden(
                    f"invite_3pid[{i}]: this address belongs to an external user, who cannot be invited to a restricted room"
                )
        return req

    async def invite(self, inviter: str, room_id: str, body: Mapping[str, Any]) -> None:
        """The ``/invite`` body ``{medium, address, id_server?, id_access_token?}``."""
        address, server = self._address_and_server(body)
        state = await self._events.current_state_ids(room_id)
        if not state:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        if self._access is not None:
            await self._access.check_threepid_invite("email", server, state)
        target = await self._user_for_email(address)
        derived = f"@{localpart_for_email(address)}:{server}"
        if target is None and server == self._server_name and await self._user_exists(derived):
            target = derived
        if target is not None:
            await self._rooms.update_membership(sender=inviter, room_id=room_id, action="invite", target=target)
            return
        if server != self._server_name:
            try:
                await self._rooms.update_membership(sender=inviter, room_id=room_id, action="invite", target=derived)
                return
            except MatrixError as e:
                if e.code != 404:
                    raise  # refused for another reason than "no such account yet"
        if self._domain_rules is not None:
            refusal = await self._domain_rules.may_invite(inviter, None, room_id, state)
            if refusal is not None:
                raise forbidden(refusal)
        await self._pending_invite(inviter, room_id, address, server)

    async def _pending_invite(self, inviter: str, room_id: str, address: str, server: str) -> None:
        if self._mailer is None:
            raise MatrixError(
                400, "M_THREEPID_MEDIUM_NOT_SUPPORTED", "No account has this address and e-mail is not configured"
            )
        token = secrets.token_urlsafe(24)
        display_name = obfuscated(address)
        validity_url = f"{self._baseurl}{KEY_VALIDITY_PATH}"
        content = {
            "display_name": display_name,
            "key_validity_url": validity_url,
            "public_key": self.public_key,
            "public_keys": [{"public_key": self.public_key, "key_validity_url": validity_url}],
        }
        await self._events.send(
            room_id=room_id, sender=inviter, event_type=THIRD_PARTY_INVITE, content=content, state_key=token
        )
        await self._repo.add(
            PendingThreepidInvite(
                token=token,
                room_id=room_id,
                sender=inviter,
                medium="email",
                address=address,
                display_name=display_name,
                server_name=server,
                created_ts=self._clock.time_msec(),
            )
        )
        name_event = await self._events.current_state_event(room_id, "m.room.name")
        room_name = name_event.content.get("name") if name_event is not None else None
        where = f"the room {room_name!r}" if isinstance(room_name, str) and room_name else "a room"
        signup = f"{self._baseurl}/" if server == self._server_name else f"the server {server}"
        app = self._mailer.app_name
        text = (
            f"{inviter} invited you to {where} on {app}.\n\n"
            f"Create your {app} account with this address ({address}) at {signup}\n"
            "and the invitation will be waiting for you.\n"
        )
        await self._mailer.send(address, f"{app}: {inviter} invited you", text)

    # -- turning pending invites into real ones ----------------------------------------

    async def on_bound(self, user_id: str, address: str) -> None:
        """An account of this server was bound to ``address``: send its pending invites."""
        for pending in await self._repo.for_address("email", address.lower()):
            signed = sign_json(
                {"mxid": user_id, "token": pending.token, "sender": pending.sender}, self._server_name, self._key
            )
            try:
                await self._rooms.update_membership(
                    sender=pending.sender,
                    room_id=pending.room_id,
                    action="invite",
                    target=user_id,
                    extra_content={"third_party_invite": {"display_name": pending.display_name, "signed": signed}},
                )
            except MatrixError as e:
                logger.info("pending invite of %s to %s dropped: %s", user_id, pending.room_id, e.msg)
            await self._repo.delete(pending.token)

    async def retry_remote_invites(self) -> int:
        """The periodic task: invite the derived accounts of other servers' addresses that
        now exist there; the room's ``m.room.third_party_invite`` is then revoked."""
        sent = 0
        for pending in await self._repo.for_other_servers(self._server_name):
            derived = f"@{localpart_for_email(pending.address)}:{pending.server_name}"
            try:
                await self._rooms.update_membership(
                    sender=pending.sender, room_id=pending.room_id, action="invite", target=derived
                )
            except MatrixError as e:
                if e.code in (404, 502):
                    continue  # not there yet, or the server is unreachable: try again later
                logger.info("pending invite of %s to %s dropped: %s", derived, pending.room_id, e.msg)
            else:
                sent += 1
                try:
                    await self._events.send(
                        room_id=pending.room_id,
                        sender=pending.sender,
                        event_type=THIRD_PARTY_INVITE,
                        content={},
                        state_key=pending.token,
                    )
                except MatrixError:
                    pass  # the real invite went out; the stale token is only cosmetic
            await self._repo.delete(pending.token)
        return sent

    def is_our_key(self, public_key: str) -> bool:
        return secrets.compare_digest(public_key, self.public_key)
