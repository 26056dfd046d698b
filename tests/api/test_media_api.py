"""The media repository over HTTP, on both engines: uploads, downloads, thumbnails, limits,
safe serving, URL previews (loopback only) and the admin API."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest_twisted
import treq
from PIL import Image
from twisted.internet import defer, reactor
from twisted.web import resource, server
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests.api.conftest import Client, HSFixture
from tests.api.helpers import login, register

MEDIA = "/_matrix/media/v3"
AUTHED = "/_matrix/client/v1/media"
CSP = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf;"
    " style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def png(width: int = 1000, height: int = 700, mode: str = "RGB", color: Any = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, "PNG")
    return out.getvalue()


def jpeg(width: int = 640, height: int = 480) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    data = bytearray(png(1, 1))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


async def user(server: HSFixture, name: str, *, admin: bool = False) -> Client:
    client = server.new_client()
    if admin:
        user_id = await server.hs.services.registration.create_account(name, "admin-password", admin=True)
        client.token = (await login(client, user_id, "admin-password"))["access_token"]
    else:
        client.token = (await register(client, name))["access_token"]
    return client


async def upload(client: Client, data: bytes, content_type: str, filename: str | None = None) -> str:
    path = f"{MEDIA}/upload" + (f"?filename={filename}" if filename is not None else "")
    resp = await client.post(path, raw=data, headers={"Content-Type": content_type})
    assert resp.code == 200, resp.body
    uri = str(resp.body["content_uri"])
    assert uri.startswith("mxc://test.local/")
    return uri.removeprefix("mxc://test.local/")


async def fetch(client: Client, path: str, *, token: str | None = None) -> tuple[int, bytes, Any]:
    """GET returning the raw bytes (the JSON client would try to parse them)."""
    headers = Headers()
    use = token if token is not None else client.token
    if use:
        headers.addRawHeader(b"Authorization", f"Bearer {use}".encode())
    # A bare Agent: treq would transparently decode and drop Content-Length.
    resp = await Agent(reactor).request(b"GET", (client.base_url + path).encode(), headers)
    body = await readBody(resp)
    if isinstance(resp.length, int):  # Twisted's client keeps Content-Length out of the headers
        resp.headers.setRawHeaders(b"Content-Length", [str(resp.length).encode()])
    return resp.code, body, resp.headers


def header(headers: Any, name: str) -> str | None:
    values = headers.getRawHeaders(name.encode())
    return values[0].decode() if values else None


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest_twisted.ensureDeferred
async def test_upload_and_download_image_and_pdf(server: HSFixture) -> None:
    alice = await user(server, "alice")
    image = png()
    image_id = await upload(alice, image, "image/png", "photo.png")
    pdf_id = await upload(alice, PDF, "application/pdf", "report%20%C3%A9t%C3%A9.pdf")

    code, body, headers = await fetch(alice, f"{AUTHED}/download/test.local/{image_id}")
    assert (code, body) == (200, image)
    assert header(headers, "Content-Type") == "image/png"
    assert header(headers, "Content-Disposition") == "inline; filename=photo.png"
    assert header(headers, "Content-Length") == str(len(image))

    code, body, headers = await fetch(alice, f"{AUTHED}/download/test.local/{pdf_id}")
    assert (code, body) == (200, PDF)
    assert header(headers, "Content-Type") == "application/pdf"
    assert header(headers, "Content-Disposition") == "attachment; filename*=utf-8''report%20%C3%A9t%C3%A9.pdf"

    # The optional file name in the path overrides the uploaded one.
    code, body, headers = await fetch(alice, f"{AUTHED}/download/test.local/{pdf_id}/other.pdf")
    assert (code, body) == (200, PDF)
    assert header(headers, "Content-Disposition") == "attachment; filename=other.pdf"

    # The legacy endpoints still serve media without authentication.
    code, body, _ = await fetch(alice, f"{MEDIA}/download/test.local/{image_id}", token="")
    assert (code, body) == (200, image)
    code, body, _ = await fetch(alice, f"/_matrix/media/r0/download/test.local/{pdf_id}", token="")
    assert (code, body) == (200, PDF)

    # HEAD answers the headers only.
    head = await treq.head(
        f"{alice.base_url}{AUTHED}/download/test.local/{image_id}", headers={"Authorization": [f"Bearer {alice.token}"]}
    )
    assert head.code == 200 and await treq.content(head) == b""


@pytest_twisted.ensureDeferred
async def test_pregenerated_thumbnails(server: HSFixture) -> None:
    alice = await user(server, "alice")
    image_id = await upload(alice, png(1000, 700), "image/png")
    expected = {
        (32, 32, "crop"): (32, 32),
        (96, 96, "crop"): (96, 96),
        (320, 240, "scale"): (320, 224),
        (640, 480, "scale"): (640, 448),
        (800, 600, "scale"): (800, 560),
        # Not pre-generated: the nearest larger one is served.
        (50, 50, "crop"): (96, 96),
        (100, 100, "scale"): (320, 224),
    }
    for (width, height, method), size in expected.items():
        path = f"{AUTHED}/thumbnail/test.local/{image_id}?width={width}&height={height}&method={method}"
        code, body, headers = await fetch(alice, path)
        assert code == 200, body
        assert header(headers, "Content-Type") == "image/png"
        assert header(headers, "Content-Security-Policy") == CSP
        thumb = image_of(body)
        assert (thumb.format, thumb.size) == ("PNG", size), (width, height, method)

    # A JPEG gets JPEG thumbnails, through the legacy endpoint too.
    photo_id = await upload(alice, jpeg(), "image/jpeg")
    code, body, headers = await fetch(
        alice, f"{MEDIA}/thumbnail/test.local/{photo_id}?width=96&height=96&method=crop", token=""
    )
    assert code == 200 and header(headers, "Content-Type") == "image/jpeg"
    assert image_of(body).size == (96, 96)

    bad = await alice.get(f"{AUTHED}/thumbnail/test.local/{image_id}?width=32")
    assert (bad.code, bad.body["errcode"]) == (400, "M_MISSING_PARAM")
    bad = await alice.get(f"{AUTHED}/thumbnail/test.local/{image_id}?width=32&height=x")
    assert (bad.code, bad.body["errcode"]) == (400, "M_INVALID_PARAM")
    bad = await alice.get(f"{AUTHED}/thumbnail/test.local/{image_id}?width=32&height=32&method=zoom")
    assert (bad.code, bad.body["errcode"]) == (400, "M_INVALID_PARAM")


@pytest_twisted.ensureDeferred
async def test_dynamic_thumbnails(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(dynamic_thumbnails=True)
    alice = await user(server, "alice")
    transparent = png(400, 200, "RGBA", (0, 0, 0, 0))
    image_id = await upload(alice, transparent, "image/png")
    for (width, height, method), size in {
        (50, 50, "crop"): (50, 50),
        (100, 100, "scale"): (100, 50),
        (1000, 1000, "scale"): (400, 200),  # scale never enlarges
        (77, 33, "crop"): (77, 33),
    }.items():
        for _ in range(2):  # generated once, then served from the store
            path = f"{AUTHED}/thumbnail/test.local/{image_id}?width={width}&height={height}&method={method}"
            code, body, _ = await fetch(alice, path)
            assert code == 200, body
            thumb = image_of(body)
            assert thumb.size == size and thumb.mode == "RGBA"


@pytest_twisted.ensureDeferred
async def test_media_config(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(max_upload_size="2M")
    alice = await user(server, "alice")
    for path in (f"{MEDIA}/config", f"{AUTHED}/config"):
        resp = await alice.get(path)
        assert (resp.code, resp.body) == (200, {"m.upload.size": 2 * 1024 * 1024})


@pytest_twisted.ensureDeferred
async def test_authenticated_endpoints_need_a_token(server: HSFixture) -> None:
    alice = await user(server, "alice")
    image_id = await upload(alice, png(64, 64), "image/png")
    anonymous = server.new_client()
    for path in (
        f"{AUTHED}/download/test.local/{image_id}",
        f"{AUTHED}/download/test.local/{image_id}/x.png",
        f"{AUTHED}/thumbnail/test.local/{image_id}?width=32&height=32",
        f"{AUTHED}/config",
        f"{MEDIA}/config",
    ):
        resp = await anonymous.get(path)
        assert (resp.code, resp.body["errcode"]) == (401, "M_MISSING_TOKEN"), path
    resp = await anonymous.post(f"{MEDIA}/upload", raw=b"x", headers={"Content-Type": "text/plain"})
    assert (resp.code, resp.body["errcode"]) == (401, "M_MISSING_TOKEN")
    resp = await anonymous.post("/_matrix/media/v1/create", {})
    assert (resp.code, resp.body["errcode"]) == (401, "M_MISSING_TOKEN")
    resp = await anonymous.get(f"{AUTHED}/download/test.local/{image_id}", token="not-a-token")
    assert (resp.code, resp.body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


@pytest_twisted.ensureDeferred
async def test_bad_uploads(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(max_upload_size="1K")
    alice = await user(server, "alice")
    too_big = await alice.post(f"{MEDIA}/upload", raw=b"x" * 2048, headers={"Content-Type": "text/plain"})
    assert (too_big.code, too_big.body["errcode"]) == (413, "M_TOO_LARGE")

    # An empty file is a file (as in Synapse).
    empty_id = await upload(alice, b"", "text/plain", "empty.txt")
    code, body, headers = await fetch(alice, f"{AUTHED}/download/test.local/{empty_id}")
    assert (code, body, header(headers, "Content-Length")) == (200, b"", "0")

    # Bytes that are not an image: stored and served, but no thumbnail (Synapse: 400 M_UNKNOWN).
    fake_id = await upload(alice, b"\x89PNG\r\n\x1a\nthis is not really a png", "image/png")
    code, body, _ = await fetch(alice, f"{AUTHED}/download/test.local/{fake_id}")
    assert (code, body) == (200, b"\x89PNG\r\n\x1a\nthis is not really a png")
    resp = await alice.get(f"{AUTHED}/thumbnail/test.local/{fake_id}?width=32&height=32&method=crop")
    assert (resp.code, resp.body["errcode"]) == (400, "M_UNKNOWN")

    bad_type = await alice.post(f"{MEDIA}/upload", raw=b"x", headers={"Content-Type": "not a type"})
    assert (bad_type.code, bad_type.body["errcode"]) == (400, "M_INVALID_PARAM")
    bad_name = await alice.post(
        f"{MEDIA}/upload?filename=a%0d%0aSet-Cookie:%20x", raw=b"x", headers={"Content-Type": "text/plain"}
    )
    assert (bad_name.code, bad_name.body["errcode"]) == (400, "M_INVALID_PARAM")


@pytest_twisted.ensureDeferred
async def test_decompression_bomb_is_stored_but_not_thumbnailed(make_server: Callable[..., HSFixture]) -> None:
    for dynamic in (False, True):
        server = make_server(dynamic_thumbnails=dynamic)
        alice = await user(server, f"alice{int(dynamic)}")
        bomb = png_declaring(30000, 30000)
        bomb_id = await upload(alice, bomb, "image/png", "bomb.png")
        resp = await alice.get(f"{AUTHED}/thumbnail/test.local/{bomb_id}?width=96&height=96&method=crop")
        assert (resp.code, resp.body["errcode"]) == (400, "M_UNKNOWN")
        code, body, _ = await fetch(alice, f"{AUTHED}/download/test.local/{bomb_id}")
        assert (code, body) == (200, bomb)


@pytest_twisted.ensureDeferred
async def test_path_traversal_and_unknown_media(server: HSFixture) -> None:
    alice = await user(server, "alice")
    store = server.hs.config.media_store_path
    name = "..%2F..%2F..%2Fetc%2Fpasswd"
    media_id = await upload(alice, b"harmless", "text/plain", name)
    code, body, headers = await fetch(alice, f"{AUTHED}/download/test.local/{media_id}")
    assert (code, body) == (200, b"harmless")
    assert header(headers, "Content-Disposition") == "inline; filename*=utf-8''..%2F..%2F..%2Fetc%2Fpasswd"
    code, _, headers = await fetch(alice, f"{AUTHED}/download/test.local/{media_id}/..%2F..%2Fx")
    assert code == 200 and header(headers, "Content-Disposition") == "inline; filename*=utf-8''..%2F..%2Fx"
    code, _, _ = await fetch(alice, f"{AUTHED}/download/test.local/{media_id}/a%0d%0ab")
    assert code == 400

    for bad in (
        "..",
        "%2e%2e",
        "..%2F..%2Fetc",
        "a%2Fb",
        "%2e%2e%2f%2e%2e%2fhomeserver.db",
        "local_content",
        "x" * 300,
    ):
        for base in (f"{AUTHED}/download/test.local", f"{MEDIA}/download/test.local", f"{AUTHED}/thumbnail/test.local"):
            resp = await alice.get(f"{base}/{bad}?width=32&height=32")
            assert (resp.code, resp.body["errcode"]) == (404, "M_NOT_FOUND"), (base, bad)
        put = await alice.put(f"{MEDIA}/upload/test.local/{bad}", raw=b"x", headers={"Content-Type": "text/plain"})
        assert put.code == 404, bad
    for server_name in ("..", "%2e%2e", "a..b", "bad%20name", "[::1"):
        resp = await alice.get(f"{AUTHED}/download/{server_name}/{media_id}")
        assert (resp.code, resp.body["errcode"]) == (404, "M_NOT_FOUND"), server_name
        resp = await alice.get(f"{AUTHED}/download/{server_name}/{media_id}?allow_remote=false")
        assert resp.code == 404
    # A server outside the federation allowlist: refused (as Synapse), nothing is fetched.
    resp = await alice.get(f"{AUTHED}/download/other.example/{media_id}")
    assert (resp.code, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    resp = await alice.get(f"{AUTHED}/download/other.example/{media_id}?allow_remote=false")
    assert (resp.code, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    missing = await alice.get(f"{AUTHED}/download/test.local/AAAAAAAAAAAAAAAAAAAAAAAA")
    assert (missing.code, missing.body["errcode"]) == (404, "M_NOT_FOUND")

    # The only files written are the uploads, by ID, in the media store.
    written = [os.path.relpath(os.path.join(d, f), store) for d, _, files in os.walk(store) for f in files]
    assert written == [f"local_content/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}"]


@pytest_twisted.ensureDeferred
async def test_unsafe_types_are_served_as_attachments(server: HSFixture) -> None:
    alice = await user(server, "alice")
    cases = {
        "text/html": ("application/octet-stream", "attachment; filename=page"),
        "image/svg+xml": ("application/octet-stream", "attachment; filename=page"),
        "application/xhtml+xml; charset=utf-8": ("application/octet-stream", "attachment; filename=page"),
        "application/zip": ("application/zip", "attachment; filename=page"),
        "text/plain": ("text/plain; charset=UTF-8", "inline; filename=page"),
        "audio/ogg": ("audio/ogg", "inline; filename=page"),
    }
    for content_type, (served, disposition) in cases.items():
        media_id = await upload(alice, b"<script>alert(1)</script>", content_type, "page")
        for path in (f"{AUTHED}/download/test.local/{media_id}", f"{MEDIA}/download/test.local/{media_id}"):
            code, body, headers = await fetch(alice, path)
            assert code == 200
            assert header(headers, "Content-Type") == served, content_type
            assert header(headers, "Content-Disposition") == disposition, content_type
            assert header(headers, "Content-Security-Policy") == CSP
            assert header(headers, "X-Content-Type-Options") == "nosniff"
            assert header(headers, "Cross-Origin-Resource-Policy") == "cross-origin"


@pytest_twisted.ensureDeferred
async def test_create_then_upload(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(max_pending_media_uploads=2)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    created = await alice.post("/_matrix/media/v1/create", {})
    assert created.code == 200, created.body
    media_id = created.body["content_uri"].removeprefix("mxc://test.local/")
    assert created.body["unused_expires_at"] > 0

    waiting = await alice.get(f"{AUTHED}/download/test.local/{media_id}?timeout_ms=0")
    assert (waiting.code, waiting.body["errcode"]) == (504, "M_NOT_YET_UPLOADED")

    # A download that waits sees the upload as soon as it lands.
    pending = defer.ensureDeferred(fetch(alice, f"{AUTHED}/download/test.local/{media_id}?timeout_ms=10000"))
    denied = await bob.put(
        f"{MEDIA}/upload/test.local/{media_id}", raw=b"bob's", headers={"Content-Type": "text/plain"}
    )
    assert (denied.code, denied.body["errcode"]) == (403, "M_FORBIDDEN")
    done = await alice.put(
        f"{MEDIA}/upload/test.local/{media_id}?filename=a.txt", raw=b"alice's", headers={"Content-Type": "text/plain"}
    )
    assert (done.code, done.body) == (200, {})
    code, body, headers = await pending
    assert (code, body) == (200, b"alice's")
    assert header(headers, "Content-Disposition") == "inline; filename=a.txt"
    again = await alice.put(
        f"{MEDIA}/upload/test.local/{media_id}", raw=b"again", headers={"Content-Type": "text/plain"}
    )
    assert (again.code, again.body["errcode"]) == (409, "M_CANNOT_OVERWRITE_MEDIA")
    elsewhere = await alice.put(
        f"{MEDIA}/upload/other.example/{media_id}", raw=b"x", headers={"Content-Type": "text/plain"}
    )
    assert (elsewhere.code, elsewhere.body["errcode"]) == (404, "M_NOT_FOUND")

    assert (await alice.post("/_matrix/media/v1/create", {})).code == 200
    assert (await alice.post("/_matrix/media/v1/create", {})).code == 200
    over = await alice.post("/_matrix/media/v1/create", {})
    assert (over.code, over.body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert over.body["retry_after_ms"] > 0


@pytest_twisted.ensureDeferred
async def test_rate_limit_and_quota(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(
        rc_media_create={"per_second": 0.001, "burst_count": 3},
        media_upload_limits=[{"time_period": "1h", "max_size": "1K"}],
    )
    alice = await user(server, "alice")
    await upload(alice, b"a" * 600, "text/plain")
    over_quota = await alice.post(f"{MEDIA}/upload", raw=b"b" * 600, headers={"Content-Type": "text/plain"})
    assert (over_quota.code, over_quota.body["errcode"]) == (403, "M_USER_LIMIT_EXCEEDED")
    # Three requests so far (burst_count: 3) count against rc_media_create, then 429.
    await upload(alice, b"c", "text/plain")
    limited = await alice.post(f"{MEDIA}/upload", raw=b"d", headers={"Content-Type": "text/plain"})
    assert (limited.code, limited.body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    # Limits are per user.
    bob = await user(server, "bob")
    await upload(bob, b"d" * 600, "text/plain")


@pytest_twisted.ensureDeferred
async def test_enable_authenticated_media_freezes_legacy_downloads(make_server: Callable[..., HSFixture]) -> None:
    server = make_server(enable_authenticated_media=True)
    alice = await user(server, "alice")
    media_id = await upload(alice, png(64, 64), "image/png")
    assert (await fetch(alice, f"{AUTHED}/download/test.local/{media_id}"))[0] == 200
    assert (await fetch(alice, f"{AUTHED}/thumbnail/test.local/{media_id}?width=32&height=32"))[0] == 200
    assert (await fetch(alice, f"{MEDIA}/download/test.local/{media_id}"))[0] == 404
    assert (await fetch(alice, f"{MEDIA}/thumbnail/test.local/{media_id}?width=32&height=32"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_admin_quarantine_delete_and_purge(server: HSFixture) -> None:
    admin = await user(server, "admin", admin=True)
    alice = await user(server, "alice")
    first = await upload(alice, png(64, 64), "image/png")
    second = await upload(alice, b"second", "text/plain")
    admin_v1 = "/_synapse/admin/v1"

    denied = await alice.post(f"{admin_v1}/media/quarantine/test.local/{first}", {})
    assert (denied.code, denied.body["errcode"]) == (403, "M_FORBIDDEN")
    assert (await admin.post(f"{admin_v1}/media/quarantine/test.local/{first}", {})).code == 200
    for path in (f"{AUTHED}/download/test.local/{first}", f"{AUTHED}/thumbnail/test.local/{first}?width=32&height=32"):
        assert (await alice.get(path)).code == 404
    # Identical content uploaded again is quarantined too.
    again = await upload(alice, png(64, 64), "image/png")
    assert (await alice.get(f"{AUTHED}/download/test.local/{again}")).code == 404
    assert (await admin.post(f"{admin_v1}/media/unquarantine/test.local/{first}", {})).code == 200
    assert (await fetch(alice, f"{AUTHED}/download/test.local/{first}"))[0] == 200

    listed = await admin.get(f"{admin_v1}/users/@alice:test.local/media")
    assert listed.code == 200 and listed.body["total"] == 3
    deleted = await admin.delete(f"{admin_v1}/users/@alice:test.local/media")
    assert deleted.code == 200 and sorted(deleted.body["deleted_media"]) == sorted([first, second, again])
    for media_id in (first, second):
        assert (await alice.get(f"{AUTHED}/download/test.local/{media_id}")).code == 404
    store = server.hs.config.media_store_path
    assert not [f for _, _, files in os.walk(store) for f in files]

    missing = await admin.post(f"{admin_v1}/purge_media_cache", {})
    assert (missing.code, missing.body["errcode"]) == (400, "M_MISSING_PARAM")
    purged = await admin.post(f"{admin_v1}/purge_media_cache?before_ts=99999999999999", {})
    assert (purged.code, purged.body) == (200, {"deleted": 0})
    third = await upload(alice, b"third", "text/plain")
    one = await admin.delete(f"{admin_v1}/media/test.local/{third}")
    assert (one.code, one.body) == (200, {"deleted_media": [third], "total": 1})
    assert (await admin.delete(f"{admin_v1}/media/other.example/{third}")).code == 400


# -- URL previews, against a tiny page served on loopback ------------------------------

PAGE = b"""<!doctype html><html><head><title>Ignored title</title>
<meta property="og:title" content="A local page">
<meta property="og:description" content="Served on loopback for the test">
<meta property="og:image" content="/image.png">
</head><body>hello</body></html>"""


class _Site(resource.Resource):
    isLeaf = True

    def __init__(self, redirect_to: str) -> None:
        super().__init__()
        self.redirect_to = redirect_to

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        if request.path == b"/image.png":
            request.setHeader(b"Content-Type", b"image/png")
            return png(120, 60)
        if request.path == b"/redirect":
            request.redirect(self.redirect_to.encode())
            return b""
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return PAGE


def _serve_page(redirect_to: str = "http://127.0.0.2:1/") -> tuple[int, Any]:
    port = reactor.listenTCP(0, server.Site(_Site(redirect_to)), interface="127.0.0.1")
    return port.getHost().port, port


@pytest_twisted.ensureDeferred
async def test_url_preview_refuses_loopback_by_default(make_server: Callable[..., HSFixture]) -> None:
    web_port, listening = _serve_page()
    try:
        disabled = make_server()
        alice = await user(disabled, "alice")
        off = await alice.get(f"{MEDIA}/preview_url?url=http://127.0.0.1:{web_port}/")
        assert (off.code, off.body["errcode"]) == (404, "M_UNRECOGNIZED")

        server = make_server(url_preview_enabled=True)
        bob = await user(server, "bob")
        for url in (
            f"http://127.0.0.1:{web_port}/",
            f"http://localhost:{web_port}/",
            f"http://[::1]:{web_port}/",
            f"http://[::ffff:127.0.0.1]:{web_port}/",
            f"http://0.0.0.0:{web_port}/",
        ):
            for base in (MEDIA, AUTHED):
                resp = await bob.get(f"{base}/preview_url?url={url}")
                assert (resp.code, resp.body["errcode"]) == (403, "M_FORBIDDEN"), url
        for bad in ("file:///etc/passwd", "gopher://127.0.0.1/", "not a url"):
            resp = await bob.get(f"{AUTHED}/preview_url?url={bad}")
            assert (resp.code, resp.body["errcode"]) == (400, "M_INVALID_PARAM"), bad
        missing = await bob.get(f"{AUTHED}/preview_url")
        assert (missing.code, missing.body["errcode"]) == (400, "M_MISSING_PARAM")
        assert (await server.new_client().get(f"{AUTHED}/preview_url?url=http://127.0.0.1/")).code == 401
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_url_preview_of_a_whitelisted_local_page(make_server: Callable[..., HSFixture]) -> None:
    web_port, listening = _serve_page(redirect_to="http://127.0.0.2:9/")
    try:
        server = make_server(url_preview_enabled=True, url_preview_ip_range_whitelist=["127.0.0.1"])
        alice = await user(server, "alice")
        resp = await alice.get(f"{AUTHED}/preview_url?url=http://127.0.0.1:{web_port}/page&ts=0")
        assert resp.code == 200, resp.body
        og = resp.body
        assert og["og:title"] == "A local page"
        assert og["og:description"] == "Served on loopback for the test"
        assert og["og:image"].startswith("mxc://test.local/")
        assert (og["og:image:type"], og["og:image:width"], og["og:image:height"]) == ("image/png", 120, 60)
        image_id = og["og:image"].removeprefix("mxc://test.local/")
        code, body, _ = await fetch(alice, f"{AUTHED}/download/test.local/{image_id}")
        assert code == 200 and image_of(body).size == (120, 60)

        # A redirect to an address that is not whitelisted is refused before connecting.
        redirected = await alice.get(f"{MEDIA}/preview_url?url=http://127.0.0.1:{web_port}/redirect")
        assert (redirected.code, redirected.body["errcode"]) == (403, "M_FORBIDDEN")
        # Names are resolved and the answers checked (here localhost is 127.0.0.1 only;
        # tests/unit/media/test_safe_http.py covers mixed answers and pinning).
        by_name = await alice.get(f"{MEDIA}/preview_url?url=http://localhost:{web_port}/")
        assert by_name.code == 200 and by_name.body["og:title"] == "A local page"
    finally:
        await listening.stopListening()
