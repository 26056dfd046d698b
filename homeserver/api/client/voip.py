"""VoIP: GET /voip/turnServer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web import server

from homeserver.config.homeserver import HomeserverConfig
from homeserver.config.voip import TurnSettings
from homeserver.core.clock import Clock
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router, client_path
from homeserver.services.voip import TurnService


def register(router: Router, *, authenticate: RequestAuthenticator, turn: TurnService) -> None:
    async def turn_server(request: server.Request) -> tuple[int, Any]:
        return 200, turn.credentials(await authenticate(request))

    router.add("GET", client_path("/voip/turnServer"), turn_server)


def build_voip_routes(
    config: HomeserverConfig, *, clock: Clock, authenticate: RequestAuthenticator
) -> Callable[[Router], None]:
    """The route adder for app.py, with the TURN settings read from ``config``."""
    turn = TurnService(
        clock=clock,
        settings=TurnSettings(
            turn_uris=config.turn_uris,
            turn_shared_secret=config.turn_shared_secret,
            turn_username=config.turn_username,
            turn_password=config.turn_password,
            turn_user_lifetime=config.turn_user_lifetime,
            turn_allow_guests=config.turn_allow_guests,
        ),
    )
    return lambda router: register(router, authenticate=authenticate, turn=turn)
