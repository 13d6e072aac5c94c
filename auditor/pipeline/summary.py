"""Per-class and overall figures stored with each audit: what a curator reads first."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from cleanlab.count import estimate_joint
from cleanlab.dataset import overall_label_health_score

from auditor.checks.base import CheckInputs
from auditor.db.models import ImageStatus

TOP_CONFUSIONS = 3


def summarise_audit(inputs: CheckInputs, findings: Counter) -> dict[str, Any]:
    """Class sizes, estimated noise rates and top confusions from the confident joint, and a
    health score: the share of images whose label looks right, less unusable files."""
    labels, probabilities, names = inputs.labels, inputs.probabilities, inputs.class_names
    n_classes = len(names)
    sizes = np.bincount(labels, minlength=n_classes)
    if len(np.unique(labels)) >= 2:
        joint = estimate_joint(labels, probabilities)
        label_health = float(overall_label_health_score(labels, probabilities, verbose=False))
    else:
        joint = np.diag(sizes / max(1, sizes.sum()))
        label_health = 1.0
    given_totals = joint.sum(axis=1)
    classes = []
    for index, name in enumerate(names):
        noise = 1.0 - joint[index, index] / given_totals[index] if given_totals[index] > 0 else 0.0
        others = [j for j in np.argsort(-joint[index]) if j != index][:TOP_CONFUSIONS]
        classes.append(
            {
                "class": name,
                "images": int(sizes[index]),
                "estimated_noise_rate": round(float(noise), 4),
                "top_confusions": [
                    {
                        "class": names[j],
                        "share": round(float(joint[index, j] / given_totals[index]), 4)
                        if given_totals[index] > 0
                        else 0.0,
                    }
                    for j in others
                    if joint[index, j] > 0
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
