"""Rooms, messaging and sync: event storage, the room services, ephemeral data, push rules,
end-to-end keys and to-device messages, and the hooks that tie them together."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.events.signing import SigningKey, read_signing_keys
from homeserver.services.devices import DeviceListTracker, DeviceService
from homeserver.services.directory import DirectoryService
from homeserver.services.e2ee import E2EKeyService
from homeserver.services.ephemeral import ReceiptService, TypingService
from homeserver.services.events import RoomEventService
from homeserver.services.messages import MessageService
from homeserver.services.notifier import Notifier
from homeserver.services.presence import PresenceService
from homeserver.services.presenter import EventPresenter
from homeserver.services.push import PushRuleService
from homeserver.services.rooms import RoomService
from homeserver.services.sync import SyncService
from homeserver.services.sync_filter import FilterLoader
from homeserver.services.to_device import ToDeviceService
from homeserver.services.userdata import AccountDataService, ProfileService
from homeserver.storage.database import Database
from homeserver.storage.e2e_keys import E2EKeyRepository
from homeserver.storage.events import EventRepository
from homeserver.storage.push import PushRuleRepository
from homeserver.storage.receipts import ReceiptRepository
from homeserver.storage.rooms import RoomRepository
from homeserver.storage.state import StateGroupCache, StateRepository
from homeserver.storage.stream_changes import StreamChanges
from homeserver.storage.timeline import TimelineRepository
from homeserver.storage.to_device import ToDeviceRepository
from homeserver.storage.user_directory import UserDirectoryRepository
from homeserver.storage.userdata import AccountDataRepository, ProfileRepository
from homeserver.wiring.core import CoreAccounts

logger = logging.getLogger(__name__)


@dataclass
class RoomParts:
    notifier: Notifier
    event_store: EventRepository
    state_store: StateRepository
    timeline: TimelineRepository
    room_store: RoomRepository
    receipt_store: ReceiptRepository
    room_events: RoomEventService
    profiles: ProfileService
    rooms: RoomService
    presenter: EventPresenter
    messages: MessageService
    account_data: AccountDataService
    typing: TypingService
    receipts: ReceiptService
    sync: SyncService
    directory: DirectoryService
    filters: FilterLoader
    presence: PresenceService
    push: PushRuleService
    device_lists: DeviceListTracker
    e2e_keys: E2EKeyService
    to_device: ToDeviceService
    devices: DeviceService


def load_signing_key(config: HomeserverConfig) -> SigningKey:
    """The server's current signing key, from ``signing_key_path`` (Synapse's file format)."""
    try:
        with open(config.signing_key_path, encoding="utf-8") as f:
            keys = read_signing_keys(f.read())
    except OSError as e:
        raise RuntimeError(
            f"cannot read the signing key {config.signing_key_path}: {e.strerror}"
            " (homeserver generate-config writes one)"
        ) from None
    if not keys:
        raise RuntimeError(f"no signing key in {config.signing_key_path}")
    return keys[0]


def build_rooms(config: HomeserverConfig, *, clock: Clock, db: Database, core: CoreAccounts) -> RoomParts:
    """Every room-side service; also sets ``core.account.on_deactivated`` (leave all rooms)."""
    notifier = Notifier(clock)
    state_cache = StateGroupCache()
    changes = StreamChanges()
    event_store = EventRepository(db, state_cache, event_cache_size=config.event_cache_size, changes=changes)
    state_store = StateRepository(db, state_cache)
    timeline = TimelineRepository(db, changes)
    room_store = RoomRepository(db, changes)
    profile_store = ProfileRepository(db)
    receipt_store = ReceiptRepository(db)
    room_events = RoomEventService(
        server_name=config.server_name,
        clock=clock,
        signing_key=load_signing_key(config),
        events=event_store,
        state=state_store,
        rooms=room_store,
        notifier=notifier,
    )
    profiles = ProfileService(
        server_name=config.server_name,
        profiles=profile_store,
        accounts=core.accounts,
        rooms=room_store,
        displayname_changes_enabled=config.registration.enable_set_displayname,
        avatar_changes_enabled=config.registration.enable_set_avatar_url,
    )
    rooms = RoomService(
        server_name=config.server_name,
        clock=clock,
        events=room_events,
        rooms=room_store,
        profile_of=profiles.lookup,
        default_room_version=config.default_room_version,
        encryption_by_default=config.encryption_enabled_by_default_for_room_type,
    )

    async def propagate_profile(user_id: str) -> None:
        for room_id in await rooms.joined_rooms(user_id):
            try:
                await rooms.update_membership(sender=user_id, room_id=room_id, action="join")
            except Exception:
                logger.exception("could not update %s's membership in %s", user_id, room_id)

    profiles.on_profile_changed = propagate_profile

    async def leave_all_rooms(user_id: str) -> None:
        for membership in await room_store.rooms_for_user(user_id, ("join", "invite", "knock")):
            try:
                await rooms.update_membership(sender=user_id, room_id=membership.room_id, action="leave")
            except Exception:
                logger.exception("deactivation: could not leave %s", membership.room_id)

    core.account.on_deactivated = leave_all_rooms

    presenter = EventPresenter(clock=clock, events=event_store, state=state_store, timeline=timeline, rooms=room_store)
    messages = MessageService(
        events=room_events,
        event_store=event_store,
        state=state_store,
        timeline=timeline,
        rooms=room_store,
        presenter=presenter,
    )
    account_data = AccountDataService(notifier=notifier, account_data=AccountDataRepository(db), rooms=room_store)
    typing = TypingService(clock=clock, notifier=notifier, joined_users=room_events.joined_users)
    receipts = ReceiptService(
        clock=clock, notifier=notifier, receipts=receipt_store, events=event_store, joined_users=room_events.joined_users
    )
    sync = SyncService(
        clock=clock,
        notifier=notifier,
        events=room_events,
        event_store=event_store,
        state=state_store,
        timeline=timeline,
        rooms=room_store,
        presenter=presenter,
        account_data=account_data,
        typing=typing,
        receipts=receipts,
        receipt_store=receipt_store,
    )
    directory = DirectoryService(
        server_name=config.server_name,
        events=room_events,
        rooms=room_store,
        user_directory=UserDirectoryRepository(db, config.server_name),
        config=config.user_directory,
    )
    room_events.post_persist_hooks.append(directory.on_event_persisted)
    presence = PresenceService(clock=clock, db=db, notifier=notifier, rooms=room_store, enabled=config.presence_enabled)
    sync.extensions.append(presence.sync_extension)
    push = PushRuleService(
        rules=PushRuleRepository(db),
        account_data=account_data,
        rooms=room_store,
        receipts=receipt_store,
        events=room_events,
        server_name=config.server_name,
    )
    room_events.post_persist_hooks.append(push.on_new_event)
    sync.extensions.append(push.sync_extension)

    # end-to-end encryption: device lists, one-time and cross-signing keys, to-device messages
    device_lists = DeviceListTracker(
        server_name=config.server_name,
        keys=E2EKeyRepository(db),
        notifier=notifier,
        shared_users=room_store.shared_room_users,
    )
    e2e_keys = E2EKeyService(
        server_name=config.server_name,
        keys=E2EKeyRepository(db),
        rooms=room_store,
        shared_users=room_store.shared_room_users,
        device_list_changed=device_lists.changed,
    )
    core.devices_repo.deleted_listeners.append(e2e_keys.on_devices_deleted)
    to_device = ToDeviceService(
        server_name=config.server_name,
        clock=clock,
        notifier=notifier,
        inbox=ToDeviceRepository(db),
        devices=core.devices_repo,
    )
    sync.extensions.append(e2e_keys.sync_extension)
    sync.extensions.append(to_device.sync_extension)
    sync.positions["to_device"] = to_device.current_position
    sync.positions["device_lists"] = e2e_keys.current_position
    sync.positions["presence"] = presence.current_position

    return RoomParts(
        notifier=notifier,
        event_store=event_store,
        state_store=state_store,
        timeline=timeline,
        room_store=room_store,
        receipt_store=receipt_store,
        room_events=room_events,
        profiles=profiles,
        rooms=rooms,
        presenter=presenter,
        messages=messages,
        account_data=account_data,
        typing=typing,
        receipts=receipts,
        sync=sync,
        directory=directory,
        filters=FilterLoader(account_data),
        presence=presence,
        push=push,
        device_lists=device_lists,
        e2e_keys=e2e_keys,
        to_device=to_device,
        devices=DeviceService(devices=core.devices_repo, device_list_changed=device_lists.changed),
    )
