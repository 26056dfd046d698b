"""Government policy with matrix-nio, a client that knows nothing of it, over real sockets.

Our server runs as an operator runs it (generate-config, then run), with e-mail accounts
(a real SMTP server, aiosmtpd, on loopback) and Tchap's room access rules.  nio registers
by e-mail (requestToken, the link from the received mail, UIA m.login.email.identity), then
tries to bring an external user into a restricted room and gets an error it can show.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from nio import (
    RoomCreateResponse,
    RoomInviteError,
    RoomPutStateError,
)

from tests.interop import harness as h
from tests.interop.nio_client import RecordingClient
from tests.policy_mail import Mailbox, link_in, mailbox  # noqa: F401  (fixture)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

DOMAIN = "interieur.gouv.example"
EXTERNAL = "e.example"


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
        assert isinstance(named, RoomPutStateError) and "direct chat" in named.message, alice.explain(named)
    finally:
        await alice.close()


def test_nio_registers_by_email_and_cannot_invite_an_external_user(
    our_homeserver: Any,
    mailbox: Mailbox,  # noqa: F811
) -> None:
    server = our_homeserver(enable_registration=True, patch_config=_policy(mailbox))
    asyncio.run(_scenario(server, mailbox))
