"""A live server for the review page's browser tests: the seeded audit of tests/test_api.py,
given a class structure (confusions inside three blocks), evidence on its findings and a running
audit, served by uvicorn from a thread on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import uvicorn
from sqlalchemy import delete, select

from auditor.db.models import Audit, AuditAnalysis, AuditStatus, Finding, utcnow
from auditor.pipeline.artifacts import AuditArtifacts
from auditor.pipeline.stages import hierarchy_analyses
from auditor.vendors.analysis import vendor_analysis, vendor_membership
from tests.test_api import Seeded

# Digits that look alike; the model confuses classes inside a group, never across.
GROUPS = [["three", "five", "eight"], ["four", "nine"], ["one", "seven"]]


def structured_probabilities(labels: np.ndarray, names: list[str]) -> np.ndarray:
    """Out-of-sample probabilities whose argmax is the given label except for every second
    image of a group, which goes to its sibling: a block structure the hierarchy can learn."""
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(len(names)) * 5, size=len(labels)) * 0.2
    seen: dict[int, int] = {}
    for row, label in enumerate(labels):
        group = next((g for g in GROUPS if names[label] in g), [names[label]])
        siblings = [names.index(c) for c in group if names.index(c) != label]
        for sibling in siblings:
            probabilities[row, sibling] += 0.3
        seen[label] = seen.get(label, 0) + 1
        target = siblings[0] if siblings and seen[label] % 2 == 0 else label
        probabilities[row, target] += 1.2
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def add_structure(seeded: Seeded) -> None:
    """Replace the seeded audit's random predictions with structured ones, and give findings
    the evidence a real audit stores (neighbours, duplicate members, the member to keep)."""
    artifacts = AuditArtifacts(seeded.settings.data_dir, seeded.audit_id)
    frozen, predicted = artifacts.load_arrays("ingest"), artifacts.load_arrays("predict")
    names = [str(n) for n in frozen["class_names"]]
    labels, image_ids = frozen["labels"], [int(i) for i in frozen["image_ids"]]
    probabilities = structured_probabilities(labels, names)
    artifacts.save_arrays("predict", **{**predicted, "probabilities": probabilities})
    layers = {"conv": predicted["layer_pool"], "pool": predicted["layer_pool"]}
    analyses = hierarchy_analyses(probabilities, labels, names, layers, None)
    paths = {image_id: path for path, image_id in seeded.image_ids.items()}
    label_of = dict(zip(image_ids, (names[i] for i in labels), strict=True))
    with seeded.factory() as session, session.begin():
        session.execute(delete(AuditAnalysis).where(AuditAnalysis.audit_id == seeded.audit_id))
        for name, payload in analyses.items():
            session.add(AuditAnalysis(audit_id=seeded.audit_id, name=name, payload=payload))
        # The first vendor's labels judged by a stand-in for a head that never saw that vendor:
        # a head that learned from this few labels makes the page show its caution.
        membership = vendor_membership(session, seeded.dataset_id, frozen["image_ids"])
        first_vendor_only = membership[:, 0] & ~membership[:, 1:].any(axis=1)
        vendors = vendor_analysis(
            session,
            seeded.dataset_id,
            seeded.audit_id,
            frozen["image_ids"],
            names,
            probabilities,
            held_out=(probabilities, first_vendor_only),
        )
        session.add(AuditAnalysis(audit_id=seeded.audit_id, name="vendors", payload=vendors))
        for finding in session.scalars(select(Finding).where(Finding.audit_id == seeded.audit_id)):
            members = [m.image_id for m in finding.members]
            if finding.kind == "mislabel":
                others = [i for i in image_ids if i != members[0]]
                near = np.random.default_rng(members[0]).choice(others, size=6, replace=False)
                finding.evidence = {
                    **finding.evidence,
                    "neighbours": [
                        {
                            "image_id": int(i),
                            "path": paths[int(i)],
                            "label": label_of[int(i)],
                            "similarity": round(0.95 - 0.04 * k, 2),
                        }
                        for k, i in enumerate(near)
                    ],
                }
            else:
                finding.evidence = {
                    "members": [
                        {"image_id": i, "path": paths[i], "label": label_of[i], "split": "train"}
                        for i in members
                    ],
                    "keep": {"image_id": members[1], "path": paths[members[1]]},
                }
        audit = session.get(Audit, seeded.audit_id)
        counts = np.asarray(analyses["confusion"]["matrix"])
        order = analyses["confusion"]["order"]
        classes = []
        for item in audit.summary["classes"]:
            row = counts[order.index(item["class"])]
            total = max(1, int(row.sum()))
            noise = 1 - row[order.index(item["class"])] / total
            confused = [
                {"class": order[j], "share": round(float(row[j] / total), 4)}
                for j in np.argsort(-row)
                if order[j] != item["class"] and row[j] > 0
            ]
            classes.append(
                {**item, "estimated_noise_rate": round(float(noise), 4), "top_confusions": confused}
            )
        audit.summary = {**audit.summary, "classes": classes}
        session.add(
            Audit(
                dataset_id=seeded.dataset_id,
                status=AuditStatus.RUNNING,
                stage="embed",
                progress=0.4,
                started_at=utcnow(),
            )
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve(app) -> Iterator[str]:
    """Run `app` with uvicorn in a thread; yields its base URL and stops it on exit."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
