"""Per-vendor, per-batch and per-vendor-and-class label error rates, estimated from one audit
without ground truth.

The share of a vendor's labels that an audit flags is a poor error rate: the flagging threshold's
precision and recall enter the figure, and both move with the vendor's noise level. A single
model's disagreement is no better where the model itself errs often: its mistakes count against
every vendor alike, pulling all the rates together (bench/results/vendors-*.md).

So the rates come from a latent-class model (Dawid and Skene, 1979): every image has an unknown
true class; each opinion on it, a vendor's label or a model's prediction, is drawn from that
opinion-giver's own confusion matrix. Expectation-maximisation estimates the class priors, every
confusion matrix and each image's posterior over the true class together. With the ensemble's
members as independent opinions on every image, the models' errors are estimated rather than
charged to the vendors, and several vendors labeling one image simply add opinions. A label's
error probability is one minus its posterior, and a group's rate is the mean over its labels.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

WILSON_Z = 1.959964  # 95 %


@dataclass
class VendorLabels:
    """Vendor labels of audited images: `rows` index the audit's probability rows; `classes`
    index its class names (-1 for a class the audit did not see)."""

    rows: np.ndarray
    classes: np.ndarray
    vendors: list[str]
    batches: list[str]
    batch_ids: list[int | None]


def wilson_interval(successes: float, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval: it stays inside [0, 1] and is sensible for the small counts
    and zero rates a small batch produces."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def opinions(
    model_probabilities: list[np.ndarray], labels: VendorLabels
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, giver, class) triples: each model's top class on every row, then the vendor labels
    of known classes; givers are numbered models first, then vendors in sorted order."""
    n_rows = len(model_probabilities[0])
    vendor_ids = {
        name: len(model_probabilities) + i for i, name in enumerate(sorted(set(labels.vendors)))
    }
    known = labels.classes >= 0
    rows = [np.arange(n_rows)] * len(model_probabilities) + [labels.rows[known]]
    givers = [np.full(n_rows, m) for m in range(len(model_probabilities))]
    givers.append(np.array([vendor_ids[v] for v in labels.vendors], dtype=np.int64)[known])
    classes = [p.argmax(axis=1) for p in model_probabilities] + [labels.classes[known]]
    return np.concatenate(rows), np.concatenate(givers), np.concatenate(classes)


def latent_class_posteriors(
    rows: np.ndarray,
    givers: np.ndarray,
    classes: np.ndarray,
    n_rows: int,
    n_classes: int,
    iterations: int = 100,
    smoothing: float = 0.01,
) -> np.ndarray:
    """Dawid-Skene EM: per row, the posterior over the true class given every opinion on it.
    Starts from the vote share of each class; `smoothing` keeps unseen confusions possible."""
    n_givers = int(givers.max()) + 1
    posterior = np.full((n_rows, n_classes), smoothing)
    np.add.at(posterior, (rows, classes), 1.0)
    posterior /= posterior.sum(axis=1, keepdims=True)
    for _ in range(iterations):
        prior = posterior.mean(axis=0) + 1e-9
        confusion = np.full((n_givers, n_classes, n_classes), smoothing)
        np.add.at(confusion, (givers, slice(None), classes), posterior[rows])
        confusion /= confusion.sum(axis=2, keepdims=True)
        log_posterior = np.tile(np.log(prior), (n_rows, 1))
        np.add.at(log_posterior, rows, np.log(confusion[givers, :, classes]))
        log_posterior -= log_posterior.max(axis=1, keepdims=True)
        updated = np.exp(log_posterior)
        updated /= updated.sum(axis=1, keepdims=True)
        converged = np.abs(updated - posterior).max() < 1e-6
        posterior = updated
        if converged:
            break
    return posterior


def rate_row(wrong: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """A group's rate from its labels' error probabilities, with a 95 % interval."""
    n = len(wrong)
    errors = float(wrong.sum())
    low, high = wilson_interval(errors, n)
    return {
        "images": int(n),
        "estimated_errors": round(errors, 2),
        "estimated_error_rate": round(errors / max(1, n), 6),
        "ci_low": round(float(low), 6),
        "ci_high": round(float(high), 6),
        "flagged": int(flagged.sum()),
    }


def agreement_rows(labels: VendorLabels) -> list[dict[str, Any]]:
    """How often two vendors gave an image they both labeled the same class."""
    by_row: dict[int, dict[str, int]] = defaultdict(dict)
    for row, cls, vendor in zip(labels.rows, labels.classes, labels.vendors, strict=True):
        by_row[int(row)][vendor] = int(cls)
    pairs: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for given in by_row.values():
        names = sorted(given)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pairs[(a, b)][0] += 1
                pairs[(a, b)][1] += int(given[a] == given[b])
    return [
        {"vendor_a": a, "vendor_b": b, "images": n, "agreement": round(same / n, 6)}
        for (a, b), (n, same) in sorted(pairs.items())
    ]


def grouped(keys: Iterable[tuple], indices: Iterable[int]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for key, index in zip(keys, indices, strict=True):
        groups[key].append(index)
    return dict(sorted(groups.items(), key=lambda item: tuple(str(part) for part in item[0])))


def vendor_estimates(
    model_probabilities: list[np.ndarray],
    labels: VendorLabels,
    class_names: list[str],
    flagged_rows: np.ndarray,
) -> dict[str, Any]:
    """The `vendors` analysis of an audit: rates per vendor, per batch and per vendor and class,
    and pairwise agreement where vendors overlap. `model_probabilities` are the audit's models
    (one matrix, or each member of an ensemble); `flagged_rows` marks rows with a mislabel
    finding, reported beside the estimate."""
    n_rows, n_classes = model_probabilities[0].shape
    posterior = latent_class_posteriors(
        *opinions(model_probabilities, labels), n_rows=n_rows, n_classes=n_classes
    )
    known = labels.classes >= 0
    wrong = np.ones(len(labels.rows))
    wrong[known] = 1.0 - posterior[labels.rows[known], labels.classes[known]]
    flagged = flagged_rows[labels.rows]
    positions = range(len(labels.rows))

    def rows_for(groups: dict[tuple, list[int]], fields: tuple[str, ...]) -> list[dict]:
        out = []
        for key, members in groups.items():
            index = np.array(members, dtype=np.int64)
            row = dict(zip(fields, key, strict=True))
            row.update(rate_row(wrong[index], flagged[index]))
            out.append(row)
        return out

    class_of = [class_names[c] if c >= 0 else "(unknown)" for c in labels.classes]
    return {
        "method": "dawid_skene",
        "models": len(model_probabilities),
        "vendors": rows_for(grouped(((v,) for v in labels.vendors), positions), ("vendor",)),
        "batches": rows_for(
            grouped(zip(labels.vendors, labels.batches, labels.batch_ids, strict=True), positions),
            ("vendor", "batch", "batch_id"),
        ),
        "vendor_classes": rows_for(
            grouped(zip(labels.vendors, class_of, strict=True), positions), ("vendor", "class")
        ),
        "agreement": agreement_rows(labels),
    }
