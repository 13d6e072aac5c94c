"""Decoding images to small fixed-size arrays: the work that pixel loading hands to processes.

Kept apart from `auditor.embed.pixels` so a spawned worker imports numpy, Pillow and simplejpeg,
not torch: on two cores a worker importing torch spent about 4 s starting, longer than decoding
the demo's thousand images takes in one process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from auditor.embed.fast_jpeg import decode_plain_jpeg
from auditor.ingest.decode import UnreadableImage, decode_rgb
from auditor.ingest.sources import Source


def decode_small_images(
    paths: Sequence[str], source: Source, side: int, max_pixels: int
) -> list[np.ndarray | None]:
    """Each image as (side, side, 3) uint8, or None when it cannot be read any more."""
    arrays: list[np.ndarray | None] = []
    for path in paths:
        try:
            data = source.read_bytes(path)
            fast = decode_plain_jpeg(data, side)
            if fast is not None:
                arrays.append(fast)
                continue
            image = decode_rgb(data, max_pixels)
        except (UnreadableImage, OSError):
            arrays.append(None)
            continue
        if image.size != (side, side):
            image = image.resize((side, side), Image.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return arrays
