"""Small steps shared by the API tests."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from tests.api.conftest import Client


async def register(client: Client, username: str, password: str = "correct horse battery", **extra: Any) -> dict[str, Any]:
    """Register through the real UIA dance (dummy stage) and return the final body."""
    first = await client.post("/_matrix/client/v3/register", {"username": username, "password": password, **extra})
    assert first.code == 401, first.body
    session = first.body["session"]
    done = await client.post(
        "/_matrix/client/v3/register",
        {"username": username, "password": password, "auth": {"type": "m.login.dummy", "session": session}, **extra},
    )
    assert done.code == 200, done.body
    return dict(done.body)


async def login(client: Client, user: str, password: str = "correct horse battery", **extra: Any) -> dict[str, Any]:
    resp = await client.post(
        "/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password, **extra},
    )
    assert resp.code == 200, resp.body
    return dict(resp.body)


def password_auth(user_id: str, password: str, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    if session:
        auth["session"] = session
    return auth


def shared_secret_mac(secret: str, nonce: str, user: str, password: str, admin: bool) -> str:
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), user.encode(), password.encode(), b"admin" if admin else b"notadmin"]))
    return mac.hexdigest()
