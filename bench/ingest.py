"""Ingest throughput: 1 decode process versus all cores on a generated folder, and the wall time to
ingest the 50,000 CIFAR-10N JPEGs read in place from their zip with the `worse` labels.

    python -m bench.ingest [--images 5000] [--skip-cifar]

Each run uses a fresh SQLite file in a temporary folder; results go to bench/results/ingest.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from auditor.config import Settings
from auditor.db import migrate
from auditor.db.session import make_engine, make_session_factory
from bench.report import write_results

if TYPE_CHECKING:
    from auditor.ingest.ingest import IngestResult

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10n"


def generate_folder(root: Path, count: int, side: int = 64) -> None:
    """Smooth random images (a few blobs on a gradient) so JPEG sizes resemble photos."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side
    for i in range(count):
        label = f"class_{i % 10}"
        (root / label).mkdir(parents=True, exist_ok=True)
        base = rng.random(3) * 255 * (0.5 + 0.5 * xs[..., None] * ys[..., None])
        cx, cy, r = rng.random(3)
        blob = (
            ((xs - cx) ** 2 + (ys - cy) ** 2 < (0.1 + 0.3 * r) ** 2)[..., None]
            * rng.random(3)
            * 120
        )
        noise = rng.normal(0, 8, (side, side, 3))
        pixels = np.clip(base + blob + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / label / f"{i:05d}.jpg", quality=85)


def timed_ingest(
    workdir: Path, name: str, source: Path, workers: int, **kwargs
) -> tuple[float, IngestResult]:
    # Imported here, not at the top: spawn re-imports this script in every decoding worker, as it
    # re-imports the `auditor` console script, whose module imports no pipeline; the checks'
    # cleanlab and scikit-learn at module level would start each worker seconds slower.
    from auditor.ingest.ingest import ingest

    url = f"sqlite:///{workdir / f'{name}-{workers}.db'}"
    migrate.upgrade(url)
    factory = make_session_factory(make_engine(url))
    start = time.perf_counter()
    result = ingest(factory, name, source, Settings(workers=workers), **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--skip-cifar", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    lines = [
        "### Ingest (`python -m bench.ingest`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {cores} cores; SQLite file.",
        "",
        "| run | images | processes | wall s | images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = workdir / "generated"
        generate_folder(folder, args.images)
        rates = {}
        for workers in (1, cores):
            seconds, result = timed_ingest(workdir, "generated", folder, workers)
            rates[workers] = result.images / seconds
            lines.append(
                f"| generated 64x64 JPEG folder | {result.images} | {workers} | {seconds:.1f} | {rates[workers]:.0f} |"
            )
        if not args.skip_cifar and (CIFAR / "cifar10-train-jpeg.zip").exists():
            labels = workdir / "worse.csv"
            with (CIFAR / "cifar10n-labels.csv").open() as src, labels.open("w", newline="") as dst:
                writer = csv.writer(dst)
                writer.writerow(["path", "label"])
                for row in csv.DictReader(src):
                    writer.writerow([row["image"], row["worse"]])
            seconds, result = timed_ingest(
                workdir, "cifar10n", CIFAR / "cifar10-train-jpeg.zip", cores, labels_file=labels
            )
            lines.append(
                f"| CIFAR-10N zip read in place, `worse` labels | {result.images} | {cores} | {seconds:.1f} | {result.images / seconds:.0f} |"
            )
            seconds, result = timed_ingest(
                workdir, "cifar10n", CIFAR / "cifar10-train-jpeg.zip", cores, labels_file=labels
            )
            lines.append(
                f"| CIFAR-10N re-added unchanged ({result.decoded} decoded) | {result.images} | {cores} | {seconds:.1f} | {result.images / seconds:.0f} |"
            )
        lines += ["", f"Speed-up with {cores} processes over 1: {rates[cores] / rates[1]:.2f}x."]
    write_results("ingest.md", lines)


if __name__ == "__main__":
    main()
