"""Government policy: ``government_policy`` (Tchap's rules) and ``account_validity`` (Synapse).

``government_policy`` gathers what France's Tchap runs as Synapse modules, with the
modules' own key names:

- ``email_domains`` / ``external_server``: which homeserver owns an e-mail address (the
  mapping Tchap's identity server answers at ``/_matrix/identity/api/v1/info``);
- ``room_access_rules``: synapse-room-access-rules (``im.vector.room.access_rules``);
- ``domain_rule_checker``: synapse-domain-rule-checker (who may invite whom);
- ``external_users``: what accounts on the external server may do;
- ``manage_last_admin``: synapse-manage-last-admin (a room whose last admin leaves), plus
  the ``freeze`` mode of Tchap's earlier room-freezing rule.

``account_validity`` keeps Synapse's keys (``enabled``, ``period``, ``renew_at``,
``renew_email_subject``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from homeserver.config.reader import Reader


def _is_domain_or_pattern(value: str) -> bool:
    return bool(value) and "@" not in value and " " not in value


@dataclass(frozen=True, slots=True)
class RoomAccessRulesConfig:
    """synapse-room-access-rules: restricted / unrestricted / direct rooms."""

    enabled: bool = False
    domains_forbidden_when_restricted: tuple[str, ...] = ()
    bypass_for_users: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DomainRuleCheckerConfig:
    """synapse-domain-rule-checker: which inviter domains may invite which domains."""

    enabled: bool = False
    # inviter domain -> invitee domains it may invite; None: every domain may invite any
    domain_mapping: Mapping[str, tuple[str, ...]] | None = None
    can_invite_if_not_in_domain_mapping: bool = True
    can_only_join_rooms_with_invite: bool = False
    can_only_invite_during_room_creation: bool = False
    can_invite_by_third_party_id: bool = True
    domains_prevented_from_being_invited_to_published_rooms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExternalUsersConfig:
    """What accounts on the external server (``external_server``) may do."""

    can_create_public_rooms: bool = False
    can_invite: bool = False
    # whether the other servers list them in their user directory search (remote users
    # are found there through the rooms they share); off, as on Tchap's agent servers
    visible_in_directory: bool = False


LAST_ADMIN_MODES = ("promote", "freeze", "promote_oldest_member")


@dataclass(frozen=True, slots=True)
class ManageLastAdminConfig:
    """synapse-manage-last-admin: what happens when a room's last admin leaves."""

    enabled: bool = False
    # "promote": hand the room over (Tchap's module); "freeze": make it read-only;
    # "promote_oldest_member": only the member joined for the longest time becomes admin
    mode: str = "promote"
    # promote the remaining members with the highest non-default level, if any (in
    # "freeze" mode: instead of freezing, when there is such a member)
    promote_moderators: bool = False


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """``government_policy``."""

    # homeserver -> the e-mail domains it owns: exact ("interieur.gouv.fr") or glob ("*.gouv.fr")
    email_domains: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # the server owning every address no entry matches; its users are "external"
    external_server: str | None = None
    external_users: ExternalUsersConfig = field(default_factory=ExternalUsersConfig)
    room_access_rules: RoomAccessRulesConfig = field(default_factory=RoomAccessRulesConfig)
    domain_rule_checker: DomainRuleCheckerConfig = field(default_factory=DomainRuleCheckerConfig)
    manage_last_admin: ManageLastAdminConfig = field(default_factory=ManageLastAdminConfig)

    def server_for_email_domain(self, domain: str) -> str | None:
        """The homeserver owning addresses at ``domain``: exact entries win over patterns,
        patterns are tried in file order; the external server takes the rest."""
        domain = domain.lower()
        for server, domains in self.email_domains.items():
            if domain in domains:
                return server
        for server, domains in self.email_domains.items():
            if any(fnmatch.fnmatchcase(domain, p) for p in domains if any(c in p for c in "*?[")):
                return server
        return self.external_server


@dataclass(frozen=True, slots=True)
class AccountValidityConfig:
    """``account_validity`` (Synapse): accounts expire unless renewed through an e-mailed link."""

    enabled: bool = False
    period: int | None = None  # ms an account stays valid without renewal
    renew_at: int | None = None  # ms before expiry when the renewal e-mail goes out
    renew_email_subject: str = "Renew your %(app)s account"


def _domain_list(r: Reader, key: str) -> tuple[str, ...]:
    return tuple(
        d.lower()
        for d in r.strings(key, item=_is_domain_or_pattern, item_expected="a domain such as interieur.gouv.fr")
    )


def _read_email_domains(r: Reader) -> Mapping[str, tuple[str, ...]]:
    raw = r.raw("email_domains")
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, dict):
        r.expected("email_domains", "a mapping of homeserver names to lists of e-mail domains", raw)
        return MappingProxyType({})
    section = r.section("email_domains")
    out = {}
    for server in raw:
        if not isinstance(server, str) or not server:
            r.error("email_domains", f"expected homeserver names as keys, got {server!r}")
            continue
        out[server] = _domain_list(section, server)
    return MappingProxyType(out)


def _read_domain_mapping(r: Reader) -> Mapping[str, tuple[str, ...]] | None:
    raw = r.raw("domain_mapping")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.expected("domain_mapping", "a mapping of inviter domains to lists of invitee domains", raw)
        return None
    section = r.section("domain_mapping")
    return MappingProxyType({str(k): _domain_list(section, str(k)) for k in raw})


def read_policy(r: Reader) -> PolicyConfig:
    """Read ``government_policy`` from the top-level reader."""
    s = r.section("government_policy")
    ext = s.section("external_users")
    external_users = ExternalUsersConfig(
        can_create_public_rooms=ext.boolean("can_create_public_rooms", False),
        can_invite=ext.boolean("can_invite", False),
        visible_in_directory=ext.boolean("visible_in_directory", False),
    )
    ext.finish()
    rar = s.section("room_access_rules")
    access = RoomAccessRulesConfig(
        enabled=rar.boolean("enabled", False),
        domains_forbidden_when_restricted=_domain_list(rar, "domains_forbidden_when_restricted"),
        bypass_for_users=rar.strings(
            "bypass_for_users", item=lambda u: u.startswith("@") and ":" in u, item_expected="a user ID"
        ),
    )
    # Tchap's module needs it to query its identity server; here the mapping is local.
    rar.finish(unsupported=("id_server", "fix_admins_for_dm_power_levels"))
    drc = s.section("domain_rule_checker")
    checker = DomainRuleCheckerConfig(
        enabled=drc.boolean("enabled", False),
        domain_mapping=_read_domain_mapping(drc),
        can_invite_if_not_in_domain_mapping=drc.boolean("can_invite_if_not_in_domain_mapping", True),
        can_only_join_rooms_with_invite=drc.boolean("can_only_join_rooms_with_invite", False),
        can_only_invite_during_room_creation=drc.boolean("can_only_invite_during_room_creation", False),
        can_invite_by_third_party_id=drc.boolean("can_invite_by_third_party_id", True),
        domains_prevented_from_being_invited_to_published_rooms=_domain_list(
            drc, "domains_prevented_from_being_invited_to_published_rooms"
        ),
    )
    drc.finish()
    mla = s.section("manage_last_admin")
    last_admin = ManageLastAdminConfig(
        enabled=mla.boolean("enabled", False),
        mode=mla.choice("mode", "promote", LAST_ADMIN_MODES),
        promote_moderators=mla.boolean("promote_moderators", False),
    )
    # the module's own domains_forbidden_when_restricted is room_access_rules'
    mla.finish(unsupported=("domains_forbidden_when_restricted",))
    config = PolicyConfig(
        email_domains=_read_email_domains(s),
        external_server=s.optional_string("external_server", expected="a server name"),
        external_users=external_users,
        room_access_rules=access,
        domain_rule_checker=checker,
        manage_last_admin=last_admin,
    )
    s.finish()
    return config


def read_account_validity(r: Reader) -> AccountValidityConfig:
    """Read Synapse's ``account_validity`` section."""
    s = r.section("account_validity")
    config = AccountValidityConfig(
        enabled=s.boolean("enabled", False),
        period=s.optional_duration("period"),
        renew_at=s.optional_duration("renew_at"),
        renew_email_subject=s.string("renew_email_subject", "Renew your %(app)s account"),
    )
    if config.enabled and config.period is None:
        s.error("period", "required when account_validity is enabled (e.g. 6w)")
    if config.renew_at is not None and config.period is not None and config.renew_at >= config.period:
        s.error("renew_at", "must be shorter than period")
    s.finish(unsupported=("template_dir", "account_renewed_html_path", "invalid_token_html_path"))
    return config
