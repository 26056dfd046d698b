"""A real Synapse on loopback, configured by its own ``--generate-config``, then patched.

(``--generate-config`` runs once per test process; see generated_config.)

Patched for tests: plain-HTTP client listener on a free port, registration closed but
a ``registration_shared_secret`` set, no stats, no trusted key servers, no federation
certificate checks, no IP blocklist (peers are on 127.0.0.x), rate limits out of the
way, bcrypt at its minimum cost, logs to stderr (captured in ``server.log``). Optionally
a TLS federation listener with a self-signed certificate, so that an IP-literal server
name such as ``127.0.0.2:PORT`` federates without DNS or well-known.
"""

from __future__ import annotations

import copy
import ipaddress
import secrets
import shutil
import string
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import signedjson.key
import yaml

from tests.interop.harness import (
    NO_RATE_LIMIT,
    TEST_RATE_LIMITS,
    TEST_SPEED_CONFIG,
    HarnessError,
    Postgres,
    RunningServer,
    deep_merge,
    free_port,
    run_command,
    spawn,
    wait_for_health,
)

_SYNAPSE_TEST_CONFIG: dict[str, Any] = {
    "enable_registration": False,
    "report_stats": False,
    "trusted_key_servers": [],
    "suppress_key_server_warning": True,
    "federation_verify_certificates": False,
    "ip_range_blacklist": [],
    "url_preview_enabled": False,
    "enable_metrics": False,
    **TEST_RATE_LIMITS,
    **TEST_SPEED_CONFIG,
    "rc_key_requests": NO_RATE_LIMIT,
}

_SYNAPSE_LOG_CONFIG = """\
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  console:
    class: logging.StreamHandler
    formatter: precise
loggers:
  synapse.storage.SQL:
    level: INFO
root:
  level: INFO
  handlers: [console]
disable_existing_loggers: false
"""


def tls_stack_problem() -> str | None:
    """Why Twisted TLS listeners cannot work with the installed packages, if they cannot.

    pyOpenSSL 26.2 made mutating an SSL Context after it made a Connection an error;
    Twisted before 26 sets ALPN on the shared Context for every accepted connection
    (twisted/twisted#12500, #12639), so every HTTPS handshake dies server-side.
    """
    from importlib.metadata import version

    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())

    twisted, pyopenssl = version("Twisted"), version("pyOpenSSL")
    if parts(twisted) < (26,) and parts(pyopenssl) >= (26, 2):
        return (
            f"Twisted {twisted} with pyOpenSSL {pyopenssl}: Twisted < 26 mutates a used SSL Context, "
            "which pyOpenSSL >= 26.2 forbids, so TLS listeners fail every handshake "
            "(twisted/twisted#12500). Use a Twisted release with that fix (tested: 26.10.0)."
        )
    return None


def make_self_signed_cert(directory: Path, host: str) -> tuple[Path, Path]:
    """A self-signed TLS certificate for an IP-literal or DNS host; returns (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


_TEMPLATE_NAME = "template.invalid"
_templates: dict[str, Any] = {}


def _generate_config(server_name: str, data_dir: Path, config_path: Path) -> dict[str, Any]:
    run_command(
        [
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            server_name,
            "--config-path",
            str(config_path),
            "--data-directory",
            str(data_dir),
            "--generate-config",
            "--report-stats=no",
        ],
        what="synapse --generate-config",
    )
    config: dict[str, Any] = yaml.safe_load(config_path.read_text())
    return config


def generated_config(server_name: str, data_dir: Path, config_path: Path) -> dict[str, Any]:
    """What ``synapse --generate-config`` writes for ``server_name`` in ``data_dir``.

    Synapse generates a configuration once per test process (a Synapse process costs
    seconds to import); each server then gets that configuration with its own server name,
    paths, secrets and a fresh signing key (in Synapse's key file format). If the generated
    file has a path or name this does not know how to replace (a future Synapse), each server
    runs ``--generate-config`` itself instead.
    """
    if "config" not in _templates:
        template_dir = Path(tempfile.mkdtemp(prefix="synapse-config-template-"))
        _templates["dir"] = str(template_dir)
        _templates["config"] = _generate_config(_TEMPLATE_NAME, template_dir, template_dir / "homeserver.yaml")
        shutil.rmtree(template_dir, ignore_errors=True)
    config = copy.deepcopy(_templates["config"])
    key_path = data_dir / f"{server_name}.signing.key"
    config.update(
        server_name=server_name,
        pid_file=str(data_dir / "homeserver.pid"),
        media_store_path=str(data_dir / "media_store"),
        log_config=str(data_dir / "log.config"),
        signing_key_path=str(key_path),
        macaroon_secret_key=secrets.token_urlsafe(36),
        form_secret=secrets.token_urlsafe(36),
        registration_shared_secret=secrets.token_urlsafe(36),
    )
    if config.get("database", {}).get("name") == "sqlite3":
        config["database"]["args"]["database"] = str(data_dir / "homeserver.db")
    leftover = yaml.safe_dump(config)
    if _templates["dir"] in leftover or _TEMPLATE_NAME in leftover:
        return _generate_config(server_name, data_dir, config_path)
    version = "a_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
    with open(key_path, "w") as key_file:
        signedjson.key.write_signing_keys(key_file, [signedjson.key.generate_signing_key(version)])
    return config


def start_synapse(
    data_dir: Path,
    *,
    engine: str = "sqlite",
    postgres: Postgres | None = None,
    database: str | None = None,
    server_name: str | None = None,
    host: str = "127.0.0.1",
    client_port: int | None = None,
    federation_port: int | None = None,
    federation_tls: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> RunningServer:
    """Start a real Synapse on loopback.

    Without ``federation_tls`` one plain-HTTP listener serves client and federation
    APIs and the server name defaults to ``host:client_port``. With it, a second
    listener serves federation over TLS (self-signed) on ``federation_port`` and the
    server name defaults to ``host:federation_port``, so that other servers reach it
    by its IP-literal name, e.g. ``127.0.0.2:8448``.
    """
    if federation_tls and (problem := tls_stack_problem()):
        raise HarnessError(problem)
    data_dir.mkdir(parents=True, exist_ok=True)
    client_port = client_port or free_port(host)
    if federation_tls:
        federation_port = federation_port or free_port(host)
    server_name = server_name or f"{host}:{federation_port if federation_tls else client_port}"
    config_path = data_dir / "homeserver.yaml"
    config = generated_config(server_name, data_dir, config_path)
    deep_merge(config, _SYNAPSE_TEST_CONFIG)
    secret = secrets.token_hex(16)
    config["registration_shared_secret"] = secret
    listeners: list[dict[str, Any]] = [
        {
            "port": client_port,
            "bind_addresses": [host],
            "type": "http",
            "tls": False,
            "x_forwarded": False,
            "resources": [
                {
                    "names": ["client"] if federation_tls else ["client", "federation"],
                    "compress": False,
                }
            ],
        }
    ]
    federation_url = None
    if federation_tls:
        cert, key = make_self_signed_cert(data_dir, host)
        config["tls_certificate_path"], config["tls_private_key_path"] = (
            str(cert),
            str(key),
        )
        listeners.append(
            {
                "port": federation_port,
                "bind_addresses": [host],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["federation"], "compress": False}],
            }
        )
        federation_url = f"https://{host}:{federation_port}"
    config["listeners"] = listeners
    log_config = data_dir / "log.config"
    log_config.write_text(_SYNAPSE_LOG_CONFIG)
    config["log_config"] = str(log_config)
    if engine == "postgres":
        if postgres is None or database is None:
            raise HarnessError("engine 'postgres' needs a Postgres and a database name")
        config["database"] = {
            "name": "psycopg2",
            "allow_unsafe_locale": True,
            "args": {
                "user": postgres.user,
                **({"password": postgres.password} if postgres.password else {}),
                "host": postgres.host,
                "port": postgres.port,
                "database": database,
                "cp_min": 1,
                "cp_max": 5,
            },
        }
    if extra_config:
        deep_merge(config, extra_config)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = data_dir / "server.log"
    server = RunningServer(
        kind="synapse",
        engine=engine,
        server_name=server_name,
        client_url=f"http://{host}:{client_port}",
        data_dir=data_dir,
        config_path=config_path,
        log_path=log_path,
        registration_shared_secret=secret,
        process=spawn(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config_path)],
            log_path,
            data_dir,
        ),
        federation_url=federation_url,
        database=database,
    )
    wait_for_health(server)
    return server
