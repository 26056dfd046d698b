"""``email``: how to send mail (notifications, password resets, address validation).

Only the SMTP connection settings are read for now; the other keys of Synapse's
``email`` section are reported as "not supported yet".  The section is optional: no
``email`` key means no email sending (``HomeserverConfig.email`` is ``None``).

TLS (STARTTLS, or implicit with ``force_tls``) always checks the server's certificate,
as Synapse does: it must be valid for ``tlsname`` (default ``smtp_host``) and chain to
the system's trust store, or to ``smtp_ca_file`` (ours, not Synapse's: a ministry's own
certificate authority).  There is deliberately no switch to skip the check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from homeserver.config.reader import Reader

# Keys of Synapse's `email` section that we do not implement yet.
_UNSUPPORTED_EMAIL_KEYS = (
    "enable_notifs",
    "notif_for_new_users",
    "notif_delay_before_mail",
    "client_base_url",
    "riot_base_url",
    "validation_token_lifetime",
    "invite_client_location",
    "subjects",
    "template_dir",
)


@dataclass(frozen=True, slots=True)
class EmailConfig:
    """SMTP settings (Synapse's names and defaults)."""

    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_pass: str | None = None
    force_tls: bool = False
    require_transport_security: bool = False
    enable_tls: bool = True
    # the name the server's certificate must be valid for (default: smtp_host)
    tlsname: str | None = None
    # PEM file of the CA certificate(s) to trust instead of the system's (not Synapse's)
    smtp_ca_file: str | None = None
    notif_from: str | None = None
    app_name: str = "Matrix"


def read_email(r: Reader) -> EmailConfig | None:
    """Read the optional ``email`` section."""
    section = r.optional_section("email")
    if section is None:
        return None
    force_tls = section.boolean("force_tls", False)
    config = EmailConfig(
        smtp_host=section.string("smtp_host", "localhost"),
        smtp_port=section.integer("smtp_port", 465 if force_tls else 25, min=1, max=65535),
        smtp_user=section.optional_string("smtp_user"),
        smtp_pass=section.optional_string("smtp_pass"),
        force_tls=force_tls,
        require_transport_security=section.boolean("require_transport_security", False),
        enable_tls=section.boolean("enable_tls", True),
        tlsname=section.optional_string("tlsname", expected="a host name"),
        smtp_ca_file=section.optional_path("smtp_ca_file"),
        notif_from=section.optional_string("notif_from", expected='a sender such as "%(app)s <noreply@example.com>"'),
        app_name=section.string("app_name", "Matrix"),
    )
    if config.force_tls and not config.enable_tls:
        section.error("force_tls", "requires enable_tls to be true")
    if config.require_transport_security and not config.enable_tls:
        section.error("require_transport_security", "requires enable_tls to be true")
    if config.smtp_ca_file is not None and not os.path.isfile(config.smtp_ca_file):
        section.error("smtp_ca_file", f"no such file: {config.smtp_ca_file}")
    if config.notif_from is not None and "@" not in config.notif_from:
        section.expected("notif_from", "a sender address containing @", config.notif_from)
    section.finish(unsupported=_UNSUPPORTED_EMAIL_KEYS)
    return config
