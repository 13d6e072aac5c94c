"""Mislabel detection quality on CIFAR-10N's real human label noise, next to cleanlab's defaults.

    python -m bench.quality [--n 10000] [--labels worse aggre random1]

The audit sees only a noisy label column. Out-of-sample probabilities and `pool` features come from
the default prediction strategy (cached under .bench/ so reruns are cheap). On the same inputs:
- ours: the `mislabel` check (noise-model posterior ranking; as many flags as cleanlab's
  confident-joint count, calibrated where the noise model finds heavy noise), with variants of
  its settings;
- cleanlab `find_label_issues(labels, pred_probs)` with its defaults;
- cleanlab `Datalab(...).find_issues(features=...)` given the features only (its own kNN model).
Scored against `noisy != clean`: precision, recall, F1, and AUROC of each ranking score.
Results go to bench/results/quality.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from cleanlab import Datalab
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.metrics import roc_auc_score

from auditor.checks import REGISTRY, CheckInputs
from auditor.checks.base import ImageTable
from auditor.index import knn_graph
from auditor.pipeline.stages import TRAINED_STRATEGY, search_vectors
from auditor.predict.strategies import out_of_sample_probabilities, stacking_weight
from bench import cifar
from bench.report import write_results


def cached_out_of_sample(
    column: str, n: int, strategy: str, start: int = 0
) -> dict[str, np.ndarray]:
    """Probabilities, CNN pool features (when a CNN is trained) and CPU minutes for the n images
    from `start` on with `column` labels, cached under .bench/."""
    suffix = f"-from{start}" if start else ""
    cache = cifar.CACHE_DIR / f"oos-{strategy}-{column}-{n}{suffix}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return dict(data)
    rows = slice(start, start + n)
    images, labels = cifar.load_images()[rows], cifar.load_labels()[column][rows]
    started = time.process_time()
    result = out_of_sample_probabilities(strategy, images=images, labels=labels, n_classes=10)
    outputs = {
        "probabilities": result.probabilities,
        "cpu_minutes": np.array((time.process_time() - started) / 60),
        **({"pool": result.layer_features["pool"]} if result.layer_features else {}),
    }
    cifar.CACHE_DIR.mkdir(exist_ok=True)
    np.savez(cache, **outputs)
    return outputs


def scores(flagged: np.ndarray, ranking: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = int((flagged & truth).sum())
    precision = tp / max(1, int(flagged.sum()))
    recall = tp / max(1, int(truth.sum()))
    return {
        "flagged": int(flagged.sum()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(1e-9, precision + recall),
        "auroc": roc_auc_score(truth, ranking),
    }


def cifar_check_inputs(
    labels: np.ndarray, probabilities: np.ndarray, pool: np.ndarray | None = None
) -> CheckInputs:
    """A check's inputs for CIFAR rows: labels, probabilities and, given CNN pool features, them
    and their kNN graph; an image table with nothing but the labels and row numbers."""
    n = len(labels)
    table = ImageTable(
        ids=np.arange(n), paths=[""] * n, status=["ok"] * n, errors=[None] * n,
        sha256=[None] * n, phash=[None] * n, width=np.zeros(n), height=np.zeros(n),
        stats=[{}] * n, labels=[str(c) for c in labels], splits=[None] * n,
    )  # fmt: skip
    return CheckInputs(
        dataset_id=0,
        images=table,
        class_names=list(cifar.CLASSES),
        rows=np.arange(n),
        labels=labels,
        features=pool,
        probabilities=probabilities,
        knn=knn_graph(search_vectors(pool), 10) if pool is not None else None,
    )


def our_mislabel(
    probabilities: np.ndarray, pool: np.ndarray, labels: np.ndarray, **settings
) -> dict:
    n = len(labels)
    inputs = cifar_check_inputs(labels, probabilities, pool)
    labeled, issues, score, evidence = REGISTRY["mislabel"](**settings).scores(inputs)
    flagged = np.zeros(n, bool)
    flagged[labeled[issues]] = True
    ranking = np.zeros(n)
    ranking[labeled] = score
    # The check's suggestion: the likeliest class other than the given one.
    evidence = evidence.copy()
    evidence[np.arange(len(labeled)), labels[labeled]] = -1.0
    suggested = labels.copy()
    suggested[labeled] = evidence.argmax(axis=1)
    return {"flagged": flagged, "ranking": ranking, "suggested": suggested}


def datalab_features_only(pool: np.ndarray, labels: np.ndarray) -> dict:
    lab = Datalab(data=pd.DataFrame({"label": labels}), label_name="label", verbosity=0)
    lab.find_issues(features=search_vectors(pool), issue_types={"label": {}})
    issues = lab.get_issues("label")
    return {
        "flagged": issues["is_label_issue"].to_numpy(),
        "ranking": 1.0 - issues["label_score"].to_numpy(),
    }


def subset_heading(
    title: str, module: str, args: argparse.Namespace, description: str
) -> list[str]:
    """A results file's heading with its command, and a line naming the images and the method."""
    option = f" --start {args.start}" if args.start else ""
    return [
        f"### {title} (`python -m bench.{module} --n {args.n}{option}`)",
        "",
        f"Images {args.start} to {args.start + args.n - 1}; {description}",
    ]


def subset_arguments(parser: argparse.ArgumentParser) -> None:
    """--n, --start and --labels: which CIFAR-10N images and label columns a run scores."""
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument(
        "--start", type=int, default=0, help="first image (10000: a disjoint check subset)"
    )
    parser.add_argument("--labels", nargs="+", default=["worse", "aggre", "random1"])


def results_name(stem: str, args: argparse.Namespace) -> str:
    """bench/results file of a subset: `stem`.md for the first 10,000 images, else with the size
    and the first image, so runs on other subsets do not overwrite it."""
    size = f"-n{args.n}" if args.n != 10000 else ""
    start = f"-from{args.start}" if args.start else ""
    return f"{stem}{size}{start}.md"


def subset_run(description: str) -> tuple[argparse.Namespace, slice, np.ndarray]:
    """A bench script's command line (--n, --start, --labels), the subset's rows and their clean
    labels; stops when CIFAR-10N is not beside the repository."""
    parser = argparse.ArgumentParser(description=description)
    subset_arguments(parser)
    args = parser.parse_args()
    cifar.require()
    rows = slice(args.start, args.start + args.n)
    return args, rows, cifar.load_labels()["clean"][rows]


def noisy_labels(column: str, rows: slice, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The column's labels for `rows` and which of them are wrong."""
    labels = cifar.load_labels()[column][rows]
    return labels, labels != clean


@dataclass
class SubsetPrediction:
    """One label column of a subset: its labels, which are wrong, the two models' cached
    out-of-sample outputs and the pipeline's stacked mixture of them."""

    labels: np.ndarray
    truth: np.ndarray
    patch: dict[str, np.ndarray]
    cnn: dict[str, np.ndarray]
    weight: float
    probabilities: np.ndarray


def subset_prediction(
    column: str, args: argparse.Namespace, rows: slice, clean: np.ndarray
) -> SubsetPrediction:
    labels, truth = noisy_labels(column, rows, clean)
    patch = cached_out_of_sample(column, args.n, "patch_heads", args.start)
    cnn = cached_out_of_sample(column, args.n, "cnn_crossfit", args.start)
    weight, probabilities = stacked_with_cnn(patch["probabilities"], cnn, labels)
    return SubsetPrediction(labels, truth, patch, cnn, weight, probabilities)


def stacked_with_cnn(
    patch: np.ndarray, cnn: dict[str, np.ndarray], labels: np.ndarray
) -> tuple[float, np.ndarray]:
    """The pipeline's `patch_cnn` mixture of patch-head and cross-fitted CNN probabilities."""
    weight = stacking_weight(patch, cnn["probabilities"], labels)
    return weight, weight * patch + (1 - weight) * cnn["probabilities"]


def main() -> None:
    args, rows, clean = subset_run(__doc__)
    lines = [
        *subset_heading(
            "Mislabel quality on CIFAR-10N",
            "quality",
            args,
            f"probabilities from the pipeline's `{TRAINED_STRATEGY}` "
            "(`patch_heads` and `cnn_crossfit` mixed by a stacking weight); machine: "
            f"{platform.machine()}, 2 cores (shared). Truth: noisy label != clean.",
        ),
        "",
        "| labels | noise | method | flagged | precision | recall | F1 | AUROC |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for column in args.labels:
        # The pipeline's `patch_cnn` is the stacked mixture of these two; computed apart to show
        # each.
        predicted = subset_prediction(column, args, rows, clean)
        labels, truth, patch, cnn = (
            predicted.labels,
            predicted.truth,
            predicted.patch,
            predicted.cnn,
        )
        weight, probabilities = predicted.weight, predicted.probabilities
        pool = cnn["pool"]
        cpu_minutes = float(patch["cpu_minutes"] + cnn["cpu_minutes"])
        for name, part in (("patch_heads", patch), ("cnn_crossfit", cnn)):
            row = scores(
                find_label_issues(labels, part["probabilities"]),
                1.0 - get_label_quality_scores(labels, part["probabilities"]),
                truth,
            )
            lines.append(
                f"| {column} | {truth.mean():.3f} | cleanlab on `{name}` alone | {row['flagged']} | "
                f"{row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['auroc']:.3f} |"
            )
        methods = {
            "auditor `mislabel` (default: noise posterior, sharpness 3, cleanlab's count, "
            "calibrated from 30% noise)": our_mislabel(probabilities, pool, labels),
            "auditor `mislabel`, plain count always": our_mislabel(
                probabilities, pool, labels, calibrated_from=1.0
            ),
            "auditor `mislabel`, calibrated count always": our_mislabel(
                probabilities, pool, labels, calibrated_from=0.0
            ),
            **{
                f"auditor `mislabel`, noise posterior, sharpness {sharpness}, 0.5 cut": our_mislabel(
                    probabilities, pool, labels, sharpness=sharpness, flag_count="posterior"
                )
                for sharpness in (2.0, 3.0, 4.0)
            },
            **{
                f"auditor `mislabel`, noise posterior, sharpness {sharpness}, cleanlab's count": (
                    our_mislabel(probabilities, pool, labels, sharpness=sharpness)
                )
                for sharpness in (2.0, 4.0)
            },
            "auditor `mislabel`, noise posterior + neighbours 0.5": our_mislabel(
                probabilities, pool, labels, neighbour_weight=0.5
            ),
            "auditor `mislabel`, confident learning + neighbours 0.5": our_mislabel(
                probabilities, pool, labels, method="confident_learning", neighbour_weight=0.5
            ),
            "cleanlab `find_label_issues` (same probabilities)": {
                "flagged": find_label_issues(labels, probabilities),
                "ranking": 1.0 - get_label_quality_scores(labels, probabilities),
            },
            "cleanlab `Datalab`, features only": datalab_features_only(pool, labels),
        }
        for name, result in methods.items():
            row = scores(result["flagged"], result["ranking"], truth)
            lines.append(
                f"| {column} | {truth.mean():.3f} | {name} | {row['flagged']} | "
                f"{row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['auroc']:.3f} |"
            )
        lines.append(
            f"| {column} | | (probabilities: {cpu_minutes:.1f} CPU-minutes; stacking weight of "
            f"`patch_heads` {weight:.2f}) | | | | | |"
        )
    write_results(results_name("quality", args), lines)


if __name__ == "__main__":
    main()
