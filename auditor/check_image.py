"""The check a labeling tool runs before accepting a label: how plausible is this label for this
image, what would the model suggest, which stored images is it nearest, and is it a duplicate?

Answers come from the dataset's latest completed audit: its out-of-sample probabilities for an
image it audited, and a FAISS index over its stored search-layer vectors for neighbours. An
uploaded image needs a vector from the same model; `embedder_for_audit` provides one when the
audit used a pretrained backbone. A CNN trained during the audit is not saved, so then the check
says `model_available: false`, and answers from the pixels the audit kept: how unlike the audited
images the upload looks (`appearance`, from the thumbnails of colour and edges that the audit's
outlier check compared), and which audited images it copies, by the audit's copy search
(`CopyReference`: crops, mirror images, recompression, beside SHA-256 and perceptual hashes). A
stored image's copies are the ones the audit linked (its copy graph under the duplicate
threshold), so the check and the audit's near_duplicate findings agree.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import imagehash
import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.checks.duplicates import NearDuplicateCheck
from auditor.checks.outlier import OutlierCheck, robust_scale
from auditor.config import Settings
from auditor.copies import CopyReference
from auditor.db.models import Audit, Image, ImageStatus
from auditor.embed.backbones import SEARCH_LAYER, Backbone, build_backbone
from auditor.embed.pixels import appearance_descriptor
from auditor.index import KnnGraph, VectorIndex, euclidean_neighbours
from auditor.ingest.decode import UnreadableImage, decode_rgb
from auditor.pipeline.artifacts import AuditArtifacts
from auditor.pipeline.stages import APPEARANCE_K, DEFAULT_PARAMETERS
from auditor.services import Invalid, NotFound
from auditor.services.audits import latest_completed_audit
from auditor.services.images import original

PHASH_NEAR = 4
NEIGHBOURS = 5
KNN_TEMPERATURE = 0.05

Embedder = Callable[[PILImage.Image], np.ndarray]


@dataclass
class AppearanceReference:
    """The audited images' look (thumbnails of colour and edges) and each one's mean distance to
    its nearest, so the check can say whether an image looks unlike the dataset, as the `outlier`
    check judges stored images when the audit trained its CNN here."""

    descriptors: np.ndarray
    mean_distances: np.ndarray
    median: float
    scale: float
    side: int

    def mean_distance_of(self, picture: PILImage.Image) -> float:
        small = picture.convert("RGB").resize((self.side, self.side), PILImage.BILINEAR)
        descriptor = appearance_descriptor(np.asarray(small, dtype=np.uint8)[None])
        return float(
            euclidean_neighbours(descriptor, self.descriptors, APPEARANCE_K).distances().mean()
        )

    def judge(self, mean_distance: float, threshold: float) -> dict[str, Any]:
        z = (mean_distance - self.median) / self.scale
        return {
            "robust_z": round(float(z), 2),
            "unusual": bool(z > threshold),
            "distance_ratio": round(mean_distance / self.median, 3) if self.median > 0 else None,
        }


def stored_pixels(artifacts: AuditArtifacts, ok: np.ndarray) -> np.ndarray | None:
    """The audit's decoded images, rows as in `AuditModel`; None when the audit embedded with a
    pretrained backbone (it keeps none)."""
    embedded = artifacts.load_arrays("embed")
    if not embedded or "pixels" not in embedded:
        return None
    return embedded["pixels"][ok]


def appearance_reference(
    artifacts: AuditArtifacts, pixels: np.ndarray | None
) -> AppearanceReference | None:
    """From the audit's decoded pixels and appearance graph."""
    graph = artifacts.load_arrays("index")
    if pixels is None or not graph or "appearance_indices" not in graph:
        return None
    indices = graph["appearance_indices"]
    distances = KnnGraph(indices, graph["appearance_similarities"], "euclidean").distances()
    mean_distances = np.nanmean(np.where(indices >= 0, distances, np.nan), axis=1)
    median, scale = robust_scale(mean_distances)
    return AppearanceReference(
        appearance_descriptor(pixels), mean_distances, median, scale, int(pixels.shape[1])
    )


def copy_graph(artifacts: AuditArtifacts) -> KnnGraph | None:
    """The graph of candidate copies the audit's duplicate checks read, rows as in `AuditModel`."""
    graph = artifacts.load_arrays("index")
    if not graph or "copy_indices" not in graph:
        return None
    return KnnGraph(graph["copy_indices"], graph["copy_similarities"])


@dataclass
class AuditModel:
    """What one audit left on disk that the check needs, loaded once and kept."""

    audit_id: int
    image_ids: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    probabilities: np.ndarray
    index: VectorIndex
    row_of: dict[int, int]
    appearance: AppearanceReference | None = None
    copies: KnnGraph | None = None
    copy_reference: CopyReference | None = None
    search_mean: np.ndarray | None = None


LOADED_AUDITS = 4
"""Audits whose models the check keeps in memory, most recently used first: one of 50,000 32x32
images holds about 0.3 GB (pixels, thumbnails, index), so a server answering for many datasets
keeps only the busiest."""
_models: OrderedDict[tuple[str, float], AuditModel] = OrderedDict()
_models_lock = threading.Lock()


def load_audit_model(settings: Settings, audit_id: int) -> AuditModel | None:
    """The audit's frozen rows, probabilities and index, or None when its outputs are gone."""
    artifacts = AuditArtifacts(settings.data_dir, audit_id)
    predict_path = artifacts.path("predict.npz")
    try:
        stamp = (str(predict_path), predict_path.stat().st_mtime)
    except FileNotFoundError:
        return None
    with _models_lock:
        if stamp in _models:
            _models.move_to_end(stamp)
            return _models[stamp]
    frozen, predicted = artifacts.load_arrays("ingest"), artifacts.load_arrays("predict")
    if frozen is None or predicted is None or f"layer_{SEARCH_LAYER}" not in predicted:
        return None
    ok = predicted["ok"]
    image_ids = frozen["image_ids"][ok]
    pixels, copies = stored_pixels(artifacts, ok), copy_graph(artifacts)
    model = AuditModel(
        audit_id=audit_id,
        image_ids=image_ids,
        labels=frozen["labels"][ok],
        class_names=[str(name) for name in frozen["class_names"]],
        probabilities=predicted["probabilities"],
        index=VectorIndex.build(predicted[f"layer_{SEARCH_LAYER}"]),
        search_mean=predicted[f"layer_{SEARCH_LAYER}"].mean(axis=0),
        row_of={int(image_id): row for row, image_id in enumerate(image_ids)},
        appearance=appearance_reference(artifacts, pixels),
        copies=copies,
        copy_reference=CopyReference.of(pixels)
        if pixels is not None and copies is not None
        else None,
    )
    with _models_lock:
        _models[stamp] = model
        while len(_models) > LOADED_AUDITS:
            _models.popitem(last=False)
    return model


@lru_cache(maxsize=2)
def _backbone(architecture: str, weights: str, side: int) -> Backbone:
    return build_backbone(architecture, weights, typical_side=side)


def embedder_for_audit(settings: Settings, audit: Audit) -> Embedder | None:
    """A function from image to the audit's search vector, or None when the audit's model cannot
    be rebuilt (a CNN trained during the audit, or weights no longer on this machine)."""
    model_info = AuditArtifacts(settings.data_dir, audit.id).load_json("model")
    parameters = {**DEFAULT_PARAMETERS, **(audit.parameters or {})}
    if not model_info or parameters["backbone"] == "trained":
        return None
    # `auto` embedded with ResNet-18 when it wrote model.json (see stages.pretrained_backbone).
    architecture = "resnet18" if parameters["backbone"] == "auto" else parameters["backbone"]
    try:
        backbone = _backbone(architecture, str(parameters["weights"]), int(parameters["side"]))
    except Exception:  # weights missing or unusable here: answer without the model
        return None
    if backbone.identity.key != model_info.get("identity"):
        return None

    def embed(picture: PILImage.Image) -> np.ndarray:
        batch = backbone.preprocess(picture).unsqueeze(0)
        return backbone.embed(batch)[SEARCH_LAYER][0].cpu().numpy().astype(np.float32)

    return embed


def hash_duplicates(
    session: Session, dataset_id: int, sha256: str, phash: str | None, exclude: int | None
) -> list[dict[str, Any]]:
    """Stored images with the same bytes, or a perceptual hash within PHASH_NEAR bits."""
    found: dict[int, dict[str, Any]] = {}
    rows = session.execute(
        select(Image.id, Image.path).where(
            Image.dataset_id == dataset_id, Image.sha256 == sha256, Image.status == ImageStatus.OK
        )
    )
    for image_id, path in rows:
        if image_id != exclude:
            found[image_id] = {"image_id": image_id, "path": path, "reason": "sha256"}
    if phash:
        probe = imagehash.hex_to_hash(phash)
        rows = session.execute(
            select(Image.id, Image.path, Image.phash).where(
                Image.dataset_id == dataset_id,
                Image.phash.is_not(None),
                Image.status == ImageStatus.OK,
            )
        )
        for image_id, path, other in rows:
            if image_id == exclude or image_id in found:
                continue
            if probe - imagehash.hex_to_hash(other) <= PHASH_NEAR:
                found[image_id] = {"image_id": image_id, "path": path, "reason": "phash"}
    return list(found.values())


def neighbour_rows(
    session: Session, model: AuditModel, vector: np.ndarray, exclude: int | None
) -> list[dict[str, Any]]:
    hits = model.index.search(vector, NEIGHBOURS + 1)
    rows = [
        (int(i), float(s))
        for i, s in zip(hits.indices[0], hits.similarities[0], strict=True)
        if i >= 0 and int(model.image_ids[i]) != exclude
    ][:NEIGHBOURS]
    paths = dict(
        session.execute(
            select(Image.id, Image.path).where(
                Image.id.in_([int(model.image_ids[i]) for i, _ in rows])
            )
        ).all()
    )
    return [
        {
            "image_id": int(model.image_ids[i]),
            "path": paths.get(int(model.image_ids[i]), ""),
            "label": model.class_names[int(model.labels[i])],
            "similarity": round(similarity, 6),
        }
        for i, similarity in rows
    ]


def knn_distribution(model: AuditModel, neighbours: list[dict[str, Any]]) -> np.ndarray:
    """Class probabilities from similarity-weighted neighbour votes (for uploads, which have no
    out-of-sample model probabilities)."""
    votes = np.full(len(model.class_names), 1e-6)
    position = {name: i for i, name in enumerate(model.class_names)}
    for item in neighbours:
        votes[position[item["label"]]] += np.exp((item["similarity"] - 1.0) / KNN_TEMPERATURE)
    return votes / votes.sum()


def check_image(
    session: Session,
    settings: Settings,
    dataset_id: int,
    label: str,
    *,
    image_id: int | None = None,
    data: bytes | None = None,
) -> dict[str, Any]:
    if (image_id is None) == (data is None):
        raise Invalid("send either an image file or an image_id")
    audit = latest_completed_audit(session, dataset_id)
    model = load_audit_model(settings, audit.id) if audit is not None else None
    picture, stored = None, None
    if image_id is not None:
        stored = session.get(Image, image_id)
        if stored is None or stored.dataset_id != dataset_id:
            raise NotFound(f"image {image_id} is not in dataset {dataset_id}")
        sha256, phash = stored.sha256, stored.phash
    else:
        try:
            picture = decode_rgb(data, settings.max_image_pixels)
        except UnreadableImage as exc:
            raise Invalid(f"the upload is not a usable image: {exc}") from exc
        sha256, phash = hashlib.sha256(data).hexdigest(), str(imagehash.phash(picture))
    duplicates = hash_duplicates(session, dataset_id, sha256, phash, image_id) if sha256 else []

    probabilities, neighbours, method, vector = None, [], None, None
    if model is not None and image_id is not None and image_id in model.row_of:
        row = model.row_of[image_id]
        probabilities, method = model.probabilities[row], "model"
        neighbours = neighbour_rows(session, model, model.index.index.reconstruct(row), image_id)
    elif model is not None:
        embed = embedder_for_audit(settings, audit)
        if embed is not None and picture is None and stored is not None:
            picture = load_stored_picture(session, settings, stored)
        if embed is not None and picture is not None:
            vector = embed(picture)
            neighbours = neighbour_rows(session, model, vector, image_id)
            probabilities, method = knn_distribution(model, neighbours), "knn"
    if model is not None and image_id is not None and image_id in model.row_of:
        similar = audited_copies(session, audit, model, image_id)
    elif model is not None and model.copy_reference is not None:
        if picture is None and stored is not None:
            picture = load_stored_picture(session, settings, stored)
        similar = new_image_copies(session, audit, model, picture) if picture is not None else []
    elif vector is not None:
        similar = embedded_copies(model, vector, neighbours, duplicate_threshold(audit))
    else:
        similar = []
    for item in similar:
        if all(d["image_id"] != item["image_id"] for d in duplicates):
            duplicates.append(
                {"image_id": item["image_id"], "path": item["path"], "reason": "similarity"}
            )
    answer: dict[str, Any] = {
        "appearance": appearance_answer(session, settings, audit, model, image_id, stored, picture),
        "audit_id": audit.id if audit is not None else None,
        "model_available": probabilities is not None,
        "method": method,
        "label": label,
        "label_known": model is not None and label in model.class_names,
        "label_quality": None,
        "suggested_label": None,
        "neighbours": neighbours,
        "duplicate": bool(duplicates),
        "duplicates": duplicates,
        "sha256": sha256,
    }
    if probabilities is not None:
        names = model.class_names
        answer["suggested_label"] = names[int(np.argmax(probabilities))]
        answer["label_quality"] = (
            round(float(probabilities[names.index(label)]), 6) if label in names else 0.0
        )
    return answer


def duplicate_threshold(audit: Audit) -> float:
    """The similarity from which the audit's near_duplicate check linked two images."""
    checks = (audit.parameters or {}).get("checks") or {}
    return float(
        (checks.get("near_duplicate") or {}).get(
            "threshold", NearDuplicateCheck.defaults["threshold"]
        )
    )


def audited_copies(
    session: Session, audit: Audit, model: AuditModel, image_id: int
) -> list[dict[str, Any]]:
    """The images the audit linked to a stored one as copies, under its duplicate threshold: the
    same evidence its near_duplicate findings rest on. (The search layer of a CNN trained on the
    data puts most images of a class within cosine 0.95 of one another, so it is no evidence of
    a copy.)"""
    if model.copies is None:
        return []
    threshold = duplicate_threshold(audit)
    row = model.row_of[image_id]
    rows = [
        int(other)
        for other, similarity in zip(
            model.copies.indices[row], model.copies.similarities[row], strict=True
        )
        if other >= 0 and similarity >= threshold
    ]
    return copies_by_row(session, model, rows)


def new_image_copies(
    session: Session, audit: Audit, model: AuditModel, picture: PILImage.Image
) -> list[dict[str, Any]]:
    """The audited images that an image the audit did not see copies (crops, mirror images,
    recompression), by the audit's own copy evidence and threshold."""
    side = int(model.copy_reference.pixels.shape[1])
    pixels = np.asarray(picture.convert("RGB").resize((side, side), PILImage.BILINEAR))
    rows, similarities = model.copy_reference.copies_of(pixels)
    return copies_by_row(session, model, rows[similarities >= duplicate_threshold(audit)])


def embedded_copies(
    model: AuditModel, vector: np.ndarray, neighbours: list[dict[str, Any]], threshold: float
) -> list[dict[str, Any]]:
    """The nearest images that an embedded upload copies, judged as the audit judged its own
    images with a pretrained backbone: cosine similarity of the vectors centred on the audited
    images' mean (`stages.search_vectors`), under the duplicate threshold. Uncentred, a
    backbone's non-negative pooled features put most images of a class above 0.95."""
    rows = [model.row_of[item["image_id"]] for item in neighbours]
    if not rows:
        return []
    stored = np.stack([model.index.index.reconstruct(row) for row in rows]) - model.search_mean
    upload = vector - model.search_mean
    similarities = (
        stored @ upload / np.maximum(np.linalg.norm(stored, axis=1) * np.linalg.norm(upload), 1e-12)
    )
    return [item for item, s in zip(neighbours, similarities, strict=True) if s >= threshold]


def copies_by_row(session: Session, model: AuditModel, rows: Iterable[int]) -> list[dict[str, Any]]:
    ids = [int(model.image_ids[row]) for row in rows]
    paths = dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all())
    return [{"image_id": i, "path": paths.get(i, "")} for i in ids]


def appearance_answer(
    session: Session,
    settings: Settings,
    audit: Audit | None,
    model: AuditModel | None,
    image_id: int | None,
    stored: Image | None,
    picture: PILImage.Image | None,
) -> dict[str, Any] | None:
    """How unusual the image looks next to the audited ones, under the audit's outlier threshold;
    None when the audit kept no appearance reference or the image no longer reads."""
    if audit is None or model is None or model.appearance is None:
        return None
    checks = (audit.parameters or {}).get("checks") or {}
    threshold = float(
        (checks.get("outlier") or {}).get("z_threshold", OutlierCheck.defaults["z_threshold"])
    )
    if image_id is not None and image_id in model.row_of:
        mean_distance = float(model.appearance.mean_distances[model.row_of[image_id]])
    else:
        if picture is None and stored is not None:
            picture = load_stored_picture(session, settings, stored)
        if picture is None:
            return None
        mean_distance = model.appearance.mean_distance_of(picture)
    return model.appearance.judge(mean_distance, threshold)


def load_stored_picture(
    session: Session, settings: Settings, image: Image
) -> PILImage.Image | None:
    try:
        return decode_rgb(original(session, image.id).data, settings.max_image_pixels)
    except Exception:  # a stored image that no longer reads: answer from hashes alone
        return None
