"""Small fixed-size pixel arrays for training the compact CNN on the dataset itself.

At 32x32 a 50,000-image dataset is 150 MB of uint8, so it is decoded once into memory rather than
streamed; decoding runs in worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from auditor.ingest.decode import UnreadableImage, decode_rgb
from auditor.ingest.sources import Source
from auditor.parallel import map_chunks


def pixels_chunk(paths: Sequence[str], source: Source, side: int, max_pixels: int) -> list:
    """Each image as (side, side, 3) uint8, or None when it cannot be read any more."""
    arrays = []
    for path in paths:
        try:
            image = decode_rgb(source.read_bytes(path), max_pixels)
        except (UnreadableImage, OSError):
            arrays.append(None)
            continue
        if image.size != (side, side):
            image = image.resize((side, side), Image.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return arrays


def load_pixels(
    source: Source,
    paths: Sequence[str],
    side: int,
    workers: int,
    max_pixels: int = 100_000_000,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (n, side, side, 3) uint8, ok mask): a file that changed into garbage since ingest
    is masked out rather than stopping the audit."""
    pixels = np.zeros((len(paths), side, side, 3), dtype=np.uint8)
    ok = np.ones(len(paths), dtype=bool)
    results = map_chunks(
        pixels_chunk, list(paths), workers, source, side, max_pixels, progress=progress
    )
    for index, array in enumerate(results):
        if array is None:
            ok[index] = False
        else:
            pixels[index] = array
    return pixels, ok


def duplicate_descriptor(pixels: np.ndarray, side: int = 8) -> np.ndarray:
    """A copy-detection vector per image: an 8x8 colour thumbnail split into its mirror-symmetric
    part and the magnitude of its antisymmetric part, so an image and its mirror get the same
    vector. A CNN trained here to classify pulls every image of a class together, which is what
    mislabel detection wants and copy detection does not (see bench/duplicates.py)."""
    small = np.stack(
        [
            np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32)
            for image in pixels
        ]
    )
    mirrored = small[:, :, ::-1]
    return np.concatenate([(small + mirrored) / 2, np.abs(small - mirrored)], axis=1).reshape(
        len(pixels), -1
    )
