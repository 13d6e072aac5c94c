"""The class hierarchy on CIFAR-10N: the learned tree, its blocks, layer separability, and a flat
versus a hierarchy-aware CNN (coarse-level branch heads, as in the Blocks paper).

    python -m bench.hierarchy [--n 10000] [--labels worse aggre]

Per label column: the tree is learned from the audit's out-of-sample probabilities (cached by
bench/quality.py, else computed); blocks are detected automatically; the heatmap goes to
bench/results/hierarchy-<labels>.png. Then two networks are trained on 80% of the images, flat
and with coarse heads from the learned tree, and compared on the held-out 20%: accuracy against
`clean`, epochs until the noisy validation accuracy first reaches 95% of the flat network's best,
and the mislabel F1 of cleanlab on the held-out probabilities. Results: bench/results/hierarchy.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from cleanlab.filter import find_label_issues

from auditor.hierarchy import (
    confusion_counts,
    confusion_payload,
    find_blocks,
    layer_separability,
    learn_hierarchy,
    plot_confusion,
)
from auditor.hierarchy.tree import Tree
from auditor.predict.cnn import layer_features, predict_probabilities, train_cnn
from auditor.predict.heads import fold_assignment
from auditor.predict.hierarchical import coarse_labels
from bench import cifar
from bench.quality import cached_out_of_sample
from bench.report import RESULTS, write_results


def tree_text(tree: Tree, depth: int = 0) -> list[str]:
    if "children" not in tree:
        return ["  " * depth + tree["name"]]
    lines = ["  " * depth + f"+ (similarity {tree.get('similarity', 0):.2f})"]
    for child in tree["children"]:
        lines += tree_text(child, depth + 1)
    return lines


def mislabel_f1(labels: np.ndarray, probabilities: np.ndarray, truth: np.ndarray) -> float:
    flagged = find_label_issues(labels, probabilities)
    tp = int((flagged & truth).sum())
    precision, recall = tp / max(1, flagged.sum()), tp / max(1, truth.sum())
    return 2 * precision * recall / max(1e-9, precision + recall)


def epochs_to(history: list[float], target: float) -> str:
    reached = [epoch for epoch, accuracy in enumerate(history, start=1) if accuracy >= target]
    return str(reached[0]) if reached else "never"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--labels", nargs="+", default=["worse", "aggre"])
    args = parser.parse_args()
    cifar.require()
    images = cifar.load_images()[: args.n]
    clean = cifar.load_labels()["clean"][: args.n]
    names = list(cifar.CLASSES)
    lines = [
        f"### Class hierarchy on CIFAR-10N (`python -m bench.hierarchy --n {args.n}`)",
        "",
        f"First {args.n} images; {platform.machine()}, 2 cores (shared), no GPU.",
    ]
    comparison = [
        "",
        "| labels | network | acc vs clean (held-out 20%) | epochs to 95% of flat best | "
        "mislabel F1 (held-out) | CPU-min |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for column in args.labels:
        labels = cifar.load_labels()[column][: args.n]
        probabilities = (
            cached_out_of_sample(column, args.n, "patch_heads")["probabilities"]
            + cached_out_of_sample(column, args.n, "cnn_crossfit")["probabilities"]
        ) / 2
        learned = learn_hierarchy(probabilities, labels, names)
        counts = confusion_counts(probabilities, labels, len(names))
        blocks = find_blocks(learned.tree, counts, names)
        image = RESULTS / f"hierarchy-{column}.png"
        plot_confusion(
            confusion_payload(counts, names, learned.tree, blocks), learned.tree, path=image
        )
        lines += [
            "",
            f"#### `{column}` labels",
            "",
            "Learned tree (leaf order = heatmap order):",
            "",
            "```",
            *tree_text(learned.tree),
            "```",
            "",
            f"Blocks found: {', '.join('{' + ', '.join(b.classes) + '}' for b in blocks) or 'none'}.",
            "",
            f"![hierarchy-ordered confusion, {column}](bench/results/{image.name})",
        ]

        held_out = fold_assignment(labels, 5, 0) == 0
        coarse = coarse_labels(learned.tree, names, labels)
        networks = {}
        for name, extra in (
            ("flat", {}),
            ("hierarchy-aware", {"coarse_labels": [c[~held_out] for c in coarse]}),
        ):
            started = time.process_time()
            networks[name] = (
                train_cnn(images[~held_out], labels[~held_out], len(names), **extra),
                (time.process_time() - started) / 60,
            )
        target = 0.95 * networks["flat"][0].best_validation_accuracy
        truth = labels[held_out] != clean[held_out]
        for name, (network, cpu_minutes) in networks.items():
            held_probabilities = predict_probabilities(network, images[held_out])
            accuracy = float((held_probabilities.argmax(1) == clean[held_out]).mean())
            title = name if name == "flat" else f"{name} ({len(coarse)} coarse levels)"
            comparison.append(
                f"| {column} | {title} | {accuracy:.3f} | "
                f"{epochs_to(network.validation_history, target)} of {network.epochs_run} | "
                f"{mislabel_f1(labels[held_out], held_probabilities, truth):.3f} | {cpu_minutes:.1f} |"
            )
        separability = layer_separability(
            layer_features(networks["flat"][0], images), labels, names, learned.tree
        )
        lines += [
            "",
            "Layer separability (centroid score, 0 = chance, 1 = perfect) of the flat network:",
            "",
            "| layer | "
            + " | ".join(
                f"{level} ({groups} groups)"
                for level, groups in zip(
                    separability["levels"], separability["groups_per_level"], strict=True
                )
            )
            + " |",
            "|---|" + "---:|" * len(separability["levels"]),
            *[
                f"| {layer} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
                for layer, row in zip(
                    separability["layers"], separability["separability"], strict=True
                )
            ],
        ]
    write_results("hierarchy.md", lines + comparison)


if __name__ == "__main__":
    main()
