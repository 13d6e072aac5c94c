"""Copies among a labeling tool's uploads: the check endpoint's copy search (`CopyReference`) next
to the perceptual-hash match it relied on before, on CIFAR-10 images.

    python -m bench.upload_copies [--stored 45000] [--uploads 200]

The first `--stored` images play an audit's images. Uploads: crops of stored images keeping
81-91% of the side, scaled back to 32 x 32 and mirrored half of the time (each should find its
original), and as many images the audit never saw (the last ones of the set; CIFAR-10 holds some
real copies, so a few may rightly find one). Results go to bench/results/upload-copies.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import imagehash
import numpy as np
from PIL import Image

from auditor.check_image import PHASH_NEAR
from auditor.checks.duplicates import NearDuplicateCheck
from auditor.copies import CopyReference
from bench import cifar
from bench.report import write_results

THRESHOLD = NearDuplicateCheck.defaults["threshold"]


def crop_upload(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = round(32 * rng.uniform(0.81, 0.91))
    top, left = rng.integers(0, 33 - side, size=2)
    picture = Image.fromarray(pixels[top : top + side, left : left + side]).resize(
        (32, 32), Image.BILINEAR
    )
    upload = np.asarray(picture)
    return np.ascontiguousarray(upload[:, ::-1]) if rng.random() < 0.5 else upload


def phash_rows(hashes: np.ndarray, pixels: np.ndarray) -> set[int]:
    """Stored rows within the check's perceptual-hash distance of an upload."""
    probe = imagehash.phash(Image.fromarray(pixels)).hash.ravel()
    return set(np.flatnonzero((hashes != probe).sum(axis=1) <= PHASH_NEAR).tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stored", type=int, default=45_000)
    parser.add_argument("--uploads", type=int, default=200)
    args = parser.parse_args()
    cifar.require()
    rng = np.random.default_rng(0)
    images = cifar.load_images()
    stored = images[: args.stored]
    started = time.perf_counter()
    reference = CopyReference.of(stored)
    build_seconds = time.perf_counter() - started
    hashes = np.stack([imagehash.phash(Image.fromarray(p)).hash.ravel() for p in stored])

    found = {"copy search": 0, "perceptual hash": 0}
    false = {"copy search": 0, "perceptual hash": 0}
    seconds = []
    originals = rng.integers(0, args.stored, size=args.uploads)
    unseen = range(len(images) - args.uploads, len(images))
    for original in originals:
        upload = crop_upload(stored[original], rng)
        started = time.perf_counter()
        rows, similarities = reference.copies_of(upload)
        seconds.append(time.perf_counter() - started)
        found["copy search"] += int(original in set(rows[similarities >= THRESHOLD].tolist()))
        found["perceptual hash"] += int(original in phash_rows(hashes, upload))
    for row in unseen:
        started = time.perf_counter()
        _, similarities = reference.copies_of(images[row])
        seconds.append(time.perf_counter() - started)
        false["copy search"] += int((similarities >= THRESHOLD).any())
        false["perceptual hash"] += int(bool(phash_rows(hashes, images[row])))

    lines = [
        "### Copies among uploads (`python -m bench.upload_copies`)",
        "",
        f"{args.stored} stored CIFAR-10 images; {args.uploads} crops of them (81-91% of the side, "
        f"half mirrored) and {args.uploads} unseen images uploaded; machine: "
        f"{platform.machine()}, 2 cores (shared).",
        "",
        "| method | crops that found their original | unseen images that found a copy |",
        "|---|---:|---:|",
    ]
    for method in found:
        lines.append(f"| {method} | {found[method]} / {args.uploads} | {false[method]} / "
                     f"{args.uploads} |")  # fmt: skip
    lines += [
        "",
        f"Copy search: reference built in {build_seconds:.1f} s (once per audit, when the check "
        f"first loads it); per upload median {np.median(seconds) * 1000:.0f} ms, 95th percentile "
        f"{np.percentile(seconds, 95) * 1000:.0f} ms.",
    ]
    write_results("upload-copies.md", lines)


if __name__ == "__main__":
    main()
