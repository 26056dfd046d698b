"""FederationMediaFetcher with fake transports: multipart parsing, the legacy fallback,
redirects, the allowlist and every way a remote can misbehave (a clean Matrix error each)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.web.http_headers import Headers

from homeserver.api.federation.media import multipart_parts
from homeserver.core.errors import Codes, MatrixError
from homeserver.federation.transport import FederationDeniedError, InvalidResponseError, RequestSendFailed
from homeserver.media.remote import (
    BadMultipart,
    FederationMediaFetcher,
    boundary_of,
    filename_from_disposition,
    parse_multipart,
)
from homeserver.media.safe_http import FetchResult
from homeserver.media.service import FetchedMedia, MediaDownload

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100 + b"\r\n--notaboundary\r\n"


def multipart(body: bytes, boundary: str = "b0und", part_headers: str = "Content-Type: image/png") -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n{part_headers}\r\n\r\n".encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )


class FakeFederation:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers  # path prefix -> (code, headers, body) or an exception
        self.calls: list[tuple[str, str, dict[str, str] | None, int | None]] = []

    async def request_with_headers(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        args: dict[str, str] | None = None,
        content: Any | None = None,
        timeout: float | None = None,
        max_size: int | None = None,
    ) -> tuple[int, Headers, bytes]:
        self.calls.append((destination, path, args, max_size))
        for prefix, answer in self.answers.items():
            if path.startswith(prefix):
                if isinstance(answer, Exception):
                    raise answer
                code, headers, body = answer
                return code, Headers({k.encode(): [v.encode()] for k, v in headers.items()}), body
        return 404, Headers(), b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}'


class FakeHttp:
    def __init__(self, result: FetchResult | Exception) -> None:
        self.result = result
        self.urls: list[str] = []

    async def get(self, url: str, *, max_size: int | None = None) -> FetchResult:
        self.urls.append(url)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


FED = "/_matrix/federation/v1/media/download/"
LEGACY = "/_matrix/media/v3/download/"
MULTI = {"Content-Type": "multipart/mixed; boundary=b0und"}


def fetcher(answers: dict[str, Any], http: FakeHttp | None = None) -> tuple[FederationMediaFetcher, FakeFederation]:
    fed = FakeFederation(answers)
    allowed = {"a.example", "b.example"}
    return FederationMediaFetcher(
        federation=fed, is_allowed=allowed.__contains__, http=http or FakeHttp(OSError())
    ), fed


async def fails(f: FederationMediaFetcher, media_id: str = "abcdef", server: str = "a.example") -> MatrixError:
    with pytest.raises(MatrixError) as info:
        await f.fetch(server, media_id, max_size=1000)
    return info.value


def test_parse_multipart_reads_both_parts_even_with_delimiter_like_bytes_inside() -> None:
    metadata, part = parse_multipart(
        multipart(PNG, part_headers='Content-Type: image/png\r\nContent-Disposition: inline; filename="a b.png"'),
        "b0und",
    )
    assert metadata == {}
    assert part.body == PNG
    assert part.headers["content-type"] == "image/png"
    assert filename_from_disposition(part.headers["content-disposition"]) == "a b.png"


def test_our_server_side_multipart_round_trips() -> None:
    import io

    head, tail = multipart_parts(
        MediaDownload("application/pdf", 3, "r.pdf", io.BytesIO(b"pdf")), "rapport é.pdf", "xyz"
    )
    metadata, part = parse_multipart(head + b"pdf" + tail, "xyz")
    assert metadata == {} and part.body == b"pdf"
    assert part.headers["content-disposition"].startswith("attachment")
    assert filename_from_disposition(part.headers["content-disposition"]) == "rapport é.pdf"


@pytest.mark.parametrize(
    "body",
    [b"", b"garbage", b"--b0und\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0und--\r\n", multipart(PNG)[:-10]],
)
def test_parse_multipart_refuses_malformed_bodies(body: bytes) -> None:
    with pytest.raises(BadMultipart):
        parse_multipart(body, "b0und")


def test_parse_multipart_refuses_non_json_metadata() -> None:
    body = multipart(PNG).replace(b"application/json", b"text/plain")
    with pytest.raises(BadMultipart):
        parse_multipart(body, "b0und")


def test_boundary_of() -> None:
    assert boundary_of('multipart/mixed; boundary="a b"') == "a b"
    assert boundary_of("Multipart/Mixed;boundary=xyz") == "xyz"
    for bad in ("text/plain", "multipart/mixed", ""):
        with pytest.raises(BadMultipart):
            boundary_of(bad)


def test_filename_from_disposition() -> None:
    assert filename_from_disposition("attachment; filename=a.pdf") == "a.pdf"
    assert filename_from_disposition("inline; filename*=utf-8''%C3%A9t%C3%A9.png; filename=x") == "été.png"
    assert filename_from_disposition('attachment; filename="bad\x01name"') is None
    assert filename_from_disposition("attachment") is None
    assert filename_from_disposition(None) is None


@pytest_twisted.ensureDeferred
async def test_federation_download_gives_bytes_type_and_name() -> None:
    body = multipart(PNG, part_headers="Content-Type: image/png\r\nContent-Disposition: inline; filename=cat.png")
    f, fed = fetcher({FED: (200, MULTI, body)})
    got = await f.fetch("a.example", "abcdef", max_size=1000)
    assert got == FetchedMedia(PNG, "image/png", "cat.png")
    (call,) = fed.calls
    assert call[:2] == ("a.example", FED + "abcdef") and call[3] is not None and call[3] > 1000
    assert f.requests == {"a.example": 1}


@pytest_twisted.ensureDeferred
async def test_unrecognized_endpoint_falls_back_to_the_legacy_download() -> None:
    f, fed = fetcher(
        {
            LEGACY: (
                200,
                {"Content-Type": "application/pdf", "Content-Disposition": "attachment; filename=r.pdf"},
                b"%PDF",
            )
        }
    )
    got = await f.fetch("a.example", "abcdef", max_size=1000)
    assert got == FetchedMedia(b"%PDF", "application/pdf", "r.pdf")
    assert [c[1] for c in fed.calls] == [FED + "abcdef", LEGACY + "a.example/abcdef"]
    assert fed.calls[1][2] is not None and fed.calls[1][2]["allow_remote"] == "false"


@pytest_twisted.ensureDeferred
async def test_a_plain_404_is_not_found_without_fallback() -> None:
    f, fed = fetcher({FED: (404, {}, b'{"errcode":"M_NOT_FOUND","error":"no"}')})
    err = await fails(f)
    assert (err.code, err.errcode) == (404, Codes.NOT_FOUND)
    assert len(fed.calls) == 1


@pytest_twisted.ensureDeferred
async def test_location_is_followed_with_a_plain_get() -> None:
    body = multipart(b"", part_headers="Location: https://cdn.a.example/file?sig=1")
    http = FakeHttp(FetchResult("https://cdn.a.example/file?sig=1", 200, "image/png", PNG, "inline; filename=c.png"))
    f, _ = fetcher({FED: (200, MULTI, body)}, http)
    assert await f.fetch("a.example", "abcdef", max_size=1000) == FetchedMedia(PNG, "image/png", "c.png")
    assert http.urls == ["https://cdn.a.example/file?sig=1"]


@pytest.mark.parametrize(
    ("http", "code", "errcode"),
    [
        (MatrixError(403, Codes.FORBIDDEN, "IP address blocked by IP blacklist entry"), 502, Codes.UNKNOWN),
        (MatrixError(502, Codes.TOO_LARGE, "too big"), 502, Codes.TOO_LARGE),
        (MatrixError(504, Codes.UNKNOWN, "Timed out"), 504, Codes.UNKNOWN),
        (FetchResult("u", 404, None, b""), 404, Codes.NOT_FOUND),
        (FetchResult("u", 500, None, b""), 502, Codes.UNKNOWN),
    ],
)
@pytest_twisted.ensureDeferred
async def test_redirect_failures_are_clean_errors(http: Any, code: int, errcode: str) -> None:
    f, _ = fetcher({FED: (200, MULTI, multipart(b"", part_headers="Location: http://10.0.0.1/x"))}, FakeHttp(http))
    err = await fails(f)
    assert (err.code, err.errcode) == (code, errcode)


@pytest.mark.parametrize(
    ("answer", "code", "errcode"),
    [
        ((200, {"Content-Type": "text/plain"}, b"not multipart"), 502, Codes.UNKNOWN),
        ((200, MULTI, b"--b0und\r\n garbage"), 502, Codes.UNKNOWN),
        ((200, MULTI, multipart(b"x" * 1001)), 502, Codes.TOO_LARGE),
        ((200, MULTI, multipart(b"", part_headers="Location: file:///etc/passwd")), 502, Codes.UNKNOWN),
        ((500, {}, b"<html>oops</html>"), 502, Codes.UNKNOWN),
        ((502, {}, b'{"errcode":"M_TOO_LARGE","error":"big"}'), 502, Codes.TOO_LARGE),
        ((504, {}, b'{"errcode":"M_NOT_YET_UPLOADED","error":"wait"}'), 504, "M_NOT_YET_UPLOADED"),
        (InvalidResponseError("response larger than 66536 bytes"), 502, Codes.TOO_LARGE),
        (RequestSendFailed("GET a.example: timed out"), 504, Codes.UNKNOWN),
        (RequestSendFailed("connection refused"), 502, Codes.UNKNOWN),
        (FederationDeniedError("a.example"), 403, Codes.FORBIDDEN),
    ],
)
@pytest_twisted.ensureDeferred
async def test_remote_misbehaviour_is_a_clean_error(answer: Any, code: int, errcode: str) -> None:
    f, _ = fetcher({FED: answer})
    err = await fails(f)
    assert (err.code, err.errcode) == (code, errcode)


@pytest_twisted.ensureDeferred
async def test_servers_outside_the_allowlist_are_refused_without_a_request() -> None:
    f, fed = fetcher({FED: (200, MULTI, multipart(PNG))})
    err = await fails(f, server="stranger.example")
    assert (err.code, err.errcode) == (403, Codes.FORBIDDEN)
    assert fed.calls == [] and f.requests == {}


@pytest.mark.parametrize("media_id", ["../../etc/passwd", "a/b", "", "x" * 256, "abc%2F"])
@pytest_twisted.ensureDeferred
async def test_invalid_media_ids_are_not_found_without_a_request(media_id: str) -> None:
    f, fed = fetcher({FED: (200, MULTI, multipart(PNG))})
    err = await fails(f, media_id=media_id)
    assert err.code == 404
    assert fed.calls == []


@pytest_twisted.ensureDeferred
async def test_an_unusable_content_type_becomes_octet_stream() -> None:
    body = multipart(PNG, part_headers="Content-Type: text/html\x01evil")
    f, _ = fetcher({FED: (200, MULTI, body)})
    assert (await f.fetch("a.example", "abcdef", max_size=1000)).media_type == "application/octet-stream"
