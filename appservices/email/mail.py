"""Pure e-mail handling: what an incoming message says (sender, subject, text, attachments)
and the message a Matrix post becomes."""

from __future__ import annotations

import email
import email.policy
import email.utils
from dataclasses import dataclass, field
from email.message import EmailMessage

from appservices.common.text import html_to_text


@dataclass(frozen=True)
class Attachment:
    filename: str
    mime_type: str
    data: bytes


@dataclass(frozen=True)
class IncomingMail:
    sender_address: str
    sender_name: str | None
    subject: str
    text: str
    html: str | None
    attachments: list[Attachment] = field(default_factory=list)

    @property
    def sender_display(self) -> str:
        return f"{self.sender_name} ({self.sender_address})" if self.sender_name else self.sender_address


def parse_mail(raw: bytes, envelope_from: str) -> IncomingMail:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    name, address = email.utils.parseaddr(str(message.get("From", "")))
    if "@" not in address:
        name, address = "", envelope_from
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    html = str(html_part.get_content()) if html_part is not None else None
    if text_part is not None:
        text = str(text_part.get_content())
    else:
        text = html_to_text(html) if html else ""
    attachments = []
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage)
        # The bytes as sent (get_content() would decode text parts with a guessed charset).
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename() or "attachment"
        attachments.append(Attachment(filename=filename, mime_type=part.get_content_type(), data=data))
    return IncomingMail(
        sender_address=address.strip().lower(),
        sender_name=name.strip() or None,
        subject=str(message.get("Subject", "")).strip(),
        text=text.strip(),
        html=html,
        attachments=attachments,
    )


def outgoing_mail(
    *,
    room_address: str,
    room_label: str,
    sender_name: str,
    recipients: tuple[str, ...],
    text: str,
    attachment: Attachment | None = None,
    domain: str,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = email.utils.formataddr((f"{sender_name} (Matrix)", room_address))
    message["To"] = ", ".join(recipients)
    message["Reply-To"] = room_address
    message["Subject"] = f"[{room_label}] {sender_name}"
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    message.set_content(text)
    if attachment is not None:
        maintype, _, subtype = attachment.mime_type.partition("/")
        message.add_attachment(
            attachment.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    return message
