"""CPU forward passes with glibc's default heap against `retained_heap`, side by side in one run.

The same model runs the same uint8 batches (random weights and pixels: the cost of a forward
pass does not depend on their values) in child processes, alternating between one with glibc's
default heap and one inside `retained_heap`, as the embedding loop runs. Separate processes,
because no call puts glibc back to its default once `mallopt` was used. Page faults are counted
from getrusage; resident memory is read while the heap is still retained and after release.

    PYTHONPATH=. .venv/bin/python -m bench.heap    # writes bench/results/heap.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from auditor.embed.backbones import build_backbone
from auditor.embed.extract import torch_threads
from auditor.heap import retained_heap, supported

RESULTS = Path(__file__).resolve().parent / "results" / "heap.md"
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(architecture: str, resolution: int, images: int, batch: int, retain: bool) -> dict:
    """One arm in this process: a warm-up pass, then the median of three timed passes."""
    backbone = build_backbone(architecture, None, resolution=resolution)
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(
            0, 256, (batch, resolution, resolution, 3), dtype=torch.uint8, generator=generator
        )
        for _ in range(max(1, images // batch))
    ]
    count = len(batches) * batch
    per_image_us, faults = [], []
    with (
        torch_threads(os.cpu_count() or 1),
        retained_heap() if retain else contextlib.nullcontext(),
    ):
        for timed in (False, True, True, True):
            before, start = minor_faults(), time.perf_counter()
            for pixels in batches:
                backbone.embed(pixels)
            if timed:
                per_image_us.append((time.perf_counter() - start) / count * 1e6)
                faults.append((minor_faults() - before) / count)
        resident = resident_mib()
    return {
        "images": count,
        "us": float(np.median(per_image_us)),
        "faults": float(np.median(faults)),
        "resident": resident,
        "released": resident_mib(),
    }


def run_arm(architecture: str, resolution: int, images: int, batch: int, retain: bool) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.heap",
        "--arm",
        architecture,
        str(resolution),
        str(images),
        str(batch),
        "retained" if retain else "default",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def compare(architecture: str, resolution: int, images: int, batch: int, rounds: int) -> str:
    arms: dict[bool, list[dict]] = {False: [], True: []}
    for round_ in range(rounds):
        for retain in (False, True) if round_ % 2 == 0 else (True, False):
            arms[retain].append(run_arm(architecture, resolution, images, batch, retain))
    plain, retained = arms[False], arms[True]
    speedup = [p["us"] / r["us"] for p, r in zip(plain, retained, strict=True)]

    def median(arm: list[dict], key: str) -> float:
        return float(np.median([run[key] for run in arm]))

    return (
        f"| {architecture} @{resolution} | {plain[0]['images']} | {batch} "
        f"| {median(plain, 'us'):,.0f} | {median(retained, 'us'):,.0f} "
        f"| {np.median(speedup):.2f} ({np.percentile(speedup, 25):.2f}-"
        f"{np.percentile(speedup, 75):.2f}) "
        f"| {median(plain, 'faults'):,.1f} | {median(retained, 'faults'):,.1f} "
        f"| {median(plain, 'resident'):,.0f} | {median(retained, 'resident'):,.0f} "
        f"| {median(retained, 'released'):,.0f} |"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="processes of each, alternating")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--arm", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:
        architecture, resolution, images, batch, heap = args.arm
        result = measure(architecture, int(resolution), int(images), int(batch), heap == "retained")
        print(json.dumps(result))
        return
    if not supported():
        sys.exit("retained_heap needs glibc: nothing to compare on this platform")
    rows = [
        compare("compact", 32, 2048, 64, args.rounds),
        compare("resnet18", 224, 128, 64, args.rounds),
    ]
    command = "python -m bench.heap " + " ".join(sys.argv[1:] if argv is None else argv)
    report = "\n".join(
        [
            "# Forward passes with glibc's default heap and with `retained_heap`",
            "",
            f"Command: `{command.strip()}`",
            f"Machine: {os.cpu_count()}-core CPU ({platform.machine()}), {platform.libc_ver()[0]} "
            f"{platform.libc_ver()[1]}, torch {torch.__version__}, random weights and pixels; "
            f"{args.rounds} processes of each, alternating, each the median of 3 passes after a "
            "warm-up; medians over the processes (speed-up: middle half too).",
            "",
            "| model | images | batch | default us/img | retained us/img | speed-up "
            "| default faults/img | retained faults/img | default RSS MiB | retained RSS MiB "
            "| RSS MiB after release |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
