"""Application service registration files (Synapse's format), validated together.

A registration names the service, where to reach it (``url``; ``null`` means "never push"),
the two tokens, the bot user (``sender_localpart``) and the namespaces of users, room
aliases and room IDs it is interested in.  :func:`load_registrations` reads every file and
reports every problem at once, each naming the file and the key.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import yaml

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import is_valid_user_localpart

NAMESPACE_KINDS = ("users", "aliases", "rooms")


@dataclass(frozen=True, slots=True)
class Namespace:
    regex: re.Pattern[str]
    exclusive: bool

    def matches(self, value: str) -> bool:
        # As Synapse: anchored at the start only; registrations add their own "$".
        return self.regex.match(value) is not None


@dataclass(frozen=True, slots=True)
class ApplicationService:
    """One registration.  ``msc3202`` turns on device masquerading, to-device messages,
    device-list changes and one-time-key counts in transactions (encrypting bridges)."""

    id: str
    url: str | None
    as_token: str
    hs_token: str
    sender: str
    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()
    rate_limited: bool = True
    protocols: tuple[str, ...] = ()
    receive_ephemeral: bool = False
    msc3202: bool = False
    source: str = ""

    # -- namespaces --------------------------------------------------------------------

    def is_user_in_namespace(self, user_id: str) -> bool:
        return any(ns.matches(user_id) for ns in self.users)

    def is_interested_in_user(self, user_id: str) -> bool:
        """The service's bot or one of its users: who it may act as."""
        return user_id == self.sender or self.is_user_in_namespace(user_id)

    def is_exclusive_user(self, user_id: str) -> bool:
        return user_id == self.sender or any(ns.exclusive and ns.matches(user_id) for ns in self.users)

    def is_interested_in_alias(self, alias: str) -> bool:
        return any(ns.matches(alias) for ns in self.aliases)

    def is_exclusive_alias(self, alias: str) -> bool:
        return any(ns.exclusive and ns.matches(alias) for ns in self.aliases)

    def is_interested_in_room_id(self, room_id: str) -> bool:
        return any(ns.matches(room_id) for ns in self.rooms)

    def __repr__(self) -> str:  # never print the tokens
        return f"ApplicationService(id={self.id!r}, url={self.url!r}, sender={self.sender!r})"


class RegistrationError(Exception):
    """Every problem found in the registration files, one per line."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.errors.append(f"{self.source}: {key}: {message}" if key else f"{self.source}: {message}")


def parse_registration(data: Any, source: str, server_name: str, errors: list[str]) -> ApplicationService | None:
    """One registration from its parsed YAML; problems go to ``errors`` (None if any)."""
    p = _Problems(source)
    if not isinstance(data, dict):
        p.add("", "expected a mapping at the top level")
        errors.extend(p.errors)
        return None
    strings: dict[str, str] = {}
    for key in ("id", "as_token", "hs_token", "sender_localpart"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            p.add(key, "required, a non-empty string")
        else:
            strings[key] = value
    if "url" not in data:
        p.add("url", "required: the service's base URL, or null for a service that receives nothing")
    url = data.get("url")
    if url is not None:
        parsed = urllib.parse.urlparse(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            p.add("url", f"expected an http(s) URL or null, got {url!r}")
    if "as_token" in strings and strings.get("as_token") == strings.get("hs_token"):
        p.add("hs_token", "must differ from as_token")
    localpart = strings.get("sender_localpart")
    if localpart is not None and (not is_valid_user_localpart(localpart) or localpart != localpart.lower()):
        p.add("sender_localpart", f"{localpart!r} is not a valid user localpart (a-z, 0-9, =_-./+)")
    namespaces: dict[str, tuple[Namespace, ...]] = {k: () for k in NAMESPACE_KINDS}
    raw_ns = data.get("namespaces")
    if not isinstance(raw_ns, dict):
        p.add("namespaces", "required, a mapping with users, aliases and rooms lists")
    else:
        for kind in raw_ns:
            if kind not in NAMESPACE_KINDS:
                p.add(f"namespaces.{kind}", "unknown namespace (expected users, aliases or rooms)")
        for kind in NAMESPACE_KINDS:
            namespaces[kind] = _read_namespaces(raw_ns.get(kind), f"namespaces.{kind}", p)
    flags: dict[str, bool] = {}
    for key, default in (
        ("rate_limited", True),
        ("receive_ephemeral", False),
        ("de.sorunome.msc2409.push_ephemeral", False),
        ("org.matrix.msc3202", False),
    ):
        value = data.get(key, default)
        if value is None:
            value = default
        if not isinstance(value, bool):
            p.add(key, f"expected true or false, got {value!r}")
            value = default
        flags[key] = value
    protocols = data.get("protocols") or []
    if not isinstance(protocols, list) or not all(isinstance(x, str) and x for x in protocols):
        p.add("protocols", "expected a list of protocol names")
        protocols = []
    if p.errors:
        errors.extend(p.errors)
        return None
    return ApplicationService(
        id=strings["id"],
        url=url.rstrip("/") if isinstance(url, str) else None,
        as_token=strings["as_token"],
        hs_token=strings["hs_token"],
        sender=f"@{strings['sender_localpart']}:{server_name}",
        users=namespaces["users"],
        aliases=namespaces["aliases"],
        rooms=namespaces["rooms"],
        rate_limited=flags["rate_limited"],
        protocols=tuple(protocols),
        receive_ephemeral=flags["receive_ephemeral"] or flags["de.sorunome.msc2409.push_ephemeral"],
        msc3202=flags["org.matrix.msc3202"],
        source=source,
    )


def _read_namespaces(raw: Any, key: str, p: _Problems) -> tuple[Namespace, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        p.add(key, "expected a list of {exclusive, regex} entries")
        return ()
    out: list[Namespace] = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            p.add(where, "expected a mapping with exclusive and regex")
            continue
        regex, exclusive = item.get("regex"), item.get("exclusive")
        if not isinstance(exclusive, bool):
            p.add(f"{where}.exclusive", f"required, true or false, got {exclusive!r}")
        if not isinstance(regex, str) or not regex:
            p.add(f"{where}.regex", "required, a non-empty regular expression")
            continue
        try:
            compiled = re.compile(regex)
        except re.error as e:
            p.add(f"{where}.regex", f"invalid regular expression {regex!r}: {e}")
            continue
        if isinstance(exclusive, bool):
            out.append(Namespace(compiled, exclusive))
    return tuple(out)


def check_conflicts(services: Sequence[ApplicationService]) -> list[str]:
    """Duplicate IDs or tokens, and exclusive namespaces claimed by two services."""
    errors: list[str] = []
    seen: dict[tuple[str, str], ApplicationService] = {}
    for svc in services:
        for what, value in (("id", svc.id), ("as_token", svc.as_token), ("hs_token", svc.hs_token)):
            other = seen.get((what, value))
            if other is not None:
                errors.append(
                    f"{svc.source}: {what}: the same {what} is already used by {other.source} (id {other.id})"
                )
            seen.setdefault((what, value), svc)
        for kind in ("as_token", "hs_token"):
            other = seen.get(("as_token" if kind == "hs_token" else "hs_token", getattr(svc, kind)))
            if other is not None and other is not svc:
                errors.append(f"{svc.source}: {kind}: this token is a token of {other.source} (id {other.id})")
    for i, a in enumerate(services):
        for b in services[i + 1 :]:
            if a.sender == b.sender:
                errors.append(f"{b.source}: sender_localpart: {b.sender} is already the sender of {a.source}")
            for kind in ("users", "aliases"):
                for na in getattr(a, kind):
                    for nb in getattr(b, kind):
                        if na.exclusive and nb.exclusive and _may_overlap(na.regex, nb.regex):
                            errors.append(
                                f"{b.source}: namespaces.{kind}: exclusive regex {nb.regex.pattern!r} overlaps"
                                f" the exclusive regex {na.regex.pattern!r} of {a.source} (id {a.id})"
                            )
            for na in a.users:
                if na.exclusive and na.matches(b.sender):
                    errors.append(
                        f"{a.source}: namespaces.users: exclusive regex {na.regex.pattern!r}"
                        f" claims {b.sender}, the sender of {b.source}"
                    )
            for nb in b.users:
                if nb.exclusive and nb.matches(a.sender):
                    errors.append(
                        f"{b.source}: namespaces.users: exclusive regex {nb.regex.pattern!r}"
                        f" claims {a.sender}, the sender of {a.source}"
                    )
    return errors


def _may_overlap(a: re.Pattern[str], b: re.Pattern[str]) -> bool:
    """Whether two namespaces can match one ID.  Exact overlap of regular expressions is
    costly in general; we test example strings generated from each against the other,
    which catches the real mistakes (the same or a nested prefix)."""
    if a.pattern == b.pattern:
        return True
    return any(b.match(s) for s in _examples(a)) or any(a.match(s) for s in _examples(b))


def _examples(pattern: re.Pattern[str], limit: int = 32) -> list[str]:
    try:
        parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    except Exception:
        return []
    results = _gen(list(parsed), limit)
    return results[:limit]


def _gen(items: list[Any], limit: int) -> list[str]:
    outs = [""]
    for op, arg in items:
        name = str(op)
        choices: list[str]
        if name == "LITERAL":
            choices = [chr(arg)]
        elif name == "ANY":
            choices = ["a"]
        elif name == "IN":
            choices = [_in_example(arg)]
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = arg
            inner = _gen(list(sub), limit)
            counts = sorted({low, min(high, low + 1)})
            choices = [x * n for x in inner for n in counts]
        elif name == "SUBPATTERN":
            choices = _gen(list(arg[-1]), limit)
        elif name == "BRANCH":
            choices = [s for alt in arg[1] for s in _gen(list(alt), limit)]
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue
        else:
            choices = [""]
        outs = [o + c for o in outs for c in choices][:limit]
    return outs


def _in_example(items: Iterable[Any]) -> str:
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            return {"CATEGORY_DIGIT": "0", "CATEGORY_SPACE": " "}.get(str(arg), "a")
    return "a"


def load_registrations(paths: Sequence[str], server_name: str) -> tuple[ApplicationService, ...]:
    """Read and check every registration file; raise :class:`RegistrationError` listing
    every problem (file, key, what is wrong)."""
    errors: list[str] = []
    services: list[ApplicationService] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except OSError as e:
            errors.append(f"{path}: cannot read the registration file: {e.strerror}")
            continue
        except yaml.YAMLError as e:
            errors.append(f"{path}: not valid YAML: {e}")
            continue
        svc = parse_registration(data, path, server_name, errors)
        if svc is not None:
            services.append(svc)
    errors.extend(check_conflicts(services))
    if errors:
        raise RegistrationError(errors)
    return tuple(services)


class AppServices:
    """The registered services, with the questions the rest of the server asks."""

    def __init__(self, services: Sequence[ApplicationService]) -> None:
        self.all = tuple(services)
        self._by_token = {s.as_token: s for s in services}
        self._by_id = {s.id: s for s in services}

    def __bool__(self) -> bool:
        return bool(self.all)

    def by_as_token(self, token: str) -> ApplicationService | None:
        return self._by_token.get(token)

    def by_id(self, service_id: str) -> ApplicationService | None:
        return self._by_id.get(service_id)

    def exclusive_owner_of_user(self, user_id: str) -> ApplicationService | None:
        return next((s for s in self.all if s.is_exclusive_user(user_id)), None)

    def exclusive_owner_of_alias(self, alias: str) -> ApplicationService | None:
        return next((s for s in self.all if s.is_exclusive_alias(alias)), None)

    def check_username(self, user_id: str, app_service: ApplicationService | None) -> None:
        """Raise M_EXCLUSIVE unless ``user_id`` may be registered (by ``app_service``, or
        by anyone when None)."""
        owner = self.exclusive_owner_of_user(user_id)
        if app_service is None:
            if owner is not None:
                raise MatrixError(400, Codes.EXCLUSIVE, "This user ID is reserved by an application service")
            return
        if not app_service.is_interested_in_user(user_id):
            raise MatrixError(400, Codes.EXCLUSIVE, "User ID is not in the application service's namespace")
        if owner is not None and owner is not app_service:
            raise MatrixError(400, Codes.EXCLUSIVE, "This user ID is reserved by another application service")

    def check_alias(self, alias: str, user_id: str) -> None:
        """Raise M_EXCLUSIVE if ``alias`` is reserved by a service ``user_id`` does not act for."""
        owner = self.exclusive_owner_of_alias(alias)
        if owner is not None and not owner.is_interested_in_user(user_id):
            raise MatrixError(400, Codes.EXCLUSIVE, "This room alias is reserved by an application service")
