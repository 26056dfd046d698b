"""The e-mail bridge: an SMTP listener (aiosmtpd) whose mail lands in rooms as ghosts, and
the rooms' messages sent out through an SMTP relay."""

from __future__ import annotations

import asyncio
import html
import logging
import smtplib
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from mautrix.crypto.attachments import decrypt_attachment
from mautrix.types import (
    ContentURI,
    Event,
    EventType,
    Membership,
    MessageEvent,
    MessageType,
    RoomID,
    StateEvent,
    TextMessageEventContent,
    UserID,
)

from appservices.common.core import BridgeCore
from appservices.common.names import escape_localpart
from appservices.email.config import ADDRESS, ROOM_NAME, EmailConfig
from appservices.email.links import Link, LinkStore
from appservices.email.mail import Attachment, IncomingMail, outgoing_mail, parse_mail

log = logging.getLogger("bridge.email")

COMMAND = "!email"
HELP = (
    "E-mail bridge commands:\n"
    "!email link <name>: mail to room-<name>@<domain> lands in this room\n"
    "!email recipients <address> [...]|off: send this room's messages to these addresses\n"
    "!email status | !email unlink"
)


class SmtpHandler:
    """aiosmtpd's handler: refuse unknown addresses at RCPT, post the message at DATA."""

    def __init__(self, bridge: EmailBridge) -> None:
        self._bridge = bridge

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self._bridge.link_for_address(address) is None:
            return "550 5.1.1 no room has this address"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            mail = parse_mail(raw, str(envelope.mail_from or ""))
        except Exception:  # noqa: BLE001 (garbage in: say so, keep serving)
            log.warning("unreadable message from %s", envelope.mail_from, exc_info=True)
            return "554 5.6.0 unreadable message"
        delivered = 0
        for address in envelope.rcpt_tos:
            link = self._bridge.link_for_address(address)
            if link is None:
                continue
            try:
                await self._bridge.post_mail(link, mail)
                delivered += 1
            except Exception:  # noqa: BLE001 (the homeserver refused: ask the sender to retry)
                log.exception("could not post mail from %s into %s", mail.sender_address, link.room_id)
        return "250 Message accepted for delivery" if delivered else "451 4.3.0 could not deliver, try again later"


class EmailBridge:
    def __init__(self, config: EmailConfig) -> None:
        self.config = config
        self.core = BridgeCore(config.bridge, "email", self._on_matrix_event)
        self.links = LinkStore(config.bridge.data_dir / "email.db")
        self._smtp: asyncio.AbstractServer | None = None
        self._profiles: dict[str, str] = {}

    async def start(self) -> None:
        for room in self.config.rooms:
            self.links.put(Link(room.name, room.room_id, room.recipients))
        await self.core.start()
        loop = asyncio.get_running_loop()
        handler = SmtpHandler(self)
        listen = self.config.smtp_listen
        self._smtp = await loop.create_server(
            lambda: SMTP(handler, data_size_limit=self.config.max_message_bytes, hostname=self.config.domain),
            listen.host,
            listen.port,
        )
        log.info("SMTP listening on %s for *@%s", listen, self.config.domain)

    async def stop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            await self._smtp.wait_closed()
        await self.core.stop()
        self.links.close()

    def link_for_address(self, address: str) -> Link | None:
        name = self.config.name_of(address)
        return self.links.by_name(name) if name else None

    # ---------------------------------------------------------------- mail -> room

    async def post_mail(self, link: Link, mail: IncomingMail) -> None:
        ghost = self.core.ghost(escape_localpart(mail.sender_address)[:180])
        await ghost.ensure_registered()
        if self._profiles.get(str(ghost.mxid)) != mail.sender_display:
            await ghost.set_displayname(mail.sender_display)
            self._profiles[str(ghost.mxid)] = mail.sender_display
        room_id = RoomID(link.room_id)
        subject = mail.subject or "(no subject)"
        if mail.text or not mail.attachments:
            content = TextMessageEventContent(msgtype=MessageType.TEXT, body=f"{subject}\n\n{mail.text}".strip())
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = f"<p><strong>{html.escape(subject)}</strong></p>" + "".join(
                f"<p>{html.escape(p)}</p>".replace("\n", "<br>") for p in mail.text.split("\n\n") if p
            )
            await self.core.send(ghost, room_id, content)
        for attachment in mail.attachments:
            await self._post_attachment(ghost, room_id, attachment)

    async def _post_attachment(self, ghost: Any, room_id: RoomID, attachment: Attachment) -> None:
        media = await self.core.upload(ghost, room_id, attachment.data, attachment.mime_type, attachment.filename)
        msgtype = "m.image" if attachment.mime_type.startswith("image/") else "m.file"
        content: dict[str, Any] = {
            "msgtype": msgtype,
            "body": attachment.filename,
            "filename": attachment.filename,
            "info": {"mimetype": attachment.mime_type, "size": len(attachment.data)},
            **media,
        }
        await self.core.send(ghost, room_id, content)

    # ---------------------------------------------------------------- room -> mail

    async def _on_matrix_event(self, event: Event) -> None:
        if isinstance(event, StateEvent) and event.type == EventType.ROOM_MEMBER:
            if event.state_key == self.core.config.bot_mxid and event.content.membership == Membership.INVITE:
                await self._notice(event.room_id, "Hello! " + HELP)
            return
        if not isinstance(event, MessageEvent) or event.type != EventType.ROOM_MESSAGE:
            return
        body = str(getattr(event.content, "body", "") or "").strip()
        if body.startswith(COMMAND):
            await self._command(event, body[len(COMMAND) :].split())
            return
        link = self.links.by_room(event.room_id)
        if link is None or not link.recipients:
            return
        if self.config.relay is None:
            log.warning("room %s has recipients but no email.relay is configured", event.room_id)
            return
        await self._send_mail(link, event)

    async def _send_mail(self, link: Link, event: MessageEvent) -> None:
        content = event.content
        attachment = None
        text = str(content.body)
        if content.msgtype in (MessageType.FILE, MessageType.IMAGE, MessageType.AUDIO, MessageType.VIDEO):
            attachment = await self._download(content)
            text = f"(file: {attachment.filename})" if attachment else text
        sender = await self._sender_name(event.room_id, event.sender)
        message = outgoing_mail(
            room_address=self.config.address(link.name),
            room_label=link.name,
            sender_name=sender,
            recipients=link.recipients,
            text=text,
            attachment=attachment,
            domain=self.config.domain,
        )
        await asyncio.get_running_loop().run_in_executor(None, self._relay, message)
        log.info("mailed %s from %s to %d recipient(s)", event.event_id, link.name, len(link.recipients))

    def _relay(self, message: EmailMessage) -> None:
        relay = self.config.relay
        assert relay is not None
        with smtplib.SMTP(relay.host, relay.port, timeout=30) as smtp:
            if relay.starttls:
                smtp.starttls()
            if relay.username and relay.password:
                smtp.login(relay.username, relay.password)
            smtp.send_message(message)

    async def _download(self, content: Any) -> Attachment | None:
        info = content.info
        mime_type = str(getattr(info, "mimetype", None) or "application/octet-stream")
        filename = str(getattr(content, "filename", None) or content.body or "file")
        if content.file is not None:
            ciphertext = await self.core.bot.download_media(content.file.url)
            data = decrypt_attachment(ciphertext, content.file.key.key, content.file.hashes["sha256"], content.file.iv)
        elif content.url:
            data = await self.core.bot.download_media(ContentURI(content.url))
        else:
            return None
        return Attachment(filename=filename, mime_type=mime_type, data=data)

    async def _sender_name(self, room_id: RoomID, user_id: UserID) -> str:
        member = await self.core.state_store.get_member(room_id, user_id)
        if member is not None and member.displayname:
            return str(member.displayname)
        return str(user_id)

    # ---------------------------------------------------------------- commands

    async def _notice(self, room_id: RoomID, text: str) -> None:
        await self.core.send(self.core.bot, room_id, TextMessageEventContent(msgtype=MessageType.NOTICE, body=text))

    async def _command(self, event: MessageEvent, words: list[str]) -> None:
        room_id = event.room_id
        if not self.core.config.may_command(str(event.sender)):
            await self._notice(room_id, f"{event.sender} may not give commands to this bridge.")
            return
        verb = words[0].lower() if words else "help"
        link = self.links.by_room(room_id)
        if verb == "link" and len(words) == 2:
            name = words[1].lower()
            taken = self.links.by_name(name)
            if not ROOM_NAME.fullmatch(name):
                await self._notice(room_id, "A name is lower-case letters, digits and ._- (at most 64).")
            elif taken is not None and taken.room_id != room_id:
                await self._notice(room_id, f"{self.config.address(name)} is already another room's address.")
            else:
                self.links.put(Link(name, room_id, link.recipients if link else ()))
                await self._notice(room_id, f"This room's address is {self.config.address(name)}")
        elif verb == "recipients" and link is not None and len(words) >= 2:
            addresses = [] if words[1:] == ["off"] else [w.strip(",;") for w in words[1:]]
            wrong = [a for a in addresses if not ADDRESS.fullmatch(a)]
            if wrong:
                await self._notice(room_id, f"Not an e-mail address: {', '.join(wrong)}")
            else:
                self.links.put(Link(link.name, room_id, tuple(addresses)))
                await self._notice(room_id, f"Messages go out to: {', '.join(addresses) or 'nobody'}")
        elif verb == "unlink" and link is not None:
            self.links.delete(room_id)
            await self._notice(room_id, f"{self.config.address(link.name)} no longer reaches this room.")
        elif verb == "status":
            if link is None:
                await self._notice(room_id, "This room has no address. " + HELP)
            else:
                await self._notice(
                    room_id,
                    f"Address {self.config.address(link.name)}; messages go out to: "
                    f"{', '.join(link.recipients) or 'nobody'}",
                )
        else:
            await self._notice(room_id, HELP)
