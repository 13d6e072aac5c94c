"""Which images may be copies of which, for the duplicate checks, when the features come from a CNN
trained on the dataset itself (no pretrained backbone).

A classifier trained here pulls every image of a class together, which is what mislabel detection
wants and copy detection does not, so copies are found by appearance: an 8x8 colour thumbnail
split into its mirror-symmetric part and the magnitude of its antisymmetric part, so that an image
and its mirror get the same vector. A crop scaled back to full size moves every pixel, though, and
its thumbnail no longer matches the original's: 17% of crops keeping 81-91% of the side were found
at the 0.96 threshold (bench/duplicates.py). So each image is also described through windows on a
grid (two sizes, 3 x 3 positions), and every window is searched among the whole-image thumbnails:
a copy cut near a window matches it. A pair's similarity is the best of the whole-image match and
the window matches in either direction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import roi_align

from auditor.index import KnnGraph, centred_unit_rows, knn_graph, neighbours_in

THUMBNAIL_SIDE = 8
WINDOW_FRACTIONS = (0.84, 0.91)
"""Window sides as fractions of the image side, chosen by measurement (bench/duplicates.py):
they bracket crops that keep 81-91% of the side, and a crop between two positions of the grid
is at most a few pixels off the nearer one."""
WINDOW_POSITIONS = 3
WINDOW_NEIGHBOURS = 3
"""Nearest whole images kept per window: the first is often the window's own image."""
WINDOW_EXACT_MAX = 2_000
WINDOW_LISTS_PER_SQRT_N = 0.5
WINDOW_PROBES = 4
"""Exact window search only for small sets: it costs images^2 x windows, 100 s at 20,000 images
on 2 cores. Beyond, an IVF partition of the whole-image thumbnails into sqrt(n) / 2 lists, 4 of
them probed per window: a copy's thumbnail is nearly identical to its window's, so it falls in the
same lists, and few large lists keep the matrix products efficient (bench/duplicates.py: the same
recall as exact search on 4,400 images)."""
IMAGES_PER_STEP = 4_096
"""Images whose windows are searched at once: 18 windows of 4,096 images are 113 MiB of floats."""
CANDIDATE_SIMILARITY = 0.94
"""Thumbnail similarity (whole or windowed) at which a pair is verified; bench/duplicates.py."""
FINE_SIDE = 16
REFINE_SHIFTS = (-1, 0, 1)
REFINE_SCALES = (0.96, 1.0, 1.04)
PAIRS_PER_STEP = 1_024
"""Candidate pairs verified at once: 27 views of 16 x 16 x 3 floats each, 85 MiB."""
NEW_IMAGE_CANDIDATES = 256
"""Stored images whose windows are compared with a new image's whole thumbnail: the 256 most like
it whole. Uploads of crops keeping 81-91% of the side (mirrored half of the time) of 45,000 stored
CIFAR-10 images: 172 of 200 found at the 0.96 threshold (162 with 64 candidates), about 0.3 s per
upload on 2 busy cores."""


def thumbnail_descriptor(
    pixels: np.ndarray, windows: Sequence[tuple[int, int, int] | None] = (None,)
) -> np.ndarray:
    """(n, len(windows), 2 * 8 * 8 * 3) float32: per image (n, h, w, 3 uint8) the mirror-invariant
    thumbnail of each window (top, left, size), None being the whole image. Antialiased bilinear
    resizing, as Pillow's."""
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
    descriptors = []
    for window in windows:
        if window is not None:
            top, left, size = window
            view = images[:, :, top : top + size, left : left + size]
        else:
            view = images
        small = torch.nn.functional.interpolate(
            view, size=(THUMBNAIL_SIDE, THUMBNAIL_SIDE), mode="bilinear", antialias=True
        )
        mirrored = small.flip(3)
        descriptors.append(
            torch.cat([(small + mirrored) / 2, (small - mirrored).abs()], dim=2).flatten(1)
        )
    return torch.stack(descriptors, dim=1).numpy()


def crop_windows(height: int, width: int) -> list[tuple[int, int, int]]:
    """(top, left, size) of the square windows each image is also described by."""
    windows = []
    for fraction in WINDOW_FRACTIONS:
        size = max(1, round(fraction * min(height, width)))
        for top in np.linspace(0, height - size, WINDOW_POSITIONS).round().astype(int):
            for left in np.linspace(0, width - size, WINDOW_POSITIONS).round().astype(int):
                windows.append((int(top), int(left), size))
    return windows


def copy_neighbours(
    pixels: np.ndarray, k: int, *, progress: Callable[[float], None] | None = None
) -> KnnGraph:
    """The k images most likely to be copies of each image (n, h, w, 3 uint8), never the image
    itself, by verified similarity (`verified_similarity`) of the pairs whose thumbnails, whole or
    windowed, come within `CANDIDATE_SIMILARITY`. Rows with fewer than k such pairs end in index
    -1, similarity -inf."""
    report = progress or (lambda fraction: None)
    whole = thumbnail_descriptor(pixels)[:, 0]
    mean = whole.mean(axis=0, keepdims=True)
    database = centred_unit_rows(whole, mean)
    graph = knn_graph(database, k)
    report(0.1)
    height, width = pixels.shape[1:3]
    windows = crop_windows(height, width)
    found = neighbours_in(
        database,
        _window_batches(pixels, windows, mean),
        WINDOW_NEIGHBOURS,
        exact_max=WINDOW_EXACT_MAX,
        n_lists=max(1, round(WINDOW_LISTS_PER_SQRT_N * np.sqrt(len(pixels)))),
        n_probe=WINDOW_PROBES,
    )
    indices, similarities = [graph.indices], [graph.similarities]
    for start, hits in zip(range(0, len(pixels), IMAGES_PER_STEP), found, strict=True):
        rows = min(IMAGES_PER_STEP, len(pixels) - start)
        indices.append(hits.indices.reshape(rows, -1))
        similarities.append(hits.similarities.reshape(rows, -1))
        report(0.1 + 0.6 * (start + rows) / len(pixels))
    hints = np.array(
        [(0, 0, min(height, width))] * graph.k
        + [window for window in windows for _ in range(WINDOW_NEIGHBOURS)]
    )
    first, second, column = _candidate_pairs(
        np.concatenate([indices[0], np.concatenate(indices[1:])], axis=1),
        np.concatenate([similarities[0], np.concatenate(similarities[1:])], axis=1),
    )
    verified = verified_similarity(pixels, first, second, hints[column])
    report(0.95)
    return _top_k_per_row(
        np.concatenate([first, second]),
        np.concatenate([second, first]),
        np.concatenate([verified, verified]),
        len(pixels),
        k,
    )


@dataclass
class CopyReference:
    """An audit's decoded images as its copy search saw them, to find the stored copies of an
    image that came later (a labeling tool's upload) by the same evidence."""

    pixels: np.ndarray
    database: np.ndarray
    mean: np.ndarray
    fine_mean: torch.Tensor

    @classmethod
    def of(cls, pixels: np.ndarray) -> CopyReference:
        whole = thumbnail_descriptor(pixels)[:, 0]
        mean = whole.mean(axis=0, keepdims=True)
        return cls(pixels, centred_unit_rows(whole, mean), mean, _mean_fine_thumbnail(pixels))

    def copies_of(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, verified similarities), most similar first, of the stored images that may be
        copies of `image` (h, w, 3 uint8, the stored images' size). Both ways round: a stored
        image may be a crop of the new one (one of its windows matches a stored whole image) or
        the new one a crop of a stored image (one of the stored image's windows matches it)."""
        image = np.array(image, dtype=np.uint8)  # writable, as torch wants it
        height, width = self.pixels.shape[1:3]
        windows = [(0, 0, min(height, width)), *crop_windows(height, width)]
        query = centred_unit_rows(
            thumbnail_descriptor(image[None], [None, *windows[1:]])[0], self.mean
        )
        coarse = query @ self.database.T
        k = min(WINDOW_NEIGHBOURS, coarse.shape[1])
        window, stored = np.nonzero(coarse >= np.sort(coarse, axis=1)[:, -k, None])
        keep = coarse[window, stored] >= CANDIDATE_SIMILARITY
        from_new = (stored[keep], np.array(windows)[window[keep]])
        nearest = np.argsort(-coarse[0])[:NEW_IMAGE_CANDIDATES]
        stored_windows = thumbnail_descriptor(self.pixels[nearest], windows[1:])
        views = centred_unit_rows(stored_windows.reshape(-1, query.shape[1]), self.mean)
        matches = (views @ query[0]).reshape(len(nearest), -1)
        best = matches.argmax(axis=1)
        close = matches[np.arange(len(nearest)), best] >= CANDIDATE_SIMILARITY
        from_stored = (nearest[close], np.array(windows[1:])[best[close]])
        candidates = np.concatenate([from_new[0], from_stored[0]])
        if not len(candidates):
            return np.empty(0, np.int64), np.empty(0, np.float32)
        stack = np.concatenate([image[None], self.pixels[candidates]])
        local = np.arange(1, len(candidates) + 1)
        new_first = np.arange(len(candidates)) < len(from_new[0])
        verified = verified_similarity(
            stack,
            np.where(new_first, 0, local),
            np.where(new_first, local, 0),
            np.concatenate([from_new[1], from_stored[1]]).reshape(-1, 3),
            self.fine_mean,
        )
        order = np.lexsort((-verified, candidates))
        rows, similarities = candidates[order], verified[order]
        first_of_row = np.ones(len(rows), dtype=bool)
        first_of_row[1:] = rows[1:] != rows[:-1]
        rows, similarities = rows[first_of_row], similarities[first_of_row]
        ranked = np.argsort(-similarities, kind="stable")
        return rows[ranked], similarities[ranked]


def _candidate_pairs(
    candidates: np.ndarray, coarse: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, column) of the pairs worth verifying: coarse similarity at least
    `CANDIDATE_SIMILARITY`, each unordered pair once, by its most similar window (the column of
    the candidate table, which says which window of `first` matched)."""
    first, column = np.nonzero(
        (coarse >= CANDIDATE_SIMILARITY)
        & (candidates >= 0)
        & (candidates != np.arange(len(candidates))[:, None])
    )
    second, strength = candidates[first, column], coarse[first, column]
    order = np.lexsort((-strength, np.maximum(first, second), np.minimum(first, second)))
    low, high = np.minimum(first, second)[order], np.maximum(first, second)[order]
    leading = np.ones(len(order), dtype=bool)
    leading[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    keep = order[leading]
    return first[keep], second[keep], column[keep]


def _top_k_per_row(
    rows: np.ndarray, others: np.ndarray, similarities: np.ndarray, n_rows: int, k: int
) -> KnnGraph:
    """A (n_rows, k) graph from (row, other, similarity) triples, most similar first."""
    order = np.lexsort((-similarities, rows))
    rows, others, similarities = rows[order], others[order], similarities[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    rank = np.arange(len(rows)) - starts[rows]
    kept = rank < k
    indices = np.full((n_rows, k), -1, np.int64)
    graph_similarities = np.full((n_rows, k), -np.inf, np.float32)
    indices[rows[kept], rank[kept]] = others[kept]
    graph_similarities[rows[kept], rank[kept]] = similarities[kept]
    return KnnGraph(indices, graph_similarities)


def verified_similarity(
    pixels: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    hints: np.ndarray,
    mean: torch.Tensor | None = None,
) -> np.ndarray:
    """Per candidate pair, the best cosine similarity between a 16x16 view of the first image
    near its hinted window (top, left, size) and the whole second image or its mirror: the
    window shifted by up to a pixel (at 32) and scaled by 4% either way, each view centred on
    the dataset's mean view and then on its own mean colour (`_centred`). An 8x8 thumbnail
    cannot tell an aeroplane from a car on the same white sky, and two night scenes or two pale
    skies agree in colour wherever they differ in content; at 16x16, aligned and without their
    background colour, a copy still matches and a look-alike no longer does. On all 50,000
    CIFAR-10 images this cut the largest group of linked images from 401 (dataset-centred
    thumbnails) to 68, a series of photographs of one car (bench/duplicates.py, BENCHMARKS.md).
    `mean` is the dataset's mean 16x16 view, when `pixels` are not the whole dataset."""
    mean = _mean_fine_thumbnail(pixels) if mean is None else mean
    result = np.empty(len(first), np.float32)
    for start in range(0, len(first), PAIRS_PER_STEP):
        step = slice(start, start + PAIRS_PER_STEP)
        result[step] = _verified_step(pixels, first[step], second[step], hints[step], mean)
    return result


def _verified_step(
    pixels: np.ndarray, first: np.ndarray, second: np.ndarray, hints: np.ndarray, mean: torch.Tensor
) -> np.ndarray:
    sources, source_of = np.unique(first, return_inverse=True)
    boxes = _refined_boxes(hints, *pixels.shape[1:3])
    per_pair = len(boxes) // len(first)
    crops = roi_align(
        _as_float_images(pixels[sources]),
        torch.from_numpy(
            np.concatenate([np.repeat(source_of, per_pair)[:, None], boxes], axis=1)
        ).float(),
        output_size=FINE_SIDE,
        sampling_ratio=2,
        aligned=True,
    )
    crops = _unit(_centred(crops, mean)).view(len(first), per_pair, -1)
    targets = _fine_thumbnails(pixels[second])
    best = torch.full((len(first),), -1.0)
    for target in (targets, targets.flip(3)):
        similarity = torch.einsum("pbd,pd->pb", crops, _unit(_centred(target, mean))).amax(dim=1)
        best = torch.maximum(best, similarity)
    return best.numpy()


def _refined_boxes(hints: np.ndarray, height: int, width: int) -> np.ndarray:
    """(pairs * boxes, 4) x0, y0, x1, y1: per hinted window, the windows around it that
    `verified_similarity` tries, kept inside the image."""
    unit = min(height, width) / 32
    shifts = np.array(REFINE_SHIFTS) * unit
    sizes = np.minimum(hints[:, 2, None] * np.array(REFINE_SCALES), min(height, width))
    centre_y = hints[:, 0] + hints[:, 2] / 2
    centre_x = hints[:, 1] + hints[:, 2] / 2
    size = np.repeat(sizes, len(shifts) ** 2, axis=1)
    dy = np.tile(np.repeat(shifts, len(shifts)), len(REFINE_SCALES))
    dx = np.tile(np.tile(shifts, len(shifts)), len(REFINE_SCALES))
    top = np.clip(centre_y[:, None] + dy - size / 2, 0, height - size)
    left = np.clip(centre_x[:, None] + dx - size / 2, 0, width - size)
    return np.stack([left, top, left + size, top + size], axis=2).reshape(-1, 4)


def _as_float_images(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()


def _fine_thumbnails(pixels: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.interpolate(
        _as_float_images(pixels), size=(FINE_SIDE, FINE_SIDE), mode="bilinear", antialias=True
    )


def _mean_fine_thumbnail(pixels: np.ndarray) -> torch.Tensor:
    total = torch.zeros(1, 3, FINE_SIDE, FINE_SIDE)
    for start in range(0, len(pixels), IMAGES_PER_STEP):
        total += _fine_thumbnails(pixels[start : start + IMAGES_PER_STEP]).sum(0, keepdim=True)
    return total / max(1, len(pixels))


def _centred(views: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Views less the dataset's mean view, then less their own mean colour, so that the pictures
    are compared by what is in them, not by the colour of their sky or night."""
    centred = views - mean
    return centred - centred.mean(dim=(2, 3), keepdim=True)


def _unit(values: torch.Tensor) -> torch.Tensor:
    flat = values.flatten(1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-6)


def _window_batches(
    pixels: np.ndarray, windows: list[tuple[int, int, int]], mean: np.ndarray
) -> Iterator[np.ndarray]:
    """Per step of images, the centred unit descriptors of all their windows, image-major."""
    for start in range(0, len(pixels), IMAGES_PER_STEP):
        views = thumbnail_descriptor(pixels[start : start + IMAGES_PER_STEP], windows)
        yield centred_unit_rows(views.reshape(-1, views.shape[2]), mean)
