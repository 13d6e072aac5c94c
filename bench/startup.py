"""Start-up costs of the command line and of its decoding worker processes, as a user meets them.

multiprocessing's spawn re-imports the main script in every worker; run from the `auditor`
console script, that is `auditor.cli` and whatever it imports. Timed here, each in a fresh
interpreter started like the console script (a script file importing `auditor.cli.app`):

- `--help`: the whole command, wall seconds;
- pixel decoding of `--images` generated 32x32 JPEGs, wall seconds inside the script: in 2
  worker processes (forced where `auditor.parallel` decides by itself), with 2 workers allowed
  (the default: before, processes from 1,000 items; since, where the first chunk's time says
  they pay), and in one process.

`--baseline DIR` runs the same from another checkout (e.g. `git worktree add /tmp/base HEAD~1`),
alternating with this one, and reports the ratio.

    python -m bench.startup --baseline /tmp/base --out bench/results/startup.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.embed import write_jpegs

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = (
    "import sys\nfrom auditor.cli import app\nif __name__ == '__main__':\n    sys.exit(app())\n"
)
DECODE_SCRIPT = """import sys, time
from auditor.cli import app
if __name__ == "__main__":
    import auditor.parallel
    from auditor.embed.pixels import load_pixels
    from auditor.ingest.sources import open_source
    if sys.argv[3] == "force" and hasattr(auditor.parallel, "WORKER_START_SECONDS"):
        auditor.parallel.WORKER_START_SECONDS = 0.0  # processes, however cheap the work
    source = open_source(sys.argv[1])
    paths = sorted(entry.path for entry in source.entries())
    start = time.perf_counter()
    pixels, ok = load_pixels(source, paths, 32, int(sys.argv[2]))
    print(time.perf_counter() - start, int(ok.sum()))
"""


DECODE_RUNS = (
    ("decode, 2 worker processes", 2, "force"),
    ("decode, 2 workers allowed (the default decides)", 2, "default"),
    ("decode, 1 process", 1, "default"),
)


def run(tree: Path, script: Path, *args: str) -> tuple[float, str]:
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(script), *args],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    return time.perf_counter() - start, result.stdout


def measure(tree: Path, scripts: dict[str, Path], images: Path) -> dict[str, float]:
    help_seconds, _ = run(tree, scripts["help"], "--help")
    timings = {"--help (whole command)": help_seconds}
    for label, workers, mode in DECODE_RUNS:
        _, output = run(tree, scripts["decode"], str(images), str(workers), mode)
        timings[label] = float(output.split()[0])
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    trees = {"this tree": ROOT}
    if args.baseline:
        trees["baseline"] = args.baseline.resolve()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as work:
        work_dir = Path(work)
        scripts = {"help": work_dir / "auditor_cli.py", "decode": work_dir / "decode.py"}
        scripts["help"].write_text(CONSOLE_SCRIPT)
        scripts["decode"].write_text(DECODE_SCRIPT)
        images = work_dir / "images"
        write_jpegs(images, args.images)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                results[name].append(measure(tree, scripts, images))
    lines = [
        "# Start-up of the command line and its decoding workers",
        "",
        f"Command: `python -m bench.startup {' '.join(sys.argv[1:])}`",
        f"Machine: {os.cpu_count()} cores; {args.images} generated 32x32 JPEGs; medians of "
        f"{args.rounds} alternating rounds, wall seconds.",
        "",
        "| measurement | " + " | ".join(trees) + (" | ratio |" if args.baseline else ""),
        "|---|" + "---:|" * (len(trees) + (1 if args.baseline else 0)),
    ]
    for key in results["this tree"][0]:
        medians = [float(np.median([r[key] for r in results[name]])) for name in trees]
        ratio = f" {medians[0] / medians[1]:.3f} |" if args.baseline else ""
        lines.append(f"| {key} | " + " | ".join(f"{m:.2f}" for m in medians) + " |" + ratio)
    report = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
