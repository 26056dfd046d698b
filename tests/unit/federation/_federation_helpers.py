"""Fakes for the federation unit tests: a key store, a transport, key responses, a runner."""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

from homeserver.core.clock import Clock
from homeserver.events.signing import SigningKey, generate_signing_key, sign_json
from homeserver.federation.server_keys import FetchedKey, OldVerifyKey, ServerKeysResponse, build_server_keys
from homeserver.storage.server_keys import StoredKeyResponse

DAY_MS = 24 * 3600 * 1000


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine whose awaits all complete synchronously (fakes only); return its result."""
    d = defer.ensureDeferred(coro)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the coroutine is still waiting for something"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def make_clock(now_ms: int = 1_700_000_000_000) -> tuple[task.Clock, Clock]:
    reactor = task.Clock()
    reactor.advance(now_ms / 1000)
    return reactor, Clock(reactor)


def key_response(
    server_name: str,
    keys: list[SigningKey],
    valid_until_ts: int,
    old: dict[str, OldVerifyKey] | None = None,
) -> dict[str, Any]:
    return build_server_keys(server_name, keys, old or {}, valid_until_ts)


def notarise(response: dict[str, Any], notary: str, key: SigningKey) -> dict[str, Any]:
    return sign_json(response, notary, key)


class FakeKeyStore:
    """The ServerKeyRepository's behaviour, in memory."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], FetchedKey] = {}
        self.responses: dict[tuple[str, str], StoredKeyResponse] = {}
        self.reads = 0

    async def get_keys(self, server_name: str, key_ids: Collection[str]) -> dict[str, FetchedKey]:
        self.reads += 1
        return {
            kid: key
            for (server, kid), key in self.keys.items()
            if server == server_name and (not key_ids or kid in key_ids)
        }

    async def store_response(self, response: ServerKeysResponse, *, source: str, fetched_ts: int) -> None:
        for kid, key in response.keys.items():
            existing = self.keys.get((response.server_name, kid))
            if existing is None or existing.valid_until_ts <= key.valid_until_ts:
                self.keys[(response.server_name, kid)] = key
        self.responses[(response.server_name, source)] = StoredKeyResponse(
            response.server_name, source, response.valid_until_ts, fetched_ts, response.json
        )

    async def get_responses(self, server_name: str) -> list[StoredKeyResponse]:
        found = [r for (server, _), r in self.responses.items() if server == server_name]
        return sorted(found, key=lambda r: -r.fetched_ts)


class FakeTransport:
    """Answers from a table: ``(method, destination, path) -> JSON or exception or callable``."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str, str], Any] = {}
        self.calls: list[tuple[str, str, str, Any]] = []

    def _answer(self, method: str, destination: str, path: str, content: Any) -> Any:
        self.calls.append((method, destination, path, content))
        answer = self.answers.get((method, destination, path))
        if answer is None:
            raise ConnectionRefusedError(f"no fake answer for {method} {destination}{path}")
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(content)
        return answer

    async def get_json(self, destination: str, path: str, *, timeout: float | None = None) -> Any:
        result = self._answer("GET", destination, path, None)
        if isinstance(result, defer.Deferred):
            result = await result
        return result

    async def post_json(self, destination: str, path: str, content: Any, *, timeout: float | None = None) -> Any:
        result = self._answer("POST", destination, path, content)
        if isinstance(result, defer.Deferred):
            result = await result
        return result


def new_key(version: str) -> SigningKey:
    return generate_signing_key(version)


AllowFn = Callable[[str], bool]


def make_self_signed_cert(directory: Any, host: str = "127.0.0.1") -> tuple[str, str]:
    """A self-signed certificate (with the IP or DNS name as SAN) and its key, as PEM files."""
    import datetime
    import ipaddress

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
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = f"{directory}/tls-{host}.crt", f"{directory}/tls-{host}.key"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
    return cert_path, key_path
