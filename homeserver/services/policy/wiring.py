"""``build_policy``: plug the government policy into the services it constrains.

app.py calls it once with the services; everything the rules need is passed explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task

from homeserver.api.client import account_validity as account_validity_api
from homeserver.api.client import identity as identity_api
from homeserver.api.client import threepid as threepid_api
from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.events.model import Event
from homeserver.events.signing import SigningKey
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router
from homeserver.services.admin import AdminService
from homeserver.services.auth import Requester
from homeserver.services.directory import DirectoryService
from homeserver.services.events import RoomEventService
from homeserver.services.login import LoginService
from homeserver.services.policy.access_rules import RoomAccessRules, domain_of
from homeserver.services.policy.email_accounts import (
    EMAIL_STAGE,
    EmailMapping,
    ThreepidService,
    display_name_for_email,
    localpart_for_email,
)
from homeserver.services.policy.invites import DomainRuleChecker, ExternalUserRules
from homeserver.services.policy.last_admin import LastAdminGuard
from homeserver.services.policy.mailer import Mailer
from homeserver.services.policy.privacy import DirectoryPrivacy, ProfileGate, hidden_profiles_reader
from homeserver.services.policy.threepid_invites import ThreepidInviteService
from homeserver.services.policy.validity import AccountValidityService
from homeserver.services.push import PushRuleService
from homeserver.services.registration import RegistrationService
from homeserver.services.rooms import RoomService
from homeserver.services.uia import UserInteractiveAuth
from homeserver.storage.account_validity import AccountValidityRepository
from homeserver.storage.accounts import AccountRepository
from homeserver.storage.database import Database
from homeserver.storage.events import EventRepository
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.state import StateMap
from homeserver.storage.threepids import ThreepidInviteRepository, ThreepidRepository
from homeserver.storage.userdata import AccountDataRepository, ProfileRepository


@dataclass
class Policy:
    """The built rule sets (those the configuration turns on) and what app.py must add."""

    access_rules: RoomAccessRules | None = None
    domain_rules: DomainRuleChecker | None = None
    external_users: ExternalUserRules | None = None
    directory_privacy: DirectoryPrivacy | None = None
    mapping: EmailMapping | None = None
    threepids: ThreepidService | None = None
    threepid_invites: ThreepidInviteService | None = None
    validity: AccountValidityService | None = None
    route_adders: list[Callable[[Router], None]] = field(default_factory=list)
    background: list[task.LoopingCall] = field(default_factory=list)

    def client_routes(self, router: Router) -> None:
        for add in self.route_adders:
            add(router)


def build_room_policy(
    config: HomeserverConfig,
    *,
    room_events: RoomEventService,
    rooms: RoomService,
    directory: DirectoryService,
    event_store: EventRepository,
    room_store: RoomRepository,
    is_admin: Callable[[str], Any],
    hidden_profiles: Callable[[list[str]], Any],
    is_expired: Callable[[str], Any] | None = None,
) -> Policy:
    """Room access rules, invite rules, external users and directory privacy."""
    gp = config.government_policy
    policy = Policy()

    async def fetch_events(ids: list[str]) -> Mapping[str, Event]:
        got = await event_store.get_events(ids)
        return {k: v.event for k, v in got.items()}

    if gp.room_access_rules.enabled:
        access = policy.access_rules = RoomAccessRules(
            forbidden_domains=gp.room_access_rules.domains_forbidden_when_restricted,
            bypass_for_users=gp.room_access_rules.bypass_for_users,
            fetch_events=fetch_events,
            is_admin=is_admin,
            is_published=room_store.is_published,
            default_room_version=config.default_room_version,
            room_state=room_events.current_state_ids,
        )
        room_events.event_policy_checks.append(access.check_event)
        rooms.create_room_hooks.append(access.on_create_room)

        async def check_publish(user_id: str, room_id: str, visibility: str) -> None:
            state: StateMap = await room_events.current_state_ids(room_id)
            await access.check_publish(user_id, room_id, state, visibility)

        directory.publish_checks.append(check_publish)
    if gp.manage_last_admin.enabled:
        guard = LastAdminGuard(
            server_name=config.server_name,
            room_events=room_events,
            promote_moderators=gp.manage_last_admin.promote_moderators,
            mode=gp.manage_last_admin.mode,
            join_positions=room_store.join_positions,
            forbidden_domains=gp.room_access_rules.domains_forbidden_when_restricted,
        )
        rooms.before_membership_hooks.append(guard.before_membership)
    if gp.domain_rule_checker.enabled:
        checker = policy.domain_rules = DomainRuleChecker(
            config=gp.domain_rule_checker,
            server_name=config.server_name,
            fetch_events=fetch_events,
            is_published=room_store.is_published,
        )
        room_events.event_policy_checks.append(checker.check_event)
    external = policy.external_users = ExternalUserRules(
        config=gp.external_users, server_name=config.server_name, external_server=gp.external_server
    )
    if external.active:
        room_events.event_policy_checks.append(external.check_event)
        rooms.create_room_hooks.append(external.on_create_room)

        async def external_publish(user_id: str, room_id: str, visibility: str) -> None:
            external.check_publish(user_id, visibility)

        directory.publish_checks.append(external_publish)
    privacy = policy.directory_privacy = DirectoryPrivacy(
        hide_external_server=(
            gp.external_server
            if gp.external_server
            and gp.external_server != config.server_name
            and not gp.external_users.visible_in_directory
            else None
        ),
        hidden_profiles=hidden_profiles,
        is_expired=is_expired,
    )
    directory.search_filters.append(privacy.hidden_in_search)
    return policy


def build_policy(
    config: HomeserverConfig,
    *,
    reactor: Any,
    clock: Clock,
    db: Database,
    room_events: RoomEventService,
    rooms: RoomService,
    directory: DirectoryService,
    event_store: EventRepository,
    room_store: RoomRepository,
    admin: AdminService,
    registration: RegistrationService,
    uia: UserInteractiveAuth,
    authenticate: RequestAuthenticator,
    signing_key: SigningKey | None = None,
    login: LoginService | None = None,
    push: PushRuleService | None = None,
) -> Policy:
    """Everything: e-mail accounts, account validity, then the room and directory rules."""
    server_name = config.server_name
    profiles = ProfileRepository(db)
    mailer = Mailer(config=config.email, reactor=reactor, server_name=server_name) if config.email else None
    mapping = EmailMapping(config.government_policy, server_name)
    threepids = ThreepidService(
        clock=clock,
        threepids=ThreepidRepository(db),
        mapping=mapping,
        mailer=mailer,
        public_baseurl=config.public_baseurl,
        is_mine=lambda user_id: domain_of(user_id) == server_name,
    )
    route_adders: list[Callable[[Router], None]] = []
    background: list[task.LoopingCall] = []
    if mailer is not None:
        uia.add_stage(EMAIL_STAGE, threepids.email_stage)
        registration.email_stage_offered = True
        registration.email_stage_required = "email" in config.registration.registrations_require_3pid
        if mapping.configured:
            registration.localpart_from_email = localpart_for_email

        async def bind_email(user_id: str, completed: dict[str, Any]) -> None:
            validated = completed.get(EMAIL_STAGE)
            if not isinstance(validated, dict):
                return
            await threepids.bind(user_id, validated["address"], validated["validated_at"])
            if mapping.configured:
                await profiles.set_field(user_id, "displayname", display_name_for_email(validated["address"]))

        registration.post_registration_hooks.append(bind_email)
        if login is not None:
            login.threepid_lookup = lambda medium, address: threepids.user_for_email(address)
        route_adders.append(
            lambda router: threepid_api.register(
                router,
                authenticate=authenticate,
                threepids=threepids,
                uia=uia,
                registration_enabled=config.registration.enable_registration,
            )
        )

    validity: AccountValidityService | None = None
    if config.account_validity.enabled:
        validity = AccountValidityService(
            config=config.account_validity,
            clock=clock,
            validity=AccountValidityRepository(db),
            mailer=mailer,
            emails_of=threepids.emails_of,
            is_local_user=lambda user_id: domain_of(user_id) == server_name,
            public_baseurl=config.public_baseurl,
        )
        checked = validity

        async def on_registered(user_id: str, completed: dict[str, Any]) -> None:
            await checked.on_registered(user_id)

        async def check_request(requester: Requester, path: str) -> None:
            if requester.app_service is None:
                await checked.check_request(requester, path)

        registration.post_registration_hooks.append(on_registered)
        if push is not None:
            push.muted_users.append(checked.is_expired)  # expired accounts get no push
        authenticate.requester_checks.append(check_request)
        route_adders.append(
            lambda router: account_validity_api.register(
                router, authenticate=authenticate, require_admin=admin.require_admin, validity=checked
            )
        )
        background.append(task.LoopingCall(lambda: defer.ensureDeferred(checked.send_due_renewal_emails())))

    if config.limit_profile_requests_to_users_who_share_rooms:
        gate = ProfileGate(
            require_auth=config.require_auth_for_profile_requests,
            limit_to_shared_rooms=True,
            shared_room_users=room_store.shared_room_users,
        )
        authenticate.requester_checks.append(gate.check_request)

    account_data = AccountDataRepository(db)
    policy = build_room_policy(
        config,
        room_events=room_events,
        rooms=rooms,
        directory=directory,
        event_store=event_store,
        room_store=room_store,
        is_admin=admin.is_admin,
        hidden_profiles=hidden_profiles_reader(server_name, account_data.get),
        is_expired=validity.is_expired if validity is not None else None,
    )
    policy.mapping = mapping
    policy.threepids = threepids
    is_invite_key: Callable[[str], bool] | None = None
    if signing_key is not None:
        accounts = AccountRepository(db)

        async def user_exists(user_id: str) -> bool:
            user = await accounts.get_user(user_id)
            return user is not None and not user.deactivated

        invites = policy.threepid_invites = ThreepidInviteService(
            server_name=server_name,
            clock=clock,
            signing_key=signing_key,
            public_baseurl=config.public_baseurl,
            mapping=mapping,
            invites=ThreepidInviteRepository(db),
            user_for_email=threepids.user_for_email,
            user_exists=user_exists,
            rooms=rooms,
            room_events=room_events,
            mailer=mailer,
            access_rules=policy.access_rules,
            domain_rules=policy.domain_rules,
        )
        rooms.threepid_inviter = invites.invite
        rooms.create_room_hooks.append(invites.on_create_room)  # after the access rules' hook
        threepids.bound_hooks.append(invites.on_bound)
        is_invite_key = invites.is_our_key
        # (first: the renewal e-mail task stays last, where tests find it)
        background.insert(0, task.LoopingCall(lambda: defer.ensureDeferred(invites.retry_remote_invites())))
    route_adders.append(lambda router: identity_api.register(router, mapping=mapping, is_invite_key=is_invite_key))
    policy.validity = validity
    policy.route_adders.extend(route_adders)
    policy.background.extend(background)
    return policy
