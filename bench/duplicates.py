"""Choosing the near-duplicate threshold: how similar are copies under small crops, flips and JPEG
recompression, versus the closest distinct images, in the audit's search space?

    python -m bench.duplicates [--n 4000] [--copies 400]

CIFAR-10N images (labels `aggre`), a compact CNN trained as the audit trains it, its centred and
normalised `pool` vectors (auditor.pipeline.stages.search_vectors), and the shared kNN graph.
For each threshold: recall per transformation (the copy finds its original among its neighbours at
or above the threshold) and precision over all linked pairs (a link between two distinct originals
is a false duplicate). Results go to bench/results/duplicates.md.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from auditor.index import knn_graph
from auditor.pipeline.stages import search_vectors
from auditor.predict.cnn import TrainConfig, layer_features, train_cnn
from bench import cifar

RESULTS = Path(__file__).resolve().parent / "results" / "duplicates.md"
THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)


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


TRANSFORMS = {"crop 81-88%": crop, "horizontal flip": flip, "JPEG q35-60": recompress}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--copies", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    if not cifar.available():
        raise SystemExit("CIFAR-10N not found beside the repository")
    rng = np.random.default_rng(0)
    images, labels = cifar.load_images()[: args.n], cifar.load_labels()["aggre"][: args.n]
    originals = rng.choice(args.n, size=args.copies, replace=False)
    copies, copy_of, copy_kind = [], [], []
    for index, original in enumerate(originals):
        name = list(TRANSFORMS)[index % len(TRANSFORMS)]
        copies.append(TRANSFORMS[name](images[original], rng))
        copy_of.append(original)
        copy_kind.append(name)
    everything = np.concatenate([images, np.stack(copies)])
    all_labels = np.concatenate([labels, labels[originals]])
    trained = train_cnn(everything, all_labels, 10, config=TrainConfig(epochs=args.epochs))
    vectors = search_vectors(layer_features(trained, everything)["pool"])
    graph = knn_graph(vectors, 10)

    copy_rows = np.arange(args.n, len(everything))
    lines = [
        "### Near-duplicate threshold (`python -m bench.duplicates`)",
        "",
        f"{args.n} CIFAR-10N images plus {args.copies} transformed copies; compact CNN trained "
        f"{args.epochs} epochs on `aggre` labels; centred `pool` vectors; k=10. Recall: the copy "
        "links to its original; precision: linked pairs that are true copies.",
        "",
        "| threshold | " + " | ".join(f"recall {k}" for k in TRANSFORMS) + " | precision | F1 |",
        "|---:|" + "---:|" * (len(TRANSFORMS) + 2),
    ]
    truth = {(int(c), int(o)) for c, o in zip(copy_rows, copy_of, strict=True)}
    best = (0.0, None)
    for threshold in THRESHOLDS:
        linked = {
            (max(i, int(j)), min(i, int(j)))
            for i in range(len(everything))
            for j, s in zip(graph.indices[i], graph.similarities[i], strict=True)
            if s >= threshold
        }
        found = linked & truth
        recalls = []
        for name in TRANSFORMS:
            members = {
                (int(c), int(o))
                for c, o, k in zip(copy_rows, copy_of, copy_kind, strict=True)
                if k == name
            }
            recalls.append(len(members & found) / len(members))
        precision = len(found) / max(1, len(linked))
        recall = len(found) / len(truth)
        f1 = 2 * precision * recall / max(1e-9, precision + recall)
        best = max(best, (f1, threshold))
        lines.append(
            f"| {threshold:.2f} | "
            + " | ".join(f"{r:.3f}" for r in recalls)
            + f" | {precision:.3f} | {f1:.3f} |"
        )
    lines += ["", f"Best F1 at threshold {best[1]:.2f}."]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
