"""Does the `outlier` check find off-topic uploads? The demo's digits with natural-photo crops planted.

    python -m bench.outliers [--offtopic 10] [--per-class 60]

Builds the demo dataset (sklearn digits, nothing downloaded), adds crops of scikit-learn's two
sample photographs as off-topic uploads filed under random digit classes, runs the default audit
(a CNN trained on the data, as on a machine without pretrained weights), and counts how many of
the planted images the `outlier` check flags and how many digits it flags besides. It then
repeats the check's rule (robust z of the mean distance to the k nearest neighbours, above 4) on
each tapped layer and on the label-free patch features, to show where the off-topic images stand
apart, and the thumbnail rule on growing groups of crops of one photograph. Where CIFAR-10N is beside the repository, the same for natural photographs with a few
images planted that do not belong (digits, text-like pages, noise), and the thumbnail rules on
all 50,000 photographs with nothing planted. Results go to
bench/results/outliers.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images
from sklearn.metrics import roc_auc_score
from sqlalchemy import select

from auditor.checks.outlier import OutlierCheck, robust_z
from auditor.config import Settings
from auditor.db import migrate
from auditor.db.models import Image as ImageRow
from auditor.db.session import make_engine, make_session_factory
from auditor.demo import CLASS_NAMES, build_demo_dataset
from auditor.embed.pixels import appearance_descriptor
from auditor.index import knn_graph
from auditor.ingest.ingest import ingest
from auditor.pipeline.artifacts import AuditArtifacts
from auditor.pipeline.audit import create_audit, run_audit
from auditor.pipeline.stages import APPEARANCE_K, DEFAULT_PARAMETERS, search_vectors
from auditor.predict.patch_features import patch_features
from bench import cifar
from bench.report import flagged_paths, write_results

THRESHOLD = OutlierCheck.defaults["z_threshold"]
COLOURS = 8 * 8 * 3
"""The colour thumbnail's share of `appearance_descriptor`'s columns; the rest is edges."""


def plant_offtopic(
    root: Path, count: int, side: int, seed: int, photographs: tuple[int, ...] = (0, 1)
) -> list[str]:
    """Random crops of the sample photographs (in turn), scaled to the digits' size."""
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    planted = []
    for index in range(count):
        photo = photos[photographs[index % len(photographs)]]
        crop = int(rng.integers(120, 260))
        y = int(rng.integers(0, photo.shape[0] - crop))
        x = int(rng.integers(0, photo.shape[1] - crop))
        label = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
        relative = f"{label}/offtopic_{index:03d}.png"
        Image.fromarray(photo[y : y + crop, x : x + crop]).resize((side, side)).save(
            root / relative
        )
        planted.append(relative)
    return planted


def layer_rule(
    features: np.ndarray, k: int, offtopic: np.ndarray, metric: str = "cosine"
) -> tuple[int, int, int, float]:
    """Under the check's rule: (off-topic flagged, others flagged, off-topic among the highest
    scores as many as were planted, AUROC of the score). Cosine on centred vectors, as the
    check's model-feature graph, or Euclidean on the vectors as they are."""
    vectors = features.astype(np.float32)
    if metric == "cosine":
        vectors = search_vectors(vectors)
    graph = knn_graph(vectors, k, metric=metric)
    z = robust_z(graph.distances().mean(axis=1))
    flagged = z > THRESHOLD
    top = np.argsort(-z)[: int(offtopic.sum())]
    return (
        int(flagged[offtopic].sum()),
        int(flagged[~offtopic].sum()),
        int(offtopic[top].sum()),
        float(roc_auc_score(offtopic, z)),
    )


def plant_oddities(root: Path, side: int, seed: int) -> list[str]:
    """Images that do not belong among photographs: four handwritten digits, four text-like
    white images with black lines, four of pure noise, each filed under some class."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    classes = sorted(path.name for path in root.iterdir() if path.is_dir())
    planted = []
    for index in range(12):
        if index < 4:
            grey = (digits.images[index * 97] * (255 / 16)).astype(np.uint8)
            image = Image.fromarray(grey).resize((side, side)).convert("RGB")
            name = "digit"
        elif index < 8:
            page = np.full((side, side, 3), 255, np.uint8)
            for row in range(4, side - 2, 5):
                page[row : row + 2, 3 : int(rng.integers(side // 3, side - 3))] = 0
            image, name = Image.fromarray(page), "text"
        else:
            noise = rng.integers(0, 256, (side, side, 3)).astype(np.uint8)
            image, name = Image.fromarray(noise), "noise"
        relative = f"{classes[index % len(classes)]}/odd_{name}_{index:02d}.png"
        image.save(root / relative)
        planted.append(relative)
    return planted


def write_cifar_folder(root: Path, n: int) -> None:
    images, labels = cifar.load_images()[:n], cifar.load_labels()["clean"][:n]
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / cifar.CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{index:05d}.png")


def audited_scenario(root: Path, planted: set[str], workdir: Path) -> tuple[set[str], list, tuple]:
    """Run the default audit on `root`; return the paths the check flagged, the rule's figures
    per feature set, and the model-doubt figures."""
    settings = Settings(database_url=f"sqlite:///{workdir / 'audit.db'}", data_dir=workdir)
    migrate.upgrade(settings.database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    ingested = ingest(factory, root.name, root, settings)
    audit_id = create_audit(factory, ingested.dataset_id, {"backbone": "trained"})
    audit = run_audit(factory, settings, audit_id)
    if audit.status != "completed":
        raise SystemExit(f"audit {audit_id} {audit.status}: {audit.error}")
    with factory() as session:
        flagged = flagged_paths(session, audit_id, "outlier")
        path_of = dict(session.execute(select(ImageRow.id, ImageRow.path)).tuples().all())
    artifacts = AuditArtifacts(workdir, audit_id)
    ingest_arrays = artifacts.load_arrays("ingest")
    embedded = artifacts.load_arrays("embed")
    predicted = artifacts.load_arrays("predict")
    assert ingest_arrays and embedded and predicted, "the audit left no artifacts"
    ok = embedded["ok"]
    paths = [path_of[int(i)] for i in ingest_arrays["image_ids"][ok]]
    odd = np.array([p in planted for p in paths])
    k = DEFAULT_PARAMETERS["k"]
    layers = {f"CNN `{name}`": predicted[f"layer_{name}"] for name in predicted["layer_order"]}
    layers["label-free patch features"] = np.sqrt(patch_features(embedded["pixels"][ok]))
    appearance = appearance_descriptor(embedded["pixels"][ok])
    layers["colour thumbnails, cosine (the check's previous space)"] = appearance[:, :COLOURS]
    rows = [(name, *layer_rule(values, k, odd)) for name, values in layers.items()]
    rows.append(
        (
            "thumbnails of colour and edges, Euclidean (what the check uses here)",
            *layer_rule(appearance, APPEARANCE_K, odd, metric="euclidean"),
        )
    )
    doubt = 1.0 - predicted["probabilities"].max(axis=1)
    top = np.argsort(-doubt)[: int(odd.sum())]
    return flagged, rows, (int(odd[top].sum()), float(roc_auc_score(odd, doubt)), len(paths))


def scenario_lines(title: str, planted: set[str], flagged: set[str], rows: list, doubt: tuple):
    n_planted = len(planted)
    return [
        f"#### {title}",
        "",
        f"{doubt[2] - n_planted} images and {n_planted} planted. The check flagged "
        f"{len(flagged)}: {len(flagged & planted)} of the planted and "
        f"{len(flagged - planted)} others.",
        "",
        f"| features | planted flagged | others flagged | planted among the top {n_planted} "
        "| AUROC |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {hit} of {n_planted} | {extra} | {top} | {auroc:.3f} |"
            for name, hit, extra, top, auroc in rows
        ),
        f"| (not a kNN rule) 1 - the largest out-of-sample probability | | | {doubt[0]} | "
        f"{doubt[1]:.3f} |",
        "",
    ]


def cluster_lines(per_class: int, seed: int) -> list[str]:
    """Off-topic groups of growing size: crops of one photograph are each other's nearest
    neighbours, so a kNN-distance rule loses them once a group outgrows k. The thumbnail rule
    alone (it does not depend on the CNN), at the shared k and at the appearance graph's."""
    lines = [
        "#### Off-topic groups: the demo's digits with n crops of one photograph",
        "",
        "The thumbnail rule alone (no audit: it does not depend on the CNN). Planted flagged, "
        "and digits flagged, per neighbourhood size.",
        "",
        "| photograph | crops | k = 10 | k = 25 (the check's) |",
        "|---|---:|---:|---:|",
    ]
    for photograph in range(len(load_sample_images().images)):
        for count in (8, 16, 24, 40):
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp) / "digits"
                build_demo_dataset(root, per_class=per_class, seed=seed)
                planted = set(
                    plant_offtopic(root, count, side=32, seed=seed, photographs=(photograph,))
                )
                paths, pixels = readable_pixels(root)
            odd = np.array([path in planted for path in paths])
            appearance = appearance_descriptor(pixels)
            cells = []
            for k in (10, APPEARANCE_K):
                hit, extra, _, _ = layer_rule(appearance, k, odd, metric="euclidean")
                cells.append(f"{hit} of {count}, {extra} digits")
            lines.append(f"| {photograph + 1} | {count} | {' | '.join(cells)} |")
    return [*lines, ""]


def readable_pixels(root: Path) -> tuple[list[str], np.ndarray]:
    """The dataset's images that decode (the demo plants a corrupt one), as 32x32 RGB."""
    paths, pixels = [], []
    for path in sorted(root.rglob("*.png")):
        try:
            with Image.open(path) as image:
                pixels.append(np.asarray(image.convert("RGB").resize((32, 32))))
        except OSError:
            continue
        paths.append(str(path.relative_to(root)))
    return paths, np.stack(pixels)


def whole_cifar_lines() -> list[str]:
    """How many of all 50,000 CIFAR-10 photographs, nothing planted, each thumbnail rule flags:
    every one is a false alarm a curator would wade through."""
    pixels = cifar.load_images()
    started = time.perf_counter()
    appearance = appearance_descriptor(pixels)
    euclidean = knn_graph(appearance, APPEARANCE_K, metric="euclidean")
    seconds = time.perf_counter() - started
    cosine = knn_graph(search_vectors(appearance[:, :COLOURS]), DEFAULT_PARAMETERS["k"])
    flagged = {
        name: int((robust_z(graph.distances().mean(axis=1)) > THRESHOLD).sum())
        for name, graph in (("euclidean", euclidean), ("cosine", cosine))
    }
    return [
        f"#### All {len(pixels):,} CIFAR-10 images, nothing planted",
        "",
        f"Thumbnails of colour and edges, Euclidean, k = {APPEARANCE_K}: "
        f"{flagged['euclidean']} flagged "
        f"(descriptor and kNN graph {seconds:.0f} s); colour thumbnails, cosine, "
        f"k = {DEFAULT_PARAMETERS['k']}: "
        f"{flagged['cosine']}.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offtopic", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100, help="as `auditor demo`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cifar", type=int, default=5_000, help="CIFAR-10 images (0: skip)")
    args = parser.parse_args()
    k = DEFAULT_PARAMETERS["k"]
    lines = [
        f"### Off-topic uploads and the `outlier` check (`python -m bench.outliers "
        f"--offtopic {args.offtopic} --per-class {args.per_class} --cifar {args.cifar}`)",
        "",
        f"Default audits with a CNN trained on the data; robust z above {THRESHOLD:g}. Each row "
        f"applies the check's rule to one feature set: k = {k} (the shared graph's), and "
        f"k = {APPEARANCE_K} on the thumbnails (the appearance graph's).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        build_demo_dataset(root, per_class=args.per_class, seed=args.seed)
        planted = set(plant_offtopic(root, args.offtopic, side=32, seed=args.seed))
        flagged, rows, doubt = audited_scenario(root, planted, Path(tmp))
    lines += scenario_lines(
        "The demo's digits with crops of scikit-learn's two sample photographs",
        planted,
        flagged,
        rows,
        doubt,
    )
    lines += cluster_lines(args.per_class, args.seed)
    if args.cifar and cifar.available():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "cifar"
            write_cifar_folder(root, args.cifar)
            planted = set(plant_oddities(root, side=32, seed=args.seed))
            flagged, rows, doubt = audited_scenario(root, planted, Path(tmp))
        lines += scenario_lines(
            f"The first {args.cifar:,} CIFAR-10 images with 4 digits, 4 text-like and 4 noise "
            "images",
            planted,
            flagged,
            rows,
            doubt,
        )
        lines += whole_cifar_lines()
    write_results("outliers.md", lines)


if __name__ == "__main__":
    main()
