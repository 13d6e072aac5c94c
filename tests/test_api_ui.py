"""The endpoints the review page adds: a dataset's audits, and the images behind a
confusion-matrix cell (grouped by given label, counts matching the stored matrix)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from auditor.auth import create_api_key
from auditor.db.models import Audit, AuditStatus
from tests.test_api import API, assert_error, seed
from tests.ui_server import add_structure


@pytest.fixture
def seeded(session_factory, tmp_path):
    seeded = seed(session_factory, tmp_path)
    add_structure(seeded)
    return seeded


@pytest.fixture
def client(seeded) -> TestClient:
    return TestClient(create_app(seeded.settings, seeded.factory))


def test_dataset_audits_newest_first(client, seeded):
    items = client.get(f"{API}/datasets/{seeded.dataset_id}/audits").json()["items"]
    assert [a["status"] for a in items] == [AuditStatus.RUNNING, AuditStatus.COMPLETED]
    assert items[0]["id"] > items[1]["id"] == seeded.audit_id
    assert items[0]["progress"] == 0.4 and items[0]["stage"] == "embed"
    assert_error(client.get(f"{API}/datasets/424242/audits"), 404)


def test_confusion_cell_matches_the_matrix(client, seeded):
    base = f"{API}/audits/{seeded.audit_id}"
    confusion = client.get(f"{base}/confusion").json()
    order, matrix = confusion["order"], confusion["matrix"]
    for i, given in enumerate(order):
        for j, predicted in enumerate(order):
            cell = client.get(
                f"{base}/confusion/cell", params={"given": given, "predicted": predicted}
            )
            [group] = cell.json()["groups"]
            assert group["label"] == given and group["count"] == matrix[i][j]
            assert len(group["images"]) == matrix[i][j]
            assert all(image["predicted"] == predicted for image in group["images"])
    # A collapsed node: several classes on each side, one group per given label, in order.
    block = confusion["blocks"][0]
    cell = client.get(
        f"{base}/confusion/cell", params={"given": block, "predicted": block, "limit": 1}
    ).json()
    assert [g["label"] for g in cell["groups"]] == block
    rows = [order.index(c) for c in block]
    assert sum(g["count"] for g in cell["groups"]) == sum(matrix[i][j] for i in rows for j in rows)
    assert all(len(g["images"]) <= 1 for g in cell["groups"])
    confidences = [
        i["confidence"]
        for i in client.get(
            f"{base}/confusion/cell", params={"given": block[0], "predicted": block}
        ).json()["groups"][0]["images"]
    ]
    assert confidences == sorted(confidences, reverse=True)


def test_confusion_cell_errors_and_vendor_scope(client, seeded):
    base = f"{API}/audits/{seeded.audit_id}/confusion/cell"
    assert_error(client.get(base, params={"given": "zero", "predicted": "nope"}), 400)
    assert_error(client.get(base, params={"given": "zero"}), 422)
    with seeded.factory() as session, session.begin():
        other = Audit(dataset_id=seeded.dataset_id, status=AuditStatus.QUEUED)
        session.add(other)
        session.flush()
        other_id = other.id
        _, token = create_api_key(session, "read", dataset_id=seeded.dataset_id, vendor="acme")
    missing = client.get(
        f"{API}/audits/{other_id}/confusion/cell", params={"given": "zero", "predicted": "zero"}
    )
    assert_error(missing, 404)
    order = client.get(f"{API}/audits/{seeded.audit_id}/confusion").json()["order"]
    every_cell = {"given": order, "predicted": order, "limit": 500}

    def ids(body):
        return {i["image_id"] for group in body["groups"] for i in group["images"]}

    everyone = ids(client.get(base, params=every_cell).json())
    vendor = TestClient(
        create_app(seeded.settings.model_copy(update={"auth": True}), seeded.factory),
        headers={"Authorization": f"Bearer {token}"},
    )
    acme_ids = ids(vendor.get(base, params=every_cell).json())
    assert acme_ids and acme_ids < everyone
    assert all(vendor.get(f"{API}/images/{image_id}").status_code == 200 for image_id in acme_ids)
