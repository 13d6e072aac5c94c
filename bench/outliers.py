"""Does the `outlier` check find off-topic uploads? The demo's digits with natural-photo crops planted.

    python -m bench.outliers [--offtopic 10] [--per-class 60]

Builds the demo dataset (sklearn digits, nothing downloaded), adds crops of scikit-learn's two
sample photographs as off-topic uploads filed under random digit classes, runs the default audit
(a CNN trained on the data, as on a machine without pretrained weights), and counts how many of
the planted images the `outlier` check flags and how many digits it flags besides. It then
repeats the check's rule (robust z of the mean distance to the k nearest neighbours, above 4) on
each tapped layer and on the label-free patch features, to show where the off-topic images stand
apart. Results go to bench/results/outliers.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images
from sklearn.metrics import roc_auc_score
from sqlalchemy import select

from auditor.checks.outlier import OutlierCheck, robust_z
from auditor.config import Settings
from auditor.db import migrate
from auditor.db.models import Finding, FindingImage
from auditor.db.models import Image as ImageRow
from auditor.db.session import make_engine, make_session_factory
from auditor.demo import CLASS_NAMES, build_demo_dataset
from auditor.index import knn_graph
from auditor.ingest.ingest import ingest
from auditor.pipeline.artifacts import AuditArtifacts
from auditor.pipeline.audit import create_audit, run_audit
from auditor.pipeline.stages import DEFAULT_PARAMETERS, search_vectors
from auditor.predict.patch_features import patch_features
from bench.report import write_results

THRESHOLD = OutlierCheck.defaults["z_threshold"]


def plant_offtopic(root: Path, count: int, side: int, seed: int) -> list[str]:
    """Random crops of the sample photographs, scaled to the digits' size."""
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    planted = []
    for index in range(count):
        photo = photos[index % len(photos)]
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


def layer_rule(features: np.ndarray, k: int, offtopic: np.ndarray) -> tuple[int, int, int, float]:
    """Under the check's rule: (off-topic flagged, others flagged, off-topic among the highest
    scores as many as were planted, AUROC of the score)."""
    graph = knn_graph(search_vectors(features.astype(np.float32)), k)
    z = robust_z((1.0 - graph.similarities).mean(axis=1))
    flagged = z > THRESHOLD
    top = np.argsort(-z)[: int(offtopic.sum())]
    return (
        int(flagged[offtopic].sum()),
        int(flagged[~offtopic].sum()),
        int(offtopic[top].sum()),
        float(roc_auc_score(offtopic, z)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offtopic", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100, help="as `auditor demo`")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        root = workdir / "digits"
        build_demo_dataset(root, per_class=args.per_class, seed=args.seed)
        planted = set(plant_offtopic(root, args.offtopic, side=32, seed=args.seed))
        settings = Settings(database_url=f"sqlite:///{workdir / 'audit.db'}", data_dir=workdir)
        migrate.upgrade(settings.database_url)
        factory = make_session_factory(make_engine(settings.database_url))
        ingested = ingest(factory, "digits", root, settings)
        audit_id = create_audit(factory, ingested.dataset_id, {"backbone": "trained"})
        audit = run_audit(factory, settings, audit_id)
        if audit.status != "completed":
            raise SystemExit(f"audit {audit_id} {audit.status}: {audit.error}")
        with factory() as session:
            flagged = set(
                session.scalars(
                    select(ImageRow.path)
                    .join(FindingImage, FindingImage.image_id == ImageRow.id)
                    .join(Finding, Finding.id == FindingImage.finding_id)
                    .where(Finding.audit_id == audit_id, Finding.kind == "outlier")
                )
            )
            path_of = dict(session.execute(select(ImageRow.id, ImageRow.path)).tuples().all())
        artifacts = AuditArtifacts(workdir, audit_id)
        ingest_arrays = artifacts.load_arrays("ingest")
        embedded = artifacts.load_arrays("embed")
        predicted = artifacts.load_arrays("predict")
        assert ingest_arrays and embedded and predicted, "the audit left no artifacts"
        ok = embedded["ok"]
        paths = [path_of[int(i)] for i in ingest_arrays["image_ids"][ok]]
        offtopic = np.array([p in planted for p in paths])
        k = DEFAULT_PARAMETERS["k"]
        layers = {f"CNN `{name}`": predicted[f"layer_{name}"] for name in predicted["layer_order"]}
        layers["label-free patch features"] = np.sqrt(patch_features(embedded["pixels"][ok]))
        rows = [(name, *layer_rule(values, k, offtopic)) for name, values in layers.items()]
        doubt = 1.0 - predicted["probabilities"].max(axis=1)
        top = np.argsort(-doubt)[: int(offtopic.sum())]
        doubt_row = (int(offtopic[top].sum()), float(roc_auc_score(offtopic, doubt)))
    caught = len(flagged & planted)
    lines = [
        f"### Off-topic uploads and the `outlier` check (`python -m bench.outliers "
        f"--offtopic {args.offtopic} --per-class {args.per_class}`)",
        "",
        f"Demo digits ({len(paths) - int(offtopic.sum())} images) with {int(offtopic.sum())} "
        "crops of scikit-learn's sample photographs filed under random digit classes; default "
        f"audit with a CNN trained on the data; k = {k}, robust z above {THRESHOLD:g}.",
        "",
        f"The check flagged {len(flagged)} images: {caught} of the {len(planted)} off-topic "
        f"crops and {len(flagged - planted)} digits.",
        "",
        "The check's rule on each feature set:",
        "",
        "| features | off-topic flagged | digits flagged | off-topic among the top "
        f"{int(offtopic.sum())} | AUROC |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {hit} of {int(offtopic.sum())} | {extra} | {top} | {auroc:.3f} |"
            for name, hit, extra, top, auroc in rows
        ),
        f"| (not a kNN rule) 1 - the largest out-of-sample probability | | | {doubt_row[0]} | "
        f"{doubt_row[1]:.3f} |",
    ]
    write_results("outliers.md", lines)


if __name__ == "__main__":
    main()
