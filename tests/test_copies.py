"""Copy search from pixels: deep crops are found through windows, look-alikes on one background are
told apart by the verification, and nothing links an image to itself."""

from __future__ import annotations

import numpy as np
from PIL import Image

from auditor.copies import CopyReference, copy_neighbours, thumbnail_descriptor
from auditor.index import centred_unit_rows
from tests.corpus import scene

THRESHOLD = 0.96  # the duplicate checks' default


def resized(pixels: np.ndarray, side: int = 32) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((side, side), Image.BILINEAR))


def whole_similarity(pixels: np.ndarray, a: int, b: int) -> float:
    descriptors = thumbnail_descriptor(pixels)[:, 0]
    vectors = centred_unit_rows(descriptors, descriptors.mean(axis=0, keepdims=True))
    return float(vectors[a] @ vectors[b])


def linked(graph, threshold: float = THRESHOLD) -> set[tuple[int, int]]:
    rows, columns = np.nonzero(graph.similarities >= threshold)
    pairs = zip(rows, graph.indices[rows, columns], strict=True)
    return {(int(min(a, b)), int(max(a, b))) for a, b in pairs}


def test_a_deep_corner_crop_is_found_and_distinct_scenes_are_not():
    rng = np.random.default_rng(3)
    scenes = [np.asarray(scene(rng)) for _ in range(60)]
    crop = resized(scenes[5][0:26, 6:32])  # 81% of the side, in a corner
    mirrored_crop = resized(scenes[9][3:30, 0:27])[:, ::-1]
    pixels = np.stack([*scenes, crop, mirrored_crop])
    # The whole-image thumbnails alone would miss both copies.
    assert whole_similarity(pixels, 5, 60) < 0.94
    assert whole_similarity(pixels, 9, 61) < THRESHOLD
    graph = copy_neighbours(pixels, 5)
    assert linked(graph) == {(5, 60), (9, 61)}
    assert not (graph.indices == np.arange(len(pixels))[:, None]).any()


def test_lookalikes_on_one_background_are_not_copies():
    """A cross and a box on the same white ground: their 8x8 thumbnails are as close as copies'
    (0.97), the 16x16 verification tells them apart; a one-pixel shift of the cross is a copy."""
    rng = np.random.default_rng(0)

    def on_white(shape: str, shift: int = 0) -> np.ndarray:
        image = np.full((32, 32, 3), 235, np.uint8)
        if shape == "cross":
            image[14 + shift : 18 + shift, 6:26] = 40
            image[8 + shift : 24 + shift, 14:18] = 40
        else:
            image[11:21, 9:23] = 40
        return image

    noise = (rng.random((40, 32, 32, 3)) * 255).astype(np.uint8)
    pixels = np.concatenate([np.stack([on_white("cross"), on_white("box")]), noise])
    assert whole_similarity(pixels, 0, 1) >= 0.96
    assert linked(copy_neighbours(pixels, 5)) == set()
    shifted = np.concatenate([pixels, on_white("cross", shift=1)[None]])
    assert linked(copy_neighbours(shifted, 5)) == {(0, len(shifted) - 1)}


def test_two_night_scenes_are_not_copies_for_their_shared_darkness():
    """Dark frames with one small light in different places: every thumbnail agrees in colour
    (0.99, and 0.99 for 16x16 views centred on the dataset's mean only); without their own mean
    colour they differ, while a mirrored copy of one of them still matches."""
    rng = np.random.default_rng(0)

    def night(top: int, left: int) -> np.ndarray:
        image = np.empty((32, 32, 3), np.uint8)
        image[...] = (10, 14, 40)
        image[top : top + 3, left : left + 3] = (200, 190, 120)
        return image

    noise = (rng.random((40, 32, 32, 3)) * 255).astype(np.uint8)
    pixels = np.concatenate([np.stack([night(6, 6), night(22, 20)]), noise])
    assert whole_similarity(pixels, 0, 1) > 0.98
    assert linked(copy_neighbours(pixels, 5)) == set()
    with_copy = np.concatenate([pixels, pixels[1:2, :, ::-1]])
    assert linked(copy_neighbours(with_copy, 5)) == {(1, len(with_copy) - 1)}


def test_a_new_image_finds_its_stored_copies_both_ways_round():
    """A labeling tool's upload against an audit's images: a mirrored deep crop of a stored
    scene, a stored image that is a crop of the upload, and a scene unlike any stored one."""
    rng = np.random.default_rng(5)
    stored = np.stack([np.asarray(scene(rng)) for _ in range(80)])
    reference = CopyReference.of(stored)
    crop_of_stored = resized(stored[7][2:28, 5:31])[:, ::-1]
    rows, similarities = reference.copies_of(np.ascontiguousarray(crop_of_stored))
    assert rows[0] == 7 and similarities[0] >= THRESHOLD
    assert (similarities[1:] < THRESHOLD).all()
    # The upload is wider than what was stored: stored row 12 becomes a crop of it.
    wide = np.asarray(scene(rng))
    with_crop = np.concatenate([stored, resized(wide[3:30, 0:27])[None]])
    rows, similarities = CopyReference.of(with_crop).copies_of(wide)
    assert rows[0] == len(with_crop) - 1 and similarities[0] >= THRESHOLD
    unrelated = np.asarray(scene(rng))
    rows, similarities = reference.copies_of(unrelated)
    assert (similarities < THRESHOLD).all()
