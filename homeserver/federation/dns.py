"""DNS for federation: SRV lookups (twisted.names) and A/AAAA resolution (the reactor's resolver).

Thin adapters behind the protocols that :mod:`homeserver.federation.discovery` and the
transport use, so that the rules can be tested with fakes.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostResolution, IResolutionReceiver
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSNotImplementedError
from zope.interface import implementer

from homeserver.federation.discovery import SrvRecord

# Seconds to wait for each try; twisted.names' default adds up to a minute.
SRV_TIMEOUTS = (2, 5)


class HostResolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]:
        """The IP addresses of ``host`` (IPv6 and IPv4); [] when it has none."""
        ...


class TwistedSrvResolver:
    """SRV lookups through the system's DNS servers (resolv.conf)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._resolver: Any = None

    async def lookup_srv(self, name: str) -> list[SrvRecord]:
        if self._resolver is None:
            from twisted.names import client

            self._resolver = client.Resolver(resolv="/etc/resolv.conf", reactor=self._reactor)
        try:
            answers, _, _ = await self._resolver.lookupService(name, timeout=SRV_TIMEOUTS)
        except (DNSNameError, DNSNotImplementedError):
            return []
        records = []
        for answer in answers:
            if answer.type != dns.SRV or not answer.payload:
                continue
            payload = answer.payload
            records.append(
                SrvRecord(
                    priority=payload.priority,
                    weight=payload.weight,
                    port=payload.port,
                    target=payload.target.name.decode("ascii") or ".",
                    ttl=answer.ttl,
                )
            )
        return records


@implementer(IResolutionReceiver)
class _Collector:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: defer.Deferred[list[str]] = defer.Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


class ReactorHostResolver:
    """A/AAAA resolution with the reactor's name resolver (getaddrinfo in a thread)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    async def resolve(self, host: str, port: int) -> list[str]:
        collector = _Collector()
        self._reactor.nameResolver.resolveHostName(collector, host, port)
        addresses = await collector.done
        return list(dict.fromkeys(addresses))
