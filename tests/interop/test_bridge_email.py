"""The e-mail bridge (appservices/email), started by its console command against our
homeserver, with a real SMTP conversation on both sides:

* mail sent over SMTP (smtplib) to room-<name>@<domain> lands in the room as a ghost
  @email_<escaped address> with the sender's name, attachments as m.image / m.file media;
  mail to an unknown address is refused at RCPT (550);
* the room's messages go out as mail through an SMTP relay (a second aiosmtpd server,
  whose received messages the test reads);
* the same in an encrypted room with a matrix-nio client: the mail's text and its
  attachment (encrypted media) are decrypted by nio; nio's encrypted message goes out as mail.
  This bridge's bot device gets its to-device messages, device lists and key counts in the
  transactions (MSC2409/MSC3202, ``encryption.appservice: true``); the webhook test uses /sync.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import urllib.parse
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.interop import harness as h
from tests.interop.bridge_support import PASSWORD, BridgeProcess, Person, register, start_with_bridge, until
from tests.interop.conftest import ENGINE_PARAMS

pytestmark = pytest.mark.interop

DOMAIN = "salons.test"
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)


class Relay:
    """The ministry's outgoing SMTP relay: keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.port = h.free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        parsed = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def find(self, text: str) -> tuple[list[str], EmailMessage] | None:
        for rcpts, message in self.messages:
            body = message.get_body(preferencelist=("plain",))
            if body is not None and text in str(body.get_content()):
                return rcpts, message
        return None


def send_mail(port: int, to: str, subject: str, text: str, attachments: list[tuple[str, str, bytes]]) -> None:
    message = EmailMessage()
    message["From"] = "Jeanne Martin <Jeanne.Martin@prefecture.test>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    for filename, mime, data in attachments:
        maintype, subtype = mime.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(message)


async def mail(port: int, *args: Any) -> None:
    await asyncio.get_running_loop().run_in_executor(None, send_mail, port, *args)


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_email_bridge(our_homeserver: Any, tmp_path: Path, engine: str) -> None:
    relay = Relay()
    relay.controller.start()
    smtp_port = h.free_port()
    server, config_path, config = start_with_bridge(
        our_homeserver,
        engine,
        "email",
        tmp_path,
        keys_in_transactions=True,  # the bot's keys through MSC3202 transactions, not /sync
        email={
            "domain": DOMAIN,
            "smtp_listen": {"host": "127.0.0.1", "port": smtp_port},
            "relay": {"host": "127.0.0.1", "port": relay.port},
        },
    )
    bridge = BridgeProcess("email", config_path, tmp_path / "email-bridge.log").start()
    try:
        bridge.wait_for_log("SMTP listening on")
        asyncio.run(_scenario(server, config, smtp_port, relay, tmp_path))
    except BaseException:
        print(bridge.log_tail(120))
        raise
    finally:
        problem = bridge.stop()
        relay.controller.stop()
    assert problem is None, problem
    assert "Traceback" not in bridge.log_tail(2000), bridge.log_tail(200)


async def _scenario(server: h.RunningServer, config: dict[str, Any], smtp_port: int, relay: Relay, tmp: Path) -> None:
    await _plain_room(server, config, smtp_port, relay)
    await _encrypted_room(server, config, smtp_port, relay, tmp)


async def download(person: Person, mxc: str) -> bytes:
    server_name, media_id = mxc[len("mxc://") :].split("/", 1)
    url = f"{person.base}/_matrix/client/v1/media/download/{urllib.parse.quote(server_name)}/{media_id}"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Authorization": f"Bearer {person.token}"}) as r:
            assert r.status == 200, await r.text()
            return await r.read()


async def _plain_room(server: h.RunningServer, config: dict[str, Any], smtp_port: int, relay: Relay) -> None:
    bot = server.user_id(config["appservice"]["bot_localpart"])
    anne = await Person.login(server, "anne")
    room_id = (await anne.call("POST", "/createRoom", {"name": "Exploitation", "invite": [bot]}))["room_id"]
    await anne.wait_joined(room_id, bot)
    await anne.send(room_id, "!email link exploitation")
    await anne.wait_message(room_id, f"room-exploitation@{DOMAIN}")
    await anne.send(room_id, "!email recipients astreinte@prefecture.test")
    await anne.wait_message(room_id, "go out to: astreinte@prefecture.test")

    report = "Tout est rétabli.\n".encode()
    await mail(
        smtp_port,
        f"room-exploitation@{DOMAIN}",
        "Coupure réseau",
        "Le lien est coupé depuis 9 h.\n\nJeanne",
        [("schema.png", "image/png", PNG), ("rapport.txt", "text/plain", report)],
    )
    text = await anne.wait_message(room_id, "Coupure réseau")
    assert "Le lien est coupé depuis 9 h." in text["content"]["body"]
    ghost = text["sender"]
    assert ghost == f"@email_jeanne.martin=40prefecture.test:{server.server_name}"
    assert await anne.displayname(ghost) == "Jeanne Martin (jeanne.martin@prefecture.test)"
    image = await anne.wait_event("the image", lambda e: e.get("content", {}).get("msgtype") == "m.image")
    assert image["sender"] == ghost and image["content"]["info"]["mimetype"] == "image/png"
    assert await download(anne, image["content"]["url"]) == PNG
    file = await anne.wait_event("the file", lambda e: e.get("content", {}).get("msgtype") == "m.file")
    assert file["content"]["body"] == "rapport.txt" and await download(anne, file["content"]["url"]) == report

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await mail(smtp_port, f"room-nowhere@{DOMAIN}", "perdu", "?", [])
    assert next(iter(refused.value.recipients.values()))[0] == 550

    await anne.send(room_id, "Bien reçu, on s'en occupe")
    found = await until("the relay to receive anne's message", lambda: relay.find("Bien reçu, on s'en occupe"))
    rcpts, message = found
    assert rcpts == ["astreinte@prefecture.test"]
    assert f"room-exploitation@{DOMAIN}" in message["From"] and message["Reply-To"] == f"room-exploitation@{DOMAIN}"
    assert "[exploitation]" in message["Subject"]


async def _encrypted_room(
    server: h.RunningServer, config: dict[str, Any], smtp_port: int, relay: Relay, tmp: Path
) -> None:
    from nio import RoomCreateResponse, RoomEncryptedImage, RoomMessageNotice
    from nio.crypto import decrypt_attachment
    from nio.responses import DownloadResponse

    from tests.interop.e2ee_clients import NioUser, quiet_library_logs

    quiet_library_logs()
    bot = server.user_id(config["appservice"]["bot_localpart"])
    await register(server, "bruno")
    bruno = await NioUser.login(server, "bruno", PASSWORD, tmp / "nio-bruno", "bruno-nio")
    notices: list[Any] = []
    images: list[Any] = []
    bruno.client.add_event_callback(lambda room, event: notices.append(event), RoomMessageNotice)
    bruno.client.add_event_callback(lambda room, event: images.append(event), RoomEncryptedImage)
    bruno.start()
    try:
        created = await bruno.client.room_create(name="Chiffré", invite=[bot], initial_state=[ENCRYPTION])
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        await bruno.wait_joined(room_id, [bruno.user_id, bot])
        await bruno.send(room_id, "!email link chiffre")
        await until("the link notice", lambda: any(f"room-chiffre@{DOMAIN}" in n.body for n in notices), 25)
        assert all(n.decrypted for n in notices)
        await bruno.send(room_id, "!email recipients secret@prefecture.test")
        await until("the recipients notice", lambda: any("secret@prefecture.test" in n.body for n in notices))

        await mail(
            smtp_port,
            f"room-chiffre@{DOMAIN}",
            "Pli confidentiel",
            "Contenu sensible 42",
            [("plan.png", "image/png", PNG)],
        )
        message = await bruno.wait_message(room_id, "Contenu sensible 42")
        assert message.decrypted and message.sender == f"@email_jeanne.martin=40prefecture.test:{server.server_name}"
        image = await until("the encrypted image", lambda: images[0] if images else None)
        assert image.decrypted and image.body == "plan.png"
        downloaded = await bruno.client.download(image.url)
        assert isinstance(downloaded, DownloadResponse), downloaded
        assert downloaded.body != PNG  # the homeserver only ever saw ciphertext
        assert decrypt_attachment(downloaded.body, image.key["k"], image.hashes["sha256"], image.iv) == PNG

        await bruno.send(room_id, "Réponse chiffrée par courriel")
        rcpts, sent = await until(
            "the relay to receive bruno's message", lambda: relay.find("Réponse chiffrée par courriel")
        )
        assert rcpts == ["secret@prefecture.test"] and f"room-chiffre@{DOMAIN}" in sent["From"]
    finally:
        await bruno.stop()
