"""How well each tapped layer separates each level of the class hierarchy.

The Blocks paper's finding: early layers already separate the coarse groups, later layers are needed
to separate single classes. To show it per dataset, every level of the tree is a partition of the
classes and every layer is scored on every partition.

Levels: level d is the tree cut at depth d from the root, every class grouped under its ancestor at
that depth (a class shallower than d stays on its own). Depth 1 is the coarsest split; the deepest
cut separates single classes. Cuts that do not change the partition (single-child chains) are
skipped, so every level is strictly finer than the one before.

Score: chance-adjusted balanced accuracy of predicting an image's group from that layer's features
on held-out folds (0 = chance, 1 = perfect), so levels with 2 and 100 groups share one scale. The
default `centroid` method classifies by the nearest group mean - one pass over the features, cheap
enough to run on every audit. `probe` fits a cross-validated logistic regression, the standard
linear-probe measure, far slower; it exists to validate the cheap score (tests check both rank the
layers the same way) and for small studies. Both use the same subsample and folds for every layer,
so differences between layers are not sampling noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from auditor.hierarchy.tree import Tree, TreeIndex, as_index

Splits = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Level:
    name: str
    depth: int
    groups: list[list[str]]


def hierarchy_levels(tree: Tree | TreeIndex, max_levels: int | None = None) -> list[Level]:
    """Partitions of the classes from the coarsest split down to single classes.

    With `max_levels`, evenly spaced levels are kept, always including the first and the last:
    a learned tree over many classes can be very deep and a chart of 100 levels says nothing.
    """
    index = as_index(tree)
    levels: list[Level] = []
    for depth in range(1, index.max_depth + 1):
        groups = index.partition_at_depth(depth)
        if len(groups) > 1 and (not levels or len(groups) != len(levels[-1].groups)):
            levels.append(Level(f"depth_{depth}", depth, groups))
    if max_levels is not None and len(levels) > max_levels:
        keep = np.unique(np.linspace(0, len(levels) - 1, max_levels).round().astype(int))
        levels = [levels[i] for i in keep]
    return levels


def nearest_centroid_score(features: np.ndarray, groups: np.ndarray, splits: Splits) -> float:
    predicted = np.empty_like(groups)
    n_groups = int(groups.max()) + 1
    for train, test in splits:
        sums = np.zeros((n_groups, features.shape[1]))
        np.add.at(sums, groups[train], features[train])
        counts = np.bincount(groups[train], minlength=n_groups)
        present = np.flatnonzero(counts)
        centroids = sums[present] / counts[present, None]
        closeness = features[test] @ centroids.T - 0.5 * (centroids**2).sum(axis=1)
        predicted[test] = present[closeness.argmax(axis=1)]
    return float(balanced_accuracy_score(groups, predicted, adjusted=True))


def linear_probe_score(features: np.ndarray, groups: np.ndarray, splits: Splits) -> float:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    predicted = cross_val_predict(probe, features, groups, cv=splits)
    return float(balanced_accuracy_score(groups, predicted, adjusted=True))


SCORERS: dict[str, Callable[[np.ndarray, np.ndarray, Splits], float]] = {
    "centroid": nearest_centroid_score,
    "probe": linear_probe_score,
}


def layer_separability(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    tree: Tree | TreeIndex,
    method: Literal["centroid", "probe"] = "centroid",
    folds: int = 3,
    max_samples: int = 4000,
    max_levels: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The `/audits/{id}/layers` payload: separability[layer][level] for layers in input order.

    `features` maps layer name -> (n, d) array, ordered input to output; `labels` (n,) index
    `class_names` (below 0 = unlabeled, skipped). Classes with fewer than `folds` images in the
    subsample are left out, since they cannot appear in every fold.
    """
    labels = np.asarray(labels)
    index = as_index(tree)
    levels = hierarchy_levels(index, max_levels)
    rows = np.flatnonzero(labels >= 0)
    if len(rows) > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_samples, replace=False))
    counts = np.bincount(labels[rows], minlength=len(class_names))
    rows = rows[counts[labels[rows]] >= folds]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(rows, labels[rows]))
    position = {name: i for i, name in enumerate(class_names)}
    level_groups = []
    for level in levels:
        group_of_class = np.zeros(len(class_names), dtype=np.int64)
        for group, members in enumerate(level.groups):
            group_of_class[[position[name] for name in members]] = group
        level_groups.append(np.unique(group_of_class[labels[rows]], return_inverse=True)[1])
    score = SCORERS[method]
    table = [
        [
            round(score(np.asarray(layer, dtype=np.float64)[rows], groups, splits), 4)
            for groups in level_groups
        ]
        for layer in features.values()
    ]
    return {
        "layers": list(features),
        "levels": [level.name for level in levels],
        "separability": table,
        "method": method,
        "groups_per_level": [len(level.groups) for level in levels],
        "groups": [level.groups for level in levels],
    }
