"""Media through real clients: matrix-nio uploads, matrix-js-sdk downloads (authenticated media).

A matrix-nio user uploads an 800x600 PNG and a PDF; a matrix-js-sdk user (another account)
downloads both and two thumbnails (96x96 crop, 320x240 scale) through the
``/_matrix/client/v1/media`` endpoints, as the SDK builds their URLs. The bytes must match,
the PNG is served inline and the PDF as an attachment, both named, and each thumbnail must
decode as an image of the asked size. The same endpoints without a token answer 401
``M_MISSING_TOKEN``.

Runs once per storage engine; INTEROP_TARGET=synapse runs it against a real Synapse.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nio import LoginResponse, UploadResponse

from tests.interop import harness as h
from tests.interop import js_node
from tests.interop.media_samples import THUMBNAILS, Sample, disposition_problems, register, samples, thumbnail_size
from tests.interop.nio_client import RecordingClient

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

PASSWORD = "media interop password"
SCRIPT_TIMEOUT = 60


async def _nio_uploads(server: h.RunningServer, user: str, files: list[Sample], tmp_path: Path) -> list[str]:
    client = RecordingClient(server.client_url, user)
    try:
        login = await client.login(PASSWORD, device_name="nio media")
        assert isinstance(login, LoginResponse), client.explain(login)
        uris = []
        for sample in files:
            path = tmp_path / sample.name
            path.write_bytes(sample.data)
            with path.open("r+b") as f:
                response, _ = await client.upload(
                    f, content_type=sample.media_type, filename=sample.name, filesize=len(sample.data)
                )
            assert isinstance(response, UploadResponse), client.explain(response)
            assert response.content_uri.startswith(f"mxc://{server.server_name}/"), response.content_uri
            uris.append(response.content_uri)
        return uris
    finally:
        await client.close()


def _js_media(server: h.RunningServer, user: str, plan: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    args = ["--base-url", server.client_url, "--user", user, "--password", PASSWORD, "--plan", str(plan_path)]
    try:
        result = js_node.run_node_script(
            "media.mjs", [*args, "--timeout", str(SCRIPT_TIMEOUT)], timeout=SCRIPT_TIMEOUT + 15
        )
    except h.HarnessError as exc:
        problem = str(exc)
    else:
        assert result["ok"] is True, f"media.mjs failed at {result.get('failedStep')!r}: {json.dumps(result)[:4000]}"
        return result
    pytest.fail(problem, pytrace=False)


def test_nio_uploads_an_image_and_a_pdf_js_sdk_downloads_them_and_thumbnails(
    js_sdk: Path, homeserver: h.RunningServer, tmp_path: Path
) -> None:
    register(homeserver.client_url, homeserver.registration_shared_secret, "nio_uploader", PASSWORD)
    register(homeserver.client_url, homeserver.registration_shared_secret, "js_reader", PASSWORD)
    files = samples()
    png, pdf = files
    png_uri, pdf_uri = asyncio.run(_nio_uploads(homeserver, "nio_uploader", files, tmp_path))

    downloads: list[dict[str, Any]] = [
        {"mxc": png_uri, "out": str(tmp_path / "got.png"), "thumbnail": None},
        {"mxc": pdf_uri, "out": str(tmp_path / "got.pdf"), "thumbnail": None},
    ]
    downloads += [
        {"mxc": png_uri, "out": str(tmp_path / f"thumb-{t['method']}.bin"), "thumbnail": t} for t in THUMBNAILS
    ]
    unauthenticated = [{"mxc": png_uri, "thumbnail": None}, {"mxc": png_uri, "thumbnail": THUMBNAILS[0]}]
    result = _js_media(homeserver, "js_reader", {"downloads": downloads, "unauthenticated": unauthenticated}, tmp_path)
    assert result["mediaConfig"]["m.upload.size"] >= len(png.data)
    got = result["downloads"]
    for item in got:
        assert "/_matrix/client/v1/media/" in item["url"], item
        assert item["status"] == 200, item

    problems: list[str] = []
    for sample, item, spec in ((png, got[0], downloads[0]), (pdf, got[1], downloads[1])):
        if Path(spec["out"]).read_bytes() != sample.data:
            problems.append(
                f"{sample.name}: downloaded {item['length']} bytes differ from the {len(sample.data)} uploaded"
            )
        problems += disposition_problems(sample, item["contentType"], item["contentDisposition"])
    for thumb, item, spec in zip(THUMBNAILS, got[2:], downloads[2:], strict=True):
        fmt, size = thumbnail_size(Path(spec["out"]).read_bytes())
        if size != (thumb["width"], thumb["height"]):
            problems.append(f"{thumb['method']} thumbnail is {size}, asked for {thumb['width']}x{thumb['height']}")
        if item["contentType"] != f"image/{fmt.lower()}":
            problems.append(f"{thumb['method']} thumbnail is {fmt} served as {item['contentType']}")
    for item in result["unauthenticated"]:
        if (
            item["status"] != 401
            or not isinstance(item["body"], dict)
            or item["body"].get("errcode") != "M_MISSING_TOKEN"
        ):
            problems.append(f"without a token {item['url']} gave {item['status']} {item['body']}")
    assert not problems, "\n".join(problems)
