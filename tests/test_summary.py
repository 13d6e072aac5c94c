"""The per-class figures a curator reads first in the report and on the review page."""

from __future__ import annotations

from collections import Counter

import numpy as np

from auditor.checks.base import CheckInputs, ImageTable
from auditor.pipeline.summary import summarise_audit


def inputs_for(labels: list[int], class_names: list[str]) -> CheckInputs:
    n = len(labels)
    table = ImageTable(
        ids=np.arange(n), paths=[f"{i}.png" for i in range(n)], status=["ok"] * n,
        errors=[None] * n, sha256=[None] * n, phash=[None] * n, width=np.full(n, 8),
        height=np.full(n, 8), stats=[{}] * n, labels=[class_names[c] for c in labels],
        splits=[None] * n,
    )  # fmt: skip
    probabilities = np.full((n, len(class_names)), 0.1)
    probabilities[np.arange(n), labels] = 0.8
    return CheckInputs(
        dataset_id=1,
        images=table,
        class_names=class_names,
        rows=np.arange(n),
        labels=np.array(labels),
        probabilities=probabilities / probabilities.sum(axis=1, keepdims=True),
    )


def test_class_noise_is_the_share_of_labels_the_mislabel_check_flagged():
    inputs = inputs_for([0] * 10 + [1] * 20 + [2] * 5, ["bird", "cat", "dog"])
    relabels = Counter({("bird", "cat"): 3, ("bird", "dog"): 1, ("cat", "bird"): 5})

    summary = summarise_audit(inputs, Counter({"mislabel": 9}), relabels)

    bird, cat, dog = summary["classes"]
    assert (bird["images"], bird["estimated_noise_rate"]) == (10, 0.4)
    assert bird["top_confusions"] == [
        {"class": "cat", "share": 0.3},
        {"class": "dog", "share": 0.1},
    ]
    assert (cat["estimated_noise_rate"], cat["top_confusions"]) == (
        0.25,
        [{"class": "bird", "share": 0.25}],
    )
    assert (dog["estimated_noise_rate"], dog["top_confusions"]) == (0.0, [])
    assert summary["findings"] == {"mislabel": 9}


def test_without_the_mislabel_check_no_noise_is_claimed():
    inputs = inputs_for([0, 0, 1, 1], ["bird", "cat"])
    summary = summarise_audit(inputs, Counter(), None)
    assert all("estimated_noise_rate" not in row for row in summary["classes"])
    assert [row["images"] for row in summary["classes"]] == [2, 2]
