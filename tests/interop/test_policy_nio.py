"""Government policy with matrix-nio, a client that knows nothing of it, over real sockets.

Our server runs as an operator runs it (generate-config, then run), with e-mail accounts
(a real SMTP server, aiosmtpd, on loopback) and Tchap's room access rules.  nio registers
by e-mail (requestToken, the link from the received mail, UIA m.login.email.identity), then
runs into every refusal of the room access rules (an external user into a restricted room,
a direct chat's name, join rule, rule change and third member, a public direct chat, an
unrestricted room published, a rule going back to restricted, power for an external user)
and of account validity (ORG_MATRIX_EXPIRED_ACCOUNT once an administrator ends it): each
comes back as nio's error response with the errcode and a sentence naming the rule.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from nio import (
    JoinedRoomsError,
    RoomCreateError,
    RoomCreateResponse,
    RoomGetStateEventResponse,
    RoomInviteError,
    RoomPreset,
    RoomPutStateError,
    RoomPutStateResponse,
    RoomSendError,
    RoomVisibility,
)

from tests.interop import harness as h
from tests.interop.nio_client import RecordingClient
from tests.policy_mail import Mailbox, link_in, mailbox  # noqa: F401  (fixture)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

DOMAIN = "interieur.gouv.example"
EXTERNAL = "e.example"
RULES = "im.vector.room.access_rules"


def _policy(box: Mailbox) -> Any:
    def patch(config: dict[str, Any]) -> None:
        config.update(
            email=box.config(),
            registrations_require_3pid=["email"],
            enable_registration=True,
            public_baseurl=None,  # set below, once the client URL is known
            federation_domain_whitelist=[EXTERNAL],
            government_policy={
                "email_domains": {config["server_name"]: [DOMAIN]},
                "external_server": EXTERNAL,
                "room_access_rules": {"enabled": True, "domains_forbidden_when_restricted": [EXTERNAL]},
            },
            account_validity={"enabled": True, "period": "6w", "renew_at": "1w"},
        )
        listener = config["listeners"][0]
        config["public_baseurl"] = f"http://127.0.0.1:{listener['port']}/"

    return patch


async def _register_by_email(server: h.RunningServer, box: Mailbox, address: str) -> RecordingClient:
    client = RecordingClient(server.client_url)
    secret = "nio-secret-1"
    response = await client.send(
        "POST",
        "/_matrix/client/v3/register/email/requestToken",
        json.dumps({"email": address, "client_secret": secret, "send_attempt": 1}),
        headers={"Content-Type": "application/json"},
    )
    body = await response.json()
    assert response.status == 200, body
    sid = body["sid"]
    # The user opens the mail and follows the link.
    link = urlsplit(link_in(await asyncio.to_thread(box.wait_sync, address)))
    async with aiohttp.ClientSession() as http, http.get(f"{server.client_url}{link.path}?{link.query}") as page:
        assert page.status == 200, await page.text()
    first = await client.register_interactive("ignored", "Correct-horse-1", {"type": "m.login.dummy"})
    session = first.session if hasattr(first, "session") else None
    auth = {"type": "m.login.email.identity", "threepid_creds": {"sid": sid, "client_secret": secret}}
    if session:
        auth["session"] = session
    done = await client.register_interactive("ignored", "Correct-horse-1", auth)
    # nio 0.26 parses only the intermediate 401 answers of register_interactive (its schema
    # wants "flows"), so the final 200 is read from the wire.
    body = client.exchanges[-1].get("response_body") or {}
    assert client.last_status == 200 and body.get("access_token"), client.explain(done)
    client.user_id, client.access_token, client.device_id = body["user_id"], body["access_token"], body["device_id"]
    return client


async def _scenario(server: h.RunningServer, box: Mailbox) -> None:
    host = server.server_name
    alice = await _register_by_email(server, box, f"alice.martin@{DOMAIN}")
    try:
        assert alice.user_id == f"@alice.martin-{DOMAIN}:{host}", alice.explain()
        created = await alice.room_create(name="Cellule de crise")
        assert isinstance(created, RoomCreateResponse), alice.explain(created)
        refused = await alice.room_invite(created.room_id, f"@someone:{EXTERNAL}")
        assert isinstance(refused, RoomInviteError), alice.explain(refused)
        assert refused.status_code == "M_FORBIDDEN" and "external user" in refused.message, alice.explain(refused)
        dm = await alice.room_create(is_direct=True)
        assert isinstance(dm, RoomCreateResponse), alice.explain(dm)
        named = await alice.room_put_state(dm.room_id, "m.room.name", {"name": "Not for a DM"})
        _readable(alice, named, RoomPutStateError, "M_FORBIDDEN", "name of a direct chat cannot be changed")
        await _every_other_refusal(server, alice, created.room_id, dm.room_id)
    finally:
        await alice.close()


def _readable(client: RecordingClient, response: Any, error_type: type, errcode: str, words: str) -> None:
    """nio parsed the refusal as ``error_type``, with the errcode and a sentence naming the rule."""
    assert isinstance(response, error_type), client.explain(response)
    assert response.status_code == errcode and words in response.message, client.explain(response)


def _shared_secret_user(server: h.RunningServer, localpart: str, *, admin: bool = False) -> tuple[str, str]:
    """(user_id, access_token) through the shared-secret admin API."""
    url = f"{server.client_url}/_synapse/admin/v1/register"
    nonce = h.http_json("GET", url)[1]["nonce"]
    mac = hmac.new(server.registration_shared_secret.encode(), digestmod=hashlib.sha1)
    password = "Correct-horse-1"
    mac.update(
        b"\x00".join([nonce.encode(), localpart.encode(), password.encode(), b"admin" if admin else b"notadmin"])
    )
    body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac.hexdigest()}
    status, answer = h.http_json("POST", url, body, timeout=30.0)
    assert status == 200, answer
    return str(answer["user_id"]), str(answer["access_token"])


async def _every_other_refusal(server: h.RunningServer, alice: RecordingClient, room_id: str, dm_id: str) -> None:
    """The other refusals of the room access rules and of account validity, as nio shows them."""
    external = f"@someone:{EXTERNAL}"
    public = await alice.room_put_state(dm_id, "m.room.join_rules", {"join_rule": "public"})
    _readable(alice, public, RoomPutStateError, "M_FORBIDDEN", "A direct chat cannot be made public")
    changed = await alice.room_put_state(dm_id, RULES, {"rule": "unrestricted"})
    _readable(alice, changed, RoomPutStateError, "M_FORBIDDEN", "cannot change from 'direct' to 'unrestricted'")

    bob_id, bob_token = await asyncio.to_thread(_shared_secret_user, server, "bob")
    carol_id, _ = await asyncio.to_thread(_shared_secret_user, server, "carol")
    pair = await alice.room_create(is_direct=True, invite=[bob_id])
    assert isinstance(pair, RoomCreateResponse), alice.explain(pair)
    status, body = await asyncio.to_thread(
        h.http_json, "POST", f"{server.client_url}/_matrix/client/v3/join/{quote(pair.room_id)}", {}, token=bob_token
    )
    assert status == 200, body
    third = await alice.room_invite(pair.room_id, carol_id)
    _readable(alice, third, RoomInviteError, "M_FORBIDDEN", "A direct chat holds at most two members")

    public_dm = await alice.room_create(is_direct=True, preset=RoomPreset.public_chat)
    _readable(alice, public_dm, RoomCreateError, "M_INVALID_PARAM", "A direct chat cannot be public")
    listed = await alice.room_create(
        visibility=RoomVisibility.public,
        initial_state=[{"type": RULES, "state_key": "", "content": {"rule": "unrestricted"}}],
    )
    _readable(alice, listed, RoomCreateError, "M_FORBIDDEN", "Only restricted rooms can be published")

    opened = await alice.room_put_state(room_id, RULES, {"rule": "unrestricted"})
    assert isinstance(opened, RoomPutStateResponse), alice.explain(opened)
    back = await alice.room_put_state(room_id, RULES, {"rule": "restricted"})
    _readable(alice, back, RoomPutStateError, "M_FORBIDDEN", "only restricted -> unrestricted")
    levels = await alice.room_get_state_event(room_id, "m.room.power_levels")
    assert isinstance(levels, RoomGetStateEventResponse), alice.explain(levels)
    powered = {**levels.content, "users": {**levels.content["users"], external: 50}}
    power = await alice.room_put_state(room_id, "m.room.power_levels", powered)
    _readable(alice, power, RoomPutStateError, "M_FORBIDDEN", f"External user {external} cannot be given power")
    default = await alice.room_put_state(room_id, "m.room.power_levels", {**levels.content, "users_default": 50})
    _readable(alice, default, RoomPutStateError, "M_FORBIDDEN", "users_default must stay 0")

    # An administrator ends alice's account validity: every request of hers is refused.
    _, admin_token = await asyncio.to_thread(_shared_secret_user, server, "admin", admin=True)
    expire = {"user_id": alice.user_id, "expiration_ts": int(time.time() * 1000) - 1000, "enable_renewal_emails": False}
    url = f"{server.client_url}/_synapse/admin/v1/account_validity/validity"
    status, body = await asyncio.to_thread(h.http_json, "POST", url, expire, token=admin_token)
    assert status == 200, body
    expired = await alice.joined_rooms()
    _readable(alice, expired, JoinedRoomsError, "ORG_MATRIX_EXPIRED_ACCOUNT", "This account has expired")
    sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "encore là ?"})
    _readable(alice, sent, RoomSendError, "ORG_MATRIX_EXPIRED_ACCOUNT", "renew it with the link")


def test_nio_registers_by_email_and_cannot_invite_an_external_user(
    our_homeserver: Any,
    mailbox: Mailbox,  # noqa: F811
) -> None:
    server = our_homeserver(enable_registration=True, patch_config=_policy(mailbox))
    asyncio.run(_scenario(server, mailbox))
