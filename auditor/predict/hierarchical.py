"""Coarse targets for the hierarchy-aware CNN: each image's group at the class tree's coarser levels.

The tree is the one learned from a first, flat pass (or a curator's): its coarsest splits become
auxiliary targets for branch heads on early stages (see CompactResNet's `coarse_classes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from auditor.hierarchy.layers import hierarchy_levels
from auditor.hierarchy.tree import Tree

MAX_COARSE_LEVELS = 2


def coarse_labels(
    tree: Tree, class_names: Sequence[str], labels: np.ndarray, levels: int = MAX_COARSE_LEVELS
) -> list[np.ndarray]:
    """Per coarse level (coarsest first), each image's group index; levels that do not group any
    classes together are skipped, since they would only repeat the class target."""
    position = {name: index for index, name in enumerate(class_names)}
    targets = []
    for level in hierarchy_levels(tree):
        if len(level.groups) >= len(class_names) or len(targets) == levels:
            break
        group_of_class = np.empty(len(class_names), dtype=np.int64)
        for group, members in enumerate(level.groups):
            group_of_class[[position[name] for name in members]] = group
        targets.append(group_of_class[np.asarray(labels, dtype=np.int64)])
    return targets
