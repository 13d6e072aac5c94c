"""CIFAR-10N loader for benchmarks: the 50,000 training JPEGs and their label columns.

The images are decoded once into a uint8 array cached under `.bench/` (git-ignored), because
decoding 50,000 JPEGs costs more than most of the quick benchmark runs that read them.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# CIFAR10N_DIR points elsewhere, e.g. on a GPU machine that received a copy.
DATA_DIR = Path(
    os.environ.get("CIFAR10N_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10n"
)
CACHE_DIR = Path(__file__).resolve().parents[1] / ".bench"
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
LABEL_COLUMNS = ("clean", "aggre", "worse", "random1", "random2", "random3")


def available() -> bool:
    return (DATA_DIR / "cifar10-train-jpeg.zip").is_file()


def require() -> None:
    """Stop a benchmark that needs CIFAR-10N, saying where it was looked for."""
    if not available():
        raise SystemExit(f"CIFAR-10N not found under {DATA_DIR}")


def load_images() -> np.ndarray:
    """All 50,000 images as (n, 32, 32, 3) uint8, in CIFAR-10 training order."""
    cache = CACHE_DIR / "cifar10n-images.npy"
    if cache.is_file():
        return np.load(cache)
    with zipfile.ZipFile(DATA_DIR / "cifar10-train-jpeg.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        images = np.stack(
            [np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in names]
        )
    CACHE_DIR.mkdir(exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.partial.npy")
    np.save(partial, images)
    partial.replace(cache)  # atomic: a benchmark started meanwhile never reads half a file
    return images


def image_names() -> list[str]:
    """The images' names in CIFAR-10 training order, the row order of `load_images`."""
    with open(DATA_DIR / "cifar10n-labels.csv", newline="") as f:
        return sorted(row["image"] for row in csv.DictReader(f))


def load_labels() -> dict[str, np.ndarray]:
    """Each label column as int class indices (CIFAR-10 order), rows in image order."""
    index = {name: i for i, name in enumerate(CLASSES)}
    with open(DATA_DIR / "cifar10n-labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["image"])
    return {
        column: np.array([index[row[column]] for row in rows], dtype=np.int64)
        for column in LABEL_COLUMNS
    }


def subset(n: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified random subset of n images (all of them when n >= 50,000)."""
    clean = load_labels()["clean"]
    if n >= len(clean):
        return np.arange(len(clean))
    rng = np.random.default_rng(seed)
    per_class = n // len(CLASSES)
    picked = [rng.permutation(np.flatnonzero(clean == c))[:per_class] for c in range(len(CLASSES))]
    return np.sort(np.concatenate(picked))


# Three labeling vendors for the vendor benchmarks, each labeling with one human column.
VENDORS = {"vendor-a": "aggre", "vendor-b": "random1", "vendor-c": "worse"}


def plan_deliveries(n: int, seed: int) -> tuple[list[dict], dict[str, dict]]:
    """Rows (path, label, vendor, batch, wrong) for n random images: each vendor a third, each
    third in two deliveries."""
    with (DATA_DIR / "cifar10n-labels.csv").open() as stream:
        rows = sorted(csv.DictReader(stream), key=lambda row: row["image"])
    picked = np.random.default_rng(seed).permutation(len(rows))[:n]
    planned, truth = [], {}
    for position, index in enumerate(picked):
        row = rows[index]
        vendor = list(VENDORS)[position % 3]
        label = row[VENDORS[vendor]]
        batch = "delivery-1" if position % 6 < 3 else "delivery-2"
        planned.append({"path": row["image"], "label": label, "vendor": vendor, "batch": batch})
        truth[row["image"]] = {"wrong": label != row["clean"], "clean": row["clean"]}
    return planned, truth
