"""Pushers (spec "Push Notifications"): the /pushers API, and delivery to push gateways.

* :func:`parse_set_pusher` checks a ``POST /pushers/set`` body (errors name the field).
* :class:`PusherService` lists, sets and deletes pushers, drops those of deleted devices
  (logout, password change) and, told by :class:`PushRuleService` of each event that
  notifies local users, sends each of their HTTP pushers the gateway notification.
* :class:`PushGatewayClient` POSTs to a gateway: the address is checked against
  ``ip_range_blacklist`` (with ``ip_range_whitelist`` exceptions, as Synapse does for
  pushers) and pinned, the request has a deadline.

Delivery never holds up event persistence: it runs in the background, at most
``MAX_CONCURRENT_REQUESTS`` requests at once; a failed request (network error, 5xx, 429)
is retried after ``RETRY_DELAYS``; a 4xx answer is final.  Pushers whose pushkey the
gateway ``rejected`` are deleted.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.events.model import Event
from homeserver.http.params import Body
from homeserver.media.safe_http import IPPolicy, Resolver
from homeserver.push import tweaks_for
from homeserver.push.gateway import NOTIFY_PATH, notification_body, rejected_pushkeys
from homeserver.storage.pushers import PusherRecord, PusherRepository

logger = logging.getLogger(__name__)

KINDS = ("http",)  # "email" pushers need the mailer; not offered yet
MAX_APP_ID_LENGTH = 64  # spec
MAX_PUSHKEY_BYTES = 512  # spec
MAX_LANG_LENGTH = 35  # RFC 5646 asks to support language tags of at least 35 characters
MAX_NAME_LENGTH = 256  # app/device display names and profile_tag
MAX_DATA_BYTES = 4096
MAX_CONCURRENT_REQUESTS = 20
MAX_PENDING_DELIVERIES = 10_000
RETRY_DELAYS = (2.0, 10.0, 60.0, 300.0)  # seconds before the 2nd, 3rd, ... attempt
REQUEST_TIMEOUT = 15.0
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PusherDeletion:
    app_id: str
    pushkey: str


@dataclass(frozen=True, slots=True)
class PusherSettings:
    kind: str
    app_id: str
    pushkey: str
    app_display_name: str
    device_display_name: str
    profile_tag: str
    lang: str
    data: dict[str, Any]
    append: bool


def _invalid(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise _invalid("Parameter data.url has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid("Parameter data.url must be an http or https URL")
    if parts.path != NOTIFY_PATH:
        raise _invalid(f"Parameter data.url must have the path {NOTIFY_PATH}")


def parse_set_pusher(data: dict[str, Any]) -> PusherSettings | PusherDeletion:
    """The body of ``POST /pushers/set``: settings to store, or (``kind: null``) a deletion."""
    body = Body(data)
    if "kind" not in data:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: kind")
    app_id = body.required_str("app_id", max_length=MAX_APP_ID_LENGTH)
    pushkey = body.required_str("pushkey")
    if len(pushkey.encode()) > MAX_PUSHKEY_BYTES:
        raise _invalid(f"Parameter pushkey is longer than {MAX_PUSHKEY_BYTES} bytes")
    kind = body.str("kind")
    if kind is None:
        return PusherDeletion(app_id, pushkey)
    if kind not in KINDS:
        raise _invalid(f"Parameter kind must be one of {', '.join(KINDS)} (or null to delete)")
    settings_data = body.object("data", required=True)
    assert settings_data is not None
    if len(json.dumps(settings_data.data).encode()) > MAX_DATA_BYTES:
        raise _invalid(f"Parameter data is larger than {MAX_DATA_BYTES} bytes")
    url = settings_data.required_str("url")
    _check_url(url)
    fmt = settings_data.str("format")
    if fmt is not None and fmt != "event_id_only":
        raise _invalid('Parameter data.format must be "event_id_only" or absent')
    return PusherSettings(
        kind=kind,
        app_id=app_id,
        pushkey=pushkey,
        app_display_name=body.required_str("app_display_name", max_length=MAX_NAME_LENGTH),
        device_display_name=body.required_str("device_display_name", max_length=MAX_NAME_LENGTH),
        profile_tag=body.str("profile_tag", max_length=MAX_NAME_LENGTH) or "",
        lang=body.required_str("lang", max_length=MAX_LANG_LENGTH),
        data=settings_data.data,
        append=body.bool("append", False),
    )


class GatewayError(Exception):
    """A delivery that failed; ``retry`` says whether trying again may help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class _PinnedEndpoints:
    """Connect to the one checked address, whatever the URL's host resolves to later."""

    def __init__(self, reactor: Any, address: str, hostname: str, timeout: float) -> None:
        self._reactor, self._address, self._hostname, self._timeout = reactor, address, hostname, timeout

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 (Twisted's interface)
        make = TCP6ClientEndpoint if ipaddress.ip_address(self._address).version == 6 else TCP4ClientEndpoint
        endpoint = make(self._reactor, self._address, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(optionsForClientTLS(self._hostname), endpoint)
        return endpoint


class PushGatewayClient:
    def __init__(self, *, reactor: Any, policy: IPPolicy, resolve: Resolver, timeout: float = REQUEST_TIMEOUT) -> None:
        self._reactor = reactor
        self._policy = policy
        self._resolve = resolve
        self._timeout = timeout

    async def notify(self, url: str, notification: dict[str, Any]) -> Any:
        """POST ``{"notification": ...}`` to ``url``; the gateway's JSON answer.  Raises
        :class:`GatewayError`."""
        d = defer.ensureDeferred(self._post(url, json.dumps({"notification": notification}).encode()))
        d.addTimeout(self._timeout, self._reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise GatewayError("timed out", retry=True) from None

    async def _address(self, host: str, port: int) -> str:
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            addresses = await self._resolve(host, port)
        if not addresses:
            raise GatewayError(f"cannot resolve {host}", retry=True)
        if not all(self._policy.allows(a) for a in addresses):
            raise GatewayError(f"{host} is in ip_range_blacklist", retry=False)
        return addresses[0]

    async def _post(self, url: str, payload: bytes) -> Any:
        parts = urlsplit(url)
        host = parts.hostname or ""
        address = await self._address(host, parts.port or (443 if parts.scheme == "https" else 80))
        agent = Agent.usingEndpointFactory(self._reactor, _PinnedEndpoints(self._reactor, address, host, self._timeout))
        headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [b"homeserver pusher"]})
        try:
            response = await agent.request(b"POST", url.encode("ascii"), headers, _BytesProducer(payload))
            raw = await readBody(response)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise GatewayError(f"request failed: {type(e).__name__}", retry=True) from None
        if response.code == 429 or response.code >= 500:
            raise GatewayError(f"gateway answered {response.code}", retry=True)
        if response.code >= 400:
            raise GatewayError(f"gateway answered {response.code}", retry=False)
        if len(raw) > MAX_RESPONSE_BYTES:
            return {}
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            return {}


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body from bytes (Twisted's FileBodyProducer needs a file)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:  # noqa: N802
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


StateLookup = Callable[[str, list[tuple[str, str]]], Awaitable[dict[tuple[str, str], Event]]]
Notify = Callable[[str, dict[str, Any]], Coroutine[Any, Any, Any]]


class PusherService:
    def __init__(
        self,
        *,
        clock: Clock,
        pushers: PusherRepository,
        room_state: StateLookup,
        notify: Notify,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self._clock = clock
        self._pushers = pushers
        self._room_state = room_state
        self._notify = notify
        self._retry_delays = retry_delays
        self._slots = defer.DeferredSemaphore(MAX_CONCURRENT_REQUESTS)
        self._pending: set[defer.Deferred[None]] = set()

    # -- the /pushers API ----------------------------------------------------------------

    async def list_pushers(self, user_id: str) -> list[dict[str, Any]]:
        return [p.to_client_json() for p in await self._pushers.for_user(user_id)]

    async def set_pusher(self, user_id: str, device_id: str | None, body: dict[str, Any]) -> None:
        """Apply a ``POST /pushers/set`` body for the user, from the given device."""
        request = parse_set_pusher(body)
        if isinstance(request, PusherDeletion):
            await self._pushers.delete(user_id, request.app_id, request.pushkey)
            return
        await self._pushers.upsert(
            PusherRecord(
                user_id=user_id,
                app_id=request.app_id,
                pushkey=request.pushkey,
                kind=request.kind,
                app_display_name=request.app_display_name,
                device_display_name=request.device_display_name,
                profile_tag=request.profile_tag,
                lang=request.lang,
                data=request.data,
                device_id=device_id,
                pushkey_ts=self._clock.time_msec(),
            ),
            remove_for_other_users=not request.append,
        )

    def on_devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        """The devices are gone (logout, password change): so are the pushers they set.
        (Reads already ignore them; this removes the rows.)"""
        self._spawn(self._pushers.delete_for_devices(user_id, device_ids))

    # -- delivery ------------------------------------------------------------------------

    async def on_notify(self, event: Event, notified: list[tuple[str, list[Any]]]) -> None:
        """Push rules say ``event`` notifies these local users: poke their gateways in the
        background (this returns at once)."""
        if len(self._pending) >= MAX_PENDING_DELIVERIES:
            logger.warning("push delivery backlog full: dropping notifications for %s", event.event_id)
            return
        self._spawn(self._deliver(event, notified))

    async def wait_idle(self) -> None:
        """Until every delivery under way has finished (tests, shutdown)."""
        while self._pending:
            await defer.DeferredList(list(self._pending), consumeErrors=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        d = defer.ensureDeferred(work)
        self._pending.add(d)

        def done(result: Any) -> None:
            self._pending.discard(d)
            if isinstance(result, Failure):
                logger.error("pusher task failed: %s", result.getTraceback())

        d.addBoth(done)

    async def _deliver(self, event: Event, notified: list[tuple[str, list[Any]]]) -> None:
        # One query for every notified user: in a big room most have no pusher.
        by_user = await self._pushers.for_users([u for u, _ in notified])
        targets = [(u, a, by_user[u]) for u, a in notified if u in by_user]
        if not targets:
            return
        state = await self._room_state(
            event.room_id,
            [("m.room.name", ""), ("m.room.canonical_alias", ""), ("m.room.member", event.sender)],
        )
        name_event = state.get(("m.room.name", ""))
        alias_event = state.get(("m.room.canonical_alias", ""))
        member_event = state.get(("m.room.member", event.sender))
        room_name = _str_or_none(name_event.content.get("name")) if name_event else None
        if not room_name and alias_event is not None:
            room_name = _str_or_none(alias_event.content.get("alias"))
        sender_name = _str_or_none(member_event.content.get("displayname")) if member_event else None
        event_json = {**event.dict, "event_id": event.event_id, "room_id": event.room_id}
        for user_id, actions, pushers in targets:
            unread = await self._pushers.unread_badge(user_id)
            tweaks = tweaks_for(actions)
            for pusher in pushers:
                note = notification_body(
                    user_id=user_id,
                    event=event_json,
                    app_id=pusher.app_id,
                    pushkey=pusher.pushkey,
                    pushkey_ts=pusher.pushkey_ts,
                    data=pusher.data,
                    tweaks=tweaks,
                    unread=unread,
                    sender_display_name=sender_name,
                    room_name=room_name,
                )
                self._spawn(self._send(pusher, note))

    async def _send(self, pusher: PusherRecord, note: dict[str, Any]) -> None:
        url = str(pusher.data.get("url", ""))
        for attempt in range(len(self._retry_delays) + 1):
            if attempt:
                await self._clock.sleep(self._retry_delays[attempt - 1])
                # Deleted or replaced meanwhile (logout, another user took the pushkey)?
                if await self._pushers.get(pusher.user_id, pusher.app_id, pusher.pushkey) is None:
                    return
            try:
                answer = await self._slots.run(lambda: defer.ensureDeferred(self._notify(url, note)))
            except GatewayError as e:
                logger.info("push to %s for %s failed (attempt %d): %s", url, pusher.user_id, attempt + 1, e)
                if not e.retry:
                    return
                continue
            if pusher.pushkey in rejected_pushkeys(answer):
                logger.info("gateway %s rejected pushkey of %s: removing the pusher", url, pusher.user_id)
                await self._pushers.delete(pusher.user_id, pusher.app_id, pusher.pushkey)
            return
        logger.warning("giving up pushing %s to %s", note.get("event_id"), url)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def build_pushers(
    config: Any,
    *,
    reactor: Any,
    clock: Clock,
    db: Any,
    push: Any,
    room_events: Any,
    device_deleted_listeners: list[Callable[[str, list[str]], None]],
    run_in_thread: Callable[..., Any],
) -> PusherService:
    """Wire pushers: the service, its gateway client (``ip_range_blacklist`` /
    ``ip_range_whitelist``), the push-rule hook and the device-deletion hook."""
    from homeserver.media.safe_http import threaded_resolver

    client = PushGatewayClient(
        reactor=reactor,
        policy=IPPolicy(config.ip_range_blacklist, config.ip_range_whitelist),
        resolve=threaded_resolver(run_in_thread),
    )
    service = PusherService(
        clock=clock, pushers=PusherRepository(db), room_state=room_events.current_state_events, notify=client.notify
    )
    push.notify_listeners.append(service.on_notify)
    device_deleted_listeners.append(service.on_devices_deleted)
    return service
