"""Media through real clients: matrix-js-sdk uploads, matrix-nio downloads (authenticated media).

A matrix-js-sdk user uploads an 800x600 PNG and a PDF (``uploadContent``); a matrix-nio
user (another account) downloads both and two thumbnails (96x96 crop, 320x240 scale) with
``AsyncClient.download`` / ``thumbnail``, which use ``/_matrix/client/v1/media``. The
bytes must match, the types and file names survive, each thumbnail decodes as an image of
the asked size; the headers are checked with a plain authenticated GET, and the same URLs
without a token answer 401 ``M_MISSING_TOKEN``.

Runs once per storage engine; INTEROP_TARGET=synapse runs it against a real Synapse.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from nio import DownloadResponse, LoginResponse, ResizingMethod, ThumbnailResponse

from tests.interop import harness as h
from tests.interop import js_node
from tests.interop.media_samples import (
    THUMBNAILS,
    Sample,
    disposition_problems,
    get,
    json_body,
    register,
    samples,
    thumbnail_size,
)
from tests.interop.nio_client import RecordingClient

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

PASSWORD = "media interop password"
SCRIPT_TIMEOUT = 60


def _js_uploads(server: h.RunningServer, user: str, files: list[Sample], tmp_path: Path) -> list[str]:
    uploads = []
    for sample in files:
        path = tmp_path / sample.name
        path.write_bytes(sample.data)
        uploads.append({"path": str(path), "type": sample.media_type, "name": sample.name})
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"uploads": uploads}))
    args = ["--base-url", server.client_url, "--user", user, "--password", PASSWORD, "--plan", str(plan_path)]
    try:
        result = js_node.run_node_script(
            "media.mjs", [*args, "--timeout", str(SCRIPT_TIMEOUT)], timeout=SCRIPT_TIMEOUT + 15
        )
    except h.HarnessError as exc:
        problem = str(exc)
    else:
        assert result["ok"] is True, f"media.mjs failed at {result.get('failedStep')!r}: {json.dumps(result)[:4000]}"
        return [u["mxc"] for u in result["uploads"]]
    pytest.fail(problem, pytrace=False)


async def _nio_downloads(server: h.RunningServer, user: str, uris: list[str]) -> tuple[str, list[Any], list[Any]]:
    client = RecordingClient(server.client_url, user)
    try:
        login = await client.login(PASSWORD, device_name="nio media")
        assert isinstance(login, LoginResponse), client.explain(login)
        files = []
        for uri in uris:
            response = await client.download(mxc=uri)
            assert isinstance(response, DownloadResponse), client.explain(response)
            files.append(response)
        server_name, media_id = uris[0].removeprefix("mxc://").split("/")
        thumbs = []
        for t in THUMBNAILS:
            thumb = await client.thumbnail(server_name, media_id, t["width"], t["height"], ResizingMethod(t["method"]))
            assert isinstance(thumb, ThumbnailResponse), client.explain(thumb)
            thumbs.append(thumb)
        return client.access_token, files, thumbs
    finally:
        await client.close()


def test_js_sdk_uploads_an_image_and_a_pdf_nio_downloads_them_and_thumbnails(
    js_sdk: Path, homeserver: h.RunningServer, tmp_path: Path
) -> None:
    register(homeserver.client_url, homeserver.registration_shared_secret, "js_uploader", PASSWORD)
    register(homeserver.client_url, homeserver.registration_shared_secret, "nio_reader", PASSWORD)
    files = samples()
    uris = _js_uploads(homeserver, "js_uploader", files, tmp_path)
    assert all(u.startswith(f"mxc://{homeserver.server_name}/") for u in uris), uris
    token, downloaded, thumbs = asyncio.run(_nio_downloads(homeserver, "nio_reader", uris))

    problems: list[str] = []
    for sample, response in zip(files, downloaded, strict=True):
        if response.body != sample.data:
            problems.append(f"{sample.name}: nio got {len(response.body)} bytes, {len(sample.data)} were uploaded")
        if response.content_type.split(";")[0] != sample.media_type or response.filename != sample.name:
            problems.append(f"{sample.name}: nio saw {response.content_type!r} named {response.filename!r}")
    for t, thumb in zip(THUMBNAILS, thumbs, strict=True):
        fmt, size = thumbnail_size(thumb.body)
        if size != (t["width"], t["height"]) or thumb.content_type != f"image/{fmt.lower()}":
            problems.append(f"{t['method']} thumbnail: {fmt} {size} served as {thumb.content_type}, asked {t}")

    base = f"{homeserver.client_url}/_matrix/client/v1/media"
    for sample, uri in zip(files, uris, strict=True):
        path = uri.removeprefix("mxc://")
        status, headers, body = get(f"{base}/download/{path}", token)
        if status != 200 or body != sample.data:
            problems.append(f"{sample.name}: authenticated GET gave {status}, {len(body)} bytes")
        problems += disposition_problems(sample, headers.get("content-type"), headers.get("content-disposition"))
        # A file name in the path overrides the uploaded one.
        status, headers, _ = get(f"{base}/download/{path}/{quote('copie.bin')}", token)
        if status != 200 or "copie.bin" not in headers.get("content-disposition", ""):
            problems.append(
                f"{sample.name}: download with a file name gave {status} {headers.get('content-disposition')}"
            )
        for url in (f"{base}/download/{path}", f"{base}/thumbnail/{path}?width=96&height=96&method=crop"):
            status, _, body = get(url)
            parsed = json_body(body)
            if status != 401 or not isinstance(parsed, dict) or parsed.get("errcode") != "M_MISSING_TOKEN":
                problems.append(f"without a token {url} gave {status} {parsed}")
    assert not problems, "\n".join(problems)
