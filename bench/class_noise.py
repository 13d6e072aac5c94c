"""How well each way of estimating per-class label noise matches CIFAR-10N's truth: the figures
the audit summary shows a curator first ("Classes": estimated noise, labeled so but probably).

    python -m bench.class_noise [--n 10000] [--start 0] [--labels worse aggre random1]

Probabilities as in bench/quality.py (the pipeline's stacked mixture, cached under .bench/). Per
given class, the share of its labels whose clean label differs, estimated by:
- cleanlab's confident joint (`estimate_joint`), calibrated to the label counts;
- the noise model's posteriors (`auditor.pipeline.summary.class_noise`, what the summary uses);
- the share of the class's labels the `mislabel` check flags.
Scored by the mean and the largest absolute error of the rates over the classes and of the
off-diagonal cells (where a class's labels truly belong; percentage points), the overall rate,
and whether each class's top estimated confusion is its true top confusion.
Results go to bench/results/class_noise.md.
"""

from __future__ import annotations

import numpy as np
from cleanlab.count import estimate_joint

from auditor.checks.mislabel import MislabelCheck
from auditor.noise import fit_noise_model
from auditor.pipeline.summary import class_noise
from bench.quality import (
    our_mislabel,
    results_name,
    subset_heading,
    subset_prediction,
    subset_run,
)
from bench.report import write_results

CLASSES = 10


def where_labels_belong(labels: np.ndarray, truly: np.ndarray) -> np.ndarray:
    """(given, true) shares: row a is where the images labeled a truly belong."""
    counts = np.zeros((CLASSES, CLASSES))
    np.add.at(counts, (labels, truly), 1.0)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def posterior_shares(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    rows = np.arange(len(labels))
    sharpness = MislabelCheck.defaults["sharpness"]
    posterior = fit_noise_model(
        probabilities, rows, np.zeros_like(rows), labels, sharpness
    ).posterior
    where = np.zeros((CLASSES, CLASSES))
    np.add.at(where, labels, posterior)
    return where / where.sum(axis=1, keepdims=True)


def flagged_shares(labels: np.ndarray, flagged: np.ndarray, suggested: np.ndarray) -> np.ndarray:
    """The same shape from the check's flags: a flagged label moves to its suggested class."""
    return where_labels_belong(labels, np.where(flagged, suggested, labels))


def top_confusion(matrix: np.ndarray) -> np.ndarray:
    off = matrix - np.diag(np.diag(matrix))
    return off.argmax(axis=1)


def main() -> None:
    args, rows, clean = subset_run(__doc__)
    lines = [
        *subset_heading(
            "Per-class noise estimates on CIFAR-10N",
            "class_noise",
            args,
            "probabilities as in bench/quality.py. Error in percentage points against each "
            "given class's true share of wrong labels.",
        ),
        "",
        "| labels | true overall | estimate | overall | rates: mean abs error (pp) | largest "
        "| cells: mean abs error (pp) | largest | top confusion right |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for column in args.labels:
        predicted = subset_prediction(column, args, rows, clean)
        labels, truth, probabilities = predicted.labels, predicted.truth, predicted.probabilities
        cnn = predicted.cnn
        actual = where_labels_belong(labels, clean)
        joint = estimate_joint(labels, probabilities)
        check = our_mislabel(probabilities, cnn["pool"], labels)
        estimates = {
            "cleanlab confident joint (before)": joint / joint.sum(axis=1, keepdims=True),
            "noise-model posteriors": posterior_shares(labels, probabilities),
            "share flagged by `mislabel`, split by its suggestions": flagged_shares(
                labels, check["flagged"], check["suggested"]
            ),
        }
        sizes = np.bincount(labels, minlength=CLASSES)
        flagged = np.bincount(labels[check["flagged"]], minlength=CLASSES)
        estimates["share flagged by `mislabel`, split by the confident joint (summary now)"] = (
            class_noise(labels, probabilities, sizes, flagged)
        )
        off = ~np.eye(CLASSES, dtype=bool)
        true_rates = 1.0 - np.diag(actual)
        for name, matrix in estimates.items():
            rates = 1.0 - np.diag(matrix)
            errors = 100 * np.abs(rates - true_rates)
            cells = 100 * np.abs(matrix - actual)[off]
            right = int((top_confusion(matrix) == top_confusion(actual)).sum())
            lines.append(
                f"| {column} | {truth.mean():.3f} | {name} | {(rates * sizes).sum() / sizes.sum():.3f} "
                f"| {errors.mean():.1f} | {errors.max():.1f} | {cells.mean():.2f} | {cells.max():.1f} "
                f"| {right} of {CLASSES} |"
            )
    write_results(results_name("class_noise", args), lines)


if __name__ == "__main__":
    main()
