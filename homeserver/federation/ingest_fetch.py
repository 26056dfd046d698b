"""The requests the ingest pipeline makes to the server that sent it an event: the
missing prev_events, the state at a gap, single events and auth chains.

A thin typed layer over the signed :class:`~homeserver.federation.transport.FederationClient`:
each method returns the PDU dicts of a well-formed answer or raises
:class:`~homeserver.federation.transport.FederationError` (``InvalidResponseError`` for an
answer of the wrong shape).  Checking the PDUs is the caller's business.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from homeserver.federation.transport import FederationRequests, InvalidResponseError

JsonDict = dict[str, Any]
PREFIX = "/_matrix/federation/v1"


def _q(value: str) -> str:
    return quote(value, safe="")


def _pdu_list(body: Any, key: str, what: str) -> list[JsonDict]:
    if not isinstance(body, dict):
        raise InvalidResponseError(f"{what}: the answer is not a JSON object")
    value = body.get(key, [])
    if not isinstance(value, list):
        raise InvalidResponseError(f"{what}: {key} is not a list")
    return [p for p in value if isinstance(p, dict)]


def _id_list(body: Any, key: str, what: str) -> list[str]:
    if not isinstance(body, dict):
        raise InvalidResponseError(f"{what}: the answer is not a JSON object")
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidResponseError(f"{what}: {key} is not a list of event IDs")
    return list(value)


class RemoteEvents:
    """Fetching events from another server of a room."""

    def __init__(self, client: FederationRequests, *, timeout: float = 30.0) -> None:
        self._client = client
        self._timeout = timeout

    async def get_missing_events(
        self, destination: str, room_id: str, *, earliest: list[str], latest: list[str], limit: int, min_depth: int
    ) -> list[JsonDict]:
        """``POST /get_missing_events/{roomId}``: events between ``earliest`` and ``latest``."""
        what = f"get_missing_events from {destination}"
        body = await self._client.post_json(
            destination,
            f"{PREFIX}/get_missing_events/{_q(room_id)}",
            {"earliest_events": earliest, "latest_events": latest, "limit": limit, "min_depth": min_depth},
            timeout=self._timeout,
        )
        return _pdu_list(body, "events", what)

    async def state_ids(self, destination: str, room_id: str, event_id: str) -> tuple[list[str], list[str]]:
        """``GET /state_ids/{roomId}?event_id=``: (state event IDs, auth chain IDs) before the event."""
        what = f"state_ids from {destination}"
        body = await self._client.get_json(
            destination, f"{PREFIX}/state_ids/{_q(room_id)}", args={"event_id": event_id}, timeout=self._timeout
        )
        return _id_list(body, "pdu_ids", what), _id_list(body, "auth_chain_ids", what)

    async def state(self, destination: str, room_id: str, event_id: str) -> tuple[list[JsonDict], list[JsonDict]]:
        """``GET /state/{roomId}?event_id=``: (state PDUs, auth chain PDUs) before the event."""
        what = f"state from {destination}"
        body = await self._client.get_json(
            destination, f"{PREFIX}/state/{_q(room_id)}", args={"event_id": event_id}, timeout=self._timeout
        )
        return _pdu_list(body, "pdus", what), _pdu_list(body, "auth_chain", what)

    async def event(self, destination: str, event_id: str) -> JsonDict:
        """``GET /event/{eventId}``: the one PDU of the answer."""
        what = f"event {event_id} from {destination}"
        pdus = _pdu_list(
            await self._client.get_json(destination, f"{PREFIX}/event/{_q(event_id)}", timeout=self._timeout),
            "pdus",
            what,
        )
        if len(pdus) != 1:
            raise InvalidResponseError(f"{what}: expected one PDU, got {len(pdus)}")
        return pdus[0]

    async def event_auth(self, destination: str, room_id: str, event_id: str) -> list[JsonDict]:
        """``GET /event_auth/{roomId}/{eventId}``: the event's full auth chain."""
        what = f"event_auth from {destination}"
        body = await self._client.get_json(
            destination, f"{PREFIX}/event_auth/{_q(room_id)}/{_q(event_id)}", timeout=self._timeout
        )
        return _pdu_list(body, "auth_chain", what)
