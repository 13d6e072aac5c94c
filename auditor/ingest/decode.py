"""Decode one image's bytes once and describe it; every failure becomes a reason, not a crash.

Pillow reads only the header in `Image.open`, where the decompression-bomb check runs, so an image
with too many pixels is refused before any pixel memory is allocated.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from auditor.ingest.sources import NotARegularFile, PathRefused, Source
from auditor.ingest.status import ImageStatus

THUMB_SIDE = 64


class UnreadableImage(Exception):
    """The bytes are not a usable image; the message is the reason shown to the curator."""


@dataclass
class ImageDescription:
    sha256: str
    n_bytes: int
    width: int
    height: int
    mode: str
    format: str | None
    phash: str
    stats: dict = field(default_factory=dict)


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) with the bomb limit enforced as an error at `max_pixels`."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.size  # noqa: B018 - header parsed here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"not an image ({sniff(data)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"corrupt image header: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if image.width * image.height > max_pixels:
        raise UnreadableImage(f"decompression bomb refused: {image.width}x{image.height} pixels")
    return image


def sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like HTML"
    if head.startswith(b"%pdf"):
        return "looks like PDF"
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary format"
    return "looks like text"


def to_rgb(image: Image.Image) -> Image.Image:
    """First frame, EXIF orientation applied, any mode (CMYK, 16-bit, palette, alpha) to 8-bit RGB."""
    image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / top)).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_rgb(data: bytes, max_pixels: int = 100_000_000) -> Image.Image:
    """The RGB image every later stage sees; raises UnreadableImage with the reason."""
    image = open_checked(data, max_pixels)
    try:
        image.load()
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImage(f"corrupt or truncated image data: {exc}") from None


def describe(data: bytes, max_pixels: int = 100_000_000) -> ImageDescription:
    # imagehash pulls in SciPy and PyWavelets; only ingest needs it, not the loader workers that
    # import this module for decode_rgb.
    import imagehash

    image = open_checked(data, max_pixels)
    mode, fmt = image.mode, image.format
    n_frames = getattr(image, "n_frames", 1)
    try:
        image.load()
        rgb = to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImage(f"corrupt or truncated image data: {exc}") from None
    thumb = rgb.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    gray = np.asarray(thumb.convert("L"), dtype=np.float32)
    return ImageDescription(
        sha256=hashlib.sha256(data).hexdigest(),
        n_bytes=len(data),
        width=rgb.width,
        height=rgb.height,
        mode=mode,
        format=fmt,
        phash=str(imagehash.phash(rgb)),
        stats={
            "pixel_std": round(float(gray.std()), 3),
            "pixel_mean": round(float(gray.mean()), 3),
            "frames": int(n_frames),
        },
    )


@dataclass
class DecodeOutcome:
    path: str
    stamp: str | None
    status: str
    error: str | None = None
    description: dict | None = None


def decode_entry(source: Source, path: str, max_pixels: int, max_bytes: int) -> DecodeOutcome:
    """Read and describe one file; runs in a worker process, so it returns plain data."""
    try:
        stamp = source.stamp(path)
        if stamp is None:
            return DecodeOutcome(path, None, ImageStatus.MISSING, "file not found")
        size = source.size(path)
        if size > max_bytes:
            return DecodeOutcome(
                path, stamp, ImageStatus.UNREADABLE, f"file too large ({size} bytes > {max_bytes})"
            )
        data = source.read_bytes(path)
    except PathRefused as exc:
        return DecodeOutcome(path, None, ImageStatus.REFUSED, str(exc))
    except (FileNotFoundError, NotADirectoryError):
        return DecodeOutcome(path, None, ImageStatus.MISSING, "file not found")
    except IsADirectoryError:
        return DecodeOutcome(path, None, ImageStatus.UNREADABLE, "is a directory, not a file")
    except NotARegularFile:
        reason = "not a regular file (a FIFO, socket or device)"
        return DecodeOutcome(path, None, ImageStatus.UNREADABLE, reason)
    except OSError as exc:
        return DecodeOutcome(path, None, ImageStatus.UNREADABLE, f"cannot read file: {exc}")
    try:
        description = describe(data, max_pixels)
    except UnreadableImage as exc:
        return DecodeOutcome(path, stamp, ImageStatus.UNREADABLE, str(exc))
    return DecodeOutcome(path, stamp, ImageStatus.OK, None, description.__dict__)


def decode_chunk(paths: list[str], source: Source, max_pixels: int, max_bytes: int):
    return [decode_entry(source, p, max_pixels, max_bytes) for p in paths]
