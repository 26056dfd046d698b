"""The media service over a real database (both engines) with a fake clock: retention,
expiry of unused media IDs, the remote media cache, and the pinned preview client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads
from twisted.web import resource, server

from homeserver.core.clock import Clock
from homeserver.core.errors import MatrixError
from homeserver.media.repository import MediaRepository
from homeserver.media.safe_http import IPPolicy, SafeHttpClient
from homeserver.media.service import FetchedMedia, MediaRules, MediaService, NoRemoteMedia
from homeserver.media.storage import LocalDiskBackend
from homeserver.storage.database import Database
from homeserver.storage.engines import create_engine
from homeserver.storage.migrations import prepare_database

DAY_MS = 86_400_000


@pytest.fixture
def db(database_config: dict[str, Any]) -> Iterator[Database]:
    database = Database(create_engine(database_config["name"], database_config["args"]), reactor)
    prepare_database(database, 0)
    yield database
    database.close()


def run_in_thread(fn: Any, *args: Any) -> Any:
    return threads.deferToThread(fn, *args)


class Unlimited:
    def check(self, key: str, *, update: bool = True, n: float = 1.0) -> None:
        pass


class FakeRemote:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def fetch(self, server_name: str, media_id: str, *, max_size: int) -> FetchedMedia:
        self.calls.append((server_name, media_id))
        if media_id == "missing":
            raise MatrixError(404, "M_NOT_FOUND", "nope")
        return FetchedMedia(b"remote bytes " + media_id.encode(), "text/plain", "r.txt")


def make_service(db: Database, store: str, clock: task.Clock, remote: Any = None, **rules: Any) -> MediaService:
    return MediaService(
        server_name="test.local",
        clock=Clock(clock),
        repo=MediaRepository(db),
        backend=LocalDiskBackend(store, run_in_thread=run_in_thread),
        remote=remote or NoRemoteMedia(),
        rules=MediaRules(max_upload_size=1 << 20, **rules),
        create_limiter=Unlimited(),
        run_in_thread=run_in_thread,
    )


def files_under(path: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


async def read(media: MediaService, server_name: str, media_id: str) -> bytes:
    found = await media.download(server_name, media_id, authenticated=True, timeout_ms=0)
    with found.body:
        return found.body.read()


@pytest_twisted.ensureDeferred
async def test_local_retention_keeps_recently_used_media(db: Database, tmp_path: Any) -> None:
    clock = task.Clock()
    clock.advance(1_000_000)
    store = str(tmp_path / "store")
    media = make_service(db, store, clock, local_media_lifetime=30 * DAY_MS)
    used = (await media.upload("@a:test.local", b"used", "text/plain", None)).rsplit("/", 1)[1]
    unused = (await media.upload("@a:test.local", b"unused", "text/plain", None)).rsplit("/", 1)[1]
    protected = (await media.upload("@a:test.local", b"protected", "text/plain", None)).rsplit("/", 1)[1]
    quarantined = (await media.upload("@a:test.local", b"quarantined", "text/plain", None)).rsplit("/", 1)[1]
    await media.set_protected(protected, True)
    await media.set_quarantine("test.local", quarantined, "@admin:test.local")
    pending = (await media.create_media_id("@a:test.local"))[0].rsplit("/", 1)[1]

    clock.advance(20 * 86_400)
    assert await read(media, "test.local", used) == b"used"
    clock.advance(20 * 86_400)
    await media.run_housekeeping()

    assert await read(media, "test.local", used) == b"used"
    assert await read(media, "test.local", protected) == b"protected"
    for gone in (unused, pending):
        with pytest.raises(MatrixError) as info:
            await read(media, "test.local", gone)
        assert info.value.code == 404
    repo = MediaRepository(db)
    assert await repo.get_local(quarantined) is not None  # kept for the admins
    assert await repo.get_local(pending) is None  # the unused ID expired
    assert len(files_under(store)) == 3


@pytest_twisted.ensureDeferred
async def test_remote_cache_fetch_once_then_purge(db: Database, tmp_path: Any) -> None:
    clock = task.Clock()
    clock.advance(1_000_000)
    store = str(tmp_path / "store")
    remote = FakeRemote()
    media = make_service(db, store, clock, remote=remote, remote_media_lifetime=7 * DAY_MS)
    assert await read(media, "other.example", "abcDEF123") == b"remote bytes abcDEF123"
    assert await read(media, "other.example", "abcDEF123") == b"remote bytes abcDEF123"
    assert remote.calls == [("other.example", "abcDEF123")]
    with pytest.raises(MatrixError):
        await media.download("other.example", "notcached", authenticated=True, allow_remote=False)
    with pytest.raises(MatrixError) as info:
        await read(media, "other.example", "missing")
    assert info.value.code == 404
    assert [f.split("/")[:2] for f in files_under(store)] == [["remote_content", "other.example"]]

    clock.advance(8 * 86_400)
    await media.run_housekeeping()
    assert files_under(store) == []
    assert await MediaRepository(db).get_remote("other.example", "abcDEF123") is None

    # The stub used until federation exists answers 404 for every remote ID.
    stub = make_service(db, store, clock)
    with pytest.raises(MatrixError) as info:
        await read(stub, "other.example", "abcDEF123")
    assert (info.value.code, info.value.errcode) == (404, "M_NOT_FOUND")


class _Echo(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        request.setHeader(b"Content-Type", b"text/plain")
        if request.path == b"/big":
            return b"x" * 5000
        return b"host=" + (request.getHeader("Host") or "").encode()


@pytest_twisted.ensureDeferred
async def test_safe_client_pins_the_checked_address() -> None:
    port = reactor.listenTCP(0, server.Site(_Echo()), interface="127.0.0.1")
    number = port.getHost().port
    answers = {"pinned.example": ["127.0.0.1"], "mixed.example": ["127.0.0.1", "10.0.0.1"]}

    async def resolve(host: str, _port: int) -> list[str]:
        return answers.get(host, [])

    client = SafeHttpClient(
        reactor=reactor, policy=IPPolicy(["127.0.0.0/8", "10.0.0.0/8"], ["127.0.0.1"]), resolve=resolve, max_size=1000
    )
    try:
        # pinned.example exists only in our resolver: the connection went to the address we checked.
        result = await client.get(f"http://pinned.example:{number}/")
        assert (result.code, result.body) == (200, f"host=pinned.example:{number}".encode())
        for url, code in (
            (f"http://mixed.example:{number}/", 403),  # one blocked answer refuses the name
            (f"http://unknown.example:{number}/", 502),  # no answer
            (f"http://127.0.0.2:{number}/", 403),
            (f"http://pinned.example:{number}/big", 502),  # over max_spider_size
        ):
            with pytest.raises(MatrixError) as info:
                await client.get(url)
            assert info.value.code == code, url
    finally:
        await port.stopListening()
