"""Sending mail over SMTP (the ``email`` section: host, port, STARTTLS or TLS, credentials).

As Synapse: with ``enable_tls`` (the default) STARTTLS is used when the server offers it,
``force_tls`` speaks TLS from the first byte (port 465), ``require_transport_security``
refuses a server without STARTTLS; the certificate is always checked (``tlsname``,
``smtp_ca_file``).  Unlike Synapse, ``smtp_user``/``smtp_pass`` are never sent in clear
while ``enable_tls`` is on: a server that does not offer STARTTLS gets nothing.
"""

from __future__ import annotations

import io
import logging
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, ssl
from twisted.protocols.tls import TLSMemoryBIOFactory

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
        # built once, so a bad smtp_ca_file stops the server at start-up
        self._tls = self._tls_options() if config.enable_tls else None

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
        """Send one message; raise 502 M_UNKNOWN (and log why) if it could not be sent."""
        from twisted.mail.smtp import ESMTPSenderFactory  # on first use: most servers never send mail

        msg = self.build(to, subject, text, html)
        c = self._config
        done: defer.Deferred[Any] = defer.Deferred()
        user = c.smtp_user
        factory: Any = ESMTPSenderFactory(
            user.encode() if user else None,
            c.smtp_pass.encode() if c.smtp_pass is not None else None,
            msg["From"].addresses[0].addr_spec if hasattr(msg["From"], "addresses") else self.sender(),
            [to],
            io.BytesIO(msg.as_bytes()),
            done,
            retries=0,
            timeout=SEND_TIMEOUT_S,
            contextFactory=self._tls,
            heloFallback=True,
            requireAuthentication=bool(user),
            # credentials never go out in clear when TLS is enabled, even if STARTTLS
            # is not offered (a downgrade); without credentials, TLS is opportunistic
            requireTransportSecurity=c.require_transport_security or (bool(user) and self._tls is not None),
            # no hostname: twisted would otherwise build its own TLS options from it,
            # even with enable_tls false
            hostname=None,
        )
        if c.force_tls and self._tls is not None:
            factory = TLSMemoryBIOFactory(self._tls, True, factory)
        self._reactor.connectTCP(c.smtp_host, c.smtp_port, factory, timeout=SEND_TIMEOUT_S)
        try:
            await done
        except Exception as e:
            logger.warning(
                "could not send mail to %s through %s:%d: %s", to, c.smtp_host, c.smtp_port, self._explain(e)
            )
            raise MatrixError(502, Codes.UNKNOWN, "The e-mail could not be sent; try again later") from None

    def _explain(self, e: BaseException) -> str:
        """What went wrong, for the operator reading the log."""
        from twisted.mail._except import SMTPTLSError
        from twisted.mail.smtp import (
            AUTHDeclinedError,
            AUTHRequiredError,
            SMTPConnectError,
            SMTPDeliveryError,
            TLSRequiredError,
        )

        c = self._config
        said = f" (server said: {_server_said(e)})" if _server_said(e) else ""
        if isinstance(e, AUTHDeclinedError):
            return f"the SMTP server refused the credentials of smtp_user {c.smtp_user!r}{said}"
        if isinstance(e, AUTHRequiredError):
            return f"the SMTP server offers no authentication method for smtp_user {c.smtp_user!r}{said}"
        if isinstance(e, TLSRequiredError):
            why = "require_transport_security" if c.require_transport_security else "smtp_user is set"
            return f"the SMTP server does not offer STARTTLS and TLS is required ({why}); nothing was sent{said}"
        if isinstance(e, (SMTPTLSError, SSL.Error)) or _is_tls_failure(e):
            return (
                f"TLS with the SMTP server failed: is its certificate valid for {c.tlsname or c.smtp_host!r} "
                f"and issued by a trusted CA ({c.smtp_ca_file or 'the system trust store'})?{said} {e!r}"
            )
        if isinstance(e, SMTPConnectError):
            return f"could not talk to the SMTP server: {e}"
        if isinstance(e, SMTPDeliveryError):
            return f"the SMTP server refused the message{said}"
        return repr(e)

    def _tls_options(self) -> Any:
        """The client TLS options: certificate checked against tlsname and the CA."""
        c = self._config
        name = c.tlsname or c.smtp_host
        if c.smtp_ca_file is None:
            return ssl.optionsForClientTLS(name)
        with open(c.smtp_ca_file, "rb") as f:
            pem = f.read()
        blocks = [b + _PEM_END for b in pem.split(_PEM_END) if b"-----BEGIN CERTIFICATE-----" in b]
        if not blocks:
            raise ValueError(f"email.smtp_ca_file {c.smtp_ca_file}: no PEM certificate in it")
        roots = [ssl.Certificate.loadPEM(b[b.index(b"-----BEGIN") :]) for b in blocks]
        return ssl.optionsForClientTLS(name, trustRoot=ssl.trustRootFromCertificates(roots))


_PEM_END = b"-----END CERTIFICATE-----"


def _server_said(e: BaseException) -> str:
    resp = getattr(e, "resp", None)
    if isinstance(resp, bytes):
        return resp.decode("utf-8", "replace").strip()
    return str(resp).strip() if resp else ""


def _is_tls_failure(e: BaseException) -> bool:
    """A connection lost during the TLS handshake carries the OpenSSL error inside."""
    text = repr(e)
    # service_identity's VerificationError: the certificate is not for the name asked
    return "SSL" in text or "certificate" in text.lower() or "VerificationError" in text
