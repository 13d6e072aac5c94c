"""The patch encoder's cost by batch size, side by side in one process.

    python -m bench.patch_encoding [--n 5000] [--rounds 3] [--baseline OLD_patch_features.py]

The encoder's distance block (patches x centroids) is memory-bound, so its batch size decides how
much of it stays in cache. Each round times the dictionary fit once and then `transform` at every
batch size in turn (interleaved, so a machine's drift hits all alike); the table gives the median
CPU and wall seconds per size, the ratio to 200 images per batch (the size used before the
default became cache-sized), and the largest difference from that size's features. With
`--baseline` (an earlier auditor/predict/patch_features.py, e.g. from `git show`), whole
mirror-invariant encodings (fit and two passes) by that module and by the current one alternate too.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from auditor.predict import patch_features
from auditor.predict.patch_features import CPU_BLOCK_FLOATS, PatchKMeans
from bench import cifar
from bench.report import write_results

BASELINE_BATCH = 200


def timed(step):
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    result = step()
    return result, time.process_time() - started_cpu, time.perf_counter() - started_wall


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location("baseline_patch_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def whole_encodings(images: np.ndarray, baseline_path: Path, rounds: int) -> list[str]:
    """Lines comparing whole encodings by the baseline module and the current one."""
    modules = {"baseline": load_module(baseline_path), "current": patch_features}
    cpu: dict[str, list[float]] = {name: [] for name in modules}
    wall: dict[str, list[float]] = {name: [] for name in modules}
    features: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, module in modules.items():
            features[name], seconds_cpu, seconds_wall = timed(
                lambda module=module: module.patch_features(images, seed=0)
            )
            cpu[name].append(seconds_cpu)
            wall[name].append(seconds_wall)
    difference = np.abs(features["current"] - features["baseline"]).max()
    difference /= np.abs(features["baseline"]).max()
    ratio = np.median(cpu["current"]) / np.median(cpu["baseline"])
    return [
        "",
        f"Whole mirror-invariant encodings (fit and two passes), `{baseline_path.name}` against "
        f"the current module, {rounds} interleaved rounds (medians): baseline "
        f"{np.median(cpu['baseline']):.1f} CPU-s ({np.median(wall['baseline']):.1f} s wall), "
        f"current {np.median(cpu['current']):.1f} CPU-s ({np.median(wall['current']):.1f} s "
        f"wall), ratio {ratio:.2f}; largest difference in the features {difference:.1e} of "
        "their largest value.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="an earlier patch_features.py")
    args = parser.parse_args()
    images = cifar.load_images()[: args.n]
    encoder, fit_cpu, fit_wall = timed(lambda: PatchKMeans(400, seed=0).fit(images))
    grid = (images.shape[1] - encoder.patch + 1) * (images.shape[2] - encoder.patch + 1)
    default_batch = max(1, CPU_BLOCK_FLOATS // (grid * encoder.n_centroids))
    sizes = [BASELINE_BATCH, 50, 20, default_batch, 2]
    cpu: dict[int, list[float]] = {size: [] for size in sizes}
    wall: dict[int, list[float]] = {size: [] for size in sizes}
    features: dict[int, np.ndarray] = {}
    for _ in range(args.rounds):
        for size in sizes:
            features[size], seconds_cpu, seconds_wall = timed(
                lambda size=size: encoder.transform(images, batch_size=size)
            )
            cpu[size].append(seconds_cpu)
            wall[size].append(seconds_wall)
    baseline = features[BASELINE_BATCH]
    lines = [
        "#### Patch encoding by batch size (`python -m bench.patch_encoding`)",
        "",
        f"First {args.n:,} CIFAR-10N images, 400 centroids, 6x6 patches, torch threads = "
        f"{torch.get_num_threads()}, {args.rounds} interleaved rounds (medians). The dictionary "
        f"fit took {fit_cpu:.1f} CPU-s ({fit_wall:.1f} s wall). One `transform` pass (the "
        "mirror-invariant features take two):",
        "",
        "| images per batch | CPU-s | wall-s | CPU time / 200 per batch | largest difference |",
        "|---:|---:|---:|---:|---:|",
    ]
    reference_cpu = float(np.median(cpu[BASELINE_BATCH]))
    for size in sizes:
        difference = np.abs(features[size] - baseline).max() / np.abs(baseline).max()
        label = f"{size} (default)" if size == default_batch else str(size)
        lines.append(
            f"| {label} | {np.median(cpu[size]):.1f} | {np.median(wall[size]):.1f} "
            f"| {np.median(cpu[size]) / reference_cpu:.2f} | {difference:.1e} |"
        )
    if args.baseline is not None:
        lines += whole_encodings(images, args.baseline, args.rounds)
    write_results("patch-encoding.md", lines)


if __name__ == "__main__":
    main()
