"""Checks that need only what ingest recorded: readability, image quality, byte-identical copies
and labels that the dataset's class list or manifest cannot support."""

from __future__ import annotations

from collections import defaultdict

from auditor.checks.base import Check, CheckInputs, FindingDraft, register
from auditor.db.models import ImageStatus, Severity


@register
class UnreadableCheck(Check):
    """Every file that did not become a usable image, with the reason; nothing is dropped silently."""

    kind = "unreadable"
    stage = "ingest"

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        images = inputs.images
        drafts = []
        for i, status in enumerate(images.status):
            if status == ImageStatus.OK:
                continue
            image_id = int(images.ids[i])
            drafts.append(
                FindingDraft(
                    kind=self.kind,
                    subject=str(image_id),
                    image_ids=[image_id],
                    score=1.0,
                    severity=Severity.HIGH,
                    given_label=images.labels[i],
                    evidence={"status": status, "reason": images.errors[i]},
                )
            )
        return drafts


@register
class ImageQualityCheck(Check):
    """Images that decode but cannot carry their label well: tiny, extreme shape, blank."""

    kind = "image_quality"
    stage = "ingest"
    defaults = {"min_side": 8, "max_aspect_ratio": 10.0, "min_pixel_std": 2.0}

    def problems(self, width: int, height: int, stats: dict) -> list[str]:
        found = []
        if min(width, height) < self.settings["min_side"]:
            found.append(f"tiny ({width}x{height} px, under {self.settings['min_side']} px)")
        aspect = max(width, height) / max(1, min(width, height))
        if aspect > self.settings["max_aspect_ratio"]:
            found.append(f"extreme aspect ratio {aspect:.0f}:1")
        std = stats.get("pixel_std")
        if std is not None and std < self.settings["min_pixel_std"]:
            found.append(f"near-constant pixels (std {std:.2f} of 255)")
        return found

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        images = inputs.images
        drafts = []
        for i, status in enumerate(images.status):
            if status != ImageStatus.OK:
                continue
            problems = self.problems(int(images.width[i]), int(images.height[i]), images.stats[i])
            if not problems:
                continue
            image_id = int(images.ids[i])
            drafts.append(
                FindingDraft(
                    kind=self.kind,
                    subject=str(image_id),
                    image_ids=[image_id],
                    score=min(1.0, 0.6 + 0.2 * len(problems)),
                    severity=Severity.MEDIUM,
                    given_label=images.labels[i],
                    evidence={
                        "problems": problems,
                        "width": int(images.width[i]),
                        "height": int(images.height[i]),
                        "pixel_std": images.stats[i].get("pixel_std"),
                    },
                )
            )
        return drafts


def majority_label(labels: list[str | None]) -> str | None:
    """The label more than half of the labelled copies carry, if any. Ingest has no model to
    break a tie, so a tie keeps the first path; the audit's label_conflict finding for the same
    copies weighs the model's view."""
    given = [label for label in labels if label]
    for label in set(given):
        if 2 * given.count(label) > len(given):
            return label
    return None


@register
class ExactDuplicateCheck(Check):
    """Groups of byte-identical files (same SHA-256). The keeper suggested is the first path
    among the copies carrying the majority label (the first path when there is none), so a copy
    filed under a minority label is not the one kept."""

    kind = "exact_duplicate"
    stage = "ingest"

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        images = inputs.images
        groups: dict[str, list[int]] = defaultdict(list)
        for i, digest in enumerate(images.sha256):
            if digest and images.status[i] == ImageStatus.OK:
                groups[digest].append(i)
        drafts = []
        for digest, members in groups.items():
            if len(members) < 2:
                continue
            members.sort(key=lambda i: images.paths[i])
            labels = sorted({images.labels[i] or "" for i in members})
            splits = sorted({images.splits[i] or "" for i in members})
            majority = majority_label([images.labels[i] for i in members])
            keep = next(i for i in members if majority in (None, images.labels[i]))
            drafts.append(
                FindingDraft(
                    kind=self.kind,
                    subject=digest,
                    image_ids=[int(images.ids[i]) for i in members],
                    score=1.0,
                    severity=Severity.HIGH if len(labels) > 1 else Severity.LOW,
                    given_label=images.labels[keep],
                    suggested_label=majority if len(labels) > 1 else None,
                    evidence={
                        "sha256": digest,
                        "paths": [images.paths[i] for i in members],
                        "labels": [images.labels[i] for i in members],
                        "splits": splits,
                        "keep": images.paths[keep],
                        "labels_differ": len(labels) > 1,
                    },
                )
            )
        return drafts


@register
class InvalidLabelCheck(Check):
    """Labels the class list does not know, and manifest rows that disagree about one image."""

    kind = "invalid_label"
    stage = "ingest"

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        images = inputs.images
        drafts = []
        row_problems: dict[int, dict] = inputs.extra.get("row_problems", {})
        for i, label in enumerate(images.labels):
            image_id = int(images.ids[i])
            reasons = []
            if label is not None and inputs.taxonomy is not None and label not in inputs.taxonomy:
                reasons.append(f"label {label!r} is not in the dataset's class list")
            problem = row_problems.get(image_id)
            if problem:
                reasons.append(problem["reason"])
            if not reasons:
                continue
            drafts.append(
                FindingDraft(
                    kind=self.kind,
                    subject=str(image_id),
                    image_ids=[image_id],
                    score=1.0,
                    severity=Severity.HIGH,
                    given_label=label,
                    evidence={"reasons": reasons, **(problem or {})},
                )
            )
        return drafts
