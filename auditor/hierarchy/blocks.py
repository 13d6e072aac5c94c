"""The confusion matrix in hierarchy order, and the blocks of mutually confused classes in it.

A block is a subtree of the hierarchy whose classes are confused with each other far more than with
anything outside: on the reordered matrix, a dense square on the diagonal. Searching subtrees rather
than arbitrary runs of the order means one test per subtree instead of one per run, and guarantees
the blocks nest with the tree. The search goes top down and stops at the first subtree that qualifies,
so blocks are maximal and never overlap; a subtree that fails is split into its children.

The criterion uses row-normalised confusion (rates), so a large class does not make its row the
whole story. A subtree's *cohesion* is its weakest internal link: for each child subtree, the mean
rate between it and its sibling subtrees (both directions), minimised over children. Using the
within-subtree mean instead would call two dense pairs that never mix one block, since their
pairs alone lift the mean. A subtree is a block when cohesion / (mean rate between the subtree and
all other classes) >= `min_ratio` (the square stands out) and cohesion >= `min_cohesion` (it is dense
at all, so a huge sparse half of the classes does not count just because the rest is sparser).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from auditor.hierarchy.tree import Tree, TreeIndex, as_index


def confusion_counts(probabilities: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[given, predicted] over labeled images (labels < 0 are unlabeled and skipped)."""
    labels = np.asarray(labels)
    labeled = labels >= 0
    predicted = np.asarray(probabilities)[labeled].argmax(axis=1)
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (labels[labeled].astype(np.int64), predicted), 1)
    return counts


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Share of each given label's images predicted as each class; empty rows stay zero."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


@dataclass(frozen=True)
class Block:
    classes: list[str]
    start: int  # position of the first class in the hierarchy order
    stop: int  # one past the last
    cohesion: float  # weakest mean confusion rate between a child subtree and its siblings
    between: float  # mean confusion rate between the block and the other classes
    ratio: float  # cohesion / between; inf when nothing outside is confused with the block

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "start": self.start,
            "stop": self.stop,
            "cohesion": round(self.cohesion, 6),
            "between": round(self.between, 6),
            "ratio": round(self.ratio, 3) if np.isfinite(self.ratio) else None,
        }


def mean_exchange(rates: np.ndarray, part: np.ndarray, others: np.ndarray) -> float:
    """Mean confusion rate between two disjoint sets of positions, in both directions."""
    return float((rates[np.ix_(part, others)].mean() + rates[np.ix_(others, part)].mean()) / 2.0)


def span(index: TreeIndex, node_id: int) -> np.ndarray:
    return np.arange(index.leaf_start[node_id], index.leaf_stop[node_id])


def find_blocks(
    tree: Tree | TreeIndex,
    counts: np.ndarray,
    class_names: Sequence[str],
    min_ratio: float = 4.0,
    min_cohesion: float = 0.005,
) -> list[Block]:
    """Maximal non-overlapping subtrees (2+ classes, not the root) that stand out as blocks.

    `counts` is the confusion matrix in `class_names` order (rows given, columns predicted).
    """
    index = as_index(tree)
    rates = ordered(row_normalise(counts), class_names, index.order)
    everything = np.arange(len(index.order))
    blocks = []
    pending = list(reversed(index.children[0]))
    while pending:
        node_id = pending.pop()
        members = span(index, node_id)
        if len(members) < 2:
            continue
        if len(members) == len(everything):  # a chain below the root: nothing outside yet
            pending.extend(reversed(index.children[node_id]))
            continue
        cohesion = min(
            mean_exchange(rates, span(index, child), np.setdiff1d(members, span(index, child)))
            for child in index.children[node_id]
        )
        between = mean_exchange(rates, members, np.setdiff1d(everything, members))
        ratio = cohesion / between if between > 0 else (np.inf if cohesion > 0 else 0.0)
        if cohesion >= min_cohesion and ratio >= min_ratio:
            start, stop = int(members[0]), int(members[-1]) + 1
            blocks.append(Block(index.order[start:stop], start, stop, cohesion, between, ratio))
        else:
            pending.extend(reversed(index.children[node_id]))
    return sorted(blocks, key=lambda block: block.start)


def ordered(matrix: np.ndarray, class_names: Sequence[str], order: Sequence[str]) -> np.ndarray:
    """Rows and columns of a class-by-class matrix permuted into `order`."""
    position = {name: i for i, name in enumerate(class_names)}
    permutation = [position[name] for name in order]
    return np.asarray(matrix)[np.ix_(permutation, permutation)]


def hierarchy_payload(tree: Tree, blocks: list[Block]) -> dict[str, Any]:
    """The `/audits/{id}/hierarchy` response: order, tree and blocks (plus block statistics)."""
    return {
        "order": TreeIndex(tree).order,
        "tree": tree,
        "blocks": [block.classes for block in blocks],
        "block_details": [block.to_dict() for block in blocks],
    }


def confusion_payload(
    counts: np.ndarray, class_names: list[str], tree: Tree | TreeIndex, blocks: list[Block]
) -> dict[str, Any]:
    """The `/audits/{id}/confusion` response: counts and row-normalised rates in hierarchy order."""
    order = as_index(tree).order
    matrix = ordered(counts, class_names, order)
    return {
        "order": order,
        "matrix": np.asarray(matrix, dtype=np.int64).tolist(),
        "normalised": np.round(row_normalise(matrix), 6).tolist(),
        "blocks": [block.classes for block in blocks],
    }
