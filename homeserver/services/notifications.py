"""GET /notifications: the events that notified a user (or would have), newest first.

The push actions recorded when an event arrived (services/push.py) keep only whether it
notified and highlighted, so ``actions`` is rebuilt from those two facts: ``notify``, plus a
``highlight`` tweak for highlights (the sound tweak of the matching rule is not kept).
"""

from __future__ import annotations

from typing import Any

from homeserver.core.errors import Codes, MatrixError
from homeserver.services.auth import Requester
from homeserver.services.presenter import EventPresenter
from homeserver.storage.events import EventRepository
from homeserver.storage.receipts import ReceiptRepository

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class NotificationService:
    def __init__(self, *, receipts: ReceiptRepository, events: EventRepository, presenter: EventPresenter) -> None:
        self._receipts = receipts
        self._events = events
        self._presenter = presenter

    async def notifications(
        self, requester: Requester, *, from_token: str | None, limit: int | None, only: str | None
    ) -> dict[str, Any]:
        before: int | None = None
        if from_token is not None:
            try:
                before = int(from_token)
            except ValueError:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, "Invalid parameter from: not a notifications token"
                ) from None
        want = DEFAULT_LIMIT if limit is None else max(1, min(limit, MAX_LIMIT))
        rows = await self._receipts.notifications(
            requester.user_id, before_stream=before, limit=want, only_highlight=only == "highlight"
        )
        stored = await self._events.get_events([r[1] for r in rows])
        present = [stored[r[1]] for r in rows if r[1] in stored]
        visible = {s.event.event_id for s in await self._presenter.filter_visible(requester.user_id, present)}
        shown = [s for s in present if s.event.event_id in visible]
        serialized = {
            e["event_id"]: e
            for e in await self._presenter.serialize(shown, user_id=requester.user_id, device_id=requester.device_id)
        }
        out: list[dict[str, Any]] = []
        for room_id, event_id, _, highlight, read in rows:
            event = serialized.get(event_id)
            if event is None:
                continue
            actions: list[Any] = ["notify"]
            if highlight:
                actions.append({"set_tweak": "highlight"})
            out.append(
                {"actions": actions, "event": event, "read": read, "room_id": room_id, "ts": event["origin_server_ts"]}
            )
        body: dict[str, Any] = {"notifications": out}
        if len(rows) == want:
            body["next_token"] = str(rows[-1][2])
        return body
