"""Files for the media interop tests (a real PNG and a valid PDF) and the checks they share."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

# The thumbnails asked for: sizes every server pre-generates (Synapse's defaults, ours),
# so the answer is exactly the asked size whether or not dynamic thumbnails are on.
THUMBNAILS = ({"width": 96, "height": 96, "method": "crop"}, {"width": 320, "height": 240, "method": "scale"})


@dataclass(frozen=True)
class Sample:
    name: str
    media_type: str
    data: bytes
    inline: bool  # served inline (an image), or as an attachment (the PDF)


def make_png(width: int = 800, height: int = 600) -> bytes:
    """A real 800x600 picture with detail (so scaling and cropping show)."""
    image = Image.new("RGB", (width, height), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    for i in range(0, width, 40):
        draw.rectangle((i, 0, i + 19, height), fill=(20 + i % 200, 90, 160))
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(200, 30, 40))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def make_pdf(text: str = "Note de service") -> bytes:
    """A small valid one-page PDF (with a correct cross-reference table)."""
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def samples() -> list[Sample]:
    return [
        Sample("site-photo.png", "image/png", make_png(), inline=True),
        Sample("rapport annuel.pdf", "application/pdf", make_pdf(), inline=False),
    ]


def thumbnail_size(data: bytes) -> tuple[str, tuple[int, int]]:
    """(format, size) of a thumbnail, decoding it fully (a broken image raises)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return str(image.format), image.size


def disposition_problems(sample: Sample, content_type: str | None, disposition: str | None) -> list[str]:
    """What is wrong with the headers a download of ``sample`` was served with."""
    problems = []
    if (content_type or "").split(";")[0].strip() != sample.media_type:
        problems.append(f"{sample.name}: Content-Type {content_type!r}, uploaded as {sample.media_type}")
    kind = "inline" if sample.inline else "attachment"
    if not (disposition or "").startswith(kind):
        problems.append(f"{sample.name}: Content-Disposition {disposition!r}, expected {kind}")
    quoted = sample.name.replace(" ", "%20")
    if sample.name not in (disposition or "") and quoted not in (disposition or ""):
        problems.append(f"{sample.name}: Content-Disposition {disposition!r} does not name the file")
    return problems


def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain GET (urllib), returning status, headers (lower-case names) and body."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body[:200]


def upload(client_url: str, token: str, sample: Sample) -> str:
    """POST /_matrix/media/v3/upload; returns the mxc URI."""
    url = f"{client_url}/_matrix/media/v3/upload?filename={urllib.parse.quote(sample.name)}"
    request = urllib.request.Request(
        url,
        data=sample.data,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": sample.media_type},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        uri: str = json.loads(response.read())["content_uri"]
    return uri


def register(client_url: str, shared_secret: str, localpart: str, password: str) -> tuple[str, str]:
    """(user ID, access token) through the shared-secret admin API, which both servers
    serve: much faster than the operator CLI, and the same kind of account."""
    admin_url = f"{client_url}/_synapse/admin/v1/register"
    with urllib.request.urlopen(admin_url, timeout=20) as response:
        nonce = json.loads(response.read())["nonce"]
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    mac.update(f"{nonce}\x00{localpart}\x00{password}\x00notadmin".encode())
    body = {"nonce": nonce, "username": localpart, "password": password, "mac": mac.hexdigest()}
    request = urllib.request.Request(
        admin_url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        created = json.loads(response.read())
    return created["user_id"], created["access_token"]
