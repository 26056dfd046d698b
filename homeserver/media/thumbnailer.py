"""Thumbnails with Pillow: plain functions over bytes, meant to run in a worker thread.

Only JPEG, PNG, GIF and WebP are ever decoded (Pillow is told to try no other format),
and an image declaring more than ``max_pixels`` pixels is refused from its header alone,
before any pixel is decoded: a 30000x30000 PNG of a few kilobytes costs nothing.

The geometry is Synapse's: ``crop`` scales to cover the box and cuts the middle out
(so it is exactly the size asked), ``scale`` fits within the box keeping the aspect ratio
and never enlarges.  JPEG and WebP sources get JPEG thumbnails, PNG and GIF sources PNG
ones, and any source that really uses transparency gets PNG.  Animated sources give a
still of their first frame.

Pillow is imported on first use (about 2 MB of memory a server that never thumbnails
does not pay).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

# Upload content type -> thumbnail content type.  Nothing else is thumbnailed.
THUMBNAIL_TYPES: dict[str, str] = {
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/webp": "image/jpeg",
    "image/gif": "image/png",
    "image/png": "image/png",
}
_PILLOW_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
_ENCODERS = {"image/jpeg": "JPEG", "image/png": "PNG"}


class ThumbnailError(Exception):
    """The bytes are not an image we thumbnail (corrupt, unsupported, or too large)."""


@dataclass(frozen=True, slots=True)
class Thumbnail:
    width: int
    height: int
    method: str
    media_type: str
    data: bytes


def thumbnail_type_for(media_type: str) -> str | None:
    """The thumbnail content type for an upload's content type, or None: not thumbnailed."""
    return THUMBNAIL_TYPES.get(media_type.split(";", 1)[0].strip().lower())


class SourceImage:
    """An image opened from bytes, with its header checked against ``max_pixels``."""

    def __init__(self, data: bytes, *, max_pixels: int, draft_side: int | None = None) -> None:
        from PIL import Image, ImageFile, ImageOps

        try:
            image: Image.Image = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ThumbnailError(f"not a supported image: {e}") from None
        width, height = image.size
        if width < 1 or height < 1 or width * height > max_pixels:
            image.close()
            raise ThumbnailError(f"image of {width}x{height} pixels is over the limit of {max_pixels}")
        try:
            if _orientation(image) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
            if draft_side and image.format == "JPEG" and isinstance(image, ImageFile.ImageFile):
                # Let the JPEG decoder downscale by 2/4/8 while decoding (much faster);
                # the result is still at least draft_side on each side.
                image.draft("RGB", (draft_side, draft_side))
            image.load()
            # Respect the EXIF orientation, as cameras write it.
            image = ImageOps.exif_transpose(image) or image
            if image.mode not in ("RGB", "RGBA"):
                has_alpha = image.mode in ("LA", "PA") or "transparency" in image.info
                image = image.convert("RGBA" if has_alpha else "RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ThumbnailError(f"cannot decode the image: {e}") from None
        self.image = image
        # The image's size as shown (EXIF-rotated); the pixels may be fewer (JPEG draft).
        self.width, self.height = width, height

    def close(self) -> None:
        self.image.close()

    def __enter__(self) -> SourceImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def uses_transparency(self) -> bool:
        if self.image.mode != "RGBA":
            return False
        low, _ = self.image.getchannel("A").getextrema()
        return bool(low < 255)  # type: ignore[operator]

    def shrink_for(self, boxes: Iterable[tuple[int, int, str]]) -> None:
        """Downscale the pixels once to the smallest size every box can still be made from,
        so each thumbnail resizes a small image instead of the full one."""
        factor = 0.0
        for width, height, method in boxes:
            wx, hx = width / self.width, height / self.height
            factor = max(factor, max(wx, hx) if method == "crop" else min(wx, hx))
        from PIL import Image

        pixel_width, pixel_height = self.image.size
        target = (math.ceil(self.width * factor) + 1, math.ceil(self.height * factor) + 1)
        if target[0] * 2 <= pixel_width and target[1] * 2 <= pixel_height:
            shrunk = self.image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            self.image.close()
            self.image = shrunk

    def scaled_size(self, width: int, height: int) -> tuple[int, int]:
        """What ``scale`` to a ``width`` x ``height`` box produces (never enlarged)."""
        return scaled_size(self.width, self.height, width, height)

    def scale(self, width: int, height: int, media_type: str) -> bytes:
        from PIL import Image

        with self.image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0) as scaled:
            return _encode(scaled, media_type)

    def crop(self, width: int, height: int, media_type: str) -> bytes:
        from PIL import Image

        if width * self.height > height * self.width:
            scaled_width, scaled_height = width, max((width * self.height) // self.width, 1)
            top = (scaled_height - height) // 2
            box = (0, top, width, top + height)
        else:
            scaled_width, scaled_height = max((height * self.width) // self.height, 1), height
            left = (scaled_width - width) // 2
            box = (left, 0, left + width, height)
        with self.image.resize((scaled_width, scaled_height), Image.Resampling.LANCZOS, reducing_gap=3.0) as scaled:
            with scaled.crop(box) as cropped:
                return _encode(cropped, media_type)

    def make(self, width: int, height: int, method: str, media_type: str) -> Thumbnail:
        """One thumbnail; ``media_type`` is the preferred output (PNG if transparent)."""
        if media_type == "image/jpeg" and self.uses_transparency:
            media_type = "image/png"
        if method == "crop":
            return Thumbnail(width, height, "crop", media_type, self.crop(width, height, media_type))
        t_width, t_height = self.scaled_size(width, height)
        return Thumbnail(t_width, t_height, "scale", media_type, self.scale(t_width, t_height, media_type))


_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 (broken EXIF is ignored, as Pillow does)
        return 1
    return value if isinstance(value, int) else 1


def scaled_size(src_width: int, src_height: int, width: int, height: int) -> tuple[int, int]:
    """Synapse's ``scale``: the largest size of the source's aspect ratio that fits the
    box, clamped to the source's own size (never enlarged)."""
    if width * src_height < height * src_width:
        t_width, t_height = width, max((width * src_height) // src_width, 1)
    else:
        t_width, t_height = max((height * src_width) // src_height, 1), height
    return min(src_width, t_width), min(src_height, t_height)


def _encode(image: Image.Image, media_type: str) -> bytes:
    out = io.BytesIO()
    if media_type == "image/jpeg" and image.mode != "RGB":
        image = image.convert("RGB")
    image.save(out, _ENCODERS[media_type], quality=80)
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Thumbnails:
    """What thumbnailing an upload gave: the image's size (None: not an image we
    thumbnail) and the thumbnails."""

    image_size: tuple[int, int] | None
    thumbnails: list[Thumbnail]


def generate_thumbnails(
    data: bytes, media_type: str, sizes: Iterable[tuple[int, int, str]], *, max_pixels: int
) -> Thumbnails:
    """Every thumbnail in ``sizes`` ((width, height, method) boxes) of an uploaded image.

    Content we do not thumbnail gives no thumbnails; bad input never raises.
    """
    out_type = thumbnail_type_for(media_type)
    if out_type is None:
        return Thumbnails(None, [])
    boxes = list(sizes)
    draft_side = max((max(w, h) for w, h, _ in boxes), default=0)
    try:
        with SourceImage(data, max_pixels=max_pixels, draft_side=draft_side) as source:
            source.shrink_for(boxes)
            made: dict[tuple[int, int, str, str], Thumbnail] = {}
            for width, height, method in boxes:
                thumb = source.make(width, height, method, out_type)
                made.setdefault((thumb.width, thumb.height, thumb.method, thumb.media_type), thumb)
            return Thumbnails((source.width, source.height), list(made.values()))
    except ThumbnailError:
        return Thumbnails(None, [])


def generate_thumbnail(
    data: bytes, media_type: str, width: int, height: int, method: str, *, max_pixels: int
) -> Thumbnail | None:
    """One thumbnail of exactly the requested box (dynamic thumbnails), or None."""
    found = generate_thumbnails(data, media_type, [(width, height, method)], max_pixels=max_pixels).thumbnails
    return found[0] if found else None


def image_size(data: bytes, *, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) from the header of a supported image, without decoding it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return (width, height) if 0 < width * height <= max_pixels else None
