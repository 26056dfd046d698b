"""Outbound connection policy: which IP addresses we may connect to, and how TLS is checked.

``ip_range_blacklist`` / ``ip_range_whitelist`` are applied to every address we are
about to connect to, after DNS (an IP-literal server name, an SRV target, a static
route alike): a peer cannot point us at the internal network by publishing a name.
The unspecified addresses (0.0.0.0, ::) are always refused.

TLS: with ``federation_verify_certificates`` the peer's certificate must chain to the
system's trusted CAs, plus those in ``federation_custom_ca_list``, and be valid for the
expected name (a DNS name, or an IP address for IP-literal server names, in which case
no SNI is sent).  Without it any certificate is accepted (tests, or networks where
identity is established otherwise); SNI is still sent for DNS names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from homeserver.federation.discovery import is_ip_literal

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IPRangeFilter:
    """Allows an address unless a blacklisted range holds it and no whitelisted one does."""

    def __init__(self, blacklist: Iterable[str], whitelist: Iterable[str] = ()) -> None:
        self._black: list[_Network] = [ipaddress.ip_network(r, strict=False) for r in blacklist]
        self._white: list[_Network] = [ipaddress.ip_network(r, strict=False) for r in whitelist]

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.is_unspecified:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)  # ::ffff:10.0.0.1 is 10.0.0.1
        for candidate in candidates:
            if any(candidate in net for net in self._black) and not any(candidate in net for net in self._white):
                return False
        return True


@implementer(IOpenSSLTrustRoot)
class _SystemAndExtraCAs:
    """The platform's CAs plus extra PEM files (``federation_custom_ca_list``)."""

    def __init__(self, pem_paths: Sequence[str]) -> None:
        self._certs = []
        for path in pem_paths:
            with open(path, "rb") as f:
                data = f.read()
            for block in data.split(b"-----END CERTIFICATE-----")[:-1]:
                self._certs.append(crypto.load_certificate(crypto.FILETYPE_PEM, block + b"-----END CERTIFICATE-----\n"))
        if pem_paths and not self._certs:
            raise ValueError(f"no PEM certificate in {', '.join(pem_paths)}")

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        assert store is not None
        for cert in self._certs:
            store.add_cert(cert)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """A TLS client that accepts any certificate (``federation_verify_certificates: false``)."""

    def __init__(self, context: SSL.Context, hostname: str) -> None:
        self._context = context
        self._sni = None if is_ip_literal(hostname) else hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


class TLSPolicy:
    """Makes the TLS connection creator for a peer's expected name."""

    def __init__(self, *, verify_certificates: bool, custom_ca_paths: Sequence[str] = ()) -> None:
        self._verify = verify_certificates
        self._trust_root: IOpenSSLTrustRoot = (
            _SystemAndExtraCAs(custom_ca_paths) if custom_ca_paths else ssl.platformTrust()
        )
        # One context for all unverified connections: contexts must not change once used.
        self._unverified_context = (
            None
            if verify_certificates
            else ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2).getContext()
        )

    def creator_for(self, tls_server_name: str) -> IOpenSSLClientConnectionCreator:
        if self._unverified_context is not None:
            return _UnverifiedTLS(self._unverified_context, tls_server_name)
        return ssl.optionsForClientTLS(
            tls_server_name,
            trustRoot=self._trust_root,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
        )


def server_tls_options(certificate_path: str, private_key_path: str) -> ssl.CertificateOptions:
    """TLS options for a ``tls: true`` listener: the PEM chain (leaf first) and its key."""
    try:
        with open(certificate_path, "rb") as f:
            chain_pem = f.read()
        with open(private_key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise RuntimeError(f"cannot read the TLS certificate or key: {e}") from None
    end = b"-----END CERTIFICATE-----"
    blocks = [block + end + b"\n" for block in chain_pem.split(end)[:-1]]
    if not blocks:
        raise RuntimeError(f"no PEM certificate in {certificate_path}")
    try:
        leaf = ssl.PrivateCertificate.loadPEM(blocks[0] + key_pem)
        chain = [ssl.Certificate.loadPEM(block).original for block in blocks[1:]]
    except Exception as e:
        raise RuntimeError(f"invalid TLS certificate or key ({certificate_path}, {private_key_path}): {e}") from None
    return ssl.CertificateOptions(
        privateKey=leaf.privateKey.original,
        certificate=leaf.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
