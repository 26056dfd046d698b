"""E-mail based accounts: the address -> server mapping, IDs and names derived from an
address, and the validation of addresses (3PID sessions proven by a link or a code).

The Matrix ID of an address is Tchap's: the address lower-cased with ``@`` turned into
``-``, e.g. ``Jean.Dupont@interieur.gouv.fr`` -> ``@jean.dupont-interieur.gouv.fr:<server>``;
a character a user ID may not hold is written ``=xx`` (its hex code, Synapse's escaping).
The address itself is kept as the account's 3PID, so the mapping need not be reversed.
The display name is ``Jean Dupont [interieur.gouv.fr]``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from homeserver.config.policy import PolicyConfig
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden
from homeserver.services.policy.mailer import Mailer
from homeserver.services.uia import UIAContext
from homeserver.storage.threepids import ThreepidRepository, ThreepidSession

EMAIL_STAGE = "m.login.email.identity"
REGISTRATION = "registration"
ADD_THREEPID = "add_threepid"
# Where the e-mailed link points, per purpose (GET with token, client_secret and sid).
SUBMIT_PATHS = {
    REGISTRATION: "/_matrix/client/unstable/registration/email/submit_token",
    ADD_THREEPID: "/_matrix/client/unstable/add_threepid/email/submit_token",
}
# A code or link is good for this long (Synapse's validation_token_lifetime), and a session
# is refused after this many wrong codes.
TOKEN_LIFETIME_MS = 3600 * 1000
MAX_FAILED_ATTEMPTS = 5

_CLIENT_SECRET = re.compile(r"^[0-9a-zA-Z.=_\-]{1,255}$")
# Deliberately simple: one @, a dot in the domain, no spaces or angle brackets.
_EMAIL = re.compile(
    r"^[^@\s<>\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)+$"
)
_LOCALPART_OK = set("abcdefghijklmnopqrstuvwxyz0123456789._-/+")


def normalise_email(address: str) -> str:
    """Validate and lower-case an address; M_INVALID_PARAM naming ``email`` otherwise."""
    address = address.strip()
    if len(address) > 254 or not _EMAIL.match(address):
        raise MatrixError(400, Codes.INVALID_PARAM, "Parameter email is not a valid e-mail address")
    return address.lower()


def localpart_for_email(address: str) -> str:
    """``jean.dupont@interieur.gouv.fr`` -> ``jean.dupont-interieur.gouv.fr``."""
    mapped = address.lower().replace("@", "-")
    return "".join(c if c in _LOCALPART_OK else "".join(f"={b:02x}" for b in c.encode()) for c in mapped)


def display_name_for_email(address: str) -> str:
    """``jean.dupont@interieur.gouv.fr`` -> ``Jean Dupont [interieur.gouv.fr]``."""
    local, _, domain = address.lower().partition("@")
    local = local.split("+", 1)[0]
    words = [w for w in re.split(r"[._]+", local) if w]
    name = " ".join("-".join(part.capitalize() for part in word.split("-")) for word in words)
    return f"{name or local} [{domain}]"


def check_client_secret(secret: Any) -> str:
    if not isinstance(secret, str) or not _CLIENT_SECRET.match(secret):
        raise MatrixError(400, Codes.INVALID_PARAM, "Parameter client_secret must match [0-9a-zA-Z.=_-]{1,255}")
    return secret


class EmailMapping:
    """Which homeserver owns an address (Tchap's identity server ``info`` answer)."""

    def __init__(self, config: PolicyConfig, server_name: str) -> None:
        self._config = config
        self.server_name = server_name

    @property
    def configured(self) -> bool:
        return bool(self._config.email_domains) or self._config.external_server is not None

    def server_for(self, address: str) -> str | None:
        domain = address.rpartition("@")[2]
        if not self.configured:
            return self.server_name
        return self._config.server_for_email_domain(domain)

    def user_id_for(self, address: str) -> str | None:
        """The Matrix ID an address maps to, on the server owning it."""
        server = self.server_for(address)
        return f"@{localpart_for_email(address)}:{server}" if server else None

    def info(self, medium: str | None, address: str | None) -> dict[str, Any]:
        """``GET /_matrix/identity/api/v1/info``: ``{"hs": server}``."""
        if medium != "email":
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter medium must be 'email'")
        if not address:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: address")
        server = self.server_for(normalise_email(address))
        if server is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No homeserver is configured for this address")
        return {"hs": server}


class ThreepidService:
    """Proving ownership of an address, and the addresses bound to accounts."""

    def __init__(
        self,
        *,
        clock: Clock,
        threepids: ThreepidRepository,
        mapping: EmailMapping,
        mailer: Mailer | None,
        public_baseurl: str | None,
        is_mine: Callable[[str], bool],
    ) -> None:
        self._clock = clock
        self._repo = threepids
        self.mapping = mapping
        self._mailer = mailer
        self._baseurl = (public_baseurl or "").rstrip("/")
        self._is_mine = is_mine
        # Called with (user_id, address) once an address is bound (pending e-mail invites).
        self.bound_hooks: list[Callable[[str, str], Awaitable[None]]] = []

    @property
    def enabled(self) -> bool:
        return self._mailer is not None

    def _mailer_or_fail(self) -> Mailer:
        if self._mailer is None:
            raise MatrixError(400, "M_THREEPID_MEDIUM_NOT_SUPPORTED", "E-mail is not configured on this server")
        return self._mailer

    async def request_token(
        self, purpose: str, *, email: str, client_secret: str, send_attempt: int, next_link: str | None = None
    ) -> str:
        """Start (or continue) validating ``email``; e-mail a link and a code; return the sid."""
        mailer = self._mailer_or_fail()
        address = normalise_email(email)
        check_client_secret(client_secret)
        server = self.mapping.server_for(address)
        if server != self.mapping.server_name:
            where = f"the server {server}" if server else "no server"
            raise MatrixError(403, Codes.THREEPID_DENIED, f"This e-mail address belongs to {where}, not to this one")
        if await self._repo.user_for("email", address) is not None:
            raise MatrixError(400, Codes.THREEPID_IN_USE, "This e-mail address is already in use")
        now = self._clock.time_msec()
        session = await self._repo.find_session("email", address, client_secret, purpose)
        if session is not None and now - session.created_ts > TOKEN_LIFETIME_MS:
            session = None  # expired: a new session (find_session returns the first only)
        if session is not None and send_attempt <= session.send_attempt:
            return session.session_id
        previous_attempt = None if session is None else session.send_attempt
        if session is None:
            session = ThreepidSession(
                session_id=secrets.token_urlsafe(16),
                medium="email",
                address=address,
                client_secret=client_secret,
                purpose=purpose,
                send_attempt=send_attempt,
                link_token=secrets.token_urlsafe(32),
                code=f"{secrets.randbelow(10**6):06d}",
                failed_attempts=0,
                created_ts=now,
                validated_at=None,
            )
            await self._repo.delete_older_than(now - 24 * TOKEN_LIFETIME_MS)
            await self._repo.create_session(session)
        else:
            await self._repo.set_send_attempt(session.session_id, send_attempt)
        query = urlencode({"token": session.link_token, "client_secret": client_secret, "sid": session.session_id})
        link = f"{self._baseurl}{SUBMIT_PATHS[purpose]}?{query}"
        what = "create your account" if purpose == REGISTRATION else "add this address to your account"
        text = (
            f"To {what} on {mailer.app_name}, follow this link:\n{link}\n\n"
            f"or type this code in your app: {session.code}\n\n"
            "If you did not ask for this, ignore this message.\n"
        )
        try:
            await mailer.send(address, f"{mailer.app_name}: validate your e-mail address", text)
        except MatrixError:
            # not sent: the same send_attempt must try again, not answer "already sent"
            # (a new session is left unusable: nobody has its token or code)
            await self._repo.set_send_attempt(
                session.session_id, send_attempt - 1 if previous_attempt is None else previous_attempt
            )
            raise
        return session.session_id

    def submit_url(self, purpose: str) -> str:
        return f"{self._baseurl}{SUBMIT_PATHS[purpose]}"

    async def submit_token(self, *, sid: str, client_secret: str, token: str, purpose: str | None = None) -> None:
        """Validate a session with the link's token or the code; M_THREEPID_AUTH_FAILED otherwise."""
        session = await self._repo.get_session(sid)
        failed = MatrixError(400, Codes.THREEPID_AUTH_FAILED, "Invalid or expired validation token")
        if session is None or session.client_secret != client_secret or (purpose and session.purpose != purpose):
            raise MatrixError(400, Codes.THREEPID_AUTH_FAILED, "Unknown validation session (sid / client_secret)")
        if session.validated_at is not None:
            return
        now = self._clock.time_msec()
        if now - session.created_ts > TOKEN_LIFETIME_MS or session.failed_attempts >= MAX_FAILED_ATTEMPTS:
            raise failed
        if not (secrets.compare_digest(token, session.link_token) or secrets.compare_digest(token, session.code)):
            await self._repo.count_failure(sid)
            raise failed
        await self._repo.mark_validated(sid, now)

    async def validated(self, creds: Any, purpose: str) -> dict[str, Any]:
        """The validated address of ``threepid_creds`` ({sid, client_secret})."""
        if not isinstance(creds, dict):
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: threepid_creds")
        sid, secret = creds.get("sid"), creds.get("client_secret")
        if not isinstance(sid, str) or not isinstance(secret, str):
            raise MatrixError(400, Codes.MISSING_PARAM, "threepid_creds needs sid and client_secret")
        session = await self._repo.get_session(sid)
        if session is None or session.client_secret != secret or session.purpose != purpose:
            raise MatrixError(401, Codes.THREEPID_AUTH_FAILED, "Unknown validation session")
        if session.validated_at is None:
            raise MatrixError(401, Codes.THREEPID_AUTH_FAILED, "The e-mail address has not been validated yet")
        return {"medium": session.medium, "address": session.address, "validated_at": session.validated_at}

    async def email_stage(self, auth: dict[str, Any], ctx: UIAContext) -> dict[str, Any]:
        """The ``m.login.email.identity`` UIA stage (registration)."""
        creds = auth.get("threepid_creds", auth.get("threepidCreds"))
        return await self.validated(creds, REGISTRATION)

    # -- bound addresses ---------------------------------------------------------------

    async def bind(self, user_id: str, address: str, validated_at: int) -> None:
        if not await self._repo.add(user_id, "email", address, validated_at, self._clock.time_msec()):
            raise MatrixError(400, Codes.THREEPID_IN_USE, "This e-mail address is already in use")
        for hook in self.bound_hooks:
            await hook(user_id, address)

    async def add_from_session(self, user_id: str, creds: Any) -> None:
        found = await self.validated(creds, ADD_THREEPID)
        await self.bind(user_id, found["address"], found["validated_at"])

    async def list_for(self, user_id: str) -> list[dict[str, Any]]:
        return [
            {"medium": m, "address": a, "validated_at": v, "added_at": t}
            for m, a, v, t in await self._repo.for_user(user_id)
        ]

    async def emails_of(self, user_id: str) -> list[str]:
        return [a for m, a, _, _ in await self._repo.for_user(user_id) if m == "email"]

    async def delete(self, user_id: str, medium: str, address: str) -> None:
        if medium != "email":
            raise MatrixError(400, Codes.INVALID_PARAM, "Parameter medium must be 'email'")
        if not await self._repo.remove(user_id, medium, address.lower()):
            raise MatrixError(404, Codes.THREEPID_NOT_FOUND, "This address is not bound to your account")

    async def user_for_email(self, address: str) -> str | None:
        return await self._repo.user_for("email", address.lower())

    async def resolve_invite(self, medium: str, address: str) -> str:
        """The Matrix ID a 3PID invite by e-mail goes to (through the mapping)."""
        if medium != "email":
            raise MatrixError(400, Codes.INVALID_PARAM, "Only e-mail addresses can be invited (medium 'email')")
        normalised = normalise_email(address)
        bound = await self._repo.user_for("email", normalised)
        if bound is not None:
            return bound
        user_id = self.mapping.user_id_for(normalised)
        if user_id is None:
            raise forbidden("No homeserver is configured for this address")
        return user_id
