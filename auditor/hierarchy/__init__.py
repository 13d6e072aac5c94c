"""Class hierarchy analysis (the Blocks paper's views) on plain numpy inputs.

Inputs: out-of-sample probabilities P (n, c), given labels y (n,) as class indices (below 0 =
unlabeled), class names, optionally a curator's hierarchy and per-layer features {layer: (n, d)}
ordered input to output. One pass for an audit:

    learned = learn_hierarchy(P, y, class_names)                    # tree, order, similarity
    counts = confusion_counts(P, y, len(class_names))
    blocks = find_blocks(learned.tree, counts, class_names)
    hierarchy = hierarchy_payload(learned.tree, blocks)             # GET /audits/{id}/hierarchy
    confusion = confusion_payload(counts, class_names, learned.tree, blocks)  # .../confusion
    given = parse_hierarchy(text_or_path, class_names)              # HierarchyError if invalid
    comparison = compare_hierarchies(learned, given)                # disagreements -> findings
    context = mislabel_context(learned.tree, hierarchy["blocks"], given_label, suggested_label)
    layers = layer_separability(features, y, class_names, learned.tree)  # .../layers
    png = plot_confusion(confusion, learned.tree); plot_layer_separability(layers, "svg")

Every payload is JSON-ready (lists, str, float, int, None).
"""

from auditor.hierarchy.blocks import (
    Block,
    confusion_counts,
    confusion_payload,
    find_blocks,
    hierarchy_payload,
    row_normalise,
)
from auditor.hierarchy.given import (
    Disagreement,
    HierarchyComparison,
    compare_hierarchies,
    parse_hierarchy,
)
from auditor.hierarchy.layers import Level, hierarchy_levels, layer_separability
from auditor.hierarchy.learned import LearnedHierarchy, class_similarity, learn_hierarchy
from auditor.hierarchy.plots import plot_confusion, plot_layer_separability
from auditor.hierarchy.severity import MislabelContext, mislabel_context, tree_distance
from auditor.hierarchy.tree import HierarchyError, Tree, TreeIndex

__all__ = [
    "Block",
    "Disagreement",
    "HierarchyComparison",
    "HierarchyError",
    "LearnedHierarchy",
    "Level",
    "MislabelContext",
    "Tree",
    "TreeIndex",
    "class_similarity",
    "compare_hierarchies",
    "confusion_counts",
    "confusion_payload",
    "find_blocks",
    "hierarchy_levels",
    "hierarchy_payload",
    "layer_separability",
    "learn_hierarchy",
    "mislabel_context",
    "parse_hierarchy",
    "plot_confusion",
    "plot_layer_separability",
    "row_normalise",
    "tree_distance",
]
