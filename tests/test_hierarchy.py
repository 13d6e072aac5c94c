"""Hierarchy analysis on planted hierarchies: data whose confusions follow a known tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from auditor.hierarchy import (
    HierarchyError,
    TreeIndex,
    compare_hierarchies,
    confusion_counts,
    confusion_payload,
    find_blocks,
    hierarchy_levels,
    hierarchy_payload,
    layer_separability,
    learn_hierarchy,
    mislabel_context,
    parse_hierarchy,
    plot_confusion,
    plot_layer_separability,
    tree_distance,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def planted_tree(groups: dict[str, dict[str, list[str]]]) -> dict:
    return {
        "name": "root",
        "children": [
            {
                "name": superclass,
                "children": [
                    {"name": group, "children": [{"name": name} for name in members]}
                    for group, members in subgroups.items()
                ],
            }
            for superclass, subgroups in groups.items()
        ],
    }


# 8 classes: 2 superclasses of 2 groups of 2.
PLANTED = planted_tree(
    {
        "vehicle": {"car": ["sedan", "coupe"], "truck": ["pickup", "lorry"]},
        "animal": {"cat": ["tabby", "siamese"], "dog": ["husky", "malamute"]},
    }
)
CLASSES = ["husky", "lorry", "tabby", "sedan", "malamute", "coupe", "siamese", "pickup"]


def planted_outputs(
    tree: dict,
    class_names: list[str],
    confusion_by_path: dict[int, float],
    per_class: int = 150,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose confusions fall with tree distance: the model mistakes class a for
    class b with weight confusion_by_path[path length between a and b]."""
    rng = np.random.default_rng(seed)
    index = TreeIndex(tree)
    position = {name: i for i, name in enumerate(index.order)}
    lengths = index.path_lengths()
    n_classes = len(class_names)
    probabilities, labels = [], []
    for label, name in enumerate(class_names):
        weights = np.array(
            [confusion_by_path[lengths[position[name], position[other]]] for other in class_names]
        )
        weights /= weights.sum()
        predicted = rng.choice(n_classes, size=per_class, p=weights)
        soft = rng.dirichlet(weights * 10.0, size=per_class)
        probabilities.append(0.5 * np.eye(n_classes)[predicted] + 0.5 * soft)
        labels += [label] * per_class
    return np.vstack(probabilities), np.array(labels)


NESTED_CONFUSION = {0: 1.0, 2: 0.3, 4: 0.08, 6: 0.01}


def partitions(tree: dict) -> list[set[frozenset[str]]]:
    return [
        {frozenset(group) for group in level.groups} for level in hierarchy_levels(TreeIndex(tree))
    ]


@pytest.fixture(scope="module")
def learned():
    probabilities, labels = planted_outputs(PLANTED, CLASSES, NESTED_CONFUSION)
    return learn_hierarchy(probabilities, labels, CLASSES), probabilities, labels


def test_learned_tree_recovers_planted_levels_and_keeps_siblings_contiguous(learned):
    hierarchy, _, _ = learned
    assert partitions(hierarchy.tree) == partitions(PLANTED)
    assert sorted(hierarchy.order) == sorted(CLASSES)
    for pair in (["sedan", "coupe"], ["pickup", "lorry"], ["tabby", "siamese"]):
        first, second = (hierarchy.order.index(name) for name in pair)
        assert abs(first - second) == 1
    vehicles = sorted(hierarchy.order.index(n) for n in ["sedan", "coupe", "pickup", "lorry"])
    assert vehicles == list(range(vehicles[0], vehicles[0] + 4))
    json.dumps(hierarchy.tree)


def test_blocks_are_the_planted_superclasses(learned):
    hierarchy, probabilities, labels = learned
    counts = confusion_counts(probabilities, labels, len(CLASSES))
    blocks = find_blocks(hierarchy.tree, counts, CLASSES)
    assert {frozenset(block.classes) for block in blocks} == {
        frozenset({"sedan", "coupe", "pickup", "lorry"}),
        frozenset({"tabby", "siamese", "husky", "malamute"}),
    }
    payload = hierarchy_payload(hierarchy.tree, blocks)
    assert payload["order"] == hierarchy.order and payload["tree"] is hierarchy.tree
    confusion = confusion_payload(counts, CLASSES, hierarchy.tree, blocks)
    assert confusion["order"] == hierarchy.order
    assert sum(map(sum, confusion["matrix"])) == len(labels)
    assert all(abs(sum(row) - 1.0) < 1e-4 for row in confusion["normalised"])
    json.dumps(payload)
    json.dumps(confusion)


def test_blocks_are_the_planted_pairs_when_only_siblings_are_confused():
    probabilities, labels = planted_outputs(PLANTED, CLASSES, {0: 1.0, 2: 0.3, 4: 0.005, 6: 0.005})
    hierarchy = learn_hierarchy(probabilities, labels, CLASSES)
    blocks = find_blocks(hierarchy.tree, confusion_counts(probabilities, labels, 8), CLASSES)
    assert {frozenset(block.classes) for block in blocks} == {
        frozenset(pair)
        for pair in (
            ["sedan", "coupe"],
            ["pickup", "lorry"],
            ["tabby", "siamese"],
            ["husky", "malamute"],
        )
    }


def test_unrelated_groups_become_one_multiway_split():
    tree = {
        "name": "root",
        "children": [
            {"name": g, "children": [{"name": f"{g}1"}, {"name": f"{g}2"}]} for g in "abc"
        ],
    }
    names = ["a1", "b1", "c1", "a2", "b2", "c2"]
    probabilities, labels = planted_outputs(tree, names, {0: 1.0, 2: 0.3, 4: 0.0})
    hierarchy = learn_hierarchy(probabilities, labels, names)
    assert len(hierarchy.tree["children"]) == 3


def test_given_hierarchy_json_and_csv_agree_and_match_the_model(learned):
    hierarchy, _, _ = learned
    csv_rows = ["class,parent", "vehicle,", "animal,"]
    for superclass in PLANTED["children"]:
        for group in superclass["children"]:
            csv_rows.append(f"{group['name']},{superclass['name']}")
            csv_rows += [f"{leaf['name']},{group['name']}" for leaf in group["children"]]
    from_csv = parse_hierarchy("\n".join(csv_rows), CLASSES)
    from_json = parse_hierarchy(json.dumps(PLANTED).encode(), CLASSES)
    assert partitions(from_csv) == partitions(from_json) == partitions(PLANTED)
    comparison = compare_hierarchies(hierarchy, from_json)
    assert comparison.cophenetic_correlation > 0.8
    assert comparison.disagreements == []


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("sedan,car\ncar,vehicle\nvehicle,car", "car"),
        (
            {"name": "root", "children": [{"name": "root", "children": [{"name": "sedan"}]}]},
            "root",
        ),
        ('{"name": "root", "children": [{"name": "zebra"}]}', "zebra"),
        ('{"name": "root", "children": [{"name": "sedan"}, {"name": "coupe"}]}', "husky"),
        ('{"name": "r", "children": [{"name": "sedan"}, {"name": "sedan"}]}', "sedan"),
        ("sedan,car\nsedan,truck", "sedan"),
        ("husky,dog\ndog,animal\nhusky,cat", "husky"),
        ('{"name": "root", "children": [{"name": "husky", "children": [{"name": "x"}]}]}', "husky"),
    ],
    ids=[
        "csv-cycle",
        "json-cycle",
        "unknown",
        "missing",
        "duplicate-leaf",
        "two-parents",
        "listed-twice",
        "class-as-inner-node",
    ],
)
def test_invalid_given_hierarchy_names_the_class(source, named):
    with pytest.raises(HierarchyError, match=repr(named)) as raised:
        parse_hierarchy(source, CLASSES)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    "source", ['{"name": "root", "children": [', '{"children": []}', "a,b,c", "", '{"name": 3}']
)
def test_malformed_given_hierarchy_is_rejected(source):
    with pytest.raises(HierarchyError, match="malformed"):
        parse_hierarchy(source, CLASSES)


def test_comparison_finds_a_class_the_model_files_under_another_branch():
    # The model treats 'tabby' as a truck; the curator's taxonomy keeps it a cat.
    model_tree = planted_tree(
        {
            "vehicle": {"car": ["sedan", "coupe"], "truck": ["pickup", "lorry", "tabby"]},
            "animal": {"cat": ["siamese"], "dog": ["husky", "malamute"]},
        }
    )
    probabilities, labels = planted_outputs(model_tree, CLASSES, NESTED_CONFUSION)
    hierarchy = learn_hierarchy(probabilities, labels, CLASSES)
    comparison = compare_hierarchies(hierarchy, parse_hierarchy(PLANTED, CLASSES))
    coarse = [d for d in comparison.disagreements if d.level == 1]
    assert [d.class_name for d in coarse] == ["tabby"]
    record = coarse[0].to_dict()
    assert record["given_group"] == "animal" and record["learned_group"] == "vehicle"
    assert record["margin"] > 0 and set(record["learned_siblings"]) <= {"pickup", "lorry"}
    assert comparison.cophenetic_correlation < 0.95
    json.dumps(comparison.to_dict())


def test_tree_distance_and_mislabel_context():
    assert tree_distance(PLANTED, "husky", "husky") == 0.0
    assert tree_distance(PLANTED, "husky", "malamute") == pytest.approx(2 / 6)
    assert tree_distance(PLANTED, "husky", "tabby") == pytest.approx(4 / 6)
    assert tree_distance(PLANTED, "husky", "lorry") == 1.0
    with pytest.raises(HierarchyError, match="'zebra'"):
        tree_distance(PLANTED, "zebra", "husky")
    blocks = [["tabby", "siamese", "husky", "malamute"], ["sedan", "coupe", "pickup", "lorry"]]
    sibling = mislabel_context(PLANTED, blocks, "husky", "malamute")
    assert sibling.same_block and not sibling.likely_real_error
    assert sibling.common_ancestor == "dog"
    cross = mislabel_context(PLANTED, blocks, "tabby", "lorry")
    assert not cross.same_block and cross.block is None and cross.likely_real_error
    assert cross.to_dict()["common_ancestor"] == "root" and cross.common_ancestor_depth == 0


def layered_features(seed: int = 0, per_class: int = 40) -> tuple[dict, np.ndarray, list[str]]:
    """Early layer: only superclass signal; middle: + group; late: + class."""
    rng = np.random.default_rng(seed)
    index = TreeIndex(PLANTED)
    names = index.order
    superclass = {name: index.ancestor_at_depth(name, 1) for name in names}
    group = {name: index.ancestor_at_depth(name, 2) for name in names}
    centre = {node: rng.normal(0, 3.0, 16) for node in range(len(index.names))}
    labels = np.repeat(np.arange(len(names)), per_class)
    noise = lambda: rng.normal(0, 1.0, (len(labels), 16))  # noqa: E731
    coarse = np.stack([centre[superclass[names[k]]] for k in labels])
    middle = coarse + np.stack([centre[group[names[k]]] for k in labels])
    fine = middle + np.stack([centre[index.leaf_node[names[k]]] for k in labels])
    features = {"conv1": coarse + noise(), "conv3": middle + noise(), "fc": fine + noise()}
    return features, labels, names


def test_layer_separability_coarse_early_fine_late_and_probe_agrees():
    features, labels, names = layered_features()
    centroid = layer_separability(features, labels, names, PLANTED)
    probe = layer_separability(features, labels, names, PLANTED, method="probe")
    assert centroid["layers"] == ["conv1", "conv3", "fc"]
    assert centroid["levels"] == ["depth_1", "depth_2", "depth_3"]
    assert centroid["groups_per_level"] == [2, 4, 8]
    for result in (centroid, probe):
        table = np.array(result["separability"])
        assert table[0, 0] > 0.9  # coarse level already separated by the first layer
        assert table[0, 2] < 0.3  # single classes not yet
        assert table[1, 1] > 0.9 and table[1, 2] < 0.6
        assert table[2].min() > 0.9  # the last layer separates everything
    for level in (1, 2):
        by_centroid = [row[level] for row in centroid["separability"]]
        by_probe = [row[level] for row in probe["separability"]]
        assert spearmanr(by_centroid, by_probe).statistic == pytest.approx(1.0)
    json.dumps(centroid)


def test_plots_produce_png_and_svg(learned, tmp_path):
    hierarchy, probabilities, labels = learned
    counts = confusion_counts(probabilities, labels, len(CLASSES))
    blocks = find_blocks(hierarchy.tree, counts, CLASSES)
    confusion = confusion_payload(counts, CLASSES, hierarchy.tree, blocks)
    png = plot_confusion(confusion, hierarchy.tree, path=tmp_path / "confusion.png")
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
    assert (tmp_path / "confusion.png").read_bytes() == png
    svg = plot_confusion(confusion, PLANTED, image_format="svg", log_scale=False)
    assert b"<svg" in svg
    features, labels, names = layered_features(per_class=10)
    layers = layer_separability(features, labels, names, PLANTED)
    assert plot_layer_separability(layers).startswith(PNG_SIGNATURE)
    assert b"<svg" in plot_layer_separability(layers, image_format="svg")
