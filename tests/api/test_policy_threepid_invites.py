"""Invites by e-mail address, login with an address, m.3pid_changes; a real SMTP server
(aiosmtpd) and both engines."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.test_policy_email import AGENT_DOMAIN, register_with_email
from tests.policy_mail import Mailbox, mailbox  # noqa: F401  (fixture)

V3 = "/_matrix/client/v3"
RULES = {"enabled": True, "domains_forbidden_when_restricted": ["e.example"]}


def policy_server(make_server: Any, box: Mailbox) -> HSFixture:
    server: HSFixture = make_server(
        email=box.config(),
        public_baseurl="https://test.local/",
        registrations_require_3pid=["email"],
        enable_registration_without_verification=False,
        government_policy={
            "email_domains": {"test.local": [AGENT_DOMAIN]},
            "external_server": "e.example",
            "room_access_rules": RULES,
        },
    )
    return server


async def account(server: HSFixture, box: Mailbox, address: str, mail_number: int = 1) -> tuple[Client, str]:
    body = await register_with_email(server, box, address, mail_number=mail_number)
    client = server.new_client()
    client.token = body["access_token"]
    return client, str(body["user_id"])


async def room_state(client: Client, room_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"{V3}/rooms/{room_id}/state")
    assert resp.code == 200, resp.body
    return list(resp.body)


@pytest_twisted.ensureDeferred
async def test_invite_by_email_existing_and_pending(make_server: Any, mailbox: Mailbox) -> None:  # noqa: F811
    """Tried: medium msisdn, no medium, no address, a malformed address, an address of the
    external server into a restricted room; the invitee joining before registering."""
    server = policy_server(make_server, mailbox)
    alice, _ = await account(server, mailbox, "alice@agent.gouv.example")
    bob, bob_id = await account(server, mailbox, "bob@agent.gouv.example")
    room = (await alice.post(f"{V3}/createRoom", {"name": "Cellule de crise"})).body["room_id"]
    invite = f"{V3}/rooms/{room}/invite"

    # an address with an account: a plain invite of that account
    ok = await alice.post(invite, {"medium": "email", "address": "Bob@Agent.gouv.example", "id_server": "x"})
    assert ok.code == 200, ok.body
    member = await alice.get(f"{V3}/rooms/{room}/state/m.room.member/{bob_id}")
    assert member.body["membership"] == "invite"

    for body, code, errcode, field in [
        ({"medium": "msisdn", "address": "33612345678"}, 400, "M_INVALID_PARAM", "medium"),
        ({"address": "x@agent.gouv.example"}, 400, "M_MISSING_PARAM", "medium"),
        ({"medium": "email"}, 400, "M_MISSING_PARAM", "address"),
        ({"medium": "email", "address": "not an address"}, 400, "M_INVALID_PARAM", "address"),
        ({"medium": "email", "address": "x@agent.gouv.example", "id_server": 3}, 400, "M_BAD_JSON", "id_server"),
        ({"medium": "email", "address": "someone@gmail.example"}, 403, "M_FORBIDDEN", "external"),
    ]:
        refused = await alice.post(invite, body)
        assert refused.code == code and refused.body["errcode"] == errcode, (body, refused.body)
        assert field in refused.body["error"], refused.body

    # no account yet: an m.room.third_party_invite, an e-mail, then a real invite on registration
    address = "claire.martin@agent.gouv.example"
    pending = await alice.post(invite, {"medium": "email", "address": address})
    assert pending.code == 200, pending.body
    tpis = [e for e in await room_state(alice, room) if e["type"] == "m.room.third_party_invite"]
    assert len(tpis) == 1 and tpis[0]["content"]["display_name"] == "cla...@agent.gouv.example"
    token, public_key = tpis[0]["state_key"], tpis[0]["content"]["public_key"]
    mail = await mailbox.wait_for(address)
    text = mail.get_content()
    assert "Cellule de crise" in text and "@alice-agent.gouv.example:test.local" in text
    valid = await alice.get(f"/_matrix/identity/v2/pubkey/isvalid?public_key={quote(public_key)}")
    assert valid.body == {"valid": True}
    assert (await alice.get("/_matrix/identity/v2/pubkey/isvalid?public_key=AAAA")).body == {"valid": False}

    claire, claire_id = await account(server, mailbox, address, mail_number=2)  # 1: the invitation
    assert claire_id == "@claire.martin-agent.gouv.example:test.local"
    member = await alice.get(f"{V3}/rooms/{room}/state/m.room.member/{claire_id}")
    assert member.code == 200 and member.body["membership"] == "invite", member.body
    assert member.body["third_party_invite"]["signed"]["token"] == token
    joined = await claire.post(f"{V3}/join/{room}", {})
    assert joined.code == 200, joined.body
    # the invite was used once: registering again with another address re-sends nothing
    assert (await claire.get(f"{V3}/joined_rooms")).body["joined_rooms"] == [room]


@pytest_twisted.ensureDeferred
async def test_login_with_email_and_3pid_capability(make_server: Any, mailbox: Mailbox) -> None:  # noqa: F811
    """Tried: a wrong password, an unknown address, medium msisdn, no address."""
    server = policy_server(make_server, mailbox)
    _, user_id = await account(server, mailbox, "jean.dupont@agent.gouv.example")
    client = server.new_client()

    def login(identifier: dict[str, Any], password: str = "Correct-horse-1") -> Any:
        return client.post(f"{V3}/login", {"type": "m.login.password", "identifier": identifier, "password": password})

    email_id = {"type": "m.id.thirdparty", "medium": "email", "address": "Jean.Dupont@agent.gouv.example"}
    ok = await login(email_id)
    assert ok.code == 200 and ok.body["user_id"] == user_id, ok.body
    client.token = ok.body["access_token"]
    caps = await client.get(f"{V3}/capabilities")
    assert caps.body["capabilities"]["m.3pid_changes"] == {"enabled": True}

    assert (await login(email_id, "Wrong-horse-1")).code == 403
    unknown = await login({**email_id, "address": "nobody@agent.gouv.example"})
    assert unknown.code == 403 and unknown.body["errcode"] == "M_FORBIDDEN"
    msisdn = await login({"type": "m.id.thirdparty", "medium": "msisdn", "address": "336"})
    assert msisdn.code == 400 and "medium" in msisdn.body["error"]
    missing = await login({"type": "m.id.thirdparty", "medium": "email"})
    assert missing.code == 400 and "address" in missing.body["error"]


@pytest_twisted.ensureDeferred
async def test_no_3pid_capability_without_email(make_server: Any) -> None:
    """Tried: an e-mail invite on a server without e-mail (M_THREEPID_MEDIUM_NOT_SUPPORTED)."""
    from tests.api.helpers import register

    server = make_server()
    client = server.new_client()
    client.token = (await register(client, "alice"))["access_token"]
    caps = await client.get(f"{V3}/capabilities")
    assert caps.body["capabilities"]["m.3pid_changes"] == {"enabled": False}
    room = (await client.post(f"{V3}/createRoom", {})).body["room_id"]
    refused = await client.post(f"{V3}/rooms/{room}/invite", {"medium": "email", "address": "a@b.example"})
    assert refused.code == 400 and refused.body["errcode"] == "M_THREEPID_MEDIUM_NOT_SUPPORTED", refused.body


@pytest_twisted.ensureDeferred
async def test_create_room_with_invite_3pid(make_server: Any, mailbox: Mailbox) -> None:  # noqa: F811
    """/createRoom's invite_3pid: an address with an account is invited as that account, one
    without gets an m.room.third_party_invite and an e-mail.  Tried (nothing created): not a
    list, not objects, no medium, medium msisdn, a malformed address, an address of the
    external server into the (restricted) room."""
    server = policy_server(make_server, mailbox)
    alice, _ = await account(server, mailbox, "alice@agent.gouv.example")
    _, bob_id = await account(server, mailbox, "bob@agent.gouv.example")

    email = {"medium": "email", "id_server": "id.example", "id_access_token": "unused"}
    for invite_3pid, code, errcode, field in [
        ({"medium": "email"}, 400, "M_BAD_JSON", "invite_3pid"),
        (["bob@agent.gouv.example"], 400, "M_BAD_JSON", "invite_3pid[0]"),
        ([{"address": "x@agent.gouv.example"}], 400, "M_MISSING_PARAM", "invite_3pid[0].medium"),
        ([email, {"medium": "msisdn", "address": "33612345678"}], 400, "M_MISSING_PARAM", "invite_3pid[0].address"),
        ([{"medium": "msisdn", "address": "33612345678"}], 400, "M_INVALID_PARAM", "invite_3pid[0].medium"),
        ([{**email, "address": "not an address"}], 400, "M_INVALID_PARAM", "invite_3pid[0].address"),
        ([{**email, "address": "someone@gmail.example"}], 403, "M_FORBIDDEN", "external user"),
    ]:
        refused = await alice.post(f"{V3}/createRoom", {"name": "Refusée", "invite_3pid": invite_3pid})
        assert refused.code == code and refused.body["errcode"] == errcode, (invite_3pid, refused.body)
        assert field in refused.body["error"], refused.body
    assert (await alice.get(f"{V3}/joined_rooms")).body["joined_rooms"] == []

    address = "denise.leroy@agent.gouv.example"
    created = await alice.post(
        f"{V3}/createRoom",
        {
            "name": "Cellule de crise",
            "invite_3pid": [{**email, "address": "Bob@agent.gouv.example"}, {**email, "address": address}],
        },
    )
    assert created.code == 200, created.body
    room = created.body["room_id"]
    member = await alice.get(f"{V3}/rooms/{room}/state/m.room.member/{bob_id}")
    assert member.code == 200 and member.body["membership"] == "invite", member.body
    tpis = [e for e in await room_state(alice, room) if e["type"] == "m.room.third_party_invite"]
    assert [e["content"]["display_name"] for e in tpis] == ["den...@agent.gouv.example"]
    mail = await mailbox.wait_for(address)
    assert "Cellule de crise" in mail.get_content()
    denise, denise_id = await account(server, mailbox, address, mail_number=2)  # 1: the invitation
    member = await alice.get(f"{V3}/rooms/{room}/state/m.room.member/{denise_id}")
    assert member.code == 200 and member.body["third_party_invite"]["signed"]["token"] == tpis[0]["state_key"]
    assert (await denise.post(f"{V3}/join/{room}", {})).code == 200
