"""Sending mail over SMTP (the ``email`` section: host, port, STARTTLS or TLS, credentials)."""

from __future__ import annotations

import io
import logging
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from twisted.internet import defer, ssl
from twisted.mail.smtp import ESMTPSenderFactory

from homeserver.config.emailconfig import EmailConfig
from homeserver.core.errors import Codes, MatrixError

logger = logging.getLogger(__name__)

# Give up on an SMTP server that does not answer.
SEND_TIMEOUT_S = 30


class Mailer:
    def __init__(self, *, config: EmailConfig, reactor: Any, server_name: str) -> None:
        self._config = config
        self._reactor = reactor
        self._server_name = server_name

    @property
    def app_name(self) -> str:
        return self._config.app_name

    def sender(self) -> str:
        template = self._config.notif_from or f"%(app)s <noreply@{self._server_name.split(':')[0]}>"
        return template % {"app": self._config.app_name}

    def build(self, to: str, subject: str, text: str, html: str | None = None) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender()
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self._server_name.split(":")[0])
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
        return msg

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        """Send one message; raise M_UNKNOWN (500-free: 502) if the SMTP server refuses it."""
        msg = self.build(to, subject, text, html)
        c = self._config
        done: defer.Deferred[Any] = defer.Deferred()
        host = c.smtp_host
        tls = ssl.optionsForClientTLS(host) if c.enable_tls else None
        factory = ESMTPSenderFactory(
            c.smtp_user.encode() if c.smtp_user else None,
            c.smtp_pass.encode() if c.smtp_pass else None,
            msg["From"].addresses[0].addr_spec if hasattr(msg["From"], "addresses") else self.sender(),
            [to],
            io.BytesIO(msg.as_bytes()),
            done,
            retries=0,
            contextFactory=None if c.force_tls else tls,
            requireAuthentication=bool(c.smtp_user),
            requireTransportSecurity=c.require_transport_security,
            hostname=host,
        )
        if c.force_tls and tls is not None:
            self._reactor.connectSSL(host, c.smtp_port, factory, tls, timeout=SEND_TIMEOUT_S)
        else:
            self._reactor.connectTCP(host, c.smtp_port, factory, timeout=SEND_TIMEOUT_S)
        try:
            await done
        except Exception as e:
            logger.warning("could not send mail to %s through %s:%d: %s", to, host, c.smtp_port, e)
            raise MatrixError(502, Codes.UNKNOWN, "The e-mail could not be sent; try again later") from None
