"""URL previews: Open Graph data of a web page, its image stored as media.

:func:`parse_html` is a pure function over the page's bytes.  :class:`PreviewService`
fetches through a :class:`~homeserver.media.safe_http.SafeHttpClient` (which refuses
private addresses), stores the preview image as the requester's media (so clients get an
``mxc://`` URI and never contact the site themselves) and caches answers for an hour.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from html.parser import HTMLParser
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.media import thumbnailer
from homeserver.media.safe_http import FetchResult

logger = logging.getLogger(__name__)

CACHE_TTL_SECONDS = 3600.0
CACHE_ENTRIES = 1000
MAX_OG_VALUE = 1000
MAX_OG_TAGS = 50
_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([a-zA-Z0-9_-]+)""", re.IGNORECASE)


class _OpenGraphParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.description: str | None = None
        self.title_parts: list[str] = []
        self._in_title = False
        self._title_done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k.lower(): (v or "") for k, v in attrs}
        if tag == "meta":
            key = attributes.get("property") or attributes.get("name") or ""
            content = attributes.get("content")
            if content is None:
                return
            key = key.strip().lower()
            if key.startswith("og:") and len(self.og) < MAX_OG_TAGS:
                self.og.setdefault(key, content.strip()[:MAX_OG_VALUE])
            elif key == "description" and self.description is None:
                self.description = content.strip()[:MAX_OG_VALUE]
        elif tag == "title" and not self._title_done:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            self._title_done = True

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)


def _charset(content_type: str | None, body: bytes) -> str:
    if content_type:
        header = re.search(r"charset\s*=\s*\"?([a-zA-Z0-9_-]+)", content_type, re.IGNORECASE)
        if header:
            return header.group(1)
    meta = _CHARSET_RE.search(body[:4096])
    return meta.group(1).decode("ascii") if meta else "utf-8"


def parse_html(body: bytes, content_type: str | None) -> dict[str, str]:
    """The page's ``og:*`` tags, with og:title/og:description taken from <title> and the
    description meta tag when the page has no Open Graph ones."""
    try:
        text = body.decode(_charset(content_type, body), errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    parser = _OpenGraphParser()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # noqa: BLE001 (broken HTML gives whatever was found)
        logger.debug("HTML parse error", exc_info=True)
    og = dict(parser.og)
    title = " ".join("".join(parser.title_parts).split())
    if "og:title" not in og and title:
        og["og:title"] = title[:MAX_OG_VALUE]
    if "og:description" not in og and parser.description:
        og["og:description"] = parser.description
    return og


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class Fetcher(Protocol):
    async def get(self, url: str) -> FetchResult: ...


class MediaStore(Protocol):
    async def store_new_media(self, user_id: str, data: bytes, media_type: str, upload_name: str | None) -> str: ...


class PreviewService:
    def __init__(self, *, clock: Clock, http: Fetcher, media: MediaStore, max_image_pixels: int) -> None:
        self._clock = clock
        self._http = http
        self._media = media
        self._max_image_pixels = max_image_pixels
        self._cache: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    async def preview(self, user_id: str, url: str) -> dict[str, Any]:
        """The Open Graph data for ``url``; MatrixError 403 for blocked addresses."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MatrixError(400, Codes.INVALID_PARAM, "Only http and https URLs can be previewed")
        now = self._clock.time()
        cached = self._cache.get(url)
        if cached is not None and now - cached[0] < CACHE_TTL_SECONDS:
            return dict(cached[1])
        result = await self._http.get(url)
        if not 200 <= result.code < 300:
            raise MatrixError(502, Codes.UNKNOWN, f"The URL answered with HTTP status {result.code}")
        media_type = _media_type(result.media_type)
        og: dict[str, Any]
        if media_type in ("text/html", "application/xhtml+xml"):
            og = dict(parse_html(result.body, result.media_type))
            image_url = og.pop("og:image", None)
            if image_url:
                og.update(await self._image_from_url(user_id, urljoin(result.url, image_url)))
        elif thumbnailer.thumbnail_type_for(media_type):
            og = await self._store_image(user_id, result.body, media_type)
            name = urlsplit(result.url).path.rsplit("/", 1)[-1]
            if name:
                og["og:title"] = name[:MAX_OG_VALUE]
        else:
            og = {}
        self._cache[url] = (now, og)
        self._cache.move_to_end(url)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return dict(og)

    async def _image_from_url(self, user_id: str, url: str) -> dict[str, Any]:
        try:
            result = await self._http.get(url)
        except MatrixError as e:
            logger.info("preview image %s not fetched: %s", url, e)
            return {}
        media_type = _media_type(result.media_type)
        if not 200 <= result.code < 300 or thumbnailer.thumbnail_type_for(media_type) is None:
            return {}
        return await self._store_image(user_id, result.body, media_type)

    async def _store_image(self, user_id: str, data: bytes, media_type: str) -> dict[str, Any]:
        size = thumbnailer.image_size(data, max_pixels=self._max_image_pixels)
        if size is None:
            return {}
        mxc = await self._media.store_new_media(user_id, data, media_type, None)
        return {
            "og:image": mxc,
            "og:image:type": media_type,
            "matrix:image:size": len(data),
            "og:image:width": size[0],
            "og:image:height": size[1],
        }
