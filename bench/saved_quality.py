"""The `mislabel` check against cleanlab on probabilities computed elsewhere: runs that
`bench.predict --save DIR` kept, e.g. on a GPU machine lent for minutes, scored here at leisure.

    python -m bench.saved_quality DIR [--out bench/results/saved-quality.md]

Each file is scored alone, and the files of one strategy, label column and size together (their
probabilities averaged). The check runs at its defaults and with each of its two flag counts
forced (cleanlab's plain and calibrated confident-joint counts). Scores as in `bench.quality`: precision, recall and F1 of the flags and
AUROC of the ranking, against `noisy != clean`.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from bench import cifar
from bench.quality import our_mislabel, scores
from bench.report import write_results

SAVED_NAME = re.compile(r"(?P<strategy>.+)-(?P<labels>[a-z0-9]+)-(?P<n>\d+)-seed(?P<seed>\d+)\.npz")


def load_runs(folder: Path) -> dict[tuple[str, str, int], dict[int, dict[str, np.ndarray]]]:
    """{(strategy, labels, n): {seed: {rows, probabilities}}} of the saved runs in `folder`."""
    runs: dict[tuple[str, str, int], dict[int, dict[str, np.ndarray]]] = defaultdict(dict)
    for path in sorted(folder.glob("*.npz")):
        match = SAVED_NAME.fullmatch(path.name)
        if match is None:
            continue
        with np.load(path) as data:
            key = (match["strategy"], match["labels"], int(match["n"]))
            runs[key][int(match["seed"])] = dict(data)
    return runs


def score_rows(name: str, column: str, probabilities: np.ndarray, rows: np.ndarray) -> list[str]:
    """Table rows for the check and for cleanlab's defaults on the same probabilities."""
    labels = cifar.load_labels()
    noisy, truth = labels[column][rows], labels[column][rows] != labels["clean"][rows]
    probabilities = probabilities.astype(np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    methods = {
        "auditor `mislabel` (default)": our_mislabel(probabilities, None, noisy),
        "auditor `mislabel`, plain count always": our_mislabel(
            probabilities, None, noisy, calibrated_from=1.0
        ),
        "auditor `mislabel`, calibrated count always": our_mislabel(
            probabilities, None, noisy, calibrated_from=0.0
        ),
        "cleanlab `find_label_issues`": {
            "flagged": find_label_issues(noisy, probabilities),
            "ranking": 1.0 - get_label_quality_scores(noisy, probabilities),
        },
    }
    lines = []
    for method, result in methods.items():
        row = scores(result["flagged"], result["ranking"], truth)
        lines.append(
            f"| {column} | {len(rows)} | {name} | {method} | {row['flagged']} | "
            f"{row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['auroc']:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where bench.predict --save wrote its runs")
    parser.add_argument("--title", default="saved runs", help="what the runs were, for the heading")
    parser.add_argument("--out", default="saved-quality.md", help="file under bench/results/")
    args = parser.parse_args()
    cifar.require()
    lines = [
        f"### Mislabel quality on probabilities computed elsewhere ({args.title})",
        "",
        f"Command: `python -m bench.saved_quality {args.folder.name}`; truth: noisy label != clean.",
        "",
        "| labels | n | probabilities | method | flagged | precision | recall | F1 | AUROC |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for (strategy, column, _), seeds in load_runs(args.folder).items():
        for seed, run in sorted(seeds.items()):
            lines += score_rows(
                f"{strategy}, seed {seed}", column, run["probabilities"], run["rows"]
            )
        if len(seeds) > 1:
            rows = next(iter(seeds.values()))["rows"]
            if any(not np.array_equal(run["rows"], rows) for run in seeds.values()):
                raise SystemExit(f"{strategy} {column}: the saved runs cover different images")
            mean = np.mean([run["probabilities"] for run in seeds.values()], axis=0)
            lines += score_rows(f"{strategy}, mean of seeds {sorted(seeds)}", column, mean, rows)
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
