"""mislabel: which labels are probably wrong, from out-of-sample probabilities.

The default scores each label by its posterior under a fitted class-conditional noise model (see
`auditor.noise`): unlike a threshold on the model's confidence, it weighs which confusions the
labels actually show (cat given as dog often, as truck rarely). How many labels to flag is a
separate question: the posterior's 0.5 cut flags too few where noise is heavy and too many where it
is light (its level rests on the sharpness, whose best value moves with the noise rate), while
cleanlab's confident-joint count of label issues tracked the true count better on every CIFAR-10N
column measured: its plain off-diagonal count at light noise, its calibrated count where the noise
model finds heavy noise (there the plain count fell up to 20% short). So the default flags that many
labels, those with the highest posterior error.
cleanlab's confident learning is the alternative method. Optionally the
labels of an image's nearest neighbours are mixed into the probabilities first (independent
evidence of the true class); on CIFAR-10N that helped neither method (bench/results/quality.md).
"""

from __future__ import annotations

import numpy as np
from cleanlab.count import num_label_issues
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from auditor.checks.base import Check, CheckInputs, FindingDraft, register
from auditor.db.models import Severity
from auditor.hierarchy.severity import MislabelContext, mislabel_context
from auditor.noise import fit_noise_model

NEIGHBOURS_IN_EVIDENCE = 5


def neighbour_label_distribution(
    neighbours: np.ndarray, similarities: np.ndarray, labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """Similarity-weighted share of each class among an image's neighbours (its own label unseen)."""
    weights = np.clip(similarities, 0.0, None).astype(np.float64)
    valid = (neighbours >= 0) & (labels[np.clip(neighbours, 0, None)] >= 0)
    weights = np.where(valid, weights, 0.0)
    distribution = np.zeros((len(neighbours), n_classes))
    rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1])
    np.add.at(distribution, (rows, labels[np.clip(neighbours, 0, None)].ravel()), weights.ravel())
    totals = distribution.sum(axis=1, keepdims=True)
    uniform = np.full((1, n_classes), 1.0 / n_classes)
    return np.where(totals > 0, distribution / np.where(totals > 0, totals, 1.0), uniform)


def combined_probabilities(inputs: CheckInputs, neighbour_weight: float) -> np.ndarray:
    probabilities = np.asarray(inputs.probabilities, dtype=np.float64)
    if inputs.knn is None or neighbour_weight <= 0:
        return probabilities
    neighbour = neighbour_label_distribution(
        inputs.knn.indices, inputs.knn.similarities, inputs.labels, probabilities.shape[1]
    )
    return (1.0 - neighbour_weight) * probabilities + neighbour_weight * neighbour


SEVERITIES = [Severity.LOW, Severity.MEDIUM, Severity.HIGH]


def severity_for(score: float, context: MislabelContext | None) -> Severity:
    """From the score, then one step up for a cross-branch error (cat labeled truck: a slip, not
    an honest confusion) and one step down inside a block (husky/malamute: maybe ambiguous)."""
    step = 2 if score >= 0.9 else 1 if score >= 0.7 else 0
    if context is not None:
        step += 1 if context.likely_real_error else -1 if context.same_block else 0
    return SEVERITIES[min(2, max(0, step))]


def hierarchy_context(inputs: CheckInputs, given: str, suggested: str) -> MislabelContext | None:
    payload = (inputs.hierarchy or {}).get("hierarchy")
    if not payload:
        return None
    return mislabel_context(payload["tree"], payload["blocks"], given, suggested)


@register
class MislabelCheck(Check):
    kind = "mislabel"
    requires = ("probabilities",)
    # `noise_posterior` beat cleanlab's confident learning on the same probabilities on every
    # CIFAR-10N column measured (bench/quality.py); `confident_learning` is cleanlab's filter.
    # `flag_count`: "confident_joint" flags cleanlab's estimated number of label issues, highest
    # posterior error first; "posterior" flags every label whose posterior error exceeds 0.5.
    # `calibrated_from`: the noise model's mean posterior error from which that estimate is the
    # confident joint's calibrated count rather than its plain off-diagonal count.
    defaults = {
        "method": "noise_posterior",
        "sharpness": 3.0,
        "flag_count": "confident_joint",
        "calibrated_from": 0.3,
        "neighbour_weight": 0.0,
        "filter_by": "prune_by_noise_rate",
    }

    def scores(self, inputs: CheckInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(labeled rows, is_issue mask, score, class evidence) for the labeled rows."""
        labeled = np.flatnonzero(inputs.labels >= 0)
        combined = combined_probabilities(inputs, self.settings["neighbour_weight"])[labeled]
        combined = combined / combined.sum(axis=1, keepdims=True)
        given = inputs.labels[labeled]
        if len(np.unique(given)) < 2:
            return labeled, np.zeros(len(labeled), bool), np.zeros(len(labeled)), combined
        if self.settings["method"] == "noise_posterior":
            rows = np.arange(len(given))
            posterior = fit_noise_model(
                combined, rows, np.zeros_like(rows), given, float(self.settings["sharpness"])
            ).posterior
            wrong = 1.0 - posterior[np.arange(len(given)), given]
            return labeled, self.flagged(wrong, given, combined), wrong, posterior
        issues = find_label_issues(given, combined, filter_by=self.settings["filter_by"], n_jobs=1)
        quality = get_label_quality_scores(given, combined, method="self_confidence")
        return labeled, issues, 1.0 - quality, combined

    def flagged(
        self, wrong: np.ndarray, given: np.ndarray, probabilities: np.ndarray
    ) -> np.ndarray:
        rule = self.settings["flag_count"]
        if rule == "posterior":
            return wrong > 0.5
        if rule != "confident_joint":
            raise ValueError(
                f"mislabel: flag_count must be confident_joint or posterior, not {rule!r}"
            )
        count = num_label_issues(given, probabilities, estimation_method=self.count_method(wrong))
        flagged = np.zeros(len(wrong), bool)
        flagged[np.argsort(-wrong, kind="stable")[:count]] = True
        return flagged

    def count_method(self, wrong: np.ndarray) -> str:
        """Where noise is heavy the plain count misses labels that no class claims confidently,
        and spreading those in proportion to the confident ones (calibration) comes nearer the
        truth; where it is light they are mostly hard clean images, and spreading them inflates
        the count (CIFAR-10N: `worse`, about 40% wrong, against `aggre`, about 9%)."""
        heavy = float(np.mean(wrong)) >= float(self.settings["calibrated_from"])
        return "off_diagonal_calibrated" if heavy else "off_diagonal"

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        labeled, issues, score, combined = self.scores(inputs)
        drafts = []
        for position in np.flatnonzero(issues):
            row = int(labeled[position])
            drafts.append(self.draft(inputs, row, float(score[position]), combined[position]))
        return drafts

    def draft(
        self, inputs: CheckInputs, row: int, score: float, combined: np.ndarray
    ) -> FindingDraft:
        names = inputs.class_names
        model = inputs.probabilities[row]
        top = np.argsort(-combined)[:3]
        alternatives = combined.copy()
        alternatives[inputs.labels[row]] = -1.0
        evidence = {
            "given_probability": round(float(model[inputs.labels[row]]), 4),
            "top_classes": [
                {
                    "label": names[c],
                    "model": round(float(model[c]), 4),
                    "combined": round(float(combined[c]), 4),
                }
                for c in top
            ],
        }
        if inputs.knn is not None:
            evidence["neighbours"] = [
                {
                    "image_id": inputs.image_id(int(j)),
                    "path": inputs.path(int(j)),
                    "label": inputs.label_name(int(j)),
                    "similarity": round(float(s), 4),
                }
                for j, s in zip(
                    inputs.knn.indices[row][:NEIGHBOURS_IN_EVIDENCE],
                    inputs.knn.similarities[row][:NEIGHBOURS_IN_EVIDENCE],
                    strict=True,
                )
                if j >= 0
            ]
        given, suggested = inputs.label_name(row), names[int(np.argmax(alternatives))]
        context = hierarchy_context(inputs, given, suggested)
        if context is not None:
            evidence["hierarchy"] = context.to_dict()
        return FindingDraft(
            kind=self.kind,
            subject=str(inputs.image_id(row)),
            image_ids=[inputs.image_id(row)],
            score=score,
            severity=severity_for(score, context),
            given_label=given,
            suggested_label=suggested,
            evidence=evidence,
        )
