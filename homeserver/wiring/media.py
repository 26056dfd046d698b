"""The media repository (homeserver/media, homeserver/api/media): storage, rules, URL previews
and the routes of the "media" listener resource and of Synapse's media admin API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.api.media import admin as media_admin_api
from homeserver.api.media import media as media_api
from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router
from homeserver.media.repository import MediaRepository
from homeserver.media.service import MediaRules, MediaService, NoRemoteMedia
from homeserver.media.storage import LocalDiskBackend
from homeserver.services.auth import Requester
from homeserver.services.ratelimit import Ratelimiter
from homeserver.storage.database import Database
from homeserver.wiring.core import RunInThread, rate

if TYPE_CHECKING:
    from homeserver.media.preview import PreviewService


@dataclass
class MediaParts:
    media: MediaService
    # None unless url_preview_enabled
    url_previews: PreviewService | None
    # the "media" listener resource
    routes: Callable[[Router], None]
    # /_synapse/admin/v1 media endpoints, served with the other admin APIs on "client"
    admin_routes: Callable[[Router], None]


def build_media(
    config: HomeserverConfig,
    *,
    reactor: Any,
    clock: Clock,
    db: Database,
    authenticate: RequestAuthenticator,
    require_admin: Callable[[Requester], Awaitable[None]],
    run_in_thread: RunInThread,
) -> MediaParts:
    media = MediaService(
        server_name=config.server_name,
        clock=clock,
        repo=MediaRepository(db),
        backend=LocalDiskBackend(config.media_store_path, run_in_thread=run_in_thread),
        remote=NoRemoteMedia(),  # replaced by the federation wiring, once federation exists
        rules=MediaRules.from_config(config),
        create_limiter=Ratelimiter(clock, rate(config.rc_media_create)),
        run_in_thread=run_in_thread,
    )
    url_previews = None
    if config.url_preview_enabled:  # the preview machinery is imported only when it is on
        from homeserver.media.preview import PreviewService
        from homeserver.media.safe_http import IPPolicy, SafeHttpClient, threaded_resolver

        url_previews = PreviewService(
            clock=clock,
            http=SafeHttpClient(
                reactor=reactor,
                policy=IPPolicy(config.url_preview_ip_range_blacklist, config.url_preview_ip_range_whitelist),
                resolve=threaded_resolver(run_in_thread),
                max_size=config.max_spider_size,
            ),
            media=media,
            max_image_pixels=config.max_image_pixels,
        )

    def routes(router: Router) -> None:
        media_api.register(router, authenticate=authenticate, media=media, previews=url_previews)

    def admin_routes(router: Router) -> None:
        media_admin_api.register(router, authenticate=authenticate, require_admin=require_admin, media=media)

    return MediaParts(media=media, url_previews=url_previews, routes=routes, admin_routes=admin_routes)
