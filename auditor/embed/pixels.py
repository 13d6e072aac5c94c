"""Small fixed-size pixel arrays for training the compact CNN on the dataset itself.

At 32x32 a 50,000-image dataset is 150 MB of uint8, so it is decoded once into memory rather than
streamed; decoding runs in worker processes (`auditor.embed.small_images`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from auditor.embed.backbones import ModelIdentity
from auditor.embed.cache import DEFAULT_SHARD_ROWS, FeatureStore
from auditor.embed.small_images import decode_small_images
from auditor.ingest.sources import Source
from auditor.parallel import map_chunks

PIXELS = "pixels"


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
        decode_small_images, list(paths), workers, source, side, max_pixels, progress=progress
    )
    for index, array in enumerate(results):
        if array is None:
            ok[index] = False
        else:
            pixels[index] = array
    return pixels, ok


def pixel_store(data_dir: Path, side: int) -> FeatureStore:
    """The decoded small images, cached by content hash like features are, so a re-audit decodes
    only images it has not seen (at 32x32, 3 KB an image)."""
    identity = ModelIdentity(
        architecture="pixels",
        weights="none",
        weights_sha256="",
        resolution=side,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        taps=(PIXELS,),
    )
    return FeatureStore(data_dir, identity)


def load_pixels_cached(
    store: FeatureStore,
    source: Source,
    items: Sequence[tuple[str, str]],
    workers: int,
    max_pixels: int = 100_000_000,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """`load_pixels` for (sha256, path) items, decoding only hashes the store lacks.
    Returns (pixels, ok, number decoded)."""
    side = store.identity.resolution
    width = side * side * 3
    shas = [sha for sha, _ in items]
    first_path: dict[str, str] = {}
    for (sha, path), hit in zip(items, store.contains(shas, [PIXELS]), strict=True):
        if not hit:
            first_path.setdefault(sha, path)
    missing = list(first_path)
    decoded, decoded_ok = load_pixels(
        source, [first_path[sha] for sha in missing], side, workers, max_pixels, progress
    )
    failed = {sha for sha, ok in zip(missing, decoded_ok, strict=True) if not ok}
    for start in range(0, len(missing), DEFAULT_SHARD_ROWS):
        rows = [
            i for i in range(start, min(start + DEFAULT_SHARD_ROWS, len(missing))) if decoded_ok[i]
        ]
        if rows:
            store.write_shard(
                [missing[i] for i in rows], {PIXELS: decoded[rows].reshape(len(rows), width)}
            )
    pixels = store.read(shas, {PIXELS: width}, dtype=np.uint8)[PIXELS]
    ok = np.array([sha not in failed for sha in shas], dtype=bool)
    return pixels.reshape(len(shas), side, side, 3), ok, len(missing)


APPEARANCE_CHUNK_ROWS = 4_096
"""Images per step of `appearance_descriptor`: bounds its float temporaries to about 50 MiB at
32 x 32 pixels."""


def appearance_descriptor(pixels: np.ndarray, side: int = 8) -> np.ndarray:
    """An image's look at a glance: its colour thumbnail beside a thumbnail of its edge strength
    (side x side block averages of each), one row per image, to be compared by Euclidean distance
    so brightness and contrast count. A CNN trained on the data's own labels maps anything it is
    shown into the space of its classes, so an off-topic upload lands among the images of its
    label; colours, layout and texture give it away (bench/outliers.py)."""
    chunks = [
        _appearance_rows(pixels[start : start + APPEARANCE_CHUNK_ROWS], side)
        for start in range(0, len(pixels), APPEARANCE_CHUNK_ROWS)
    ]
    return np.concatenate(chunks) if chunks else np.empty((0, 2 * side * side * 3), np.float32)


def _appearance_rows(pixels: np.ndarray, side: int) -> np.ndarray:
    values = pixels.astype(np.float32)
    edges = np.abs(np.diff(values, axis=1))[:, :, :-1] + np.abs(np.diff(values, axis=2))[:, :-1]
    return np.concatenate([_block_means(values, side), _block_means(edges, side)], axis=1)


def _block_means(values: np.ndarray, side: int) -> np.ndarray:
    """side x side block averages of (n, height, width, channels) values, as adaptive average
    pooling computes them, flattened per image."""
    n, height, width, _ = values.shape
    rows = np.linspace(0, height, side + 1).astype(int)
    columns = np.linspace(0, width, side + 1).astype(int)
    blocks = np.add.reduceat(np.add.reduceat(values, rows[:-1], axis=1), columns[:-1], axis=2)
    areas = np.outer(np.diff(rows), np.diff(columns))[None, :, :, None]
    return (blocks / areas).reshape(n, -1)
