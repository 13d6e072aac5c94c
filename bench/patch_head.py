"""Linear against one-hidden-layer heads on the same patch features, side by side in one process.

    python -m bench.patch_head [--n 10000] [--start 0] [--labels worse aggre random1]

For each label column: the K-fold heads' held-out accuracy against `clean`, cleanlab's F1 and AUROC
on the heads alone, and then on the pipeline's mixture with the cross-fitted CNN (the `patch_cnn`
strategy, stacking weight fitted per head) both cleanlab's `find_label_issues` and our `mislabel`
check. The patch features are computed once per subset and cached under .bench/; the CNN's
probabilities come from bench/quality.py's cache. Results go to bench/results/patch-head*.md.
"""

from __future__ import annotations

import time

import numpy as np
from cleanlab.filter import find_label_issues

from auditor.predict.heads import HeadKind, kfold_head_probabilities
from auditor.predict.patch_features import patch_features
from auditor.predict.strategies import PATCH_REGULARISATION
from bench import cifar
from bench.quality import (
    cached_out_of_sample,
    noisy_labels,
    our_mislabel,
    results_name,
    scores,
    stacked_with_cnn,
    subset_heading,
    subset_run,
)
from bench.report import write_results

HEADS: tuple[HeadKind, ...] = ("linear", "mlp")


def cached_patch_features(start: int, n: int) -> np.ndarray:
    cache = cifar.CACHE_DIR / f"patch-features-{start}-{n}.npy"
    if cache.is_file():
        return np.load(cache)
    encoded = np.sqrt(patch_features(cifar.load_images()[start : start + n], seed=0))
    cifar.CACHE_DIR.mkdir(exist_ok=True)
    np.save(cache, encoded)
    return encoded


def cleanlab_scores(probabilities: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> dict:
    given = probabilities[np.arange(len(labels)), labels]
    return scores(find_label_issues(labels, probabilities), 1 - given, truth)


def main() -> None:
    args, rows, clean = subset_run(__doc__.split("\n\n")[0])
    encoded = cached_patch_features(args.start, args.n)
    lines = [
        *subset_heading(
            "Patch heads: linear and one hidden layer",
            "patch_head",
            args,
            "the same mirror-invariant patch features for both heads, 4 folds; F1 and AUROC "
            "against `noisy != clean`; CPU-minutes of the heads alone.",
        ),
        "",
        "| labels | head | CPU-min | acc vs clean | cleanlab F1 alone | AUROC alone "
        "| weight | cleanlab F1 mixed | ours mixed | margin |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for column in args.labels:
        labels, truth = noisy_labels(column, rows, clean)
        cnn = cached_out_of_sample(column, args.n, "cnn_crossfit", args.start)
        for head in HEADS:
            started = time.process_time()
            alone = kfold_head_probabilities(
                encoded, labels, 10, folds=4, seed=0, head=head, regularisation=PATCH_REGULARISATION
            )
            minutes = (time.process_time() - started) / 60
            alone_row = cleanlab_scores(alone, labels, truth)
            weight, mixed = stacked_with_cnn(alone, cnn, labels)
            theirs = cleanlab_scores(mixed, labels, truth)
            ours = our_mislabel(mixed, cnn["pool"], labels)
            ours_row = scores(ours["flagged"], ours["ranking"], truth)
            accuracy = float((alone.argmax(1) == clean).mean())
            lines.append(
                f"| {column} | {head} | {minutes:.1f} | {accuracy:.3f} | {alone_row['f1']:.3f} | "
                f"{alone_row['auroc']:.3f} | "
                f"{weight:.2f} | {theirs['f1']:.3f} | {ours_row['f1']:.3f} | "
                f"{ours_row['f1'] - theirs['f1']:+.3f} |"
            )
            print(lines[-1], flush=True)
    write_results(results_name("patch-head", args), lines)


if __name__ == "__main__":
    main()
