"""Per-vendor, per-batch and per-vendor-and-class label error rates, estimated from one audit
without ground truth.

The share of a vendor's labels that an audit flags is a poor error rate: the flagging threshold's
precision and recall enter the figure, and both move with the vendor's noise level. A model's
plain disagreement is no better where the model itself errs often: its mistakes count against
every vendor alike and pull all the rates together (bench/results/vendors-*.md).

Instead each vendor is a label source of its own in the noise model of `auditor.noise`: its
class-conditional noise matrix is fitted together with each image's posterior over its true
class. Several vendors labeling one image multiply their likelihoods, so their agreement counts.
A label's error probability is one minus the posterior of its class; a group's rate is the mean
over its labels.

The model's prior should not have learned a vendor's habits: out-of-fold probabilities still did,
from the vendor's other images, and then agree with its systematic errors (the noisiest vendor
looked several points better than it was). So where the audit supplies probabilities from heads
that never saw the image's vendors, those are the prior, and the sharpness that turns the model's
doubt into label noise is fitted to them by likelihood; otherwise the audit's probabilities are
used with the fixed sharpness measured on CIFAR-10N.

With held-out probabilities BIC also decides whether a vendor's error rate may vary with the
model's confidence (`select_noise_model`): people err most on the images a model finds hard, and a
class-conditional model then reads their errors as the model's doubt, putting the noisiest vendor
too low once the model is good (CIFAR-10N at 50,000 images: 4 pp low; 2.5-3.1 with the strata).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from auditor.noise import confidence_strata, fit_noise_model, select_noise_model

WILSON_Z = 1.959964  # 95 %
# Held-out heads that learned from fewer labels than this ran the vendors' estimates together on
# CIFAR-10N (bench/results/vendors-*.md): the cleanest vendor came out +8.1 pp high from heads
# fitted on 2,000 labels and +5.1 pp from 4,000 (at 1,000, 29 / 31 / 43 % against a true
# 11 / 18 / 42 %), while from 5,000 every vendor was within 2.5 pp; the ranking held throughout.
WEAK_PRIOR_LABELS = 5_000
# Without held-out probabilities: chosen on round 1 of bench/vendors.py (7,500 CIFAR-10N images).
SHARPNESS = 2.0


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


def held_out_training_labels(
    n_rows: int, labels: VendorLabels, vendor_index: np.ndarray, covered: np.ndarray
) -> int | None:
    """The fewest labels that any held-out head which judged a vendor label learned from, or
    None when no label was judged by one. A head for a pattern of vendors learns from the rows
    that share none of them (`auditor.predict.heads.held_out_groups`)."""
    membership = np.zeros((n_rows, int(vendor_index.max()) + 1), dtype=bool)
    membership[labels.rows, vendor_index] = True
    judged = np.unique(labels.rows[covered[labels.rows]])
    if not len(judged):
        return None
    patterns = np.unique(membership[judged], axis=0)
    return int(min((~membership[:, pattern].any(axis=1)).sum() for pattern in patterns))


def grouped(keys: Iterable[tuple], indices: Iterable[int]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for key, index in zip(keys, indices, strict=True):
        groups[key].append(index)
    return dict(sorted(groups.items(), key=lambda item: tuple(str(part) for part in item[0])))


def vendor_estimates(
    probabilities: np.ndarray,
    labels: VendorLabels,
    class_names: list[str],
    flagged_rows: np.ndarray,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    sharpness: float | None = None,
) -> dict[str, Any]:
    """The `vendors` analysis of an audit: rates per vendor, per batch and per vendor and class,
    and pairwise agreement where vendors overlap. `flagged_rows` marks rows with a mislabel
    finding, reported beside the estimate. `held_out` is (probabilities, covered rows) from
    models that never saw the row's vendors; `sharpness` None fits it where they cover labels."""
    known = labels.classes >= 0
    vendor_names = sorted(set(labels.vendors))
    vendor_index = np.array([vendor_names.index(v) for v in labels.vendors], dtype=np.int64)
    rows, sources, classes = labels.rows[known], vendor_index[known], labels.classes[known]
    covered = np.zeros(len(probabilities), dtype=bool)
    prior = probabilities
    if held_out is not None:
        covered = np.asarray(held_out[1], dtype=bool)
        prior = np.where(covered[:, None], held_out[0], probabilities)
    independent = covered[rows]
    training_labels = (
        held_out_training_labels(len(probabilities), labels, vendor_index, covered)
        if len(labels.rows)
        else None
    )
    fitted = sharpness is None and bool(independent.any())
    strata_count, bic = 1, None
    if fitted:
        choice = select_noise_model(
            prior, rows[independent], sources[independent], classes[independent]
        )
        sharpness, strata_count, bic = choice.sharpness, choice.strata, choice.bic
    elif sharpness is None:
        sharpness = SHARPNESS
    strata = confidence_strata(prior, rows, strata_count)
    posterior = fit_noise_model(prior, rows, sources, classes, sharpness, strata=strata).posterior
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
        "method": "vendor_noise_em",
        "sharpness": round(float(sharpness), 3),
        "sharpness_fitted": fitted,
        "confidence_strata": strata_count,
        "noise_model_bic": None if bic is None else {str(k): round(v, 1) for k, v in bic.items()},
        "held_out_share": round(float(independent.mean()) if len(independent) else 0.0, 4),
        "held_out_training_labels": training_labels,
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
