"""How far apart a mislabel's given and suggested classes are in the hierarchy.

Human label errors follow visual similarity, but so does genuine ambiguity, and the hierarchy tells
the two apart. How the pipeline should use `mislabel_context` on each mislabel finding:

- cross-block and far apart (`likely_real_error`; cat labeled truck, meeting only at the root):
  annotators rarely confuse such images honestly, so this is a likelier real error (a slip, a swapped batch) - raise the severity
  one step and keep the score;
- within one block (husky vs malamute): the model confuses the whole block, so the image may be
  genuinely ambiguous or the class definitions overlap - lower the severity one step and point the
  reviewer at the `ambiguous_classes` finding for the pair rather than at the image alone;
- anything between: leave the severity from the score.

Put the returned record into the finding's evidence, so reviewers see why severity moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from auditor.hierarchy.tree import Tree, TreeIndex, as_index

# "Far apart" in the rule above: the classes only meet at the root, or their normalised distance is
# at least this. The root test matters on deep, lopsided learned trees, where two classes from
# different top-level branches can still be few edges apart relative to the deepest leaf.
FAR_APART = 0.75


def tree_distance(tree: Tree | TreeIndex, a: str, b: str) -> float:
    """Edges between two classes through their lowest common ancestor, over twice the max depth.

    In [0, 1]: 0 for the same class, 1 for two deepest leaves that only meet at the root. Counting
    edges rather than merge heights makes learned and given trees comparable.
    """
    index = as_index(tree)
    if a == b:
        index.leaf_id(a)  # an unknown class is an error even when compared with itself
        return 0.0
    return index.path_length(a, b) / (2 * index.max_depth)


@dataclass(frozen=True)
class MislabelContext:
    given: str
    suggested: str
    distance: float  # tree_distance of the two classes
    common_ancestor: str  # name of their lowest common ancestor
    common_ancestor_depth: int  # 0 = they only meet at the root
    same_block: bool  # both inside one detected block
    block: list[str] | None  # that block's classes

    @property
    def likely_real_error(self) -> bool:
        """Cross-block and far apart: the rule above says raise the severity."""
        far = self.common_ancestor_depth == 0 or self.distance >= FAR_APART
        return far and not self.same_block

    def to_dict(self) -> dict[str, Any]:
        return {
            "given": self.given,
            "suggested": self.suggested,
            "distance": round(self.distance, 6),
            "common_ancestor": self.common_ancestor,
            "common_ancestor_depth": self.common_ancestor_depth,
            "same_block": self.same_block,
            "block": self.block,
            "likely_real_error": self.likely_real_error,
        }


def mislabel_context(
    tree: Tree | TreeIndex, blocks: Sequence[Sequence[str]], given: str, suggested: str
) -> MislabelContext:
    """Distance and block membership of a (given, suggested) pair; `blocks` as in the payload."""
    index = as_index(tree)
    shared = next((list(b) for b in blocks if given in b and suggested in b), None)
    ancestor = index.lowest_common_ancestor(given, suggested)
    return MislabelContext(
        given=given,
        suggested=suggested,
        distance=tree_distance(index, given, suggested),
        common_ancestor=index.names[ancestor],
        common_ancestor_depth=index.depths[ancestor],
        same_block=shared is not None,
        block=shared,
    )
