"""Thumbnail geometry, output types and the refusal of bombs and non-images."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from homeserver.media import thumbnailer
from homeserver.media.repository import ThumbnailInfo
from homeserver.media.service import select_thumbnail

SYNAPSE_SIZES = [(32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"), (640, 480, "scale"), (800, 600, "scale")]
MAX = 32 * 1024 * 1024


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_synapse_sizes_for_a_landscape_png() -> None:
    made = thumbnailer.generate_thumbnails(
        encode(Image.new("RGB", (1000, 700)), "PNG"), "image/png", SYNAPSE_SIZES, max_pixels=MAX
    )
    assert made.image_size == (1000, 700)
    got = {(t.width, t.height, t.method, t.media_type) for t in made.thumbnails}
    assert got == {
        (32, 32, "crop", "image/png"),
        (96, 96, "crop", "image/png"),
        (320, 224, "scale", "image/png"),
        (640, 448, "scale", "image/png"),
        (800, 560, "scale", "image/png"),
    }
    for t in made.thumbnails:
        assert decode(t.data).size == (t.width, t.height)


def test_scale_never_enlarges_and_duplicates_collapse() -> None:
    made = thumbnailer.generate_thumbnails(
        encode(Image.new("RGB", (200, 100)), "PNG"), "image/png", SYNAPSE_SIZES, max_pixels=MAX
    )
    scaled = sorted((t.width, t.height) for t in made.thumbnails if t.method == "scale")
    assert scaled == [(200, 100)]  # 640x480 and 800x600 both give the original size once


def test_jpeg_and_webp_give_jpeg_unless_transparent() -> None:
    photo = encode(Image.new("RGB", (300, 300), (1, 2, 3)), "JPEG")
    assert {
        t.media_type
        for t in thumbnailer.generate_thumbnails(photo, "image/jpeg", SYNAPSE_SIZES, max_pixels=MAX).thumbnails
    } == {"image/jpeg"}
    opaque_webp = encode(Image.new("RGBA", (300, 300), (1, 2, 3, 255)), "WEBP")
    assert {
        t.media_type
        for t in thumbnailer.generate_thumbnails(opaque_webp, "image/webp", SYNAPSE_SIZES, max_pixels=MAX).thumbnails
    } == {"image/jpeg"}
    clear_webp = encode(Image.new("RGBA", (300, 300), (1, 2, 3, 0)), "WEBP")
    assert {
        t.media_type
        for t in thumbnailer.generate_thumbnails(clear_webp, "image/webp", SYNAPSE_SIZES, max_pixels=MAX).thumbnails
    } == {"image/png"}
    gif = encode(Image.new("P", (300, 300)), "GIF")
    assert {
        t.media_type
        for t in thumbnailer.generate_thumbnails(gif, "image/gif", SYNAPSE_SIZES, max_pixels=MAX).thumbnails
    } == {"image/png"}


def test_large_jpeg_uses_draft_decoding_but_keeps_geometry() -> None:
    photo = encode(Image.new("RGB", (4000, 3000), (200, 100, 0)), "JPEG")
    made = thumbnailer.generate_thumbnails(photo, "image/jpeg", SYNAPSE_SIZES, max_pixels=MAX)
    assert made.image_size == (4000, 3000)
    assert {(t.width, t.height) for t in made.thumbnails if t.method == "scale"} == {(320, 240), (640, 480), (800, 600)}


def test_exif_rotation_is_applied() -> None:
    image = Image.new("RGB", (400, 200))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    data = encode(image, "JPEG", exif=exif)
    made = thumbnailer.generate_thumbnails(data, "image/jpeg", [(800, 600, "scale")], max_pixels=MAX)
    assert made.image_size == (200, 400)
    (thumb,) = made.thumbnails
    assert (thumb.width, thumb.height) == (200, 400) == decode(thumb.data).size


def _png_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _real_bomb() -> bytes:
    """A genuine 1-bit 20000x20000 PNG: 50 MB of pixels in ~50 KB."""
    width = height = 20000
    row = b"\x00" + bytes(width // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data", [_png_declaring(30000, 30000), _real_bomb()], ids=["header", "real"])
def test_decompression_bombs_are_refused_before_decoding(data: bytes) -> None:
    assert thumbnailer.generate_thumbnails(data, "image/png", SYNAPSE_SIZES, max_pixels=MAX).thumbnails == []
    assert thumbnailer.image_size(data, max_pixels=MAX) is None
    with pytest.raises(thumbnailer.ThumbnailError, match="over the limit|decompression bomb"):
        thumbnailer.SourceImage(data, max_pixels=MAX)


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (b"not an image at all", "image/png"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png"),
        (b"", "image/jpeg"),
        (encode(Image.new("RGB", (10, 10)), "PNG")[:40], "image/png"),  # truncated
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),  # not on the allowlist
        (encode(Image.new("RGB", (10, 10)), "BMP"), "image/png"),  # a real image, but BMP is not decoded
        (encode(Image.new("RGB", (10, 10)), "PNG"), "application/octet-stream"),
    ],
)
def test_non_images_give_no_thumbnails(data: bytes, media_type: str) -> None:
    made = thumbnailer.generate_thumbnails(data, media_type, SYNAPSE_SIZES, max_pixels=MAX)
    assert (made.image_size, made.thumbnails) == (None, [])


def test_select_thumbnail_like_synapse() -> None:
    infos = [
        ThumbnailInfo(32, 32, "crop", "image/png", 100),
        ThumbnailInfo(96, 96, "crop", "image/png", 400),
        ThumbnailInfo(320, 224, "scale", "image/png", 1000),
        ThumbnailInfo(640, 448, "scale", "image/png", 3000),
    ]
    assert select_thumbnail(infos, 32, 32, "crop") == infos[0]
    assert select_thumbnail(infos, 50, 50, "crop") == infos[1]
    assert select_thumbnail(infos, 500, 500, "crop") == infos[1]
    assert select_thumbnail(infos, 100, 100, "scale") == infos[2]
    assert select_thumbnail(infos, 600, 400, "scale") == infos[3]
    assert select_thumbnail(infos[:2], 100, 100, "scale") is None
