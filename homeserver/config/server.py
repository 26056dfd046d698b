"""The server's identity and process: name, public URL, well-known, pid file, logging.

Synapse's keys ``server_name``, ``public_baseurl``, ``serve_server_wellknown``,
``extra_well_known_client_content``, ``pid_file``, ``log_config``, ``admin_contact``,
``report_stats`` and ``app_service_config_files``, plus our ``log_level`` for operators
who do not want to write a Python logging configuration.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from homeserver.config.reader import Reader
from homeserver.core.ids import is_valid_server_name

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SERVER_NAME_EXPECTED = "a server name such as example.com or matrix.example.com:8448"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Identity and process settings."""

    server_name: str
    public_baseurl: str | None
    serve_server_wellknown: bool
    extra_well_known_client_content: dict[str, Any]
    pid_file: str | None
    log_config: str | None
    log_level: str
    admin_contact: str | None
    report_stats: bool
    app_service_config_files: tuple[str, ...]


def read_server_name(r: Reader) -> str:
    """Read and validate the required ``server_name`` ("" after an error)."""
    name = r.raw("server_name")
    if name is None:
        r.error("server_name", f"required key is missing; expected {SERVER_NAME_EXPECTED}")
        return ""
    if not isinstance(name, str) or not is_valid_server_name(name):
        r.expected("server_name", SERVER_NAME_EXPECTED, name)
        return ""
    return name


def _read_public_baseurl(r: Reader) -> str | None:
    url = r.optional_string("public_baseurl", expected="an http(s) URL such as https://matrix.example.com/")
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        r.expected("public_baseurl", "an http(s) URL such as https://matrix.example.com/", url)
        return None
    if parts.query or parts.fragment:
        r.error("public_baseurl", f"must not have a ?query or #fragment, got {url!r}")
        return None
    # Clients append "_matrix/..." to it, so it always ends with a slash (as in Synapse).
    return url if url.endswith("/") else url + "/"


def _read_well_known_content(r: Reader) -> dict[str, Any]:
    content = r.json_object("extra_well_known_client_content")
    for reserved, instead in (
        ("m.homeserver", "public_baseurl"),
        ("m.identity_server", "default_identity_server"),
    ):
        if reserved in content:
            r.error(
                "extra_well_known_client_content",
                f'must not contain "{reserved}"; set {instead} instead',
            )
            del content[reserved]
    return content


def _read_log_level(r: Reader) -> str:
    value = r.raw("log_level", "INFO")
    if isinstance(value, str) and value.upper() in LOG_LEVELS:
        return value.upper()
    r.expected("log_level", "one of " + ", ".join(LOG_LEVELS), value)
    return "INFO"


def read_server(r: Reader, server_name: str) -> ServerSettings:
    """Read the identity and process settings (``server_name`` is read beforehand)."""
    return ServerSettings(
        server_name=server_name,
        public_baseurl=_read_public_baseurl(r),
        serve_server_wellknown=r.boolean("serve_server_wellknown", False),
        extra_well_known_client_content=_read_well_known_content(r),
        pid_file=r.optional_path("pid_file"),
        log_config=r.optional_path("log_config"),
        log_level=_read_log_level(r),
        admin_contact=r.optional_string("admin_contact", expected="a URI such as mailto:admin@example.com"),
        report_stats=r.boolean("report_stats", False),
        app_service_config_files=tuple(
            r.resolve(path) for path in r.strings("app_service_config_files", expected="a list of file paths")
        ),
    )
