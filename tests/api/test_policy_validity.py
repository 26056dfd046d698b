"""Account validity over HTTP, with a real SMTP server for the renewal e-mail; both engines.
Also the password policy's five rules (M_WEAK_PASSWORD naming the rule)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import register, shared_secret_mac
from tests.api.test_policy_email import email_server, register_with_email
from tests.policy_mail import Mailbox, link_in, mailbox  # noqa: F401  (fixture)

V3 = "/_matrix/client/v3"
VALIDITY = {"account_validity": {"enabled": True, "period": "6w", "renew_at": "1w"}}


async def admin_client(server: HSFixture) -> Client:
    client = server.new_client()
    nonce = (await client.get("/_synapse/admin/v1/register")).body["nonce"]
    mac = shared_secret_mac("shared-secret-for-tests", nonce, "root", "Root-pass-1", True)
    resp = await client.post(
        "/_synapse/admin/v1/register",
        {"nonce": nonce, "username": "root", "password": "Root-pass-1", "admin": True, "mac": mac},
    )
    assert resp.code == 200, resp.body
    client.token = resp.body["access_token"]
    return client


async def set_expiry(admin: Client, user_id: str, ts: int | None, emails: bool = True) -> Any:
    body: dict[str, Any] = {"user_id": user_id, "enable_renewal_emails": emails}
    if ts is not None:
        body["expiration_ts"] = ts
    return await admin.post("/_synapse/admin/v1/account_validity/validity", body)


@pytest_twisted.ensureDeferred
async def test_expired_account_is_refused_everywhere_but_logout(make_server: Any, mailbox: Mailbox) -> None:  # noqa: F811
    """Tried: /sync, /joined_rooms and the profile with an expired account; a non-admin
    calling the admin API; a bad renewal token."""
    server = email_server(make_server, mailbox, **VALIDITY, user_directory={"search_all_users": True})
    admin = await admin_client(server)
    body = await register_with_email(server, mailbox, "jean@agent.gouv.example")
    user = server.new_client()
    user.token = body["access_token"]
    assert (await user.get(f"{V3}/joined_rooms")).code == 200
    not_admin = await set_expiry(user, body["user_id"], 0)
    assert not_admin.code == 403

    past = int(time.time() * 1000) - 1000
    assert (await set_expiry(admin, body["user_id"], past)).body == {"expiration_ts": past}
    for path in ("/joined_rooms", "/sync?timeout=0", "/account/whoami"):
        refused = await user.get(f"{V3}{path}")
        assert refused.code == 403 and refused.body["errcode"] == "ORG_MATRIX_EXPIRED_ACCOUNT", path
    # hidden from the directory
    search = await admin.post(f"{V3}/user_directory/search", {"search_term": "jean"})
    assert search.body["results"] == []

    # the renewal e-mail, asked for by the (expired) user, carries a working link
    assert (await user.post("/_matrix/client/unstable/account_validity/send_mail", {})).code == 200
    link = link_in(await mailbox.wait_for("jean@agent.gouv.example", count=2))
    parts = urlsplit(link)
    bad = await user.get(f"{parts.path}?token=not-the-token")
    assert bad.code == 404
    renewed = await user.get(f"{parts.path}?{parts.query}")
    assert renewed.code == 200 and b"renewed" in renewed.body
    again = await user.get(f"{parts.path}?{parts.query}")
    assert again.code == 200 and b"already" in again.body
    assert (await user.get(f"{V3}/joined_rooms")).code == 200
    search = await admin.post(f"{V3}/user_directory/search", {"search_term": "jean"})
    assert [r["user_id"] for r in search.body["results"]] == [body["user_id"]]

    assert (await set_expiry(admin, body["user_id"], past)).code == 200
    assert (await user.post(f"{V3}/logout", {})).code == 200


@pytest_twisted.ensureDeferred
async def test_renewal_email_sent_before_expiry_once(make_server: Any, mailbox: Mailbox) -> None:  # noqa: F811
    """The periodic task mails accounts entering the renewal window (renew_at), once."""
    server = email_server(make_server, mailbox, **VALIDITY)
    admin = await admin_client(server)
    soon = await register_with_email(server, mailbox, "soon@agent.gouv.example")
    later = await register_with_email(server, mailbox, "later@agent.gouv.example")
    now = int(time.time() * 1000)
    await set_expiry(admin, soon["user_id"], now + 2 * 86_400_000)
    await set_expiry(admin, later["user_id"], now + 30 * 86_400_000)
    renewal_task = server.hs.background[-1]  # the policy's task is added last (app.py)
    await renewal_task.f()
    mail = await mailbox.wait_for("soon@agent.gouv.example", count=2)
    assert "Renew your Tchap account" == mail["Subject"]
    assert "account_validity/renew?token=" in link_in(mail)
    await renewal_task.f()
    assert len([m for m in mailbox.messages if "soon@" in str(m["To"])]) == 2  # not sent twice
    assert not [m for m in mailbox.messages if "later@" in str(m["To"]) and "Renew" in str(m["Subject"])]


@pytest_twisted.ensureDeferred
async def test_password_policy_names_each_rule(make_server: Any) -> None:
    """Tried one password breaking each rule: too short, no digit, no symbol, no lowercase,
    no uppercase."""
    server = make_server(
        password_config={
            "policy": {
                "enabled": True,
                "minimum_length": 10,
                "require_digit": True,
                "require_symbol": True,
                "require_lowercase": True,
                "require_uppercase": True,
            }
        }
    )
    client = server.new_client()
    for password, rule in (
        ("Ab1!", "at least 10 characters"),
        ("Abcdefghij!", "digit"),
        ("Abcdefghij1", "symbol"),
        ("ABCDEFGHIJ1!", "lowercase"),
        ("abcdefghij1!", "uppercase"),
    ):
        resp = await client.post(f"{V3}/register", {"username": "weak", "password": password})
        assert resp.code == 400 and resp.body["errcode"] == "M_WEAK_PASSWORD", password
        assert rule in resp.body["error"], (password, resp.body)
    await register(client, "strong", "Abcdefghij1!")


@pytest_twisted.ensureDeferred
async def test_expired_accounts_get_no_push(make_server: Any) -> None:
    """Tried: a message (and a mention) to a member whose account has expired: no
    notification is counted for it, while a member renewed since is counted again."""
    server = make_server(**VALIDITY)
    admin = await admin_client(server)
    alice, bob = server.new_client(), server.new_client()
    alice.token = (await register(alice, "alice"))["access_token"]
    bob_body = await register(bob, "bob")
    bob.token = bob_body["access_token"]
    room = (await alice.post(f"{V3}/createRoom", {"invite": [bob_body["user_id"]]})).body["room_id"]
    assert (await bob.post(f"{V3}/join/{room}", {})).code == 200

    async def counts() -> Any:
        synced = await bob.get(f"{V3}/sync?timeout=0")
        assert synced.code == 200, synced.body
        return synced.body["rooms"]["join"][room]["unread_notifications"]

    before = await counts()  # what the invite itself counted
    past = int(time.time() * 1000) - 1000
    assert (await set_expiry(admin, bob_body["user_id"], past)).code == 200
    for i in range(2):
        sent = await alice.put(f"{V3}/rooms/{room}/send/m.room.message/e{i}", {"msgtype": "m.text", "body": "bob!"})
        assert sent.code == 200
    assert (await set_expiry(admin, bob_body["user_id"], None)).code == 200  # renewed by an admin
    assert await counts() == before
    sent = await alice.put(f"{V3}/rooms/{room}/send/m.room.message/after", {"msgtype": "m.text", "body": "hi"})
    assert sent.code == 200
    assert (await counts())["notification_count"] == before["notification_count"] + 1
