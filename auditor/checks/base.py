"""The check plugin interface and registry, in the spirit of cleanlab's Datalab issue managers.

A check declares what inputs it needs, turns `CheckInputs` into `FindingDraft`s, and is registered
under its kind. Adding a check is one new module plus one import in `auditor/checks/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from auditor.db.models import Severity


@dataclass
class ImageTable:
    """Column arrays of a dataset's images, aligned by position; the shared input of every check."""

    ids: np.ndarray
    paths: list[str]
    status: list[str]
    errors: list[str | None]
    sha256: list[str | None]
    phash: list[str | None]
    width: np.ndarray
    height: np.ndarray
    stats: list[dict]
    labels: list[str | None]
    splits: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class CheckInputs:
    """What checks read. The model outputs (`features`, `probabilities`, `knn`) describe only the
    usable images: row j of each array is image position `rows[j]` in `images`, and `labels[j]` is
    its given label as an index into `class_names` (-1 when it has none). `knn` links semantic
    neighbours; `copy_knn`, when present, links candidate copies for the duplicate checks, and
    `appearance_knn` images that look alike (thumbnails of colour and edges, by Euclidean
    distance) for the outlier check."""

    dataset_id: int
    images: ImageTable
    class_names: list[str] = field(default_factory=list)
    taxonomy: set[str] | None = None
    rows: np.ndarray | None = None
    labels: np.ndarray | None = None
    features: np.ndarray | None = None
    layer_features: dict[str, np.ndarray] | None = None
    probabilities: np.ndarray | None = None
    knn: Any = None
    copy_knn: Any = None
    appearance_knn: Any = None
    hierarchy: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def image_id(self, row: int) -> int:
        return int(self.images.ids[self.rows[row]])

    def path(self, row: int) -> str:
        return self.images.paths[self.rows[row]]

    def label_name(self, row: int) -> str | None:
        index = int(self.labels[row])
        return self.class_names[index] if index >= 0 else None


@dataclass
class FindingDraft:
    """A finding before it is stored; `subject` makes its key deterministic across re-runs."""

    kind: str
    subject: str
    image_ids: list[int]
    score: float
    severity: Severity = Severity.MEDIUM
    is_issue: bool = True
    given_label: str | None = None
    suggested_label: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


class Check:
    kind: ClassVar[str]
    stage: ClassVar[str] = "audit"
    requires: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **settings: Any) -> None:
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.kind}: unknown settings {sorted(unknown)}")
        self.settings = {**self.defaults, **settings}

    def run(self, inputs: CheckInputs) -> list[FindingDraft]:
        raise NotImplementedError


REGISTRY: dict[str, type[Check]] = {}


def register(check: type[Check]) -> type[Check]:
    REGISTRY[check.kind] = check
    return check


def checks_for_stage(stage: str, settings: dict[str, dict[str, Any]] | None = None) -> list[Check]:
    """Instances of the registered checks of one stage, with per-kind settings applied."""
    settings = settings or {}
    return [c(**settings.get(c.kind, {})) for c in REGISTRY.values() if c.stage == stage]


def run_checks(
    inputs: CheckInputs, stage: str, settings: dict[str, dict[str, Any]] | None = None
) -> tuple[list[FindingDraft], list[str]]:
    """Every check of `stage` whose required inputs are present; returns drafts and kinds run."""
    drafts: list[FindingDraft] = []
    kinds = []
    for check in checks_for_stage(stage, settings):
        if any(getattr(inputs, name) is None for name in check.requires):
            continue
        drafts.extend(check.run(inputs))
        kinds.append(check.kind)
    return drafts, kinds
