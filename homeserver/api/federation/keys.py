"""The key server (spec: server-server API, "Retrieving server keys"): ``/_matrix/key/v2``.

``GET /server`` publishes our keys; ``GET /query/{serverName}`` and ``POST /query``
are the notary API, serving other servers' key responses co-signed by us.  None of
these is authenticated (a server fetching keys cannot sign yet).  Served by listeners
with the "keys" resource, which "federation" implies.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import is_valid_server_name
from homeserver.federation.key_server import MAX_SERVERS_PER_QUERY, KeyQuery
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, query_param

KEY_PREFIX = "/_matrix/key/v2"


class OwnKeys(Protocol):
    def server_keys(self) -> dict[str, Any]: ...


class Notary(Protocol):
    async def query(self, criteria: dict[str, KeyQuery]) -> list[dict[str, Any]]: ...


def _server_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not is_valid_server_name(value):
        raise MatrixError(400, Codes.INVALID_PARAM, f"{where} is not a valid server name: {value!r}")
    return value


def _timestamp(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise MatrixError(400, Codes.INVALID_PARAM, f"{where} must be a non-negative integer timestamp")
    return int(value)


def parse_query_body(body: dict[str, Any]) -> dict[str, KeyQuery]:
    """``{"server_keys": {server: {key_id: {"minimum_valid_until_ts": ts}}}}`` as criteria."""
    if "server_keys" not in body:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: server_keys")
    servers = body["server_keys"]
    if not isinstance(servers, dict):
        raise MatrixError(400, Codes.BAD_JSON, "server_keys must be an object")
    if len(servers) > MAX_SERVERS_PER_QUERY:
        raise MatrixError(400, Codes.INVALID_PARAM, f"server_keys may name at most {MAX_SERVERS_PER_QUERY} servers")
    criteria: dict[str, KeyQuery] = {}
    for name, keys in servers.items():
        server_name = _server_name(name, "server_keys key")
        if not isinstance(keys, dict):
            raise MatrixError(400, Codes.BAD_JSON, f"server_keys.{server_name} must be an object")
        key_ids: dict[str, int | None] = {}
        for key_id, entry in keys.items():
            if not isinstance(entry, dict):
                raise MatrixError(400, Codes.BAD_JSON, f"server_keys.{server_name}.{key_id} must be an object")
            key_ids[key_id] = _timestamp(
                entry.get("minimum_valid_until_ts"), f"server_keys.{server_name}.{key_id}.minimum_valid_until_ts"
            )
        criteria[server_name] = KeyQuery(key_ids=key_ids)
    return criteria


def register(router: Router, *, own_keys: OwnKeys, notary: Notary) -> None:
    async def local_keys(request: server.Request, key_id: str | None = None) -> tuple[int, Any]:
        # A key ID in the path (before Matrix 1.6) is ignored: we always send every key.
        return 200, own_keys.server_keys()

    async def query_one(request: server.Request, server_name: str, key_id: str | None = None) -> tuple[int, Any]:
        name = _server_name(server_name, "serverName")
        raw_ts = query_param(request, "minimum_valid_until_ts")
        minimum: int | None = None
        if raw_ts is not None:
            if not raw_ts.isdigit():
                raise MatrixError(400, Codes.INVALID_PARAM, "minimum_valid_until_ts must be an integer timestamp")
            minimum = int(raw_ts)
        # A key ID in the path (before Matrix 1.6) narrows the query to that key.
        key_query = KeyQuery(key_ids={key_id: minimum}) if key_id else KeyQuery(minimum_valid_until_ts=minimum)
        return 200, {"server_keys": await notary.query({name: key_query})}

    async def query_many(request: server.Request) -> tuple[int, Any]:
        criteria = parse_query_body(parse_json_object(request).data)
        return 200, {"server_keys": await notary.query(criteria)}

    # The router passes every named group, so the optional key ID gets routes of its own.
    router.add("GET", f"^{KEY_PREFIX}/server$", local_keys)
    router.add("GET", f"^{KEY_PREFIX}/server/(?P<key_id>[^/]*)$", local_keys)
    router.add("GET", f"^{KEY_PREFIX}/query/(?P<server_name>[^/]+)$", query_one)
    router.add("GET", f"^{KEY_PREFIX}/query/(?P<server_name>[^/]+)/(?P<key_id>[^/]*)$", query_one)
    router.add("POST", f"^{KEY_PREFIX}/query$", query_many)
