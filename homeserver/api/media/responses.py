"""Serving media bytes safely: the content type, disposition and security headers.

Only types on an allowlist of passive formats (images, audio, video, plain text, as in
Synapse) are served ``inline``; everything else is an ``attachment``, and types a
browser would run as active content (HTML, XML, SVG, scripts) are served as
``application/octet-stream`` on top of that.  Every media response carries a sandboxing
Content-Security-Policy and ``nosniff``, so even a mislabelled file cannot script the
server's origin.
"""

from __future__ import annotations

import urllib.parse

from twisted.protocols.basic import FileSender
from twisted.web import server

from homeserver.media.service import MediaDownload, is_valid_media_type

INLINE_CONTENT_TYPES = frozenset(
    {
        "text/css",
        "text/plain",
        "text/csv",
        "application/json",
        "application/ld+json",
        "image/jpeg",
        "image/gif",
        "image/png",
        "image/apng",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "video/quicktime",
        "audio/mp4",
        "audio/webm",
        "audio/aac",
        "audio/mpeg",
        "audio/ogg",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/flac",
        "audio/x-flac",
    }
)
# Served as application/octet-stream: anything a browser may render as a document or run.
_ACTIVE_MARKERS = ("html", "xml", "svg", "script", "flash", "multipart", "xsl")
_TOKEN_SEPARATORS = set('()<>@,;:\\"/[]?={} \t')

CONTENT_SECURITY_POLICY = (
    b"sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf;"
    b" style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
)


class _Sender(FileSender):
    CHUNK_SIZE = 2**16


def served_content_type(media_type: str) -> tuple[str, bool]:
    """(Content-Type header, inline?) for a stored content type."""
    base = media_type.split(";", 1)[0].strip().lower()
    if not is_valid_media_type(media_type) or any(marker in base for marker in _ACTIVE_MARKERS):
        return "application/octet-stream", False
    if base in INLINE_CONTENT_TYPES:
        if base.startswith("text/") and "charset" not in media_type.lower():
            return f"{media_type}; charset=UTF-8", True
        return media_type, True
    return media_type, False


def content_disposition(inline: bool, filename: str | None) -> str:
    """RFC 6266: ``filename=`` when the name is a plain token, else ``filename*=utf-8''``."""
    disposition = "inline" if inline else "attachment"
    if not filename:
        return disposition
    if all(32 < ord(c) < 127 and c not in _TOKEN_SEPARATORS for c in filename):
        return f"{disposition}; filename={filename}"
    return f"{disposition}; filename*=utf-8''{urllib.parse.quote(filename.encode('utf-8'), safe='')}"


def set_security_headers(request: server.Request) -> None:
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"X-Content-Security-Policy", b"sandbox;")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Cross-Origin-Resource-Policy", b"cross-origin")
    request.setHeader(b"Referrer-Policy", b"no-referrer")


async def send_media(request: server.Request, media: MediaDownload, filename: str | None) -> None:
    """Stream ``media`` as the response (closing its file), with the safe headers."""
    try:
        content_type, inline = served_content_type(media.media_type)
        set_security_headers(request)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Content-Disposition", content_disposition(inline, filename).encode("ascii"))
        request.setHeader(b"Content-Length", str(media.length).encode("ascii"))
        request.setHeader(b"Cache-Control", b"public,max-age=86400,s-maxage=0,proxy-revalidate")
        request.setHeader(b"X-Robots-Tag", b"noindex, nofollow, noarchive, noimageindex")
        if request.method != b"HEAD" and media.length:
            await _Sender().beginFileTransfer(media.body, request)  # type: ignore[no-untyped-call]
        if not request.finished and not request._disconnected:
            request.finish()
    finally:
        media.body.close()
