"""The audit stages, each reading the checkpoints of the stages before it and writing its own.

ingest     freeze the usable images (decoded fine, labeled) and their current labels
embed      pretrained backbone: cached per-layer vectors; otherwise: small pixel arrays
predict    out-of-sample probabilities (+ per-layer features when a CNN is trained here)
index      the shared kNN graph over the search vectors
hierarchy  the learned class tree, blocks, layer separability, comparison with a given tree
checks     every registered check; findings written in one transaction
vendors    error rates per labeling vendor, batch and vendor-and-class
summarise  per-class and overall figures stored with the audit
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from auditor.checks import CheckInputs, run_checks
from auditor.config import Settings
from auditor.copies import copy_neighbours
from auditor.db.findings import save_findings
from auditor.db.models import AuditAnalysis, Dataset, ImageStatus
from auditor.db.queries import mislabel_flags_by_label
from auditor.embed.cache import FeatureStore, embed_with_cache
from auditor.embed.distributed import BackboneSpec, embed_with_ray
from auditor.embed.extract import resolve_device
from auditor.embed.pixels import appearance_descriptor, load_pixels_cached, pixel_store
from auditor.embed.weights import hub_checkpoint_path
from auditor.hierarchy import (
    HierarchyError,
    compare_hierarchies,
    confusion_counts,
    confusion_payload,
    find_blocks,
    hierarchy_payload,
    layer_separability,
    learn_hierarchy,
    parse_hierarchy,
)
from auditor.index import KnnGraph, centred_unit_rows, knn_graph
from auditor.ingest.ingest import load_image_table
from auditor.ingest.sources import open_source
from auditor.pipeline.artifacts import AuditArtifacts
from auditor.pipeline.summary import summarise_audit
from auditor.predict.cnn import TrainConfig
from auditor.predict.heads import group_held_out_probabilities, kfold_head_probabilities
from auditor.predict.strategies import out_of_sample_probabilities
from auditor.vendors.analysis import vendor_analysis, vendor_membership

SEARCH_LAYER = "pool"
# Without pretrained weights: on a CPU, k-means patch heads averaged with a cross-fitted CNN, which
# also provides the layer features for search and the hierarchy analysis (bench/quality.py). On a
# GPU the network's width costs little wall time (the small network leaves it mostly idle), while
# epochs beyond the first fifteen mostly memorise wrong labels: K-fold networks of width 64 for 15
# epochs gave cleanlab F1 0.789 (`worse`) and 0.558 (`aggre`) on 50,000 CIFAR-10N images in under
# 2 minutes each on an H100 (20 epochs: 0.775 / 0.536; 30: 0.739; width 96: 0.776); at 10,000
# images width 64 gave 0.688 against 0.706 for the CPU default (bench/results/predict-cuda.md).
# So the GPU recipe takes over from a size between the two measured ones. (0.789 was seed 0's
# draw; seed 1 gave 0.760, so `cnn_kfold` now averages two cross-fittings, see strategies.py.)
TRAINED_STRATEGY = "patch_cnn"
GPU_STRATEGY = "cnn_kfold"
GPU_TRAIN_CONFIG = TrainConfig(width=64, epochs=15)
GPU_STRATEGY_MIN_IMAGES = 25_000
LAYER_LEVELS = 6
DEFAULT_PARAMETERS: dict[str, Any] = {
    "backbone": "auto",
    "weights": "IMAGENET1K_V1",
    "strategy": "auto",
    "side": 32,
    "folds": 4,
    "seed": 0,
    "k": 10,
    "epochs": None,
    "checks": {},
}


APPEARANCE_K = 25
"""Neighbours in the appearance graph the outlier check reads. A group of alike off-topic images
is each other's nearest neighbours and hides from a kNN-distance rule once it outgrows k: among
the demo's digits, 40 crops of one photograph were all flagged at k = 25 and 30-33 of them at
k = 10 (2 digits flagged at k = 10, none at 25; bench/outliers.py)."""


class AuditCancelled(Exception):
    """The audit was cancelled; the worker stops between batches and leaves no partial results."""


@dataclass
class AuditContext:
    factory: sessionmaker[Session]
    settings: Settings
    audit_id: int
    dataset_id: int
    source_uri: str
    parameters: dict[str, Any]
    artifacts: AuditArtifacts
    report: Callable[[float], None] = field(default=lambda fraction: None)

    def parameter(self, name: str) -> Any:
        return self.parameters.get(name, DEFAULT_PARAMETERS[name])


def pretrained_backbone(ctx: AuditContext) -> tuple[str, str] | None:
    """(architecture, weights) of the pretrained model to embed with, or None to train one here."""
    backbone, weights = ctx.parameter("backbone"), ctx.parameter("weights")
    if backbone == "trained":
        return None
    if backbone == "auto":
        return ("resnet18", weights) if hub_checkpoint_path("resnet18", weights).is_file() else None
    return backbone, weights


def ingest_stage(ctx: AuditContext) -> None:
    with ctx.factory() as session:
        table = load_image_table(session, ctx.dataset_id)
    usable = [
        i
        for i, (status, label) in enumerate(zip(table.status, table.labels, strict=True))
        if status == ImageStatus.OK and label is not None
    ]
    class_names = sorted({table.labels[i] for i in usable})
    index_of = {name: n for n, name in enumerate(class_names)}
    ctx.artifacts.save_arrays(
        "ingest",
        image_ids=table.ids[usable],
        labels=np.array([index_of[table.labels[i]] for i in usable], dtype=np.int64),
        class_names=np.array(class_names, dtype=str),
    )


def frozen_inputs(ctx: AuditContext) -> dict[str, np.ndarray]:
    arrays = ctx.artifacts.load_arrays("ingest")
    if arrays is None:
        raise RuntimeError("the ingest checkpoint is missing")
    return arrays


def image_items(ctx: AuditContext, image_ids: np.ndarray) -> tuple[list[str], list[str]]:
    """(sha256, path) of the frozen images, in checkpoint order."""
    with ctx.factory() as session:
        table = load_image_table(session, ctx.dataset_id)
    position = {int(image_id): i for i, image_id in enumerate(table.ids)}
    rows = [position[int(image_id)] for image_id in image_ids]
    return [table.sha256[r] for r in rows], [table.paths[r] for r in rows]


def embed_stage(ctx: AuditContext) -> None:
    frozen = frozen_inputs(ctx)
    shas, paths = image_items(ctx, frozen["image_ids"])
    source = open_source(ctx.source_uri)
    pretrained = pretrained_backbone(ctx)
    if pretrained is None:
        pixels, ok, decoded = load_pixels_cached(
            pixel_store(ctx.settings.data_dir, ctx.parameter("side")),
            source,
            list(zip(shas, paths, strict=True)),
            ctx.settings.worker_count(),
            ctx.settings.max_image_pixels,
            progress=lambda done, total: ctx.report(done / max(total, 1)),
        )
        ctx.artifacts.save_arrays("embed", pixels=pixels, ok=ok)
        ctx.artifacts.save_json("embed_counts", {"decoded": decoded, "reused": len(shas) - decoded})
        return
    spec = BackboneSpec(*pretrained, typical_side=ctx.parameter("side"))
    backbone = spec.build(resolve_device(ctx.settings.device))
    store = FeatureStore(ctx.settings.data_dir, backbone.identity)
    items = list(zip(shas, paths, strict=True))
    if ctx.settings.ray_address:
        embedded = embed_with_ray(
            items, source, spec, store, address=ctx.settings.ray_address, progress=False
        )
    else:
        embedded = embed_with_cache(items, source, backbone, store, progress=False)
    ctx.artifacts.save_json(
        "embed_counts", {"embedded": embedded.embedded, "reused": embedded.reused}
    )
    ok = np.ones(len(shas), dtype=bool)
    ok[[failure.index for failure in embedded.failures]] = False
    ctx.artifacts.save_arrays(
        "embed", ok=ok, **{f"layer_{name}": v for name, v in embedded.features.items()}
    )
    ctx.artifacts.save_json("model", {"identity": backbone.identity.key})


def trained_strategy(
    setting: str, device: torch.device, n_images: int
) -> tuple[str, TrainConfig | None]:
    """The strategy (and CNN settings, None for the defaults) for a dataset without pretrained
    weights: `auto` picks by device and size, anything else is taken as asked."""
    if setting != "auto":
        return setting, None
    if device.type == "cuda" and n_images >= GPU_STRATEGY_MIN_IMAGES:
        return GPU_STRATEGY, GPU_TRAIN_CONFIG
    return TRAINED_STRATEGY, None


def predict_stage(ctx: AuditContext) -> None:
    """Out-of-sample probabilities for the checks; where labeling vendors delivered labels, also
    probabilities from heads that never saw the row's vendors, for the vendor estimates."""
    frozen = frozen_inputs(ctx)
    embedded = ctx.artifacts.load_arrays("embed")
    labels, n_classes = frozen["labels"], len(frozen["class_names"])
    ok = embedded["ok"]
    with ctx.factory() as session:
        membership = vendor_membership(session, ctx.dataset_id, frozen["image_ids"][ok])
    layer_features: dict[str, np.ndarray]
    group_probabilities = group_covered = None
    if "pixels" in embedded:
        device = resolve_device(ctx.settings.device)
        strategy, train_config = trained_strategy(ctx.parameter("strategy"), device, int(ok.sum()))
        result = out_of_sample_probabilities(
            strategy,
            train_config=train_config,
            images=embedded["pixels"][ok],
            labels=labels[ok],
            n_classes=n_classes,
            folds=ctx.parameter("folds"),
            seed=ctx.parameter("seed"),
            epochs=ctx.parameter("epochs"),
            holdout_groups=membership,
            device=device,
            progress=ctx.report,
        )
        probabilities, layer_features = result.probabilities, result.layer_features
        group_probabilities, group_covered = result.group_probabilities, result.group_covered
    else:
        layer_features = {
            key.removeprefix("layer_"): value[ok]
            for key, value in embedded.items()
            if key.startswith("layer_")
        }
        probabilities = kfold_head_probabilities(
            layer_features[SEARCH_LAYER],
            labels[ok],
            n_classes,
            folds=ctx.parameter("folds"),
            seed=ctx.parameter("seed"),
        )
        if membership is not None:
            group_probabilities, group_covered = group_held_out_probabilities(
                layer_features[SEARCH_LAYER],
                labels[ok],
                n_classes,
                membership,
                seed=ctx.parameter("seed"),
            )
    vendor_arrays = (
        {}
        if group_probabilities is None
        else {"vendor_probabilities": group_probabilities, "vendor_covered": group_covered}
    )
    ctx.artifacts.save_arrays(
        "predict",
        ok=ok,
        probabilities=probabilities,
        layer_order=np.array(list(layer_features), dtype=str),
        **vendor_arrays,
        **{f"layer_{name}": v.astype(np.float32) for name, v in layer_features.items()},
    )


def predictions(ctx: AuditContext) -> dict[str, np.ndarray]:
    arrays = ctx.artifacts.load_arrays("predict")
    if arrays is None:
        raise RuntimeError("the predict checkpoint is missing")
    return arrays


def search_vectors(features: np.ndarray) -> np.ndarray:
    """Centred on their mean, then L2-normalised (`centred_unit_rows`)."""
    return centred_unit_rows(features, features.mean(axis=0, keepdims=True))


def index_stage(ctx: AuditContext) -> None:
    """Semantic neighbours (the model's search vectors) for mislabels and outliers, and copy
    neighbours for duplicates (the same vectors for a pretrained backbone). When the CNN was
    trained here, which groups a class too tightly for copies and maps off-topic images into its
    classes, copies come from a mirror-invariant thumbnail descriptor and outliers from Euclidean
    distances between thumbnails of colour and edges (bench/duplicates.py, bench/outliers.py)."""
    predicted = predictions(ctx)
    k = ctx.parameter("k")
    vectors = search_vectors(predicted[f"layer_{SEARCH_LAYER}"])
    graph = knn_graph(vectors, k, progress=lambda f: ctx.report(f / 2))
    embedded = ctx.artifacts.load_arrays("embed")
    copies, appearance = graph, None
    if "pixels" in embedded:
        pixels = embedded["pixels"][predicted["ok"]]
        copies = copy_neighbours(pixels, k, progress=lambda f: ctx.report(0.5 + f / 4))
        appearance = knn_graph(
            appearance_descriptor(pixels),
            APPEARANCE_K,
            metric="euclidean",
            progress=lambda f: ctx.report(0.75 + f / 4),
        )
    arrays = {
        "indices": graph.indices,
        "similarities": graph.similarities,
        "copy_indices": copies.indices,
        "copy_similarities": copies.similarities,
    }
    if appearance is not None:
        arrays |= {
            "appearance_indices": appearance.indices,
            "appearance_similarities": appearance.similarities,
        }
    ctx.artifacts.save_arrays("index", **arrays)


def hierarchy_stage(ctx: AuditContext) -> None:
    """The Blocks views of this audit, stored as analyses the API and report serve."""
    frozen, predicted = frozen_inputs(ctx), predictions(ctx)
    ok = predicted["ok"]
    labels, probabilities = frozen["labels"][ok], predicted["probabilities"]
    class_names = [str(name) for name in frozen["class_names"]]
    analyses = hierarchy_analyses(
        probabilities,
        labels,
        class_names,
        {str(name): predicted[f"layer_{name}"] for name in predicted["layer_order"]},
        dataset_hierarchy(ctx),
    )
    ctx.artifacts.save_json("hierarchy", analyses)
    with ctx.factory() as session, session.begin():
        for name, payload in analyses.items():
            session.merge(AuditAnalysis(audit_id=ctx.audit_id, name=name, payload=payload))


def dataset_hierarchy(ctx: AuditContext) -> dict | None:
    with ctx.factory() as session:
        return session.get(Dataset, ctx.dataset_id).hierarchy


def hierarchy_analyses(
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    layer_features: dict[str, np.ndarray],
    given_tree: dict | None,
) -> dict[str, Any]:
    if len(class_names) < 2:
        return {}
    learned = learn_hierarchy(probabilities, labels, class_names)
    counts = confusion_counts(probabilities, labels, len(class_names))
    blocks = find_blocks(learned.tree, counts, class_names)
    analyses: dict[str, Any] = {
        "hierarchy": hierarchy_payload(learned.tree, blocks),
        "confusion": confusion_payload(counts, class_names, learned.tree, blocks),
    }
    if layer_features:
        analyses["layers"] = layer_separability(
            layer_features, labels, class_names, learned.tree, max_levels=LAYER_LEVELS
        )
    if given_tree is not None:
        try:
            tree = parse_hierarchy(given_tree, class_names)
        except HierarchyError as exc:
            analyses["comparison"] = {"error": str(exc)}
        else:
            analyses["comparison"] = compare_hierarchies(learned, tree).to_dict()
    return analyses


def check_inputs(ctx: AuditContext, session: Session) -> CheckInputs:
    """Everything the checks read, aligned: model outputs cover the frozen images that loaded."""
    frozen, predicted = frozen_inputs(ctx), predictions(ctx)
    graph = ctx.artifacts.load_arrays("index")
    table = load_image_table(session, ctx.dataset_id)
    position = {int(image_id): i for i, image_id in enumerate(table.ids)}
    ok = predicted["ok"]
    rows = np.array([position[int(i)] for i in frozen["image_ids"][ok]], dtype=np.int64)
    return CheckInputs(
        dataset_id=ctx.dataset_id,
        images=table,
        class_names=[str(name) for name in frozen["class_names"]],
        rows=rows,
        labels=frozen["labels"][ok],
        features=predicted[f"layer_{SEARCH_LAYER}"],
        layer_features={str(name): predicted[f"layer_{name}"] for name in predicted["layer_order"]},
        probabilities=predicted["probabilities"],
        knn=KnnGraph(graph["indices"], graph["similarities"]),
        copy_knn=KnnGraph(graph["copy_indices"], graph["copy_similarities"]),
        appearance_knn=(
            KnnGraph(graph["appearance_indices"], graph["appearance_similarities"], "euclidean")
            if "appearance_indices" in graph
            else None
        ),
        hierarchy=ctx.artifacts.load_json("hierarchy") or None,
    )


def checks_stage(ctx: AuditContext) -> None:
    with ctx.factory() as session, session.begin():
        inputs = check_inputs(ctx, session)
        settings = ctx.parameter("checks")
        drafts, kinds = [], []
        for stage in ("ingest", "audit"):
            stage_drafts, stage_kinds = run_checks(inputs, stage, settings)
            drafts += stage_drafts
            kinds += stage_kinds
        counts = save_findings(session, ctx.dataset_id, ctx.audit_id, drafts, kinds)
    ctx.artifacts.save_json("checks", {"findings": dict(counts), "kinds": kinds})


def vendors_stage(ctx: AuditContext) -> None:
    """Error rates of the labeling vendors whose labels the audited images carry."""
    frozen, predicted = frozen_inputs(ctx), predictions(ctx)
    ok = predicted["ok"]
    with ctx.factory() as session, session.begin():
        payload = vendor_analysis(
            session,
            ctx.dataset_id,
            ctx.audit_id,
            frozen["image_ids"][ok],
            [str(name) for name in frozen["class_names"]],
            predicted["probabilities"],
            held_out=(
                (predicted["vendor_probabilities"], predicted["vendor_covered"])
                if "vendor_probabilities" in predicted
                else None
            ),
        )
        if payload:
            session.merge(AuditAnalysis(audit_id=ctx.audit_id, name="vendors", payload=payload))
    ctx.artifacts.save_json("vendors", payload)


def summarise_stage(ctx: AuditContext) -> None:
    with ctx.factory() as session:
        inputs = check_inputs(ctx, session)
        checked = ctx.artifacts.load_json("checks") or {}
        flagged = (
            mislabel_flags_by_label(session, ctx.audit_id)
            if "mislabel" in checked.get("kinds", [])
            else None
        )
    summary = summarise_audit(inputs, Counter(checked.get("findings", {})), flagged)
    summary["embedding"] = ctx.artifacts.load_json("embed_counts") or {}
    ctx.artifacts.save_json("summary", summary)


STAGES: list[tuple[str, Callable[[AuditContext], None]]] = [
    ("ingest", ingest_stage),
    ("embed", embed_stage),
    ("predict", predict_stage),
    ("index", index_stage),
    ("hierarchy", hierarchy_stage),
    ("checks", checks_stage),
    ("vendors", vendors_stage),
    ("summarise", summarise_stage),
]
