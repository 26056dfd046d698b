"""/sendToDevice and the to_device section of /sync; to-device messages over federation.

Messages wait in the target device's inbox until that device acknowledges them by
syncing with a later since token: a response lost on the way is delivered again.
Messages for users of other servers leave as one ``m.direct_to_device`` EDU per server;
those EDUs arriving from a server about its own sender are delivered to our devices, once
per ``message_id``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import InvalidID, UserID
from homeserver.services.auth import Requester
from homeserver.services.notifier import Notifier
from homeserver.services.streams import StreamToken
from homeserver.storage.devices import DeviceRepository
from homeserver.storage.to_device import ToDeviceRepository

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
DIRECT_TO_DEVICE = "m.direct_to_device"
MAX_EDU_RECIPIENTS = 10_000


class EduSender(Protocol):
    """:class:`~homeserver.federation.outbound.FederationOutbound`."""

    async def send_edu(
        self, destinations: Iterable[str], edu_type: str, content: Mapping[str, Any], key: str | None = None
    ) -> None: ...


# Per /sync response, per device: the rest waits for the next sync.
MAX_MESSAGES_PER_SYNC = 100
MAX_MESSAGE_BYTES = 65536


class ToDeviceService:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        notifier: Notifier,
        inbox: ToDeviceRepository,
        devices: DeviceRepository,
        edus: Callable[[], EduSender | None] = lambda: None,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._notifier = notifier
        self._inbox = inbox
        self._devices = devices
        # Where EDUs for other servers go, looked up when needed (set by the federation wiring).
        self.edus = edus

    async def send(self, requester: Requester, event_type: str, txn_id: str, body: JsonDict) -> None:
        messages = body.get("messages")
        if not isinstance(messages, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter messages must be an object")
        rows: list[tuple[str, str, JsonDict]] = []
        remote: dict[str, dict[str, dict[str, JsonDict]]] = {}
        for user_id, by_device in messages.items():
            try:
                parsed = UserID.parse(user_id)
            except InvalidID:
                raise MatrixError(400, Codes.INVALID_PARAM, f"messages: invalid user ID {user_id!r}") from None
            if not isinstance(by_device, dict):
                raise MatrixError(400, Codes.BAD_JSON, f"messages.{user_id} must be an object")
            for device_id, content in by_device.items():
                if not isinstance(content, dict):
                    raise MatrixError(400, Codes.BAD_JSON, f"messages.{user_id}.{device_id} must be an object")
                message = {"sender": requester.user_id, "type": event_type, "content": content}
                if len(json.dumps(message).encode("utf-8")) > MAX_MESSAGE_BYTES:
                    raise MatrixError(413, Codes.TOO_LARGE, f"Message for {user_id}/{device_id} is too large")
            if parsed.domain != self._server_name:
                remote.setdefault(parsed.domain, {})[user_id] = by_device
                continue
            rows += await self._local_rows(user_id, by_device, requester.user_id, event_type)
        if not rows and not remote:
            return
        # The transaction is recorded even when every recipient is remote: a retried
        # request sends nothing twice.
        stream_id = await self._inbox.add_messages(
            rows, (requester.user_id, requester.device_id or "", txn_id), self._clock.time_msec()
        )
        if stream_id is None:
            return
        if rows:
            self._notifier.notify("to_device", stream_id, {u for u, _, _ in rows})
        sender = self.edus()
        if sender is None:
            return
        for destination, by_user in sorted(remote.items()):
            content = {
                "sender": requester.user_id,
                "type": event_type,
                "message_id": secrets.token_urlsafe(16),
                "messages": by_user,
            }
            await sender.send_edu([destination], DIRECT_TO_DEVICE, content)

    async def _local_rows(
        self, user_id: str, by_device: Mapping[str, Any], sender: str, event_type: str
    ) -> list[tuple[str, str, JsonDict]]:
        known = {d.device_id for d in await self._devices.get_devices(user_id)}
        rows: list[tuple[str, str, JsonDict]] = []
        for device_id, content in by_device.items():
            message = {"sender": sender, "type": event_type, "content": content}
            targets = known if device_id == "*" else ({device_id} & known)
            rows += [(user_id, d, message) for d in sorted(targets)]
        return rows

    async def on_direct_to_device(self, origin: str, content: Mapping[str, Any]) -> None:
        """Inbound ``m.direct_to_device``: deliver to our users' devices, once per message_id."""
        sender, event_type = content.get("sender"), content.get("type")
        message_id, messages = content.get("message_id"), content.get("messages")
        try:
            sender_domain = UserID.parse(sender).domain if isinstance(sender, str) else None
        except InvalidID:
            sender_domain = None
        if not isinstance(sender, str) or sender_domain != origin:
            logger.info("dropped %s from %s: sender %r is not one of its users", DIRECT_TO_DEVICE, origin, sender)
            return
        if not isinstance(event_type, str) or not isinstance(message_id, str) or not isinstance(messages, dict):
            logger.info("dropped a malformed %s from %s", DIRECT_TO_DEVICE, origin)
            return
        rows: list[tuple[str, str, JsonDict]] = []
        for user_id, by_device in list(messages.items())[:MAX_EDU_RECIPIENTS]:
            if not isinstance(user_id, str) or not user_id.endswith(":" + self._server_name):
                continue
            if not isinstance(by_device, dict) or not all(isinstance(c, dict) for c in by_device.values()):
                continue
            rows += await self._local_rows(user_id, by_device, sender, event_type)
        if not rows:
            return
        # Deduplicated like a client's transaction: the sender and "federation" stand for the device.
        stream_id = await self._inbox.add_messages(
            rows, (sender, f"federation:{origin}", message_id), self._clock.time_msec()
        )
        if stream_id is not None:
            self._notifier.notify("to_device", stream_id, {u for u, _, _ in rows})

    async def current_position(self) -> int:
        return await self._inbox.ids.current()

    async def sync_extension(
        self, requester: Requester, since: StreamToken | None, now: StreamToken, body: JsonDict
    ) -> None:
        device_id = requester.device_id
        if device_id is None:
            return
        if since is not None and since.to_device > 0:
            await self._inbox.delete_upto(requester.user_id, device_id, since.to_device)
        if since is not None and since.to_device >= now.to_device:
            body["to_device"] = {"events": []}
            return  # everything up to now was delivered and is now acknowledged
        messages, reached = await self._inbox.get_messages(
            requester.user_id, device_id, now.to_device, MAX_MESSAGES_PER_SYNC
        )
        body["to_device"] = {"events": messages}
        if reached != now.to_device:
            # Only what was delivered is acknowledged by the next since token.
            token = StreamToken.parse(body["next_batch"])
            body["next_batch"] = StreamToken(**{**_as_dict(token), "to_device": reached}).to_string()


def _as_dict(token: StreamToken) -> dict[str, int]:
    return {name: getattr(token, name) for name in token.__dataclass_fields__}
