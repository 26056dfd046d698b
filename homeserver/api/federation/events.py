"""Room events over federation (spec: server-server API): ``/_matrix/federation/v1/...``.

``PUT /send/{txnId}`` (transactions of PDUs and EDUs), ``GET /event/{eventId}``,
``GET /state/{roomId}``, ``GET /state_ids/{roomId}``, ``GET /event_auth/{roomId}/{eventId}``,
``GET /backfill/{roomId}`` and ``POST /get_missing_events/{roomId}``.  Every endpoint
first authenticates the X-Matrix signature, so a server outside the allowlist gets 403
``M_FORBIDDEN`` before anything is read or processed.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.federation.ingest import TransactionTooLarge
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, query_param

FEDERATION_PREFIX = "/_matrix/federation/v1"
MAX_ID_LENGTH = 255
MAX_EVENT_IDS = 100

JsonDict = dict[str, Any]


class Authenticator(Protocol):
    async def authenticate(self, request: server.Request) -> str: ...


class TransactionHandler(Protocol):
    async def on_send_transaction(self, origin: str, txn_id: str, body: dict[str, Any]) -> dict[str, Any]: ...


class EventReads(Protocol):
    async def get_event(self, origin: str, event_id: str) -> JsonDict: ...

    async def state_ids(self, origin: str, room_id: str, event_id: str) -> JsonDict: ...

    async def state(self, origin: str, room_id: str, event_id: str) -> JsonDict: ...

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> JsonDict: ...

    async def backfill(self, origin: str, room_id: str, from_ids: list[str], limit: int) -> JsonDict: ...

    async def missing_events(
        self, origin: str, room_id: str, *, earliest: list[str], latest: list[str], limit: int, min_depth: int
    ) -> JsonDict: ...


def _bad(message: str, errcode: str = Codes.INVALID_PARAM) -> MatrixError:
    return MatrixError(400, errcode, message)


def _required_query(request: server.Request, name: str) -> str:
    value = query_param(request, name)
    if value is None:
        raise _bad(f"Missing query parameter: {name}", Codes.MISSING_PARAM)
    if not value or len(value) > MAX_ID_LENGTH:
        raise _bad(f"Query parameter {name} must be 1 to {MAX_ID_LENGTH} characters")
    return value


def _query_list(request: server.Request, name: str) -> list[str]:
    raw = request.args.get(name.encode("ascii"), []) if request.args else []
    try:
        values = [v.decode("utf-8") for v in raw]
    except UnicodeDecodeError:
        raise _bad(f"Query parameter {name} is not valid UTF-8") from None
    if len(values) > MAX_EVENT_IDS or any(not v or len(v) > MAX_ID_LENGTH for v in values):
        raise _bad(f"Query parameter {name} must list 1 to {MAX_EVENT_IDS} event IDs")
    return values


def _ids(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= MAX_ID_LENGTH for v in value):
        raise _bad(f"{name} must be a list of event IDs", Codes.BAD_JSON)
    if len(value) > MAX_EVENT_IDS:
        raise _bad(f"{name} may list at most {MAX_EVENT_IDS} event IDs")
    return list(value)


def register(
    router: Router,
    *,
    authenticator: Authenticator,
    transactions: TransactionHandler,
    reads: EventReads,
) -> None:
    authenticate = authenticator.authenticate

    async def send_transaction(request: server.Request, txn_id: str) -> tuple[int, Any]:
        origin = await authenticate(request)
        body = parse_json_object(request)
        claimed = body.data.get("origin")
        if claimed is not None and claimed != origin:
            raise _bad(f"origin {claimed!r} is not the signing server {origin}")
        try:
            return 200, await transactions.on_send_transaction(origin, txn_id, body.data)
        except TransactionTooLarge as e:
            raise MatrixError(400, Codes.TOO_LARGE, str(e)) from None
        except ValueError as e:  # pdus or edus is not a list
            raise _bad(str(e), Codes.BAD_JSON) from None

    async def get_event(request: server.Request, event_id: str) -> tuple[int, Any]:
        origin = await authenticate(request)
        return 200, await reads.get_event(origin, event_id)

    async def get_state(request: server.Request, room_id: str) -> tuple[int, Any]:
        origin = await authenticate(request)
        return 200, await reads.state(origin, room_id, _required_query(request, "event_id"))

    async def get_state_ids(request: server.Request, room_id: str) -> tuple[int, Any]:
        origin = await authenticate(request)
        return 200, await reads.state_ids(origin, room_id, _required_query(request, "event_id"))

    async def get_event_auth(request: server.Request, room_id: str, event_id: str) -> tuple[int, Any]:
        origin = await authenticate(request)
        return 200, await reads.event_auth(origin, room_id, event_id)

    async def backfill(request: server.Request, room_id: str) -> tuple[int, Any]:
        origin = await authenticate(request)
        from_ids = _query_list(request, "v")
        if not from_ids:
            raise _bad("Missing query parameter: v", Codes.MISSING_PARAM)
        raw_limit = _required_query(request, "limit")
        if not raw_limit.isdigit():
            raise _bad("Query parameter limit must be a non-negative integer")
        return 200, await reads.backfill(origin, room_id, from_ids, int(raw_limit))

    async def get_missing_events(request: server.Request, room_id: str) -> tuple[int, Any]:
        origin = await authenticate(request)
        body = parse_json_object(request)
        latest = _ids(body.data.get("latest_events"), "latest_events")
        if not latest:
            raise _bad("latest_events must name at least one event", Codes.MISSING_PARAM)
        earliest = _ids(body.data.get("earliest_events", []), "earliest_events")
        limit = body.int("limit", minimum=0)
        min_depth = body.int("min_depth", minimum=0)
        return 200, await reads.missing_events(
            origin,
            room_id,
            earliest=earliest,
            latest=latest,
            limit=10 if limit is None else limit,
            min_depth=0 if min_depth is None else min_depth,
        )

    router.add("PUT", f"^{FEDERATION_PREFIX}/send/(?P<txn_id>[^/]+)$", send_transaction)
    router.add("GET", f"^{FEDERATION_PREFIX}/event/(?P<event_id>[^/]+)$", get_event)
    router.add("GET", f"^{FEDERATION_PREFIX}/state/(?P<room_id>[^/]+)$", get_state)
    router.add("GET", f"^{FEDERATION_PREFIX}/state_ids/(?P<room_id>[^/]+)$", get_state_ids)
    router.add("GET", f"^{FEDERATION_PREFIX}/event_auth/(?P<room_id>[^/]+)/(?P<event_id>[^/]+)$", get_event_auth)
    router.add("GET", f"^{FEDERATION_PREFIX}/backfill/(?P<room_id>[^/]+)$", backfill)
    router.add("POST", f"^{FEDERATION_PREFIX}/get_missing_events/(?P<room_id>[^/]+)$", get_missing_events)
