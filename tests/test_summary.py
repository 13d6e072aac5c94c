"""The per-class figures a curator reads first in the report and on the review page."""

from __future__ import annotations

from collections import Counter

import numpy as np
from cleanlab.count import estimate_joint, num_label_issues

from auditor.checks.base import CheckInputs, ImageTable
from auditor.pipeline.summary import class_noise, summarise_audit

NAMES = ["bird", "cat", "dog"]


def planted() -> tuple[np.ndarray, np.ndarray]:
    """60 images per class; 15 of the birds look like cats to the model, 6 of the dogs like
    birds, so cats are where wrong bird labels belong and birds where wrong dog labels do."""
    labels = np.repeat(np.arange(3), 60)
    looks_like = labels.copy()
    looks_like[:15] = 1
    looks_like[120:126] = 0
    probabilities = np.full((len(labels), 3), 0.05)
    probabilities[np.arange(len(labels)), looks_like] = 0.9
    return labels, probabilities


def inputs_for(labels: np.ndarray, probabilities: np.ndarray) -> CheckInputs:
    n = len(labels)
    table = ImageTable(
        ids=np.arange(n), paths=[f"{i}.png" for i in range(n)], status=["ok"] * n,
        errors=[None] * n, sha256=[None] * n, phash=[None] * n, width=np.full(n, 8),
        height=np.full(n, 8), stats=[{}] * n, labels=[NAMES[c] for c in labels],
        splits=[None] * n,
    )  # fmt: skip
    return CheckInputs(
        dataset_id=1,
        images=table,
        class_names=NAMES,
        rows=np.arange(n),
        labels=labels,
        probabilities=probabilities,
    )


def test_noise_rate_is_the_flagged_share_split_where_the_confident_joint_sends_it():
    labels, probabilities = planted()
    summary = summarise_audit(
        inputs_for(labels, probabilities),
        Counter({"mislabel": 20}),
        Counter({"bird": 12, "dog": 8}),
    )
    bird, cat, dog = summary["classes"]
    assert (bird["images"], bird["estimated_noise_rate"]) == (60, 0.2)
    assert bird["top_confusions"][0] == {"class": "cat", "share": 0.2}
    assert (cat["estimated_noise_rate"], cat["top_confusions"]) == (0.0, [])
    assert dog["estimated_noise_rate"] == round(8 / 60, 4)
    assert dog["top_confusions"][0]["class"] == "bird"
    assert summary["findings"] == {"mislabel": 20}


def test_without_the_mislabel_check_the_confident_joint_alone_speaks():
    labels, probabilities = planted()
    where = class_noise(labels, probabilities, np.bincount(labels), None)
    joint = estimate_joint(labels, probabilities)
    np.testing.assert_allclose(where, joint / joint.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(where.sum(axis=1), 1.0)
    assert where[0, 1] > 0.2 and where[2, 0] > 0.05


def test_flags_beyond_the_plain_confident_joint_count_do_not_raise_the_noise_rates():
    """Under heavy noise the check flags cleanlab's calibrated count, which finds more wrong
    labels but overstates how many there are; the rates keep the flags' spread over the classes
    at the plain count's total."""
    labels, probabilities = planted()
    plain = num_label_issues(labels, probabilities)
    assert plain == 21
    summary = summarise_audit(
        inputs_for(labels, probabilities),
        Counter({"mislabel": 42}),
        Counter({"bird": 30, "dog": 12}),
    )
    bird, cat, dog = summary["classes"]
    assert bird["estimated_noise_rate"] == round(15 / 60, 4)
    assert dog["estimated_noise_rate"] == round(6 / 60, 4)
    assert cat["estimated_noise_rate"] == 0.0
