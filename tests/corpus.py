"""Generated test data: a hostile ImageFolder corpus whose expected fate is known file by file."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def scene(rng: np.random.Generator, side: int = 32) -> Image.Image:
    """A smooth random picture: a colour gradient and a few blobs, unlike any other scene."""
    ys, xs = np.mgrid[0:side, 0:side] / side
    pixels = rng.random(3) * 200 * (0.3 + xs[..., None]) + rng.random(3) * 55 * ys[..., None]
    for _ in range(3):
        cx, cy, radius = rng.random(3)
        pixels += ((xs - cx) ** 2 + (ys - cy) ** 2 < (0.08 + 0.2 * radius) ** 2)[..., None] * (
            rng.random(3) * 160 - 80
        )
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A valid PNG header claiming billions of pixels, with a few bytes of data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg() -> bytes:
    """40x20 pixels stored, EXIF orientation 6 (rotate 90): displayed as 20x40."""
    image = noise_image(7, (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes())


# path -> expected outcome: "ok", or the finding kind with a fragment of the reason.
EXPECTED = {
    "cat/ok_0.png": "ok",
    "cat/ok_1.png": "ok",
    "cat/ok_2.jpg": "ok",
    "cat/empty.jpg": ("unreadable", "empty file"),
    "cat/truncated.jpg": ("unreadable", "truncated"),
    "cat/truncated.png": ("unreadable", "truncated"),
    "cat/page.jpg": ("unreadable", "HTML"),
    "cat/notes.jpg": ("unreadable", "text"),
    "cat/bomb.png": ("unreadable", "decompression bomb"),
    "cat/escape.png": ("unreadable", "outside the dataset root"),
    "cat/inside_link.png": "ok",
    "dog/cmyk.jpg": "ok",
    "dog/gray16.png": "ok",
    "dog/palette.png": "ok",
    "dog/alpha.png": "ok",
    "dog/animated.gif": "ok",
    "dog/gray.png": "ok",
    "dog/rotated.jpg": "ok",
    "dog/tiny.png": ("image_quality", "tiny"),
    "dog/strip.png": ("image_quality", "aspect ratio"),
    "dog/constant.png": ("image_quality", "near-constant"),
    "dog/ünïcödé näme.png": "ok",
    "dog/with space.png": "ok",
    "dog/copy of ok_0.png": ("exact_duplicate", ""),
    "evil": ("unreadable", "outside the dataset root"),
}


def write_hostile_corpus(root: Path, outside: Path) -> Path:
    """Write the corpus under `root`; `outside` is a folder beyond it that links point to."""
    cat, dog = root / "cat", root / "dog"
    cat.mkdir(parents=True)
    dog.mkdir()
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.png").write_bytes(encode(noise_image(99), "PNG"))

    ok0 = encode(noise_image(0), "PNG")
    (cat / "ok_0.png").write_bytes(ok0)
    (cat / "ok_1.png").write_bytes(encode(noise_image(1), "PNG"))
    jpeg = encode(noise_image(2), "JPEG", quality=90)
    (cat / "ok_2.jpg").write_bytes(jpeg)
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = encode(noise_image(3, (64, 64)), "PNG")
    (cat / "truncated.png").write_bytes(png[: len(png) // 2])
    (cat / "page.jpg").write_text("<!DOCTYPE html><html><body>404</body></html>")
    (cat / "notes.jpg").write_text("just some notes, not an image\n")
    (cat / "bomb.png").write_bytes(png_bomb())
    os.symlink(outside / "secret.png", cat / "escape.png")
    os.symlink(cat / "ok_1.png", cat / "inside_link.png")
    os.symlink(outside, root / "evil")

    (dog / "cmyk.jpg").write_bytes(encode(noise_image(4).convert("CMYK"), "JPEG"))
    gray16 = Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
    (dog / "gray16.png").write_bytes(encode(gray16, "PNG"))
    (dog / "palette.png").write_bytes(encode(noise_image(5).convert("P"), "PNG"))
    alpha = noise_image(6).convert("RGBA")
    alpha.putalpha(128)
    (dog / "alpha.png").write_bytes(encode(alpha, "PNG"))
    frames = [noise_image(10).convert("P"), noise_image(11).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    (dog / "animated.gif").write_bytes(buffer.getvalue())
    (dog / "gray.png").write_bytes(encode(noise_image(12).convert("L"), "PNG"))
    (dog / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    (dog / "tiny.png").write_bytes(encode(noise_image(13, (1, 1)), "PNG"))
    (dog / "strip.png").write_bytes(encode(noise_image(14, (1, 5000)), "PNG"))
    (dog / "constant.png").write_bytes(encode(Image.new("RGB", (32, 32), (128, 128, 128)), "PNG"))
    (dog / "ünïcödé näme.png").write_bytes(encode(noise_image(15), "PNG"))
    (dog / "with space.png").write_bytes(encode(noise_image(16), "PNG"))
    (dog / "copy of ok_0.png").write_bytes(ok0)
    return root
