"""Choosing the copy descriptor and the near-duplicate threshold: how similar are copies under small
crops, flips and JPEG recompression, versus the closest distinct images?

    python -m bench.duplicates [--n 4000] [--copies 400]

CIFAR-10N images plus transformed copies of some of them. Candidate descriptors, each centred and
normalised (auditor.pipeline.stages.search_vectors) and searched with the shared kNN graph (k=10):
the flip-symmetric thumbnail of the whole image (the pipeline's descriptor before crop windows),
the pipeline's copy search (auditor.copies.copy_neighbours: that thumbnail plus crop windows
searched among the whole images), and the layers of a compact CNN trained on the images as the
audit trains it. `--time-n N` also runs the old whole-image search and the pipeline's copy search
side by side on the first N CIFAR-10N images, without planted copies: seconds, links and the groups
they make (look-alikes chained together show as large groups). For each threshold: recall per
transformation (the copy links to its original) and precision over all linked pairs (a link between
two distinct originals is a false duplicate). Results go to bench/results/duplicates.md.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from auditor.checks.duplicates import DuplicateGroupCheck
from auditor.copies import copy_neighbours, thumbnail_descriptor
from auditor.index import KnnGraph, knn_graph
from auditor.pipeline.stages import search_vectors
from auditor.predict.cnn import TrainConfig, layer_features, train_cnn
from bench import cifar
from bench.report import write_results

COPY_THRESHOLD = DuplicateGroupCheck.defaults["threshold"]
THRESHOLDS = (0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.975, 0.98)


def crop(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(26, 30))
    x, y = rng.integers(0, 32 - side + 1, size=2)
    image = Image.fromarray(pixels[y : y + side, x : x + side]).resize((32, 32), Image.BILINEAR)
    return np.asarray(image)


def flip(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return pixels[:, ::-1].copy()


def recompress(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(rng.integers(35, 60)))
    return np.asarray(Image.open(buffer).convert("RGB"))


TRANSFORMS = {"crop 81-91% of the side": crop, "mirror": flip, "JPEG q35-60": recompress}


def linked_pairs(graph: KnnGraph, threshold: float) -> set[tuple[int, int]]:
    rows, columns = np.nonzero(graph.similarities >= threshold)
    return {
        (max(r, int(graph.indices[r, c])), min(r, int(graph.indices[r, c])))
        for r, c in zip(rows, columns, strict=True)
    }


def score(linked: set, truth: dict[tuple[int, int], str]) -> tuple[list[float], float, float]:
    found = linked & set(truth)
    recalls = [
        sum(1 for pair in found if truth[pair] == name)
        / sum(1 for kind in truth.values() if kind == name)
        for name in TRANSFORMS
    ]
    precision = len(found) / max(1, len(linked))
    recall = len(found) / len(truth)
    return recalls, precision, 2 * precision * recall / max(1e-9, precision + recall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--copies", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--time-n", type=int, default=0)
    args = parser.parse_args()
    cifar.require()
    rng = np.random.default_rng(0)
    images, labels = cifar.load_images()[: args.n], cifar.load_labels()["aggre"][: args.n]
    originals = rng.choice(args.n, size=args.copies, replace=False)
    truth, copies = {}, []
    for index, original in enumerate(originals):
        name = list(TRANSFORMS)[index % len(TRANSFORMS)]
        copies.append(TRANSFORMS[name](images[original], rng))
        truth[(args.n + index, int(original))] = name
    everything = np.concatenate([images, np.stack(copies)])
    trained = train_cnn(
        everything,
        np.concatenate([labels, labels[originals]]),
        10,
        config=TrainConfig(epochs=args.epochs),
    )
    layers = layer_features(trained, everything)
    graphs = {
        "flip-symmetric 8x8 thumbnail, whole image (before)": whole_image_graph(everything),
        "thumbnail + crop windows (pipeline)": copy_neighbours(everything, 10),
    }
    descriptors = {
        "trained CNN `pool`": search_vectors(layers["pool"]),
        "trained CNN `stem`": search_vectors(layers["stem"]),
        "trained CNN, all layers": search_vectors(
            np.concatenate([search_vectors(v) for v in layers.values()], axis=1)
        ),
    }
    header = "| descriptor | threshold | " + " | ".join(f"recall {k}" for k in TRANSFORMS)
    lines = [
        "### Near-duplicate descriptor and threshold (`python -m bench.duplicates`)",
        "",
        f"{args.n} CIFAR-10N images plus {args.copies} transformed copies (a third each); CNN "
        f"trained {args.epochs} epochs on `aggre` labels; k=10; 2-core CPU.",
        "",
        header + " | precision | F1 |",
        "|---|---:|" + "---:|" * (len(TRANSFORMS) + 2),
    ]
    graphs |= {name: knn_graph(vectors, 10) for name, vectors in descriptors.items()}
    for name, graph in graphs.items():
        for threshold in THRESHOLDS:
            recalls, precision, f1 = score(linked_pairs(graph, threshold), truth)
            lines.append(
                f"| {name} | {threshold:g} | "
                + " | ".join(f"{r:.3f}" for r in recalls)
                + f" | {precision:.3f} | {f1:.3f} |"
            )
    if args.time_n:
        lines += ["", *whole_scale_lines(cifar.load_images()[: args.time_n])]
    write_results("duplicates.md", lines)


def whole_image_graph(pixels: np.ndarray) -> KnnGraph:
    return knn_graph(search_vectors(thumbnail_descriptor(pixels)[:, 0]), 10)


def whole_scale_lines(pixels: np.ndarray) -> list[str]:
    """On a large set without planted copies: wall seconds of the whole-image search (at its old
    0.96 threshold) and the pipeline's copy search (at the checks' threshold), alternated twice,
    and the groups each threshold's links would make. Chains of look-alikes show up as large
    groups."""
    searches = {
        "whole-image thumbnail at 0.96 (before)": (whole_image_graph, 0.96),
        f"pipeline copy search at {COPY_THRESHOLD:g}": (
            lambda p: copy_neighbours(p, 10),
            COPY_THRESHOLD,
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in searches}
    graphs: dict[str, KnnGraph] = {}
    for _ in range(2):
        for name, (search, _threshold) in searches.items():
            started = time.perf_counter()
            graphs[name] = search(pixels)
            seconds[name].append(time.perf_counter() - started)
    lines = [
        f"#### Copy search on {len(pixels)} CIFAR-10N images, no planted copies "
        "(`--time-n`; best of two runs, alternated)",
        "",
        "| search | seconds | linked pairs | groups | images in groups | largest five groups |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, (_search, threshold) in searches.items():
        pairs = linked_pairs(graphs[name], threshold)
        sizes = group_sizes(pairs, len(pixels))
        lines.append(
            f"| {name} | {min(seconds[name]):.1f} | {len(pairs)} | {len(sizes)} | "
            f"{sum(sizes)} | {', '.join(map(str, sizes[:5]))} |"
        )
    return lines


def group_sizes(pairs: set[tuple[int, int]], n: int) -> list[int]:
    """Sizes of the groups union-find makes of `pairs`, largest first (singletons left out)."""
    if not pairs:
        return []
    links = np.array(sorted(pairs))
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
    _, group_of = connected_components(graph, directed=False)
    sizes = np.bincount(group_of)
    return sorted((int(size) for size in sizes if size > 1), reverse=True)


if __name__ == "__main__":
    main()
