"""/sendToDevice and the to_device section of /sync.

Messages wait in the target device's inbox until that device acknowledges them by
syncing with a later since token: a response lost on the way is delivered again.
"""

from __future__ import annotations

import json
from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import InvalidID, UserID
from homeserver.services.auth import Requester
from homeserver.services.notifier import Notifier
from homeserver.services.streams import StreamToken
from homeserver.storage.devices import DeviceRepository
from homeserver.storage.to_device import ToDeviceRepository

JsonDict = dict[str, Any]
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
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._notifier = notifier
        self._inbox = inbox
        self._devices = devices

    async def send(self, requester: Requester, event_type: str, txn_id: str, body: JsonDict) -> None:
        messages = body.get("messages")
        if not isinstance(messages, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter messages must be an object")
        rows: list[tuple[str, str, JsonDict]] = []
        for user_id, by_device in messages.items():
            try:
                parsed = UserID.parse(user_id)
            except InvalidID:
                raise MatrixError(400, Codes.INVALID_PARAM, f"messages: invalid user ID {user_id!r}") from None
            if not isinstance(by_device, dict):
                raise MatrixError(400, Codes.BAD_JSON, f"messages.{user_id} must be an object")
            if parsed.domain != self._server_name:
                continue  # remote delivery comes with federation
            known = {d.device_id for d in await self._devices.get_devices(user_id)}
            for device_id, content in by_device.items():
                if not isinstance(content, dict):
                    raise MatrixError(400, Codes.BAD_JSON, f"messages.{user_id}.{device_id} must be an object")
                message = {"sender": requester.user_id, "type": event_type, "content": content}
                if len(json.dumps(message).encode("utf-8")) > MAX_MESSAGE_BYTES:
                    raise MatrixError(413, Codes.TOO_LARGE, f"Message for {user_id}/{device_id} is too large")
                targets = known if device_id == "*" else ({device_id} & known)
                rows += [(user_id, d, message) for d in sorted(targets)]
        if not rows:
            return
        stream_id = await self._inbox.add_messages(
            rows, (requester.user_id, requester.device_id or "", txn_id), self._clock.time_msec()
        )
        if stream_id is not None:
            self._notifier.notify("to_device", stream_id, {u for u, _, _ in rows})

    async def current_position(self) -> int:
        return await self._inbox.ids.current()

    async def sync_extension(self, requester: Requester, since: StreamToken | None, now: StreamToken, body: JsonDict) -> None:
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
