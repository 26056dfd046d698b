"""Server-side key backup: encrypted room keys a user can restore on a new device."""

from __future__ import annotations

from typing import Any

from homeserver.core.errors import Codes, MatrixError, not_found
from homeserver.storage.key_backup import BackedUpKey, BackupVersion, KeyBackupRepository

JsonDict = dict[str, Any]


def is_better(existing: BackedUpKey, new: BackedUpKey) -> bool:
    """The spec's rule for replacing a backed-up key: verified beats unverified, then the
    lower first_message_index, then the lower forwarded_count."""
    if new.is_verified != existing.is_verified:
        return new.is_verified
    if new.first_message_index != existing.first_message_index:
        return new.first_message_index < existing.first_message_index
    return new.forwarded_count < existing.forwarded_count


def _parse_version(version: str | None) -> int:
    if version is None:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: version")
    try:
        return int(version)
    except ValueError:
        raise not_found("Unknown backup version") from None


def _parse_key(room_id: str, session_id: str, data: Any) -> BackedUpKey:
    where = f"rooms.{room_id}.sessions.{session_id}"
    if not isinstance(data, dict):
        raise MatrixError(400, Codes.BAD_JSON, f"{where} must be an object")
    fmi, fc, verified, session = (data.get(k) for k in ("first_message_index", "forwarded_count", "is_verified", "session_data"))
    for name, value in (("first_message_index", fmi), ("forwarded_count", fc)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MatrixError(400, Codes.BAD_JSON, f"{where}.{name} must be a non-negative integer")
    if not isinstance(verified, bool):
        raise MatrixError(400, Codes.BAD_JSON, f"{where}.is_verified must be a boolean")
    if not isinstance(session, dict):
        raise MatrixError(400, Codes.BAD_JSON, f"{where}.session_data must be an object")
    return BackedUpKey(room_id, session_id, int(fmi), int(fc), verified, session)  # type: ignore[arg-type]


class KeyBackupService:
    def __init__(self, *, backups: KeyBackupRepository) -> None:
        self._backups = backups

    async def create_version(self, user_id: str, body: JsonDict) -> JsonDict:
        algorithm, auth_data = body.get("algorithm"), body.get("auth_data")
        if not isinstance(algorithm, str):
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: algorithm")
        if not isinstance(auth_data, dict):
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: auth_data")
        return {"version": str(await self._backups.create_version(user_id, algorithm, auth_data))}

    async def _version(self, user_id: str, version: str | None) -> BackupVersion:
        found = await self._backups.get_version(user_id, None if version is None else _parse_version(version))
        if found is None:
            raise not_found("No backup found")
        return found

    async def get_version(self, user_id: str, version: str | None) -> JsonDict:
        found = await self._version(user_id, version)
        etag, count = await self._backups.etag_and_count(user_id, found.version)
        return {
            "algorithm": found.algorithm,
            "auth_data": found.auth_data,
            "version": str(found.version),
            "etag": str(etag),
            "count": count,
        }

    async def update_version(self, user_id: str, version: str, body: JsonDict) -> None:
        found = await self._version(user_id, version)
        if "version" in body and str(body["version"]) != version:
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter version does not match the URL")
        if body.get("algorithm") != found.algorithm:
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter algorithm cannot be changed")
        auth_data = body.get("auth_data")
        if not isinstance(auth_data, dict):
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: auth_data")
        await self._backups.update_version(user_id, found.version, auth_data)

    async def delete_version(self, user_id: str, version: str) -> None:
        if not await self._backups.delete_version(user_id, _parse_version(version)):
            raise not_found("No backup found")

    async def _current_for_write(self, user_id: str, version: str | None) -> int:
        wanted = _parse_version(version)
        latest = await self._backups.get_version(user_id, None)
        if latest is None:
            raise not_found("No backup found")
        if latest.version != wanted:
            raise MatrixError(
                403, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version", current_version=str(latest.version)
            )
        return wanted

    async def put_keys(self, user_id: str, version: str | None, rooms: Any) -> JsonDict:
        v = await self._current_for_write(user_id, version)
        if not isinstance(rooms, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter rooms must be an object")
        keys = []
        for room_id, room in rooms.items():
            sessions = room.get("sessions") if isinstance(room, dict) else None
            if not isinstance(sessions, dict):
                raise MatrixError(400, Codes.BAD_JSON, f"rooms.{room_id}.sessions must be an object")
            keys += [_parse_key(room_id, sid, data) for sid, data in sessions.items()]
        etag, count = await self._backups.put_keys(user_id, v, keys, replace_if=is_better)
        return {"etag": str(etag), "count": count}

    async def get_keys(self, user_id: str, version: str | None, room_id: str | None, session_id: str | None) -> JsonDict:
        if version is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: version")
        found = await self._version(user_id, version)
        keys = await self._backups.get_keys(user_id, found.version, room_id, session_id)
        if session_id is not None:
            if not keys:
                raise not_found("No room key found")
            return keys[0].to_json()
        rooms: dict[str, JsonDict] = {}
        for key in keys:
            rooms.setdefault(key.room_id, {"sessions": {}})["sessions"][key.session_id] = key.to_json()
        if room_id is not None:
            return rooms.get(room_id, {"sessions": {}})
        return {"rooms": rooms}

    async def delete_keys(self, user_id: str, version: str | None, room_id: str | None, session_id: str | None) -> JsonDict:
        if version is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: version")
        found = await self._version(user_id, version)
        etag, count = await self._backups.delete_keys(user_id, found.version, room_id, session_id)
        return {"etag": str(etag), "count": count}
