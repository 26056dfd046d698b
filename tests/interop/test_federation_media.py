"""Media over federation with a real Synapse, over TLS on loopback, both directions.

Our server (run by its CLI, ``127.0.0.1:PORT``, TLS federation listener) and Synapse
(``127.0.0.2:PORT``) allow each other. A file uploaded on Synapse is downloaded, with a
thumbnail, by our user through our server (our FederationMediaFetcher against Synapse's
``/_matrix/federation/v1/media/download``); files uploaded on our server are downloaded,
with a thumbnail, by a Synapse user through Synapse (Synapse's client against our
multipart endpoints). Bytes, types and names must survive; a second download through our
server comes from its cache even with Synapse stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop import harness as h
from tests.interop.federation_scenarios import start_ours, start_theirs
from tests.interop.media_samples import (
    Sample,
    disposition_problems,
    get,
    json_body,
    register,
    samples,
    thumbnail_size,
    upload,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

PASSWORD = "federation media password"


def _login(server: h.RunningServer, localpart: str) -> str:
    return register(server.client_url, server.registration_shared_secret, localpart, PASSWORD)[1]


def _check_download(server: h.RunningServer, token: str, sample: Sample, uri: str) -> list[str]:
    path = uri.removeprefix("mxc://")
    status, headers, body = get(f"{server.client_url}/_matrix/client/v1/media/download/{path}", token)
    if status != 200:
        return [f"{server.label}: download of {sample.name} gave {status} {json_body(body)}"]
    problems = disposition_problems(sample, headers.get("content-type"), headers.get("content-disposition"))
    if body != sample.data:
        problems.append(f"{server.label}: {sample.name} arrived as {len(body)} bytes, {len(sample.data)} were uploaded")
    return problems


def _check_thumbnail(server: h.RunningServer, token: str, uri: str) -> list[str]:
    path = uri.removeprefix("mxc://")
    url = f"{server.client_url}/_matrix/client/v1/media/thumbnail/{path}?width=96&height=96&method=crop"
    status, headers, body = get(url, token)
    if status != 200:
        return [f"{server.label}: thumbnail gave {status} {json_body(body)}"]
    fmt, size = thumbnail_size(body)
    if size != (96, 96) or headers.get("content-type") != f"image/{fmt.lower()}":
        return [f"{server.label}: thumbnail is {fmt} {size} served as {headers.get('content-type')}"]
    return []


def test_media_crosses_between_our_server_and_synapse(servers: h.ServerPool, tmp_path: Path) -> None:
    our_port, their_port = h.free_port("127.0.0.1"), h.free_port("127.0.0.2")
    ours_name, theirs_name = f"127.0.0.1:{our_port}", f"127.0.0.2:{their_port}"
    theirs = start_theirs(servers, allow=[ours_name], port=their_port)
    ours = start_ours(servers, tmp_path, allow=[theirs_name], port=our_port)
    our_token, their_token = _login(ours, "odile"), _login(theirs, "sylvain")
    png, pdf = samples()
    problems: list[str] = []

    # Synapse -> us: uploaded on Synapse, read by our user through our server.
    their_png, their_pdf = upload(theirs.client_url, their_token, png), upload(theirs.client_url, their_token, pdf)
    assert their_png.startswith(f"mxc://{theirs_name}/"), their_png
    problems += _check_download(ours, our_token, png, their_png)
    problems += _check_download(ours, our_token, pdf, their_pdf)
    problems += _check_thumbnail(ours, our_token, their_png)

    # Us -> Synapse: uploaded on our server, read by the Synapse user through Synapse.
    our_png, our_pdf = upload(ours.client_url, our_token, png), upload(ours.client_url, our_token, pdf)
    assert our_pdf.startswith(f"mxc://{ours_name}/"), our_pdf
    problems += _check_download(theirs, their_token, pdf, our_pdf)
    problems += _check_download(theirs, their_token, png, our_png)
    problems += _check_thumbnail(theirs, their_token, our_png)
    assert not problems, (
        "\n".join(problems) + f"\n--- ours ---\n{ours.log_tail(40)}\n--- synapse ---\n{theirs.log_tail(40)}"
    )

    # With Synapse gone, our server still serves its copies (and thumbnails) from the cache.
    assert theirs.stop() is None
    assert not _check_download(ours, our_token, png, their_png)
    assert not _check_thumbnail(ours, our_token, their_png)
    # Media never fetched before now fails cleanly (no 500).
    status, _, body = get(
        f"{ours.client_url}/_matrix/client/v1/media/download/{theirs_name}/NotFetchedBefore", our_token
    )
    assert status in (502, 504) and json_body(body)["errcode"] in ("M_UNKNOWN",), (status, body)
