"""Class trees as JSON-ready nested dicts, and an index that answers structural questions fast.

Every tree in this package, learned or given, has the shape the API serves: internal nodes
`{"name", "children": [...]}` (learned nodes add `height` and `similarity`), leaves `{"name": class}`.
Keeping one shape means blocks, severity, levels and plots work on either tree. The index walks the
tree once, iteratively (a learned tree over 1000 classes can be 1000 levels deep), and numbers nodes
in pre-order, so the leaves under any node are one contiguous slice of the leaf order: that is what
makes subtrees contiguous blocks of the reordered confusion matrix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

Tree = dict[str, Any]


class HierarchyError(ValueError):
    """A hierarchy that cannot be used; `classes` names the offending classes or nodes."""

    def __init__(self, message: str, classes: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.classes = tuple(classes)


def quoted(names: Iterable[str], limit: int = 10) -> str:
    """Names for an error message, capped so a broken 1000-class file gives a readable error."""
    names = list(names)
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


class TreeIndex:
    """Parents, depths and leaf spans of a tree, with nodes numbered in pre-order (root = 0)."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.names: list[str] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.children: list[list[int]] = []
        self.heights: list[float | None] = []
        self.order: list[str] = []
        self.leaf_node: dict[str, int] = {}
        self.leaf_start: list[int] = []
        self.leaf_stop: list[int] = []
        stack: list[tuple[Any, int, int]] = [(tree, -1, 0)]
        while stack:
            node, parent, depth = stack.pop()
            node_id = self._add_node(node, parent, depth)
            kids = node.get("children") or []
            stack.extend((kid, node_id, depth + 1) for kid in reversed(kids))
        for node_id in reversed(range(len(self.names))):
            if self.children[node_id]:
                self.leaf_stop[node_id] = self.leaf_stop[self.children[node_id][-1]]
        self.max_depth = max(self.depths[self.leaf_node[name]] for name in self.order)

    def _add_node(self, node: Any, parent: int, depth: int) -> int:
        if not isinstance(node, dict) or not isinstance(node.get("name"), str) or not node["name"]:
            raise HierarchyError(f"malformed tree node {node!r}: every node needs a non-empty name")
        kids = node.get("children")
        if kids is not None and not isinstance(kids, list):
            raise HierarchyError(f"malformed tree node {node['name']!r}: children must be a list")
        node_id = len(self.names)
        self.names.append(node["name"])
        self.parents.append(parent)
        self.depths.append(depth)
        self.children.append([])
        height = node.get("height")
        self.heights.append(float(height) if isinstance(height, int | float) else None)
        if parent >= 0:
            self.children[parent].append(node_id)
        self.leaf_start.append(len(self.order))
        self.leaf_stop.append(len(self.order))
        if not kids:
            name = node["name"]
            if name in self.leaf_node:
                raise HierarchyError(f"class {name!r} appears more than once in the tree", [name])
            self.leaf_node[name] = node_id
            self.order.append(name)
            self.leaf_stop[node_id] = len(self.order)
        return node_id

    def leaves(self, node_id: int) -> list[str]:
        return self.order[self.leaf_start[node_id] : self.leaf_stop[node_id]]

    def lowest_common_ancestor(self, a: str, b: str) -> int:
        first, second = self.leaf_id(a), self.leaf_id(b)
        while self.depths[first] > self.depths[second]:
            first = self.parents[first]
        while self.depths[second] > self.depths[first]:
            second = self.parents[second]
        while first != second:
            first, second = self.parents[first], self.parents[second]
        return first

    def path_length(self, a: str, b: str) -> int:
        """Edges on the path between two classes, through their lowest common ancestor."""
        ancestor_depth = self.depths[self.lowest_common_ancestor(a, b)]
        return self.depths[self.leaf_id(a)] + self.depths[self.leaf_id(b)] - 2 * ancestor_depth

    def ancestor_at_depth(self, name: str, depth: int) -> int:
        node_id = self.leaf_id(name)
        while self.depths[node_id] > depth:
            node_id = self.parents[node_id]
        return node_id

    def partition_at_depth(self, depth: int) -> list[list[str]]:
        """Groups of classes sharing an ancestor at `depth` (shallower leaves stay on their own)."""
        groups: dict[int, list[str]] = {}
        for name in self.order:
            groups.setdefault(self.ancestor_at_depth(name, depth), []).append(name)
        return list(groups.values())

    def path_lengths(self) -> np.ndarray:
        """All pairwise path lengths, rows and columns in leaf order, filled one subtree at a time.

        Two leaves under different children of a node have that node as lowest common ancestor,
        so each node fills its children's cross rectangles: O(c^2) in all, no per-pair walks.
        """
        ancestor_depth = np.zeros((len(self.order), len(self.order)), dtype=np.int64)
        for node_id, kids in enumerate(self.children):
            for position, first in enumerate(kids):
                rows = slice(self.leaf_start[first], self.leaf_stop[first])
                for second in kids[position + 1 :]:
                    columns = slice(self.leaf_start[second], self.leaf_stop[second])
                    ancestor_depth[rows, columns] = self.depths[node_id]
                    ancestor_depth[columns, rows] = self.depths[node_id]
        leaf_depth = np.array([self.depths[self.leaf_node[name]] for name in self.order])
        lengths = leaf_depth[:, None] + leaf_depth[None, :] - 2 * ancestor_depth
        np.fill_diagonal(lengths, 0)
        return lengths

    def leaf_id(self, name: str) -> int:
        try:
            return self.leaf_node[name]
        except KeyError:
            raise HierarchyError(f"class {name!r} is not a leaf of the tree", [name]) from None


def as_index(tree: Tree | TreeIndex) -> TreeIndex:
    return tree if isinstance(tree, TreeIndex) else TreeIndex(tree)
