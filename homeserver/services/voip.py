"""TURN credentials for VoIP calls (GET /voip/turnServer).

With a shared secret, credentials follow the TURN REST API that coturn implements
(``use-auth-secret``): username ``<expiry seconds>:<user_id>``, password the base64
HMAC-SHA1 of the username keyed with the secret.  Otherwise the configured fixed
username and password are handed out.  No TURN URIs configured: an empty object, which
clients read as "no TURN server" (Synapse answers the same).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from homeserver.config.voip import TurnSettings
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.services.auth import Requester


class TurnService:
    def __init__(self, *, clock: Clock, settings: TurnSettings) -> None:
        self._clock = clock
        self._settings = settings

    def credentials(self, requester: Requester) -> dict[str, Any]:
        """The TURN servers and credentials for ``requester`` (``{}`` when none are configured)."""
        s = self._settings
        if requester.is_guest and not s.turn_allow_guests:
            raise MatrixError(403, Codes.FORBIDDEN, "Guest users may not use the TURN servers")
        if not s.turn_uris:
            return {}
        ttl_seconds = s.turn_user_lifetime // 1000
        if s.turn_shared_secret:
            expiry = (self._clock.time_msec() + s.turn_user_lifetime) // 1000
            username = f"{expiry}:{requester.user_id}"
            digest = hmac.new(s.turn_shared_secret.encode(), username.encode(), hashlib.sha1).digest()
            password = base64.b64encode(digest).decode("ascii")
        elif s.turn_username and s.turn_password:
            username, password = s.turn_username, s.turn_password
        else:
            return {}
        return {"username": username, "password": password, "ttl": ttl_seconds, "uris": list(s.turn_uris)}
