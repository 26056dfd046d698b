"""TURN servers for VoIP calls: Synapse's ``turn_*`` keys.

``turn_uris`` lists the TURN servers clients should use.  Credentials are either
short-lived ones derived from ``turn_shared_secret`` (coturn's ``use-auth-secret`` REST API:
the username is ``<expiry>:<user_id>``, the password its HMAC-SHA1 in base64), or the fixed
``turn_username``/``turn_password``.  Without ``turn_uris`` the server offers no TURN server.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class TurnSettings:
    turn_uris: tuple[str, ...] = ()
    turn_shared_secret: str | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    turn_user_lifetime: int = 3_600_000
    turn_allow_guests: bool = True


def read_turn(r: Reader) -> TurnSettings:
    """Read the ``turn_*`` keys (``turn_shared_secret_path`` names a file holding the secret)."""
    secret = r.optional_string("turn_shared_secret")
    secret_path = r.optional_path("turn_shared_secret_path")
    if secret_path is not None:
        if secret is not None:
            r.error("turn_shared_secret_path", "give turn_shared_secret or turn_shared_secret_path, not both")
        else:
            try:
                with open(secret_path, encoding="utf-8") as f:
                    secret = f.read().strip()
            except OSError as exc:
                r.error("turn_shared_secret_path", f"cannot read {secret_path}: {exc.strerror}")
    return TurnSettings(
        turn_uris=r.strings("turn_uris"),
        turn_shared_secret=secret or None,
        turn_username=r.optional_string("turn_username"),
        turn_password=r.optional_string("turn_password"),
        turn_user_lifetime=r.duration("turn_user_lifetime", "1h"),
        turn_allow_guests=r.boolean("turn_allow_guests", True),
    )
