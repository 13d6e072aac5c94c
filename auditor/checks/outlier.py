"""outlier: images far from all others in feature space (off-topic uploads, wrong domain).

The distance to an image's k nearest neighbours is compared with the whole dataset's distribution
by a robust z-score (median and MAD), so a few outliers cannot hide themselves by inflating the
spread as they would with a mean and standard deviation.
"""

from __future__ import annotations

import numpy as np

from auditor.checks.base import Check, CheckInputs, FindingDraft, register
from auditor.db.models import Severity


def robust_z(values: np.ndarray) -> np.ndarray:
    median = np.median(values)
    mad = np.median(np.abs(values - median)) * 1.4826
    return (values - median) / max(mad, 1e-6)


@register
class OutlierCheck(Check):
    kind = "outlier"
    requires = ("knn",)
    defaults = {"z_threshold": 4.0, "min_images": 20}

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        if inputs.knn is None or len(inputs.rows) < self.settings["min_images"]:
            return []
        distance = 1.0 - np.where(inputs.knn.indices >= 0, inputs.knn.similarities, np.nan)
        mean_distance = np.nanmean(distance, axis=1)
        z = robust_z(mean_distance)
        threshold = self.settings["z_threshold"]
        drafts = []
        for row in np.flatnonzero(z > threshold):
            score = float(1.0 / (1.0 + np.exp(-(z[row] - threshold))))
            drafts.append(
                FindingDraft(
                    kind=self.kind,
                    subject=str(inputs.image_id(int(row))),
                    image_ids=[inputs.image_id(int(row))],
                    score=score,
                    severity=Severity.MEDIUM if z[row] > 2 * threshold else Severity.LOW,
                    given_label=inputs.label_name(int(row)),
                    evidence={
                        "mean_neighbour_distance": round(float(mean_distance[row]), 4),
                        "dataset_median_distance": round(float(np.median(mean_distance)), 4),
                        "robust_z": round(float(z[row]), 2),
                        "nearest": [
                            {"path": inputs.path(int(j)), "similarity": round(float(s), 4)}
                            for j, s in zip(
                                inputs.knn.indices[row][:3],
                                inputs.knn.similarities[row][:3],
                                strict=True,
                            )
                            if j >= 0
                        ],
                    },
                )
            )
        return drafts
