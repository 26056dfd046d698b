"""Request and upload size limits, and where uploaded media is stored.

``max_upload_size`` and ``media_store_path`` are Synapse's keys.  ``max_request_size`` is
ours: the cap on JSON request bodies (every API except media uploads).  Synapse caps
them at 12.5 MiB; we default to 10 MiB because to-device messages that share
encryption keys with a large room's devices legitimately run to several megabytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.config.reader import Reader

DEFAULT_MAX_REQUEST_SIZE = "10M"
DEFAULT_MAX_UPLOAD_SIZE = "50M"
DEFAULT_MEDIA_STORE_PATH = "media_store"


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """Size limits (bytes) and the media directory (absolute)."""

    max_request_size: int
    max_upload_size: int
    media_store_path: str


def read_media(r: Reader) -> MediaSettings:
    """Read the size limits and the media store path from the top-level reader."""
    settings = MediaSettings(
        max_request_size=r.size("max_request_size", DEFAULT_MAX_REQUEST_SIZE),
        max_upload_size=r.size("max_upload_size", DEFAULT_MAX_UPLOAD_SIZE),
        media_store_path=r.path_value("media_store_path", DEFAULT_MEDIA_STORE_PATH),
    )
    if settings.max_request_size < 1024:
        r.error(
            "max_request_size",
            f"must be at least 1K, got {settings.max_request_size} bytes",
        )
    return settings
