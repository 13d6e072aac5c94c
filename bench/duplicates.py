"""Choosing the copy descriptor and the near-duplicate threshold: how similar are copies under small
crops, flips and JPEG recompression, versus the closest distinct images?

    python -m bench.duplicates [--n 4000] [--copies 400]

CIFAR-10N images plus transformed copies of some of them. Candidate descriptors, each centred and
normalised (auditor.pipeline.stages.search_vectors) and searched with the shared kNN graph (k=10):
the flip-symmetric thumbnail of the whole image (the pipeline's descriptor before crop windows),
the pipeline's copy search (auditor.copies.copy_neighbours: that thumbnail plus crop windows
searched among the whole images), and the layers of a compact CNN trained on the images as the
audit trains it. `--time-n` also times the two thumbnail searches side by side on that many
CIFAR-10N images. For each threshold: recall per
transformation (the copy links to its original) and precision over all linked pairs (a link between
two distinct originals is a false duplicate). Results go to bench/results/duplicates.md.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from auditor.copies import copy_neighbours, thumbnail_descriptor
from auditor.index import KnnGraph, knn_graph
from auditor.pipeline.stages import search_vectors
from auditor.predict.cnn import TrainConfig, layer_features, train_cnn
from bench import cifar
from bench.report import write_results

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


TRANSFORMS = {"crop 81-88%": crop, "mirror": flip, "JPEG q35-60": recompress}


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
    if not cifar.available():
        raise SystemExit("CIFAR-10N not found beside the repository")
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
                f"| {name} | {threshold:.2f} | "
                + " | ".join(f"{r:.3f}" for r in recalls)
                + f" | {precision:.3f} | {f1:.3f} |"
            )
    if args.time_n:
        lines += ["", *timing_lines(cifar.load_images()[: args.time_n])]
    write_results("duplicates.md", lines)


def whole_image_graph(pixels: np.ndarray) -> KnnGraph:
    return knn_graph(search_vectors(thumbnail_descriptor(pixels)[:, 0]), 10)


def timing_lines(pixels: np.ndarray) -> list[str]:
    """Wall seconds of the whole-image search and the windowed copy search, alternated twice."""
    seconds: dict[str, list[float]] = {"whole image": [], "with crop windows": []}
    for _ in range(2):
        for name, search in (
            ("whole image", whole_image_graph),
            ("with crop windows", lambda p: copy_neighbours(p, 10)),
        ):
            started = time.perf_counter()
            search(pixels)
            seconds[name].append(time.perf_counter() - started)
    whole, windows = (min(values) for values in seconds.values())
    return [
        f"Copy search on {len(pixels)} CIFAR-10N images (descriptors and k=10 graph, best of two, "
        f"same run): whole image {whole:.1f} s, with crop windows {windows:.1f} s "
        f"({windows / whole:.1f}x).",
    ]


if __name__ == "__main__":
    main()
