"""``listeners``: the ports the server listens on and what each one serves.

Same shape as Synapse's::

    listeners:
      - port: 8008
        bind_addresses: ["127.0.0.1"]
        type: http
        x_forwarded: true
        resources:
          - names: [client, federation]
            compress: false

plus the top-level ``tls_certificate_path`` / ``tls_private_key_path`` that a ``tls: true``
listener needs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from homeserver.config.reader import Reader

DEFAULT_BIND_ADDRESSES: tuple[str, ...] = ("::", "0.0.0.0")

LISTENER_TYPES = ("http", "metrics")

KNOWN_RESOURCES = frozenset(
    {
        "client",
        "consent",
        "federation",
        "health",
        "keys",
        "media",
        "metrics",
        "openid",
        "replication",
        "static",
    }
)

# As in Synapse, some resources bring others along: "client" also serves the media and
# static paths, "federation" also serves media, the key API and OpenID userinfo.
IMPLIED_RESOURCES: dict[str, frozenset[str]] = {
    "client": frozenset({"media", "static"}),
    "federation": frozenset({"media", "keys", "openid"}),
}

# Listener keys Synapse has and we do not implement yet.
_UNSUPPORTED_LISTENER_KEYS = (
    "path",
    "tag",
    "request_id_header",
    "additional_resources",
    "mode",
)


def is_ip_address(value: str) -> bool:
    """True for an IPv4 or IPv6 literal (without brackets)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ListenerResource:
    """One ``resources`` entry: a group of resource names and whether to gzip them."""

    names: tuple[str, ...]
    compress: bool = False


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One TCP listener."""

    port: int
    bind_addresses: tuple[str, ...] = DEFAULT_BIND_ADDRESSES
    type: str = "http"
    tls: bool = False
    x_forwarded: bool = False
    resources: tuple[ListenerResource, ...] = ()

    @property
    def resource_names(self) -> frozenset[str]:
        """Every resource name listed on this listener, as written."""
        return frozenset(name for resource in self.resources for name in resource.names)

    def serves(self, name: str) -> bool:
        """True when this listener serves resource ``name``.

        Counts the resources Synapse implies ("client" brings "media" and "static";
        "federation" brings "media", "keys" and "openid"); ``health`` is on every HTTP
        listener.
        """
        if self.type != "http":
            return self.type == name
        listed = self.resource_names
        if name in listed or name == "health":
            return True
        return any(name in IMPLIED_RESOURCES.get(listed_name, ()) for listed_name in listed)

    def compresses(self, name: str) -> bool:
        """True when the resource group that lists ``name`` asks for gzip."""
        return any(resource.compress for resource in self.resources if name in resource.names)


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """The listeners and the TLS certificate they share."""

    listeners: tuple[ListenerConfig, ...]
    tls_certificate_path: str | None
    tls_private_key_path: str | None


def _read_resources(r: Reader) -> tuple[ListenerResource, ...]:
    resources: list[ListenerResource] = []
    for entry in r.sections("resources"):
        names = entry.strings("names", expected="a list of resource names")
        for name in names:
            if name not in KNOWN_RESOURCES:
                entry.warn(
                    "names",
                    f'unknown resource "{name}", ignored (known: {", ".join(sorted(KNOWN_RESOURCES))})',
                )
        if not names:
            entry.error("names", "expected a non-empty list of resource names")
        resources.append(
            ListenerResource(
                names=tuple(n for n in names if n in KNOWN_RESOURCES),
                compress=entry.boolean("compress", False),
            )
        )
        entry.finish()
    return tuple(resources)


def _read_listener(r: Reader) -> ListenerConfig | None:
    if r.has("path") and not r.has("port"):
        r.ignore("path")
        r.error("path", "UNIX socket listeners are not supported yet; give a port instead")
        return None
    if not r.has("port"):
        r.raw("port")
        r.error("port", "required key is missing; expected an integer 1-65535")
    port = r.integer("port", 0, min=1, max=65535)

    kind = r.raw("type", "http")
    if kind in ("manhole", "replication"):
        r.error("type", f'"{kind}" listeners are not supported')
        kind = "http"
    elif kind not in LISTENER_TYPES:
        r.expected("type", 'one of "http", "metrics"', kind)
        kind = "http"

    addresses = list(
        r.strings(
            "bind_addresses",
            item=is_ip_address,
            item_expected="an IP address such as 127.0.0.1 or ::",
            expected="a list of IP addresses",
        )
    )
    single = r.optional_string("bind_address", expected="an IP address such as 127.0.0.1 or ::")
    if single is not None:
        if is_ip_address(single):
            addresses.append(single)
        else:
            r.expected("bind_address", "an IP address such as 127.0.0.1 or ::", single)
    if not addresses:
        # Synapse's defaults: every interface; the metrics listener does not do IPv6.
        addresses = ["0.0.0.0"] if kind == "metrics" else list(DEFAULT_BIND_ADDRESSES)

    tls = r.boolean("tls", False)
    x_forwarded = r.boolean("x_forwarded", False)
    resources = _read_resources(r) if kind == "http" else ()
    if kind == "metrics":
        r.ignore("resources")
    elif not resources:
        r.warn("resources", "this HTTP listener serves nothing (no resources listed)")
    r.finish(unsupported=_UNSUPPORTED_LISTENER_KEYS)
    if not port:
        return None
    return ListenerConfig(
        port=port,
        bind_addresses=tuple(dict.fromkeys(addresses)),
        type=str(kind),
        tls=tls,
        x_forwarded=x_forwarded,
        resources=resources,
    )


def _overlaps(a: ListenerConfig, b: ListenerConfig) -> bool:
    if a.port != b.port:
        return False
    wildcard = {"::", "0.0.0.0"}
    return bool(set(a.bind_addresses) & set(b.bind_addresses)) or bool(
        wildcard & (set(a.bind_addresses) | set(b.bind_addresses))
    )


def read_listeners(r: Reader) -> ListenerSettings:
    """Read ``listeners`` and the TLS certificate paths from the top-level reader."""
    found: list[tuple[Reader, ListenerConfig]] = []
    for entry in r.sections("listeners"):
        listener = _read_listener(entry)
        if listener is None:
            continue
        for other_entry, other in found:
            if _overlaps(other, listener):
                entry.error(
                    "port",
                    f"port {listener.port} is already bound by {other_entry.path}",
                )
                break
        found.append((entry, listener))
    if not r.has("listeners"):
        r.warn(
            "listeners",
            "no listeners configured: the server will not accept any connection",
        )

    certificate = r.optional_path("tls_certificate_path")
    private_key = r.optional_path("tls_private_key_path")
    for entry, listener in found:
        if listener.tls and (certificate is None or private_key is None):
            entry.error(
                "tls",
                "a TLS listener needs both tls_certificate_path and tls_private_key_path to be set",
            )
    return ListenerSettings(tuple(listener for _, listener in found), certificate, private_key)
