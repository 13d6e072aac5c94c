"""The class hierarchy the model has learned, read off its out-of-sample outputs.

Two signals, because each misses something. The confusion matrix (given label vs predicted class) is
what the Blocks paper reorders, but it only sees the top-1 choice, so pairs that a confident model
rarely swaps look unrelated. Correlation between two classes' probability columns also sees the
runner-up mass (a cat image that gets 0.2 dog), so it orders classes the confusions leave tied.
Average linkage on 1 - similarity turns the mix into a tree; optimal leaf ordering then fixes the
left/right order of every merge so that similar neighbours sit next to each other, which is what
makes blocks appear as squares on the diagonal of the reordered matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import linkage, optimal_leaf_ordering
from scipy.spatial.distance import squareform

from auditor.hierarchy.blocks import confusion_counts, row_normalise
from auditor.hierarchy.tree import Tree, TreeIndex

# Merges whose heights differ by less than this are one multi-way split: with no similarity between
# several groups every merge among them sits at distance 1, and their binary nesting is arbitrary.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class LearnedHierarchy:
    class_names: list[str]
    similarity: np.ndarray  # (c, c) in [0, 1], class_names order
    linkage: np.ndarray  # scipy linkage matrix after optimal leaf ordering
    tree: Tree
    order: list[str]


def output_correlation(probabilities: np.ndarray) -> np.ndarray:
    """Pearson correlation between probability columns; anti-correlation means 'unrelated', so 0."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    centred = probabilities - probabilities.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    safe = np.where(norms > 0, norms, 1.0)
    correlation = (centred.T @ centred) / np.outer(safe, safe)
    correlation[(norms == 0)[:, None] | (norms == 0)[None, :]] = 0.0
    return np.clip(correlation, 0.0, 1.0)


def symmetric_confusion(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row-normalised confusion plus its transpose, off-diagonal, scaled so the worst pair is 1.

    Scaling to the strongest pair puts it on the correlation's [0, 1] footing whatever the model's
    accuracy; symmetrising makes the tree about 'confused with each other', not direction.
    """
    rates = row_normalise(confusion_counts(probabilities, labels, probabilities.shape[1]))
    mutual = rates + rates.T
    np.fill_diagonal(mutual, 0.0)
    strongest = mutual.max()
    return mutual / strongest if strongest > 0 else mutual


def class_similarity(
    probabilities: np.ndarray, labels: np.ndarray, confusion_weight: float = 0.5
) -> np.ndarray:
    """Mix of output correlation and mutual confusion, in [0, 1] with 1 on the diagonal."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    correlation = output_correlation(probabilities)
    confusion = symmetric_confusion(probabilities, labels)
    similarity = (1.0 - confusion_weight) * correlation + confusion_weight * confusion
    np.fill_diagonal(similarity, 1.0)
    return similarity


def tree_from_linkage(merges: np.ndarray, class_names: list[str]) -> Tree:
    """Nested-dict tree from a linkage matrix, keeping its leaf order and collapsing tied merges."""
    n_classes = len(class_names)
    nodes: dict[int, Tree] = {i: {"name": name} for i, name in enumerate(class_names)}
    heights = np.concatenate([np.full(n_classes, -np.inf), merges[:, 2]])
    for step, (left, right, height, _) in enumerate(merges):
        children: list[Tree] = []
        for child_id in (int(left), int(right)):
            child = nodes.pop(child_id)
            tied = height - heights[child_id] <= TIE_TOLERANCE
            children.extend(child["children"] if tied else [child])
        nodes[n_classes + step] = {
            "name": f"node_{n_classes + step}",
            "height": round(float(height), 6),
            "similarity": round(1.0 - float(height), 6),
            "children": children,
        }
    (root,) = nodes.values()
    return root


def learn_hierarchy(
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    confusion_weight: float = 0.5,
) -> LearnedHierarchy:
    """Tree and class order from out-of-sample probabilities (n, c) and given labels (n,).

    Labels below 0 (unlabeled images) are left out of the confusion but still count in the output
    correlation, which needs no label.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities have shape {probabilities.shape}, expected (n, {len(class_names)})"
        )
    if len(class_names) < 2:
        raise ValueError("a class hierarchy needs at least two classes")
    similarity = class_similarity(probabilities, labels, confusion_weight)
    distances = squareform(np.clip(1.0 - similarity, 0.0, 1.0), checks=False)
    merges = optimal_leaf_ordering(linkage(distances, method="average"), distances)
    tree = tree_from_linkage(merges, list(class_names))
    return LearnedHierarchy(
        class_names=list(class_names),
        similarity=similarity,
        linkage=merges,
        tree=tree,
        order=TreeIndex(tree).order,
    )
