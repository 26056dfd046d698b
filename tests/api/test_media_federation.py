"""Media over federation, in process, on SQLite and PostgreSQL: two servers over TLS.

a.test and b.test federate (``start_peers``). A user on b.test downloads a.test's media and
thumbnails through b.test (the federation v1 media endpoints, multipart/mixed), then again
from b.test's cache while a.test refuses to serve it; concurrent first downloads make one
request; the federation endpoints themselves (signature, allowlist, quarantine, bad input);
and a stand-in a.test that misbehaves (garbage, oversized, only the legacy endpoint, a
Location redirect) gives clean errors or works.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from PIL import Image
from twisted.internet import defer, reactor
from twisted.web import resource, server

from homeserver.app import Homeserver
from homeserver.media.remote import boundary_of, parse_multipart
from homeserver.media.repository import MediaRepository
from tests.api.conftest import Client, HSFixture
from tests.api.helpers import login, register
from tests.api.test_federation_keys import Peer, start_peers

AUTHED = "/_matrix/client/v1/media"
FED_MEDIA = "/_matrix/federation/v1/media"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def png(width: int = 800, height: int = 600) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 140, 60)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def cleanups() -> Iterator[list[Callable[[], Any]]]:
    todo: list[Callable[[], Any]] = []
    yield todo
    for fn in reversed(todo):
        fn()


class Counted:
    """Wraps a federation route group, counting requests per path prefix on the way."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}

    def media_hits(self) -> int:
        return sum(n for p, n in self.hits.items() if p.startswith(FED_MEDIA))

    def routes(self, hs: Homeserver, extra: Callable[[Any], None] | None = None) -> Callable[[Any], None]:
        original = hs.route_groups["federation"]
        counter = self

        class Router:
            def __init__(self, router: Any) -> None:
                self._router = router

            def add(self, method: str, pattern: str, handler: Any) -> None:
                async def counted(request: server.Request, **kw: Any) -> Any:
                    path = request.path.decode()
                    counter.hits[path] = counter.hits.get(path, 0) + 1
                    return await handler(request, **kw)

                try:
                    self._router.add(method, pattern, counted)
                except ValueError:  # a stand-in already serves this route
                    pass

        def add(router: Any) -> None:
            if extra is not None:
                extra(Router(router))
            original(Router(router))

        return add


async def client_for(peer: Peer, name: str) -> Client:
    client = peer.fx.new_client()
    client.token = (await register(client, name))["access_token"]
    return client


async def fetch(client: Client, path: str) -> tuple[int, bytes, Any]:
    resp = await treq.get(client.base_url + path, headers={"Authorization": [f"Bearer {client.token}"]})
    return resp.code, await treq.content(resp), resp.headers


async def upload(client: Client, data: bytes, media_type: str, name: str) -> str:
    resp = await client.post(
        f"/_matrix/media/v3/upload?filename={name}", raw=data, headers={"Content-Type": media_type}
    )
    assert resp.code == 200, resp.body
    uri: str = resp.body["content_uri"]
    return uri.removeprefix("mxc://")


def header(headers: Any, name: str) -> str | None:
    values = headers.getRawHeaders(name)
    return values[0] if values else None


@pytest.fixture
def two(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> tuple[Peer, Peer, Counted]:
    counted = Counted()
    allow = {"a.test": ["b.test"], "b.test": ["a.test"]}

    def routes(hs: Homeserver) -> Callable[[Any], None]:
        return counted.routes(hs) if hs.config.server_name == "a.test" else hs.route_groups["federation"]

    peers = start_peers(make_server, database_config, tmp_path, cleanups, allow, federation_routes=routes)
    return peers["a.test"], peers["b.test"], counted


@pytest_twisted.ensureDeferred
async def test_user_on_b_downloads_a_media_and_thumbnails_then_from_cache(two: tuple[Peer, Peer, Counted]) -> None:
    a, b, counted = two
    alice, bob = await client_for(a, "alice"), await client_for(b, "bob")
    image, pdf = png(), PDF
    image_path = await upload(alice, image, "image/png", "photo.png")
    pdf_path = await upload(alice, pdf, "application/pdf", "note.pdf")
    assert image_path.startswith("a.test/")

    code, body, headers = await fetch(bob, f"{AUTHED}/download/{image_path}")
    assert (code, body) == (200, image)
    assert header(headers, "Content-Type") == "image/png"
    assert header(headers, "Content-Disposition") == "inline; filename=photo.png"
    code, body, headers = await fetch(bob, f"{AUTHED}/download/{pdf_path}")
    assert (code, body) == (200, pdf)
    assert header(headers, "Content-Type") == "application/pdf"
    assert header(headers, "Content-Disposition") == "attachment; filename=note.pdf"
    assert counted.media_hits() == 2

    # Thumbnails come from b.test's copy: no further request to a.test.
    for width, height, method, want in ((96, 96, "crop", (96, 96)), (320, 240, "scale", (320, 240))):
        code, body, headers = await fetch(
            bob, f"{AUTHED}/thumbnail/{image_path}?width={width}&height={height}&method={method}"
        )
        assert code == 200, body
        with Image.open(io.BytesIO(body)) as thumb:
            assert thumb.size == want
            assert header(headers, "Content-Type") == f"image/{thumb.format.lower()}"
    assert counted.media_hits() == 2

    # a.test no longer serves the image (quarantined): b.test still does, from its cache.
    await MediaRepository(a.hs.db).set_local_quarantine(image_path.split("/")[1], "@admin:a.test")
    assert (await fetch(alice, f"{AUTHED}/download/{image_path}"))[0] == 404
    code, body, _ = await fetch(bob, f"{AUTHED}/download/{image_path}")
    assert (code, body) == (200, image)
    assert counted.media_hits() == 2
    # ... and allow_remote=false also reads the cache.
    assert (await fetch(bob, f"{AUTHED}/download/{pdf_path}?allow_remote=false"))[:2] == (200, pdf)

    # Unknown media on a.test: a 404 passed on (one request), and not cached as anything.
    code, body, _ = await fetch(bob, f"{AUTHED}/download/a.test/AAAAAAAAAAAAAAAAAAAAAAAA")
    assert code == 404 and json.loads(body)["errcode"] == "M_NOT_FOUND"
    assert counted.media_hits() == 3


@pytest_twisted.ensureDeferred
async def test_concurrent_first_downloads_make_one_request(two: tuple[Peer, Peer, Counted]) -> None:
    a, b, counted = two
    alice, bob = await client_for(a, "alice"), await client_for(b, "bob")
    image = png(640, 480)
    path = await upload(alice, image, "image/png", "p.png")
    results = await defer.gatherResults(
        [defer.ensureDeferred(fetch(bob, f"{AUTHED}/download/{path}")) for _ in range(6)]
        + [defer.ensureDeferred(fetch(bob, f"{AUTHED}/thumbnail/{path}?width=32&height=32&method=crop"))]
    )
    assert [r[:2] for r in results[:6]] == [(200, image)] * 6
    assert results[6][0] == 200
    assert counted.media_hits() == 1


@pytest_twisted.ensureDeferred
async def test_refusals_without_requests(two: tuple[Peer, Peer, Counted]) -> None:
    a, b, counted = two
    bob = await client_for(b, "bob")
    # A server outside b.test's allowlist: 403, and nothing was sent anywhere.
    code, body, _ = await fetch(bob, f"{AUTHED}/download/c.test/AAAAAAAAAAAAAAAAAAAAAAAA")
    assert code == 403 and json.loads(body)["errcode"] == "M_FORBIDDEN"
    # Path traversal in the media ID or the server name: 404 before any request.
    for path in ("a.test/..%2F..%2Fetc%2Fpasswd", "a.test/..", "..%2Fa.test/abc", "a.test/a%2Fb", "a..test/abcdef"):
        code, body, _ = await fetch(bob, f"{AUTHED}/download/{path}")
        assert code == 404 and json.loads(body)["errcode"] == "M_NOT_FOUND", path
    assert counted.hits == {}


@pytest_twisted.ensureDeferred
async def test_federation_media_endpoints_serve_multipart(two: tuple[Peer, Peer, Counted]) -> None:
    a, b, _ = two
    alice = await client_for(a, "alice")
    image = png()
    media_id = (await upload(alice, image, "image/png", "été.png")).split("/")[1]
    fed = b.federation.client

    code, headers, body = await fed.request_with_headers("GET", "a.test", f"{FED_MEDIA}/download/{media_id}")
    assert code == 200
    metadata, part = parse_multipart(body, boundary_of(header(headers, "Content-Type") or ""))
    assert metadata == {} and part.body == image
    assert part.headers["content-type"] == "image/png"
    assert part.headers["content-disposition"] == "inline; filename*=utf-8''%C3%A9t%C3%A9.png"

    code, headers, body = await fed.request_with_headers(
        "GET",
        "a.test",
        f"{FED_MEDIA}/thumbnail/{media_id}",
        args={"width": "96", "height": "96", "method": "crop", "animated": "true"},
    )
    assert code == 200
    _, part = parse_multipart(body, boundary_of(header(headers, "Content-Type") or ""))
    with Image.open(io.BytesIO(part.body)) as thumb:
        assert thumb.size == (96, 96) and part.headers["content-type"] == f"image/{thumb.format.lower()}"

    for path, args, want in (
        (f"{FED_MEDIA}/download/AAAAAAAAAAAAAAAAAAAAAAAA", None, (404, "M_NOT_FOUND")),
        (f"{FED_MEDIA}/download/..%2F..%2Fetc%2Fpasswd", None, (404, "M_NOT_FOUND")),
        (f"{FED_MEDIA}/thumbnail/{media_id}", {"width": "96"}, (400, "M_MISSING_PARAM")),
        (f"{FED_MEDIA}/thumbnail/{media_id}", {"width": "x", "height": "9"}, (400, "M_INVALID_PARAM")),
        (
            f"{FED_MEDIA}/thumbnail/{media_id}",
            {"width": "9", "height": "9", "method": "zoom"},
            (400, "M_INVALID_PARAM"),
        ),
        (
            f"{FED_MEDIA}/thumbnail/{media_id}",
            {"width": "9", "height": "9", "animated": "yes"},
            (400, "M_INVALID_PARAM"),
        ),
    ):
        code, _, body = await fed.request_with_headers("GET", "a.test", path, args=args)
        assert (code, json.loads(body)["errcode"]) == want, (path, args)

    # Quarantined media is not served to other servers either.
    await MediaRepository(a.hs.db).set_local_quarantine(media_id, "@admin:a.test")
    code, _, body = await fed.request_with_headers("GET", "a.test", f"{FED_MEDIA}/download/{media_id}")
    assert (code, json.loads(body)["errcode"]) == (404, "M_NOT_FOUND")

    # Without a signature: 401.
    resp = await a.keys.get(f"{FED_MEDIA}/download/{media_id}")
    assert resp.code == 401 and resp.body["errcode"] == "M_UNAUTHORIZED"


@pytest_twisted.ensureDeferred
async def test_servers_outside_the_allowlist_get_403(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> None:
    allow = {"a.test": ["b.test"], "b.test": ["a.test"], "c.test": ["a.test"]}
    peers = start_peers(make_server, database_config, tmp_path, cleanups, allow)
    alice = await client_for(peers["a.test"], "alice")
    media_id = (await upload(alice, b"text", "text/plain", "t.txt")).split("/")[1]
    code, _, body = await peers["c.test"].federation.client.request_with_headers(
        "GET", "a.test", f"{FED_MEDIA}/download/{media_id}"
    )
    assert (code, json.loads(body)["errcode"]) == (403, "M_FORBIDDEN")


# -- a misbehaving a.test ----------------------------------------------------------------------


class _Bytes(resource.Resource):
    isLeaf = True

    def __init__(self, data: bytes, media_type: bytes) -> None:
        super().__init__()
        self.data, self.media_type = data, media_type

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", self.media_type)
        request.setHeader(b"Content-Disposition", b"attachment; filename=elsewhere.bin")
        return self.data


def _multipart(part: bytes, part_headers: str) -> bytes:
    return (
        f"--zz\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--zz\r\n{part_headers}\r\n\r\n".encode()
        + part
        + b"\r\n--zz--\r\n"
    )


def _stand_in(redirect_url: str) -> Callable[[Any], None]:
    """Federation media answers of a broken or unusual a.test, by media ID."""

    def add(router: Any) -> None:
        async def download(request: server.Request, media_id: str) -> tuple[int, Any]:
            if media_id == "legacyOnly":
                return 404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}
            if media_id == "garbage":
                request.setHeader(b"Content-Type", b"multipart/mixed; boundary=zz")
                request.write(b"this is not a multipart body at all")
            elif media_id == "oversized":
                request.setHeader(b"Content-Type", b"multipart/mixed; boundary=zz")
                request.write(_multipart(b"x" * 300_000, "Content-Type: application/octet-stream"))
            elif media_id == "redirected":
                request.setHeader(b"Content-Type", b"multipart/mixed; boundary=zz")
                request.write(_multipart(b"", f"Location: {redirect_url}"))
            elif media_id == "notjson":
                request.setHeader(b"Content-Type", b"text/html")
                request.write(b"<html>hello</html>")
            else:
                return 500, {"errcode": "M_UNKNOWN", "error": "boom"}
            request.finish()
            return 0, None

        async def legacy(request: server.Request, media_id: str) -> tuple[int, Any]:
            request.setHeader(b"Content-Type", b"application/pdf")
            request.setHeader(b"Content-Disposition", b"attachment; filename=legacy.pdf")
            request.write(PDF)
            request.finish()
            return 0, None

        router.add("GET", f"^{FED_MEDIA}/download/(?P<media_id>[^/]*)$", download)
        router.add("GET", "^/_matrix/media/v3/download/a.test/(?P<media_id>[^/]*)$", legacy)

    return add


@pytest_twisted.ensureDeferred
async def test_a_misbehaving_origin_gives_clean_errors(
    make_server: Callable[..., HSFixture],
    database_config: dict[str, Any],
    tmp_path: Path,
    cleanups: list[Callable[[], Any]],
) -> None:
    cdn = reactor.listenTCP(0, server.Site(_Bytes(b"from the cdn", b"text/plain")), interface="127.0.0.1")
    cleanups.append(cdn.stopListening)
    counted = Counted()
    redirect = f"http://127.0.0.1:{cdn.getHost().port}/media/abc?sig=1"

    def routes(hs: Homeserver) -> Callable[[Any], None]:
        if hs.config.server_name == "a.test":
            return counted.routes(hs, extra=_stand_in(redirect))
        return hs.route_groups["federation"]

    def small_server(**kw: Any) -> HSFixture:
        return make_server(**kw, max_upload_size="200K")

    peers = start_peers(
        small_server,
        database_config,
        tmp_path,
        cleanups,
        {"a.test": ["b.test"], "b.test": ["a.test"]},
        federation_routes=routes,
    )
    bob = await client_for(peers["b.test"], "bob")

    code, body, headers = await fetch(bob, f"{AUTHED}/download/a.test/legacyOnly")
    assert (code, body) == (200, PDF)
    assert header(headers, "Content-Disposition") == "attachment; filename=legacy.pdf"
    code, body, headers = await fetch(bob, f"{AUTHED}/download/a.test/redirected")
    assert (code, body) == (200, b"from the cdn")
    assert header(headers, "Content-Disposition") == "inline; filename=elsewhere.bin"

    for media_id, want in (
        ("garbage", (502, "M_UNKNOWN")),
        ("notjson", (502, "M_UNKNOWN")),
        ("oversized", (502, "M_TOO_LARGE")),
        ("broken", (502, "M_UNKNOWN")),
    ):
        code, body, _ = await fetch(bob, f"{AUTHED}/download/a.test/{media_id}")
        assert (code, json.loads(body)["errcode"]) == want, (media_id, body[:200])
        # Failures are not cached: the next try asks again.
        before = counted.media_hits()
        assert (await fetch(bob, f"{AUTHED}/thumbnail/a.test/{media_id}?width=32&height=32"))[0] == want[0]
        assert counted.media_hits() == before + 1


@pytest_twisted.ensureDeferred
async def test_admin_purges_the_remote_media_cache(two: tuple[Peer, Peer, Counted]) -> None:
    a, b, counted = two
    alice, bob = await client_for(a, "alice"), await client_for(b, "bob")
    admin = b.fx.new_client()
    admin_id = await b.hs.services.registration.create_account("root", "admin-password", admin=True)
    admin.token = (await login(admin, admin_id, "admin-password"))["access_token"]
    image = png(320, 240)
    path = await upload(alice, image, "image/png", "p.png")
    assert (await fetch(bob, f"{AUTHED}/download/{path}"))[:2] == (200, image)
    assert (await fetch(bob, f"{AUTHED}/thumbnail/{path}?width=32&height=32&method=crop"))[0] == 200
    assert counted.media_hits() == 1

    # Older than the cached copy: nothing to purge.
    resp = await admin.post("/_synapse/admin/v1/purge_media_cache?before_ts=1000", {})
    assert resp.code == 200 and resp.body == {"deleted": 0}
    assert (await fetch(bob, f"{AUTHED}/download/{path}"))[0] == 200
    assert counted.media_hits() == 1
    # Everything before now: the copy and its thumbnails go; the next download refetches.
    before = b.hs.clock.time_msec() + 1
    resp = await admin.post(f"/_synapse/admin/v1/purge_media_cache?before_ts={before}", {})
    assert resp.code == 200 and resp.body == {"deleted": 1}
    assert (await fetch(bob, f"{AUTHED}/download/{path}?allow_remote=false"))[0] == 404
    assert (await fetch(bob, f"{AUTHED}/download/{path}"))[:2] == (200, image)
    assert counted.media_hits() == 2
    # Only server admins may purge.
    resp = await bob.post(f"/_synapse/admin/v1/purge_media_cache?before_ts={before}", {})
    assert resp.code == 403 and resp.body["errcode"] == "M_FORBIDDEN"
