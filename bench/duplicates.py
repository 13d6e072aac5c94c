"""Choosing the copy descriptor and the near-duplicate threshold: how similar are copies under small
crops, flips and JPEG recompression, versus the closest distinct images?

    python -m bench.duplicates [--n 4000] [--copies 400]

CIFAR-10N images plus transformed copies of some of them. Candidate descriptors, each centred and
normalised (auditor.pipeline.stages.search_vectors) and searched with the shared kNN graph (k=10):
the pipeline's flip-symmetric thumbnail (auditor.embed.pixels.duplicate_descriptor) and the layers
of a compact CNN trained on the images as the audit trains it. For each threshold: recall per
transformation (the copy links to its original) and precision over all linked pairs (a link between
two distinct originals is a false duplicate). Results go to bench/results/duplicates.md.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from auditor.embed.pixels import duplicate_descriptor
from auditor.index import KnnGraph, knn_graph
from auditor.pipeline.stages import search_vectors
from auditor.predict.cnn import TrainConfig, layer_features, train_cnn
from bench import cifar
from bench.report import write_results

THRESHOLDS = (0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)


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
    descriptors = {
        "flip-symmetric 8x8 thumbnail (pipeline)": search_vectors(duplicate_descriptor(everything)),
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
    for name, vectors in descriptors.items():
        graph = knn_graph(vectors, 10)
        for threshold in THRESHOLDS:
            recalls, precision, f1 = score(linked_pairs(graph, threshold), truth)
            lines.append(
                f"| {name} | {threshold:.2f} | "
                + " | ".join(f"{r:.3f}" for r in recalls)
                + f" | {precision:.3f} | {f1:.3f} |"
            )
    write_results("duplicates.md", lines)


if __name__ == "__main__":
    main()
