"""The small-JPEG fast path must give exactly the pixels of the general decoder, and step aside
for every file the general path treats specially."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from auditor.embed.backbones import Preprocess
from auditor.embed.fast_jpeg import decode_plain_jpeg, plain_jpeg_size
from auditor.ingest.decode import UnreadableImage, decode_rgb


def jpeg_bytes(mode: str = "RGB", size: int = 32, **save) -> bytes:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    field = (
        ramp[None, :, None] * 0.6 + ramp[:, None, None] * 0.4 + rng.normal(0, 9, (size, size, 3))
    )
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_same_pixels_as_the_general_path(mode):
    data = jpeg_bytes(mode)
    fast = decode_plain_jpeg(data, 32)
    assert fast is not None and fast.shape == (32, 32, 3)
    np.testing.assert_array_equal(fast, np.asarray(decode_rgb(data)))
    general = Preprocess(32)(decode_rgb(data))
    np.testing.assert_array_equal(Preprocess(32).from_bytes(data, 10_000).numpy(), general.numpy())


def test_files_the_general_path_must_handle_are_refused():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    cases = {
        "exif": jpeg_bytes(exif=exif.tobytes()),
        "cmyk": jpeg_bytes("CMYK"),
        "other size": jpeg_bytes(size=40),
        "truncated": jpeg_bytes()[:-200],
        "png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        "empty": b"",
    }
    for name, data in cases.items():
        assert decode_plain_jpeg(data, 32) is None, name
    assert plain_jpeg_size(jpeg_bytes(size=40)) == (40, 40)


def test_truncated_jpeg_still_fails_clearly_through_preprocess():
    with pytest.raises(UnreadableImage, match="truncated|corrupt"):
        Preprocess(32).from_bytes(jpeg_bytes()[:-200], 10_000)
