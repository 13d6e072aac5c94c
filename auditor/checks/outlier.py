"""outlier: images far from all others (off-topic uploads, wrong domain).

The distance to an image's k nearest neighbours is compared with the whole dataset's distribution
by a robust z-score (median and MAD), so a few outliers cannot hide themselves by inflating the
spread as they would with a mean and standard deviation.

Distances are measured in a pretrained model's features or, when the audit trained its CNN on
the data's own labels, between thumbnails of colour and edges (`appearance_knn`, 25 neighbours
so that groups of alike off-topic images do not hide among themselves). Such a network maps
anything it is shown into the space of its classes, and its features make a poor, noisy outlier
space (bench/outliers.py): on the demo's digits with ten photographs planted they flagged 5 of
the photographs and 43 digits; on 5,000 CIFAR-10 images with twelve oddities planted (digits,
text-like pages, noise) 4 of them and 62 photographs. The thumbnails flag all ten photographs
and no digit there, and the 4 noise images and no photograph here.
"""

from __future__ import annotations

import numpy as np

from auditor.checks.base import Check, CheckInputs, FindingDraft, register
from auditor.db.models import Severity

NEIGHBOURS_IN_EVIDENCE = 5
"""Enough nearest images for a curator to see that none of them looks like the outlier."""


def robust_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, MAD scaled to a normal's standard deviation), floored so a uniform set divides."""
    median = float(np.median(values))
    return median, max(float(np.median(np.abs(values - median))) * 1.4826, 1e-6)


def robust_z(values: np.ndarray) -> np.ndarray:
    median, scale = robust_scale(values)
    return (values - median) / scale


@register
class OutlierCheck(Check):
    kind = "outlier"
    requires = ("knn",)
    defaults = {"z_threshold": 4.0, "min_images": 20}

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        if inputs.knn is None or len(inputs.rows) < self.settings["min_images"]:
            return []
        graph, space = inputs.knn, "model features"
        if inputs.appearance_knn is not None:
            graph, space = inputs.appearance_knn, "thumbnails of colour and edges"
        distances = np.where(graph.indices >= 0, graph.distances(), np.nan)
        mean_distance = np.nanmean(distances, axis=1)
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
                        "measured_on": space,
                        "mean_neighbour_distance": round(float(mean_distance[row]), 4),
                        "dataset_median_distance": round(float(np.median(mean_distance)), 4),
                        "robust_z": round(float(z[row]), 2),
                        "neighbours": [
                            {
                                "image_id": inputs.image_id(int(j)),
                                "path": inputs.path(int(j)),
                                "label": inputs.label_name(int(j)),
                                "distance": round(float(d), 4),
                            }
                            for j, d in zip(
                                graph.indices[row][:NEIGHBOURS_IN_EVIDENCE],
                                distances[row][:NEIGHBOURS_IN_EVIDENCE],
                                strict=True,
                            )
                            if j >= 0
                        ],
                    },
                )
            )
        return drafts
