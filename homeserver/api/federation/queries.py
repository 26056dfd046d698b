"""Inbound federation queries (spec: server-server API): ``/_matrix/federation/v1/...``.

``GET /version`` (unauthenticated, as the spec has it); ``GET /query/profile`` and
``GET /query/directory``; ``GET /user/devices/{userId}``, ``POST /user/keys/query`` and
``POST /user/keys/claim``; ``GET``/``POST /publicRooms``.  Every endpoint but /version
first authenticates the X-Matrix signature with the :class:`FederationAuthenticator`, so
a server outside the allowlist gets 403 ``M_FORBIDDEN`` before anything is read or
changed.  Questions about users and aliases are answered for this server's own only: a
remote user ID is a 400, as in Synapse.

Also here, because it reports the federation configuration: Synapse's client endpoint
``GET /_synapse/client/v1/config/federation_whitelist`` (``register_whitelist``).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.web import server

from homeserver import __version__
from homeserver.core.errors import Codes, MatrixError, not_found
from homeserver.core.ids import InvalidID, RoomAlias, UserID
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import Body, parse_json_object
from homeserver.http.server import Router, query_param

FEDERATION_PREFIX = "/_matrix/federation/v1"
WHITELIST_PATH = "/_synapse/client/v1/config/federation_whitelist"
SERVER_SOFTWARE = "homeserver"
# Enough for any real client; bounds the work one request can ask for.
MAX_USERS_PER_QUERY = 1000
MAX_FIELD_LENGTH = 255

JsonDict = dict[str, Any]


class Authenticator(Protocol):
    async def authenticate(self, request: server.Request) -> str: ...


class Profiles(Protocol):
    async def get_profile(self, user_id: str) -> dict[str, Any]: ...


class Aliases(Protocol):
    async def get_alias(self, alias: str) -> dict[str, Any]: ...


class FederationKeys(Protocol):
    async def devices_for_federation(self, user_id: str) -> JsonDict: ...

    async def query_keys_for_federation(self, wanted: dict[str, list[str]]) -> JsonDict: ...

    async def claim_keys_for_federation(self, wanted: dict[str, dict[str, str]]) -> JsonDict: ...


class PublicRooms(Protocol):
    async def public_rooms(self, *, limit: int | None, since: str | None, search: str | None) -> dict[str, Any]: ...


def _bad(message: str, errcode: str = Codes.INVALID_PARAM) -> MatrixError:
    return MatrixError(400, errcode, message)


def local_user_id(value: Any, where: str, server_name: str) -> str:
    """``value`` as a user ID of this server, or a 400 naming ``where``."""
    if not isinstance(value, str):
        raise _bad(f"{where} must be a user ID", Codes.BAD_JSON)
    try:
        user = UserID.parse(value)
    except InvalidID:
        raise _bad(f"{where} is not a valid user ID: {value!r}") from None
    if user.domain != server_name:
        raise _bad(f"{where}: {value} is not a user on this server")
    return value


def _user_map(body: Body, key: str, server_name: str) -> dict[str, Any]:
    value = body.data.get(key)
    if value is None:
        raise _bad(f"Missing parameter: {key}", Codes.MISSING_PARAM)
    if not isinstance(value, dict):
        raise _bad(f"{key} must be an object mapping user IDs", Codes.BAD_JSON)
    if len(value) > MAX_USERS_PER_QUERY:
        raise _bad(f"{key} may name at most {MAX_USERS_PER_QUERY} users")
    for user_id in value:
        local_user_id(user_id, f"{key} key", server_name)
    return value


def parse_keys_query(body: Body, server_name: str) -> dict[str, list[str]]:
    """``{"device_keys": {user_id: [device_id, ...]}}``; an empty list means every device."""
    wanted: dict[str, list[str]] = {}
    for user_id, devices in _user_map(body, "device_keys", server_name).items():
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise _bad(f"device_keys.{user_id} must be a list of device IDs", Codes.BAD_JSON)
        wanted[user_id] = devices
    return wanted


def parse_keys_claim(body: Body, server_name: str) -> dict[str, dict[str, str]]:
    """``{"one_time_keys": {user_id: {device_id: algorithm}}}``."""
    wanted: dict[str, dict[str, str]] = {}
    for user_id, devices in _user_map(body, "one_time_keys", server_name).items():
        if not isinstance(devices, dict) or not all(isinstance(a, str) and a for a in devices.values()):
            raise _bad(f"one_time_keys.{user_id} must map device IDs to algorithms", Codes.BAD_JSON)
        wanted[user_id] = devices
    return wanted


def _limit(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit():
        raise _bad("Query parameter limit must be a non-negative integer")
    return int(raw)


def register(
    router: Router,
    *,
    server_name: str,
    authenticator: Authenticator,
    profiles: Profiles,
    aliases: Aliases,
    keys: FederationKeys,
    directory: PublicRooms,
) -> None:
    authenticate = authenticator.authenticate

    async def version(request: server.Request) -> tuple[int, Any]:
        return 200, {"server": {"name": SERVER_SOFTWARE, "version": __version__}}

    async def query_profile(request: server.Request) -> tuple[int, Any]:
        await authenticate(request)
        raw_user = query_param(request, "user_id")
        if raw_user is None:
            raise _bad("Missing query parameter: user_id", Codes.MISSING_PARAM)
        user_id = local_user_id(raw_user, "user_id", server_name)
        field = query_param(request, "field")
        if field is not None and not 0 < len(field) <= MAX_FIELD_LENGTH:
            raise _bad(f"Query parameter field must be 1 to {MAX_FIELD_LENGTH} characters")
        profile = await profiles.get_profile(user_id)
        if field is None:
            return 200, profile
        return 200, {field: profile[field]} if field in profile else {}

    async def query_directory(request: server.Request) -> tuple[int, Any]:
        await authenticate(request)
        raw_alias = query_param(request, "room_alias")
        if raw_alias is None:
            raise _bad("Missing query parameter: room_alias", Codes.MISSING_PARAM)
        try:
            alias = RoomAlias.parse(raw_alias)
        except InvalidID:
            raise _bad(f"room_alias is not a valid room alias: {raw_alias!r}") from None
        if alias.domain != server_name:
            raise not_found(f"Room alias {raw_alias} is not hosted on this server")
        return 200, await aliases.get_alias(raw_alias)

    async def user_devices(request: server.Request, user_id: str) -> tuple[int, Any]:
        await authenticate(request)
        return 200, await keys.devices_for_federation(local_user_id(user_id, "userId", server_name))

    async def keys_query(request: server.Request) -> tuple[int, Any]:
        await authenticate(request)
        wanted = parse_keys_query(parse_json_object(request), server_name)
        return 200, await keys.query_keys_for_federation(wanted)

    async def keys_claim(request: server.Request) -> tuple[int, Any]:
        await authenticate(request)
        wanted = parse_keys_claim(parse_json_object(request), server_name)
        return 200, await keys.claim_keys_for_federation(wanted)

    async def get_public_rooms(request: server.Request) -> tuple[int, Any]:
        await authenticate(request)
        limit = _limit(query_param(request, "limit"))
        return 200, await directory.public_rooms(limit=limit, since=query_param(request, "since"), search=None)

    async def post_public_rooms(request: server.Request) -> tuple[int, Any]:
        await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        search_filter = body.object("filter")
        term = search_filter.str("generic_search_term") if search_filter else None
        return 200, await directory.public_rooms(
            limit=body.int("limit", minimum=0), since=body.str("since"), search=term or None
        )

    router.add("GET", f"^{FEDERATION_PREFIX}/version$", version)
    router.add("GET", f"^{FEDERATION_PREFIX}/query/profile$", query_profile)
    router.add("GET", f"^{FEDERATION_PREFIX}/query/directory$", query_directory)
    router.add("GET", f"^{FEDERATION_PREFIX}/user/devices/(?P<user_id>[^/]+)$", user_devices)
    router.add("POST", f"^{FEDERATION_PREFIX}/user/keys/query$", keys_query)
    router.add("POST", f"^{FEDERATION_PREFIX}/user/keys/claim$", keys_claim)
    router.add("GET", f"^{FEDERATION_PREFIX}/publicRooms$", get_public_rooms)
    router.add("POST", f"^{FEDERATION_PREFIX}/publicRooms$", post_public_rooms)


def register_whitelist(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    enabled: bool,
    whitelist: tuple[str, ...] | None,
    allow_open: bool,
) -> None:
    """Synapse's ``federation_whitelist`` client endpoint, when ``enabled`` (else it is a 404).

    ``whitelist_enabled`` is true unless federation is open to every server: with our
    settings an absent or empty list without ``federation_allow_open`` means "nobody",
    which is an enforced (empty) allowlist, as Synapse's ``federation_domain_whitelist: []``.
    """
    if not enabled:
        return
    body = {"whitelist_enabled": not allow_open, "whitelist": list(whitelist or ())}

    async def get_whitelist(request: server.Request) -> tuple[int, Any]:
        await authenticate(request)
        return 200, body

    router.add("GET", f"^{WHITELIST_PATH}$", get_whitelist)
