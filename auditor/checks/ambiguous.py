"""ambiguous_classes: class pairs the data cannot tell apart (synonyms, overlapping definitions).

cleanlab's `find_overlapping_classes` estimates from the confident joint how many examples of two
classes are interchangeable. A pair is ambiguous when that overlap is material and the confusion
runs both ways: one-way confusion is a labeling error pattern, two-way is a definition problem.
Nearly symmetric, heavy confusion suggests merging; otherwise the guideline needs clarifying.

Both ways must also stand out from the model's general error: a model that is wrong on a third of
the images spreads more than 5% of every class over every other, and on CIFAR-10N that alone
raised 17 of the 45 pairs (`worse` labels) as ambiguous. So the share of a class's misses that
go to the other class must be at least `min_concentration` times what an even spread over the
other classes would give (capped at half of them): on the same data that keeps
automobile/truck and cat/dog, the pairs the human annotators swap most (bench/ambiguous.py).
"""

from __future__ import annotations

import numpy as np
from cleanlab.dataset import find_overlapping_classes

from auditor.checks.base import Check, CheckInputs, FindingDraft, register
from auditor.db.models import Severity

EXAMPLES_IN_EVIDENCE = 8


def error_shares(confusion: np.ndarray) -> np.ndarray:
    """shares[a, b]: of the images labeled a that the model puts elsewhere, the share it puts in b."""
    misses = 1.0 - np.diag(confusion)
    return confusion / np.where(misses > 0, misses, 1.0)[:, None]


def directional_confusion(
    labels: np.ndarray, probabilities: np.ndarray, n_classes: int
) -> np.ndarray:
    """confusion[a, b]: share of images labeled a whose predicted class is b."""
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes))
    np.add.at(confusion, (labels, predicted), 1.0)
    return confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1.0)


@register
class AmbiguousClassesCheck(Check):
    kind = "ambiguous_classes"
    requires = ("probabilities",)
    defaults = {
        "min_joint": 0.002,
        "min_each_way": 0.05,
        "min_concentration": 2.0,
        "merge_each_way": 0.25,
        "max_pairs": 20,
    }

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        labeled = np.flatnonzero(inputs.labels >= 0)
        labels = inputs.labels[labeled]
        probabilities = np.asarray(inputs.probabilities)[labeled]
        n_classes = len(inputs.class_names)
        if len(np.unique(labels)) < 2:
            return []
        overlaps = find_overlapping_classes(labels=labels, pred_probs=probabilities)
        confusion = directional_confusion(labels, probabilities, n_classes)
        shares = error_shares(confusion)
        min_share = min(0.5, self.settings["min_concentration"] / max(1, n_classes - 1))
        predicted = probabilities.argmax(axis=1)
        drafts = []
        for record in overlaps.head(self.settings["max_pairs"]).itertuples(index=False):
            a, b, overlapping, joint = (
                int(record[0]),
                int(record[1]),
                float(record[2]),
                float(record[3]),
            )
            a_to_b, b_to_a = confusion[a, b], confusion[b, a]
            if (
                joint < self.settings["min_joint"]
                or min(a_to_b, b_to_a) < self.settings["min_each_way"]
                or min(shares[a, b], shares[b, a]) < min_share
            ):
                continue
            mutual = float(np.sqrt(a_to_b * b_to_a))
            merge = min(a_to_b, b_to_a) >= self.settings["merge_each_way"]
            examples = np.flatnonzero(
                ((labels == a) & (predicted == b)) | ((labels == b) & (predicted == a))
            )[:EXAMPLES_IN_EVIDENCE]
            first, second = sorted((a, b), key=lambda c: inputs.class_names[c])
            name_a, name_b = inputs.class_names[first], inputs.class_names[second]
            drafts.append(
                FindingDraft(
                    kind=self.kind,
                    subject=f"{name_a}|{name_b}",
                    image_ids=[inputs.image_id(int(labeled[e])) for e in examples],
                    score=min(1.0, 2.0 * mutual),
                    severity=Severity.HIGH if merge else Severity.MEDIUM,
                    given_label=name_a,
                    suggested_label=name_b,
                    evidence={
                        "classes": [name_a, name_b],
                        "overlapping_examples": round(overlapping, 1),
                        "joint_probability": round(joint, 5),
                        "confusion_a_to_b": round(float(confusion[first, second]), 4),
                        "confusion_b_to_a": round(float(confusion[second, first]), 4),
                        "error_share_a_to_b": round(float(shares[first, second]), 4),
                        "error_share_b_to_a": round(float(shares[second, first]), 4),
                        "examples": [
                            {
                                "image_id": inputs.image_id(int(labeled[e])),
                                "label": inputs.class_names[labels[e]],
                                "predicted": inputs.class_names[predicted[e]],
                            }
                            for e in examples
                        ],
                        "recommendation": "merge" if merge else "clarify",
                        "same_block": any(
                            name_a in block and name_b in block
                            for block in ((inputs.hierarchy or {}).get("hierarchy") or {}).get(
                                "blocks", []
                            )
                        ),
                    },
                )
            )
        return drafts
