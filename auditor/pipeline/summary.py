"""Per-class and overall figures stored with each audit: what a curator reads first."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from cleanlab.count import estimate_joint, num_label_issues
from cleanlab.dataset import overall_label_health_score

from auditor.checks.base import CheckInputs
from auditor.db.models import ImageStatus

TOP_CONFUSIONS = 3


def class_noise(
    labels: np.ndarray, probabilities: np.ndarray, sizes: np.ndarray, flagged: np.ndarray | None
) -> np.ndarray:
    """(classes, classes): row a is where the labels given as a probably belong.

    How many of a class's labels are wrong is the share the mislabel check flagged (`flagged`,
    per class; None when the check did not run), and where they belong is cleanlab's confident
    joint. Each alone does worse: the confident joint counts a weak classifier's own mistakes as
    label noise (on 10,000 CIFAR-10N images it put `aggre` at 23.0% for a true 9.1%, every class
    10-14 percentage points off on average, beside a mislabel count of 15.5%), while the labels
    the check suggests for its flags get the class a wrong label truly belongs to less often (6-7
    of 10 classes against 8-9). Together they were nearest the truth cell by cell on `worse`,
    `aggre` and `random1` (bench/class_noise.py).

    The flags count at most as many labels as cleanlab's plain confident-joint count: under heavy
    noise the check flags its calibrated count, which finds more wrong labels but overstated the
    noise on 10,000 CIFAR-10N `worse` images (50.8% for a true 41.0%; the plain count, 40.6%)."""
    n_classes = len(sizes)
    if len(np.unique(labels)) < 2:
        return np.eye(n_classes)
    joint = estimate_joint(labels, probabilities)
    where = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-12)
    if flagged is None:
        return where
    plain = num_label_issues(labels, probabilities)
    if flagged.sum() > plain:
        flagged = flagged * (plain / flagged.sum())
    rates = flagged / np.maximum(sizes, 1)
    others = where * (1.0 - np.eye(n_classes))
    split = others / np.maximum(others.sum(axis=1, keepdims=True), 1e-12)
    return split * rates[:, None] + np.diag(1.0 - rates)


def summarise_audit(
    inputs: CheckInputs, findings: Counter, flagged: Counter | None
) -> dict[str, Any]:
    """Class sizes, estimated noise rates and top confusions (`class_noise`; `flagged` counts the
    mislabel check's flags by given label), and a health score: the share of images whose label
    looks right, less unusable files."""
    labels, probabilities, names = inputs.labels, inputs.probabilities, inputs.class_names
    sizes = np.bincount(labels, minlength=len(names))
    if len(np.unique(labels)) >= 2:
        label_health = float(overall_label_health_score(labels, probabilities, verbose=False))
    else:
        label_health = 1.0
    per_class = None if flagged is None else np.array([flagged[name] for name in names])
    where = class_noise(labels, probabilities, sizes, per_class)
    classes = []
    for index, (name, size) in enumerate(zip(names, sizes, strict=True)):
        others = [j for j in np.argsort(-where[index], kind="stable") if j != index]
        classes.append(
            {
                "class": name,
                "images": int(size),
                "estimated_noise_rate": round(float(1.0 - where[index, index]), 4),
                "top_confusions": [
                    {"class": names[j], "share": round(float(where[index, j]), 4)}
                    for j in others[:TOP_CONFUSIONS]
                    if where[index, j] > 0
                ],
            }
        )
    total_images = len(inputs.images)
    unusable = sum(status != ImageStatus.OK for status in inputs.images.status)
    health = label_health * (1.0 - unusable / max(1, total_images))
    return {
        "images": total_images,
        "audited_images": int(len(labels)),
        "unusable_images": int(unusable),
        "classes": classes,
        "label_health": round(label_health, 4),
        "health_score": round(health, 4),
        "findings": dict(sorted(findings.items())),
    }
