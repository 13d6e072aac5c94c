"""The whole audit in-process on a small planted dataset: real decoding, a real CNN trained for
two epochs, a real FAISS graph, findings and analyses in SQLite and PostgreSQL."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images
from sqlalchemy import func, select

from api.app import create_app
from auditor.check_image import (
    check_image,
    embedded_copies,
    embedder_for_audit,
    load_audit_model,
)
from auditor.config import Settings
from auditor.db.models import Audit, AuditAnalysis, Finding
from auditor.db.models import Image as ImageRow
from auditor.db.queries import found_paths_by_kind
from auditor.demo import build_demo_dataset, digit_image
from auditor.ingest.ingest import ingest
from auditor.pipeline.artifacts import AuditArtifacts
from auditor.pipeline.audit import create_audit, run_audit
from auditor.pipeline.stages import APPEARANCE_K, STAGES, trained_strategy
from auditor.services.images import original


@pytest.fixture
def audited(session_factory, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", workers=1)
    root = tmp_path / "digits"
    planted = build_demo_dataset(root, per_class=16, mislabel_rate=0.1)
    ingested = ingest(session_factory, "digits", root, settings)
    audit_id = create_audit(
        session_factory, ingested.dataset_id, {"epochs": 2, "backbone": "trained"}
    )
    audit = run_audit(session_factory, settings, audit_id)
    return settings, planted, ingested, audit


def test_audit_completes_with_findings_summary_and_analyses(session_factory, audited):
    settings, planted, ingested, audit = audited
    assert audit.status == "completed" and audit.progress == 1.0
    assert list(audit.stage_timings) == [name for name, _ in STAGES]
    summary = audit.summary
    assert summary["audited_images"] == 10 * 16 + 5
    assert summary["unusable_images"] == 1
    assert {row["class"] for row in summary["classes"]} == {
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    }
    assert 0.0 < summary["health_score"] <= 1.0
    # Each class's estimated noise is the share of its labels the mislabel check flagged.
    flagged = sum(round(row["estimated_noise_rate"] * row["images"]) for row in summary["classes"])
    assert flagged == summary["findings"]["mislabel"] > 0
    with session_factory() as session:
        found = found_paths_by_kind(session, ingested.dataset_id, audit.id)
        analyses = {
            a.name: a.payload
            for a in session.scalars(
                select(AuditAnalysis).where(AuditAnalysis.audit_id == audit.id)
            )
        }
    assert {frozenset(g) for g in found["exact_duplicate"]} == {
        frozenset(g) for g in planted.exact_duplicates
    }
    assert found["unreadable"] == [planted.unreadable]
    assert sum(summary["findings"].values()) == sum(len(v) for v in found.values())
    hierarchy = analyses["hierarchy"]
    assert sorted(hierarchy["order"]) == sorted(row["class"] for row in summary["classes"])
    assert analyses["confusion"]["order"] == hierarchy["order"]
    layers = analyses["layers"]
    assert layers["layers"] == ["stem", "stage1", "stage2", "stage3", "pool"]
    # A CNN trained here: outliers are measured between thumbnails of colour and edges.
    graph = AuditArtifacts(settings.data_dir, audit.id).load_arrays("index")
    assert graph["appearance_indices"].shape == (summary["audited_images"], APPEARANCE_K)
    with session_factory() as session:
        spaces = session.scalars(
            select(Finding.evidence["measured_on"].as_string()).where(
                Finding.audit_id == audit.id, Finding.kind == "outlier"
            )
        ).all()
    assert set(spaces) <= {"thumbnails of colour and edges"}
    assert np.array(layers["separability"]).shape == (5, len(layers["levels"]))

    # A re-run resumes from the checkpoints: nothing is recomputed or written twice.
    with session_factory() as session:
        before = session.scalar(select(func.count(Finding.id)).where(Finding.audit_id == audit.id))
    again = run_audit(session_factory, settings, audit.id)
    assert again.stage_timings == audit.stage_timings
    with session_factory() as session:
        after = session.scalar(select(func.count(Finding.id)).where(Finding.audit_id == audit.id))
        assert session.get(Audit, audit.id).status == "completed"
    assert before == after


def test_backbone_path_embeds_once_and_reuses_the_feature_cache(session_factory, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", workers=1)
    root = tmp_path / "digits"
    build_demo_dataset(root, per_class=6)
    dataset_id = ingest(session_factory, "digits", root, settings).dataset_id
    parameters = {"backbone": "resnet18", "weights": "none"}
    first = run_audit(
        session_factory, settings, create_audit(session_factory, dataset_id, parameters)
    )
    assert first.status == "completed"
    stores = list((tmp_path / "data" / "features").iterdir())
    assert len(stores) == 1 and stores[0].name.startswith("resnet18-none-r32")
    shards = sorted(p.name for p in (stores[0] / "pool").iterdir())
    second = run_audit(
        session_factory, settings, create_audit(session_factory, dataset_id, parameters)
    )
    assert second.status == "completed"
    assert sorted(p.name for p in (stores[0] / "pool").iterdir()) == shards
    assert second.summary["findings"]["exact_duplicate"] == 5


def test_check_judges_an_embedded_upload_by_centred_similarity(session_factory, tmp_path):
    """With a backbone the check can rebuild, an upload's copies are judged as the audit judged
    its own images: vectors centred on the audited images' mean. Uncentred, the backbone's
    non-negative features put an unseen digit at 0.98 to stored ones, over any threshold."""
    settings = Settings(data_dir=tmp_path / "data", workers=1)
    build_demo_dataset(tmp_path / "digits", per_class=6)
    dataset_id = ingest(session_factory, "digits", tmp_path / "digits", settings).dataset_id
    parameters = {"backbone": "resnet18", "weights": "none"}
    run_audit(session_factory, settings, create_audit(session_factory, dataset_id, parameters))
    unseen = digit_image(load_digits().data[-1], 32)
    with session_factory() as session:
        stored_id = session.scalar(
            select(ImageRow.id).where(ImageRow.dataset_id == dataset_id).limit(1)
        )
        stored = Image.open(io.BytesIO(original(session, stored_id).data)).convert("RGB")
        buffer = io.BytesIO()
        unseen.save(buffer, format="PNG")
        answer = check_image(session, settings, dataset_id, "three", data=buffer.getvalue())
        audit = session.scalar(select(Audit).where(Audit.dataset_id == dataset_id))
        model = load_audit_model(settings, audit.id)
        embed = embedder_for_audit(settings, audit)
    assert answer["method"] == "knn" and answer["neighbours"][0]["similarity"] > 0.95
    assert answer["duplicates"] == []
    others = [item for item in answer["neighbours"] if item["image_id"] != stored_id]
    near = [{"image_id": stored_id, "path": ""}, *others]
    enlarged = embedded_copies(model, embed(stored.resize((64, 64))), near, 0.96)
    assert [item["image_id"] for item in enlarged] == [stored_id]
    assert embedded_copies(model, embed(unseen), near, 0.96) == []


def test_auto_strategy_trains_wide_networks_on_a_gpu_for_large_datasets():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    strategy, config = trained_strategy("auto", cuda, 50_000)
    assert strategy == "cnn_kfold" and config is not None and config.width == 64
    assert trained_strategy("auto", cuda, 10_000) == ("patch_cnn", None)
    assert trained_strategy("auto", cpu, 50_000) == ("patch_cnn", None)
    assert trained_strategy("cnn_crossfit", cuda, 50_000) == ("cnn_crossfit", None)


def test_check_says_whether_an_upload_looks_unlike_the_dataset(session_factory, audited):
    """The labeling tool's check, against an audit that trained its CNN here: a photograph
    uploaded into a digits dataset looks unusual, another digit does not."""
    settings, _, ingested, audit = audited

    def png(picture: Image.Image) -> bytes:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()

    photograph = Image.fromarray(load_sample_images().images[0][100:300, 150:350])
    unseen_digit = digit_image(load_digits().data[-1], 32)  # the demo uses the first ones
    with session_factory() as session:
        stored_id, stored_path = session.execute(
            select(ImageRow.id, ImageRow.path)
            .where(ImageRow.dataset_id == ingested.dataset_id, ImageRow.path.like("three/%"))
            .order_by(ImageRow.id)
            .limit(1)
        ).one()
        stored = Image.open(io.BytesIO(original(session, stored_id).data)).convert("RGB")
        mirrored_crop = stored.crop((4, 1, 31, 28)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        answers = {
            name: check_image(session, settings, ingested.dataset_id, "three", **upload)
            for name, upload in {
                "photograph": {"data": png(photograph)},
                "digit": {"data": png(unseen_digit)},
                "stored": {"image_id": stored_id},
                "mirrored crop": {"data": png(mirrored_crop.resize((48, 48)))},
            }.items()
        }
    # A mirrored crop of a stored image, uploaded larger, is found by the audit's copy search;
    # hashes alone miss it.
    copies = answers["mirrored crop"]["duplicates"]
    assert {"image_id": stored_id, "path": stored_path, "reason": "similarity"} in copies
    assert not answers["photograph"]["duplicates"]
    assert all(a["audit_id"] == audit.id for a in answers.values())
    assert answers["photograph"]["appearance"]["unusual"] is True
    assert answers["photograph"]["appearance"]["distance_ratio"] > 1.5
    assert answers["digit"]["appearance"]["unusual"] is False
    assert (
        answers["digit"]["appearance"]["robust_z"] < answers["photograph"]["appearance"]["robust_z"]
    )
    assert answers["stored"]["appearance"] is not None
    # The REST API passes it on to labeling tools.
    response = TestClient(create_app(settings, session_factory)).post(
        f"/api/v1/datasets/{ingested.dataset_id}/check",
        data={"label": "three"},
        files={"file": ("upload.png", png(photograph), "image/png")},
    )
    assert response.status_code == 200
    assert response.json()["appearance"] == answers["photograph"]["appearance"]
