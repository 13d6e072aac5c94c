"""taxonomy_disagreement: classes the model files under another branch than the given hierarchy.

When a curator supplies a class tree, the audit compares it with the tree learned from the model's
confusions. A class that behaves like members of another branch (a "tabby" confused with trucks
rather than with other cats) points at a wrong taxonomy entry, a class defined too broadly, or
systematically mislabeled images; the finding names the groups and shows images of the class.
"""

from __future__ import annotations

import numpy as np

from auditor.checks.base import Check, CheckInputs, FindingDraft, register
from auditor.db.models import Severity

EXAMPLES_IN_EVIDENCE = 8


@register
class TaxonomyDisagreementCheck(Check):
    kind = "taxonomy_disagreement"
    requires = ("hierarchy",)
    defaults = {"max_findings": 20}

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        comparison = (inputs.hierarchy or {}).get("comparison") or {}
        drafts = []
        for item in comparison.get("disagreements", [])[: self.settings["max_findings"]]:
            name = item["class"]
            index = inputs.class_names.index(name)
            examples = np.flatnonzero(inputs.labels == index)[:EXAMPLES_IN_EVIDENCE]
            drafts.append(
                FindingDraft(
                    kind=self.kind,
                    subject=name,
                    image_ids=[inputs.image_id(int(row)) for row in examples],
                    score=float(min(1.0, 0.5 + item["margin"])),
                    severity=Severity.HIGH if item["level"] == 1 else Severity.MEDIUM,
                    given_label=name,
                    suggested_label=item["learned_group"],
                    evidence={
                        **item,
                        "cophenetic_correlation": comparison["cophenetic_correlation"],
                    },
                )
            )
        return drafts
