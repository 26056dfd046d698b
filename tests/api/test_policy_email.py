"""E-mail based accounts over HTTP with a real SMTP server (aiosmtpd): registration by
link and by code, the address -> server mapping, /account/3pid; both engines."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest_twisted

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import password_auth
from tests.policy_mail import Mailbox, code_in, link_in, mailbox  # noqa: F401  (fixture)

V3 = "/_matrix/client/v3"
AGENT_DOMAIN = "agent.gouv.example"


def email_server(make_server: Any, box: Mailbox, **extra: Any) -> HSFixture:
    server: HSFixture = make_server(
        email=box.config(),
        public_baseurl="https://test.local/",
        registrations_require_3pid=["email"],
        enable_registration_without_verification=False,
        government_policy={
            "email_domains": {"test.local": [AGENT_DOMAIN, "*.agent.gouv.example"]},
            "external_server": "e.example",
        },
        **extra,
    )
    return server


async def request_token(client: Client, address: str, secret: str, attempt: int = 1, path: str = "/register") -> Any:
    return await client.post(
        f"{V3}{path}/email/requestToken", {"email": address, "client_secret": secret, "send_attempt": attempt}
    )


async def follow(client: Client, link: str) -> Any:
    parts = urlsplit(link)
    return await client.get(f"{parts.path}?{parts.query}")


async def register_with_email(
    server: HSFixture, box: Mailbox, address: str, *, by_code: bool = False, mail_number: int = 1
) -> dict[str, Any]:
    client = server.new_client()
    secret = "s3cret-" + address.split("@")[0]
    sent = await request_token(client, address, secret)
    assert sent.code == 200, sent.body
    sid = sent.body["sid"]
    first = await client.post(f"{V3}/register", {"password": "Correct-horse-1"})
    assert first.code == 401 and first.body["flows"] == [{"stages": ["m.login.email.identity"]}]
    session = first.body["session"]
    creds = {
        "type": "m.login.email.identity",
        "session": session,
        "threepid_creds": {"sid": sid, "client_secret": secret},
    }
    early = await client.post(f"{V3}/register", {"auth": creds})
    assert early.code == 401 and early.body["errcode"] == "M_THREEPID_AUTH_FAILED"
    mail = await box.wait_for(address, mail_number)
    if by_code:
        ok = await client.post(
            urlsplit(sent.body["submit_url"]).path, {"sid": sid, "client_secret": secret, "token": code_in(mail)}
        )
        assert ok.code == 200 and ok.body == {"success": True}
    else:
        page = await follow(client, link_in(mail))
        assert page.code == 200 and b"validated" in page.body
    done = await client.post(f"{V3}/register", {"auth": creds})
    assert done.code == 200, done.body
    return dict(done.body)


@pytest_twisted.ensureDeferred
async def test_register_by_email_link_derives_id_and_name(make_server: Any, mailbox: Mailbox) -> None:  # noqa: F811
    """Tried: /register before the address was validated (M_THREEPID_AUTH_FAILED)."""
    server = email_server(make_server, mailbox)
    body = await register_with_email(server, mailbox, "Jean.Dupont@agent.gouv.example")
    assert body["user_id"] == "@jean.dupont-agent.gouv.example:test.local"
    client = server.new_client()
    client.token = body["access_token"]
    profile = await client.get(f"{V3}/profile/{body['user_id']}")
    assert profile.body["displayname"] == "Jean Dupont [agent.gouv.example]"
    threepids = await client.get(f"{V3}/account/3pid")
    assert [(t["medium"], t["address"]) for t in threepids.body["threepids"]] == [
        ("email", "jean.dupont@agent.gouv.example")
    ]
    # a sub-domain pattern maps here too, validated this time by the code
    body2 = await register_with_email(server, mailbox, "marie-claire.martin@dgfip.agent.gouv.example", by_code=True)
    assert body2["user_id"] == "@marie-claire.martin-dgfip.agent.gouv.example:test.local"


@pytest_twisted.ensureDeferred
async def test_refused_addresses_and_codes(make_server: Any, mailbox: Mailbox) -> None:  # noqa: F811
    """Tried: an address of the external server, a malformed address, a bad client_secret,
    an address already in use, a wrong code (then the right one after 5 failures)."""
    server = email_server(make_server, mailbox)
    client = server.new_client()
    other = await request_token(client, "someone@gmail.example", "abc")
    assert other.code == 403 and other.body["errcode"] == "M_THREEPID_DENIED"
    assert "e.example" in other.body["error"]
    malformed = await request_token(client, "not-an-address", "abc")
    assert (
        malformed.code == 400 and malformed.body["errcode"] == "M_INVALID_PARAM" and "email" in malformed.body["error"]
    )
    bad_secret = await request_token(client, "a@agent.gouv.example", "no spaces allowed")
    assert bad_secret.code == 400 and "client_secret" in bad_secret.body["error"]
    missing = await client.post(
        f"{V3}/register/email/requestToken", {"email": "a@agent.gouv.example", "client_secret": "x"}
    )
    assert missing.code == 400 and "send_attempt" in missing.body["error"]

    await register_with_email(server, mailbox, "paul@agent.gouv.example")
    in_use = await request_token(client, "paul@agent.gouv.example", "zzz")
    assert in_use.code == 400 and in_use.body["errcode"] == "M_THREEPID_IN_USE"

    sent = await request_token(client, "luc@agent.gouv.example", "sec")
    code = code_in(await mailbox.wait_for("luc@agent.gouv.example"))
    submit = urlsplit(sent.body["submit_url"]).path
    for _ in range(5):
        wrong = await client.post(
            submit,
            {"sid": sent.body["sid"], "client_secret": "sec", "token": "000000" if code != "000000" else "111111"},
        )
        assert wrong.code == 400 and wrong.body["errcode"] == "M_THREEPID_AUTH_FAILED"
    locked = await client.post(submit, {"sid": sent.body["sid"], "client_secret": "sec", "token": code})
    assert locked.code == 400, "the right code must not work after 5 failures"


@pytest_twisted.ensureDeferred
async def test_identity_info_lookup(make_server: Any, mailbox: Mailbox) -> None:  # noqa: F811
    """Tried: medium=msisdn, no address, a malformed address."""
    server = email_server(make_server, mailbox)
    client = server.new_client()
    info = "/_matrix/identity/api/v1/info"
    assert (await client.get(f"{info}?medium=email&address=x@agent.gouv.example")).body == {"hs": "test.local"}
    assert (await client.get(f"{info}?medium=email&address=x@a.agent.gouv.example")).body == {"hs": "test.local"}
    assert (await client.get(f"{info}?medium=email&address=x@gmail.example")).body == {"hs": "e.example"}
    assert (await client.get("/_matrix/identity/v2/info?medium=email&address=x@agent.gouv.example")).body == {
        "hs": "test.local"
    }
    msisdn = await client.get(f"{info}?medium=msisdn&address=33612345678")
    assert msisdn.code == 400 and "medium" in msisdn.body["error"]
    assert (await client.get(f"{info}?medium=email")).body["errcode"] == "M_MISSING_PARAM"
    assert (await client.get(f"{info}?medium=email&address=nope")).body["errcode"] == "M_INVALID_PARAM"


@pytest_twisted.ensureDeferred
async def test_account_3pid_add_and_delete(make_server: Any, mailbox: Mailbox) -> None:  # noqa: F811
    """Tried: adding an address without its validation; deleting an address not bound."""
    server = email_server(make_server, mailbox)
    body = await register_with_email(server, mailbox, "anne@agent.gouv.example")
    client = server.new_client()
    client.token = body["access_token"]
    sent = await request_token(client, "anne.second@agent.gouv.example", "add-secret", path="/account/3pid")
    assert sent.code == 200, sent.body
    add_body = {"sid": sent.body["sid"], "client_secret": "add-secret"}
    first = await client.post(f"{V3}/account/3pid/add", add_body)
    assert first.code == 401
    auth = password_auth(body["user_id"], "Correct-horse-1", first.body["session"])
    too_early = await client.post(f"{V3}/account/3pid/add", {**add_body, "auth": auth})
    assert too_early.code == 401 and too_early.body["errcode"] == "M_THREEPID_AUTH_FAILED"
    await follow(client, link_in(await mailbox.wait_for("anne.second@agent.gouv.example")))
    again = await client.post(f"{V3}/account/3pid/add", add_body)
    auth = password_auth(body["user_id"], "Correct-horse-1", again.body["session"])
    added = await client.post(f"{V3}/account/3pid/add", {**add_body, "auth": auth})
    assert added.code == 200, added.body
    listed = await client.get(f"{V3}/account/3pid")
    assert {t["address"] for t in listed.body["threepids"]} == {
        "anne@agent.gouv.example",
        "anne.second@agent.gouv.example",
    }
    gone = await client.post(
        f"{V3}/account/3pid/delete", {"medium": "email", "address": "anne.second@agent.gouv.example"}
    )
    assert gone.code == 200
    missing = await client.post(
        f"{V3}/account/3pid/delete", {"medium": "email", "address": "anne.second@agent.gouv.example"}
    )
    assert missing.code == 404 and missing.body["errcode"] == "M_THREEPID_NOT_FOUND"
