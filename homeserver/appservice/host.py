"""The application-service host: the registered services, their queues and senders, and
the questions the server asks them (pings, user and alias queries, third-party lookups).

:func:`build_appservices` wires it from the homeserver's parts; ``app.py`` calls it once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer

from homeserver.appservice.client import AppServiceClient, AppServiceUnavailable
from homeserver.appservice.feeder import EphemeralFeeder, EventFeeder
from homeserver.appservice.registration import ApplicationService, AppServices
from homeserver.appservice.transactions import TransactionSender
from homeserver.core.clock import Clock
from homeserver.core.errors import MatrixError
from homeserver.storage.appservice import AppServiceQueueRepository
from homeserver.storage.database import Database

logger = logging.getLogger(__name__)

CreateUser = Callable[..., Awaitable[bool]]


class AppServiceHost:
    def __init__(
        self,
        *,
        services: AppServices,
        clock: Clock,
        queue: AppServiceQueueRepository,
        client: AppServiceClient,
        senders: dict[str, TransactionSender],
        create_user: CreateUser,
        user_exists: Callable[[str], Awaitable[bool]],
    ) -> None:
        self.services = services
        self._clock = clock
        self.queue = queue
        self.client = client
        self.senders = senders
        self._create_user = create_user
        self._user_exists = user_exists
        self.event_feeder: EventFeeder | None = None
        self.ephemeral_feeder: EphemeralFeeder | None = None
        self.started = False
        self.stopped = False
        self.ready: defer.Deferred[None] = defer.Deferred()

    async def start(self) -> None:
        """Create the bots' accounts, queue what was missed, send what is waiting."""
        if self.started:
            return
        self.started = True
        for svc in self.services.all:
            await self._create_user(svc.sender, None, self._clock.time_msec(), appservice_id=svc.id)
        if self.ephemeral_feeder is not None:
            await self.ephemeral_feeder.start()
        if self.event_feeder is not None:
            await self.event_feeder.start()
        for sender in self.senders.values():
            sender.kick()
        logger.info("application services: %s", ", ".join(f"{s.id} ({s.url})" for s in self.services.all))

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        waits = [s.stop() for s in self.senders.values()]
        for feeder in (self.event_feeder, self.ephemeral_feeder):
            if feeder is not None:
                waits.append(feeder.runner.stop())
        await defer.gatherResults(waits, consumeErrors=True)
        if self.ephemeral_feeder is not None:
            try:
                await self.ephemeral_feeder.flush()
            except Exception:
                logger.exception("application services: could not queue the last ephemeral data")
        await self.client.close()

    def queued(self, service_ids: set[str]) -> None:
        for sid in service_ids:
            sender = self.senders.get(sid)
            if sender is not None:
                sender.kick()

    # -- ping ----------------------------------------------------------------------------

    async def ping(self, service: ApplicationService, transaction_id: str | None) -> int:
        """POST /_matrix/app/v1/ping on the service; the round trip in ms.  A service that
        answers is up again: its backoff is reset and its queue sent at once."""
        if service.url is None:
            raise MatrixError(400, "M_URL_NOT_SET", "The application service has no URL")
        started = self._clock.time_msec()
        try:
            await self.client.ping(service, transaction_id)
        except AppServiceUnavailable as e:
            if e.kind == "timeout":
                raise MatrixError(
                    504, "M_CONNECTION_TIMEOUT", "The application service did not answer in time"
                ) from None
            if e.kind == "status" or e.kind == "garbage":
                raise MatrixError(
                    502,
                    "M_BAD_STATUS",
                    "The application service answered with an error",
                    status=e.status,
                    body=e.body if isinstance(e.body, str) else _json_text(e.body),
                ) from None
            raise MatrixError(502, "M_CONNECTION_FAILED", "Cannot connect to the application service") from None
        sender = self.senders.get(service.id)
        if sender is not None:
            await sender.reset_backoff()
        return max(0, self._clock.time_msec() - started)

    # -- metrics -------------------------------------------------------------------------

    async def metrics(self) -> list[dict[str, Any]]:
        """Per service: queue depth, failures in a row, totals, the last error."""
        out = []
        for svc in self.services.all:
            state = await self.queue.state(svc.id)
            out.append(
                {
                    "id": svc.id,
                    "url": svc.url,
                    "queue_depth": await self.queue.depth(svc.id),
                    "transaction_in_flight": state.inflight_txn_id,
                    "consecutive_failures": state.failure_count,
                    "retry_at_ms": state.retry_at_ms or None,
                    "sent_transactions": state.sent_transactions,
                    "failed_attempts": state.failed_attempts,
                    "last_error": state.last_error,
                }
            )
        return out

    # -- queries -------------------------------------------------------------------------

    async def query_user(self, user_id: str) -> bool:
        """Ask the services whose namespace holds ``user_id`` to create it; True if it exists now."""
        for svc in self.services.all:
            if svc.url is not None and svc.is_user_in_namespace(user_id):
                if await self.client.query_user(svc, user_id) and await self._user_exists(user_id):
                    return True
        return False

    async def ensure_user(self, user_id: str) -> bool:
        """True if ``user_id`` exists; if not and it is in a service's namespace, ask that
        service first (``GET /_matrix/app/v1/users/{userId}``), as before an invite."""
        if await self._user_exists(user_id):
            return True
        if not any(svc.is_user_in_namespace(user_id) for svc in self.services.all):
            return False
        return await self.query_user(user_id)

    async def query_alias(self, alias: str, lookup: Callable[[str], Awaitable[Any]]) -> Any:
        """Ask the services whose namespace holds ``alias`` to create it; then ``lookup`` again."""
        for svc in self.services.all:
            if svc.url is not None and svc.is_interested_in_alias(alias):
                if await self.client.query_alias(svc, alias):
                    found = await lookup(alias)
                    if found is not None:
                        return found
        return None

    async def protocols(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for protocol in sorted({p for s in self.services.all for p in s.protocols}):
            info = await self.protocol(protocol)
            if info is not None:
                out[protocol] = info
        return out

    async def protocol(self, protocol: str) -> dict[str, Any] | None:
        """The protocol's metadata, with the instances of every service that offers it."""
        merged: dict[str, Any] | None = None
        for svc in self.services.all:
            if protocol not in svc.protocols or svc.url is None:
                continue
            info = await self.client.thirdparty(svc, f"protocol/{_quote(protocol)}")
            if not isinstance(info, dict):
                continue
            instances = [dict(i, appservice_id=svc.id) for i in info.get("instances") or [] if isinstance(i, dict)]
            if merged is None:
                merged = {**info, "instances": instances}
            else:
                merged["instances"] = merged.get("instances", []) + instances
        return merged

    async def lookup(self, kind: str, protocol: str | None, fields: dict[str, list[str]]) -> list[Any]:
        """Third-party ``location`` or ``user`` lookups, concatenated across services."""
        results: list[Any] = []
        for svc in self.services.all:
            if svc.url is None or (protocol is not None and protocol not in svc.protocols):
                continue
            if protocol is None and not svc.protocols:
                continue
            path = kind if protocol is None else f"{kind}/{_quote(protocol)}"
            answer = await self.client.thirdparty(svc, path, dict(fields))
            if isinstance(answer, list):
                results += [a for a in answer if isinstance(a, dict)]
        return results


def _quote(value: str) -> str:
    import urllib.parse

    return urllib.parse.quote(value, safe="")


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value) if value is not None else ""


def build_appservices(
    *,
    services: AppServices,
    reactor: Any,
    clock: Clock,
    db: Database,
    parts: Any,
    backoff_base_s: float = 1.0,
    timeout_s: float = 30.0,
) -> AppServiceHost:
    """Wire the host.  ``parts`` carries the homeserver's collaborators by name (see app.py):
    accounts, devices, event_store, room_events, room_store, typing, receipts, presence,
    to_device_inbox, e2e_keys."""
    queue = AppServiceQueueRepository(db)
    client = AppServiceClient(reactor, timeout_s=timeout_s)

    async def user_devices(user_id: str) -> list[str]:
        return [d.device_id for d in await parts.devices.get_devices(user_id)]

    async def user_exists(user_id: str) -> bool:
        user = await parts.accounts.get_user(user_id)
        return user is not None and not user.deactivated

    senders = {
        svc.id: TransactionSender(
            service=svc,
            clock=clock,
            queue=queue,
            client=client,
            events=parts.event_store,
            otk_counts=parts.e2e_keys.one_time_key_counts if svc.msc3202 else None,
            user_devices=user_devices,
            backoff_base_s=backoff_base_s,
        )
        for svc in services.all
    }
    host = AppServiceHost(
        services=services,
        clock=clock,
        queue=queue,
        client=client,
        senders=senders,
        create_user=parts.accounts.create_user,
        user_exists=user_exists,
    )

    async def joined_rooms(user_id: str) -> list[str]:
        return [m.room_id for m in await parts.room_store.rooms_for_user(user_id, ("join",))]

    host.event_feeder = EventFeeder(
        services=services.all,
        queue=queue,
        events=parts.event_store,
        joined_users=parts.room_events.joined_users,
        room_aliases=parts.room_store.aliases_for_room,
        on_queued=host.queued,
    )
    host.ephemeral_feeder = EphemeralFeeder(
        services=services.all,
        queue=queue,
        joined_rooms=joined_rooms,
        user_devices=user_devices,
        typing=parts.typing,
        receipts=parts.receipts,
        presence=parts.presence,
        to_device=parts.to_device_inbox,
        device_lists=parts.e2e_keys,
        on_queued=host.queued,
        pending_to_device_users=queue.users_with_pending_to_device,
    )
    return host
