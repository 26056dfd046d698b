"""E-mail through a real SMTP daemon (aiosmtpd on loopback) with TLS and credentials.

The homeserver sends the e-mail of ``POST /register/email/requestToken`` (the real HTTP
API, both engines); the daemon records what it saw: TLS, the AUTH mechanism and login,
and the messages.  Its certificate is issued by a throw-away CA for ``mail.test.local``
only, so ``tlsname`` and ``smtp_ca_file`` are what make it trusted."""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from homeserver.config import ConfigError, parse_config
from tests.api.conftest import HSFixture

V3 = "/_matrix/client/v3"
TLSNAME = "mail.test.local"
USER, PASSWORD = "tchap-mailer", "s3cret smtp pass"
ADDRESS = "jean.dupont@agent.gouv.example"


# -- a throw-away PKI ------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: str
    cert_file: str
    key_file: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> Pki:
    """A CA, and a server certificate it issued, valid for mail.test.local only."""
    where: Path = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Test ministry CA"))
        .issuer_name(_name("Test ministry CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(TLSNAME))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLSNAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = Pki(str(where / "ca.pem"), str(where / "mail.pem"), str(where / "mail.key"))
    Path(files.ca_file).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(files.cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(files.key_file).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert ipaddress.ip_address("127.0.0.1")  # the daemon's address is not in the certificate
    return files


# -- the SMTP daemon ---------------------------------------------------------------------


@dataclass
class Daemon:
    port: int
    password: str = PASSWORD
    messages: list[EmailMessage] = field(default_factory=list)
    # (mechanism, login, accepted, over TLS) for every AUTH attempt
    auths: list[tuple[str, str, bool, bool]] = field(default_factory=list)
    # per delivered message: (TLS in use, authenticated login or None)
    deliveries: list[tuple[bool, str | None]] = field(default_factory=list)

    def authenticator(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        ok = data.login.decode() == USER and data.password.decode() == self.password
        self.auths.append((mechanism, data.login.decode(), ok, _over_tls(server, session)))
        # handled=False: aiosmtpd answers 535 itself (True would mean "already answered")
        return AuthResult(success=ok, handled=False, auth_data=data)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        login = session.login_data.decode() if session.authenticated and session.login_data else None
        self.deliveries.append((_over_tls(server, session), login))
        self.messages.append(message)
        return "250 Message accepted for delivery"


def _over_tls(server: Any, session: Any) -> bool:
    transport = getattr(server, "transport", None)
    implicit = transport is not None and transport.get_extra_info("ssl_object") is not None
    return session.ssl is not None or implicit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtpd(pki: Pki) -> Iterator[Any]:
    """Start daemons: ``smtpd("starttls"|"implicit"|"plain", **aiosmtpd options)``."""
    started: list[Controller] = []

    def start(kind: str, **options: Any) -> Daemon:
        daemon = Daemon(_free_port())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.cert_file, pki.key_file)
        kw: dict[str, Any] = {"authenticator": daemon.authenticator}
        if kind == "starttls":
            kw.update(tls_context=context, require_starttls=True, auth_require_tls=True)
        elif kind == "implicit":
            kw.update(ssl_context=context, auth_require_tls=False)
        else:  # plain, yet offering AUTH in clear: the worst server to hand a password to
            kw.update(auth_require_tls=False)
        kw.update(options)  # the test's own options win over the kind's defaults
        controller = Controller(daemon, hostname="127.0.0.1", port=daemon.port, server_hostname=TLSNAME, **kw)
        controller.start()
        started.append(controller)
        return daemon

    yield start
    for controller in started:
        controller.stop()


def email_config(daemon: Daemon, pki: Pki, **extra: Any) -> dict[str, Any]:
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": daemon.port,
        "smtp_user": USER,
        "smtp_pass": PASSWORD,
        "tlsname": TLSNAME,
        "smtp_ca_file": pki.ca_file,
        "notif_from": "Tchap <noreply@test.local>",
        "app_name": "Tchap",
        **extra,
    }


def server_with(make_server: Any, email_section: dict[str, Any]) -> HSFixture:
    server: HSFixture = make_server(
        email={k: v for k, v in email_section.items() if v is not None},
        public_baseurl="https://test.local/",
        government_policy={"email_domains": {"test.local": ["agent.gouv.example"]}},
    )
    return server


async def request_token(server: HSFixture, secret: str = "s3cret-1", attempt: int = 1) -> Any:
    return await server.new_client().post(
        f"{V3}/register/email/requestToken", {"email": ADDRESS, "client_secret": secret, "send_attempt": attempt}
    )


async def wait_for_messages(daemon: Daemon, count: int) -> None:
    from twisted.internet import reactor, task

    for _ in range(200):
        if len(daemon.messages) >= count:
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"expected {count} message(s), got {len(daemon.messages)}")


def assert_not_sent(resp: Any) -> None:
    assert resp.code == 502, resp.body
    assert resp.body["errcode"] == "M_UNKNOWN" and "could not be sent" in resp.body["error"]


# -- delivery ------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
@pytest_twisted.ensureDeferred
async def test_starttls_then_credentials(make_server: Any, smtpd: Any, pki: Pki, mechanism: str) -> None:
    """STARTTLS with the ministry CA's certificate, then AUTH LOGIN or PLAIN (the daemon
    offers only that one): the message arrives, sent over TLS by the authenticated user."""
    other = "PLAIN" if mechanism == "LOGIN" else "LOGIN"
    daemon = smtpd("starttls", auth_exclude_mechanism=[other])
    server = server_with(make_server, email_config(daemon, pki))
    sent = await request_token(server)
    assert sent.code == 200, sent.body
    await wait_for_messages(daemon, 1)
    assert daemon.auths == [(mechanism, USER, True, True)]
    assert daemon.deliveries == [(True, USER)]
    assert daemon.messages[0]["To"] == ADDRESS
    assert "validate your e-mail address" in str(daemon.messages[0]["Subject"])


@pytest_twisted.ensureDeferred
async def test_implicit_tls(make_server: Any, smtpd: Any, pki: Pki) -> None:
    """force_tls (port-465 style): TLS from the first byte, then AUTH."""
    daemon = smtpd("implicit")
    server = server_with(make_server, email_config(daemon, pki, force_tls=True))
    sent = await request_token(server)
    assert sent.code == 200, sent.body
    await wait_for_messages(daemon, 1)
    assert daemon.auths and all(a[1:] == (USER, True, True) for a in daemon.auths)
    assert daemon.deliveries == [(True, USER)]


@pytest_twisted.ensureDeferred
async def test_plain_server_without_credentials(make_server: Any, smtpd: Any, pki: Pki) -> None:
    """No credentials and no STARTTLS offered: TLS is opportunistic (as Synapse), the mail
    goes out in clear; with enable_tls false STARTTLS is not even tried on a TLS server."""
    plain = smtpd("plain")
    server = server_with(make_server, email_config(plain, pki, smtp_user=None, smtp_pass=None))
    assert (await request_token(server)).code == 200
    await wait_for_messages(plain, 1)
    assert plain.deliveries == [(False, None)] and plain.auths == []

    tls = smtpd("starttls", require_starttls=False)
    server = server_with(make_server, email_config(tls, pki, smtp_user=None, smtp_pass=None, enable_tls=False))
    assert (await request_token(server, secret="s3cret-2")).code == 200
    await wait_for_messages(tls, 1)
    assert tls.deliveries == [(False, None)]


# -- refusals ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_wrong_password(make_server: Any, smtpd: Any, pki: Pki, caplog: Any) -> None:
    """Tried: a password the daemon refuses (535).  requestToken answers 502 M_UNKNOWN
    (not a 500), the log names the refused smtp_user, and nothing is half-done: once the
    mail server accepts the password, the same request (same send_attempt) sends the mail."""
    daemon = smtpd("starttls")
    daemon.password = "the real one"
    server = server_with(make_server, email_config(daemon, pki))
    with caplog.at_level(logging.WARNING, logger="homeserver.services.policy.mailer"):
        refused = await request_token(server)
    assert_not_sent(refused)
    assert daemon.auths and all(a[1:] == (USER, False, True) for a in daemon.auths)
    assert daemon.messages == []
    assert any("refused the credentials of smtp_user 'tchap-mailer'" in r.getMessage() for r in caplog.records)

    daemon.password = PASSWORD
    again = await request_token(server)
    assert again.code == 200, again.body
    await wait_for_messages(daemon, 1)
    assert daemon.deliveries == [(True, USER)]


@pytest.mark.parametrize("require_transport_security", [True, False])
@pytest_twisted.ensureDeferred
async def test_no_credentials_in_clear(
    make_server: Any, smtpd: Any, pki: Pki, caplog: Any, require_transport_security: bool
) -> None:
    """Tried: a server offering AUTH but no STARTTLS.  With require_transport_security,
    and also without it as long as TLS is enabled and credentials are set, nothing is
    sent: no AUTH, no message; 502 M_UNKNOWN; the log says STARTTLS was missing."""
    daemon = smtpd("plain")
    config = email_config(daemon, pki, require_transport_security=require_transport_security)
    server = server_with(make_server, config)
    with caplog.at_level(logging.WARNING, logger="homeserver.services.policy.mailer"):
        assert_not_sent(await request_token(server))
    assert daemon.auths == [] and daemon.messages == []
    assert any("does not offer STARTTLS" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("broken", ["no_ca", "wrong_name"])
@pytest_twisted.ensureDeferred
async def test_certificate_is_checked(make_server: Any, smtpd: Any, pki: Pki, caplog: Any, broken: str) -> None:
    """Tried: the CA not trusted (system store only), and tlsname left to smtp_host
    (127.0.0.1, not in the certificate).  The TLS handshake fails: no AUTH, no message."""
    daemon = smtpd("starttls")
    config = email_config(daemon, pki)
    config["smtp_ca_file" if broken == "no_ca" else "tlsname"] = None
    server = server_with(make_server, config)
    with caplog.at_level(logging.WARNING, logger="homeserver.services.policy.mailer"):
        assert_not_sent(await request_token(server))
    assert daemon.auths == [] and daemon.messages == []
    assert any("TLS with the SMTP server failed" in r.getMessage() for r in caplog.records)


def test_smtp_ca_file_must_exist(tmp_path: Path, pki: Pki) -> None:
    """Tried: smtp_ca_file naming a missing file; tlsname and an existing CA are read."""
    base: dict[str, Any] = {"server_name": "test.local", "listeners": [{"port": 8008, "resources": [{"names": ["client"]}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "email": {"smtp_ca_file": "missing.pem"}}, config_dir=str(tmp_path))
    assert "email.smtp_ca_file" in str(err.value)
    config, _ = parse_config(
        {**base, "email": {"smtp_ca_file": pki.ca_file, "tlsname": TLSNAME}}, config_dir=str(tmp_path)
    )
    assert config.email is not None
    assert (config.email.smtp_ca_file, config.email.tlsname) == (pki.ca_file, TLSNAME)
