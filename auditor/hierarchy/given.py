"""A curator's own taxonomy: parsing, validation, and where the model disagrees with it.

Curators bring hierarchies as a JSON tree (the same nested shape the API serves) or as a
`class,parent` CSV, usually hand-edited, so validation names every offending class in one error
instead of failing on the first. Every dataset class must be exactly one leaf: an unknown leaf is
usually a typo, a missing class would silently drop out of every per-level analysis.

The comparison has two parts. The cophenetic correlation summarises how far the two trees agree as
a whole. The disagreements say which classes the model files elsewhere: descending the given tree
from the root, at each split the class's mean learned similarity to each branch is compared, and the
first split where another branch beats the class's own by `min_margin` is the disagreement. Going top
down means a class moved to another superclass is reported at the coarse split where it matters,
not as noise at every level below.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import cophenet
from scipy.spatial.distance import squareform

from auditor.hierarchy.blocks import ordered
from auditor.hierarchy.learned import LearnedHierarchy
from auditor.hierarchy.tree import HierarchyError, Tree, TreeIndex, quoted

CSV_HEADERS = (("class", "parent"), ("child", "parent"))


def parse_hierarchy(
    source: str | bytes | Path | Mapping[str, Any], class_names: Sequence[str]
) -> Tree:
    """A validated tree from a JSON tree or `class,parent` CSV (text, bytes, a file or a dict).

    Text starting with `{` is JSON, anything else CSV. Raises HierarchyError naming the classes.
    """
    if isinstance(source, Path):
        try:
            source = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HierarchyError(f"cannot read hierarchy file: {exc}") from exc
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise HierarchyError(f"hierarchy is not UTF-8 text: {exc}") from exc
    if isinstance(source, Mapping):
        tree = tree_from_json(source)
    elif source.lstrip().startswith("{"):
        try:
            tree = tree_from_json(json.loads(source))
        except json.JSONDecodeError as exc:
            raise HierarchyError(f"malformed JSON hierarchy: {exc}") from exc
    else:
        tree = tree_from_csv(source)
    validate_against_classes(tree, class_names)
    return tree


def tree_from_json(document: Mapping[str, Any]) -> Tree:
    """A clean copy (names and children only) of a JSON tree, or of a hierarchy payload's `tree`."""
    if isinstance(document, Mapping) and "name" not in document and "tree" in document:
        document = document["tree"]
    root: Tree = {}
    stack: list[tuple[Any, Tree, tuple[str, ...]]] = [(document, root, ())]
    while stack:
        node, copy, ancestors = stack.pop()
        if not isinstance(node, Mapping) or not isinstance(node.get("name"), str):
            raise HierarchyError(f"malformed hierarchy node {node!r}: a node needs a string 'name'")
        name = node["name"].strip()
        if not name:
            raise HierarchyError("malformed hierarchy: a node has an empty name")
        if name in ancestors:
            cycle = " -> ".join(map(repr, [*ancestors[ancestors.index(name) :], name]))
            raise HierarchyError(f"cycle in hierarchy: {cycle}", [name])
        copy["name"] = name
        children = node.get("children")
        if children is None or children == []:
            continue
        if not isinstance(children, list):
            raise HierarchyError(f"malformed hierarchy node {name!r}: 'children' must be a list")
        copy["children"] = [{} for _ in children]
        stack.extend(
            (child, child_copy, (*ancestors, name))
            for child, child_copy in zip(children, copy["children"], strict=True)
        )
    return root


def tree_from_csv(text: str) -> Tree:
    """Tree from `class,parent` rows; an empty parent marks a root, several roots get one above."""
    parent_of: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text))
    rows = [(reader.line_num, row) for row in reader if row and not row[0].startswith("#")]
    if rows and tuple(cell.strip().lower() for cell in rows[0][1]) in CSV_HEADERS:
        rows = rows[1:]
    if not rows:
        raise HierarchyError("malformed CSV hierarchy: no class,parent rows")
    for line, row in rows:
        cells = [cell.strip() for cell in row]
        if len(cells) != 2 or not cells[0]:
            raise HierarchyError(f"malformed CSV hierarchy line {line}: expected 'class,parent'")
        child, parent = cells
        if child in parent_of:
            raise HierarchyError(
                f"{child!r} is listed twice (parents {parent_of[child]!r} and {parent!r})", [child]
            )
        parent_of[child] = parent
        for name in (child, parent):
            first_seen.setdefault(name, len(first_seen))
    for start in parent_of:
        path = [start]
        while parent_of.get(path[-1]):
            path.append(parent_of[path[-1]])
            if path[-1] in path[:-1]:
                cycle = path[path.index(path[-1]) :]
                raise HierarchyError(
                    f"cycle in hierarchy: {' -> '.join(map(repr, cycle))}", cycle[:-1]
                )
    children: dict[str, list[str]] = {}
    for child in sorted(parent_of, key=first_seen.__getitem__):
        children.setdefault(parent_of[child], []).append(child)
    roots = children.pop("", []) + [name for name in children if name not in parent_of]
    roots.sort(key=first_seen.__getitem__)
    if len(roots) == 1:
        root_name = roots[0]
    else:
        root_name = "root" if "root" not in first_seen else "__root__"
        children[root_name] = roots
    return nested(root_name, children)


def nested(root_name: str, children: Mapping[str, list[str]]) -> Tree:
    root: Tree = {"name": root_name}
    stack = [root]
    while stack:
        node = stack.pop()
        kids = children.get(node["name"])
        if kids:
            node["children"] = [{"name": kid} for kid in kids]
            stack.extend(node["children"])
    return root


def validate_against_classes(tree: Tree, class_names: Sequence[str]) -> None:
    """Every dataset class exactly once, as a leaf, and nothing else as a leaf."""
    index = TreeIndex(tree)
    classes = set(class_names)
    problems, offending = [], []
    inner = [
        name for node, name in enumerate(index.names) if index.children[node] and name in classes
    ]
    if inner:
        problems.append(f"classes must be leaves, but {quoted(inner)} have children")
        offending += inner
    unknown = [name for name in index.order if name not in classes]
    if unknown:
        problems.append(f"unknown classes (not in the dataset): {quoted(unknown)}")
        offending += unknown
    missing = [name for name in class_names if name not in index.leaf_node and name not in inner]
    if missing:
        problems.append(f"classes missing from the hierarchy: {quoted(missing)}")
        offending += missing
    if problems:
        raise HierarchyError("invalid hierarchy: " + "; ".join(problems), offending)


@dataclass(frozen=True)
class Disagreement:
    class_name: str
    level: int  # depth of the given split where the model departs (1 = the top-level branches)
    given_group: str  # given-tree node the taxonomy files the class under at that split
    learned_group: str  # given-tree node whose classes the model finds the class most similar to
    given_similarity: float  # mean learned similarity to the rest of its given group
    learned_similarity: float  # mean learned similarity to the preferred group
    learned_siblings: list[str]  # the classes next to it in the learned tree

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "level": self.level,
            "given_group": self.given_group,
            "learned_group": self.learned_group,
            "given_similarity": round(self.given_similarity, 6),
            "learned_similarity": round(self.learned_similarity, 6),
            "margin": round(self.learned_similarity - self.given_similarity, 6),
            "learned_siblings": self.learned_siblings,
        }


@dataclass(frozen=True)
class HierarchyComparison:
    cophenetic_correlation: float
    disagreements: list[Disagreement]  # coarsest level first, then by margin

    def to_dict(self) -> dict[str, Any]:
        return {
            "cophenetic_correlation": round(self.cophenetic_correlation, 6),
            "disagreements": [item.to_dict() for item in self.disagreements],
        }


def compare_hierarchies(
    learned: LearnedHierarchy, given_tree: Tree, min_margin: float = 0.05
) -> HierarchyComparison:
    """Agreement of the learned tree with a validated given tree over the same classes."""
    given = TreeIndex(given_tree)
    learned_index = TreeIndex(learned.tree)
    path_lengths = ordered(given.path_lengths(), given.order, learned.class_names)
    correlation = float(cophenet(learned.linkage, squareform(path_lengths, checks=False))[0])
    position = {name: i for i, name in enumerate(learned.class_names)}
    similarity = ordered(learned.similarity, learned.class_names, given.order)
    disagreements = []
    for row, name in enumerate(given.order):
        found = first_departure(given, similarity[row], name, min_margin)
        if found is None:
            continue
        level, own, preferred, own_mean, preferred_mean = found
        leaf = learned_index.leaf_node[name]
        siblings = [c for c in learned_index.leaves(learned_index.parents[leaf]) if c != name]
        disagreements.append(
            Disagreement(
                name,
                level,
                given.names[own],
                given.names[preferred],
                own_mean,
                preferred_mean,
                sorted(siblings, key=position.__getitem__),
            )
        )
    disagreements.sort(key=lambda d: (d.level, d.given_similarity - d.learned_similarity))
    return HierarchyComparison(correlation if np.isfinite(correlation) else 0.0, disagreements)


def first_departure(
    given: TreeIndex, similarity_row: np.ndarray, name: str, min_margin: float
) -> tuple[int, int, int, float, float] | None:
    """(level, own node, preferred node, own mean, preferred mean) at the first split it leaves."""
    totals = np.concatenate([[0.0], np.cumsum(similarity_row)])
    own_position = given.order.index(name)
    node = 0
    while given.children[node]:
        means = {}
        for child in given.children[node]:
            start, stop = given.leaf_start[child], given.leaf_stop[child]
            total, size = totals[stop] - totals[start], stop - start
            if start <= own_position < stop:
                own, total, size = child, total - similarity_row[own_position], size - 1
            if size:
                means[child] = total / size
        if own not in means or len(means) < 2:
            return None
        preferred = max((child for child in means if child != own), key=means.__getitem__)
        if means[preferred] > means[own] + min_margin:
            return given.depths[own], own, preferred, float(means[own]), float(means[preferred])
        node = own
    return None
