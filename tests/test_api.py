"""The REST API against real SQLite and PostgreSQL: every route, auth, isolation, traversal,
stale reviews, pagination under concurrent changes, exports and webhooks."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import threading
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import bind_host, create_app
from auditor import check_image
from auditor.auth import create_api_key
from auditor.checks.base import FindingDraft
from auditor.config import Settings
from auditor.db.findings import save_findings
from auditor.db.models import (
    Audit,
    AuditAnalysis,
    AuditStatus,
    Image,
    ImageStatus,
    Label,
    WebhookDelivery,
    utcnow,
)
from auditor.demo import build_demo_dataset
from auditor.ingest.ingest import ingest, load_image_table
from auditor.pipeline.artifacts import AuditArtifacts
from auditor.pipeline.stages import hierarchy_analyses
from auditor.vendors.analysis import vendor_analysis
from auditor.webhooks import collect_audit_events, deliver_due, verify

API = "/api/v1"
VENDORS = ("acme", "globex")


@dataclass
class Seeded:
    settings: Settings
    dataset_id: int
    audit_id: int
    root: Path
    image_ids: dict[str, int]
    factory: object


def write_manifest(tmp_path: Path) -> Path:
    """The demo digits as a manifest with two vendors, plus a row escaping the root."""
    root = tmp_path / "data" / "sources" / "digits"
    build_demo_dataset(root, per_class=3)
    (tmp_path / "data" / "sources" / "secret.png").write_bytes(
        (root / "zero" / next(p.name for p in (root / "zero").glob("*.png"))).read_bytes()
    )
    rows = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "vendor", "batch"])
        for n, path in enumerate(rows):
            writer.writerow([path, path.split("/")[0], VENDORS[n % 2], f"b{n % 2}"])
        writer.writerow(["../secret.png", "zero", "acme", "b0"])
    return manifest


def seed(factory, tmp_path: Path) -> Seeded:
    """Ingest the demo digits and store a completed audit as the pipeline would: findings,
    analyses, summary, and the ingest/predict artifacts the check endpoint reads."""
    settings = Settings(data_dir=tmp_path / "data", workers=1, database_url="sqlite://")
    manifest = write_manifest(tmp_path)
    result = ingest(factory, "digits", manifest, settings)
    rng = np.random.default_rng(0)
    with factory() as session, session.begin():
        table = load_image_table(session, result.dataset_id)
        usable = [
            i
            for i, (s, lab) in enumerate(zip(table.status, table.labels, strict=True))
            if s == ImageStatus.OK and lab
        ]
        class_names = sorted({table.labels[i] for i in usable})
        labels = np.array([class_names.index(table.labels[i]) for i in usable])
        image_ids = table.ids[usable]
        probabilities = rng.dirichlet(np.ones(len(class_names)), size=len(usable))
        probabilities[np.arange(len(usable)), labels] += 2.0
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        features = rng.normal(size=(len(usable), 16)).astype(np.float32)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        features[5] = features[4]  # alike to the model, not linked as copies
        audit = Audit(
            dataset_id=result.dataset_id,
            status=AuditStatus.COMPLETED,
            stage="done",
            progress=1.0,
            finished_at=utcnow(),
            parameters={"backbone": "trained"},
        )
        session.add(audit)
        session.flush()
        for name, payload in hierarchy_analyses(
            probabilities, labels, class_names, {"conv": features, "pool": features}, None
        ).items():
            session.add(AuditAnalysis(audit_id=audit.id, name=name, payload=payload))
        drafts = [
            FindingDraft(
                kind="mislabel",
                subject=str(int(image_ids[row])),
                image_ids=[int(image_ids[row])],
                score=float(round(rng.random(), 3)),
                given_label=class_names[labels[row]],
                suggested_label=class_names[(labels[row] + 1) % len(class_names)],
                evidence={"given_probability": 0.1},
            )
            for row in range(0, len(usable), 2)
        ]
        drafts.append(
            FindingDraft(
                kind="near_duplicate",
                subject="pair",
                image_ids=[int(image_ids[0]), int(image_ids[1])],
                score=0.97,
            )
        )
        counts = save_findings(
            session, result.dataset_id, audit.id, drafts, ["mislabel", "near_duplicate"]
        )
        session.add(
            AuditAnalysis(
                audit_id=audit.id,
                name="vendors",
                payload=vendor_analysis(
                    session,
                    result.dataset_id,
                    audit.id,
                    image_ids,
                    class_names,
                    probabilities,
                ),
            )
        )
        audit.summary = {
            "findings": dict(counts),
            "classes": [
                {"class": c, "images": int((labels == i).sum())} for i, c in enumerate(class_names)
            ],
            "label_health": 0.9,
            "health_score": 0.85,
        }
        artifacts = AuditArtifacts(settings.data_dir, audit.id)
        artifacts.save_arrays(
            "ingest", image_ids=image_ids, labels=labels, class_names=np.array(class_names)
        )
        artifacts.save_arrays(
            "predict",
            ok=np.ones(len(usable), dtype=bool),
            probabilities=probabilities,
            layer_order=np.array(["pool"]),
            layer_pool=features,
        )
        # The copy graph of the near_duplicate finding above: rows 0 and 1 linked, 2 and 3 below
        # the threshold.
        copy_indices = np.full((len(usable), 1), -1)
        copy_similarities = np.full((len(usable), 1), -np.inf, dtype=np.float32)
        for a, b, similarity in ((0, 1, 0.97), (2, 3, 0.9)):
            copy_indices[[a, b], 0] = b, a
            copy_similarities[[a, b], 0] = similarity
        artifacts.save_arrays(
            "index", copy_indices=copy_indices, copy_similarities=copy_similarities
        )
        paths = dict(zip(table.paths, (int(i) for i in table.ids), strict=True))
    return Seeded(settings, result.dataset_id, audit.id, manifest.parent, paths, factory)


@pytest.fixture
def seeded(session_factory, tmp_path) -> Seeded:
    return seed(session_factory, tmp_path)


@pytest.fixture
def client(seeded) -> TestClient:
    return TestClient(create_app(seeded.settings, seeded.factory))


def auth_client(seeded: Seeded, **key_options) -> TestClient:
    settings = seeded.settings.model_copy(update={"auth": True})
    client = TestClient(create_app(settings, seeded.factory))
    if key_options:
        with seeded.factory() as session, session.begin():
            _, token = create_api_key(session, **key_options)
        client.headers["Authorization"] = f"Bearer {token}"
    return client


def all_findings(client: TestClient, audit_id: int, **params) -> list[dict]:
    items, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"{API}/audits/{audit_id}/findings", params=query).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    return body


def test_datasets_routes(client, seeded, tmp_path):
    listed = client.get(f"{API}/datasets").json()["items"]
    assert [d["id"] for d in listed] == [seeded.dataset_id]
    one = client.get(f"{API}/datasets/{seeded.dataset_id}").json()
    assert one["name"] == "digits" and one["images"] == len(seeded.image_ids)
    assert_error(client.get(f"{API}/datasets/999999"), 404)

    folder = tmp_path / "data" / "sources" / "folder"
    build_demo_dataset(folder, per_class=1)
    created = client.post(f"{API}/datasets", json={"name": "f", "source_uri": str(folder)})
    assert created.status_code == 201, created.text
    assert created.json()["ingest"]["images"] == created.json()["dataset"]["images"]
    assert_error(client.post(f"{API}/datasets", json={"name": "f", "source_uri": str(folder)}), 409)
    assert_error(client.post(f"{API}/datasets", json={"name": "g", "source_uri": "/etc"}), 403)
    assert_error(client.post(f"{API}/datasets", json={"name": "g", "source_uri": "rel"}), 400)
    assert_error(client.post(f"{API}/datasets", json={"name": ""}), 422)

    labels = tmp_path / "data" / "sources" / "vendor3.csv"
    first = next(iter(seeded.image_ids))
    labels.write_text(f"path,label,vendor,batch\n{first},one,initech,week1\n")
    batch = client.post(
        f"{API}/datasets/{seeded.dataset_id}/batches", json={"labels_uri": str(labels)}
    )
    assert batch.status_code == 201, batch.text
    assert ("initech", "week1") in {(b["vendor"], b["name"]) for b in batch.json()["items"]}
    assert len(client.get(f"{API}/datasets/{seeded.dataset_id}/batches").json()) == 3

    # A delivery: vendor and batch from the request, an audit queued after ingest.
    labels.write_text(f"path,label\n{first},two\n")
    delivered = client.post(
        f"{API}/datasets/{seeded.dataset_id}/batches",
        json={"labels_uri": str(labels), "vendor": "hooli", "batch": "w9", "audit": True},
    )
    assert delivered.status_code == 201, delivered.text
    assert delivered.json()["ingest"]["decoded"] == 0
    assert ("hooli", "w9") in {(b["vendor"], b["name"]) for b in delivered.json()["items"]}
    queued = client.get(f"{API}/audits/{delivered.json()['audit_id']}").json()
    assert queued["status"] == "queued"
    assert_error(
        client.post(
            f"{API}/datasets/{seeded.dataset_id}/batches",
            json={"labels_uri": str(labels), "audit": True, "parameters": {"bogus": 1}},
        ),
        400,
    )
    assert_error(
        client.post(f"{API}/datasets/{seeded.dataset_id}/batches", json={"vendor": "x"}), 400
    )


def test_audit_routes(client, seeded):
    audit = client.get(f"{API}/audits/{seeded.audit_id}").json()
    assert audit["status"] == "completed" and audit["findings"]["mislabel"] > 0
    assert {"id", "dataset_id", "status", "stage", "progress", "findings", "error"} <= set(audit)
    queued = client.post(f"{API}/datasets/{seeded.dataset_id}/audits", json={"parameters": {}})
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    cancelled = client.post(f"{API}/audits/{queued.json()['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    again = client.post(f"{API}/audits/{seeded.audit_id}/cancel").json()
    assert again["status"] == "completed"
    bad = client.post(f"{API}/datasets/{seeded.dataset_id}/audits", json={"parameters": {"x": 1}})
    assert_error(bad, 400)
    assert_error(client.post(f"{API}/datasets/424242/audits", json={}), 404)
    assert_error(client.get(f"{API}/audits/0"), 422)
    assert_error(client.get(f"{API}/audits/{2**40}"), 422)


def test_analyses_and_vendors(client, seeded):
    base = f"{API}/audits/{seeded.audit_id}"
    hierarchy = client.get(f"{base}/hierarchy").json()
    assert set(hierarchy["order"]) == {
        c["class"] for c in client.get(f"{base}/classes").json()["items"]
    }
    assert "name" in hierarchy["tree"] and isinstance(hierarchy["blocks"], list)
    confusion = client.get(f"{base}/confusion").json()
    assert len(confusion["matrix"]) == len(confusion["order"])
    layers = client.get(f"{base}/layers").json()
    assert layers["layers"] == ["conv", "pool"]
    assert len(layers["separability"][0]) == len(layers["levels"])
    vendors = client.get(f"{base}/vendors").json()["items"]
    assert [v["vendor"] for v in vendors] == list(VENDORS)
    for v in vendors:
        assert 0 <= v["ci_low"] <= v["estimated_error_rate"] <= v["ci_high"] <= 1
        assert v["confirmed_error_rate"] is None
    finding = next(f for f in all_findings(client, seeded.audit_id, kind="mislabel"))
    client.post(f"{API}/findings/{finding['id']}/review", json={"action": "confirm", "version": 1})
    vendors = client.get(f"{base}/vendors").json()["items"]
    assert sum(v["confirmed_error_rate"] or 0 for v in vendors) > 0
    report = client.get(f"{base}/vendors").json()
    assert report["method"] == "vendor_noise_em" and report["trend"].keys() == set(VENDORS)
    assert report["confidence_strata"] in (1, 3)
    assert {b["vendor"] for b in report["batches"]} == set(VENDORS)
    table = client.get(f"{base}/vendors", params={"format": "csv"})
    assert table.headers["content-type"].startswith("text/csv")
    assert table.text.splitlines()[0].startswith("level,vendor,batch,class,images")
    chart = client.get(f"{base}/vendors", params={"format": "png"})
    assert chart.headers["content-type"] == "image/png" and chart.content[:4] == b"\x89PNG"
    assert_error(client.get(f"{base}/vendors", params={"format": "gif"}), 422)

    diff = client.get(f"{base}/diff").json()
    assert diff["previous_audit_id"] is None and diff["counts"]["resolved"] == {}
    assert sum(diff["counts"]["new"].values()) == sum(
        client.get(f"{base}").json()["findings"].values()
    )
    assert_error(client.get(f"{API}/audits/999999/diff"), 404)


def test_findings_filters_and_counts(client, seeded):
    everything = all_findings(client, seeded.audit_id, limit=7)
    scores = [(f["score"], f["id"]) for f in everything]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    first = client.get(f"{API}/audits/{seeded.audit_id}/findings").json()
    assert first["counts"] == {"mislabel": len(everything) - 1, "near_duplicate": 1}
    assert {
        "id",
        "kind",
        "image_ids",
        "images",
        "given_label",
        "suggested_label",
        "score",
        "is_issue",
        "severity",
        "status",
        "evidence",
    } <= set(first["items"][0])
    ascending = all_findings(client, seeded.audit_id, sort="score", limit=5)
    assert [f["id"] for f in ascending] == [f["id"] for f in reversed(everything)]
    high = all_findings(client, seeded.audit_id, min_score=0.5)
    assert high and all(f["score"] >= 0.5 for f in high)
    dupes = all_findings(client, seeded.audit_id, kind="near_duplicate")
    assert len(dupes) == 1 and len(dupes[0]["images"]) == 2
    label = everything[0]["given_label"] or "zero"
    assert all(
        label in (f["given_label"], f["suggested_label"])
        for f in all_findings(client, seeded.audit_id, label=label)
    )
    acme = all_findings(client, seeded.audit_id, vendor="acme")
    globex = all_findings(client, seeded.audit_id, vendor="globex")
    assert acme and globex and len(acme) + len(globex) >= len(everything)
    batch_ids = {
        b["name"]: b["id"] for b in client.get(f"{API}/datasets/{seeded.dataset_id}/batches").json()
    }
    assert [f["id"] for f in all_findings(client, seeded.audit_id, batch=batch_ids["b0"])] == [
        f["id"] for f in acme
    ]
    assert all_findings(client, seeded.audit_id, status="confirmed") == []
    assert_error(
        client.get(f"{API}/audits/{seeded.audit_id}/findings", params={"cursor": "!!"}), 400
    )
    assert_error(client.get(f"{API}/audits/{seeded.audit_id}/findings", params={"limit": 0}), 422)
    assert_error(
        client.get(f"{API}/audits/{seeded.audit_id}/findings", params={"min_score": 2}), 422
    )
    assert_error(
        client.get(f"{API}/audits/{seeded.audit_id}/findings", params={"label": "a\x00"}), 422
    )
    detail = client.get(f"{API}/findings/{everything[0]['id']}").json()
    assert detail["reviews"] == [] and detail["version"] == 1
    assert_error(client.get(f"{API}/findings/99999999"), 404)


def test_pagination_survives_inserts_and_reviews(client, seeded):
    """Walk pages while rows are reviewed and new findings are inserted on both sides of the
    cursor: every row that existed at the start is seen exactly once."""
    before = {f["id"] for f in all_findings(client, seeded.audit_id)}
    seen: list[int] = []
    cursor, turn = None, 0
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"{API}/audits/{seeded.audit_id}/findings", params=params).json()
        seen += [f["id"] for f in page["items"]]
        for f in page["items"][:1]:
            client.post(
                f"{API}/findings/{f['id']}/review",
                json={"action": "dismiss", "version": f["version"]},
            )
        with seeded.factory() as session, session.begin():
            image_id = next(iter(seeded.image_ids.values()))
            for score in (0.999, 0.0005):
                turn += 1
                save_findings(
                    session,
                    seeded.dataset_id,
                    seeded.audit_id,
                    [
                        FindingDraft(
                            kind="outlier", subject=f"new{turn}", image_ids=[image_id], score=score
                        )
                    ],
                    [],
                )
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert before <= set(seen)


def test_reviews_and_optimistic_concurrency(client, seeded):
    finding = all_findings(client, seeded.audit_id, kind="mislabel")[0]
    url = f"{API}/findings/{finding['id']}/review"
    assert_error(client.post(url, json={"action": "confirm"}), 400)
    done = client.post(url, json={"action": "confirm", "version": 1, "reviewer": "ann"})
    assert done.status_code == 200 and done.json()["finding"]["status"] == "confirmed"
    assert done.json()["finding"]["version"] == 2
    stale = assert_error(client.post(url, json={"action": "dismiss", "version": 1}), 409)
    assert "version 2" in stale["detail"]
    via_header = client.post(url, json={"action": "dismiss"}, headers={"If-Match": '"2"'})
    assert via_header.json()["finding"]["status"] == "dismissed"
    assert_error(client.post(url, json={"action": "dismiss"}, headers={"If-Match": "x"}), 400)
    relabel = client.post(url, json={"action": "relabel", "version": 3, "new_label": "seven"})
    assert relabel.json()["finding"]["status"] == "relabeled"
    again = client.post(url, json={"action": "relabel", "version": 4, "new_label": "eight"})
    assert again.status_code == 200
    comment = client.post(url, json={"action": "comment", "comment": "looks like an 8"})
    assert comment.json()["finding"]["version"] == 5
    assert_error(client.post(url, json={"action": "relabel", "version": 5}), 400)
    assert_error(client.post(url, json={"action": "explode", "version": 5}), 422)
    history = client.get(f"{API}/findings/{finding['id']}").json()["reviews"]
    assert [r["action"] for r in history] == ["confirm", "dismiss", "relabel", "relabel", "comment"]
    with seeded.factory() as session:
        rows = session.execute(
            select(Label.source, Label.is_current)
            .where(Label.image_id == finding["image_ids"][0], Label.source == "review")
            .order_by(Label.id)
        ).all()
        assert rows == [("review", False), ("review", True)]
        assert (
            load_image_table(session, seeded.dataset_id).labels[
                list(load_image_table(session, seeded.dataset_id).ids).index(
                    finding["image_ids"][0]
                )
            ]
            == "eight"
        )


def test_images_thumbnails_and_traversal(client, seeded):
    path, image_id = next(
        (p, i)
        for p, i in seeded.image_ids.items()
        if p.endswith(".png") and "broken" not in p and ".." not in p
    )
    response = client.get(f"{API}/images/{image_id}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (seeded.root / path).read_bytes()
    etag = response.headers["etag"]
    assert etag == f'"{hashlib.sha256(response.content).hexdigest()}"'
    assert "max-age" in response.headers["cache-control"]
    assert (
        client.get(f"{API}/images/{image_id}", headers={"If-None-Match": etag}).status_code == 304
    )
    thumb = client.get(f"{API}/images/{image_id}/thumbnail")
    assert thumb.status_code == 200 and thumb.content.startswith(b"\x89PNG")
    assert list((seeded.settings.data_dir / "thumbnails").iterdir())
    assert client.get(f"{API}/images/{image_id}/thumbnail").content == thumb.content
    escaped = seeded.image_ids["../secret.png"]
    assert_error(client.get(f"{API}/images/{escaped}"), 403)
    assert_error(client.get(f"{API}/images/{escaped}/thumbnail"), 403)
    broken = next(i for p, i in seeded.image_ids.items() if "broken" in p)
    assert_error(client.get(f"{API}/images/{broken}"), 404)
    # A row whose path was tampered with after ingest is still refused by the Source.
    with seeded.factory() as session, session.begin():
        session.get(Image, image_id).path = "zero/../../secret.png"
    assert_error(client.get(f"{API}/images/{image_id}"), 403)
    assert client.get(f"{API}/images/%2e%2e%2fetc").status_code in (404, 422)


def test_check_endpoint(client, seeded):
    path, image_id = next((p, i) for p, i in seeded.image_ids.items() if p.startswith("three/"))
    url = f"{API}/datasets/{seeded.dataset_id}/check"
    by_id = client.post(url, data={"label": "three", "image_id": str(image_id)}).json()
    assert by_id["model_available"] and 0 <= by_id["label_quality"] <= 1
    # Stored images' copies are the audit's: its copy graph under the duplicate threshold, not
    # the model's nearest neighbours (the twin of row 4 is its neighbour at similarity 1).
    frozen = AuditArtifacts(seeded.settings.data_dir, seeded.audit_id).load_arrays("ingest")
    row_ids = [int(i) for i in frozen["image_ids"]]

    def similar(row: int) -> list[int]:
        answer = client.post(url, data={"label": "three", "image_id": str(row_ids[row])}).json()
        return [d["image_id"] for d in answer["duplicates"] if d["reason"] == "similarity"]

    assert similar(0) == [row_ids[1]] and similar(1) == [row_ids[0]]
    assert similar(2) == [] and similar(5) == []
    twin = client.post(url, data={"label": "three", "image_id": str(row_ids[4])}).json()
    assert row_ids[5] in [n["image_id"] for n in twin["neighbours"]]
    assert by_id["suggested_label"] and len(by_id["neighbours"]) == 5
    assert all(n["image_id"] != image_id for n in by_id["neighbours"])
    data = (seeded.root / path).read_bytes()
    upload = client.post(
        url, data={"label": "three"}, files={"file": ("x.png", data, "image/png")}
    ).json()
    assert upload["model_available"] is False and upload["duplicate"] is True
    assert {"image_id": image_id, "path": path, "reason": "sha256"} in upload["duplicates"]
    assert_error(
        client.post(
            url, data={"label": "three"}, files={"file": ("x.png", b"<html>", "image/png")}
        ),
        400,
    )
    assert_error(client.post(url, data={"label": "three"}), 400)
    assert_error(client.post(url, data={"image_id": str(image_id)}), 422)
    assert_error(
        client.post(f"{API}/datasets/999/check", data={"label": "x", "image_id": "1"}), 404
    )


def test_exports(client, seeded):
    base = f"{API}/audits/{seeded.audit_id}/export"
    findings = all_findings(client, seeded.audit_id)
    rows = list(csv.DictReader(io.StringIO(client.get(base).text)))
    assert {
        "finding_id",
        "kind",
        "image",
        "given_label",
        "suggested_label",
        "score",
        "is_issue",
        "severity",
        "status",
    } <= set(rows[0])
    assert len(rows) == sum(len(f["image_ids"]) for f in findings)
    pair = [r for r in rows if r["kind"] == "near_duplicate"]
    assert len(pair) == 2 and pair[0]["finding_id"] == pair[1]["finding_id"]
    assert all(r["image"] in seeded.image_ids for r in rows)
    as_json = client.get(base, params={"format": "json"}).json()
    assert len(as_json["findings"]) == len(findings)
    tasks = client.get(base, params={"format": "labelstudio"}).json()
    predicted = [t for t in tasks if t["predictions"]]
    assert predicted and all(0 <= t["predictions"][0]["score"] <= 1 for t in predicted)
    mislabel = next(f for f in findings if f["kind"] == "mislabel")
    client.post(f"{API}/findings/{mislabel['id']}/review", json={"action": "confirm", "version": 1})
    manifest = {
        r["path"]: r
        for r in csv.DictReader(io.StringIO(client.get(base, params={"format": "manifest"}).text))
    }
    assert manifest[mislabel["images"][0]]["action"] == "relabel"
    assert manifest[mislabel["images"][0]]["label"] == mislabel["suggested_label"]
    assert manifest["../secret.png"]["action"] == "remove"
    assert {r["action"] for r in manifest.values()} >= {"keep", "review", "relabel", "remove"}
    fiftyone = client.get(base, params={"format": "fiftyone"}).text
    assert fiftyone.startswith("filepath,ground_truth")
    assert_error(client.get(base, params={"format": "xml"}), 422)


def test_auth_scopes_and_vendor_isolation(seeded, tmp_path):
    anonymous = auth_client(seeded)
    assert_error(anonymous.get(f"{API}/datasets"), 401)
    anonymous.headers["Authorization"] = "Bearer aud_nope_nope"
    assert_error(anonymous.get(f"{API}/datasets"), 401)
    anonymous.headers["Authorization"] = "Bearer garbage"
    assert_error(anonymous.get(f"{API}/datasets"), 401)

    reader = auth_client(seeded, scope="read")
    assert reader.get(f"{API}/datasets").status_code == 200
    finding = all_findings(reader, seeded.audit_id)[0]
    assert_error(
        reader.post(
            f"{API}/findings/{finding['id']}/review", json={"action": "confirm", "version": 1}
        ),
        403,
    )
    assert_error(reader.post(f"{API}/datasets/{seeded.dataset_id}/audits", json={}), 403)
    reviewer = auth_client(seeded, scope="review")
    assert (
        reviewer.post(
            f"{API}/findings/{finding['id']}/review", json={"action": "confirm", "version": 1}
        ).status_code
        == 200
    )
    assert_error(
        reviewer.post(
            f"{API}/webhooks", json={"url": "http://127.0.0.1:1/", "events": ["audit.failed"]}
        ),
        403,
    )

    with seeded.factory() as session, session.begin():
        other = ingest(
            seeded.factory, "other", write_manifest(tmp_path / "o"), seeded.settings
        ).dataset_id
    scoped = auth_client(seeded, scope="read", dataset_id=other)
    assert [d["id"] for d in scoped.get(f"{API}/datasets").json()["items"]] == [other]
    assert_error(scoped.get(f"{API}/datasets/{seeded.dataset_id}"), 404)
    assert_error(scoped.get(f"{API}/audits/{seeded.audit_id}/findings"), 404)
    assert_error(scoped.get(f"{API}/findings/{finding['id']}"), 404)
    assert_error(scoped.get(f"{API}/images/{next(iter(seeded.image_ids.values()))}"), 404)

    vendor = auth_client(seeded, scope="review", dataset_id=seeded.dataset_id, vendor="acme")
    visible = all_findings(vendor, seeded.audit_id)
    assert visible and {f["id"] for f in visible} == {
        f["id"] for f in all_findings(reader, seeded.audit_id, vendor="acme")
    }
    hidden = next(
        f
        for f in all_findings(reader, seeded.audit_id, vendor="globex")
        if f["id"] not in {v["id"] for v in visible}
    )
    assert_error(vendor.get(f"{API}/findings/{hidden['id']}"), 404)
    assert_error(vendor.get(f"{API}/images/{hidden['image_ids'][0]}"), 404)
    assert_error(
        vendor.get(f"{API}/audits/{seeded.audit_id}/findings", params={"vendor": "globex"}), 400
    )
    assert [
        v["vendor"] for v in vendor.get(f"{API}/audits/{seeded.audit_id}/vendors").json()["items"]
    ] == ["acme"]
    assert {
        b["vendor"] for b in vendor.get(f"{API}/datasets/{seeded.dataset_id}/batches").json()
    } == {"acme"}
    assert_error(vendor.get(f"{API}/audits/{seeded.audit_id}/export"), 400)


def test_bind_host_refuses_public_without_auth():
    assert bind_host(Settings(auth=False), "127.0.0.1") == "127.0.0.1"
    assert bind_host(Settings(auth=False), "localhost") == "localhost"
    with pytest.raises(ValueError):
        bind_host(Settings(auth=False), "0.0.0.0")
    assert bind_host(Settings(auth=True), "0.0.0.0") == "0.0.0.0"


def test_health_metrics_openapi_and_error_envelope(client):
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    client.get(f"{API}/datasets")
    metrics = client.get("/metrics").text
    assert (
        'auditor_http_requests_total{method="GET",route="/api/v1/datasets",status="200"}' in metrics
    )
    spec = client.get("/openapi.json").json()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"get_findings", "review", "check", "create_audit", "export"} <= ids
    review = spec["paths"]["/api/v1/findings/{finding_id}/review"]["post"]["responses"]
    assert {"401", "403", "404", "409", "422"} <= set(review)
    assert_error(client.get("/nowhere"), 404)
    assert_error(
        client.post(f"{API}/datasets", content=b"{", headers={"content-type": "application/json"}),
        422,
    )


class Recorder(BaseHTTPRequestHandler):
    """A webhook receiver failing its first `fail_first` requests."""

    received: list[tuple[dict, bytes]] = []
    fail_first = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        failing = len(type(self).received) <= type(self).fail_first
        self.send_response(500 if failing else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Recorder.received, Recorder.fail_first = [], 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Recorder
    server.shutdown()
    server.server_close()


def test_webhooks_signed_retried_and_logged(client, seeded, receiver):
    url, recorder = receiver
    created = client.post(
        f"{API}/webhooks", json={"url": url, "events": ["finding.reviewed", "audit.completed"]}
    )
    assert created.status_code == 201
    hook, secret = created.json(), created.json()["secret"]
    assert_error(
        client.post(f"{API}/webhooks", json={"url": "ftp://x", "events": ["audit.failed"]}), 400
    )
    assert_error(client.post(f"{API}/webhooks", json={"url": url, "events": ["nope"]}), 422)
    finding = all_findings(client, seeded.audit_id)[0]
    client.post(f"{API}/findings/{finding['id']}/review", json={"action": "dismiss", "version": 1})
    with seeded.factory() as session, session.begin():
        audit = session.get(Audit, seeded.audit_id)
        audit.finished_at = utcnow() + timedelta(seconds=1)
        assert collect_audit_events(session) == 1
        assert collect_audit_events(session) == 0
    now = utcnow() + timedelta(seconds=5)
    first = deliver_due(seeded.factory, now=now, backoff_seconds=10)
    assert len(first) == 2 and all(d.status == "pending" and d.attempts == 1 for d in first)
    assert deliver_due(seeded.factory, now=now + timedelta(seconds=5)) == []
    deliver_due(seeded.factory, now=now + timedelta(seconds=11), backoff_seconds=10)
    with seeded.factory() as session:
        statuses = session.scalars(select(WebhookDelivery.status)).all()
    assert sorted(statuses) == ["delivered", "delivered"]
    events = set()
    for headers, body in recorder.received:
        assert verify(secret, body, headers["X-Auditor-Signature"])
        assert not verify("wrong", body, headers["X-Auditor-Signature"])
        events.add(json.loads(body)["event"])
    assert events == {"finding.reviewed", "audit.completed"}
    log = client.get(f"{API}/webhooks/{hook['id']}/deliveries").json()["items"]
    assert {(d["status"], d["attempts"]) for d in log} == {("delivered", 2)}
    assert client.get(f"{API}/webhooks").json()["items"][0]["url"] == url
    assert client.delete(f"{API}/webhooks/{hook['id']}").status_code == 204
    assert_error(client.get(f"{API}/webhooks/{hook['id']}/deliveries"), 404)


def test_webhook_gives_up_after_max_attempts(seeded, receiver):
    url, recorder = receiver
    recorder.fail_first = 100
    client = TestClient(create_app(seeded.settings, seeded.factory))
    client.post(f"{API}/webhooks", json={"url": url, "events": ["finding.reviewed"]})
    finding = all_findings(client, seeded.audit_id)[0]
    client.post(
        f"{API}/findings/{finding['id']}/review", json={"action": "comment", "comment": "x"}
    )
    now = utcnow()
    for step in range(3):
        deliver_due(
            seeded.factory, now=now + timedelta(hours=step), max_attempts=3, backoff_seconds=1
        )
    with seeded.factory() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 500)
    assert len(recorder.received) == 3


def test_check_keeps_a_bounded_number_of_audit_models(seeded):
    """Each audit's model holds its pixels and thumbnails; a server answering for many audits
    keeps the most recently used few, and reuses a kept one."""
    source = AuditArtifacts(seeded.settings.data_dir, seeded.audit_id).root
    audit_ids = range(9001, 9001 + check_image.LOADED_AUDITS + 2)
    for audit_id in audit_ids:
        shutil.copytree(source, AuditArtifacts(seeded.settings.data_dir, audit_id).root)
    first = check_image.load_audit_model(seeded.settings, audit_ids[0])
    assert check_image.load_audit_model(seeded.settings, audit_ids[0]) is first
    for audit_id in audit_ids[1:]:
        assert check_image.load_audit_model(seeded.settings, audit_id).audit_id == audit_id
    assert len(check_image._models) <= check_image.LOADED_AUDITS
    assert check_image.load_audit_model(seeded.settings, audit_ids[0]) is not first
