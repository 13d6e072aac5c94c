"""Ambiguous class pairs on CIFAR-10N: the pairs the check raises, next to how often the human
annotators really swapped those classes (noisy label against the clean one).

    python -m bench.ambiguous [--n 10000] [--start 0] [--labels worse aggre]

The check reads only the noisy labels and the out-of-sample probabilities (cached by
bench/quality.py). Run twice: with its defaults, and without the concentration rule
(`min_concentration` 0, the check before it), so the two lists sit side by side. The truth
column gives each pair's swap rates in the labels, P(noisy b | clean a) both ways, and their
concentration: the smaller of the two shares of a class's wrong labels that land on the other
class, over the share an even spread across the other nine would give. Results go to
bench/results/ambiguous.md.
"""

from __future__ import annotations

import numpy as np

from auditor.checks import REGISTRY
from auditor.checks.ambiguous import error_shares
from bench import cifar
from bench.quality import (
    cifar_check_inputs,
    results_name,
    subset_heading,
    subset_prediction,
    subset_run,
)
from bench.report import write_results


def label_swap_rates(clean: np.ndarray, noisy: np.ndarray, n_classes: int) -> np.ndarray:
    """rates[a, b] = P(noisy label b | clean label a)."""
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (clean, noisy), 1.0)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def concentration(shares: np.ndarray, a: int, b: int) -> float:
    return float(min(shares[a, b], shares[b, a]) * (len(shares) - 1))


def raised_pairs(
    labels: np.ndarray, probabilities: np.ndarray, **settings
) -> list[tuple[int, int]]:
    inputs = cifar_check_inputs(labels, probabilities)
    drafts = REGISTRY["ambiguous_classes"](**settings).run(inputs)
    return [tuple(cifar.CLASSES.index(name) for name in d.evidence["classes"]) for d in drafts]


def main() -> None:
    args, rows, clean = subset_run(__doc__)
    lines = subset_heading(
        "Ambiguous class pairs on CIFAR-10N",
        "ambiguous",
        args,
        "probabilities of the default strategy; truth: the noisy labels against the clean ones.",
    )
    n_classes = len(cifar.CLASSES)
    for column in args.labels:
        prediction = subset_prediction(column, args, rows, clean)
        rates = label_swap_rates(clean, prediction.labels, n_classes)
        true_shares = error_shares(rates)
        now = raised_pairs(prediction.labels, prediction.probabilities)
        before = raised_pairs(prediction.labels, prediction.probabilities, min_concentration=0.0)
        truth_top = sorted(
            ((concentration(true_shares, a, b), a, b) for a in range(n_classes) for b in range(a)),
            reverse=True,
        )[:5]
        lines += [
            "",
            f"#### `{column}`: {len(now)} pairs raised (without the concentration rule "
            f"{len(before)})",
            "",
            "| pair | raised now | raised before | swapped a->b | swapped b->a | concentration |",
            "|---|---|---|---:|---:|---:|",
        ]
        for a, b in sorted(set(before) | set(now), key=lambda p: p not in now):
            lines.append(
                f"| {cifar.CLASSES[a]} / {cifar.CLASSES[b]} | {'yes' if (a, b) in now else ''} "
                f"| {'yes' if (a, b) in before else ''} | {rates[a, b]:.3f} | {rates[b, a]:.3f} "
                f"| {concentration(true_shares, a, b):.1f} |"
            )
        lines += [
            "",
            "Pairs the annotators swapped most (highest concentration): "
            + ", ".join(
                f"{cifar.CLASSES[b]} / {cifar.CLASSES[a]} {value:.1f}" for value, a, b in truth_top
            ),
        ]
    write_results(results_name("ambiguous", args), lines)


if __name__ == "__main__":
    main()
