"""Request and upload size limits, the media store, thumbnails, URL previews, retention.

The keys are Synapse's (``max_upload_size``, ``media_store_path``, ``max_image_pixels``,
``dynamic_thumbnails``, ``thumbnail_sizes``, ``max_pending_media_uploads``,
``unused_expiration_time``, ``media_upload_limits``, ``media_retention``,
``enable_authenticated_media``, ``url_preview_*``, ``max_spider_size``) with Synapse's
defaults, with two exceptions:

* ``max_request_size`` is ours: the cap on JSON request bodies (every API except media
  uploads).  Synapse caps them at 12.5 MiB; we default to 10 MiB because to-device
  messages that share encryption keys with a large room's devices legitimately run to
  several megabytes.
* ``enable_authenticated_media`` defaults to false (Synapse: true) while clients move to
  the authenticated ``/_matrix/client/v1/media`` endpoints: when true, media uploaded from
  then on is no longer served by the legacy unauthenticated ``/_matrix/media`` downloads.
* ``url_preview_ip_range_blacklist`` defaults to Synapse's list of unroutable ranges
  (Synapse has no default and refuses to start without one when previews are on).
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.config.federation import DEFAULT_IP_RANGE_BLACKLIST, is_ip_range
from homeserver.config.reader import Reader

DEFAULT_MAX_REQUEST_SIZE = "10M"
DEFAULT_MAX_UPLOAD_SIZE = "50M"
DEFAULT_MEDIA_STORE_PATH = "media_store"
THUMBNAIL_METHODS = ("crop", "scale")


@dataclass(frozen=True, slots=True)
class ThumbnailSize:
    """One pre-generated thumbnail: ``crop`` fills exactly, ``scale`` fits within."""

    width: int
    height: int
    method: str


@dataclass(frozen=True, slots=True)
class MediaUploadLimit:
    """At most ``max_size`` bytes uploaded by one user within ``time_period`` ms."""

    time_period: int
    max_size: int


@dataclass(frozen=True, slots=True)
class MediaRetention:
    """How long (ms) unused media is kept; ``None`` keeps it forever."""

    local_media_lifetime: int | None = None
    remote_media_lifetime: int | None = None


# Synapse's default thumbnail sizes.
DEFAULT_THUMBNAIL_SIZES: tuple[ThumbnailSize, ...] = (
    ThumbnailSize(32, 32, "crop"),
    ThumbnailSize(96, 96, "crop"),
    ThumbnailSize(320, 240, "scale"),
    ThumbnailSize(640, 480, "scale"),
    ThumbnailSize(800, 600, "scale"),
)


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """Size limits (bytes), the media directory (absolute) and the media repository's rules."""

    max_request_size: int
    max_upload_size: int
    media_store_path: str
    max_image_pixels: int
    dynamic_thumbnails: bool
    thumbnail_sizes: tuple[ThumbnailSize, ...]
    max_pending_media_uploads: int
    unused_expiration_time: int
    media_upload_limits: tuple[MediaUploadLimit, ...]
    media_retention: MediaRetention
    enable_authenticated_media: bool
    url_preview_enabled: bool
    url_preview_ip_range_blacklist: tuple[str, ...]
    url_preview_ip_range_whitelist: tuple[str, ...]
    max_spider_size: int


def _thumbnail_sizes(r: Reader) -> tuple[ThumbnailSize, ...]:
    if not r.has("thumbnail_sizes"):
        r.ignore("thumbnail_sizes")
        return DEFAULT_THUMBNAIL_SIZES
    sizes = []
    for entry in r.sections("thumbnail_sizes"):
        size = ThumbnailSize(
            width=entry.integer("width", 0, min=1, max=10_000),
            height=entry.integer("height", 0, min=1, max=10_000),
            method=entry.choice("method", "scale", THUMBNAIL_METHODS),
        )
        for key in ("width", "height"):
            if not entry.has(key):
                entry.error(key, "required key is missing; expected an integer 1-10000")
        entry.finish()
        if size.width and size.height:
            sizes.append(size)
    return tuple(sizes)


def _upload_limits(r: Reader) -> tuple[MediaUploadLimit, ...]:
    limits = []
    for entry in r.sections("media_upload_limits"):
        for key in ("time_period", "max_size"):
            if not entry.has(key):
                entry.error(key, "required key is missing")
        limit = MediaUploadLimit(time_period=entry.duration("time_period", 0), max_size=entry.size("max_size", 0))
        entry.ignore("info_uri", "can_upgrade")
        entry.finish()
        limits.append(limit)
    # Longest period first: its total is the one most likely to be over the limit.
    return tuple(sorted(limits, key=lambda limit: -limit.time_period))


def _retention(r: Reader) -> MediaRetention:
    section = r.section("media_retention")
    retention = MediaRetention(
        local_media_lifetime=section.optional_duration("local_media_lifetime"),
        remote_media_lifetime=section.optional_duration("remote_media_lifetime"),
    )
    section.finish()
    return retention


def read_media(r: Reader) -> MediaSettings:
    """Read the media settings from the top-level reader."""
    settings = MediaSettings(
        max_request_size=r.size("max_request_size", DEFAULT_MAX_REQUEST_SIZE),
        max_upload_size=r.size("max_upload_size", DEFAULT_MAX_UPLOAD_SIZE),
        media_store_path=r.path_value("media_store_path", DEFAULT_MEDIA_STORE_PATH),
        max_image_pixels=r.size("max_image_pixels", "32M"),
        dynamic_thumbnails=r.boolean("dynamic_thumbnails", False),
        thumbnail_sizes=_thumbnail_sizes(r),
        max_pending_media_uploads=r.integer("max_pending_media_uploads", 5, min=1),
        unused_expiration_time=r.duration("unused_expiration_time", "24h"),
        media_upload_limits=_upload_limits(r),
        media_retention=_retention(r),
        enable_authenticated_media=r.boolean("enable_authenticated_media", False),
        url_preview_enabled=r.boolean("url_preview_enabled", False),
        url_preview_ip_range_blacklist=r.strings(
            "url_preview_ip_range_blacklist",
            DEFAULT_IP_RANGE_BLACKLIST,
            item=is_ip_range,
            item_expected="an IP address or CIDR range such as 10.0.0.0/8",
            expected="a list of CIDR ranges",
        ),
        url_preview_ip_range_whitelist=r.strings(
            "url_preview_ip_range_whitelist",
            item=is_ip_range,
            item_expected="an IP address or CIDR range such as 10.0.0.0/8",
            expected="a list of CIDR ranges",
        ),
        max_spider_size=r.size("max_spider_size", "10M"),
    )
    if settings.max_request_size < 1024:
        r.error(
            "max_request_size",
            f"must be at least 1K, got {settings.max_request_size} bytes",
        )
    if settings.max_image_pixels < 1:
        r.error("max_image_pixels", "must be at least 1")
    return settings
