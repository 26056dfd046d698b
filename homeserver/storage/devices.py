"""Devices, and the access/refresh tokens that belong to them."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction
from homeserver.storage.tokens import TokenRepository


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None
    last_seen_user_agent: str | None

    def to_client_json(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "display_name": self.display_name,
            "last_seen_ip": self.last_seen_ip,
            "last_seen_ts": self.last_seen_ts,
        }


_COLUMNS = "user_id, device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent"


def _record(row: tuple[object, ...]) -> DeviceRecord:
    return DeviceRecord(*row)  # type: ignore[arg-type]


# What belongs to a device and goes with it: its tokens, its end-to-end keys, its inbox.
_DEVICE_OWNED_TABLES = (
    "access_tokens",
    "refresh_tokens",
    "e2e_device_keys",
    "e2e_one_time_keys",
    "e2e_fallback_keys",
    "device_inbox",
)


def delete_device_data_txn(txn: Transaction, user_id: str, device_ids: Collection[str]) -> None:
    for device_id in device_ids:
        for table in _DEVICE_OWNED_TABLES:
            txn.execute(f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?", (user_id, device_id))


class DeviceRepository:
    def __init__(self, db: Database, tokens: TokenRepository) -> None:
        self._db = db
        # Called with (user_id, deleted device IDs) once a deletion has committed.  The
        # token cache is always told: a deleted device's tokens must stop working at once.
        self.deleted_listeners: list[Callable[[str, list[str]], None]] = [tokens.forget_user]

    def _announce(self, txn: Transaction, user_id: str, device_ids: list[str]) -> None:
        if device_ids:
            listeners = list(self.deleted_listeners)

            def announce() -> None:
                for listener in listeners:
                    listener(user_id, device_ids)

            txn.call_after(announce)

    async def store_device(
        self, user_id: str, device_id: str, display_name: str | None, now_ms: int
    ) -> bool:
        """Create the device if missing; True if it was created.  An existing device keeps its name."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id) DO NOTHING",
                (user_id, device_id, display_name, now_ms),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("store_device", txn_fn)

    async def get_device(self, user_id: str, device_id: str) -> DeviceRecord | None:
        def txn_fn(txn: Transaction) -> DeviceRecord | None:
            row = txn.select_one(
                f"SELECT {_COLUMNS} FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
            )
            return _record(row) if row else None

        return await self._db.run_interaction("get_device", txn_fn)

    async def get_devices(self, user_id: str) -> list[DeviceRecord]:
        def txn_fn(txn: Transaction) -> list[DeviceRecord]:
            rows = txn.select_all(
                f"SELECT {_COLUMNS} FROM devices WHERE user_id = ? ORDER BY device_id", (user_id,)
            )
            return [_record(r) for r in rows]

        return await self._db.run_interaction("get_devices", txn_fn)

    async def update_display_name(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                (display_name, user_id, device_id),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("update_device", txn_fn)

    async def update_last_seen(
        self, user_id: str, device_id: str, ip: str | None, user_agent: str | None, now_ms: int
    ) -> None:
        await self._db.run_interaction(
            "update_last_seen",
            lambda txn: txn.execute(
                "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?, last_seen_user_agent = ?"
                " WHERE user_id = ? AND device_id = ?",
                (now_ms, ip, user_agent, user_id, device_id),
            ),
        )

    async def delete_devices(self, user_id: str, device_ids: Collection[str]) -> None:
        """Delete the devices and every token issued to them, in one transaction."""

        def txn_fn(txn: Transaction) -> None:
            delete_device_data_txn(txn, user_id, device_ids)
            for device_id in device_ids:
                txn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id))
            self._announce(txn, user_id, list(device_ids))

        await self._db.run_interaction("delete_devices", txn_fn)

    async def delete_all_devices(self, user_id: str, except_device_id: str | None = None) -> list[str]:
        """Delete every device of the user but ``except_device_id``; returns those deleted."""

        def txn_fn(txn: Transaction) -> list[str]:
            rows = txn.select_all("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))
            doomed = [str(r[0]) for r in rows if r[0] != except_device_id]
            delete_device_data_txn(txn, user_id, doomed)
            for device_id in doomed:
                txn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id))
            self._announce(txn, user_id, doomed)
            return doomed

        return await self._db.run_interaction("delete_all_devices", txn_fn)
