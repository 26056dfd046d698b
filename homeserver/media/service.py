"""The media repository's rules: uploads, downloads, thumbnails, remote media, admin, retention.

Collaborators are explicit: a :class:`MediaRepository` (metadata), a
:class:`~homeserver.media.storage.MediaBackend` (bytes), a :class:`RemoteMediaFetcher`
(other servers' media: :class:`~homeserver.media.remote.FederationMediaFetcher`), a rate limiter for
``rc_media_create`` and ``run_in_thread`` for hashing and Pillow work, which never runs on
the reactor thread.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

from twisted.internet import defer

from homeserver.config import HomeserverConfig
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError, forbidden, limit_exceeded, not_found
from homeserver.core.ids import is_valid_server_name
from homeserver.media import thumbnailer
from homeserver.media.repository import LocalMedia, MediaRepository, RemoteMedia, ThumbnailInfo
from homeserver.media.storage import (
    MediaBackend,
    RunInThread,
    is_valid_media_id,
    local_content_key,
    local_thumbnail_key,
    local_thumbnails_prefix,
    new_media_id,
    remote_content_key,
    remote_thumbnail_key,
    remote_thumbnails_prefix,
)

logger = logging.getLogger(__name__)

NOT_YET_UPLOADED = "M_NOT_YET_UPLOADED"
CANNOT_OVERWRITE_MEDIA = "M_CANNOT_OVERWRITE_MEDIA"
USER_LIMIT_EXCEEDED = "M_USER_LIMIT_EXCEEDED"

# Download waits for a pending upload this long by default, and at most this long.
DEFAULT_TIMEOUT_MS = 20_000
MAX_TIMEOUT_MS = 60_000
# Dynamic thumbnails larger than this on a side are served from the pre-generated ones.
MAX_DYNAMIC_SIDE = 2048
# Recorded accesses are written to the database at most this often (seconds).
ACCESS_FLUSH_INTERVAL = 60.0

T = TypeVar("T")

_MEDIA_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}(\s*;.{0,200})?$")


def is_valid_media_type(value: str) -> bool:
    """A Content-Type we store and send back (no control characters, a sane length)."""
    return bool(_MEDIA_TYPE_RE.match(value)) and value.isascii() and not any(c in value for c in "\r\n\0")


@dataclass(frozen=True, slots=True)
class MediaRules:
    """The settings the media service enforces (from the media section of the config)."""

    max_upload_size: int
    max_image_pixels: int = 32 * 1024 * 1024
    dynamic_thumbnails: bool = False
    thumbnail_sizes: tuple[tuple[int, int, str], ...] = (
        (32, 32, "crop"),
        (96, 96, "crop"),
        (320, 240, "scale"),
        (640, 480, "scale"),
        (800, 600, "scale"),
    )
    max_pending_media_uploads: int = 5
    unused_expiration_time: int = 24 * 3600 * 1000
    upload_limits: tuple[tuple[int, int], ...] = ()  # (time_period ms, max_size bytes)
    enable_authenticated_media: bool = False
    local_media_lifetime: int | None = None
    remote_media_lifetime: int | None = None

    @classmethod
    def from_config(cls, config: HomeserverConfig) -> MediaRules:
        return cls(
            max_upload_size=config.max_upload_size,
            max_image_pixels=config.max_image_pixels,
            dynamic_thumbnails=config.dynamic_thumbnails,
            thumbnail_sizes=tuple((s.width, s.height, s.method) for s in config.thumbnail_sizes),
            max_pending_media_uploads=config.max_pending_media_uploads,
            unused_expiration_time=config.unused_expiration_time,
            upload_limits=tuple((lim.time_period, lim.max_size) for lim in config.media_upload_limits),
            enable_authenticated_media=config.enable_authenticated_media,
            local_media_lifetime=config.media_retention.local_media_lifetime,
            remote_media_lifetime=config.media_retention.remote_media_lifetime,
        )


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    """Media downloaded from another server."""

    data: bytes
    media_type: str
    upload_name: str | None = None


class RemoteMediaFetcher(Protocol):
    """Downloads media from its origin server (the federation media API)."""

    async def fetch(self, server_name: str, media_id: str, *, max_size: int) -> FetchedMedia:
        """The media's bytes and type; raises a 404 MatrixError when the origin has none."""


class NoRemoteMedia:
    """A fetcher for a server without federation (and unit tests): every remote media ID is unknown."""

    async def fetch(self, server_name: str, media_id: str, *, max_size: int) -> FetchedMedia:
        raise not_found("Remote media is not available from this server")


class Limiter(Protocol):
    def check(self, key: str, *, update: bool = True, n: float = 1.0) -> None: ...


@dataclass(slots=True)
class MediaDownload:
    """An open media file for the HTTP layer to stream (and close)."""

    media_type: str
    length: int
    upload_name: str | None
    body: BinaryIO


class _SingleFlight:
    """Runs one coroutine per key at a time; concurrent callers share its result."""

    def __init__(self) -> None:
        self._waiting: dict[Any, list[defer.Deferred[Any]]] = {}

    async def run(self, key: Any, work: Callable[[], Awaitable[T]]) -> T:
        if key in self._waiting:
            d: defer.Deferred[T] = defer.Deferred()
            self._waiting[key].append(d)
            return await d
        self._waiting[key] = []
        try:
            result = await work()
        except BaseException as e:
            for waiter in self._waiting.pop(key):
                waiter.errback(e)
            raise
        for waiter in self._waiting.pop(key):
            waiter.callback(result)
        return result


def select_thumbnail(
    infos: Iterable[ThumbnailInfo], width: int, height: int, method: str, desired_type: str = "image/png"
) -> ThumbnailInfo | None:
    """Synapse's choice among pre-generated thumbnails: the same method, preferring ones at
    least as large as asked, then the closest aspect (crop) and size."""
    big: list[tuple[tuple[Any, ...], ThumbnailInfo]] = []
    small: list[tuple[tuple[Any, ...], ThumbnailInfo]] = []
    for info in infos:
        if info.method != method:
            continue
        t_w, t_h = info.width, info.height
        size_quality = abs((width - t_w) * (height - t_h))
        type_quality = desired_type != info.media_type
        if method == "crop":
            aspect_quality = abs(width * t_h - height * t_w)
            min_quality = 0 if width <= t_w and height <= t_h else 1
            key: tuple[Any, ...] = (aspect_quality, min_quality, size_quality, type_quality, info.media_length)
        else:
            key = (size_quality, type_quality, info.media_length)
        (big if t_w >= width or t_h >= height else small).append((key, info))
    for candidates in (big, small):
        if candidates:
            return min(candidates, key=lambda c: c[0])[1]
    return None


class MediaService:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        repo: MediaRepository,
        backend: MediaBackend,
        remote: RemoteMediaFetcher,
        rules: MediaRules,
        create_limiter: Limiter,
        run_in_thread: RunInThread,
    ) -> None:
        self.server_name = server_name
        self.rules = rules
        self._clock = clock
        self._repo = repo
        self._backend = backend
        self._remote = remote
        self._create_limiter = create_limiter
        self._run_in_thread = run_in_thread
        self._uploading: set[str] = set()
        self._single = _SingleFlight()
        # media -> time of the last access (ms), written out by flush_accesses()
        self._accessed_local: dict[str, int] = {}
        self._accessed_remote: dict[tuple[str, str], int] = {}
        self._last_flush = clock.time()
        self._flushes_in_flight: set[defer.Deferred[None]] = set()

    def set_remote_fetcher(self, remote: RemoteMediaFetcher) -> None:
        """Replace the remote media fetcher (the composition root does, once federation exists)."""
        self._remote = remote

    def mxc(self, media_id: str) -> str:
        return f"mxc://{self.server_name}/{media_id}"

    # -- uploads -----------------------------------------------------------------------

    async def create_media_id(self, user_id: str) -> tuple[str, int]:
        """Reserve a media ID for a later upload: (mxc URI, unused_expires_at)."""
        self._create_limiter.check(user_id)
        now = self._clock.time_msec()
        pending, oldest = await self._repo.count_pending(user_id, now - self.rules.unused_expiration_time)
        if pending >= self.rules.max_pending_media_uploads:
            retry = (oldest or now) + self.rules.unused_expiration_time - now
            raise limit_exceeded(max(retry, 0))
        media_id = new_media_id()
        await self._repo.create_pending(media_id, user_id, now, authenticated=self.rules.enable_authenticated_media)
        return self.mxc(media_id), now + self.rules.unused_expiration_time

    async def upload(self, user_id: str, data: bytes, media_type: str, upload_name: str | None) -> str:
        """Store a new upload; returns its mxc URI."""
        self._create_limiter.check(user_id)
        await self._check_upload_allowed(user_id, len(data))
        return await self.store_new_media(user_id, data, media_type, upload_name)

    async def store_new_media(self, user_id: str, data: bytes, media_type: str, upload_name: str | None) -> str:
        """Store media on a user's behalf without the upload limits (URL preview images)."""
        media_id = new_media_id()
        sha256 = await self._store(local_content_key(media_id), data)
        await self._repo.store_local(
            media_id=media_id,
            user_id=user_id,
            media_type=media_type,
            media_length=len(data),
            upload_name=upload_name,
            now_ms=self._clock.time_msec(),
            sha256=sha256,
            authenticated=self.rules.enable_authenticated_media,
        )
        await self._thumbnail_upload(None, media_id, media_id, data, media_type)
        return self.mxc(media_id)

    async def upload_to(
        self, user_id: str, server_name: str, media_id: str, data: bytes, media_type: str, upload_name: str | None
    ) -> None:
        """Upload to a media ID reserved with :meth:`create_media_id`."""
        if server_name != self.server_name:
            raise not_found("Non-local server name specified")
        if not is_valid_media_id(media_id):
            raise not_found("Unknown media ID")
        if media_id in self._uploading:
            raise MatrixError(409, CANNOT_OVERWRITE_MEDIA, "Media ID is being uploaded to")
        self._uploading.add(media_id)
        try:
            media = await self._repo.get_local(media_id)
            if media is None:
                raise not_found("Unknown media ID")
            if media.user_id != user_id:
                raise forbidden("Only the creator of the media ID can upload to it")
            if media.uploaded:
                raise MatrixError(409, CANNOT_OVERWRITE_MEDIA, "Media ID already has content")
            if media.created_ts < self._clock.time_msec() - self.rules.unused_expiration_time:
                raise not_found("Media ID has expired")
            await self._check_upload_allowed(user_id, len(data))
            sha256 = await self._store(local_content_key(media_id), data)
            done = await self._repo.complete_pending(
                media_id=media_id,
                media_type=media_type,
                media_length=len(data),
                upload_name=upload_name,
                now_ms=self._clock.time_msec(),
                sha256=sha256,
            )
            if not done:
                raise MatrixError(409, CANNOT_OVERWRITE_MEDIA, "Media ID already has content")
        finally:
            self._uploading.discard(media_id)
        await self._thumbnail_upload(None, media_id, media_id, data, media_type)

    async def _check_upload_allowed(self, user_id: str, size: int) -> None:
        if size > self.rules.max_upload_size:
            raise MatrixError(413, Codes.TOO_LARGE, "Upload request body is too large")
        now = self._clock.time_msec()
        for period, max_size in self.rules.upload_limits:
            used = await self._repo.uploaded_size(user_id, now - period)
            if used + size > max_size:
                raise MatrixError(403, USER_LIMIT_EXCEEDED, "Media upload limit exceeded")

    async def _store(self, key: str, data: bytes) -> str:
        digest: str = await self._run_in_thread(lambda: hashlib.sha256(data).hexdigest())
        await self._backend.store(key, data)
        return digest

    async def _thumbnail_upload(
        self, origin: str | None, media_id: str, file_id: str, data: bytes, media_type: str
    ) -> None:
        """Pre-generate the configured thumbnails; failures only cost the thumbnails."""
        if thumbnailer.thumbnail_type_for(media_type) is None:
            return
        try:
            made: thumbnailer.Thumbnails = await self._run_in_thread(
                functools.partial(
                    thumbnailer.generate_thumbnails,
                    data,
                    media_type,
                    self.rules.thumbnail_sizes,
                    max_pixels=self.rules.max_image_pixels,
                )
            )
            if made.image_size is None:
                logger.info("not thumbnailing %s: not a supported image or too many pixels", media_id)
                return
            await self._repo.set_image_size(origin, media_id, *made.image_size)
            await self._save_thumbnails(origin, media_id, file_id, made.thumbnails)
        except Exception:
            logger.exception("failed to thumbnail %s", media_id)

    async def _save_thumbnails(
        self, origin: str | None, media_id: str, file_id: str, thumbs: list[thumbnailer.Thumbnail]
    ) -> None:
        infos = []
        for t in thumbs:
            key = self._thumbnail_key(origin, file_id, t.width, t.height, t.media_type, t.method)
            await self._backend.store(key, t.data)
            infos.append(ThumbnailInfo(t.width, t.height, t.method, t.media_type, len(t.data)))
        if origin is None:
            await self._repo.store_local_thumbnails(media_id, infos)
        else:
            await self._repo.store_remote_thumbnails(origin, media_id, infos)

    def _thumbnail_key(
        self, origin: str | None, file_id: str, width: int, height: int, media_type: str, method: str
    ) -> str:
        if origin is None:
            return local_thumbnail_key(file_id, width, height, media_type, method)
        return remote_thumbnail_key(origin, file_id, width, height, media_type, method)

    # -- downloads ---------------------------------------------------------------------

    async def download(
        self,
        server_name: str,
        media_id: str,
        *,
        authenticated: bool,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        allow_remote: bool = True,
    ) -> MediaDownload:
        """The media file.  ``authenticated`` is False on the legacy unauthenticated
        endpoints, which do not serve media uploaded with enable_authenticated_media."""
        if server_name == self.server_name:
            local = await self._local_media(media_id, authenticated, timeout_ms)
            assert local.media_type is not None and local.media_length is not None
            body = await self._backend.open(local_content_key(media_id))
            if body is None:
                logger.warning("media %s is in the database but not in the media store", media_id)
                raise not_found()
            self._accessed(None, media_id)
            return MediaDownload(local.media_type, local.media_length, local.upload_name, body)
        remote = await self._remote_media(server_name, media_id, authenticated, allow_remote)
        body = await self._backend.open(remote_content_key(server_name, remote.filesystem_id))
        if body is None:
            raise not_found()
        self._accessed(server_name, media_id)
        return MediaDownload(remote.media_type, remote.media_length, remote.upload_name, body)

    async def thumbnail(
        self,
        server_name: str,
        media_id: str,
        width: int,
        height: int,
        method: str,
        *,
        authenticated: bool,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        allow_remote: bool = True,
    ) -> MediaDownload:
        """A thumbnail: the exact size when dynamic_thumbnails is on, else the nearest
        pre-generated one.  Media we cannot thumbnail gives 400 M_UNKNOWN (as Synapse)."""
        origin: str | None
        if server_name == self.server_name:
            local = await self._local_media(media_id, authenticated, timeout_ms)
            origin, file_id = None, media_id
            media_type, size = local.media_type or "", _size(local.image_width, local.image_height)
            content_key = local_content_key(media_id)
        else:
            remote = await self._remote_media(server_name, media_id, authenticated, allow_remote)
            origin, file_id = server_name, remote.filesystem_id
            media_type, size = remote.media_type, _size(remote.image_width, remote.image_height)
            content_key = remote_content_key(server_name, remote.filesystem_id)
        if size is None or thumbnailer.thumbnail_type_for(media_type) is None:
            raise MatrixError(
                400,
                Codes.UNKNOWN,
                "Cannot find any thumbnails for the requested media: it is not a supported image"
                " (image/jpeg, image/png, image/gif, image/webp) or thumbnailing it failed",
            )
        infos = await (
            self._repo.local_thumbnails(media_id) if origin is None else self._repo.remote_thumbnails(origin, media_id)
        )
        chosen: ThumbnailInfo | None = None
        if self.rules.dynamic_thumbnails and width <= MAX_DYNAMIC_SIDE and height <= MAX_DYNAMIC_SIDE:
            want = (width, height) if method == "crop" else thumbnailer.scaled_size(*size, width, height)
            chosen = next((i for i in infos if (i.width, i.height, i.method) == (*want, method)), None)
            if chosen is None:
                chosen = await self._single.run(
                    (origin, media_id, width, height, method),
                    lambda: self._generate_thumbnail(
                        origin, media_id, file_id, content_key, media_type, width, height, method
                    ),
                )
        if chosen is None:
            chosen = select_thumbnail(infos, width, height, method)
        if chosen is None:
            raise MatrixError(400, Codes.UNKNOWN, "Cannot find any thumbnails for the requested media")
        body = await self._backend.open(
            self._thumbnail_key(origin, file_id, chosen.width, chosen.height, chosen.media_type, chosen.method)
        )
        if body is None:
            raise not_found()
        self._accessed(origin, media_id)
        return MediaDownload(chosen.media_type, chosen.media_length, None, body)

    async def _generate_thumbnail(
        self,
        origin: str | None,
        media_id: str,
        file_id: str,
        content_key: str,
        media_type: str,
        width: int,
        height: int,
        method: str,
    ) -> ThumbnailInfo | None:
        data = await self._backend.read(content_key)
        if data is None:
            return None
        thumb: thumbnailer.Thumbnail | None = await self._run_in_thread(
            functools.partial(
                thumbnailer.generate_thumbnail,
                data,
                media_type,
                width,
                height,
                method,
                max_pixels=self.rules.max_image_pixels,
            )
        )
        if thumb is None:
            return None
        await self._save_thumbnails(origin, media_id, file_id, [thumb])
        return ThumbnailInfo(thumb.width, thumb.height, thumb.method, thumb.media_type, len(thumb.data))

    async def _local_media(self, media_id: str, authenticated: bool, timeout_ms: int) -> LocalMedia:
        """Uploaded local media, waiting up to ``timeout_ms`` for a pending upload."""
        if not is_valid_media_id(media_id):
            raise not_found()
        deadline = self._clock.time_msec() + min(max(timeout_ms, 0), MAX_TIMEOUT_MS)
        while True:
            media = await self._repo.get_local(media_id)
            if media is None or media.quarantined_by or (media.authenticated and not authenticated):
                raise not_found()
            if media.uploaded:
                return media
            now = self._clock.time_msec()
            if media.created_ts < now - self.rules.unused_expiration_time:
                raise not_found()
            if now >= deadline:
                raise MatrixError(504, NOT_YET_UPLOADED, "Media has not been uploaded yet")
            await self._clock.sleep(min(0.5, (deadline - now) / 1000))

    async def _remote_media(
        self, server_name: str, media_id: str, authenticated: bool, allow_remote: bool
    ) -> RemoteMedia:
        if not _plausible_server_name(server_name) or not is_valid_media_id(media_id):
            raise not_found()
        cached = await self._repo.get_remote(server_name, media_id)
        if cached is None:
            if not allow_remote:
                raise not_found()
            cached = await self._single.run(
                ("remote", server_name, media_id), lambda: self._fetch_remote(server_name, media_id)
            )
        if cached.quarantined_by or (cached.authenticated and not authenticated):
            raise not_found()
        return cached

    async def _fetch_remote(self, server_name: str, media_id: str) -> RemoteMedia:
        fetched = await self._remote.fetch(server_name, media_id, max_size=self.rules.max_upload_size)
        if len(fetched.data) > self.rules.max_upload_size:
            raise MatrixError(502, Codes.TOO_LARGE, "Remote media is larger than max_upload_size")
        filesystem_id = new_media_id()
        sha256 = await self._store(remote_content_key(server_name, filesystem_id), fetched.data)
        now = self._clock.time_msec()
        await self._repo.store_remote(
            RemoteMedia(
                media_origin=server_name,
                media_id=media_id,
                filesystem_id=filesystem_id,
                media_type=fetched.media_type,
                media_length=len(fetched.data),
                upload_name=fetched.upload_name,
                created_ts=now,
                last_access_ts=now,
                sha256=sha256,
                quarantined_by=None,
                authenticated=self.rules.enable_authenticated_media,
            )
        )
        stored = await self._repo.get_remote(server_name, media_id)
        if stored is None:
            raise not_found()
        await self._thumbnail_upload(server_name, media_id, filesystem_id, fetched.data, fetched.media_type)
        # Re-read for the image size the thumbnailer recorded.
        return await self._repo.get_remote(server_name, media_id) or stored

    # -- access times ------------------------------------------------------------------

    def _accessed(self, origin: str | None, media_id: str) -> None:
        if origin is None:
            self._accessed_local[media_id] = self._clock.time_msec()
        else:
            self._accessed_remote[(origin, media_id)] = self._clock.time_msec()
        if self._clock.time() - self._last_flush >= ACCESS_FLUSH_INTERVAL:
            defer.ensureDeferred(self.flush_accesses()).addErrback(
                lambda f: logger.warning("could not record media accesses: %s", f.getErrorMessage())
            )

    async def flush_accesses(self) -> None:
        """Write the access times recorded since the last flush (retention reads them).

        Returns once every access recorded before the call is written, including those a
        background flush already took and has not finished writing: housekeeping must not
        delete media whose access is still in flight."""
        self._last_flush = self._clock.time()
        local, self._accessed_local = self._accessed_local, {}
        remote, self._accessed_remote = self._accessed_remote, {}
        earlier = list(self._flushes_in_flight)
        if local or remote:
            write = defer.ensureDeferred(self._repo.touch(local, remote))
            self._flushes_in_flight.add(write)
            try:
                await write
            finally:
                self._flushes_in_flight.discard(write)
        for pending in earlier:  # a failed background flush was logged by its own errback
            try:
                await pending
            except Exception:
                pass

    # -- admin -------------------------------------------------------------------------

    async def set_quarantine(self, server_name: str, media_id: str, quarantined_by: str | None) -> None:
        """Quarantine (or release, with None) one media item; unknown ones are ignored."""
        if server_name == self.server_name:
            await self._repo.set_local_quarantine(media_id, quarantined_by)
        else:
            await self._repo.set_remote_quarantine(server_name, media_id, quarantined_by)

    async def set_protected(self, media_id: str, protected: bool) -> None:
        if not await self._repo.set_protected(media_id, protected):
            raise not_found("Unknown media")

    async def delete_local_media(self, server_name: str, media_id: str) -> list[str]:
        if server_name != self.server_name:
            raise MatrixError(400, Codes.UNKNOWN, "Can only delete local media")
        if await self._repo.get_local(media_id) is None:
            raise not_found("Unknown media")
        await self._delete_local([media_id])
        return [media_id]

    async def delete_user_media(self, user_id: str, *, start: int = 0, limit: int = 100) -> list[str]:
        """Delete the media a user uploaded (``limit`` items from ``start``)."""
        media = await self._repo.user_media(user_id)
        ids = [m.media_id for m in media[start : start + limit]]
        await self._delete_local(ids)
        return ids

    async def list_user_media(self, user_id: str) -> list[LocalMedia]:
        return await self._repo.user_media(user_id)

    async def purge_remote_cache(self, before_ts: int) -> int:
        """Delete cached remote media last accessed before ``before_ts``; returns the count."""
        await self.flush_accesses()
        deleted = 0
        while True:
            batch = await self._repo.remote_unused_since(before_ts)
            for media in batch:
                await self._backend.delete(remote_content_key(media.media_origin, media.filesystem_id))
                await self._backend.delete_prefix(remote_thumbnails_prefix(media.media_origin, media.filesystem_id))
                await self._repo.delete_remote(media.media_origin, media.media_id)
            deleted += len(batch)
            if len(batch) < 500:
                return deleted

    async def _delete_local(self, media_ids: list[str]) -> None:
        for media_id in media_ids:
            await self._backend.delete(local_content_key(media_id))
            await self._backend.delete_prefix(local_thumbnails_prefix(media_id))
        await self._repo.delete_local(media_ids)

    # -- housekeeping ------------------------------------------------------------------

    async def run_housekeeping(self) -> None:
        """Flush access times, drop expired unused media IDs and apply media_retention."""
        try:
            await self.flush_accesses()
            now = self._clock.time_msec()
            await self._repo.delete_local(await self._repo.expired_pending(now - self.rules.unused_expiration_time))
            if self.rules.local_media_lifetime is not None:
                while batch := await self._repo.local_unused_since(now - self.rules.local_media_lifetime):
                    logger.info("media retention: deleting %d local media", len(batch))
                    await self._delete_local(batch)
            if self.rules.remote_media_lifetime is not None:
                purged = await self.purge_remote_cache(now - self.rules.remote_media_lifetime)
                if purged:
                    logger.info("media retention: purged %d cached remote media", purged)
        except Exception:
            logger.exception("media housekeeping failed")

    def housekeeping_task(self) -> Callable[[], defer.Deferred[None]]:
        """A function for ``task.LoopingCall`` (it never raises, so the loop keeps going)."""
        return lambda: defer.ensureDeferred(self.run_housekeeping())


def _plausible_server_name(server_name: str) -> bool:
    """A valid server name that could be a host: no empty DNS labels (``..`` is grammatical)."""
    if not is_valid_server_name(server_name):
        return False
    host = server_name.rsplit(":", 1)[0] if not server_name.endswith("]") else server_name
    return host.startswith("[") or all(host.split("."))


def _size(width: int | None, height: int | None) -> tuple[int, int] | None:
    return (width, height) if width and height else None
